"""VGG with BatchNorm, CIFAR-style: 3×3 conv-BN-ReLU stages, a global average pool and one Linear.

Max-pools use ``ceil_mode=True`` so any input size works (a 1×1 map stays 1×1).

Example:
    >>> import torch
    >>> net = VGG("vgg11", in_channels=3, num_classes=10, width=0.25)
    >>> net(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .registry import check_positive, image_shape, init_weights, register, scaled

__all__ = ["VGG", "VGG_CONFIGS", "vgg11", "vgg16"]

VGG_CONFIGS: dict[str, tuple] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG-BN: ``features`` (conv3×3-BN-ReLU and max-pools) → adaptive avg-pool(1) → Linear.

    Args:
        config: a key of :data:`VGG_CONFIGS` or a sequence of channel counts and ``"M"``.
        in_channels, num_classes: input channels and logits.
        width: channel multiplier (each layer keeps at least 1 channel).

    Example:
        >>> import torch
        >>> VGG([8, "M", 16], in_channels=1, num_classes=3)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 3])
    """

    def __init__(self, config: str | Sequence = "vgg16", in_channels: int = 3, num_classes: int = 10,
                 width: float = 1.0):
        super().__init__()
        if isinstance(config, str):
            if config not in VGG_CONFIGS:
                raise ValueError(f"VGG: unknown config {config!r}; known: {sorted(VGG_CONFIGS)}")
            config = VGG_CONFIGS[config]
        check_positive("VGG", in_channels=in_channels, num_classes=num_classes, width=width)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
                continue
            out = scaled(int(item), width)
            layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        if not any(isinstance(m, nn.Conv2d) for m in layers):
            raise ValueError("VGG: config has no convolution")
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register("vgg11", image_shape)
def vgg11(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> VGG:
    """VGG-11 with BatchNorm (8 conv layers), CIFAR-style head; 9.2M parameters at width 1.

    Example:
        >>> import torch
        >>> vgg11(width=0.25)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return VGG("vgg11", in_channels, num_classes, width)


@register("vgg16", image_shape)
def vgg16(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> VGG:
    """VGG-16 with BatchNorm (13 conv layers), CIFAR-style head; 14.7M parameters at width 1.

    Example:
        >>> import torch
        >>> vgg16(in_channels=1, num_classes=4, width=0.125)(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 4])
    """
    return VGG("vgg16", in_channels, num_classes, width)
