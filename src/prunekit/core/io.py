"""Save and load (pruned) models without pickling: safetensors weights + a JSON spec.

A saved model is a folder holding

* ``prunekit.json`` — the format tag, the registered architecture and its arguments
  (``model.prunekit_arch``), the pruning plan that produced the model (if any), the
  name and SHA-256 of the weights file;
* ``weights.safetensors`` (or ``weights.<token>.safetensors``) — every parameter and
  buffer, in its own dtype.

Writing is one atomic switch: the new weights go to a file the current spec does not
name, then ``prunekit.json`` is replaced with ``os.replace`` (the pointer) and the
folder is fsynced; only then is the previous weights file removed. Writers of one
folder take turns on the lock file ``.prunekit.lock`` (:class:`FolderLockedError`
after ``lock_timeout`` seconds). A writer killed at any point leaves the previous
version loadable; its temporaries are removed by the next write. Files get the
usual ``0o666`` minus the umask.

Loading never executes code from the files and trusts nothing in them: file names,
types and sizes, dtypes (an allow-list), declared shapes and architecture sizes are
checked against the weights file before anything is allocated (the architecture is
first built on the ``meta`` device). Every problem raises :class:`ModelFileError`
naming the file and the field.

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
import math
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import nn

from ._atomic import (FolderLockedError, atomic_write_bytes, clean_stale, folder_lock, fsync_dir, read_regular_file,
                      token, write_temp)
from .materialize import materialize
from .plan import PruningPlan
from .structures import DTYPES

__all__ = ["save", "load", "atomic_write_bytes", "ModelFileError", "FolderLockedError"]

FORMAT = "prunekit.model/1"
WEIGHTS = "weights.safetensors"
SPEC = "prunekit.json"
_WEIGHTS_RE = re.compile(r"^weights(\.[0-9a-f]{16})?\.safetensors$")
#: seconds a writer waits for another writer of the same folder
LOCK_TIMEOUT_S = 60.0
#: a spec larger than this is refused
MAX_SPEC_BYTES = 64 << 20
#: the dense architecture of a pruned model may hold at most this many times the saved elements
MAX_PRUNE_RATIO = 100
#: example inputs declared in a plan may hold at most this many elements each
MAX_INPUT_ELEMENTS = 1 << 24
_READ_ATTEMPTS = 20


class ModelFileError(ValueError):
    """A saved model that is missing, corrupt, or does not match the model it is loaded into."""


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous().clone().cpu() for name, tensor in model.state_dict().items()}


def save(model: nn.Module, path: str | os.PathLike, plan: PruningPlan | None = None, extra: dict | None = None,
         *, lock_timeout: float = LOCK_TIMEOUT_S) -> Path:
    """Save ``model`` to the folder ``path`` (created if needed); returns the folder.

    The plan defaults to ``model.prunekit_plan`` (set by :func:`prunekit.core.materialize`),
    the architecture to ``model.prunekit_arch`` (set by :func:`prunekit.models.create`).
    Replaces an earlier save in one atomic step; raises :class:`FolderLockedError` when
    another writer holds the folder for more than ``lock_timeout`` seconds.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ModelFileError(f"{folder}: exists and is not a folder")
    plan = plan if plan is not None else getattr(model, "prunekit_plan", None)
    weights = save_bytes(_state_tensors(model))
    spec = {
        "format": FORMAT,
        "arch": getattr(model, "prunekit_arch", None),
        "plan": plan.to_dict() if plan is not None else None,
        "weights_file": WEIGHTS,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "torch": torch.__version__,
        "extra": extra or {},
    }
    with folder_lock(folder, lock_timeout):
        clean_stale(folder, legacy_prefixes=(f".{WEIGHTS}.", f".{SPEC}."))
        name = WEIGHTS if not os.path.lexists(folder / WEIGHTS) else f"weights.{token()}.safetensors"
        spec["weights_file"] = name
        text = json.dumps(spec, indent=1).encode()
        tmp = write_temp(folder / name, weights)
        try:
            os.replace(tmp, folder / name)  # named by no spec yet: harmless if we stop here
            tmp = write_temp(folder / SPEC, text)
            os.replace(tmp, folder / SPEC)  # the switch
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(folder)
        for entry in os.scandir(folder):
            if entry.name != name and _WEIGHTS_RE.match(entry.name):
                Path(entry.path).unlink(missing_ok=True)
    return folder


