"""A small model registry, so a checkpoint can name its architecture instead of pickling it.

Every model factory is registered under a name together with a function that gives
the shape of one input sample. :func:`create` builds a model and records how it was
built on the instance (``model.prunekit_arch``: the name and the fully resolved,
JSON-serialisable arguments), so ``create(**spec)`` rebuilds the same architecture
from a JSON file. :func:`example_inputs` gives a seeded random batch the model
accepts (used for tracing, MAC counting and tests).

Example:
    >>> import json, torch
    >>> from prunekit import models
    >>> model = models.create("resnet20", num_classes=10, width=0.5)
    >>> model.prunekit_arch["name"], model.prunekit_arch["kwargs"]["width"]
    ('resnet20', 0.5)
    >>> spec = json.loads(json.dumps(model.prunekit_arch))
    >>> clone = models.create(spec["name"], **spec["kwargs"])
    >>> models.example_inputs(clone, batch=4).shape
    torch.Size([4, 3, 32, 32])
"""
from __future__ import annotations

import difflib
import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

__all__ = [
    "register", "create", "names", "example_inputs", "resolve_kwargs", "ModelEntry",
    "image_shape", "scaled", "check_positive", "init_weights",
]

ShapeFn = Callable[[dict], "tuple[int, ...]"]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its factory and the shape of one input sample.

    ``example_shape(args)`` receives the factory's fully resolved arguments (defaults
    filled in) and returns the shape of one sample, without the batch dimension.

    Example:
        >>> from prunekit.models.registry import _REGISTRY
        >>> _REGISTRY["resnet20"].example_shape({"in_channels": 3})
        (3, 32, 32)
    """

    name: str
    factory: Callable[..., nn.Module]
    example_shape: ShapeFn


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, example_shape_fn: ShapeFn) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory under ``name``.

    The factory must take keyword arguments only (no ``**kwargs``), every one with a
    JSON-serialisable default; ``example_shape_fn(args)`` maps the resolved arguments
    to the shape of one input sample.

    Example:
        >>> from torch import nn
        >>> @register("tiny-linear-doc", lambda a: (a["in_features"],))
        ... def tiny(in_features: int = 4, num_classes: int = 2) -> nn.Module:
        ...     return nn.Linear(in_features, num_classes)
        >>> create("tiny-linear-doc", in_features=3).prunekit_arch
        {'name': 'tiny-linear-doc', 'kwargs': {'in_features': 3, 'num_classes': 2}}
        >>> _ = _REGISTRY.pop("tiny-linear-doc")  # keep the doctest from leaking
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register: model name must be a non-empty string, got {name!r}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"register: model {name!r} is already registered")
        for p in inspect.signature(factory).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"register({name!r}): factories take named arguments only, not *{p.name}")
        _REGISTRY[name] = ModelEntry(name, factory, example_shape_fn)
        return factory

    return decorator


def names() -> list[str]:
    """Sorted names accepted by :func:`create`.

    Example:
        >>> "resnet20" in names()
        True
    """
    return sorted(_REGISTRY)


def _entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}") from None


def resolve_kwargs(name: str, **kwargs: Any) -> dict:
    """The full argument dict ``create(name, **kwargs)`` would build with, defaults filled in.

    Arguments are normalised through JSON (tuples become lists), exactly as stored in
    ``model.prunekit_arch["kwargs"]``.

    Example:
        >>> resolve_kwargs("mlp", hidden=(32,))["hidden"]
        [32]
    """
    entry = _entry(name)
    sig = inspect.signature(entry.factory)
    accepted = list(sig.parameters)
    unknown = [k for k in kwargs if k not in sig.parameters]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, accepted, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(f"model {name!r} got unexpected argument(s) {', '.join(hints)}; "
                        f"accepted arguments: {', '.join(accepted)}")
    try:
        bound = sig.bind(**kwargs)
    except TypeError as exc:
        raise TypeError(f"model {name!r}: {exc}; accepted arguments: {', '.join(accepted)}") from None
    bound.apply_defaults()
    try:
        return json.loads(json.dumps(dict(bound.arguments), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"model {name!r}: arguments must be JSON-serialisable (numbers, strings, "
                        f"lists, dicts, None) so the architecture can be saved without pickling: {exc}") from None


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` and record its recipe on the instance.

    Sets ``model.prunekit_arch = {"name": name, "kwargs": resolved}`` where
    ``resolved`` holds every factory argument (defaults included, JSON-normalised),
    so ``create(name, **resolved)`` rebuilds the same architecture even if a default
    changes later. Unknown names raise :class:`ValueError`; unknown or missing
    arguments raise :class:`TypeError`; bad values raise :class:`ValueError`; every
    message names the model.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> m = create("vgg11", num_classes=5, width=0.125)
        >>> m(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 5])
    """
    entry = _entry(name)
    resolved = resolve_kwargs(name, **kwargs)
    try:
        model = entry.factory(**resolved)
    except ValueError as exc:
        raise ValueError(f"model {name!r}: {exc}") from exc
    model.prunekit_arch = {"name": name, "kwargs": resolved}
    return model


