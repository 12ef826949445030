"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a pair of files with one stem::

    <stem>.safetensors   model state_dict, optimizer/scheduler tensors, torch RNG state
    <stem>.json          epoch, optimizer param_groups and step counts, scheduler state,
                         numpy/python RNG states, your ``extra`` dict, and the SHA-256
                         of the ``.safetensors`` file it belongs to

The JSON is the commit record: the tensors go to a file that no committed JSON
names (``<stem>.safetensors``, or ``<stem>.<token>.safetensors`` when that name is
taken), then the JSON is replaced with ``os.replace`` and the folder fsynced, so a
writer killed at any moment leaves the previous version of the checkpoint loadable.
Saving into a *directory* names the checkpoint ``epoch-NNNN`` and then atomically
rewrites the directory's ``latest`` pointer file; a missing pointer falls back to the
newest complete checkpoint. Writers of one folder take turns on the lock file
``.prunekit.lock`` (:class:`FolderLockedError` after ``lock_timeout`` seconds);
temporaries of killed writers are removed by the next write; files get ``0o666``
minus the umask.

Loading never executes code from a file: JSON is parsed with :mod:`json`, tensors
with :mod:`safetensors`. The tensor file a JSON names must be a plain name in the
same folder and a regular file of the recorded size; every problem raises
:class:`CheckpointError` naming the file.

Non-JSON values inside optimizer/scheduler states or ``extra`` are encoded with
small tags: tensors become ``{"__tensor__": key}`` (the tensor lives in the
safetensors file), tuples ``{"__tuple__": [...]}`` and dicts with non-string keys
``{"__items__": [[key, value], ...]}``, so states round-trip exactly.

Example:
    >>> import tempfile, torch
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> run = tempfile.mkdtemp()
    >>> path = save_checkpoint(run, model, opt, epoch=3, extra={"acc": 0.5})
    >>> path.name
    'epoch-0003.json'
    >>> info = load_checkpoint(run, model, opt)   # a directory: follows ``latest``
    >>> info["epoch"], info["extra"]
    (3, {'acc': 0.5})
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from ..core._atomic import (FolderLockedError, atomic_write_bytes, clean_stale, folder_lock, fsync_dir,
                            read_regular_file, token, write_temp)

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "LATEST",
    "FolderLockedError",
]

log = logging.getLogger("prunekit")

