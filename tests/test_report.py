"""The report: built from real (tiny) quickstart sweeps, rendered in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mixsweep.expand import expand
from mixsweep.report import ReportError, write_report
from mixsweep.report_data import censored_median, load, spec_diff
from mixsweep.spec import parse_spec
from mixsweep.spec_yaml import load_yaml
from mixsweep.store import SweepPaths, atomic_write_text, collect_rows, write_results
from mixsweep.trial import run_trial

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.slow  # builds two real sweeps (~12 short trials) once per session


def _sweep(runs: Path, **changes) -> Path:
    """A real sweep store, written the way ``launch`` writes it: quickstart, shrunk."""
    raw = load_yaml(REPO / "sweeps" / "quickstart.yaml")
    raw["train"].update(epochs=2)
    raw["mixup"].update(mode=["erm", "sup", "unsup"], k=2)
    raw["linearity"].update(probes=96, every=1)
    raw["seeds"] = [0]
    raw["train"]["target_accuracy"] = 0.8  # reachable in 2 epochs by some trials, not all
    for section, values in changes.items():
        raw[section] = values if not isinstance(values, dict) else {**raw.get(section, {}), **values}
    spec = parse_spec(raw)
    sp = SweepPaths.of(runs, spec.name)
    atomic_write_text(sp.spec, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    trials = expand(spec)
    for cfg in trials:
        run_trial(cfg, sp.trial(cfg.trial_id).root)
    write_results(sp, collect_rows(sp, trials))
    return sp.root


@pytest.fixture(scope="session")
def sweeps(tmp_path_factory) -> tuple[Path, Path]:
    import torch

    runs = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra threads only contend on a busy machine
    try:
        a = _sweep(runs)
        # a second sweep: alpha 0.2 and an out-of-reach target, so every trial is censored
        b = _sweep(runs, name="quickstart_hard", mixup={"alpha": 0.2}, train={"target_accuracy": 0.999})
    finally:
        torch.set_num_threads(threads)
    return a, b


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=20000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


# Injected into a copy of the report only: records JS errors, then writes what every figure rendered.
_HOOK = """<script>window.__errs=[];addEventListener('error',e=>__errs.push(String(e.message)));
const __ce=console.error;console.error=function(...a){__errs.push(a.join(' '));__ce.apply(console,a)};</script>"""
_CHECK = """<script>addEventListener('load',()=>setTimeout(()=>{const figs=[];
document.querySelectorAll('.js-plotly-plot').forEach(d=>{const s=d.querySelector('svg.main-svg');
const r=s?s.getBoundingClientRect():{width:0,height:0};const t=d.querySelector('.gtitle');
figs.push({id:d.id,w:r.width,h:r.height,title:t?t.textContent:'',points:d.querySelectorAll('.scatterlayer .point').length,
lines:d.querySelectorAll('.scatterlayer .js-line').length})});
const p=document.createElement('pre');p.id='render-check';p.textContent=JSON.stringify({figs,errs:__errs});
document.body.appendChild(p)},300));</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt install chromium; CI installs it)")
def test_report_renders_in_headless_chromium(sweeps, tmp_path):
    out = tmp_path / "report.html"
    built = write_report(list(sweeps), out)
    text = out.read_text()
    # self-contained: plotly.js inline, nothing fetched (plotly.js only names a CDN for geo maps)
    assert not re.search(r"<script[^>]*\ssrc=", text) and not re.search(r"<link[^>]*href=[\"']?https?:", text)
    checked = tmp_path / "checked.html"
    checked.write_text(text.replace("<head>", "<head>" + _HOOK, 1).replace("</body>", _CHECK + "</body>", 1))
    proc = _chromium("--window-size=1400,1000", "--dump-dom", checked.as_uri(), profile=tmp_path / "p1")
    m = re.search(r'<pre id="render-check">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"the check did not run; chromium stderr tail:\n{proc.stderr[-2000:]}"
    result = json.loads(html.unescape(m.group(1)))
    assert result["errs"] == []
    assert "Uncaught" not in proc.stderr
    figs = {f["id"]: f for f in result["figs"]}
    assert set(figs) == {f"fig-{k}" for k in built.figures}
    for fid, f in figs.items():
        assert f["w"] > 300 and f["h"] > 200, fid
        assert f["title"].strip(), f"{fid} has no title"
        assert f["points"] + f["lines"] > 0, f"{fid} drew nothing"
    shot = tmp_path / "report.png"
    proc = _chromium("--window-size=1400,1700", f"--screenshot={shot}", out.as_uri(), profile=tmp_path / "p2")
    assert shot.is_file() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    print(f"report screenshot: {shot}")


def test_censored_trials_are_shown_as_censored(sweeps):
    from mixsweep.report_figures import fig_ett

    data = load(list(sweeps))
    done = data.done
    censored = done[~done["reached_target"].astype(str).str.lower().eq("true")]
    assert len(censored[censored["sweep"] == "quickstart_hard"]) == 6  # target 0.999: none reached
    fig = fig_ett(data, "mixup.k")
    traces = [t for t in fig.data if t.x is not None and len(t.x) and t.x[0] is not None]
    cens = [t for t in traces if t.name.endswith(" censored")]
    reached = [t for t in traces if t.name in data.modes]
    assert sum(len(t.y) for t in cens) == len(censored)
    assert sum(len(t.y) for t in reached) == len(done) - len(censored)
    lane = {y for t in cens for y in t.y}
    assert len(lane) == 1 and lane.pop() > done["train.epochs"].max()  # a lane above the budget, not an epoch
    ticktext = fig.layout.yaxis.ticktext
    assert ticktext[-1] == "not reached"
    # reached markers hold only real epochs-to-target values
    real = set(done["epochs_to_target"].dropna().astype(float))
    assert {y for t in reached for y in t.y} <= real
    medians = [t for t in traces if t.name.endswith(" median")]
    assert any("not reached" in txt for t in medians for txt in t.text)


def test_report_reads_the_trial_folders_not_a_stale_table(sweeps, tmp_path):
    """A job killed before it rewrote results.csv (scancel) leaves the table behind its trials."""
    stale = tmp_path / sweeps[0].name
    shutil.copytree(sweeps[0], stale)
    sp = SweepPaths(stale)
    rows = collect_rows(sp, expand(parse_spec(yaml.safe_load(sp.spec.read_text()))))
    fresh = {r["trial_id"]: r["final_acc"] for r in rows}
    assert {r["status"] for r in rows} == {"completed"}
    for r in rows:  # the table as launch wrote it before any trial finished
        r.update(status="pending", final_acc=None, epochs_to_target=None)
    write_results(sp, rows)
    data = load([stale])
    assert len(data.done) == len(fresh) and set(data.done["status"]) == {"completed"}
    got = dict(zip(data.done["trial_id"], data.done["final_acc"], strict=True))
    assert got == pytest.approx(fresh) and all(v > 0.1 for v in got.values())
    (stale / "spec.yaml").write_text("name: later\nfuture_section: 1\n")  # another version: table as written
    assert set(load([stale]).results["status"]) == {"pending"}


def test_censored_median():
    assert censored_median([3, 5, None], [True, True, False]) == (5.0, "5 (1 cens.)")
    assert censored_median([3, None, None], [True, False, False])[0] is None
    assert censored_median([2, 4], [True, True])[0] == 3.0
    assert censored_median([], [])[1] == "—"


def test_layers_in_network_order_and_table(sweeps):
    data = load([sweeps[0]])
    assert data.layers == ["stem_pre", "stem", "block1", "block2", "block3", "pool", "logits", "probs"]
    from mixsweep.report_data import cell_table

    table = cell_table(data)
    assert len(table) == 6 and table["n seeds"].eq(1).all()
    assert [c for c in table.columns if c.startswith("NL ")] == [f"NL {x}" for x in data.layers]


def test_spec_diff(sweeps):
    data = load(list(sweeps))
    diff = spec_diff(data.specs).set_index("key")
    assert {"name", "mixup.alpha", "train.target_accuracy"} <= set(diff.index)
    assert diff.loc["mixup.alpha", "quickstart_hard"] == "0.2"
    assert "train.epochs" not in diff.index


@pytest.mark.skipif(CHROMIUM is None, reason="kaleido needs chromium")
def test_png_per_figure(sweeps, tmp_path):
    pytest.importorskip("kaleido")
    built = write_report([sweeps[0]], tmp_path / "r.html", png_dir=tmp_path / "png")
    assert sorted(p.name for p in built.pngs) == sorted(f"{k}.png" for k in built.figures)
    for p in built.pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_wandb_report_definition_offline(sweeps, tmp_path, monkeypatch):
    pytest.importorskip("wandb_workspaces")
    from mixsweep import report_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    data = load(list(sweeps))
    rep = report_wandb.build(data)
    report_wandb.validate_offline(rep)
    built = write_report(list(sweeps), tmp_path / "r.html", wandb=True)
    path = tmp_path / "r.html.wandb-report.json"
    assert str(path) in built.wandb and "offline" in built.wandb
    spec = json.loads(path.read_text())
    grid = next(b for b in spec["blocks"] if "runsets" in b)
    assert [rs["filters"] for rs in grid["runsets"]] == ["Group == 'quickstart'", "Group == 'quickstart_hard'"]
    assert all(rs["groupby"] == ["mixup.mode"] for rs in grid["runsets"])
    ys = {y for p in grid["panels"] for y in (p.get("y") or []) if isinstance(y, str)}
    assert "test_acc" in ys and {f"nonlinearity/{x}" for x in data.layers} <= ys
    titles = " ".join(p.get("title") or "" for p in grid["panels"])
    for needle in ("nonlinearity", "Epochs to target vs k", "alpha", "labeled fraction", "accuracy"):
        assert needle in titles
    assert any(b.get("text") == "Spec differences" for b in spec["blocks"])


def test_cli_report_and_bad_input(sweeps, tmp_path):
    from typer.testing import CliRunner

    from mixsweep.cli import app

    env = {**os.environ, "WANDB_MODE": "offline"}
    r = CliRunner().invoke(app, ["report", str(sweeps[0]), "--out", str(tmp_path / "x.html"), "--by", "k"], env=env)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "x.html").is_file()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a directory" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["report", str(sweeps[0]), "--by", "colour"])
    assert r.exit_code == 2 and "--by 'colour'" in r.output
    with pytest.raises(ReportError, match="given twice"):
        load([sweeps[0], sweeps[0]])