def example_inputs(model_or_name: nn.Module | str, batch: int = 2, *, seed: int = 0, **kwargs: Any) -> torch.Tensor:
    """A seeded random input batch ``[batch, *sample_shape]`` that the model accepts.

    ``model_or_name`` is a model built by :func:`create` (its recorded arguments are
    used, overridden by ``kwargs``) or a registered name (``kwargs`` are the model's
    arguments). The global RNG is left untouched; the same ``seed`` gives the same
    tensor.

    Example:
        >>> example_inputs("stgcn", batch=3, graph="fpha").shape
        torch.Size([3, 3, 32, 21])
        >>> bool((example_inputs("mlp") == example_inputs("mlp")).all())
        True
    """
    if isinstance(model_or_name, nn.Module):
        arch = getattr(model_or_name, "prunekit_arch", None)
        if not isinstance(arch, dict) or "name" not in arch:
            raise ValueError(f"example_inputs: {type(model_or_name).__name__} was not built by "
                             "prunekit.models.create (no prunekit_arch); pass a registered name instead")
        name = arch["name"]
        args = resolve_kwargs(name, **{**arch.get("kwargs", {}), **kwargs})
    else:
        name = model_or_name
        args = resolve_kwargs(name, **kwargs)
    if int(batch) < 1:
        raise ValueError(f"example_inputs: batch must be >= 1, got {batch}")
    shape = tuple(int(s) for s in _entry(name).example_shape(args))
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn((int(batch), *shape), generator=generator)


# --------------------------------------------------------------------------------------
# Helpers shared by the model definitions.
# --------------------------------------------------------------------------------------

def image_shape(args: dict) -> tuple[int, ...]:
    """Example input shape of the image models: ``(in_channels, 32, 32)`` (CIFAR size).

    Example:
        >>> image_shape({"in_channels": 1})
        (1, 32, 32)
    """
    return (args["in_channels"], 32, 32)


def scaled(channels: int, width: float) -> int:
    """``channels × width`` rounded to the nearest integer, at least 1.

    Example:
        >>> scaled(64, 0.25), scaled(3, 0.1)
        (16, 1)
    """
    return max(1, int(round(channels * width)))


def check_positive(owner: str, **values: Any) -> None:
    """Raise ``ValueError`` naming ``owner`` unless every value is a positive number.

    Example:
        >>> check_positive("VGG", width=0.5, num_classes=10)
        >>> check_positive("VGG", width=0)
        Traceback (most recent call last):
        ...
        ValueError: VGG: width must be > 0, got 0
    """
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{owner}: {key} must be > 0, got {value!r}")


def init_weights(module: nn.Module) -> None:
    """Standard initialisation: Kaiming-normal convolutions (fan-out), unit BatchNorm, zero biases.

    Linear layers and other parameters (edge importances, attention graph biases)
    keep their own default initialisation. Apply with ``model.apply(init_weights)``.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        >>> net.apply(init_weights) and None
        >>> float(net[1].weight.detach().mean())
        1.0
    """
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
