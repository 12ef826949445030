"""Coverage, prunekit's side: every architecture of the conformance zoo, next to Torch-Pruning's row.

For each zoo architecture (``tests/conformance/zoo.py``), in one process, one thread:

* ``analyses``: ``prunekit.find_structures(model, inputs)`` returned (warnings allowed);
  ``analysis_s`` its wall time (probe included), ``analysis_noprobe_s`` with ``probe=False``;
* ``prunes``: a random plan removing 30 % of the admissible structures (seed 0) materialized
  and the small model runs;
* ``exact``: its output equals the masked model's (relative error ≤ 1e-5 of the output scale;
  ``max_rel_err`` recorded) — the same definition the conformance tests assert;
* ``prunable_share``: parameter entries touched by at least one structure / all entries
  (``structures.frozen``); ``structures``, ``heads`` (structures of kind ``head``);
* ``unknown``: ops or modules without a rule (frozen), ``probe``: groups the probe froze.

The one-time cost of the first analysis in a process (imports, dispatcher warm-up) is timed
separately on a two-layer MLP (``first_call_s``).

The Markdown table merges ``benchmarks/results/coverage.json`` (Torch-Pruning's side, from
``benchmarks/bench_coverage.py``). Torch-Pruning's raw share includes groups it removes inexactly
(its "exact share" column counts only those whose removal equals zeroing them); prunekit offers
only widths it removes exactly.

Usage: ``python benchmarks/bench_coverage_prunekit.py [--only ID ...] [--out PATH] [--table]``
(``--only`` re-runs those architectures and keeps the other rows of ``--out``.)
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "conformance"))

import prunekit  # noqa: E402
from prunekit.core.materialize import output_error  # noqa: E402
from prunekit.core.plan import PruningPlan, collapse_guard  # noqa: E402

import zoo  # noqa: E402

RATIO = 0.3


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _run(model, inputs):
    with torch.no_grad():
        return prunekit.core.measure.call_model(model.eval(), inputs)


def run_prunekit(case) -> dict:
    """prunekit's row for one zoo case (see the module docstring)."""
    row = {"analyses": False, "prunes": False, "exact": False}
    model, inputs = case.model.eval(), case.inputs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        prunekit.find_structures(model, inputs, probe=False)
        row["analysis_noprobe_s"] = time.perf_counter() - start
        start = time.perf_counter()
        structures = prunekit.find_structures(model, inputs)
        row["analysis_s"] = time.perf_counter() - start
    row["analyses"] = True
    row["structures"] = len(structures)
    row["heads"] = sum(1 for s in structures if s.kind == "head")
    row["prunable_share"] = 1.0 - structures.frozen["share"]
    row["unknown"] = [f"{op} in {mod}" for op, mod in structures.frozen["unknown"]][:5]
    row["probe"] = structures.frozen.get("probe", [])
    if not len(structures):
        return row
    order = list(range(len(structures)))
    random.Random(0).shuffle(order)
    admissible = collapse_guard(structures, order)
    plan = PruningPlan.from_removed(structures, admissible[: round(RATIO * len(admissible))])
    small = prunekit.materialize(model, plan, structures, example_inputs=inputs, check=False)
    small_out = _run(small, inputs)
    row["prunes"] = True
    row["max_rel_err"] = output_error(_run(prunekit.apply_masks(model, plan, structures), inputs), small_out)
    row["exact"] = row["max_rel_err"] <= 1e-5
    row["params_removed"] = plan.achieved["params"]
    return row


