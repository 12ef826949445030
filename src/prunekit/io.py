"""Save and load (pruned) models without pickling: safetensors weights + a JSON spec.

A saved model is a folder holding

* ``weights.safetensors`` — every parameter and buffer;
* ``prunekit.json`` — the format tag, the registered architecture and its arguments
  (``model.prunekit_arch``), the pruning plan that produced the model (if any), the
  SHA-256 of the weights file.

Loading never executes code from the files: the architecture is rebuilt from
prunekit's registry (or the dense model you pass), the plan is replayed with
:func:`prunekit.materialize`, then the weights are loaded strictly. Files are written
atomically (temporary file, fsync, rename), weights first and spec last, so an
interrupted save never leaves a spec pointing at a half-written file.

Example:
    >>> import torch, prunekit, tempfile
    >>> model = prunekit.models.create("resnet20", width=0.5)
    >>> folder = tempfile.mkdtemp()
    >>> _ = prunekit.save(model, folder)
    >>> reloaded = prunekit.load(folder)
    >>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    True
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import nn

from .materialize import materialize
from .plan import PruningPlan

__all__ = ["save", "load", "atomic_write_bytes", "ModelFileError"]

FORMAT = "prunekit.model/1"
WEIGHTS = "weights.safetensors"
SPEC = "prunekit.json"


class ModelFileError(ValueError):
    """A saved model that is missing, corrupt, or does not match the model it is loaded into."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous().clone().cpu() for name, tensor in model.state_dict().items()}


def save(model: nn.Module, path: str | os.PathLike, plan: PruningPlan | None = None, extra: dict | None = None) -> Path:
    """Save ``model`` to the folder ``path`` (created if needed); returns the folder.

    The plan defaults to ``model.prunekit_plan`` (set by :func:`prunekit.materialize`),
    the architecture to ``model.prunekit_arch`` (set by :func:`prunekit.models.create`).
    """
    folder = Path(path)
    plan = plan if plan is not None else getattr(model, "prunekit_plan", None)
    weights = save_bytes(_state_tensors(model))
    atomic_write_bytes(folder / WEIGHTS, weights)
    spec = {
        "format": FORMAT,
        "arch": getattr(model, "prunekit_arch", None),
        "plan": plan.to_dict() if plan is not None else None,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "torch": torch.__version__,
        "extra": extra or {},
    }
    atomic_write_bytes(folder / SPEC, json.dumps(spec, indent=1).encode())
    return folder


def _read_spec(folder: Path) -> dict:
    spec_path = folder / SPEC
    if not spec_path.is_file():
        raise ModelFileError(f"{spec_path}: missing (not a prunekit model folder?)")
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{spec_path}: invalid JSON at line {error.lineno}: {error.msg}") from error
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ModelFileError(f"{spec_path}: unknown format {spec.get('format') if isinstance(spec, dict) else spec!r}; "
                             f"expected {FORMAT!r}")
    return spec


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load a saved model; with ``model=`` (your own dense model), replay the plan on it.

    Raises :class:`ModelFileError` naming the file (and parameter) when something is
    missing, corrupt or mismatched.
    """
    folder = Path(path)
    spec = _read_spec(folder)
    weights_path = folder / WEIGHTS
    if not weights_path.is_file():
        raise ModelFileError(f"{weights_path}: missing")
    data = weights_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != spec.get("weights_sha256"):
        raise ModelFileError(f"{weights_path}: checksum mismatch with {folder / SPEC} (corrupt or replaced file)")
    try:
        state = load_bytes(data)
    except (SafetensorError, ValueError) as error:
        raise ModelFileError(f"{weights_path}: unreadable safetensors file: {error}") from error

    if model is None:
        arch = spec.get("arch")
        if not arch:
            raise ModelFileError(f"{folder / SPEC}: no registered architecture recorded; pass model=<your dense model>")
        from . import models
        try:
            model = models.create(arch["name"], **arch.get("kwargs", {}))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{folder / SPEC}: cannot rebuild architecture {arch}: {error}") from error
    if spec.get("plan") is not None:
        plan = PruningPlan.from_dict(spec["plan"], source=str(folder / SPEC))
        try:
            model = materialize(model, plan)
        except ValueError as error:
            raise ModelFileError(f"{folder / SPEC}: {error}") from error
    else:
        model = copy.deepcopy(model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"{weights_path}: does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelFileError(f"{weights_path}: parameter {name!r} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(expected[name].shape)}")
    model.load_state_dict(state, strict=True)
    return model