def test_failed_trials_are_counted_not_dropped(sweeps, tmp_path):
    """A diverged trial (status failed) stays in its cell: counted as failed, and as censored
    for epochs to target, in the HTML cells table and the Markdown summary."""
    from mixsweep.report_data import cell_table
    from mixsweep.report_tables import render_markdown

    run = Path(shutil.copytree(sweeps[0], tmp_path / sweeps[0].name))
    sp = SweepPaths(run)
    data = load([run])
    victim = data.done[data.done["mixup.mode"] == "sup"].iloc[0]["trial_id"]
    res = json.loads(sp.trial(victim).result.read_text())
    res.update(status="failed", reason="non-finite loss at epoch 2", reached_target=False,
               epochs_to_target=None)
    atomic_write_text(sp.trial(victim).result, json.dumps(res))
    data = load([run])
    table = cell_table(data)
    assert len(table) == 6  # the failed trial's cell is still there
    cell = table[table["failed"] > 0]
    assert len(cell) == 1 and cell.iloc[0]["mode"] == "sup"
    assert (cell.iloc[0]["reached target"], cell.iloc[0]["median epochs to target"],
            cell.iloc[0]["final acc"], cell.iloc[0]["n seeds"]) == ("0/1", "not reached", "—", 0)
    md = render_markdown(data)
    summary = md.split("## Summary per cell")[1].split("\n## ")[0]
    head = [c.strip() for c in summary.strip().splitlines()[0].strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in summary.strip().splitlines()[2:]]
    assert "failed" in head and len(rows) == 6
    failed = [r for r in rows if r[head.index("failed")] == "1"]
    assert len(failed) == 1 and failed[0][head.index("reached")] == "0/1"


