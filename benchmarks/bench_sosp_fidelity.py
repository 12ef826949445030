"""Why a loss-change criterion ranks the way it does: each criterion's scores against the loss change they
estimate, measured by removing structures (issue 13, "show why").

On the dense networks of ``benchmarks/sosp_dense.py`` and the pruning samples of ``bench_sosp.py`` (the
same fixed subset of the training set), per seed:

* **confidence** of the dense network on those samples: mean loss, mean max-probability, the share of
  samples with ``p_max > 0.999``, and the mean of ``tr Λ = 1 − Σ_c p_c²`` (``Λ = diag(p) − p pᵀ`` is the
  Gauss-Newton curvature of cross-entropy in the logits: as ``p`` → one-hot both the gradient ``g`` and
  ``G = Jᵀ Λ J`` vanish, and every loss-based score is made of the few samples still uncertain);
* **single removals**: ``ΔL_s = L(θ − θ_s) − L(θ)`` for every structure ``s``, exactly (``α_s = 0``
  through :func:`prunekit.criteria.scaling.scaled_parameters`);
* per criterion: Spearman's ρ of its scores with ``ΔL_s`` and with ``|θ_s|²`` (``tp-magnitude@pk``);
  per budget (fraction of MACs removed, ``prunekit.select`` defaults) the loss of the network with the
  plan's structures removed, on the pruning samples, and the test accuracy (one-shot, no fine-tuning).
  BatchNorm keeps the dense network's statistics, stale after a large cut (``bench_sosp.py --bn``
  recalibrates them): on a network with BatchNorm these two columns measure mostly the staleness;
* ``exact-single``: the plan from the exact ``ΔL_s`` themselves — what a perfect single-removal criterion
  selects; if it is poor one-shot, the ranking by loss change at the dense point is, not the estimate;
* SOSP-H's two terms (``θ_sᵀ g`` and ``½ θ_sᵀ G θ_P``, :func:`prunekit.criteria.sosp.sosp_h_terms`):
  the median share of the curvature term in ``|−θ_sᵀ g| + |½ θ_sᵀ G θ_P|``.

    python benchmarks/bench_sosp_fidelity.py --model mlp --seeds 0 1 2 3 4 5 6 7 8 9 --out benchmarks/results/sosp_digits_fidelity.json
    python benchmarks/bench_sosp_fidelity.py --model attention_gcn --seeds 0 --methods sosp-h sosp-i taylor obd l1 tp-magnitude@pk tp-taylor@pk tp-hessian@pk sosp-h@T4 --out benchmarks/results/sosp_gcn_fidelity.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prunekit  # noqa: E402
from benchmarks.bench_sosp import DEFAULTS, PK, TP_ON_PK, load, score  # noqa: E402
from benchmarks.sosp_dense import FASHION, dataset_of, dense_path  # noqa: E402
from benchmarks.store import Store, machine, markdown_table, stats  # noqa: E402
from prunekit.criteria.scaling import StructureScaling  # noqa: E402
from prunekit.criteria.sosp import sosp_h_terms  # noqa: E402

KEY = ("seed", "method")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (ties broken by position)."""
    ra, rb = (x.double().argsort().argsort().double() for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


@torch.no_grad()
def _run(model, scaling, alpha, batches):
    """Mean cross-entropy and the correct count of ``model`` at scale ``alpha`` over ``batches``."""
    params = scaling.all_parameters(alpha)
    loss, correct, n = 0.0, 0, 0
    for xb, yb in batches:
        out = functional_call(model, params, (xb,))
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(-1) == yb).sum())
        n += len(yb)
    return loss / n, correct / n


@torch.no_grad()
def confidence(model, batches) -> dict:
    p = torch.cat([F.softmax(model(xb), -1) for xb, _ in batches])
    y = torch.cat([yb for _, yb in batches])
    pmax = p.max(-1).values
    return {"loss": float(-p[torch.arange(len(y)), y].log().mean()), "p_max": float(pmax.mean()),
            "share_p_max_0999": float((pmax > 0.999).double().mean()),
            "trace_lambda": float((1 - p.square().sum(-1)).mean())}


def single_removals(model, scaling, batches, base_loss) -> torch.Tensor:
    """``ΔL_s`` for every structure: the loss with ``α_s = 0``, the others 1, minus the dense loss."""
    out = torch.empty(scaling.num_structures, dtype=torch.float64)
    for s in range(scaling.num_structures):
        alpha = scaling.ones()
        alpha[s] = 0
        out[s] = _run(model, scaling, alpha, batches)[0] - base_loss
    return out


def method_row(model, structures, scaling, scores, truth, magnitude, data, budgets) -> dict:
    row = {"rho_delta_loss": spearman(scores, truth), "rho_magnitude": spearman(scores, magnitude), "budgets": {}}
    test = [data["test"]]
    for budget in budgets:
        plan = prunekit.select(structures, scores, prunekit.Budget(macs=budget))
        alpha = scaling.ones()
        alpha[list(plan.removed)] = 0
        loss = _run(model, scaling, alpha, data["prune"])[0]
        row["budgets"][str(budget)] = {"prune_loss": loss, "acc_oneshot": _run(model, scaling, alpha, test)[1]}
    return row


