"""Sweep files: validation messages, grid expansion, collapsing, trial identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mixsweep.expand import expand
from mixsweep.spec import TrialConfig, parse_spec
from mixsweep.spec_errors import SpecError
from mixsweep.spec_yaml import load_spec, load_trial


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


@pytest.mark.parametrize("time", ["24:00:00", "1-12:00:00", "90", "100:00:00", "1-12", "1-12:30",
                                  "0-01:00:00", "00:30:00"])
def test_good_slurm_times(time: str) -> None:
    assert spec(slurm={"time": time}).slurm.time == time


@pytest.mark.parametrize(
    ("time", "message"),
    [
        # SLURM reads a two-part time as MM:SS: "24:00" would be a 24-minute job
        ("24:00", "'24:00' is MM:SS to SLURM (24 minutes 0 seconds); write HH:MM:SS: '24:00:00'"),
        ("30:00", "'30:00' is MM:SS to SLURM"),
        ("1:75:00", "minutes and seconds must be below 60"),
        ("1:00:60", "minutes and seconds must be below 60"),
        ("1-24", "after a day part hours must be below 24"),
        ("1-12:60", "after a day part hours must be below 24 and minutes"),
        ("0", "'0' is no time at all"),
        ("00:00:00", "is no time at all"),
        ("0-00", "is no time at all"),
        ("1h", "must be MINUTES, HH:MM:SS or D-HH:MM:SS"),
        ("24:0", "must be MINUTES, HH:MM:SS or D-HH:MM:SS"),
        (86400, "write the time in quotes"),  # YAML's reading of an unquoted 24:00:00
    ],
)
def test_slurm_times_slurm_would_refuse_or_misread(time: Any, message: str) -> None:
    (line,) = problems({"slurm": {"time": time}})
    assert line.startswith("slurm.time: ") and message in line, line


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
    from mixsweep.plan import plan

    s = spec(mixup={"mode": ["erm", "unsup"]}, train={"epochs": 10, "epoch_seconds_hint": {"erm": 1.0, "unsup": 2.5}},
             resources={"gpus_per_trial": 1})
    trials = expand(s)
    assert sorted(t.train.epoch_seconds_hint for t in trials) == [1.0, 2.5]
    assert plan(s, trials)["gpu_hours_estimate"] == pytest.approx((10 * 1.0 + 10 * 2.5) / 3600)


# --------------------------------------------------------------------------- accepted but wrong (issue 16)


def _numeric_leaves(tp: Any) -> tuple[set[type], list[Any]]:
    """The number types a field annotation accepts (int, float) and the keys of any map in it."""
    from typing import Annotated, Literal, get_args, get_origin

    kinds: set[type] = set()
    keys: list[Any] = []
    origin = get_origin(tp)
    if tp in (int, float):
        kinds.add(tp)
    elif origin is Annotated:
        return _numeric_leaves(get_args(tp)[0])
    elif origin is dict:
        key, value = get_args(tp)
        keys += list(get_args(key)) if get_origin(key) is Literal else []
        kinds |= _numeric_leaves(value)[0]
    else:
        for arg in get_args(tp):  # unions and lists
            sub_kinds, sub_keys = _numeric_leaves(arg)
            kinds |= sub_kinds
            keys += sub_keys
    return kinds, keys


def _sweep_sections() -> dict[str, Any]:
    from mixsweep import spec as s
    from mixsweep.spec_slurm import SlurmConfig

    return {"data": s.SweepData, "model": s.SweepModel, "train": s.SweepTrain, "mixup": s.SweepMixup,
            "linearity": s.SweepLinearity, "resources": s.ResourcesConfig, "slurm": SlurmConfig}


def _number_cases() -> list[tuple[str, str, Any, str]]:
    """(section, key, bad value, expected words) for every int and float key of the sweep file,
    in both shapes a key takes (a value, and an entry of a per-dataset / per-mode map)."""
    cases = []
    for section, model in _sweep_sections().items():
        for key, info in model.model_fields.items():
            kinds, map_keys = _numeric_leaves(info.annotation)
            bad: list[tuple[Any, str]] = []
            if float in kinds:
                bad += [(float("nan"), "finite number"), (float("inf"), "finite number"),
                        (float("-inf"), "finite number"), (True, "not true/false")]
            if int in kinds:
                bad += [(True, "not true/false"), (False, "not true/false")]
            for value, words in bad:
                cases.append((section, key, value, words))
                if map_keys:
                    cases.append((section, key, {map_keys[0]: value}, words))
    cases += [("seeds", "", True, "not true/false"), ("seeds", "", [0, False], "not true/false")]
    return cases


NUMBER_CASES = _number_cases()


def test_the_number_walk_sees_every_number_key() -> None:
    keys = {f"{sec}.{key}" for sec, key, _, _ in NUMBER_CASES}
    # every int/float key of the sweep file, listed by hand: a key the walk misses fails here
    assert keys == {
        "data.labeled_fraction", "data.num_labels", "data.split_seed", "model.width",
        "model.depth", "train.epochs", "train.batch_size", "train.lr", "train.momentum",
        "train.weight_decay", "train.warmup_epochs", "train.target_accuracy",
        "train.eval_batch_size", "train.epoch_seconds_hint", "train.checkpoint_seconds",
        "mixup.k", "mixup.alpha", "mixup.unsup_weight", "mixup.ema_max_decay", "mixup.rampup",
        "linearity.probes", "linearity.every", "linearity.k", "linearity.alpha",
        "linearity.seed", "resources.cpus_per_trial", "resources.gpus_per_trial",
        "resources.max_concurrent", "resources.max_failures", "slurm.nodes",
        "slurm.gpus_per_node", "slurm.cpus_per_node", "slurm.grace_seconds", "seeds."}
    maps = {f"{sec}.{key}" for sec, key, value, _ in NUMBER_CASES if isinstance(value, dict)}
    assert maps == {"train.target_accuracy", "train.epoch_seconds_hint", "data.num_labels"}


@pytest.mark.parametrize(("section", "key", "value", "words"), NUMBER_CASES,
                         ids=[f"{s}.{k}={v!r}" for s, k, v, _ in NUMBER_CASES])
def test_every_number_key_refuses_nan_inf_and_booleans(section: str, key: str, value: Any,
                                                        words: str) -> None:
    raw = {"seeds": value} if section == "seeds" else {section: {key: value}}
    lines = problems(raw)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{section}.{key}" if key else section), lines
    assert words in lines[0], lines


@pytest.mark.parametrize("section", ["data", "model", "train", "mixup", "linearity"])
def test_trial_config_refuses_nan_inf_and_booleans_too(section: str) -> None:
    from pydantic import ValidationError

    model = type(getattr(TrialConfig(), section))
    checked = 0
    for key, info in model.model_fields.items():
        kinds, _ = _numeric_leaves(info.annotation)
        bad = ([float("nan"), float("inf"), True] if float in kinds else []) + (
            [True, False] if int in kinds else [])
        for value in bad:
            with pytest.raises(ValidationError, match="finite number|not true/false"):
                TrialConfig(**{section: {key: value}})
            checked += 1
    assert checked >= 3
    with pytest.raises(ValidationError, match="not true/false"):
        TrialConfig(seed=True)


def test_plain_yaml_numbers_still_pass() -> None:
    s = parse_spec(yaml.safe_load(
        "name: t\ntrain: {epochs: 3, lr: 1, batch_size: 64, target_accuracy: {digits: 1}}\n"
        "resources: {cpus_per_trial: 2, gpus_per_trial: 0}\nlinearity: {alpha: 2}\nseeds: 7\n"))
    (t,) = expand(s)
    assert (t.train.epochs, t.train.lr, t.train.target_accuracy, t.linearity.alpha, t.seed) == (
        3, 1.0, 1.0, 2.0, 7)


@pytest.mark.parametrize("where", ["seeds", "data.split_seed", "linearity.seed"])
def test_seeds_are_what_the_generators_take(where: str) -> None:
    from mixsweep.spec_fields import MAX_SEED

    def raw(v: int) -> dict[str, Any]:
        if where == "seeds":
            return {"seeds": [v]}
        section, key = where.split(".")
        return {section: {key: v}}

    assert MAX_SEED == 2**32 - 1
    parse_spec({"name": "t", **raw(MAX_SEED)})
    parse_spec({"name": "t", **raw(0)})
    for bad in (MAX_SEED + 1, -1, 2**64):
        (line,) = problems(raw(bad))
        assert line.startswith(where) and "a seed must be in [0, 4294967295]" in line, line


def test_the_largest_seed_runs_through_every_generator_that_takes_one() -> None:
    import torch
    from pydantic import ValidationError

    from mixsweep.data.loaders import epoch_generator
    from mixsweep.data.split import labeled_split
    from mixsweep.linearity import probe_set
    from mixsweep.spec_fields import MAX_SEED

    torch.Generator().manual_seed(MAX_SEED)
    epoch_generator(MAX_SEED, 10_000, 5)  # (seed * 1_000_003 + epoch) * 7 + stream < 2**64
    labels = torch.arange(40) % 4
    assert len(labeled_split(labels, 0.5, MAX_SEED).labeled) == 20
    assert probe_set(torch.zeros(10, 1, 2, 2), 4, seed=MAX_SEED).shape[0] == 4
    with pytest.raises(ValidationError, match="a seed must be in"):
        TrialConfig(seed=MAX_SEED + 1)


def test_dataset_size_table_matches_the_data_code() -> None:
    """digits and synthetic are computed here; the CIFAR and SVHN numbers are the official
    train splits' (see the comment at TRAIN_SIZES)."""
    from mixsweep.data.datasets import load_dataset, synthetic
    from mixsweep.names import NUM_CLASSES, TRAIN_SIZES

    for name, data in (("digits", load_dataset("digits")), ("synthetic", synthetic())):
        counts = [int((data.train_y == c).sum()) for c in range(NUM_CLASSES[name])]
        assert TRAIN_SIZES[name] == (len(data.train_y), min(counts)), name
    assert set(TRAIN_SIZES) == set(NUM_CLASSES)
    for name, (n, smallest) in TRAIN_SIZES.items():
        assert smallest * NUM_CLASSES[name] <= n


