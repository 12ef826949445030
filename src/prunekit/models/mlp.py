"""A multi-layer perceptron for small images (MNIST / Fashion-MNIST / digits).

The input is average-pooled adaptively to the configured spatial size (the identity
at that size), flattened once, then passed through ``Linear → ReLU`` hidden layers
and a final ``Linear``. Hidden neurons are the prunable structures.

Example:
    >>> import torch
    >>> net = MLP(in_channels=1, num_classes=10, hidden=(64, 32), input_size=(28, 28))
    >>> net(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .registry import check_positive, register, scaled

__all__ = ["MLP", "mlp"]


class MLP(nn.Module):
    """``AdaptiveAvgPool2d(input_size) → flatten → [Linear → ReLU]* → Linear``.

    Args:
        in_channels: input channels.
        num_classes: output logits.
        hidden: widths of the hidden layers (may be empty: a linear classifier).
        input_size: ``(H, W)`` the input is pooled to before flattening; inputs of
            exactly that size pass through unchanged.

    Example:
        >>> import torch
        >>> MLP(3, 4, hidden=(8,), input_size=(4, 4))(torch.randn(5, 3, 9, 9)).shape
        torch.Size([5, 4])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, hidden: Sequence[int] = (256, 128),
                 input_size: Sequence[int] = (28, 28)):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        input_size = tuple(int(s) for s in input_size)
        if len(input_size) != 2:
            raise ValueError(f"MLP: input_size must be (H, W), got {input_size}")
        check_positive("MLP", in_channels=in_channels, num_classes=num_classes)
        for i, h in enumerate(hidden):
            check_positive("MLP", **{f"hidden[{i}]": h})
        check_positive("MLP", height=input_size[0], width=input_size[1])
        self.pool = nn.AdaptiveAvgPool2d(input_size)
        layers: list[nn.Module] = []
        features = in_channels * input_size[0] * input_size[1]
        for h in hidden:
            layers += [nn.Linear(features, h), nn.ReLU()]
            features = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(self.features(x))


def _mlp_shape(args: dict) -> tuple[int, ...]:
    shape = args["input_shape"]
    c = args["in_channels"] if args["in_channels"] is not None else (shape[0] if len(shape) == 3 else 1)
    return (c, *shape[-2:])


@register("mlp", _mlp_shape)
def mlp(in_channels: int | None = None, num_classes: int = 10, hidden: Sequence[int] = (256, 128),
        input_shape: Sequence[int] = (1, 28, 28), width: float = 1.0) -> MLP:
    """An MLP for ``input_shape = (C, H, W)`` images; ``in_channels`` (if given) overrides ``C``.

    ``width`` scales every hidden layer (at least 1 neuron). Inputs of another
    spatial size are average-pooled to ``(H, W)``.

    Example:
        >>> import torch
        >>> net = mlp(num_classes=10)                   # 784 → 256 → 128 → 10
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> mlp(in_channels=3, input_shape=(3, 8, 8), hidden=(32,))(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 10])
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) not in (2, 3):
        raise ValueError(f"mlp: input_shape must be (C, H, W) or (H, W), got {input_shape}")
    check_positive("mlp", width=width)
    c = in_channels if in_channels is not None else (input_shape[0] if len(input_shape) == 3 else 1)
    return MLP(c, num_classes, tuple(scaled(h, width) for h in hidden), input_shape[-2:])
