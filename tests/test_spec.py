"""Sweep files: validation messages, grid expansion, collapsing, trial identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mixsweep.spec import SpecError, TrialConfig, expand, load_spec, load_trial, parse_spec


def spec(**sections: Any):
    return parse_spec({"name": "t", **sections})


# --------------------------------------------------------------------------- expansion


def test_grid_is_the_product_of_axes() -> None:
    s = spec(
        data={"labeled_fraction": [0.1, 1.0]},
        mixup={"mode": "sup", "k": [2, 3, 4], "alpha": [0.2, 1.0]},
        seeds=[0, 1],
    )
    trials = expand(s)
    assert len(trials) == 2 * 3 * 2 * 2
    assert len({t.trial_id for t in trials}) == len(trials)
    assert {(t.mixup.k, t.mixup.alpha) for t in trials} == {
        (k, a) for k in (2, 3, 4) for a in (0.2, 1.0)
    }


@pytest.mark.parametrize("mode", ["erm", "mt"])
def test_modes_without_mixing_ignore_k_and_alpha(mode: str) -> None:
    s = spec(
        data={"labeled_fraction": [0.2, 1.0]},
        mixup={"mode": mode, "k": [2, 3, 8], "alpha": [0.2, 1.0, 4.0]},
        seeds=[0, 1, 2],
    )
    trials = expand(s)
    assert len(trials) == 2 * 3  # one per (fraction, seed) cell
    assert all(t.mixup.k is None and t.mixup.alpha is None for t in trials)
    # the id does not depend on the k/alpha written in the file
    other = expand(
        spec(
            data={"labeled_fraction": [0.2, 1.0]},
            mixup={"mode": mode, "k": 5, "alpha": 0.5},
            seeds=[0, 1, 2],
        )
    )
    assert [t.trial_id for t in trials] == [t.trial_id for t in other]


def test_mixed_modes_grid_collapses_only_erm() -> None:
    s = spec(mixup={"mode": ["erm", "sup"], "k": [2, 3], "alpha": [0.2, 1.0]}, seeds=[0, 1])
    trials = expand(s)
    by_mode = {m: [t for t in trials if t.mixup.mode == m] for m in ("erm", "sup")}
    assert len(by_mode["erm"]) == 2 and len(by_mode["sup"]) == 2 * 2 * 2
    # erm and sup have no consistency loss: its settings are nulled, so they never split trials
    assert all(t.mixup.unsup_weight is None and t.mixup.rampup is None for t in trials)


def test_consistency_settings_only_split_consistency_modes() -> None:
    s = spec(mixup={"mode": ["sup", "unsup"], "k": 2, "unsup_weight": [1.0, 10.0]})
    trials = expand(s)
    assert sorted(t.mixup.mode for t in trials) == ["sup", "unsup", "unsup"]


@pytest.mark.parametrize(("file", "count"), [("quickstart.yaml", 24), ("k_points.yaml", 486)])
def test_shipped_sweep_counts(repo: Path, file: str, count: int) -> None:
    trials = expand(load_spec(repo / "sweeps" / file))
    assert len(trials) == count
    assert len({t.trial_id for t in trials}) == count


def test_k_points_targets_resolved_per_dataset(repo: Path) -> None:
    trials = expand(load_spec(repo / "sweeps" / "k_points.yaml"))
    targets = {t.data.dataset: t.train.target_accuracy for t in trials}
    assert targets == {"cifar10": 0.85, "cifar100": 0.55, "svhn": 0.93}


def test_default_target_comes_from_the_dataset() -> None:
    (t,) = expand(spec(data={"dataset": "digits"}))
    assert t.train.target_accuracy == 0.95


# --------------------------------------------------------------------------- identity


def test_trial_id_is_stable_and_tracks_identity_keys() -> None:
    a = TrialConfig(mixup={"mode": "sup", "k": 3, "alpha": 0.2}, seed=1)
    b = TrialConfig(mixup={"mode": "sup", "k": 3, "alpha": 0.2}, seed=1)
    assert a.trial_id == b.trial_id and len(a.trial_id) == 12
    int(a.trial_id, 16)
    changed = [
        TrialConfig(mixup={"mode": "sup", "k": 4, "alpha": 0.2}, seed=1),
        TrialConfig(mixup={"mode": "sup", "k": 3, "alpha": 0.3}, seed=1),
        TrialConfig(mixup={"mode": "sup", "k": 3, "alpha": 0.2}, seed=2),
        TrialConfig(mixup={"mode": "sup", "k": 3, "alpha": 0.2}, seed=1, train={"lr": 0.1}),
        TrialConfig(
            mixup={"mode": "sup", "k": 3, "alpha": 0.2}, seed=1, data={"labeled_fraction": 0.5}
        ),
    ]
    assert len({c.trial_id for c in changed} | {a.trial_id}) == len(changed) + 1


def test_environment_keys_do_not_change_the_id() -> None:
    a = TrialConfig(seed=3)
    moved = TrialConfig(
        seed=3,
        data={"root": "/elsewhere", "download": True},
        train={"device": "cpu", "eval_batch_size": 7},
    )
    assert moved.trial_id == a.trial_id


def test_trial_id_of_expanded_trial_matches_a_fresh_config() -> None:
    (t,) = expand(spec(mixup={"mode": "sup", "k": 3, "alpha": 0.5}, seeds=[4]))
    fresh = TrialConfig.model_validate(t.model_dump())
    assert fresh.trial_id == t.trial_id


# --------------------------------------------------------------------------- bad files


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "t", **raw})
    return info.value.problems


def test_unknown_key_suggests_the_right_one() -> None:
    (line,) = problems({"mixup": {"mode": "sup", "alhpa": 0.2}})
    assert line.startswith("mixup: unknown key 'alhpa'")
    assert "did you mean 'alpha'?" in line
    assert "allowed:" in line and "k" in line
    (top,) = problems({"mixupp": {}})
    assert "unknown key 'mixupp'" in top and "did you mean 'mixup'?" in top


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"mixup": {"k": 1}}, "mixup.k"),
        ({"mixup": {"k": [2, 1]}}, "mixup.k[1]"),
        ({"mixup": {"alpha": 0}}, "mixup.alpha"),
        ({"mixup": {"alpha": -0.5}}, "mixup.alpha"),
        ({"data": {"labeled_fraction": 0}}, "data.labeled_fraction"),
        ({"data": {"labeled_fraction": 1.5}}, "data.labeled_fraction"),
        ({"data": {"dataset": "mnist"}}, "data.dataset"),
        ({"model": {"arch": "vgg"}}, "model.arch"),
        ({"mixup": {"k": []}}, "mixup.k"),
        ({"seeds": []}, "seeds"),
        ({"slurm": {"time": "1h"}}, "slurm.time"),
        ({"slurm": {"time": "24:0"}}, "slurm.time"),
        ({"train": {"target_accuracy": {"cifar10": 1.5}}}, "train.target_accuracy"),
        ({"data": {"ffcv_dir": "{root}/ffcv/{datset}"}}, "data.ffcv_dir"),
        ({"data": {"ffcv_dir": "{root/ffcv"}}, "data.ffcv_dir"),
    ],
)
def test_bad_values_name_the_key(raw: dict[str, Any], key: str) -> None:
    lines = problems(raw)
    assert len(lines) == 1, lines
    assert lines[0].startswith(key), lines


def test_ffcv_dir_template() -> None:
    (line,) = problems({"data": {"ffcv_dir": "/scratch/{user}/{dataset}"}})
    assert "{user}" in line and "{root}" in line
    parse_spec({"name": "t", "data": {"ffcv_dir": "/scratch/beton/{dataset}"}})  # no placeholder for root: fine


def test_allowed_values_are_listed() -> None:
    (line,) = problems({"data": {"dataset": "mnist"}})
    assert "cifar10" in line and "digits" in line and "'mnist'" in line
    (line,) = problems({"mixup": {"mode": "cutmix"}})
    assert "erm" in line and "unsup" in line


def test_every_problem_is_reported() -> None:
    lines = problems({"mixup": {"k": 1, "alpha": 0}, "model": {"arch": "vgg"}})
    assert len(lines) == 3


@pytest.mark.parametrize("time", ["24:00:00", "1-12:00:00", "90", "30:00"])
def test_good_slurm_times(time: str) -> None:
    assert spec(slurm={"time": time}).slurm.time == time


def test_load_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {dataset: [digits\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(notmap)


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    f = tmp_path / "my_sweep.yaml"
    f.write_text(yaml.safe_dump({"mixup": {"mode": "erm"}}))
    assert load_spec(f).name == "my_sweep"


def test_trial_file_needs_one_value_per_key(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(yaml.safe_dump({"mixup": {"mode": "sup", "k": [2, 3]}}))
    with pytest.raises(SpecError, match="mixup.k"):
        load_trial(f)
    # an axis that collapses (k under erm) is still one trial
    f.write_text(yaml.safe_dump({"mixup": {"mode": "erm", "k": [2, 3]}}))
    _, cfg = load_trial(f)
    assert cfg.mixup.k is None


# --------------------------------------------------------------------------- ids across versions

# Literal ids computed by the version before model.depth, model.batchnorm and data.num_labels
# existed (commit fb01f87). A key added later must leave them alone while it is at its default:
# relaunching an old sweep resumes it instead of re-running every trial.
GOLDEN_IDS = {
    "quickstart[0]": "27c3ba40fcf4",
    "quickstart[1]": "fc6e0f622b94",
    "quickstart[2]": "9e9609a594b8",
    "k_points[0]": "44e00d575ea8",
    "k_points[1]": "f009b6d082b2",
    "default": "c300026dccd4",
    "resnet18-adam-sup-k3": "c378d8124711",
}
REPO = Path(__file__).resolve().parents[1]


def test_golden_ids_survive_added_keys() -> None:
    quick = expand(load_spec(REPO / "sweeps" / "quickstart.yaml"))
    kp = expand(load_spec(REPO / "sweeps" / "k_points.yaml"))
    got = {
        "quickstart[0]": quick[0].trial_id,
        "quickstart[1]": quick[1].trial_id,
        "quickstart[2]": quick[2].trial_id,
        "k_points[0]": kp[0].trial_id,
        "k_points[1]": kp[1].trial_id,
        "default": TrialConfig().trial_id,
        "resnet18-adam-sup-k3": TrialConfig(model={"arch": "resnet18"}, train={"optimizer": "adam"},
                                            mixup={"mode": "sup", "k": 3, "alpha": 0.2}).trial_id,
    }
    assert got == GOLDEN_IDS


def test_added_keys_enter_the_id_only_off_their_default() -> None:
    base = TrialConfig()
    assert TrialConfig(model={"depth": 4, "batchnorm": True}, data={"num_labels": None}).trial_id == base.trial_id
    changed = {TrialConfig(model={"depth": 8}).trial_id, TrialConfig(model={"batchnorm": False}).trial_id,
               TrialConfig(data={"num_labels": 250}).trial_id}
    assert len(changed) == 3 and base.trial_id not in changed
    assert TrialConfig(model={"depth": 8}).trial_id == "d9c9b35d7a73"  # pinned too


def test_ignored_model_and_optimizer_axes_collapse() -> None:
    trials = expand(spec(model={"arch": "resnet18", "width": [16, 32], "depth": [2, 8],
                                "batchnorm": [True, False]},
                         train={"optimizer": "adam", "momentum": [0.5, 0.9], "nesterov": [True, False]}))
    assert len(trials) == 1
    assert (trials[0].model.width, trials[0].model.depth, trials[0].train.momentum) == (32, 4, 0.9)
    # the cnn uses all three: 2 x 2 x 2; sgd uses momentum
    assert len(expand(spec(model={"width": [16, 32], "depth": [2, 8], "batchnorm": [True, False]}))) == 8
    assert len(expand(spec(train={"momentum": [0.5, 0.9]}))) == 2
    # without momentum, nesterov means nothing
    assert len(expand(spec(train={"momentum": 0.0, "nesterov": [True, False]}))) == 1


def test_num_labels_per_dataset_map_fans_out() -> None:
    trials = expand(spec(data={"dataset": ["cifar10", "svhn"],
                               "num_labels": {"cifar10": [250, 4000, None], "svhn": 1000}}))
    assert [(t.data.dataset, t.data.num_labels) for t in trials] == [
        ("cifar10", 250), ("cifar10", 4000), ("cifar10", None), ("svhn", 1000)]


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"data": {"dataset": ["cifar10", "svhn"], "num_labels": {"cifar10": [250]}}},
         "data.num_labels: the map has no entry for dataset 'svhn'"),
        ({"data": {"dataset": "cifar10", "labeled_fraction": 0.1, "num_labels": 250}},
         "data: a trial uses labeled_fraction or num_labels, not both"),
        ({"data": {"dataset": "cifar10", "num_labels": 255}},
         "data.num_labels: 255 is not a multiple of the 10 classes of cifar10"),
        ({"data": {"dataset": ["cifar10", "svhn"]}, "train": {"target_accuracy": {"cifar10": 0.5}}},
         "train.target_accuracy: the map has no entry for dataset 'svhn'"),
        ({"mixup": {"mode": ["erm", "unsup"]}, "train": {"epoch_seconds_hint": {"erm": 1.0}}},
         "train.epoch_seconds_hint: the map has no entry for mode 'unsup'"),
        ({"model": {"depth": 1}}, "model.depth[0]: Input should be greater than or equal to 2"),
        ({"data": {"num_labels": [0]}}, "data.num_labels[0]: Input should be greater than or equal to 1"),
    ],
)
def test_label_count_target_and_hint_maps_are_checked(sections: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        spec(**sections)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(message), err.value.problems


def test_epoch_seconds_hint_per_mode_feeds_the_estimate() -> None:
    from mixsweep.spec import plan

    s = spec(mixup={"mode": ["erm", "unsup"]}, train={"epochs": 10, "epoch_seconds_hint": {"erm": 1.0, "unsup": 2.5}},
             resources={"gpus_per_trial": 1})
    trials = expand(s)
    assert sorted(t.train.epoch_seconds_hint for t in trials) == [1.0, 2.5]
    assert plan(s, trials)["gpu_hours_estimate"] == pytest.approx((10 * 1.0 + 10 * 2.5) / 3600)