@pytest.mark.parametrize(("dataset", "most"), [("cifar10", 50_000), ("cifar100", 50_000),
                                               ("svhn", 46_590), ("digits", 1_390),
                                               ("synthetic", 2_000)])
def test_num_labels_above_a_class_are_refused(dataset: str, most: int) -> None:
    (t,) = expand(spec(data={"dataset": dataset, "num_labels": most}))
    assert t.data.num_labels == most
    over = most + (10 if dataset != "cifar100" else 100)
    (line,) = problems({"data": {"dataset": dataset, "num_labels": over}})
    assert line.startswith(f"data.num_labels: {over} needs"), line
    assert f"at most {most} labels" in line, line
    # one rule: a TrialConfig (a trial file, a stored config) refuses it too
    with pytest.raises(ValueError, match=f"at most {most} labels"):
        TrialConfig(data={"dataset": dataset, "num_labels": over})


def test_a_batch_larger_than_the_training_set_is_refused() -> None:
    assert expand(spec(train={"batch_size": 1437}))  # digits: 1437 training examples
    (line,) = problems({"train": {"batch_size": [256, 1438]}})
    assert line == ("train.batch_size: 1438 is larger than the 1437 training examples of digits "
                    "(at most 1437)"), line
    (line,) = problems({"data": {"dataset": ["digits", "cifar10"]}, "train": {"batch_size": 4096}})
    assert "digits" in line


