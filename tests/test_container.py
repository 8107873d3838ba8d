"""The container image, built and run for real (issue 17): docker/Dockerfile on a Debian base.

Opt-in (MIXSWEEP_CONTAINER_TESTS=1, as root, with apt-get): installs buildah + mmdebstrap if
missing, makes a Debian base from Debian's packages (docker/build-debian-base.sh: no public
base image can be pulled here), builds the Dockerfile FROM it with buildah (--isolation chroot,
no daemon), installing torch into the image's venv (TORCH_SPEC: the torch/torchvision these
tests run with), then, as the image's non-root user (uid 1000): ``mixsweep --help``,
``mixsweep selftest --device cpu`` (where the built package has that verb) and a shrunk
quickstart. A fake WANDB_API_KEY is in the build's environment and in the build context's
``.env`` and ``wandb/settings``: it must be in no layer, nor in the image's config or history.

pip inside the build gets this machine's pip configuration (``pip config list``: files and
PIP_* variables, merged into one file) and the local paths it names (cert, constraint,
find-links, file:// indexes), all mounted read-only: mounts are not committed to the image.

The build time (base and image), the image size and the run times are written to the terminal
(the CI log). Everything the tests made is removed at the end: the image, its containers, the
base if the tests made it, the build context copy and the exported layers; the apt packages stay
(MIXSWEEP_CONTAINER_KEEP=1 keeps the images for the next run, to debug the checks).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = "localhost/mixsweep-debian-base:bookworm"
TEST_IMAGE = "localhost/mixsweep-test:ci"
# MIXSWEEP_CONTAINER_KEEP=1 (debugging): keep the image, base and build folder at the end, and
# reuse them on the next run (this file says where they are and holds the fake key)
KEPT = Path(tempfile.gettempdir()) / "mixsweep-container-kept.json"
# the torch these tests run with (CI pins it in .ci/run); used when it is not importable here
TORCH_PINS = {"torch": "2.14.1", "torchvision": "0.29.1"}
WORKDIR = "/home/mixsweep/work"  # the image's WORKDIR, uid 1000's

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MIXSWEEP_CONTAINER_TESTS") != "1",
                       reason="container tests install buildah and build a multi-GB image as "
                              "root: set MIXSWEEP_CONTAINER_TESTS=1 to run them"),
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="container tests run as root (buildah's root storage, mmdebstrap)"),
    pytest.mark.skipif(shutil.which("apt-get") is None,
                       reason="container tests install buildah + mmdebstrap with apt-get"),
]

ENV = {**os.environ, "BUILDAH_ISOLATION": "chroot", "DEBIAN_FRONTEND": "noninteractive"}


def _run(cmd: list[str], timeout: float = 600, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env or ENV, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                             f"{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def _say(config: pytest.Config, line: str) -> None:
    """One line to the terminal even under capture: the CI log shows it."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[container] {line}")
    else:  # pragma: no cover - pytest without its terminal (xdist workers)
        print(f"[container] {line}")


def _image_exists(name: str) -> bool:
    return _run(["buildah", "inspect", "--type", "image", name], check=False).returncode == 0


def _install_tools() -> None:
    missing = [t for t in ("buildah", "mmdebstrap") if shutil.which(t) is None]
    if missing:
        _run(["apt-get", "update", "-qq"], timeout=600)
        _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "buildah", "mmdebstrap"],
             timeout=900)


def _torch_spec() -> str:
    """``torch==X torchvision==Y``: the versions installed here (what the test suite runs on)."""
    pins = {}
    for name, default in TORCH_PINS.items():
        try:
            pins[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pins[name] = default
    return " ".join(f"{name}=={version}" for name, version in pins.items())


def _pip_config(tmp: Path) -> list[str]:
    """``-v`` mounts giving pip in the build this machine's pip configuration, read-only.

    One file, /etc/pip.conf in the build, with the values ``pip config list`` shows (files,
    then PIP_* variables over them), plus every local path a value names (the cert, the
    constraint file, find-links folders, file:// indexes with the folder above them, where
    their pages' relative links lead) at the same path."""
    out = _run(["python3", "-m", "pip", "config", "list"]).stdout
    sections: dict[str, dict[str, str]] = {}
    env_values: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if not sep or "." not in key:
            continue
        value = value.strip().strip("'\"")
        section, _, name = key.rpartition(".")
        if section == ":env:":
            env_values[name] = value
        else:
            sections.setdefault(section, {})[name] = value
    sections.setdefault("global", {}).update(env_values)
    conf = tmp / "pip.conf"
    conf.write_text("".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                            for section, values in sections.items()))
    mounts = ["-v", f"{conf}:/etc/pip.conf:ro"]
    paths: set[str] = set()
    for values in sections.values():
        for key, value in values.items():
            for token in value.split():
                local = token.removeprefix("file://")
                if not local.startswith("/") or not os.path.exists(local):
                    continue
                # a file:// index's pages link to their files relatively (../../files/...):
                # mount the folder that holds the index
                index = token.startswith("file://") and key.endswith("index-url")
                paths.add(os.path.dirname(local.rstrip("/")) if index else local)
    for path in sorted(paths):
        mounts += ["-v", f"{path}:{path}:ro"]
    return mounts