def markdown(result: dict, tp: dict | None) -> str:
    tp_rows = {r["id"]: r["tp"] for r in (tp or {}).get("rows", [])}
    rows = result["rows"]
    count = lambda k: sum(1 for r in rows if r["pk"].get(k))
    tcount = lambda k: sum(1 for r in rows if tp_rows.get(r["id"], {}).get(k))
    lines = [
        "| id | kind | params | prunekit analyses / prunes / exact | prunekit share | prunekit analysis s "
        "| TP analyses / prunes / exact | TP share | TP exact share | TP analysis s |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    yn = lambda v: "yes" if v else "**no**"
    for r in rows:
        p, t = r["pk"], tp_rows.get(r["id"], {})
        share = lambda d, k="prunable_share": f"{d[k]:.0%}" if k in d else ""
        secs = lambda d, k: f"{d[k]:.2f}" if k in d else ""
        tcell = (f"{yn(t.get('analyses'))} / {yn(t.get('prunes'))} / {yn(t.get('exact'))}" if t else "not run")
        lines.append(f"| {r['id']} | {r['kind']} | {r.get('params', '')} | {yn(p['analyses'])} / {yn(p['prunes'])} / "
                     f"{yn(p['exact'])} | {share(p)} | {secs(p, 'analysis_s')} | {tcell} | {share(t)} | "
                     f"{share(t, 'exact_share')} | {secs(t, 'analysis_s')} |")
    head = (f"{len(rows)} architectures. prunekit: analyses {count('analyses')}, prunes {count('prunes')}, "
            f"exact {count('exact')}. Torch-Pruning {tp['versions']['torch_pruning'] if tp else '?'}: analyses "
            f"{tcount('analyses')}, prunes {tcount('prunes')}, exact {tcount('exact')}. prunekit's first analysis "
            f"in a process costs {result['first_call_s']:.2f} s more (one time).")
    for key, what in (("prunable_share", "share"), ("exact_share", "exact share (groups whose removal is exact)")):
        both = [(r["pk"].get("prunable_share", 0.0), tp_rows[r["id"]][key]) for r in rows
                if key in tp_rows.get(r["id"], {})]
        geq = sum(1 for pk_share, tp_share in both if pk_share >= tp_share - 1e-9)
        head += (f" prunekit's share ≥ Torch-Pruning's {what} on {geq} of the {len(both)} architectures where "
                 "Torch-Pruning reports one.")
    return head + "\n\n" + "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=None)
    p.add_argument("--out", default="benchmarks/results/coverage_prunekit.json")
    p.add_argument("--tp", default="benchmarks/results/coverage.json", help="Torch-Pruning's results to merge")
    p.add_argument("--timeout", type=float, default=90.0)
    p.add_argument("--table", action="store_true")
    a = p.parse_args()
    out, tp_path = Path(a.out), Path(a.tp)
    tp = json.loads(tp_path.read_text()) if tp_path.exists() else None
    if a.table:
        print(markdown(json.loads(out.read_text()), tp), end="")
        return
    torch.set_num_threads(1)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    start = time.perf_counter()
    prunekit.find_structures(mlp, torch.randn(2, 4))
    first = time.perf_counter() - start
    start = time.perf_counter()
    prunekit.find_structures(mlp, torch.randn(2, 4))
    first -= time.perf_counter() - start
    result = {"benchmark": "coverage_prunekit", "command": "python " + " ".join(sys.argv),
              "machine": f"{platform.machine()} {platform.processor()}".strip(), "threads": 1,
              "versions": {"torch": torch.__version__, "python": platform.python_version()},
              "ratio": RATIO, "first_call_s": first, "rows": []}
    signal.signal(signal.SIGALRM, _alarm)
    for name in a.only or list(zoo.ZOO):
        row = {"id": name, "kind": "hf" if name in zoo.HF_IDS else "hand"}
        signal.alarm(int(a.timeout))
        try:
            case = zoo.ZOO[name]()
            row["params"] = sum(p.numel() for p in case.model.parameters())
            row["pk"] = run_prunekit(case)
        except _Timeout:
            row["pk"] = {"analyses": False, "prunes": False, "exact": False, "error": f"timeout {a.timeout:.0f} s"}
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            row["pk"] = {"analyses": False, "prunes": False, "exact": False,
                         "error": f"{type(exc).__name__}: {exc}"[:400]}
        finally:
            signal.alarm(0)
        result["rows"].append(row)
        print(name, json.dumps(row["pk"])[:200], flush=True)
    if a.only and out.exists():  # the other architectures' rows are kept, in zoo order
        previous = json.loads(out.read_text())
        fresh = {r["id"]: r for r in result["rows"]}
        result["rows"] = [fresh.get(r["id"], r) for r in previous["rows"]] + [
            r for r in result["rows"] if r["id"] not in {q["id"] for q in previous["rows"]}]
        result["command"] = previous.get("command", "") + "; then " + result["command"]
        result["first_call_s"] = previous.get("first_call_s", first)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result, tp))


if __name__ == "__main__":
    main()