def test_load_results_three_frames(sweeps):
    """The notebook reader: one row per trial, per trial and epoch, per trial, epoch and layer,
    matching what the trial files hold."""
    from mixsweep.results import load_results

    r = load_results(sweeps[0])
    assert r.name == "quickstart" and len(r.trials) == 6 and set(r.trials["status"]) == {"completed"}
    assert {"trial_id", "status", "mixup.mode", "seed", "final_acc", "epochs_to_target", "nl.block1"} <= set(r.trials)
    assert list(r.epochs.columns[:2]) == ["trial_id", "epoch"] and "test_acc" in r.epochs
    assert list(r.layers.columns) == ["trial_id", "epoch", "layer", "nl", "cos"]
    tid = r.trials["trial_id"].iloc[0]
    lines = [json.loads(x) for x in (sweeps[0] / "trials" / tid / "metrics.jsonl").read_text().splitlines()]
    mine = r.epochs[r.epochs["trial_id"] == tid]
    assert list(mine["epoch"]) == [x["epoch"] for x in lines]
    assert list(mine["test_acc"]) == pytest.approx([x["test_acc"] for x in lines])
    last = lines[-1]
    got = r.layers[(r.layers["trial_id"] == tid) & (r.layers["epoch"] == last["epoch"])].set_index("layer")
    assert got["nl"].to_dict() == pytest.approx(last["nl"]) and got["cos"].to_dict() == pytest.approx(last["cos"])
    assert len(r.layers) == sum(len(x.get("nl") or {}) for t in r.trials["trial_id"]
                                for x in map(json.loads, (sweeps[0] / "trials" / t / "metrics.jsonl").read_text().splitlines()))
    # ready for groupby: per mode and layer, a mean NL
    means = r.layers.merge(r.trials[["trial_id", "mixup.mode"]]).groupby(["mixup.mode", "layer"])["nl"].mean()
    assert means.notna().all() and len(means) == 3 * 8


