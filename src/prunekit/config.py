"""Training configuration: a :class:`TrainConfig` dataclass loaded from YAML.

Every top-level YAML key is a field of :class:`TrainConfig`; unknown keys, wrong
types and bad values raise :class:`ConfigError` naming the file, the line and the
key. The model registry is imported lazily (inside :meth:`TrainConfig.build_model`),
never at import time.

Example YAML (``configs/sbu_attention_gcn.yaml``)::

    model: attention_gcn
    model_kwargs: {graph: sbu}
    data: {format: sbu, root: data/sbu, fold: 1}
    epochs: 60
    optimizer: sgd
    lr: 0.05

Example:
    >>> cfg = TrainConfig(model="attention_gcn", model_kwargs={"graph": "sbu"}, epochs=2)
    >>> cfg.fit_kwargs()["epochs"], cfg.optimizer, cfg.schedule
    (2, 'sgd', 'cosine')
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TrainConfig", "ConfigError", "load_config", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")


class ConfigError(ValueError):
    """A configuration is invalid. The message names the file (and line) and the key."""


@dataclass
class TrainConfig:
    """Everything needed to train one model.

    Attributes:
        model: registry name, e.g. ``"attention_gcn"`` or ``"stgcn"``.
        model_kwargs: keyword arguments for ``prunekit.models.create``.
        data: data description, passed through to the data layer (e.g.
            ``{"format": "sbu", "root": ..., "fold": 1}``); only checked to be a mapping.
        epochs, batch_size: training length and per-process batch size.
        optimizer: ``"sgd" | "adam" | "adamw"``; ``momentum`` applies to SGD only.
        lr, weight_decay: base learning rate and weight decay.
        schedule: ``"cosine" | "step" | "constant"``, per epoch, after
            ``warmup_epochs`` of linear warm-up; ``"step"`` multiplies the rate by
            ``gamma`` at each epoch in ``milestones``.
        seed: seeds initialisation-independent randomness and the shuffling.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        out_dir: where checkpoints go (``None``: no checkpoints).
        checkpoint_every: checkpoint every this many epochs (and after the last).

    Example:
        >>> TrainConfig(model="stgcn", lr=-1.0)
        Traceback (most recent call last):
        ...
        prunekit.config.ConfigError: TrainConfig: key 'lr' must be > 0, got -1.0
    """

    model: str
    model_kwargs: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: int = 0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    seed: int = 0
    device: str = "auto"
    out_dir: str | None = None
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        _check_types(self.__dict__, "TrainConfig", {})
        _check_values(self, "TrainConfig", {})

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config", lines: dict | None = None) -> TrainConfig:
        """Build from a plain dict; errors name ``source`` (and the line from ``lines``).

        Example:
            >>> TrainConfig.from_dict({"model": "stgcn", "epochs": 3}).epochs
            3
        """
        lines = lines or {}
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of keys to values, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                hint = difflib.get_close_matches(str(key), names, n=1)
                raise ConfigError(f"{_where(source, lines, key)}: unknown key {key!r}"
                                  + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                  + f"; known keys: {', '.join(names)}")
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in d:
                raise ConfigError(f"{source}: missing required key {f.name!r}")
        _check_types(d, source, lines)
        values = dict(d)
        hints = typing.get_type_hints(cls)
        for k, v in values.items():  # ints are accepted where floats are expected
            if hints[k] is float and isinstance(v, int):
                values[k] = float(v)
        obj = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            if f.name in values:
                setattr(obj, f.name, values[f.name])
            elif f.default is not dataclasses.MISSING:
                setattr(obj, f.name, f.default)
            else:
                setattr(obj, f.name, f.default_factory())
        _check_values(obj, source, lines)
        return obj

    def to_dict(self) -> dict:
        """A plain, YAML/JSON-friendly dict (round-trips through :meth:`from_dict`).

        Example:
            >>> TrainConfig(model="stgcn").to_dict()["model"]
            'stgcn'
        """
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ use

    def fit_kwargs(self) -> dict:
        """Keyword arguments for :func:`prunekit.train.fit`.

        Example:
            >>> import torch
            >>> from prunekit.train import fit
            >>> cfg = TrainConfig(model="mlp", epochs=1, batch_size=4, device="cpu")
            >>> X, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
            >>> h = fit(torch.nn.Linear(3, 2), (X, y), None, progress=False, **cfg.fit_kwargs())
            >>> len(h["loss"])
            1
        """
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "schedule": self.schedule,
            "warmup_epochs": self.warmup_epochs,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "seed": self.seed,
            "device": self.device,
            "out_dir": self.out_dir,
            "checkpoint_every": self.checkpoint_every,
        }

    def build_model(self):
        """``prunekit.models.create(self.model, **self.model_kwargs)`` (imported lazily).

        Example:
            >>> cfg = load_config("configs/sbu_attention_gcn.yaml")  # doctest: +SKIP
            >>> model = cfg.build_model()                            # doctest: +SKIP
        """
        from prunekit.models import create  # lazy: the registry imports every model

        return create(self.model, **self.model_kwargs)


# --------------------------------------------------------------------------- checks


def _where(source: str, lines: dict, key: str) -> str:
    line = lines.get(key)
    return f"{source}:{line}" if line else source


def _type_name(tp: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false",
            dict: "a mapping", list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


def _matches(value: Any, tp: Any) -> tuple[bool, str]:
    """Does ``value`` fit the annotation ``tp``? Returns ``(ok, description of tp)``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, a) for a in typing.get_args(tp)]
        return any(ok for ok, _ in results), " or ".join(desc for _, desc in results)
    if tp is type(None):
        return value is None, "null"
    if origin is list:
        (item,) = typing.get_args(tp)
        ok = isinstance(value, list) and all(_matches(v, item)[0] for v in value)
        return ok, f"a list of {_type_name(item).split(' ', 1)[-1]}s"
    if origin is dict or tp is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value), "a mapping with string keys"
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), _type_name(float)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), _type_name(int)
    return isinstance(value, tp), _type_name(tp)


