"""A small DenseNet-style network (Huang et al. 2017) for small images.

A 3×3 stem, three dense blocks and two transitions, then BN-ReLU, global average
pool and one Linear. A dense layer is pre-activation ``BN → ReLU → Conv3×3`` whose
``growth_rate`` output channels are concatenated (``torch.cat``) to its input, so
channels are shared by every later layer of the block; a transition is
``BN → ReLU → Conv1×1 → AvgPool2d(2)`` (``ceil_mode=True``: any input size works).

Example:
    >>> import torch
    >>> net = DenseNet(in_channels=3, num_classes=10, growth_rate=12, layers_per_block=4)
    >>> net(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import check_positive, image_shape, init_weights, register, scaled

__all__ = ["DenseLayer", "Transition", "DenseNet", "densenet"]


class DenseLayer(nn.Module):
    """``cat([x, conv3×3(relu(bn(x)))], dim=1)``: adds ``growth_rate`` channels.

    Example:
        >>> import torch
        >>> DenseLayer(8, 4)(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 12, 5, 5])
    """

    def __init__(self, in_channels: int, growth_rate: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], dim=1)


class Transition(nn.Module):
    """``avgpool2(conv1×1(relu(bn(x))))``: changes the channel count and halves the resolution.

    Example:
        >>> import torch
        >>> Transition(12, 6)(torch.randn(2, 12, 7, 7)).shape
        torch.Size([2, 6, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNet(nn.Module):
    """Three dense blocks of ``layers_per_block`` dense layers, joined by transitions.

    Args:
        in_channels, num_classes: input channels and logits.
        growth_rate: channels added by each dense layer (the stem has ``2·growth_rate``).
        layers_per_block: dense layers per block.
        compression: a transition keeps ``max(1, floor(compression · C))`` channels.

    Example:
        >>> import torch
        >>> DenseNet(1, 3, growth_rate=4, layers_per_block=2)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, growth_rate: int = 12,
                 layers_per_block: int = 4, compression: float = 0.5, num_blocks: int = 3):
        super().__init__()
        check_positive("DenseNet", in_channels=in_channels, num_classes=num_classes, growth_rate=growth_rate,
                       layers_per_block=layers_per_block, num_blocks=num_blocks)
        if not 0 < compression <= 1:
            raise ValueError(f"DenseNet: compression must be in (0, 1], got {compression}")
        channels = 2 * growth_rate
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for b in range(num_blocks):
            layers = []
            for _ in range(layers_per_block):
                layers.append(DenseLayer(channels, growth_rate))
                channels += growth_rate
            stages.append(nn.Sequential(*layers))
            if b < num_blocks - 1:
                out = max(1, int(compression * channels))
                stages.append(Transition(channels, out))
                channels = out
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.features(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


@register("densenet", image_shape)
def densenet(in_channels: int = 3, num_classes: int = 10, growth_rate: int = 12, layers_per_block: int = 4,
             width: float = 1.0, compression: float = 0.5) -> DenseNet:
    """A small DenseNet-C: 3 blocks × ``layers_per_block`` layers; ``width`` scales the growth rate.

    Example:
        >>> import torch
        >>> densenet(growth_rate=6, layers_per_block=2)(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 10])
    """
    check_positive("densenet", width=width)
    return DenseNet(in_channels, num_classes, scaled(growth_rate, width), layers_per_block, compression)