FORMAT = "prunekit.pipeline.checkpoint"
VERSION = 1
LATEST = "latest"
_SUFFIXES = (".safetensors", ".json")
_EPOCH_RE = re.compile(r"^epoch-(\d+)\.json$")
_TENSORS_NAME_RE = re.compile(r"^[A-Za-z0-9_+=,@-][A-Za-z0-9_.+=,@-]*\.safetensors$")
_TOKEN_RE = re.compile(r"\.[0-9a-f]{16}$")
#: seconds a writer waits for another writer of the same folder
LOCK_TIMEOUT_S = 60.0
MAX_JSON_BYTES = 256 << 20
_READ_ATTEMPTS = 20


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, truncated, or does not fit the model.

    The message always starts with the offending file's path.
    """


# --------------------------------------------------------------------------- paths


def _sibling(stem: Path, suffix: str) -> Path:
    return stem.parent / (stem.name + suffix)


def _resolve_stem(path: str | os.PathLike, epoch: int | None) -> tuple[Path, bool]:
    """``(folder/stem without suffix, is_directory_form)``.

    A path ending in ``.safetensors`` or ``.json`` names one checkpoint; anything
    else is a directory of ``epoch-NNNN`` checkpoints.
    """
    p = Path(path)
    if p.suffix in _SUFFIXES:
        return p.with_suffix(""), False
    if epoch is None:
        raise ValueError("saving into a directory needs an epoch")
    return p / f"epoch-{int(epoch):04d}", True


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The JSON file of the last complete checkpoint in ``directory``, or ``None``.

    Reads the ``latest`` pointer written by :func:`save_checkpoint`; without one, the
    newest ``epoch-NNNN`` checkpoint that loads completely (logged as a warning).

    Example:
        >>> import tempfile
        >>> latest_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    d = Path(directory)
    pointer = d / LATEST
    try:
        raw = read_regular_file(pointer, 4096)
    except FileNotFoundError:
        found = newest_complete_checkpoint(d)
        if found is not None:
            log.warning("%s: no '%s' pointer; using the newest complete checkpoint %s", d, LATEST, found.name)
        return found
    except NotADirectoryError:
        return None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{pointer}: cannot read the latest pointer ({e})") from None
    name = raw.decode("utf-8", "replace").strip()
    if not name or "/" in name or "\\" in name or "\x00" in name or not name.endswith(".json") \
            or name.startswith("."):
        raise CheckpointError(f"{pointer}: malformed latest pointer {name!r}")
    target = d / name
    if not target.exists():
        raise CheckpointError(f"{pointer}: points to {name!r}, which does not exist")
    return target


def _epoch_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted((int(m.group(1)), directory / n) for n in names if (m := _EPOCH_RE.match(n)))


def newest_complete_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The JSON of the newest ``epoch-NNNN`` checkpoint in ``directory`` that verifies, or ``None``."""
    for _, js in reversed(_epoch_checkpoints(Path(directory))):
        try:
            _read_pair(js)
        except CheckpointError as e:
            log.warning("skipping incomplete checkpoint %s", e)
            continue
        return js
    return None


# --------------------------------------------------------------------------- atomic I/O


_fsync_dir = fsync_dir


def _write_temp(final: Path, data: bytes) -> Path:
    """Write ``data`` to a fsynced temporary file beside ``final``; return its path."""
    return write_temp(final, data)


def _atomic_write(final: Path, data: bytes) -> None:
    """:func:`~prunekit.core._atomic.atomic_write_bytes` through this module's ``_write_temp`` (the
    failure and kill tests reach every temporary a checkpoint writes through that one name)."""
    atomic_write_bytes(final, data, write=_write_temp)


# --------------------------------------------------------------------------- encoding


def _owns_storage(t: torch.Tensor) -> bool:
    return t.is_contiguous() and t.storage_offset() == 0 and \
        t.untyped_storage().nbytes() == t.numel() * t.element_size()