# --------------------------------------------------------------------------- reading


def _read_spec_bytes(spec_path: Path) -> bytes:
    try:
        return read_regular_file(spec_path, MAX_SPEC_BYTES)
    except FileNotFoundError:
        raise ModelFileError(f"{spec_path}: missing (not a prunekit model folder?)") from None
    except (OSError, ValueError) as error:
        raise ModelFileError(f"{spec_path}: cannot read: {error}") from None


def _parse_spec(raw: bytes, spec_path: Path) -> dict:
    try:
        spec = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ModelFileError(f"{spec_path}: not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{spec_path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    except RecursionError:
        raise ModelFileError(f"{spec_path}: JSON nested too deeply") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ModelFileError(f"{spec_path}: unknown format {spec.get('format') if isinstance(spec, dict) else spec!r}; "
                             f"expected {FORMAT!r}")
    name = spec.get("weights_file", WEIGHTS)
    if not isinstance(name, str) or not _WEIGHTS_RE.match(name):
        raise ModelFileError(f"{spec_path}: field 'weights_file' must be a plain name like {WEIGHTS!r}, got {name!r}")
    if not isinstance(spec.get("weights_sha256"), str):
        raise ModelFileError(f"{spec_path}: field 'weights_sha256' missing or not a string")
    return spec


def _read_spec(folder: Path) -> dict:
    spec_path = folder / SPEC
    return _parse_spec(_read_spec_bytes(spec_path), spec_path)


def _read_version(folder: Path) -> tuple[dict, Path, bytes]:
    """A consistent (spec, weights path, weights bytes); retries while writers switch versions."""
    spec_path = folder / SPEC
    for _ in range(_READ_ATTEMPTS):
        raw = _read_spec_bytes(spec_path)
        spec = _parse_spec(raw, spec_path)
        weights_path = folder / spec.get("weights_file", WEIGHTS)
        try:
            data = read_regular_file(weights_path)
            problem = None if hashlib.sha256(data).hexdigest() == spec["weights_sha256"] else \
                f"{weights_path}: checksum mismatch with {spec_path} (corrupt or replaced file)"
        except FileNotFoundError:
            problem = f"{weights_path}: missing"
        except (OSError, ValueError) as error:
            raise ModelFileError(f"{weights_path}: cannot read: {error}") from None
        if problem is None:
            return spec, weights_path, data
        try:
            changed = read_regular_file(spec_path, MAX_SPEC_BYTES) != raw
        except (OSError, ValueError):
            changed = True
        if not changed:  # nobody switched versions meanwhile: the folder is really broken
            break
    raise ModelFileError(problem)


def _shape(value, where: str, spec_path: Path) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 16 or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise ModelFileError(f"{spec_path}: field '{where}': shape must be a list of at most 16 "
                             f"non-negative integers, got {str(value)[:80]}")
    return tuple(value)


def _ints(value, where: str, spec_path: Path, low: int, high: int) -> None:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and low <= v < high
                                              for v in value):
        raise ModelFileError(f"{spec_path}: field '{where}': expected a list of integers in [{low}, {high})")