def _context(tmp: Path, fake_key: str) -> Path:
    """The build context: the working tree's files as git sees them (tracked and not ignored,
    as a clone has them), plus the places a user keeps a W&B key, holding the fake one."""
    ctx = tmp / "context"
    ctx.mkdir()
    listed = _run(["git", "-C", str(ROOT), "ls-files", "-z", "-co", "--exclude-standard"]).stdout
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():  # tracked files deleted in the working tree are left out
            dst = ctx / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    (ctx / ".env").write_text(f"WANDB_API_KEY={fake_key}\n")
    (ctx / "wandb").mkdir(exist_ok=True)
    (ctx / "wandb" / "settings").write_text(f"[default]\napi_key = {fake_key}\n")
    return ctx


@dataclass
class Built:
    image: str
    container: str
    fake_key: str
    tmp: Path
    base_seconds: float
    build_seconds: float
    torch_spec: str
    mounted: list[str] = field(default_factory=list)

    def run(self, *args: str, volumes: tuple[str, ...] = (), env: tuple[str, ...] = (),
            timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command in the image as its non-root user (uid 1000), in its WORKDIR."""
        cmd = ["buildah", "run", "--isolation", "chroot", "--user", "1000:1000",
               "--workingdir", WORKDIR, "--env", "HOME=/home/mixsweep"]
        for volume in volumes:
            cmd += ["-v", volume]
        for var in env:
            cmd += ["--env", var]
        return _run([*cmd, self.container, "--", *args], timeout=timeout, check=check)


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest) -> Iterator[Built]:
    config = request.config
    keep = os.environ.get("MIXSWEEP_CONTAINER_KEEP") == "1"
    _install_tools()
    if keep and KEPT.exists() and _image_exists(TEST_IMAGE):
        state = json.loads(KEPT.read_text())
        state["tmp"] = Path(state["tmp"])
        _say(config, f"reusing the kept {TEST_IMAGE} (MIXSWEEP_CONTAINER_KEEP=1)")
        made_base, image = state.pop("made_base"), Built(**state)
    else:
        if _image_exists(TEST_IMAGE):  # left by a run that was killed
            _run(["buildah", "rmi", TEST_IMAGE], check=False)
        made_base = not _image_exists(BASE_IMAGE)
        image = None
    tmp = image.tmp if image else Path(tempfile.mkdtemp(prefix="mixsweep-container-"))
    container = ""
    try:
        if image is None:
            image = _build(config, tmp, made_base)
        image.container = container = _run(["buildah", "from", "--pull=never",
                                            TEST_IMAGE]).stdout.strip()
        yield image
    finally:
        if container:
            _run(["buildah", "rm", container], check=False)
        if keep and image is not None:
            state = {k: str(v) if isinstance(v, Path) else v for k, v in vars(image).items()}
            KEPT.write_text(json.dumps({**state, "container": "", "made_base": made_base}))
        else:
            if _image_exists(TEST_IMAGE):
                _run(["buildah", "rmi", TEST_IMAGE], check=False)
            if made_base and _image_exists(BASE_IMAGE):
                _run(["buildah", "rmi", BASE_IMAGE], check=False)
            shutil.rmtree(tmp, ignore_errors=True)
            KEPT.unlink(missing_ok=True)


def _build(config: pytest.Config, tmp: Path, made_base: bool) -> Built:
    """The base (docker/build-debian-base.sh), then the Dockerfile FROM it, timed."""
    start = time.monotonic()
    _run(["bash", str(ROOT / "docker" / "build-debian-base.sh"), BASE_IMAGE], timeout=900)
    base_seconds = time.monotonic() - start
    _say(config, f"Debian base {BASE_IMAGE}: "
                 + (f"made in {base_seconds:.0f} s" if made_base else "already there, kept"))

    fake_key = "fakewandbkey" + secrets.token_hex(20)  # 52 chars, as long as a real key
    ctx = _context(tmp, fake_key)
    mounts = _pip_config(tmp)
    spec = _torch_spec()
    # the fake key is in the environment of the build, as a user's exported key would be
    env = {**ENV, "WANDB_API_KEY": fake_key}
    log = tmp / "build.log"
    cmd = ["buildah", "bud", "--isolation", "chroot", "--pull=never",
           "-f", str(ctx / "docker" / "Dockerfile"),
           "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", f"TORCH_SPEC={spec}",
           *mounts, "-t", TEST_IMAGE, str(ctx)]
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                              stdin=subprocess.DEVNULL, timeout=3600)
    build_seconds = time.monotonic() - start
    assert proc.returncode == 0, f"buildah bud failed:\n{log.read_text()[-6000:]}"
    _say(config, f"image {TEST_IMAGE} ({spec}) built in {build_seconds:.0f} s")
    return Built(TEST_IMAGE, "", fake_key, tmp, base_seconds, build_seconds, spec,
                 mounted=[m.split(":")[1] for m in mounts[1::2]])


def test_image_config(built: Built, request: pytest.FixtureRequest) -> None:
    """Runs as uid 1000 by default, mixsweep is the entrypoint, and the size is on record."""
    info = json.loads(_run(["buildah", "inspect", "--type", "image", built.image]).stdout)
    cfg = info["OCIv1"]["config"]
    assert cfg["User"] == "1000:1000"
    assert cfg["Entrypoint"] == ["mixsweep"]
    assert cfg["WorkingDir"] == WORKDIR
    size = json.loads(_run(["buildah", "images", "--json", built.image]).stdout)[0]["size"]
    _say(request.config, f"image size {size} (buildah images: uncompressed, base included); "
                         f"base made in {built.base_seconds:.0f} s, image built in "
                         f"{built.build_seconds:.0f} s")
    # the read-only mounts (pip configuration) left nothing of the host's behind: buildah leaves
    # empty mount points (files and folders); what has content is the base's own (its CA bundle)
    base = _run(["buildah", "from", "--pull=never", BASE_IMAGE]).stdout.strip()
    try:
        mnt = Path(_run(["buildah", "mount", built.container]).stdout.strip())
        base_mnt = Path(_run(["buildah", "mount", base]).stdout.strip())
        for path in built.mounted:
            ours, theirs = mnt / path.lstrip("/"), base_mnt / path.lstrip("/")
            if ours.is_file() and ours.stat().st_size:
                assert theirs.is_file() and theirs.read_bytes() == ours.read_bytes(), \
                    f"{path}: the host's file was committed into the image"
            elif ours.is_dir() and not theirs.is_dir():
                assert not any(ours.iterdir()), f"{path}: the host's folder is in the image"
    finally:
        _run(["buildah", "umount", built.container], check=False)
        _run(["buildah", "rm", base], check=False)


def test_help(built: Built) -> None:
    proc = built.run("sh", "-c", "id -u && mixsweep --help")
    assert proc.stdout.splitlines()[0] == "1000"
    assert "launch" in proc.stdout and "report" in proc.stdout


def test_torch_in_venv(built: Built) -> None:
    """torch comes from TORCH_SPEC, in /opt/venv; mixsweep imports it."""
    code = ("import sys, torch, torchvision, mixsweep; "
            "print(sys.prefix, torch.__version__, torchvision.__version__)")
    prefix, torch_v, tv_v = built.run("python", "-c", code).stdout.split()
    assert prefix == "/opt/venv"
    def public(v: str) -> str:  # 2.14.1+cu130 is torch==2.14.1
        return v.split("+")[0]

    assert f"torch=={public(torch_v)} torchvision=={public(tv_v)}" == \
        " ".join(public(pin) for pin in built.torch_spec.split())


def test_selftest(built: Built, request: pytest.FixtureRequest) -> None:
    """``mixsweep selftest --device cpu`` passes inside the image (when the verb exists)."""
    probe = built.run("mixsweep", "selftest", "--help", check=False)
    if probe.returncode != 0:
        _say(request.config, "selftest: the built package has no `selftest` verb: not run")
        pytest.skip("the built mixsweep has no `selftest` verb yet")
    start = time.monotonic()
    proc = built.run("mixsweep", "selftest", "--device", "cpu", env=("COLUMNS=120",),
                     timeout=600, check=False)
    seconds = time.monotonic() - start
    _say(request.config, f"selftest --device cpu in the image: exit {proc.returncode} "
                         f"in {seconds:.0f} s\n{proc.stdout[-12000:]}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def test_quickstart(built: Built, request: pytest.FixtureRequest) -> None:
    """A shrunk quickstart (one seed, one labeled fraction, 3 epochs: 4 trials, one per mode)
    runs to completion as uid 1000, writing into a runs folder mounted from the host."""
    spec = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    spec["name"] = "quickstart_ci"
    spec["data"]["labeled_fraction"] = 1.0
    spec["train"]["epochs"] = 3
    spec["mixup"]["k"] = 2
    spec["linearity"] = {**spec["linearity"], "probes": 128}
    spec["seeds"] = [0]
    here = Path(tempfile.mkdtemp(dir=built.tmp))
    sweep_dir, runs = here / "sweep", here / "runs"
    sweep_dir.mkdir()
    runs.mkdir()
    (sweep_dir / "quickstart_ci.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    os.chown(runs, 1000, 1000)
    start = time.monotonic()
    proc = built.run("mixsweep", "launch", f"{WORKDIR}/ci/quickstart_ci.yaml", "--local",
                     volumes=(f"{sweep_dir}:{WORKDIR}/ci:ro", f"{runs}:{WORKDIR}/runs"),
                     timeout=900, check=False)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    with (runs / "quickstart_ci" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    mode_col = next((c for c in rows[0] if c.rsplit(".", 1)[-1] == "mode" and "wandb" not in c),
                    "mode") if rows else "mode"
    modes = sorted(row.get(mode_col, "?") for row in rows)
    _say(request.config, f"shrunk quickstart in the image as uid 1000: {len(rows)} trials "
                         f"({', '.join(modes)}) in {seconds:.0f} s, statuses "
                         f"{sorted({row['status'] for row in rows})}")
    assert modes == ["erm", "mt", "sup", "unsup"]
    assert all(row["status"] == "completed" for row in rows)
    owners = {p.lstat().st_uid for p in (runs / "quickstart_ci").rglob("*")}
    assert owners == {1000}


def test_no_secret_in_any_layer(built: Built, request: pytest.FixtureRequest) -> None:
    """The fake key (build environment, context's .env and wandb/settings) is in no layer blob,
    nor in the manifest, config or history; the layers are read uncompressed (a control string,
    a line of pyproject.toml that the image holds, must be found, or the scan reads nothing)."""
    out = built.tmp / "exported"
    key = built.fake_key.encode()
    control = next(line for line in (ROOT / "pyproject.toml").read_bytes().splitlines()
                   if line.startswith(b"description = "))
    try:
        _run(["buildah", "push", "--disable-compression", built.image, f"dir:{out}"],
             timeout=1800)
        blobs = [p for p in out.iterdir() if p.is_file()]
        found, total, controls = [], 0, 0
        overlap = max(len(key), len(control))
        for blob in blobs:
            total += blob.stat().st_size
            tail, seen = b"", False
            with blob.open("rb") as f:
                while chunk := f.read(64 << 20):
                    window = tail + chunk
                    if key in window and blob.name not in found:
                        found.append(blob.name)
                    seen = seen or control in window
                    tail = chunk[-overlap:]
            controls += seen
        inspect = _run(["buildah", "inspect", "--type", "image", built.image]).stdout
        history = _run(["buildah", "images", "--json", built.image]).stdout
        _say(request.config, f"secret scan: {len(blobs)} blobs (layers uncompressed, manifest, "
                             f"config), {total / 1e9:.2f} GB read; "
                             f"fake WANDB_API_KEY found in {found or 'none'}")
        assert not found
        assert controls >= 1, "the control string is in no blob: the layers were not read"
        assert built.fake_key not in inspect and built.fake_key not in history
    finally:
        shutil.rmtree(out, ignore_errors=True)