def seed_rows(dense, data, args, seed) -> list[dict]:
    x = data["train"][0][:1]
    structures = prunekit.find_structures(dense, x)
    scaling = StructureScaling(dense, structures)
    base = _run(dense, scaling, scaling.ones(), data["prune"])[0]
    t0 = time.perf_counter()
    truth = single_removals(dense, scaling, data["prune"], base)
    magnitude = score(dense, structures, data["prune"], "tp-magnitude@pk", seed)
    terms = sosp_h_terms(dense, structures, data["prune"])
    g, c = terms["gradient"].abs(), (0.5 * terms["curvature"]).abs()
    dense_row = {"seed": seed, "method": "dense", **confidence(dense, data["prune"]), "structures": len(structures),
                 "delta_loss": stats(truth.tolist()), "share_negative_delta_loss": float((truth < 0).double().mean()),
                 "curvature_share_median": float((c / (g + c).clamp_min(1e-300)).median()),
                 "seconds_single_removals": time.perf_counter() - t0}
    rows = [dense_row]
    for method in ["exact-single"] + list(args.methods):
        known = {"exact-single": truth, "tp-magnitude@pk": magnitude}  # already computed above
        scores = known[method] if method in known else score(dense, structures, data["prune"], method, seed)
        rows.append({"seed": seed, "method": method,
                     **method_row(dense, structures, scaling, scores, truth, magnitude, data, args.budgets)})
        print(seed, method, {b: round(v["acc_oneshot"], 3) for b, v in rows[-1]["budgets"].items()}, flush=True)
    return rows


def summarize(rows) -> dict:
    dense = [r for r in rows if r["method"] == "dense"]
    out = {"dense": {k: stats([r[k] for r in dense]) for k in
                     ("loss", "p_max", "share_p_max_0999", "trace_lambda", "curvature_share_median",
                      "share_negative_delta_loss")}, "methods": {}}
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"):
        rs = [r for r in rows if r["method"] == method]
        budgets = rs[0]["budgets"]
        out["methods"][method] = {
            "rho_delta_loss": stats([r["rho_delta_loss"] for r in rs]),
            "rho_magnitude": stats([r["rho_magnitude"] for r in rs]),
            **{f"{k}@{b}": stats([r["budgets"][b][k] for r in rs]) for b in budgets for k in ("prune_loss", "acc_oneshot")}}
    return out


def markdown(result) -> str:
    s = result["summary"]
    d = s["dense"]
    lines = [f"# Saliency fidelity: {result['meta']['protocol']['model']}", "",
             "Dense network on the pruning samples (mean ± std over seeds): " + ", ".join(
                 f"{k} {v['mean']:.4g} ± {v['std']:.2g}" for k, v in d.items()), ""]
    budgets = sorted({k.split("@")[1] for m in s["methods"].values() for k in m if "@" in k}, key=float)
    header = ["method", "ρ(score, ΔL_s)", "ρ(score, |θ_s|²)"] + [f"loss / one-shot acc % at {float(b):.0%}" for b in budgets]
    body = []
    for method, m in s["methods"].items():
        cells = [f"{m[f'prune_loss@{b}']['mean']:.3g} / {100 * m[f'acc_oneshot@{b}']['mean']:.1f}" for b in budgets]
        body.append([method, f"{m['rho_delta_loss']['mean']:+.2f} ± {m['rho_delta_loss']['std']:.2f}",
                     f"{m['rho_magnitude']['mean']:+.2f}", *cells])
    return "\n".join(lines + [markdown_table(header, body), ""])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mlp")
    p.add_argument("--width", type=float)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--methods", nargs="+", default=[m for m in PK + TP_ON_PK if m != "random"])
    p.add_argument("--prune-samples", type=int)
    p.add_argument("--data", default=FASHION)
    p.add_argument("--data-cache", default="runs/data")
    p.add_argument("--cache", default="runs/sosp")
    p.add_argument("--out", default="benchmarks/results/sosp_fidelity.json")
    args = p.parse_args(argv)
    defaults = DEFAULTS[dataset_of(args.model)]
    args.width = args.width or defaults["width"]
    args.prune_samples = args.prune_samples or defaults["prune_samples"]
    args.ft_samples = defaults["ft_samples"]
    torch.set_num_threads(1)
    protocol = {"model": args.model, "width": args.width, "prune_samples": args.prune_samples,
                "budgets": args.budgets, "methods": args.methods}
    store = Store(args.out, key=KEY, meta={"protocol": protocol, "machine": machine(1)}, resume=True,
                  must_match=("protocol",))
    data = load(args)
    for seed in args.seeds:
        if store.done(seed=seed, method="dense"):
            continue
        dense = prunekit.load(dense_path(args.cache, args.model, args.width, seed)).eval()
        for row in seed_rows(dense, data, args, seed):
            store.add(row, save=False)
        store.save(summarize, markdown)
    store.save(summarize, markdown)


if __name__ == "__main__":
    main()
