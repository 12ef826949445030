"""The benchmarks' one results store: rows keyed by what they measured, saved after every row
(so a killed run resumes), merged across files, summarised with paired statistics.

A result file is JSON ``{"meta": {...}, "rows": [...], "summary": {...}}`` plus a markdown
file next to it. ``meta`` names the command that reproduces it and the machine.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> store = Store(path, key=("method", "seed"), meta={"protocol": {"epochs": 3}})
    >>> store.add({"method": "a", "seed": 0, "accuracy": 0.9}); store.add({"method": "b", "seed": 0, "accuracy": 0.8})
    >>> store.done(method="a", seed=0), store.done(method="a", seed=1)
    (True, False)
    >>> paired(store.rows, "accuracy", "method", "a", match=("seed",))["b"]["wins"]
    1
"""
from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

from prunekit.core._atomic import atomic_write_bytes

__all__ = ["Store", "merge", "stats", "paired", "machine", "command", "markdown_table", "write_json",
           "write_result"]


def command() -> str:
    """The command line that started this process, as a user would type it."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def machine(threads: int | None = None) -> dict:
    """Where the figures were measured: CPU/GPU name, platform, torch version, threads."""
    import torch

    from prunekit.core.measure import device_name

    return {"device": device_name("cpu"), "platform": platform.platform(), "torch": torch.__version__,
            "threads": threads if threads is not None else torch.get_num_threads(), "cores": os.cpu_count()}


def write_json(path: Path, result: dict) -> None:
    """Write ``result`` as JSON atomically (:func:`prunekit.core._atomic.atomic_write_bytes`): a reader,
    or a kill, never sees half a file."""
    atomic_write_bytes(path, (json.dumps(result, indent=1) + "\n").encode())


def write_result(path: Path, result: dict, markdown: Callable[[dict], str]) -> None:
    """``result`` as JSON at ``path`` (:func:`write_json`), its ``markdown(result)`` next to it (``.md``), and printed."""
    path = Path(path)
    write_json(path, result)
    text = markdown(result)
    path.with_suffix(".md").write_text(text)
    print(text)


class Store:
    """Rows of one benchmark, keyed by ``key`` fields; ``resume=True`` reloads an existing file.

    ``meta`` must agree with the file's on every field listed in ``must_match`` (a resume under
    another protocol would mix incomparable rows).
    """

    def __init__(self, path, key: Sequence[str], meta: dict | None = None, *, resume: bool = False,
                 must_match: Sequence[str] = ()):
        self.path, self.key = Path(path), tuple(key)
        self.meta = {"command": command(), **(meta or {})}
        self.rows: list[dict] = []
        if resume and self.path.exists():
            previous = json.loads(self.path.read_text())
            for field in must_match:
                if previous["meta"].get(field) != self.meta.get(field):
                    raise ValueError(f"{self.path}: cannot resume, {field} differs "
                                     f"({previous['meta'].get(field)!r} there, {self.meta.get(field)!r} now)")
            self.rows = previous["rows"]

    def _key(self, row: dict) -> tuple:
        missing = [k for k in self.key if k not in row]
        if missing:
            raise KeyError(f"row lacks key fields {missing}: {sorted(row)}")
        return tuple(json.dumps(row[k], sort_keys=True) for k in self.key)

    def done(self, **key) -> bool:
        """Whether a row with these key values is stored."""
        wanted = self._key(key)
        return any(self._key(r) == wanted for r in self.rows)

    def add(self, row: dict, *, save: bool = True) -> None:
        """Store ``row`` (replacing one with the same key) and, by default, save at once."""
        wanted = self._key(row)
        self.rows = [r for r in self.rows if self._key(r) != wanted] + [row]
        if save:
            self.save()

    def save(self, summarize: Callable[[list], dict] | None = None,
             markdown: Callable[[dict], str] | None = None) -> dict:
        """Write the JSON (and the markdown, if ``markdown`` is given) with a fresh summary."""
        result = {"meta": self.meta, "rows": self.rows}
        if summarize is not None:
            result["summary"] = summarize(self.rows)
        write_json(self.path, result)
        if markdown is not None:
            self.path.with_suffix(".md").write_text(markdown(result))
        return result


def merge(paths: Iterable, key: Sequence[str], out, must_match: Sequence[str] = ()) -> Store:
    """One store from several files of the same protocol; a row in several files is taken from
    the last of them. Fields in ``must_match`` must agree in every file's ``meta``."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    store = Store(out, key, results[0]["meta"])
    for path, result in zip(paths, results):
        for field in must_match:
            if result["meta"].get(field) != store.meta.get(field):
                raise ValueError(f"{path}: cannot merge, {field} differs from {paths[0]}")
        for row in result["rows"]:
            store.add(row, save=False)
    store.meta = {**store.meta, "command": command(),
                  "parts": [{"path": str(p), "command": r["meta"].get("command")} for p, r in zip(paths, results)]}
    return store


def stats(values: Iterable[float]) -> dict:
    """Mean, sample standard deviation, standard error of the mean and count."""
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "sem": std / math.sqrt(len(values)), "n": len(values)}


def paired(rows: Sequence[dict], value: str, by: str, reference, match: Sequence[str], tie: float = 1e-9) -> dict:
    """``{other: {mean, sem, n, wins, ties, losses, abs_mean, abs_max}}``: ``value`` of the ``reference`` row minus
    that of each other ``by`` value, on rows equal in every ``match`` field (same seed, fold, budget…),
    so the spread the two share cancels. Wins count the reference ahead by more than ``tie``;
    ``abs_mean`` / ``abs_max`` are the mean / largest absolute difference (how far a row moves, whatever the sign)."""
    def cell(row):
        return tuple(json.dumps(row[m], sort_keys=True) for m in match)

    ref = {cell(r): r[value] for r in rows if r[by] == reference}
    diffs: dict = {}
    for r in rows:
        if r[by] != reference and cell(r) in ref:
            diffs.setdefault(r[by], []).append(ref[cell(r)] - r[value])
    return {other: {**{k: v for k, v in stats(d).items() if k != "std"},
                    "wins": sum(x > tie for x in d), "ties": sum(abs(x) <= tie for x in d),
                    "losses": sum(x < -tie for x in d), "abs_mean": sum(abs(x) for x in d) / len(d),
                    "abs_max": max(abs(x) for x in d)}
            for other, d in diffs.items()}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