def test_report_contrast_adds_the_section_and_the_forest_plots(tmp_path):
    """``report --contrast``: compare's intervals as a section and two forest plots."""
    from mixsweep.compare import write_compare
    from mixsweep.contrast import ContrastError

    run = _sweep(tmp_path / "runs", name="two_seeds", seeds=[0, 1],
                 data={"labeled_fraction": 1.0}, mixup={"mode": ["erm", "sup"]})
    out = tmp_path / "r.html"
    built = write_report([run], out, by=None, contrast="mode=sup:erm", contrast_layers=["mid", "probs"])
    assert {"contrast_forest", "contrast_forest_outcomes"} <= set(built.figures)
    page = out.read_text()
    assert "Contrast mixup.mode=sup:erm</h2>" in page and 'id="fig-contrast_forest"' in page
    done = write_compare([run], "mode=sup:erm", tmp_path / "cmp", png=False, layers=["mid", "probs"])
    probs = done.table[(done.table["layer"] == "probs") & (done.table["moment"] == "end")].iloc[0]
    assert probs["n"] == 2 and f"{probs['CI high']:+.3g}" in page  # compare's own numbers
    assert probs["verdict"] in page
    with pytest.raises(ContrastError, match="--contrast"):
        write_report([run], out, by=None, contrast="mode=sup:nope")


def test_early_epoch_without_a_linearity_every_column_is_none() -> None:
    import pandas as pd

    from mixsweep.report_data import ReportData
    from mixsweep.report_tables import early_epoch

    empty = pd.DataFrame()
    done = pd.DataFrame({"status": ["completed", "completed"], "trial_id": ["a", "b"]})
    assert early_epoch(ReportData(["s"], {}, done, empty, empty, [])) is None
    done["linearity.every"] = [5, 10]
    assert early_epoch(ReportData(["s"], {}, done, empty, empty, [])) == 10
