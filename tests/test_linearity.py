"""The per-layer nonlinearity metric: zero on affine maps, positive on ReLU layers,
invariant to h -> c*h + b, stable across probe seeds, side-effect free."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixsweep.linearity import layer_nonlinearity, layer_stats, probe_set
from mixsweep.models import build_model


class ScaleShift(nn.Module):
    """h -> c*h + b: the transformations NL must not see."""

    def __init__(self, c: float, b: float):
        super().__init__()
        self.c, self.b = c, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c * x + self.b


def affine_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),  # affine in eval mode
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.Linear(16, 5),
    )


def relu_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(3 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 5),
    )


@pytest.fixture
def probes() -> torch.Tensor:
    return torch.randn(512, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_affine_network_is_linear(probes: torch.Tensor) -> None:
    layers = {"conv": "0", "bn": "1", "pool": "2", "fc": "4", "logits": "output"}
    for k, alpha in ((2, 1.0), (3, 0.5)):
        nl = layer_nonlinearity(affine_net(), probes[:256], layers, k=k, alpha=alpha)
        assert set(nl) == set(layers)
        for name, v in nl.items():
            assert 0 <= v <= 1e-6, (name, v)


def test_relu_layers_are_nonlinear_at_init(probes: torch.Tensor) -> None:
    layers = {"fc1": "1", "relu1": "2", "relu2": "4", "logits": "output", "probs": "softmax"}
    nl = layer_nonlinearity(relu_net(), probes, layers)
    assert nl["fc1"] <= 1e-6  # the pre-activation is still affine
    for name in ("relu1", "relu2", "logits", "probs"):
        assert nl[name] > 0.01, (name, nl[name])


def test_invariant_to_scaling_and_shifting_a_layer(probes: torch.Tensor) -> None:
    base = relu_net()
    ref = layer_nonlinearity(base, probes, {"relu1": "2"})["relu1"]
    for c, b in ((7.3, 0.0), (1.0, 3.0), (-0.2, 11.0)):
        wrapped = nn.Sequential(*base[:3], ScaleShift(c, b), *base[3:])
        got = layer_nonlinearity(wrapped, probes, {"relu1": "3"})["relu1"]
        assert got == pytest.approx(ref, rel=1e-6), (c, b)


def test_stable_across_probe_seeds(probes: torch.Tensor) -> None:
    # measured at init, seeds 0..4, std/mean per layer: this cnn (width 4, 512 gaussian
    # probes) 0.014-0.031; width 16 on digits' 360 test probes 0.011-0.041. Bound 0.1 leaves
    # a >2.4x margin.
    torch.manual_seed(0)
    model = build_model("cnn", 3, 10, 8, width=4)
    runs = [layer_nonlinearity(model, probes, seed=s) for s in range(5)]
    for name in runs[0]:
        if name == "stem_pre":  # ~1e-15: its spread is rounding noise
            continue
        v = torch.tensor([r[name] for r in runs], dtype=torch.float64)
        assert v.min() > 0.01, (name, v)
        assert float(v.std() / v.mean()) < 0.1, (name, v)


def test_same_seed_same_value_and_chunking_does_not_matter(probes: torch.Tensor) -> None:
    model = relu_net()
    layers = {"relu1": "2", "relu2": "4"}
    a = layer_stats(model, probes, layers, seed=3)
    b = layer_stats(model, probes, layers, seed=3, chunk=100)
    c = layer_stats(model, probes, layers, seed=4)
    for name in layers:
        assert a["nl"][name] == pytest.approx(b["nl"][name], rel=1e-9)
        assert a["cos"][name] == pytest.approx(b["cos"][name], rel=1e-9)
        assert a["nl"][name] != c["nl"][name]


@pytest.mark.parametrize("arch", ["cnn", "resnet18", "wrn28_2"])
def test_stem_pre_of_real_models_is_linear(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 3, 10, 16, width=8)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert "stem_pre" in model.probe_layers
    nl = layer_nonlinearity(model, x, ["stem_pre"])
    assert set(nl) == {"stem_pre"}
    assert 0 <= nl["stem_pre"] <= 1e-6


@pytest.mark.parametrize("depth", [2, 4, 8])
@pytest.mark.parametrize("batchnorm", [True, False])
def test_cnn_depth_and_batchnorm_probe_every_block(depth: int, batchnorm: bool) -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, 8, width=4, depth=depth, batchnorm=batchnorm)
    blocks = [f"block{i}" for i in range(1, depth)]
    assert list(model.probe_layers) == ["stem_pre", "stem", *blocks, "pool", "logits", "probs"]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == depth
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == batchnorm
    assert all((c.bias is None) == batchnorm for c in convs)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    nl = layer_nonlinearity(model, x)
    assert set(nl) == set(model.probe_layers) and nl["stem_pre"] < 1e-6
    assert all(0 <= v < 10 for v in nl.values())


def test_cnn_depth_4_is_the_original_network() -> None:
    """depth 4 keeps the parameter names (old checkpoints load) and the init (old results hold)."""
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, 8, width=16)
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["conv1.weight", "bn1.weight"] and "block3.0.weight" in names
    assert not any(n.startswith("block4") for n in names)
    # the same draws as before depth existed: sum |w| of that version's cnn at seed 0 (fb01f87)
    total = sum(float(p.double().abs().sum()) for p in model.state_dict().values() if p.is_floating_point())
    assert total == pytest.approx(1912.2414292193616, rel=1e-9)


@pytest.mark.parametrize("training", [True, False])
def test_mode_restored_hooks_removed_inputs_untouched(probes: torch.Tensor, training: bool) -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 3, 10, 8, width=8)
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = probes[:64].clone()
    layer_stats(model, x)
    assert all(m.training == training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(x, probes[:64])
    # eval mode during the probe: BN running stats are not updated
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_cosine_in_range(probes: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 3, 10, 8, width=8)
    stats = layer_stats(model, probes[:128])
    assert set(stats["cos"]) == set(model.probe_layers)
    for name, c in stats["cos"].items():
        assert -1.0 <= c <= 1.0, (name, c)
    assert stats["cos"]["stem_pre"] == pytest.approx(1.0, abs=1e-6)  # affine: exact interpolation


def test_cosine_is_centred(probes: torch.Tensor) -> None:
    """A large constant shift must not drive the cosine to 1 (the uncentred cosine would)."""
    base = relu_net()
    ref = layer_stats(base, probes[:128], {"h": "2"})["cos"]["h"]
    shifted = nn.Sequential(*base[:3], ScaleShift(1.0, 1e3))
    got = layer_stats(shifted, probes[:128], {"h": "3"})["cos"]["h"]
    assert got == pytest.approx(ref, abs=1e-6)
    assert ref < 0.999


def test_bad_layers_raise(probes: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        layer_nonlinearity(relu_net(), probes[:8], {"x": "nope"})
    with pytest.raises(ValueError, match="probe_layers"):
        layer_nonlinearity(relu_net(), probes[:8])


def test_probe_set_fixed_subset() -> None:
    x = torch.arange(100).view(100, 1)
    a, b = probe_set(x, 30, seed=0), probe_set(x, 30, seed=0)
    assert torch.equal(a, b) and len(a) == 30 and len(set(a.flatten().tolist())) == 30
    assert not torch.equal(a, probe_set(x, 30, seed=1))
    assert len(probe_set(x, 500)) == 100
