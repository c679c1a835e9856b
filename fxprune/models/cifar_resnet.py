"""CIFAR ResNet-20/32/56/110 (He et al. 2016, "Deep Residual Learning", section 4.2).

Layout: 3x3 conv(16) + BN + ReLU stem, three stages of ``n`` basic blocks with
16/32/64 channels (the first block of stages 2 and 3 has stride 2), global average
pool and a linear head; depth = 6n + 2.

Shortcut choice: the paper's CIFAR nets use option A (identity with zero-padded
channels and strided subsampling). That shortcut has no weights, so the extra
channels it pads cannot be pruned together with the block they skip around, and it is
not a plain module graph. We use option B instead: a 1x1 conv + BN projection where the
shape changes (twice per net) and an identity elsewhere. The cost is negligible
(+2,752 parameters, +0.26M MACs for every depth).
"""

from __future__ import annotations

from torch import Tensor, nn

from fxprune.models.init import init_weights
from fxprune.models.registry import register_model

STAGE_CHANNELS = (16, 32, 64)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers plus a shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:  # option B projection, see module docstring
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:  # x: (N, C_in, H, W)
        out = self.relu1(self.bn1(self.conv1(x)))  # (N, C_out, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (N, C_out, H/s, W/s)
        return self.relu2(out + self.shortcut(x))  # (N, C_out, H/s, W/s)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs."""

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, STAGE_CHANNELS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_CHANNELS[0])
        self.relu = nn.ReLU()
        in_channels = STAGE_CHANNELS[0]
        stages = []
        for stage_index, out_channels in enumerate(STAGE_CHANNELS):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(STAGE_CHANNELS[-1], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:  # x: (N, 3, 32, 32)
        x = self.relu(self.bn1(self.conv1(x)))  # (N, 16, 32, 32)
        x = self.layer1(x)  # (N, 16, 32, 32)
        x = self.layer2(x)  # (N, 32, 16, 16)
        x = self.layer3(x)  # (N, 64, 8, 8)
        x = self.avgpool(x).flatten(1)  # (N, 64)
        return self.fc(x)  # (N, num_classes)


@register_model
def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 for CIFAR: n=3, ~0.27M parameters, ~41M MACs."""
    return CifarResNet(20, num_classes)


@register_model
def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 for CIFAR: n=5, ~0.47M parameters, ~69M MACs."""
    return CifarResNet(32, num_classes)


@register_model
def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 for CIFAR: n=9, ~0.85M parameters, ~126M MACs."""
    return CifarResNet(56, num_classes)


@register_model
def resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 for CIFAR: n=18, ~1.73M parameters, ~253M MACs."""
    return CifarResNet(110, num_classes)


__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet56", "resnet110"]
