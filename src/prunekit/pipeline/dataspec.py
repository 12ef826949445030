"""Data from a spec: the ``data:`` mapping of a config, read into tensors.

Example:
    >>> (X, y), (Xt, yt), info = load_data({"format": "digits"})
    >>> tuple(X.shape[1:]), info["classes"]
    ((1, 8, 8), 10)
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["load_data", "batches"]


def _generate_atomically(root: Path, write) -> None:
    """Generate into a fresh sibling folder, then rename it to ``root``: a concurrent reader
    never sees a half-written tree, and of two concurrent generators the first rename wins."""
    import shutil
    import tempfile

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        write(staging)
        staging.rename(root)
    except OSError:
        if not root.exists():
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _synthetic_size(spec: dict, kind: str) -> tuple[int, int] | None:
    """``spec["sequences"]`` (synthetic formats): sequences per (set or subject, action), an int
    or ``[lo, hi]``; ``None`` keeps the writer's default."""
    size = spec.get("sequences")
    if size is None:
        return None
    if not kind.startswith("synthetic"):
        raise ValueError(f"data spec {spec}: 'sequences' applies to synthetic formats only")
    lo, hi = (size, size) if isinstance(size, int) else tuple(size) if len(size) == 2 else (None, None)
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise ValueError(f"data spec {spec}: 'sequences' must be an int >= 1 or [lo, hi], got {size!r}")
    return lo, hi


def load_data(spec: dict, cache: str | Path = "runs/data"):
    """``((X_train, y_train), (X_test, y_test), info)`` from a data spec.

    Formats: ``synthetic-sbu`` / ``synthetic-fpha`` (generated under ``cache`` if missing,
    labelled synthetic), ``sbu`` (``root``, ``fold``), ``fpha`` (``root``), ``digits``,
    ``idx`` (``root``: Fashion-MNIST/MNIST IDX files), ``cifar10`` (``root``).
    Skeleton specs accept ``length`` (frames, default 32) and ``velocity`` (bool), FPHA ones
    ``skip_known_bad`` (bool: skip :data:`prunekit.data.fpha.FPHA_KNOWN_BAD`); synthetic
    ones ``seed``, ``difficulty`` (default :func:`prunekit.data.default_difficulty`) and
    ``sequences`` (per set or subject and action: an int or ``[lo, hi]``; default: the writer's).
    """
    from .. import data

    kind = spec.get("format")
    if kind is None:
        raise ValueError(f"data spec {spec}: missing 'format'")
    if kind in ("synthetic-sbu", "synthetic-fpha", "sbu", "fpha"):
        layout = kind.replace("synthetic-", "")
        difficulty = float(spec.get("difficulty", data.default_difficulty(layout)))
        if kind in ("sbu", "fpha") and not spec.get("root"):
            raise ValueError(f"data spec {spec}: format {kind!r} needs 'root', the folder holding the data")
        size = _synthetic_size(spec, kind)
        tag = "" if size is None else "-n" + "-".join(map(str, size))
        root = Path(spec.get("root") or Path(cache) / f"{kind}-seed{spec.get('seed', 0)}-difficulty{difficulty:g}{tag}")
        if kind.startswith("synthetic") and not root.exists():
            writer = data.write_sbu if layout == "sbu" else data.write_fpha
            counts = {} if size is None else {f"sequences_per_{'set' if layout == 'sbu' else 'subject'}_action": size}
            _generate_atomically(root, lambda folder: writer(folder, seed=int(spec.get("seed", 0)),
                                                             difficulty=difficulty, **counts))
        if layout == "sbu":
            train, test = data.load_sbu(root, fold=int(spec.get("fold", 1)))
        else:
            train, test = data.load_fpha(root, skip_known_bad=bool(spec.get("skip_known_bad", False)))
        transform = data.default_transform(layout, length=int(spec.get("length", 32)),
                                           velocity=bool(spec.get("velocity", False)))
        info = {"format": kind, "root": str(root), "synthetic": bool(train.synthetic), "graph": layout,
                "classes": list(train.class_names), "fold": spec.get("fold", 1) if layout == "sbu" else None}
        return data.to_tensors(train, transform), data.to_tensors(test, transform), info
    if kind == "digits":
        (xtr, ytr), (xte, yte) = data.load_digits()
        prep = lambda x: torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0  # noqa: E731
        return (prep(xtr), torch.as_tensor(ytr)), (prep(xte), torch.as_tensor(yte)), {"format": kind, "classes": 10}
    if kind in ("idx", "fashion-mnist", "cifar10"):
        if not spec.get("root"):
            raise ValueError(f"data spec {spec}: format {kind!r} needs 'root', the folder holding the data")
        loader = data.load_cifar10 if kind == "cifar10" else data.load_idx
        (xtr, ytr), (xte, yte) = loader(spec["root"])

        def prep(x):
            x = torch.as_tensor(x, dtype=torch.float32) / 255.0
            return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2) if x.shape[-1] == 3 else x
        return (prep(xtr), torch.as_tensor(ytr).long()), (prep(xte), torch.as_tensor(yte).long()), {"format": kind}
    raise ValueError(f"data spec: unknown format {kind!r}")


def batches(X, y, batch_size: int) -> list:
    """Consecutive ``(X, y)`` batches of ``batch_size`` (the last one may be shorter)."""
    return [(X[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(X), batch_size)]
