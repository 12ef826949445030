"""A MobileNetV2-style network (Sandler et al. 2018) in a small CIFAR-sized configuration.

Inverted residual block: ``1×1 expand conv → BN → ReLU6`` (skipped when the expansion
is 1), ``3×3 depthwise conv (groups = channels) → BN → ReLU6``, ``1×1 project conv →
BN`` (linear bottleneck), plus the input when the stride is 1 and the channel count
is unchanged. The stem is a stride-1 3×3 conv (CIFAR-style); the head is a 1×1 conv
→ BN → ReLU6, global average pool and one Linear.

Example:
    >>> import torch
    >>> net = MobileNetV2(in_channels=3, num_classes=10, width=0.5)
    >>> net(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .registry import check_positive, image_shape, init_weights, register, scaled

__all__ = ["InvertedResidual", "MobileNetV2", "MOBILENETV2_CIFAR_SMALL", "mobilenetv2"]

#: ``(expansion t, output channels c, repeats n, first stride s)`` per stage: a shortened
#: MobileNetV2 schedule for 32×32 inputs (three stride-2 stages: 32 → 4).
MOBILENETV2_CIFAR_SMALL: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 2, 2),
    (6, 64, 3, 2),
    (6, 96, 2, 1),
    (6, 160, 2, 2),
)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand (1×1) → depthwise (3×3) → project (1×1), residual when shapes match.

    Example:
        >>> import torch
        >>> block = InvertedResidual(16, 16, stride=1, expansion=6)
        >>> block.use_residual, block(torch.randn(2, 16, 8, 8)).shape
        (True, torch.Size([2, 16, 8, 8]))
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expansion: int = 6):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        hidden = max(1, int(round(in_channels * expansion)))
        self.use_residual = stride == 1 and in_channels == out_channels
        if expansion != 1:
            self.expand: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        else:
            hidden = in_channels
            self.expand = nn.Identity()
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with a configurable stage schedule.

    Args:
        in_channels, num_classes: input channels and logits.
        width: multiplies every channel count (stem, stages, head; at least 1 each).
        config: ``(t, c, n, s)`` rows, default :data:`MOBILENETV2_CIFAR_SMALL`.
        stem_channels: channels of the stride-1 3×3 stem.
        last_channels: channels of the final 1×1 conv before pooling.

    Example:
        >>> import torch
        >>> MobileNetV2(1, 3, config=[(1, 8, 1, 1), (6, 16, 2, 2)], stem_channels=8,
        ...             last_channels=32)(torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                 config: Sequence[Sequence[int]] | None = None, stem_channels: int = 32, last_channels: int = 320):
        super().__init__()
        check_positive("MobileNetV2", in_channels=in_channels, num_classes=num_classes, width=width,
                       stem_channels=stem_channels, last_channels=last_channels)
        config = MOBILENETV2_CIFAR_SMALL if config is None else config
        rows = [tuple(int(v) for v in row) for row in config]
        for row in rows:
            if len(row) != 4 or min(row) < 1 or row[3] not in (1, 2):
                raise ValueError(f"MobileNetV2: config rows are (t >= 1, c >= 1, n >= 1, s in {{1, 2}}), got {row}")
        channels = scaled(stem_channels, width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU6())
        blocks = []
        for t, c, n, s in rows:
            out = scaled(c, width)
            for i in range(n):
                blocks.append(InvertedResidual(channels, out, stride=s if i == 0 else 1, expansion=t))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        last = scaled(last_channels, width)
        self.head = nn.Sequential(nn.Conv2d(channels, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


@register("mobilenetv2", image_shape)
def mobilenetv2(in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                config: Sequence[Sequence[int]] | None = None, last_channels: int = 320) -> MobileNetV2:
    """MobileNetV2, small CIFAR configuration (:data:`MOBILENETV2_CIFAR_SMALL`) by default.

    Example:
        >>> import torch
        >>> mobilenetv2(width=0.25)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return MobileNetV2(in_channels, num_classes, width, config, last_channels=last_channels)
