"""VGG16-BN for CIFAR (32x32 inputs).

Features follow the classic cfg 64,64,M,128,128,M,256x3,M,512x3,M,512x3,M, each conv
3x3 (no bias) + BN + ReLU. Head choice: 512 -> 512 (BN1d, ReLU) -> num_classes, as in
the CIFAR VGG-16 of Li et al. 2017 ("Pruning Filters for Efficient ConvNets", 1.5e7
params) and its reference code. That gives 14.99M parameters and ~314M MACs with
num_classes=10; the single-Linear(512, num_classes) head would give 14.73M.
"""

from __future__ import annotations

from torch import Tensor, nn

from fxprune.models.init import init_weights
from fxprune.models.registry import register_model

MAX_POOL = "M"
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, MAX_POOL,
    128, 128, MAX_POOL,
    256, 256, 256, MAX_POOL,
    512, 512, 512, MAX_POOL,
    512, 512, 512, MAX_POOL,
)  # fmt: skip


def _make_features(cfg: tuple[int | str, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for entry in cfg:
        if entry == MAX_POOL:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_channels = int(entry)
        layers += [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        ]
        in_channels = out_channels
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """VGG with BN for 32x32 inputs and a 512-512-classes head."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10) -> None:
        super().__init__()
        self.features = _make_features(cfg)
        last_channels = [int(entry) for entry in cfg if entry != MAX_POOL][-1]
        # A 32x32 input is already 1x1 here; the pool keeps larger inputs working.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_channels, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:  # x: (N, 3, 32, 32)
        x = self.features(x)  # (N, 512, 1, 1)
        x = self.avgpool(x).flatten(1)  # (N, 512)
        return self.classifier(x)  # (N, num_classes)


@register_model
def vgg16_bn(num_classes: int = 10) -> CifarVGG:
    """VGG16-BN for CIFAR: ~15.0M parameters, ~314M MACs."""
    return CifarVGG(VGG16_CFG, num_classes)


__all__ = ["VGG16_CFG", "CifarVGG", "vgg16_bn"]
