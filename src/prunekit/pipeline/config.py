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
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "ConfigError", "MissingExtraError", "load_config", "check_data_spec", "require_yaml",
           "OPTIMIZERS", "SCHEDULES", "DATA_KEYS"]

#: Largest config file read.
MAX_CONFIG_BYTES = 1 << 20

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")


class ConfigError(ValueError):
    """A configuration is invalid. The message names the file (and line) and the key."""


class MissingExtraError(ModuleNotFoundError, RuntimeError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require_yaml():
    """The ``yaml`` module (PyYAML, the ``yaml`` extra), imported on first use.

    Raises:
        MissingExtraError: PyYAML is not installed (``pip install prunekit[yaml]``).
    """
    try:
        import yaml
    except ImportError:
        raise MissingExtraError("reading a YAML config needs PyYAML, which is not installed: "
                                "pip install 'prunekit[yaml]'", name="yaml") from None
    return yaml


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
        prunekit.pipeline.config.ConfigError: TrainConfig: key 'lr' must be > 0, got -1.0
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
        self._source, self._lines = "TrainConfig", {}

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
        obj._source, obj._lines = source, dict(lines)  # not fields: for error messages only
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
        """Keyword arguments for :func:`prunekit.pipeline.train.fit`.

        Example:
            >>> import torch
            >>> from prunekit.pipeline.train import fit
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

        try:
            return create(self.model, **self.model_kwargs)
        except (TypeError, ValueError, KeyError) as error:  # unknown model, unknown or bad model_kwargs
            key = "model_kwargs" if self.model_kwargs and isinstance(error, TypeError) else "model"
            where = _where(getattr(self, "_source", "TrainConfig"), getattr(self, "_lines", {}), key)
            text = " ".join(str(error).split()) or type(error).__name__
            raise ConfigError(f"{where}: cannot build model {self.model!r} from key {key!r}: {text}") from error

    def check_device(self) -> None:
        """Raise :class:`ConfigError` (naming file:line) when ``device`` is not available here.

        Example:
            >>> TrainConfig(model="mlp", device="cpu").check_device()
        """
        import torch

        device = self.device
        where = _where(getattr(self, "_source", "TrainConfig"), getattr(self, "_lines", {}), "device")
        if device.startswith("cuda"):
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(device[5:]) if device.startswith("cuda:") else 0
            if index >= count:
                have = f"{count} CUDA device(s)" if count else "no usable CUDA device (or a CPU-only build)"
                raise ConfigError(f"{where}: key 'device' is {device!r} but this PyTorch sees {have}; "
                                  "use 'cpu' or 'auto'")
        if device == "mps":
            backend = getattr(torch.backends, "mps", None)
            if backend is None or not backend.is_available():
                raise ConfigError(f"{where}: key 'device' is 'mps' but MPS is not available here; use 'cpu' or 'auto'")


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

    for key in ("lr", "momentum", "weight_decay", "gamma"):  # NaN passes every comparison below
        if not math.isfinite(getattr(c, key)):
            raise bad(key, "must be a finite number (not NaN or infinite)")
    for key in ("model_kwargs", "data"):
        _reject_nonfinite(getattr(c, key), key, source, lines)
    _check_ranges(c, bad)
    _check_choices(c, bad)
    check_data_spec(c.data, source, lines, prefix="data")


def _check_ranges(c: TrainConfig, bad) -> None:
    """The model name and the numbers that must be positive or non-negative (``bad(key, why)`` builds the error)."""
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


def _check_choices(c: TrainConfig, bad) -> None:
    """Optimizer, schedule (with gamma and milestones) and device."""
    if c.optimizer not in OPTIMIZERS:
        raise bad("optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
    if c.schedule not in SCHEDULES:
        raise bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
    if not 0 < c.gamma <= 1:
        raise bad("gamma", "must be in (0, 1]")
    if any(m < 0 for m in c.milestones) or list(c.milestones) != sorted(c.milestones):
        raise bad("milestones", "must be increasing non-negative epochs")
    if not (c.device in ("cpu", "cuda", "auto", "mps") or re.fullmatch(r"cuda:\d+", c.device)):
        raise bad("device", "must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")


def _reject_nonfinite(value, key: str, source: str, lines: dict) -> None:
    """NaN / infinite floats anywhere inside ``value`` raise, naming the dotted key and its line."""
    todo = [(key, value)]
    while todo:
        name, v = todo.pop()
        if isinstance(v, float) and not math.isfinite(v):
            line_key = name
            while line_key not in lines and "." in line_key:
                line_key = line_key.rsplit(".", 1)[0]
            raise ConfigError(f"{_where(source, lines, line_key)}: key {name!r} must be a finite number "
                              f"(not NaN or infinite), got {v!r}")
        if isinstance(v, dict):
            todo.extend((f"{name}.{k}", item) for k, item in v.items())
        elif isinstance(v, list):
            todo.extend((f"{name}[{i}]", item) for i, item in enumerate(v))


#: Keys a ``data:`` mapping may hold, per ``format`` (what :func:`prunekit.pipeline.dataspec.load_data` reads).
_SKELETON = {"format", "root", "length", "velocity"}
DATA_KEYS = {
    "sbu": _SKELETON | {"fold"},
    "fpha": _SKELETON | {"protocol", "skip_known_bad"},
    "synthetic-sbu": _SKELETON | {"fold", "seed", "difficulty"},
    "synthetic-fpha": _SKELETON | {"protocol", "seed", "difficulty", "skip_known_bad"},
    "digits": {"format"},
    "idx": {"format", "root"},
    "fashion-mnist": {"format", "root"},
    "cifar10": {"format", "root"},
}
_NEEDS_ROOT = ("sbu", "fpha", "idx", "fashion-mnist", "cifar10")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite_non_negative(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


#: per data key, in the order checked: (is the value valid, what the error says it must be)
_DATA_VALUES = {
    "root": (lambda v: isinstance(v, str), "must be a string (a folder)"),
    "fold": (lambda v: _is_int(v) and 1 <= v <= 5, "must be an integer 1..5 (SBU's 5-fold cross-validation)"),
    "length": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1 (frames)"),
    "velocity": (lambda v: isinstance(v, bool), "must be true/false"),
    "seed": (_is_int, "must be an integer"),
    "difficulty": (_finite_non_negative, "must be a finite number >= 0"),
    "protocol": (lambda v: v == "1:1", "must be '1:1' (FPHA's official split; the only one implemented)"),
    "skip_known_bad": (lambda v: isinstance(v, bool), "must be true/false (skip FPHA's known bad sequences)"),
}


def check_data_spec(spec: dict, source: str = "data", lines: dict | None = None, *, prefix: str = "data") -> None:
    """Validate a data spec (``data:`` of a config): known format, known keys, types and ranges.

    Raises :class:`ConfigError` naming ``source:line`` and the dotted key (``data.root``).

    Example:
        >>> check_data_spec({"format": "sbu", "root": "data/sbu", "fold": 1})
        >>> check_data_spec({"format": "sbu", "root": "x", "folds": 1})
        Traceback (most recent call last):
        ...
        prunekit.pipeline.config.ConfigError: data: unknown key 'data.folds' (did you mean 'fold'?); known keys for format 'sbu': fold, format, length, root, velocity
    """
    lines = lines or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{_where(source, lines, prefix)}: key {prefix!r} must be a mapping, got {spec!r}")
    if not spec:
        return  # an empty data spec: the caller supplies data itself

    def where(key: str) -> str:
        return _where(source, lines, f"{prefix}.{key}" if key else prefix)

    _check_data_keys(spec, prefix, where)
    for key, (valid, why) in _DATA_VALUES.items():
        if key in spec and not valid(spec[key]):
            raise ConfigError(f"{where(key)}: key '{prefix}.{key}' {why}, got {spec[key]!r}")


def _check_data_keys(spec: dict, prefix: str, where) -> None:
    """A known ``format``, only the keys it reads, and a ``root`` where it needs one."""
    fmt = spec.get("format")
    if fmt is None:
        raise ConfigError(f"{where('')}: key {prefix!r} needs a 'format' ({', '.join(DATA_KEYS)})")
    if fmt not in DATA_KEYS:
        raise ConfigError(f"{where('format')}: key '{prefix}.format' must be one of {', '.join(DATA_KEYS)}, "
                          f"got {fmt!r}")
    known = DATA_KEYS[fmt]
    for key in spec:
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise ConfigError(f"{where(key)}: unknown key '{prefix}.{key}'"
                              + (f" (did you mean {hint[0]!r}?)" if hint else "")
                              + f"; known keys for format {fmt!r}: {', '.join(sorted(known))}")
    if fmt in _NEEDS_ROOT and not spec.get("root"):
        raise ConfigError(f"{where('')}: format {fmt!r} needs '{prefix}.root', the folder holding the data")


# --------------------------------------------------------------------------- YAML


def _compose(text: str, source: str) -> tuple[Any, dict]:
    """Parse YAML safely, returning ``(data, {top-level key: 1-based line})``.

    Nested keys are recorded as dotted paths (``"data.root"``). Duplicate keys, at any
    level, are an error (plain ``yaml.safe_load`` keeps the last).
    """
    yaml = require_yaml()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from e
    lines: dict = {}

    def walk(mapping: yaml.MappingNode, prefix: str) -> None:
        for k, v in mapping.value:
            key = prefix + str(k.value)
            if key in lines:
                raise ConfigError(f"{source}:{k.start_mark.line + 1}: duplicate key {key!r} "
                                  f"(first on line {lines[key]})")
            lines[key] = k.start_mark.line + 1
            if isinstance(v, yaml.MappingNode):
                walk(v, key + ".")

    if isinstance(node, yaml.MappingNode):
        walk(node, "")
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
        prunekit.pipeline.config.ConfigError: ...c.yaml:2: unknown key 'epoch' (did you mean 'epochs'?)...
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a YAML config file")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path}: is not a regular file (a FIFO or device?), not a YAML config file")
    with open(path, "rb") as fh:  # FileNotFoundError for a missing file
        raw = fh.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: more than {MAX_CONFIG_BYTES} bytes: not a training config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}): not a YAML config") from None
    data, lines = _compose(text, str(path))
    if data is None:
        raise ConfigError(f"{path}: the file is empty")
    return TrainConfig.from_dict(data, source=str(path), lines=lines)