def _check_input_item(item, where: str, spec_path: Path) -> None:
    if not isinstance(item, dict):
        raise ModelFileError(f"{spec_path}: field '{where}': expected an object")
    shape = _shape(item.get("shape"), f"{where}.shape", spec_path)
    numel = math.prod(shape)
    if numel > MAX_INPUT_ELEMENTS:
        raise ModelFileError(f"{spec_path}: field '{where}.shape': {list(shape)} declares {numel} elements, "
                             f"more than the {MAX_INPUT_ELEMENTS} allowed for an example input")
    dtype = item.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ModelFileError(f"{spec_path}: field '{where}.dtype': unknown dtype {str(dtype)[:40]!r}; "
                             f"expected one of {sorted(DTYPES)}")
    if "values" in item:
        values = item["values"]
        if not isinstance(values, list) or len(values) != numel or \
                not all(isinstance(v, (int, float)) for v in values):
            raise ModelFileError(f"{spec_path}: field '{where}.values': expected {numel} numbers")
    for key in ("low", "high"):
        if key in item and (not isinstance(item[key], int) or abs(item[key]) > 1 << 62):
            raise ModelFileError(f"{spec_path}: field '{where}.{key}': expected an integer")
    if "low" in item and item.get("high", item["low"]) < item["low"]:
        raise ModelFileError(f"{spec_path}: field '{where}': high < low")


