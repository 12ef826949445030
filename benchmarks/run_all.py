"""Run every benchmark in turn (slow: hours on 2 CPU cores). Results land in benchmarks/results/.

A benchmark listed in ``COMMANDS`` runs with the arguments behind its committed figures;
the others run with their scripts' defaults (``benchmarks/RESULTS.md`` gives the exact
command of every figure).

Usage:
    python benchmarks/run_all.py [names...]     # names: speedup sosp_cost dense_skeleton bottleneck criteria_accuracy ctf sparse collapse
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ALL = ["speedup", "sosp_cost", "dense_skeleton", "bottleneck", "criteria_accuracy", "ctf", "sparse", "collapse"]
# one argument list per invocation
COMMANDS = {
    "ctf": [
        ["--dataset", "sbu", "--folds", "1", "2", "3", "4", "5", "--seeds", "0", "1", "2", "--continued",
         "--out", str(HERE / "results" / "ctf_sbu.json")],
        ["--dataset", "fpha", "--seeds", "0", "1", "2", "--continued", "--out", str(HERE / "results" / "ctf_fpha.json")],
        ["--remeasure-overhead", str(HERE / "results" / "ctf_sbu.json")],  # meant for an idle machine
        ["--remeasure-overhead", str(HERE / "results" / "ctf_fpha.json")],
        # folds 3-5 alone: the folds not used to choose CTF's split of the budget
        ["--merge", str(HERE / "results" / "ctf_sbu.json"), "--keep-folds", "3", "4", "5",
         "--out", str(HERE / "results" / "ctf_sbu_folds345.json")],
    ],
}

if __name__ == "__main__":
    for name in sys.argv[1:] or ALL:
        script = HERE / f"bench_{name}.py"
        if not script.exists():
            print(f"skip {name}: {script} not found")
            continue
        for arguments in COMMANDS.get(name, [[]]):
            print(f"== {name} {' '.join(arguments)}", flush=True)
            subprocess.run([sys.executable, str(script), *arguments], check=True)
