"""Run every benchmark in turn (slow: tens of minutes on 2 CPU cores). Results land in benchmarks/results/.

Usage:
    python benchmarks/run_all.py [names...]     # names: speedup sosp_cost dense_skeleton bottleneck criteria_accuracy ctf sparse
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ALL = ["speedup", "sosp_cost", "dense_skeleton", "bottleneck", "criteria_accuracy", "ctf", "sparse"]

if __name__ == "__main__":
    for name in sys.argv[1:] or ALL:
        script = HERE / f"bench_{name}.py"
        if not script.exists():
            print(f"skip {name}: {script} not found")
            continue
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, str(script)], check=True)
