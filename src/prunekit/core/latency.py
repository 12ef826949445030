"""A latency model of a network as a function of its kept widths, measured on the target.

:meth:`LatencyModel.measure` times the network on the target device (batch size,
thread count, dtype) with one group of structures at a time thinned to a few kept
fractions (default 75 / 50 / 25 %), by materializing plans that remove only that
group's structures, and fits per group a piecewise-linear table

    saved_g(k) = latency saved when k of the group's n members are removed

(linear between the measured points, the last segment extended up to ``n − 1``; made
non-decreasing by a running maximum so that noise never predicts that removing more
costs time). The prediction for a plan assumes **additivity across groups**:

    predicted(removed) = dense − Σ_g saved_g(k_g),   k_g = |removed ∩ members(g)|

What is *not* modelled: interactions between groups (thinning a layer's outputs and the
next layer's outputs together shrinks one convolution twice; the sum counts both savings
on their own), kernel choices that change with width in steps finer than the sampled
points, and channel multiples. The model with every group at its last measured point
is timed too (``floor_ms``), so the additivity error at that extreme is recorded
(``additivity_error``), and :meth:`LatencyModel.check` compares a prediction with the
measured latency of the materialized model (timed pass by pass against the dense model,
:func:`prunekit.core.measure.time_paired`).

Cheap by construction: groups whose tensors have the same shapes and whose members save
the same parameters and MACs (the 8–9 identical blocks of a ResNet stage) form a *class*
and are thinned **together** (the saving is shared evenly among them: more signal, fewer
timings); all variants are timed in alternating rounds against the dense model
(:func:`prunekit.core.measure.time_in_rounds`), best of ``rounds`` (``timing="pairs"``: each
pass by pass against it). ResNet-56 on CPU (one thread) has 30 groups in 9 classes: 29 timed
models, about 10 s at batch 1 and 1.5 min at batch 64 on an idle 2-core machine.

The tables are cached on disk (JSON, one file per model signature, device, batch size,
threads and dtype; the measurement settings are checked on load), in ``cache_dir``
(default ``$PRUNEKIT_CACHE`` or ``~/.cache/prunekit/latency``; ``cache_dir=False``: no
cache). A cache that cannot be written is skipped with a warning.

Example:
    >>> import torch, prunekit
    >>> m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> x = torch.randn(1, 8)
    >>> s = prunekit.find_structures(m, x)
    >>> lat = prunekit.LatencyModel.from_tables(s, dense_ms=1.0, tables={0: ([0, 8], [0.0, 0.4])})
    >>> round(lat.predict(s.groups[0].members[:4]), 3)   # 4 of 16 removed: 0.2 ms saved
    0.8
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .measure import _reference_batch, _steady_host, time_in_rounds, time_paired
from .measure import device_name as _device_name
from .structures import Structures

log = logging.getLogger(__name__)

__all__ = ["LatencyModel", "LatencyModelError", "DEFAULT_FRACTIONS", "default_cache_dir", "probe_steps"]

#: kept fractions at which every group (class of groups) is timed
DEFAULT_FRACTIONS = (0.75, 0.5, 0.25)
#: ``multiple_of="auto"``: the channel block probed, and the step (share of the whole network's time)
#: one channel past a multiple must cost beyond one channel below it for the tables to keep multiples
AUTO_BLOCK = 8
STEP_THRESHOLD = 0.03
FORMAT = "prunekit.core.latency/1"


class LatencyModelError(ValueError):
    """A latency model that does not fit the structures, or a malformed one."""


def default_cache_dir() -> Path:
    """``$PRUNEKIT_CACHE/latency`` if set, else ``~/.cache/prunekit/latency``."""
    root = os.environ.get("PRUNEKIT_CACHE")
    return Path(root) / "latency" if root else Path.home() / ".cache" / "prunekit" / "latency"


#: a dense model whose time moves by more than this across timing rounds (:func:`spread`) marks the
#: machine as unsteady: on steady and slowly drifting 2-core CPUs the closed loop's rounds stayed
#: ≤ 0.145 over 48 loops, on an overloaded one they reached 0.53 (``benchmarks/RESULTS.md`` §12.0d)
UNSTEADY_SPREAD = 0.15


def spread(times: Iterable[float]) -> float:
    """How far repeated timings of one model moved: ``(max − min) / median`` (the upper median; 0 for < 2).

    Example:
        >>> spread([10.0, 11.0, 13.0])
        0.2727272727272727
    """
    values = sorted(times)
    if len(values) < 2 or values[len(values) // 2] <= 0:
        return 0.0
    return (values[-1] - values[0]) / values[len(values) // 2]


def _interp(xs: Sequence[float], ys: Sequence[float], k: float) -> float:
    """Piecewise-linear ``y(k)``, the last segment extended beyond ``xs[-1]`` (``y(0) = ys[0] = 0``)."""
    if len(xs) == 1 or k <= 0:
        return float(ys[0])
    for i in range(1, len(xs)):
        if k <= xs[i]:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return float(y0 + (y1 - y0) * (k - x0) / (x1 - x0))
    x0, x1, y0, y1 = xs[-2], xs[-1], ys[-2], ys[-1]
    return float(y1 + (y1 - y0) * (k - x1) / (x1 - x0))


def _model_dtype(model: nn.Module) -> str:
    for p in model.parameters():
        return str(p.dtype).replace("torch.", "")
    return "float32"


@dataclass
class LatencyModel:
    """Predicted latency (ms) of a network as a function of the structures removed.

    ``tables[g] = {"removed": [0, k1, …], "saved_ms": [0, s1, …], "raw_saved_ms": […],
    "size": n, "class": c}``: for group ``g`` (id into ``structures.groups``), the
    latency saved when ``k`` of its ``n`` members are removed (fitted, non-decreasing)
    and as measured. Groups without a table save nothing (predicted).
    """

    signature: str
    dense_ms: float
    tables: dict
    group_of: list
    group_sizes: dict
    batch_size: int | None = None
    threads: int | None = None
    device: str = "cpu"
    device_name: str = ""
    dtype: str = "float32"
    floor_ms: float | None = None
    constant_ms: float | None = None
    additivity_error: float | None = None
    settings: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)
    cost_s: float | None = None
    combine: str = "additive"
    calibration: float | None = None  # measured / summed savings at the all-thinned plan
    multiple_of: int = 1  # kept widths sampled at multiples of this (select's default with this model)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_tables(cls, structures: Structures, dense_ms: float, tables: Mapping, **extra) -> "LatencyModel":
        """A latency model from given tables ``{group_id: (removed_counts, saved_ms)}`` (tests, other tools).

        ``removed_counts`` start at 0 (with 0 ms saved added if missing), increasing;
        ``saved_ms`` are made non-decreasing as :meth:`measure` does.
        """
        fitted = {}
        for gid, (ks, saved) in tables.items():
            gid = int(gid)
            if not 0 <= gid < len(structures.groups):
                raise LatencyModelError(f"table for group {gid}: the structures have {len(structures.groups)} groups")
            ks, saved = [int(k) for k in ks], [float(v) for v in saved]
            if len(ks) != len(saved) or not ks:
                raise LatencyModelError(f"table for group {gid}: {len(ks)} counts for {len(saved)} savings")
            if ks[0] != 0:
                ks, saved = [0] + ks, [0.0] + saved
            if any(b <= a for a, b in zip(ks, ks[1:])):
                raise LatencyModelError(f"table for group {gid}: removed counts must increase, got {ks}")
            fitted[gid] = {"removed": ks, "saved_ms": _monotone(saved), "raw_saved_ms": saved,
                           "size": len(structures.groups[gid].members), "class": gid}
        return cls(signature=structures.signature(), dense_ms=float(dense_ms), tables=fitted,
                   group_of=[s.group for s in structures],
                   group_sizes={g.id: len(g.members) for g in structures.groups}, **extra)

    @classmethod
    def measure(cls, model: nn.Module, example_inputs, structures: Structures | None = None,
                batch_size: int | None = None, threads: int | None = None, device: str | torch.device = "cpu", *,
                fractions: Sequence[float] = DEFAULT_FRACTIONS, rounds: int = 3, repeats: int | None = None,
                warmup: int = 2, statistic: str = "min_ms", share: str | None = "shape", multiple_of: int | str = 1,
                timing: str = "rounds", cache_dir: str | Path | bool | None = None,
                refresh: bool = False, timer: Callable[[dict, object], Mapping[str, float]] | None = None,
                verbose: bool = False) -> "LatencyModel":
        """Time ``model`` with each group thinned to ``fractions`` of its width and fit the tables.

        Args:
            model: the dense model (not modified; variants are materialized copies).
            example_inputs: as for :func:`prunekit.find_structures`; resized to ``batch_size``
                along dim 0 for timing (:func:`prunekit.core.measure.with_batch`).
            structures: the model's structures (found from ``example_inputs`` if ``None``).
            batch_size: default: the example's batch.
            threads: ``torch.set_num_threads`` while timing (default: the current count).
            device: where to time. On the CPU glibc's malloc is pinned first, so no pass page-faults
                its activations in again (:mod:`prunekit.core.allocator`; ``settings["allocator"]``, and
                a cached model timed under another regime is measured again).
            fractions: kept fractions to sample (each in (0, 1)); the removed counts are
                ``round((1 − f)·n)`` clipped to ``[1, n − 1]``.
            rounds, repeats, warmup: ``timing="rounds"``: every model gets ``warmup`` untimed
                passes and ``repeats`` timed ones in each of ``rounds`` alternating rounds; the
                best round counts. ``timing="pairs"``: every variant is timed pass by pass against
                the dense model (:func:`prunekit.core.measure.time_paired`, ``rounds × repeats``
                pairs after ``warmup``), its time the dense model's times the median of the pairs'
                ratios. ``repeats=None``: about 0.25 s of the dense model's passes (3 to 15).
            statistic: the dense model's time, from its fastest pass (``"min_ms"``, default:
                stable on a shared machine) or its median pass (``"median_ms"``; with
                ``timing="rounds"``: every model's, per round).
            timing: ``"rounds"`` (default) or ``"pairs"`` (twice the passes; on a loaded machine
                its tables were steadier but no more accurate, and at batch 64 less:
                ``benchmarks/RESULTS.md`` §12.0f).
            share: ``"shape"``: groups with identical tensor shapes and per-member savings are
                thinned together and share the measured saving evenly; ``None``: every group
                is timed alone (slower, and small groups' savings drown in timing noise).
            multiple_of: ``k > 1``: sample kept widths that are multiples of ``k`` (the sampled
                fraction rounded to the nearest multiple, at least ``k``), so the tables are exact
                at the widths ``select(..., multiple_of=k)`` produces (kernels work on blocks of
                channels, so time can step between multiples: ``docs/selection.md``).
                :func:`prunekit.select` then defaults to
                ``multiple_of=k`` with this model. ``"auto"``: first a step probe
                (:func:`probe_steps`) times the class of groups with the most MACs at kept widths
                ``w − 1``, ``w``, ``w + 1`` around multiples ``w`` of :data:`AUTO_BLOCK`; if one
                channel past a multiple costs more than :data:`STEP_THRESHOLD` of the network's
                time beyond one channel below it, ``k = AUTO_BLOCK``, else 1 (the probe is in
                ``measured["steps"]``, ``multiple_of`` holds the chosen ``k``).
            cache_dir: folder of the cache (``None``: :func:`default_cache_dir`; ``False``: none).
            refresh: measure even if the cache has this model.
            timer: ``timer(named_models, inputs) -> {name: ms}`` replaces the wall-clock timer
                (tests; ``inputs`` are already at ``batch_size``).
            verbose: log progress at INFO (else DEBUG).
        """
        from .measure import with_batch
        from .structures import find_structures

        if any(not 0.0 < f < 1.0 for f in fractions) or not fractions:
            raise LatencyModelError(f"fractions (kept) must be in (0, 1), got {list(fractions)}")
        if share not in ("shape", None):
            raise LatencyModelError(f"share must be 'shape' or None, got {share!r}")
        if multiple_of != "auto" and (isinstance(multiple_of, bool) or not isinstance(multiple_of, int)
                                      or multiple_of < 1):
            raise LatencyModelError(f"multiple_of must be an int >= 1 or 'auto', got {multiple_of!r}")
        if timing not in ("pairs", "rounds"):
            raise LatencyModelError(f"timing must be 'pairs' or 'rounds', got {timing!r}")
        dev = torch.device(device)
        if structures is None:
            structures = find_structures(model, example_inputs)
        b = _reference_batch(example_inputs) if batch_size is None else int(batch_size)
        n_threads = int(threads) if threads is not None else torch.get_num_threads()
        dtype = _model_dtype(model)
        settings = {"fractions": [float(f) for f in sorted(fractions, reverse=True)], "share": share,
                    "statistic": statistic, "multiple_of": multiple_of, "timing": timing,
                    "rounds": rounds, "repeats": repeats, "warmup": warmup, "torch": torch.__version__,
                    "timer": "wall-clock" if timer is None else "custom",
                    "allocator": _steady_host(dev) if timer is None else "custom timer"}
        path = None
        if cache_dir is not False:
            folder = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
            path = folder / cls._cache_name(structures.signature(), dev, b, n_threads, dtype, multiple_of)
            if not refresh and path.exists():
                cached = cls.load(path)
                if cached.settings == settings and cached.device_name == _device_name(dev):
                    log.log(logging.INFO if verbose else logging.DEBUG, "latency model: cached %s", path)
                    return cached
        start = time.perf_counter()
        classes = _group_classes(model, structures, share)
        inputs = with_batch(example_inputs, b)
        steps = None
        if multiple_of == "auto":
            steps = probe_steps(model, structures, inputs, b, classes=classes, threads=n_threads, device=dev,
                                rounds=rounds, warmup=warmup, statistic=statistic, timer=timer)
            multiple_of = steps["multiple_of"]
        variants, plan_of, floor_removed = _thinned_variants(model, structures, classes, fractions, multiple_of)
        log_level = logging.INFO if verbose else logging.DEBUG
        log.log(log_level, "latency model: %d groups in %d classes, %d models to time at batch %d, %d thread(s) on %s",
                len(structures.groups), len(classes), len(variants), b, n_threads, dev)
        if timer is None:
            time_variants = _time_variants_paired if timing == "pairs" else _time_variants
            ms, settings_used = time_variants(variants, inputs, b, rounds, repeats, warmup, n_threads, dev, statistic)
        else:
            settings_used = {}
            ms = dict(timer(variants, inputs))
        dense_ms = float(ms["dense"])
        tables = _fit_tables(structures, classes, plan_of, ms, dense_ms)
        lat = cls(signature=structures.signature(), dense_ms=dense_ms, tables=tables,
                  group_of=[s.group for s in structures], group_sizes={g.id: len(g.members) for g in structures.groups},
                  batch_size=b, threads=n_threads, device=str(dev), device_name=_device_name(dev), dtype=dtype,
                  settings=settings, measured={k: float(v) for k, v in ms.items()}, multiple_of=multiple_of)
        if "floor" in ms:
            _calibrate(lat, _admitted(structures, floor_removed), float(ms["floor"]))
        lat.cost_s = time.perf_counter() - start
        lat.settings = {**settings}
        lat.measured["settings_used"] = settings_used  # type: ignore[assignment]
        lat.measured["classes"] = [list(map(int, g)) for g in classes]  # type: ignore[assignment]
        if steps is not None:
            lat.measured["steps"] = steps  # type: ignore[assignment]
        if path is not None:
            try:
                lat.save(path)
            except OSError as error:
                warnings.warn(f"LatencyModel: could not write the cache {path}: {error}", stacklevel=2)
        log.log(logging.INFO if verbose else logging.DEBUG, "latency model: dense %.3f ms, floor %s ms, measured in %.1f s",
                dense_ms, lat.floor_ms, lat.cost_s)
        return lat

    @staticmethod
    def _cache_name(signature: str, device: torch.device, batch: int, threads: int, dtype: str,
                    multiple_of: int | str = 1) -> str:
        tag = hashlib.sha256(f"{_device_name(device)}|{torch.__version__}".encode()).hexdigest()[:8]
        aligned = f"_x{multiple_of}" if multiple_of == "auto" or multiple_of > 1 else ""
        return f"{signature}_{device.type}{'' if device.index is None else device.index}_b{batch}_t{threads}_" \
               f"{dtype}{aligned}_{tag}.json"

    # ------------------------------------------------------------------ prediction

    def check_structures(self, structures: Structures) -> None:
        """Raise :class:`LatencyModelError` unless this model was measured for ``structures``."""
        if structures.signature() != self.signature or len(structures) != len(self.group_of):
            raise LatencyModelError(
                f"latency model was measured for structures with signature {self.signature} "
                f"({len(self.group_of)} structures), these have {structures.signature()} ({len(structures)}); "
                "measure it for this model (LatencyModel.measure)")

    def removed_per_group(self, removed: Iterable[int]) -> dict[int, int]:
        counts: dict[int, int] = {}
        for sid in set(int(i) for i in removed):
            if not 0 <= sid < len(self.group_of):
                raise IndexError(f"structure id {sid} out of range for {len(self.group_of)} structures")
            g = int(self.group_of[sid])
            counts[g] = counts.get(g, 0) + 1
        return counts

    def saved(self, group: int, k: int) -> float:
        """Predicted ms saved by removing ``k`` members of ``group`` (0 for a group without a table)."""
        table = self.tables.get(int(group))
        if table is None or k <= 0:
            return 0.0
        return max(_interp(table["removed"], table["saved_ms"], min(k, table["size"])), 0.0)

    def marginal(self, group: int, k: int) -> float:
        """Predicted ms saved by removing one more member of ``group`` when ``k`` are gone."""
        return self.saved(group, k + 1) - self.saved(group, k)

    def predict(self, removed, combine: str | None = None) -> float:
        """Predicted latency (ms) with ``removed`` (structure ids, or a :class:`PruningPlan`) taken out.

        ``combine="calibrated"`` (the default when the all-thinned plan was timed): ``dense −
        c·Σ_g saved_g(k_g)``, with ``c`` = measured / summed saving of the all-thinned plan, so the
        prediction is exact at both ends (groups that share layers overlap: their summed savings
        overstate). ``"additive"``: ``c = 1``. Never below 0. ``"multiplicative"``:
        ``dense · Π_g (1 − saved_g(k_g) / dense)``, which is exact for one convolution whose input and output widths belong to two groups (kept fractions
        multiply) and undercounts groups that do not interact.
        """
        combine = combine or self.combine
        removed = getattr(removed, "removed", removed)
        savings = [self.saved(g, k) for g, k in self.removed_per_group(removed).items()]
        if combine == "multiplicative":
            out = self.dense_ms
            for s in savings:
                out *= max(1.0 - s / self.dense_ms, 0.0) if self.dense_ms > 0 else 0.0
            return out
        if combine == "calibrated" and self.calibration is not None:
            return max(self.dense_ms - self.calibration * sum(savings), 0.0)
        if combine not in ("additive", "calibrated"):
            raise LatencyModelError(f"combine must be 'calibrated', 'additive' or 'multiplicative', got {combine!r}")
        return max(self.dense_ms - sum(savings), 0.0)

    def saved_fraction(self, removed) -> float:
        """Predicted fraction of the dense latency removed: ``1 − predict(removed) / dense_ms``."""
        return 1.0 - self.predict(removed) / self.dense_ms if self.dense_ms > 0 else 0.0

    def check(self, model: nn.Module, removed, example_inputs, structures: Structures | None = None, *,
              rounds: int = 3, repeats: int | None = None, warmup: int = 2,
              timer: Callable[[dict, object], Mapping[str, float]] | None = None) -> dict:
        """Measured against predicted: time the dense ``model`` and the materialized plan, pass by pass.

        :func:`~prunekit.core.measure.time_paired` runs the two in alternation for
        ``max(15, rounds × repeats)`` pairs (``repeats``: the table's passes per round); the
        measured saving is one minus the median of the pairs' time ratios, so a machine whose
        speed moves from second to second shifts both times of a pair, not the saving.
        Returns ``{"dense_ms", "measured_ms" (measured now, with the tables' statistic: the
        fastest pass by default), "predicted_ms",
        "measured_fraction", "predicted_fraction", "error" (predicted / measured − 1),
        "fraction_error" (predicted_fraction − measured_fraction), "ratio_iqr" (spread of the
        pairs' ratios; 0 with a ``timer``)}``. A machine that got slower or faster since
        :meth:`measure` shifts ``error`` but not ``fraction_error`` much.
        """
        from .materialize import materialize
        from .measure import with_batch
        from .plan import PruningPlan
        from .structures import find_structures

        if structures is None:
            structures = find_structures(model, example_inputs)
        self.check_structures(structures)
        plan = removed if isinstance(removed, PruningPlan) else PruningPlan.from_removed(structures, removed)
        pruned = materialize(model, plan, structures).eval()
        b = self.batch_size or _reference_batch(example_inputs)
        if timer is None:
            reps = repeats or int((self.measured.get("settings_used") or {}).get("repeats_used", 10))
            paired = time_paired(model, pruned, example_inputs, b, pairs=max(15, rounds * reps), warmup=warmup,
                                 threads=self.threads, device=self.device)
            fastest = self.settings.get("statistic", "min_ms") == "min_ms"  # the statistic the tables were fitted on
            ms = {"dense": paired["reference_min_ms" if fastest else "reference_ms"],
                  "pruned": paired["candidate_min_ms" if fastest else "candidate_ms"]}
            meas_frac, iqr = 1.0 - paired["ratio"], paired["ratio_iqr"]
        else:
            ms = dict(timer({"dense": model, "pruned": pruned}, with_batch(example_inputs, b)))
            meas_frac, iqr = 1.0 - ms["pruned"] / ms["dense"], 0.0
        predicted = self.predict(plan.removed)
        pred_frac = self.saved_fraction(plan.removed)
        return {"dense_ms": ms["dense"], "measured_ms": ms["pruned"], "predicted_ms": predicted,
                "measured_fraction": meas_frac, "predicted_fraction": pred_frac,
                "error": predicted / ms["pruned"] - 1.0, "fraction_error": pred_frac - meas_frac, "ratio_iqr": iqr}

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        return {"format": FORMAT, "signature": self.signature, "dense_ms": self.dense_ms,
                "tables": {str(g): t for g, t in self.tables.items()}, "group_of": list(self.group_of),
                "group_sizes": {str(g): n for g, n in self.group_sizes.items()}, "batch_size": self.batch_size,
                "threads": self.threads, "device": self.device, "device_name": self.device_name,
                "dtype": self.dtype, "floor_ms": self.floor_ms, "constant_ms": self.constant_ms,
                "additivity_error": self.additivity_error, "settings": self.settings, "measured": self.measured,
                "cost_s": self.cost_s, "combine": self.combine, "calibration": self.calibration,
                "multiple_of": self.multiple_of}

    @classmethod
    def from_dict(cls, data: dict, source: str = "latency model") -> "LatencyModel":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LatencyModelError(f"{source}: not a prunekit latency model (expected format {FORMAT!r})")
        try:
            return cls(signature=data["signature"], dense_ms=float(data["dense_ms"]),
                       tables={int(g): t for g, t in data["tables"].items()}, group_of=list(data["group_of"]),
                       group_sizes={int(g): int(n) for g, n in data["group_sizes"].items()},
                       batch_size=data.get("batch_size"), threads=data.get("threads"),
                       device=data.get("device", "cpu"), device_name=data.get("device_name", ""),
                       dtype=data.get("dtype", "float32"), floor_ms=data.get("floor_ms"),
                       constant_ms=data.get("constant_ms"), additivity_error=data.get("additivity_error"),
                       settings=data.get("settings", {}), measured=data.get("measured", {}),
                       cost_s=data.get("cost_s"), combine=data.get("combine", "additive"),
                       calibration=data.get("calibration"), multiple_of=int(data.get("multiple_of", 1)))
        except (KeyError, TypeError, ValueError) as error:
            raise LatencyModelError(f"{source}: malformed latency model field: {error}") from error

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON (atomically: a temporary file renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict()))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatencyModel":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise LatencyModelError(f"{path}: invalid JSON: {error.msg}") from error
        return cls.from_dict(data, source=str(path))


# ---------------------------------------------------------------------------- helpers


def _monotone(values: Sequence[float]) -> list[float]:
    """Least-squares non-decreasing fit (pool adjacent violators), the first value (0 removed) pinned at 0.

    Removing more never predicts a slower model, and a noisy high point is averaged with its
    neighbours rather than carried forward.
    """
    blocks: list[list[float]] = []  # [sum, weight, count]
    for i, v in enumerate(values):
        blocks.append([float(v) * (1e9 if i == 0 else 1.0), 1e9 if i == 0 else 1.0, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            top = blocks.pop()
            blocks[-1] = [blocks[-1][0] + top[0], blocks[-1][1] + top[1], blocks[-1][2] + top[2]]
    out: list[float] = []
    for total, weight, n in blocks:
        out += [max(total / weight, 0.0)] * n
    out[0] = 0.0
    return out


def _time_variants(variants: dict, inputs, b: int, rounds: int, repeats: int | None, warmup: int, threads: int,
                   device, statistic: str) -> tuple[dict, dict]:
    """Wall-clock timing of the variants in alternating rounds: ``(ms, settings_used)``; warns when the
    dense model's time moved by more than :data:`UNSTEADY_SPREAD` across the rounds."""
    reps = repeats or _repeats_for(variants["dense"], inputs, b, threads, device)
    per_round: list[dict] = []
    ms = time_in_rounds(variants, inputs, b, rounds=rounds, repeats=reps, warmup=warmup, threads=threads,
                        device=device, statistic=statistic, per_round=per_round)
    moved = spread(r["dense"] for r in per_round)
    _warn_if_unsteady(moved, f"the {rounds} rounds")
    return ms, {"repeats_used": reps, "dense_spread": moved}


def _warn_if_unsteady(moved: float, across: str) -> None:
    if moved > UNSTEADY_SPREAD:
        log.warning("LatencyModel.measure: the dense model's time moved by %.0f%% across %s (more than %.0f%%): "
                    "the machine's speed is not steady and the tables may be wrong; measure on an idle machine "
                    "(refresh=True)", 100 * moved, across, 100 * UNSTEADY_SPREAD)


def _time_variants_paired(variants: dict, inputs, b: int, rounds: int, repeats: int | None, warmup: int,
                          threads: int, device, statistic: str) -> tuple[dict, dict]:
    """Every variant timed pass by pass against the dense model: ``(ms, settings_used)``, a variant's
    time the dense model's times the median of its pairs' ratios; the dense model's time its fastest
    (``statistic="min_ms"``) or median pass over all pairs. Warns when the dense model's time moved by
    more than :data:`UNSTEADY_SPREAD` from one variant to the next."""
    dense = variants["dense"]
    reps = repeats or _repeats_for(dense, inputs, b, threads, device)
    pairs = max(3, rounds * reps)
    ratios, references = {}, []
    for name, model in variants.items():
        if name == "dense":
            continue
        paired = time_paired(dense, model, inputs, b, pairs=pairs, warmup=warmup, threads=threads, device=device)
        ratios[name] = paired["ratio"]
        references.append(paired["reference_min_ms" if statistic == "min_ms" else "reference_ms"])
    if not references:  # nothing to prune: the dense model alone
        ms = time_in_rounds({"dense": dense}, inputs, b, rounds=rounds, repeats=reps, warmup=warmup, threads=threads,
                            device=device, statistic=statistic)
        return ms, {"repeats_used": reps, "pairs": 0, "dense_spread": 0.0}
    dense_ms = min(references) if statistic == "min_ms" else sorted(references)[len(references) // 2]
    moved = spread(references)
    _warn_if_unsteady(moved, f"the {len(references)} variants' timings")
    return ({"dense": dense_ms, **{name: dense_ms * r for name, r in ratios.items()}},
            {"repeats_used": reps, "pairs": pairs, "dense_spread": moved})


def _repeats_for(model: nn.Module, inputs, batch_size: int, threads, device) -> int:
    """Passes per model and round: about 0.25 s of the dense model's time, 3 to 15."""
    probe = time_in_rounds({"dense": model}, inputs, batch_size, rounds=1, repeats=2, warmup=1, threads=threads,
                           device=device)["dense"]
    return int(min(15, max(3, math.ceil(250.0 / max(probe, 1e-3)))))


def _group_classes(model: nn.Module, structures: Structures, share: str | None) -> list[list[int]]:
    """Groups that compute alike (same tensor shapes, same per-member param/MAC savings), in order of first id."""
    if share is None:
        return [[g.id] for g in structures.groups if len(g.members) > 1]
    shapes = {n: tuple(t.shape) for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    classes: dict[tuple, list[int]] = {}
    for g in structures.groups:
        if len(g.members) <= 1:   # nothing can be removed from a group of one
            continue
        s = structures[g.members[0]]
        key = (g.kind, len(g.members), s.params, s.macs,
               tuple(sorted((shapes.get(n), d, len(i)) for n, d, i in s.slices)),
               tuple(sorted((shapes.get(n), d, len(i)) for n, d, i in s.consumers)))
        classes.setdefault(key, []).append(g.id)
    return list(classes.values())


def _thin(structures: Structures, gids: Sequence[int], k: int) -> list[int]:
    """The first ``k`` admissible members of each group in ``gids`` (collapse guard per group)."""
    out = []
    for gid in gids:
        checker = structures.collapse_checker()
        taken = [sid for sid in structures.groups[gid].members if checker.admit(sid)][:k]
        out += taken
    return out


def _admitted(structures: Structures, removed: Sequence[int]) -> list[int]:
    checker = structures.collapse_checker()
    return [sid for sid in removed if checker.admit(sid)]


def _removed_counts(n: int, fractions: Sequence[float], multiple_of: int = 1) -> list[int]:
    """Members to remove from a group of ``n`` for each kept fraction: ``round((1 − f)·n)`` in
    ``[1, n − 1]``; with ``multiple_of=k`` the kept width ``round(f·n / k)·k`` (at least ``k``, and
    below ``n``) instead, none for a group of ``≤ k``."""
    if multiple_of > 1:
        kept = {min(max(round(f * n / multiple_of), 1) * multiple_of, n - 1) for f in fractions}
        return sorted(n - w for w in kept if w >= multiple_of and w % multiple_of == 0 and n - w >= 1)
    return [k for k in sorted({min(max(round((1 - f) * n), 1), n - 1) for f in fractions}) if k >= 1]


def _thinned_variants(model, structures, classes, fractions, multiple_of: int = 1) -> tuple[dict, dict, list]:
    """The models to time: dense, each class of groups thinned to every sampled fraction, and all
    thinned at once ("floor"); ``plan_of``: variant name → (class index, members removed per group)."""
    from .materialize import materialize
    from .plan import PruningPlan
    variants: dict[str, nn.Module] = {"dense": copy.deepcopy(model).eval()}
    plan_of: dict[str, tuple[int, int]] = {}
    floor_removed: list[int] = []
    for ci, gids in enumerate(classes):
        ks = _removed_counts(len(structures.groups[gids[0]].members), fractions, multiple_of)
        for k in ks:
            removed = _thin(structures, gids, k)
            name = f"c{ci}_k{k}"
            variants[name] = materialize(model, PruningPlan.from_removed(structures, removed), structures).eval()
            plan_of[name] = (ci, k)
        if ks:
            floor_removed += _thin(structures, gids, ks[-1])
    if floor_removed:
        plan = PruningPlan.from_removed(structures, _admitted(structures, floor_removed))
        variants["floor"] = materialize(model, plan, structures).eval()
    return variants, plan_of, floor_removed


def probe_steps(model: nn.Module, structures: Structures, inputs, batch_size: int, *, classes=None,
                block: int = AUTO_BLOCK, threshold: float = STEP_THRESHOLD, threads: int | None = None,
                device: str | torch.device = "cpu", rounds: int = 3, repeats: int | None = None, warmup: int = 2,
                statistic: str = "min_ms", timer: Callable[[dict, object], Mapping[str, float]] | None = None) -> dict:
    """Is latency a staircase in the kept width? The channel multiple a latency model should keep.

    The class of groups with the most MACs (:func:`_group_classes`: identical groups thinned
    together) is thinned to kept widths ``w − 1``, ``w``, ``w + 1`` for ``w`` the multiples of
    ``block`` nearest half and a quarter of its width, and timed with the dense model in
    alternating rounds. With ``t`` the time over the dense model's, the step past a multiple
    beyond the step below it is

    .. math:: e_w = \\big(t(w + 1) - t(w)\\big) - \\big|t(w) - t(w - 1)\\big|

    (blocked kernels cost the same from ``w − block + 1`` to ``w`` and jump at ``w + 1``; a smooth
    cost or timing noise moves both steps alike). ``multiple_of = block`` if ``max_w e_w >
    threshold``, else 1; 1 too when no class is wide enough (``w − 1 ≥ 1``, ``w + 1 < n``).

    Returns ``{"multiple_of", "block", "threshold", "class", "width", "probes": [{"width",
    "t_below", "t_at", "t_above", "excess"}]}`` (``t_*``: fractions of the dense time).

    Example:
        >>> import torch, prunekit
        >>> m = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        >>> x = torch.randn(1, 8)
        >>> s = prunekit.find_structures(m, x)
        >>> def stairs(named, inputs):   # 1 ms per started block of 8 hidden units, + 1 ms
        ...     return {k: 1.0 + -(-v[0].out_features // 8) for k, v in named.items()}
        >>> probe_steps(m, s, x, 1, timer=stairs)["multiple_of"]
        8
    """
    from .materialize import materialize
    from .plan import PruningPlan
    classes = _group_classes(model, structures, "shape") if classes is None else classes
    out = {"multiple_of": 1, "block": block, "threshold": threshold, "class": None, "width": None, "probes": []}
    wide = [gids for gids in classes if len(structures.groups[gids[0]].members) >= 2 * block + 2]
    if not wide:
        return out
    gids = max(wide, key=lambda c: len(c) * sum(structures[i].macs for i in structures.groups[c[0]].members))
    n = len(structures.groups[gids[0]].members)
    widths = sorted({min(max(round(n * f / block), 1) * block, n - 2) // block * block for f in (0.5, 0.25)})
    widths = [w for w in widths if w >= block and w + 1 < n]
    variants: dict[str, nn.Module] = {"dense": copy.deepcopy(model).eval()}
    for w in widths:
        for kept in (w - 1, w, w + 1):
            plan = PruningPlan.from_removed(structures, _thin(structures, gids, n - kept))
            variants[f"w{kept}"] = materialize(model, plan, structures).eval()
    if timer is None:
        reps = repeats or _repeats_for(variants["dense"], inputs, batch_size, threads, device)
        ms = time_in_rounds(variants, inputs, batch_size, rounds=rounds, repeats=reps, warmup=warmup, threads=threads,
                            device=device, statistic=statistic)
    else:
        ms = dict(timer(variants, inputs))
    dense = float(ms["dense"])
    for w in widths:
        below, at, above = (float(ms[f"w{k}"]) / dense for k in (w - 1, w, w + 1))
        out["probes"].append({"width": w, "t_below": below, "t_at": at, "t_above": above,
                              "excess": (above - at) - abs(at - below)})
    out.update({"class": [int(g) for g in gids], "width": n})
    if out["probes"] and max(p["excess"] for p in out["probes"]) > threshold:
        out["multiple_of"] = block
    log.debug("latency steps: %s", out)
    return out


def _fit_tables(structures, classes, plan_of, ms, dense_ms) -> dict:
    """Per group: milliseconds saved against members removed (a class's saving shared evenly, made monotone)."""
    per_class: dict[int, list[tuple[int, float]]] = {ci: [] for ci in range(len(classes))}
    for name, (ci, k) in plan_of.items():
        per_class[ci].append((k, dense_ms - float(ms[name])))
    tables = {}
    for ci, gids in enumerate(classes):
        points = sorted(per_class[ci])
        if not points:
            continue
        ks = [0] + [k for k, _ in points]
        raw = [0.0] + [saved / len(gids) for _, saved in points]
        for gid in gids:
            tables[gid] = {"removed": ks, "saved_ms": _monotone(raw), "raw_saved_ms": raw,
                           "size": len(structures.groups[gid].members), "class": ci}
    return tables


def _calibrate(lat: "LatencyModel", floor_set: list, floor_ms: float) -> None:
    """Record the all-thinned plan's measured latency, the plain sum's error there, the calibration
    ``c`` that makes the prediction exact there, and the constant part of the latency."""
    lat.floor_ms = floor_ms
    lat.additivity_error = lat.predict(floor_set, "additive") / floor_ms - 1.0
    lat.measured["floor_multiplicative_error"] = lat.predict(floor_set, "multiplicative") / floor_ms - 1
    summed = sum(lat.saved(g, k) for g, k in lat.removed_per_group(floor_set).items())
    if summed > 0 and lat.dense_ms > floor_ms:
        lat.calibration = (lat.dense_ms - floor_ms) / summed
        lat.combine = "calibrated"
    lat.measured["floor_removed"] = [int(i) for i in floor_set]  # type: ignore[assignment]
    # what the kept members would still cost, extrapolated along each table's last segment
    rest = sum(max(_interp(t["removed"], t["saved_ms"], t["size"]) - _interp(t["removed"], t["saved_ms"],
                                                                       t["removed"][-1]), 0.0)
               for t in lat.tables.values())
    lat.constant_ms = max(floor_ms - rest, 0.0)
