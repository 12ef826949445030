"""Paired differences between rows of results files run under different protocols.

``--merge`` of a benchmark refuses files whose protocols differ (rightly: their rows are not one
experiment). A diagnostic sometimes pairs across them all the same — the same dense checkpoints and
seeds, another schedule; or the same command run twice (reproducibility). This prints ``value`` of
``--method`` in the files ``A`` minus ``value`` of each ``--reference`` method in the files
``--against``, on rows equal in every ``--match`` field, as mean ± s.e., mean and largest absolute
difference and wins/ties/losses (``--by``: the field that names the method; ``--where FIELD=VALUE``
keeps only the rows of both sides with that value, e.g. one target). It reads only the ``rows``.

    python benchmarks/pair_files.py benchmarks/results/ctf_fpha_p80_rewind12_s0to3.json benchmarks/results/ctf_fpha_p80_rewind12_s4to7.json --against benchmarks/results/ctf_fpha_p80_v4.json --method ctf-rewind --reference ctf ctf-rewind --match seed target_rate
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.store import markdown_table, paired  # noqa: E402


def rows_of(paths, where=()) -> list[dict]:
    """The ``rows`` of the files, those equal to every ``(field, value)`` of ``where``."""
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"]]
    return [r for r in rows if all(r.get(field) == value for field, value in where)]


def condition(text: str) -> tuple:
    """``--where FIELD=VALUE``: the value read as JSON (``target=0.5`` is a number), else as text."""
    field, sep, value = text.partition("=")
    if not sep or not field:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


def pair(a_rows, b_rows, method: str, references, match, value: str, by: str = "method") -> dict:
    """``{reference: {mean, sem, n, wins, ties, losses, abs_mean}}`` of ``method`` (in ``a_rows``) −
    ``reference`` (in ``b_rows``), methods named by the field ``by``; the A rows are tagged so that a
    method present in both files is told apart."""
    tagged = [{**r, "_pair": "A"} for r in a_rows if r.get(by) == method]
    tagged += [{**r, "_pair": r[by]} for r in b_rows if r.get(by) in references]
    out = paired(tagged, value, "_pair", "A", match)
    return {ref: out[ref] for ref in references if ref in out}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="the files A (rows of --method)")
    p.add_argument("--against", nargs="+", required=True, help="the files B (rows of --reference)")
    p.add_argument("--method", required=True)
    p.add_argument("--reference", nargs="+", required=True)
    p.add_argument("--match", nargs="+", default=["seed"], help="fields a pair must share")
    p.add_argument("--value", default="accuracy")
    p.add_argument("--by", default="method", help="the field that names a row's method (bench_latency: budget)")
    p.add_argument("--where", type=condition, action="append", default=[], metavar="FIELD=VALUE",
                   help="only rows (of both sides) with this value, e.g. target=0.5; repeatable")
    args = p.parse_args(argv)
    result = pair(rows_of(args.files, args.where), rows_of(args.against, args.where), args.method, args.reference,
                  args.match, args.value, args.by)
    if not result:
        sys.exit(f"no pairs: no row of {args.method!r} in {args.files} shares {args.match} with a row of "
                 f"{args.reference} in {args.against}")
    print(markdown_table(["A − B", "mean ± s.e. (points)", "mean / max abs. (points)", "n", "W/T/L"],
                         [[f"{args.method} (A) − {ref} (B)", f"{100 * d['mean']:+.2f} ± {100 * d['sem']:.2f}",
                           f"{100 * d['abs_mean']:.2f} / {100 * d['abs_max']:.2f}", d["n"],
                           f"{d['wins']}/{d['ties']}/{d['losses']}"]
                          for ref, d in result.items()]))


if __name__ == "__main__":
    main()