def test_a_batch_larger_than_the_labeled_set_is_kept() -> None:
    """The loaders cycle the labeled subset (back-to-back shuffles), so every step has a full
    labeled batch: 250 CIFAR-10 labels with batch 512 (sweeps/paper/q2) is a real setup."""
    import torch

    from mixsweep.data.loaders import stream_indices

    assert len(expand(spec(data={"dataset": "cifar10", "num_labels": 250},
                           train={"batch_size": 512}))) == 1
    assert len(expand(spec(data={"labeled_fraction": 0.01}, train={"batch_size": 512}))) == 1
    drawn = stream_indices(torch.arange(25), 512, torch.Generator().manual_seed(0))
    assert len(drawn) == 512 and set(drawn.tolist()) == set(range(25))


@pytest.mark.parametrize(("mode", "key"), [(m, k) for m in ("unsup", "both", "mt")
                                           for k in ("unsup_weight", "ema_max_decay", "rampup")])
def test_consistency_modes_need_their_settings(mode: str, key: str) -> None:
    mixup = {"mode": mode, key: None}
    (line,) = problems({"mixup": mixup})
    assert line == (f"mixup: mode {mode!r} needs unsup_weight, ema_max_decay and rampup "
                    f"(got null: {key})"), line
    # modes without a consistency loss ignore the settings, null or not
    assert expand(spec(mixup={"mode": ["erm", "sup"], key: None}))


# --------------------------------------------------------------------------- slurm section


def test_grace_must_be_shorter_than_the_time() -> None:
    assert spec(slurm={"time": "6", "grace_seconds": 300}).slurm is not None  # 360 s > 300 s
    (line,) = problems({"slurm": {"time": "5"}})  # 300 s, the default grace 300 s
    assert line.startswith("slurm.grace_seconds: 300 is not shorter than slurm.time '5' (300 s)")
    (line,) = problems({"slurm": {"time": "1-00", "grace_seconds": 90_000}})
    assert "(86400 s)" in line


