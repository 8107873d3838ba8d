"""Models: ``cnn`` (small), ``resnet18`` (CIFAR stem), ``wrn28_2``.

Each model has ``probe_layers``: probe name -> submodule path (or ``"output"``
/ ``"softmax"``), in network order. Probes: the first layer's pre-activation
(a sanity probe, NL ~ 0), every block/stage output after its nonlinearity,
the pooled feature, the logits and the softmax probabilities.
ResNet: He et al., arXiv 1512.03385; WRN: Zagoruyko & Komodakis, arXiv 1605.07146.
"""

from __future__ import annotations

from torch import nn

from mixsweep.names import ARCHS

_HEAD = {"logits": "output", "probs": "softmax"}


def _conv_block(cin: int, cout: int, pool: bool, batchnorm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=False))
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class CNN(nn.Module):
    """A conv stem + ``depth - 1`` conv blocks + linear head; ``depth`` counts conv layers.

    Block i has width ``min(2**i, 4) * width`` and max-pools while its input map is
    at least 4 px. ``depth=4`` (stem + 3 blocks) is the original network. Without
    ``batchnorm`` the convolutions get a bias instead.
    """

    def __init__(self, in_channels: int, num_classes: int, size: int, width: int = 32,
                 depth: int = 4, batchnorm: bool = True):
        super().__init__()
        if depth < 2:
            raise ValueError(f"cnn depth must be >= 2 (a stem and one block), got {depth}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        self.act1 = nn.ReLU()
        cin, self.blocks = width, []
        for i in range(1, depth):  # attributes block1, block2, ...: the state-dict keys of depth 4
            pool = size >= 4
            size = size // 2 if pool else size
            cout = min(2**i, 4) * width
            setattr(self, f"block{i}", _conv_block(cin, cout, pool, batchnorm))
            self.blocks.append(f"block{i}")
            cin = cout
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        if not batchnorm:  # a plain deep net trains only from a He init (He et al. 1502.01852)
            for mod in self.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                    if mod.bias is not None:  # always here: no BN, so the convs have a bias
                        nn.init.zeros_(mod.bias)
        self.probe_layers = {
            "stem_pre": "conv1",
            "stem": "act1",
            **{name: name for name in self.blocks},
            "pool": "pool",
            **_HEAD,
        }

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        for name in self.blocks:
            x = getattr(self, name)(x)
        return self.fc(self.pool(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU()
        cin, stages = 64, []
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(512, num_classes)
        self.probe_layers = {
            "stem_pre": "conv1",
            "stem": "act1",
            **{f"layer{i}": f"layer{i}" for i in range(1, 5)},
            "pool": "pool",
            **_HEAD,
        }

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x))


class WideBlock(nn.Module):
    """Pre-activation wide block (BN-ReLU-conv twice + shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = self.relu1(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.relu2(self.bn2(y)))
        return y + (self.shortcut(o) if self.shortcut is not None else x)


class WRN(nn.Module):
    """WRN-depth-width; stage outputs are probed after their next BN-ReLU."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, widen: int = 2):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages, cin = [], widths[0]
        for i, stride in enumerate((1, 2, 2)):
            blocks = [WideBlock(cin if j == 0 else widths[i + 1], widths[i + 1], stride if j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = widths[i + 1]
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(cin)
        self.act = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        # block1/2 outputs are residual sums; their nonlinearity is the next block's BN-ReLU
        self.probe_layers = {
            "stem_pre": "conv1",
            "block1": "block2.0.relu1",
            "block2": "block3.0.relu1",
            "block3": "act",
            "pool": "pool",
            **_HEAD,
        }

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(self.act(self.bn(x))))


def build_model(arch: str, in_channels: int, num_classes: int, size: int, width: int = 32,
                depth: int = 4, batchnorm: bool = True) -> nn.Module:
    """A fresh model for inputs (in_channels, size, size); width/depth/batchnorm: cnn only."""
    if arch == "cnn":
        return CNN(in_channels, num_classes, size, width, depth, batchnorm)
    if arch == "resnet18":
        return ResNet18(in_channels, num_classes)
    if arch == "wrn28_2":
        return WRN(in_channels, num_classes, 28, 2)
    raise ValueError(f"unknown arch {arch!r}; allowed: {', '.join(ARCHS)}")