class _Encoder:
    """Moves tensors out of a nested structure into a flat ``{key: tensor}`` dict."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._seen: set[int] = set()

    def add(self, key: str, t: torch.Tensor) -> str:
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and (ptr in self._seen or not _owns_storage(t)):
            t = t.clone(memory_format=torch.contiguous_format)
        elif not t.is_contiguous():
            t = t.contiguous()
        if ptr is not None:
            self._seen.add(t.untyped_storage().data_ptr())
        self.tensors[key] = t
        return key

    def encode(self, obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            return {"__tensor__": self.add(key, obj)}
        if isinstance(obj, np.ndarray):
            return {"__ndarray__": self.add(key, torch.from_numpy(np.ascontiguousarray(obj)))}
        if isinstance(obj, np.generic):
            return obj.item()
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{key}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{key}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") and k.endswith("__") for k in obj):
                return {k: self.encode(v, f"{key}/{k}") for k, v in obj.items()}
            return {"__items__": [[self.encode(k, f"{key}/k{i}"), self.encode(v, f"{key}/{i}")]
                                  for i, (k, v) in enumerate(obj.items())]}
        raise TypeError(f"cannot store a value of type {type(obj).__name__} at {key!r} in a checkpoint "
                        "(allowed: tensors, numbers, strings, None, lists, tuples, dicts)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], file: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, file) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            (tag, val), = obj.items()
            if tag in ("__tensor__", "__ndarray__"):
                if val not in tensors:
                    raise CheckpointError(f"{file}: tensor {val!r} is missing from the safetensors file")
                return tensors[val] if tag == "__tensor__" else tensors[val].numpy()
            if tag == "__tuple__":
                return tuple(_decode(v, tensors, file) for v in val)
            if tag == "__items__":
                return {_decode(k, tensors, file): _decode(v, tensors, file) for k, v in val}
        return {k: _decode(v, tensors, file) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- RNG


def _rng_state(enc: _Encoder) -> dict:
    np_state = np.random.get_state(legacy=True)
    py_state = random.getstate()
    out = {
        "torch": {"__tensor__": enc.add("rng/torch", torch.get_rng_state())},
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        if _distributed():
            # one rank per device: store this rank's own generator (the ranks' generators advance
            # alike), not every device's, which would touch (and allocate on) the others' GPUs
            out["cuda_current"] = {"__tensor__": enc.add("rng/cuda/current", torch.cuda.get_rng_state())}
        else:
            out["cuda"] = [{"__tensor__": enc.add(f"rng/cuda/{i}", s)}
                           for i, s in enumerate(torch.cuda.get_rng_state_all())]
    return out


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _set_rng_state(state: dict, tensors: dict, file: Path) -> None:
    try:
        torch.set_rng_state(_decode(state["torch"], tensors, file))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        cuda = [_decode(s, tensors, file) for s in state.get("cuda", [])]
        current = state.get("cuda_current")
        if torch.cuda.is_available() and _distributed() and (current is not None or cuda):
            # each rank restores its own device from the writer's own (or, from a one-process
            # checkpoint, device 0's) generator
            torch.cuda.set_rng_state(_decode(current, tensors, file) if current is not None else cuda[0])
        elif current is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(_decode(current, tensors, file))
        elif cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    except CheckpointError:
        raise
    except Exception as e:  # malformed state
        raise CheckpointError(f"{file}: cannot restore the RNG state ({e})") from e


# --------------------------------------------------------------------------- save


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    epoch: int,
    extra: dict | None = None,
    keep_last: int | None = None,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> Path:
    """Write a checkpoint atomically and return the path of its ``.json`` file.

    Args:
        path: a directory (the checkpoint is named ``epoch-NNNN`` and the directory's
            ``latest`` pointer is updated afterwards) or a file path ending in
            ``.safetensors``/``.json`` (writes exactly that stem; no pointer).
        model: its ``state_dict()`` is stored (unwrap DDP first: pass ``ddp.module``).
        optimizer, scheduler: optional; their ``state_dict()`` is stored.
        epoch: number of completed epochs.
        extra: JSON-friendly dict (tensors, tuples and int keys are allowed too).
        keep_last: directory form only: keep this many newest ``epoch-*``
            checkpoints and delete older ones (``None`` keeps all).
        lock_timeout: seconds to wait for another writer of the folder before
            raising :class:`FolderLockedError`.

    The torch, numpy and python global RNG states are always stored (CUDA: every device's;
    under ``torch.distributed`` this rank's own device's, which each rank restores into its
    own); restore them with ``load_checkpoint(..., restore_rng=True)``.

    Example:
        >>> import tempfile, torch
        >>> m = torch.nn.Linear(3, 1)
        >>> p = save_checkpoint(tempfile.mkdtemp() + "/best.safetensors", m, epoch=7)
        >>> p.name
        'best.json'
    """
    stem, dir_form = _resolve_stem(path, epoch)
    if keep_last is not None and keep_last < 1:
        raise ValueError("keep_last must be >= 1")
    stem.parent.mkdir(parents=True, exist_ok=True)
    st_path, js_path = _sibling(stem, ".safetensors"), _sibling(stem, ".json")

    enc = _Encoder()
    state = model.state_dict()
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"model state {name!r} is a {type(t).__name__}, not a tensor; "
                            "checkpoints store tensors only")
        enc.add(f"model/{name}", t)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": int(epoch),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch_version": torch.__version__,
        "tensors_file": st_path.name,
        "model_keys": list(state.keys()),
        "optimizer": enc.encode(optimizer.state_dict(), "optimizer") if optimizer is not None else None,
        "scheduler": enc.encode(scheduler.state_dict(), "scheduler") if scheduler is not None else None,
        "rng": _rng_state(enc),
        "extra": enc.encode(dict(extra or {}), "extra"),
    }
    blob = _st_save(enc.tensors, metadata={"format": FORMAT})
    meta["tensors_sha256"] = hashlib.sha256(blob).hexdigest()
    meta["tensors_bytes"] = len(blob)
    del enc

    with folder_lock(stem.parent, lock_timeout, what="checkpoint writer"):
        clean_stale(stem.parent)
        if os.path.lexists(st_path):  # never overwrite a tensor file a committed JSON may name
            st_path = _sibling(stem, f".{token()}.safetensors")
        meta["tensors_file"] = st_path.name
        text = json.dumps(meta, indent=1).encode("utf-8")
        # Both temporaries are fully written and fsynced before anything is replaced; the
        # JSON (the commit record naming the tensor file and holding its hash) is replaced last.
        tmp_st = _write_temp(st_path, blob)
        try:
            tmp_js = _write_temp(js_path, text)
        except BaseException:
            tmp_st.unlink(missing_ok=True)
            raise
        try:
            os.replace(tmp_st, st_path)
            os.replace(tmp_js, js_path)
        except BaseException:
            tmp_st.unlink(missing_ok=True)
            tmp_js.unlink(missing_ok=True)
            raise
        _fsync_dir(stem.parent)
        for old in _tensor_files(stem):
            if old != st_path:
                old.unlink(missing_ok=True)

        if dir_form:
            _atomic_write(stem.parent / LATEST, (js_path.name + "\n").encode("utf-8"))
            if keep_last is not None:
                _prune_old(stem.parent, keep_last, js_path)
    return js_path


def _tensor_files(stem: Path) -> list[Path]:
    """``<stem>.safetensors`` and ``<stem>.<token>.safetensors`` files present."""
    pattern = re.compile(re.escape(stem.name) + r"(\.[0-9a-f]{16})?\.safetensors$")
    try:
        return [stem.parent / n for n in os.listdir(stem.parent) if pattern.match(n)]
    except OSError:
        return []


def _prune_old(folder: Path, keep_last: int, current: Path) -> None:
    if keep_last < 1:
        raise ValueError("keep_last must be >= 1")
    for _, js in _epoch_checkpoints(folder)[:-keep_last]:
        if js == current:
            continue
        js.unlink(missing_ok=True)  # commit record first: a half-deleted pair is never "complete"
        for st in _tensor_files(js.with_suffix("")):
            st.unlink(missing_ok=True)


# --------------------------------------------------------------------------- load


def _json_path(p: Path) -> Path:
    if p.is_dir():
        js_path = latest_checkpoint(p)
        if js_path is None:
            raise CheckpointError(f"{p}: no '{LATEST}' pointer and no complete checkpoint in this directory")
        return js_path
    if p.suffix in _SUFFIXES:
        js_path = _sibling(p.with_suffix(""), ".json")
        if p.suffix == ".safetensors" and not js_path.exists() and _TOKEN_RE.search(p.stem):
            js_path = _sibling(p.with_suffix("").with_suffix(""), ".json")  # a <stem>.<token>.safetensors
        return js_path
    if _sibling(p, ".json").exists():
        return _sibling(p, ".json")
    raise CheckpointError(f"{p}: no such checkpoint directory or file")


def _parse_meta(raw: bytes, js_path: Path) -> dict:
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{js_path}: corrupt or truncated checkpoint metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{js_path}: not a prunekit checkpoint (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{js_path}: unsupported checkpoint version {meta.get('version')!r} (expected {VERSION})")
    for key in ("epoch", "tensors_file", "tensors_sha256", "rng", "extra"):
        if key not in meta:
            raise CheckpointError(f"{js_path}: missing field {key!r}")
    name = meta["tensors_file"]
    if not isinstance(name, str) or not _TENSORS_NAME_RE.match(name):
        raise CheckpointError(f"{js_path}: field 'tensors_file' must be a plain file name in the same folder "
                              f"ending in .safetensors, got {str(name)[:100]!r}")
    if not isinstance(meta["tensors_sha256"], str):
        raise CheckpointError(f"{js_path}: field 'tensors_sha256' is not a string")
    size = meta.get("tensors_bytes")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise CheckpointError(f"{js_path}: field 'tensors_bytes' is not a non-negative integer")
    if not isinstance(meta["epoch"], int) or isinstance(meta["epoch"], bool):
        raise CheckpointError(f"{js_path}: field 'epoch' is not an integer")
    return meta


def _read_pair(path: str | os.PathLike) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    p = Path(path)
    for _ in range(_READ_ATTEMPTS):
        js_path = _json_path(p)
        try:
            raw = read_regular_file(js_path, MAX_JSON_BYTES)
        except FileNotFoundError:
            if p.is_dir():
                continue  # the pointer moved on and keep_last removed its old target: follow again
            raise CheckpointError(f"{js_path}: checkpoint metadata file does not exist") from None
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{js_path}: cannot read checkpoint metadata ({e})") from None
        meta = _parse_meta(raw, js_path)
        st_path = js_path.parent / meta["tensors_file"]
        expected = meta.get("tensors_bytes")
        problem = None
        try:
            st = os.stat(st_path)
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{st_path}: tensor file named by {js_path.name} is not a regular file")
            if expected is not None and st.st_size != expected:
                problem = (f"{st_path}: corrupt, truncated or mismatched tensor file: {st.st_size} bytes, "
                           f"expected {expected} (recorded in {js_path.name})")
            else:
                blob = read_regular_file(st_path, expected)
                if hashlib.sha256(blob).hexdigest() != meta["tensors_sha256"]:
                    problem = (f"{st_path}: corrupt, truncated or mismatched tensor file: its SHA-256 does not "
                               f"match the one recorded in {js_path.name} ({len(blob)} bytes, expected {expected})")
        except FileNotFoundError:
            problem = f"{st_path}: tensor file named by {js_path.name} does not exist"
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{st_path}: cannot read tensor file ({e})") from None
        if problem is None:
            break
        try:  # a writer replaced this checkpoint meanwhile: read it again
            changed = read_regular_file(js_path, MAX_JSON_BYTES) != raw
        except (OSError, ValueError):
            changed = True
        if not changed:
            raise CheckpointError(problem)
    else:
        raise CheckpointError(f"{p}: checkpoint kept changing while being read")
    try:
        tensors = _st_load(blob)
    except Exception as e:  # noqa: BLE001 - file content
        raise CheckpointError(f"{st_path}: cannot parse safetensors data ({e})") from None
    return js_path, meta, tensors


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    strict: bool = True,
    restore_rng: bool = False,
) -> dict:
    """Load a checkpoint into ``model``/``optimizer``/``scheduler`` (each optional).

    Args:
        path: a directory (follows its ``latest`` pointer) or a checkpoint file
            (``.json`` or ``.safetensors``; the other one of the pair is found by stem).
        strict: every model key must be present on both sides. Shapes must always
            match. With ``strict=False`` missing/unexpected keys are skipped.
        restore_rng: also restore the torch/numpy/python global RNG states (what an
            exact resume needs).

    Returns:
        ``{"epoch": int, "extra": dict, "path": Path (the .json), "created": str}``.

    Raises:
        CheckpointError: naming the file, for a missing, corrupt, truncated or
            mismatched file, and naming the parameter for a missing key or a shape
            mismatch.

    Example:
        >>> import tempfile, torch
        >>> a, b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
        >>> p = save_checkpoint(tempfile.mkdtemp(), a, epoch=1)
        >>> load_checkpoint(p, b)["epoch"]
        1
        >>> torch.equal(a.weight, b.weight)
        True
    """
    js_path, meta, tensors = _read_pair(path)
    try:
        return _load_into(js_path, meta, tensors, model, optimizer, scheduler, strict, restore_rng)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError,
            RecursionError) as e:
        raise CheckpointError(f"{js_path}: malformed checkpoint content ({type(e).__name__}: {e})") from None


def _load_into(js_path: Path, meta: dict, tensors: dict, model, optimizer, scheduler, strict: bool,
               restore_rng: bool) -> dict:
    st_name = meta["tensors_file"]

    if model is not None:
        saved = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        order = {k: i for i, k in enumerate(meta.get("model_keys", []))}
        saved = dict(sorted(saved.items(), key=lambda kv: order.get(kv[0], len(order))))
        current = model.state_dict()
        missing = [k for k in current if k not in saved]
        unexpected = [k for k in saved if k not in current]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing from checkpoint: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
            if unexpected:
                parts.append(f"not in model: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
            raise CheckpointError(f"{js_path.parent / st_name}: model keys do not match ({'; '.join(parts)})")
        for k, v in saved.items():
            if k in current and tuple(current[k].shape) != tuple(v.shape):
                raise CheckpointError(
                    f"{js_path.parent / st_name}: parameter {k!r} has shape {tuple(v.shape)} in the checkpoint "
                    f"but {tuple(current[k].shape)} in the model")
        model.load_state_dict({k: v for k, v in saved.items() if k in current}, strict=strict)

    if optimizer is not None:
        if meta.get("optimizer") is None:
            raise CheckpointError(f"{js_path}: holds no optimizer state")
        opt_state = _decode(meta["optimizer"], tensors, js_path)
        _check_optimizer_state(opt_state, optimizer, model, js_path)
        try:
            optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{js_path}: optimizer state does not fit this optimizer ({e})") from e

    if scheduler is not None:
        if meta.get("scheduler") is None:
            raise CheckpointError(f"{js_path}: holds no scheduler state")
        try:
            scheduler.load_state_dict(_decode(meta["scheduler"], tensors, js_path))
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{js_path}: scheduler state does not fit this scheduler ({e})") from None

    if restore_rng:
        _set_rng_state(meta["rng"], tensors, js_path)

    return {
        "epoch": int(meta["epoch"]),
        "extra": _decode(meta["extra"], tensors, js_path),
        "path": js_path,
        "created": meta.get("created", ""),
    }


def _check_optimizer_state(state: dict, optimizer: torch.optim.Optimizer, model, file: Path) -> None:
    """Shape-check per-parameter optimizer tensors so a mismatch names the parameter."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved_groups = state.get("param_groups", [])
    saved_ids = [i for g in saved_groups for i in g.get("params", [])]
    if len(saved_ids) != len(params):
        raise CheckpointError(f"{file}: optimizer state has {len(saved_ids)} parameters, the optimizer has {len(params)}")
    names = {}
    if model is not None:
        names = {id(p): n for n, p in model.named_parameters()}
    by_id = dict(zip(saved_ids, params))
    for pid, pstate in state.get("state", {}).items():
        p = by_id.get(pid)
        if p is None:
            raise CheckpointError(f"{file}: optimizer state for unknown parameter index {pid}")
        for key, v in pstate.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) != tuple(p.shape):
                name = names.get(id(p), f"#{saved_ids.index(pid)}")
                raise CheckpointError(
                    f"{file}: optimizer state {key!r} of parameter {name!r} has shape {tuple(v.shape)}, "
                    f"the parameter has {tuple(p.shape)}")