@pytest.mark.parametrize(
    ("resources", "slurm", "first", "second"),
    [
        ({"cpus_per_trial": 8}, {"cpus_per_node": 4}, "resources.cpus_per_trial: 8 is more",
         "slurm.cpus_per_node 4"),
        ({"cpus_per_trial": 2.5}, {"cpus_per_node": 2}, "resources.cpus_per_trial: 2.5 is more",
         "slurm.cpus_per_node 2"),
        ({"gpus_per_trial": 0.25}, {}, "resources.gpus_per_trial: 0.25 is more",
         "slurm.gpus_per_node 0"),
        ({"gpus_per_trial": 2}, {"gpus_per_node": 1}, "resources.gpus_per_trial: 2 is more",
         "slurm.gpus_per_node 1"),
    ],
)
def test_a_trial_must_fit_on_a_node(resources: dict, slurm: dict, first: str, second: str) -> None:
    (line,) = problems({"resources": resources, "slurm": slurm})
    assert line.startswith(first) and second in line, line
    # without a slurm: section the local check is the launcher's, not the spec's
    assert spec(resources=resources).resources


def test_trials_that_fit_a_node_pass() -> None:
    s = spec(resources={"cpus_per_trial": 64, "gpus_per_trial": 8},
             slurm={"cpus_per_node": 64, "gpus_per_node": 8})
    assert s.slurm.cpus_per_node == 64


def _rendered_options() -> list[str]:
    """Every #SBATCH option mixsweep renders, with all optional settings given."""
    from mixsweep import slurm

    script = slurm.render_sbatch(job_name="j", workdir="w", spec_file="s.yaml", log_dir="l",
                                 gpus_per_node=8, partition="p", account="a", qos="q", mem="4G")
    return [line.split()[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_extra_sbatch_refuses_every_option_mixsweep_renders() -> None:
    options = _rendered_options()
    assert len(options) >= 15
    for opt in options:
        long_name = opt[2:].split("=", 1)[0]
        (line,) = problems({"slurm": {"extra_sbatch": ["--constraint=a100", opt]}})
        assert line.startswith(f"slurm.extra_sbatch: {opt!r} sets --{long_name}, which mixsweep "
                               "sets"), line


@pytest.mark.parametrize(
    ("opt", "message"),
    [
        ("--time=2:00:00", "'--time=2:00:00' sets --time, which mixsweep sets from slurm.time; "
                           "set slurm.time instead"),
        ("-t120", "sets --time, which mixsweep sets from slurm.time"),
        ("-t", "sets --time"),
        ("--tim=5", "sets --time"),  # sbatch takes an unambiguous prefix of a long name
        ("-o", "sets --output, which mixsweep sets itself and relies on"),
        ("-oslurm.log", "sets --output"),
        ("-e", "sets --error"),
        ("-J", "sets --job-name"),
        ("-N2", "sets --nodes, which mixsweep sets from slurm.nodes"),
        ("-n4", "sets --ntasks"),
        ("-c8", "sets --cpus-per-task, which mixsweep sets from slurm.cpus_per_node"),
        ("-G2", "sets --gpus, which mixsweep sets from slurm.gpus_per_node"),
        ("--gpus-per-node=2", "from slurm.gpus_per_node"),
        ("-pgpu", "from slurm.partition"),
        ("-Aproj", "from slurm.account"),
        ("-qhigh", "from slurm.qos"),
        ("-k", "sets --no-kill"),
        ("-Ht1", "sets --time"),  # grouped short flags: -H (hold) then -t
        ("--no-requeue", "sets --no-requeue"),
        ("--signal=B:USR2@60", "sets --signal"),
        ("--array=0-3", "sets --array"),
        ("--constraint=a100 --exclusive", "must be one sbatch option, its value after '='"),
        ("--constraint a100", "no spaces, quotes or backslashes"),
        ("--comment='x'", "no spaces, quotes or backslashes"),
        ('--comment="x"', "no spaces, quotes or backslashes"),
        ("--comment=a\\b", "no spaces, quotes or backslashes"),
    ],
)
def test_extra_sbatch_refusals(opt: str, message: str) -> None:
    (line,) = problems({"slurm": {"extra_sbatch": [opt]}})
    assert line.startswith(f"slurm.extra_sbatch: {opt!r} ") and message in line, line


def test_extra_sbatch_keeps_options_mixsweep_does_not_set() -> None:
    kept = ["--constraint=a100", "--exclusive", "-wnode01", "--nodelist=node[01-04]", "-s",
            "--gres-flags=enforce-binding", "--time-min=60", "--mem-per-cpu=4G", "-Cv100",
            "--mail-type=END", "--chdir=/scratch", "-Dx"]
    assert spec(slurm={"extra_sbatch": kept}).slurm.extra_sbatch == kept
    (line,) = problems({"slurm": {"mem": "64G", "extra_sbatch": ["--mem-per-cpu=4G"]}})
    assert "exclude each other" in line


# --------------------------------------------------------------------------- keys the message names


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"labeled-fraction": 0.1},
         "data: unknown key 'labeled-fraction' (did you mean 'labeled_fraction'?); allowed: dataset, "),
        ({"labeled fraction": 0.1}, "data: unknown key 'labeled fraction' (did you mean 'labeled_fraction'?)"),
        ({1: "x"}, "data: unknown key 1 (keys are names, not numbers or null); allowed: dataset"),
        ({None: "x"}, "data: unknown key None (keys are names, not numbers or null)"),
        ({"None": "x"}, "data: unknown key 'None'; allowed"),
        ({"labeled_fractión": 0.1}, "data: unknown key 'labeled_fractión' (did you mean 'labeled_fraction'?)"),
        ({"x" * 500: 1}, "data: unknown key '" + "x" * 35 + "...'; allowed"),
        ({"a\nb": 1}, "data: unknown key 'a\\nb'; allowed"),
    ],
)
def test_unknown_keys_are_named_whatever_they_are(data: dict, message: str) -> None:
    (line,) = problems({"data": data})
    assert line.startswith(message), line
    assert "\n" not in line and len(line) < 300