def _check_types(d: dict, source: str, lines: dict) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for key, value in d.items():
        if key not in hints:
            continue
        ok, desc = _matches(value, hints[key])
        if not ok:
            raise ConfigError(f"{_where(source, lines, key)}: key {key!r} must be {desc}, "
                              f"got {type(value).__name__} {value!r}")


def _check_values(c: TrainConfig, source: str, lines: dict) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{_where(source, lines, key)}: key {key!r} {why}, got {getattr(c, key)!r}")

    if not c.model:
        raise bad("model", "must name a registered model")
    for key in ("epochs", "batch_size", "checkpoint_every"):
        if getattr(c, key) < 1:
            raise bad(key, "must be >= 1")
    if c.lr <= 0:
        raise bad("lr", "must be > 0")
    for key in ("momentum", "weight_decay", "warmup_epochs"):
        if getattr(c, key) < 0:
            raise bad(key, "must be >= 0")
    if c.warmup_epochs >= c.epochs and c.warmup_epochs > 0:
        raise bad("warmup_epochs", f"must be smaller than epochs ({c.epochs})")
    if c.optimizer not in OPTIMIZERS:
        raise bad("optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
    if c.schedule not in SCHEDULES:
        raise bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
    if not 0 < c.gamma <= 1:
        raise bad("gamma", "must be in (0, 1]")
    if any(m < 0 for m in c.milestones) or list(c.milestones) != sorted(c.milestones):
        raise bad("milestones", "must be increasing non-negative epochs")
    if not (c.device in ("cpu", "cuda", "auto", "mps") or c.device.startswith("cuda:")):
        raise bad("device", "must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")


# --------------------------------------------------------------------------- YAML


def _compose(text: str, source: str) -> tuple[Any, dict]:
    """Parse YAML safely, returning ``(data, {top-level key: 1-based line})``.

    Duplicate top-level keys are an error (plain ``yaml.safe_load`` keeps the last).
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from e
    lines: dict = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            if key in lines:
                raise ConfigError(f"{source}:{k.start_mark.line + 1}: duplicate key {key!r} "
                                  f"(first on line {lines[key]})")
            lines[key] = k.start_mark.line + 1
    return data, lines


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML file into a validated :class:`TrainConfig`.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: invalid YAML, unknown or duplicate keys, wrong types or values;
            the message reads ``FILE:LINE: key 'NAME' ...``.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "c.yaml")
        >>> _ = open(p, "w").write("model: stgcn\\nepochs: 5\\nlr: 0.01\\n")
        >>> load_config(p).lr
        0.01
        >>> _ = open(p, "w").write("model: stgcn\\nepoch: 5\\n")
        >>> load_config(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        prunekit.config.ConfigError: ...c.yaml:2: unknown key 'epoch' (did you mean 'epochs'?)...
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data, lines = _compose(text, str(path))
    if data is None:
        raise ConfigError(f"{path}: the file is empty")
    return TrainConfig.from_dict(data, source=str(path), lines=lines)