def _check_plan(plan, spec_path: Path, dense: dict[str, tuple[int, ...]]) -> None:
    """Bound every size a plan declares by the dense model it prunes, before anything is allocated."""
    if not isinstance(plan, dict):
        raise ModelFileError(f"{spec_path}: field 'plan': expected an object")
    total = sum(math.prod(s) for s in dense.values())
    num = plan.get("num_structures")
    if not isinstance(num, int) or isinstance(num, bool) or not 0 <= num <= total:
        raise ModelFileError(f"{spec_path}: field 'plan.num_structures': expected an integer in [0, {total}], "
                             f"got {str(num)[:40]}")
    _ints(plan.get("removed"), "plan.removed", spec_path, 0, num)
    masks = plan.get("entry_masks", {})
    if not isinstance(masks, dict):
        raise ModelFileError(f"{spec_path}: field 'plan.entry_masks': expected an object")
    for name, item in masks.items():
        where = f"plan.entry_masks.{name}"
        if name not in dense:
            raise ModelFileError(f"{spec_path}: field '{where}': the model has no parameter {name!r}")
        if not isinstance(item, dict):
            raise ModelFileError(f"{spec_path}: field '{where}': expected an object")
        shape = _shape(item.get("shape"), where + ".shape", spec_path)
        if shape != dense[name]:
            raise ModelFileError(f"{spec_path}: field '{where}.shape': {list(shape)}, "
                                 f"the parameter has {list(dense[name])}")
        _ints(item.get("zeros"), where + ".zeros", spec_path, 0, math.prod(shape))
    spec_in = plan.get("input_spec")
    if isinstance(spec_in, dict):
        items = spec_in.get("kwargs")
        if not isinstance(items, dict):
            raise ModelFileError(f"{spec_path}: field 'plan.input_spec.kwargs': expected an object")
        items = {f"plan.input_spec.kwargs.{k}": v for k, v in items.items()}
    elif isinstance(spec_in, list):
        items = {f"plan.input_spec[{i}]": v for i, v in enumerate(spec_in)}
    else:
        raise ModelFileError(f"{spec_path}: field 'plan.input_spec': expected a list or an object")
    if len(items) > 64:
        raise ModelFileError(f"{spec_path}: field 'plan.input_spec': {len(items)} inputs, at most 64 allowed")
    for where, item in items.items():
        _check_input_item(item, where, spec_path)


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _match_dtypes(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give the model's floating parameters and buffers the dtypes they were saved in."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, saved in state.items():
        if name in params:
            p = params[name]
            if p.dtype != saved.dtype and p.is_floating_point() and saved.is_floating_point():
                p.data = p.data.to(saved.dtype)
            continue
        owner, _, attr = name.rpartition(".")
        try:
            module = model.get_submodule(owner)
        except AttributeError:
            continue
        buf = module._buffers.get(attr)
        if buf is not None and buf.dtype != saved.dtype and buf.is_floating_point() and saved.is_floating_point():
            module._buffers[attr] = buf.to(saved.dtype)


def _read_weights(data: bytes, weights_path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file's bytes."""
    try:
        return load_bytes(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as error:
        raise ModelFileError(f"{weights_path}: unreadable safetensors file: {error}") from None


def _recorded_arch(spec: dict, spec_path: Path) -> dict:
    """The spec's ``arch`` entry, checked to be ``{"name": str, "kwargs": {...}}``."""
    arch = spec.get("arch")
    if not arch:
        raise ModelFileError(f"{spec_path}: no registered architecture recorded; pass model=<your dense model>")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or \
            not isinstance(arch.get("kwargs", {}), dict):
        raise ModelFileError(f"{spec_path}: field 'arch': expected {{\"name\": str, \"kwargs\": {{...}}}}")
    return arch


def _arch_shapes(arch: dict, spec: dict, spec_path: Path, weights_path: Path,
                 saved_numel: int) -> dict[str, tuple[int, ...]]:
    """The dense shapes of the recorded architecture, built on the meta device; refuses one far
    larger than the saved weights can account for."""
    from .. import models
    try:
        with torch.device("meta"):  # sizes only: nothing is allocated
            dense = _shapes(models.create(arch["name"], **arch.get("kwargs", {})))
    except Exception as error:  # noqa: BLE001 - file content: report, never crash
        raise ModelFileError(f"{spec_path}: field 'arch': cannot rebuild architecture "
                             f"{str(arch)[:200]}: {error}") from None
    dense_numel = sum(math.prod(s) for s in dense.values())
    bound = saved_numel if spec.get("plan") is None else MAX_PRUNE_RATIO * saved_numel + (1 << 16)
    if dense_numel > bound:
        raise ModelFileError(f"{spec_path}: field 'arch.kwargs': architecture {arch['name']!r} with "
                             f"{str(arch.get('kwargs'))[:200]} has {dense_numel} elements, but {weights_path.name} "
                             f"holds {saved_numel}: refusing to build it")
    return dense


def _build_model(model: nn.Module | None, arch: dict | None, plan: dict | None, spec_path: Path) -> nn.Module:
    """The model the weights go into: the dense model (given, or built from ``arch``), with ``plan``
    materialized on it; a given model is never modified."""
    try:
        if model is None:
            from .. import models
            model = models.create(arch["name"], **arch.get("kwargs", {}))
        if plan is not None:
            model = materialize(model, PruningPlan.from_dict(plan, source=str(spec_path)))
        else:
            model = copy.deepcopy(model)
    except ModelFileError:
        raise
    except Exception as error:  # noqa: BLE001 - file content: report, never crash
        raise ModelFileError(f"{spec_path}: field 'plan': {error}") from None
    return model


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], weights_path: Path) -> None:
    """The saved tensors have exactly the model's names and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"{weights_path}: does not match the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelFileError(f"{weights_path}: parameter {name!r} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(expected[name].shape)}")


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load a saved model; with ``model=`` (your own dense model), replay the plan on it.

    Parameters and buffers keep the dtype they were saved in (float64, bfloat16, ...).
    Raises :class:`ModelFileError` naming the file (and field or parameter) when
    something is missing, corrupt, oversized or mismatched.
    """
    folder = Path(path)
    spec_path = folder / SPEC
    spec, weights_path, data = _read_version(folder)
    state = _read_weights(data, weights_path)
    arch = None
    if model is None:
        arch = _recorded_arch(spec, spec_path)
        dense = _arch_shapes(arch, spec, spec_path, weights_path, sum(t.numel() for t in state.values()))
    else:
        dense = _shapes(model)
    if spec.get("plan") is not None:
        _check_plan(spec["plan"], spec_path, dense)
    model = _build_model(model, arch, spec.get("plan"), spec_path)
    _check_state(model, state, weights_path)
    _match_dtypes(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFileError(f"{weights_path}: {error}") from None
    return model