def test_odd_keys_at_the_top_and_in_maps() -> None:
    (line,) = problems({1: "x"})
    assert line.startswith("<top>: unknown key 1 (keys are names, not numbers or null); allowed: name")
    (line,) = problems({"train": {"target_accuracy": {"cifar-10": 0.5}}})
    assert line.startswith("train.target_accuracy.cifar-10: Input should be 'cifar10'"), line
    (line,) = problems({"train": {"target_accuracy": {1: 0.5}}})  # a map key, not a list index
    assert line.startswith("train.target_accuracy.1: Input should be 'cifar10'"), line


def test_a_value_that_fits_no_branch_of_a_union_gets_one_line() -> None:
    (line,) = problems({"train": {"target_accuracy": "high"}})
    assert line.startswith("train.target_accuracy: Input should be a valid number"), line
    (line,) = problems({"train": {"epoch_seconds_hint": True}})
    assert line.startswith("train.epoch_seconds_hint: Input should be a valid number, not true/false")


@pytest.mark.parametrize("sections", [
    {"data": {"dataset": ["cifar10", "digits"], "num_labels": {"cifar10": [250]}}},
    {"train": {"batch_size": [64, 5000]}, "data": {"dataset": ["digits", "cifar10"]}},
    {"mixup": {"mode": ["erm", "sup", "both"], "k": [2, None]}},
    {"mixup": {"mode": ["unsup", "mt"], "rampup": [None]}},
    {"train": {"epoch_seconds_hint": {"erm": 1.0}}, "mixup": {"mode": ["erm", "unsup"]}},
    {"train": {"target_accuracy": {"cifar10": 0.8}}, "data": {"dataset": ["cifar10", "svhn"]}},
    {"data": {"dataset": ["digits"], "labeled_fraction": [1.0, 0.5], "num_labels": [None, 100]}},
])
def test_parse_spec_finds_the_problem_expansion_would_meet_first(sections: dict) -> None:
    """parse_spec checks the rules on the grid's points, without building the trials: the
    same first problem as expanding the unchecked grid (one line)."""
    from mixsweep.spec import SweepSpec

    raw = {"name": "x", **sections}
    with pytest.raises(SpecError) as checked:
        parse_spec(raw)
    with pytest.raises(SpecError) as expanded:
        expand(SweepSpec.model_validate(raw))
    assert checked.value.problems == expanded.value.problems
    assert len(checked.value.problems) == 1


def test_expanded_ids_match_the_config_and_survive_a_copy() -> None:
    """expand sets each trial's id from its sections' identities once; it must equal the id
    computed from the config, and a copy with another value gets its own id."""
    trials = expand(spec(mixup={"mode": ["erm", "sup", "unsup"], "k": [2, 3]}, seeds=[0, 1]))
    for t in trials:
        assert t.trial_id == TrialConfig.model_validate(t.model_dump()).trial_id
    other = trials[0].model_copy(update={"seed": 7})
    assert other.trial_id != trials[0].trial_id
    assert other.trial_id == TrialConfig.model_validate(other.model_dump()).trial_id
