"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 CIFAR inputs.

Same blocks as torchvision's ImageNet model (inverted residuals with ReLU6, linear
bottleneck, residual only when stride is 1 and channels match), with the two changes
common CIFAR ports make so the feature map is not shrunk to 1x1: the stem conv has
stride 1 (not 2) and the second stage (24 channels) has stride 1 (not 2). The final
map is 4x4 instead of 7x7. ~2.24M parameters with num_classes=10.
"""

from __future__ import annotations

from torch import Tensor, nn

from fxprune.models.init import init_weights
from fxprune.models.registry import register_model

STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# (expansion t, out channels c, repeats n, first stride s); stage 2 stride is 1 for CIFAR.
CIFAR_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) + BN + ReLU6; ``groups=in_channels`` makes it depthwise."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear project, plus identity when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, 1, 1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # x: (N, C_in, H, W)
        out = self.conv(x)  # (N, C_out, H/s, W/s)
        # use_residual is fixed at construction, so torch.fx traces a static graph.
        if self.use_residual:
            return x + out
        return out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) for 32x32 inputs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(3, STEM_CHANNELS, 3, stride=1)]
        in_channels = STEM_CHANNELS
        for expansion, out_channels, repeats, first_stride in CIFAR_STAGES:
            for repeat in range(repeats):
                stride = first_stride if repeat == 0 else 1
                layers.append(InvertedResidual(in_channels, out_channels, stride, expansion))
                in_channels = out_channels
        layers.append(ConvBNReLU6(in_channels, LAST_CHANNELS, 1, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(LAST_CHANNELS, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:  # x: (N, 3, 32, 32)
        x = self.features(x)  # (N, 1280, 4, 4)
        x = self.avgpool(x).flatten(1)  # (N, 1280)
        return self.classifier(x)  # (N, num_classes)


@register_model
def mobilenetv2(num_classes: int = 10) -> CifarMobileNetV2:
    """MobileNetV2 for CIFAR: ~2.24M parameters, ~88M MACs."""
    return CifarMobileNetV2(num_classes)


__all__ = ["CifarMobileNetV2", "InvertedResidual", "mobilenetv2"]
