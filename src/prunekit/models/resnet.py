"""CIFAR-style ResNets (He et al. 2016, §4.2): three stages of BasicBlocks, 16/32/64 channels × width.

Depth ``6n + 2``: a 3×3 stem, ``n`` blocks per stage, stride 2 at the start of stages
2 and 3, global average pool, one Linear. Shortcuts are "option B": identity when
the shape is unchanged, otherwise a 1×1 conv (with the block's stride) + BatchNorm.
Channels joined by a residual add form one pruning group.

Example:
    >>> import torch
    >>> net = ResNet(depth=20, num_classes=10)
    >>> net(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import check_positive, image_shape, init_weights, register, scaled

__all__ = ["BasicBlock", "ResNet", "resnet20", "resnet56"]


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with an option-B shortcut.

    Example:
        >>> import torch
        >>> BasicBlock(16, 32, stride=2)(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` (20, 32, 44, 56, 110, ...).

    Args:
        depth: total depth, ``6n + 2``.
        in_channels, num_classes: input channels and logits.
        width: multiplies the stage widths 16/32/64 (at least 1 channel each).

    Example:
        >>> import torch
        >>> ResNet(depth=8, in_channels=1, num_classes=3, width=0.5)(torch.randn(2, 1, 12, 12)).shape
        torch.Size([2, 3])
    """

    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet: depth must be 6n + 2 with n >= 1, got {depth}")
        check_positive("ResNet", in_channels=in_channels, num_classes=num_classes, width=width)
        blocks_per_stage = (depth - 2) // 6
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages = []
        channels = widths[0]
        for stage, out in enumerate(widths):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, out, stride))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("resnet20", image_shape)
def resnet20(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> ResNet:
    """ResNet-20 for CIFAR (3 blocks per stage); 272,474 parameters at width 1 with 10 classes.

    Example:
        >>> sum(p.numel() for p in resnet20().parameters())
        272474
    """
    return ResNet(20, in_channels, num_classes, width)


@register("resnet56", image_shape)
def resnet56(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> ResNet:
    """ResNet-56 for CIFAR (9 blocks per stage); about 0.86M parameters at width 1.

    Example:
        >>> import torch
        >>> resnet56(width=0.25)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return ResNet(56, in_channels, num_classes, width)
