"""Coverage of architectures prunekit did not write: Torch-Pruning's side (prunekit's side: ``run_prunekit``).

For every architecture of the conformance zoo (``tests/conformance/zoo.py``: Hugging Face
models built from small configs and hand-written PyTorch models), each in its own
subprocess with a time limit (``--timeout``, 90 s), Torch-Pruning is run with its
documented options, derived from the model the way a user would:

* ``output_transform``: every tensor of the output (HF ``ModelOutput`` and nested
  tuples/dicts flattened, caches and other objects dropped), so that every output head
  is traced, not only the main one;
* ``ignored_layers``: the layer that produces the main output (found with forward hooks on
  the layers, i.e. modules holding parameters with no child holding any: the last one whose
  output tensor is, or shares storage with, the main output; else the last one called whose
  output's last dimension equals the main output's);
* ``num_heads``: for each module holding q/k/v Linear layers (``query``/``key``/``value``,
  ``q_proj``/..., ``q``/``k``/``v``, ``q_lin``/...) or one fused qkv Linear (``qkv``,
  ``qkv_proj``, ``query_key_value``, ``Wqkv``; only when it splits in three equal
  parts), the head counts read from its attributes (``head_dim``-like attribute → counts =
  out_features / head_dim, which gives grouped-query key/value counts; else a
  ``num_heads``-like attribute); attention is pruned by whole heads
  (``prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.3``, as in
  Torch-Pruning's LLM example: rotary and relative-position code needs head_dim fixed), and
  afterwards the head-count / width attributes of those modules that equal the old values
  are updated (the step Torch-Pruning's examples do by hand);
* ``round_to``: ``num_heads`` of ``nn.MultiheadAttention`` if the model has one (its
  embed_dim must stay divisible by it);
* ``unwrapped_parameters``: every parameter outside a layer type Torch-Pruning knows
  (``nn.Parameter`` used directly in ``forward``: class tokens, positional embeddings,
  layer-scale gammas, custom norms' weights, learned adjacencies), each with the last
  dimension whose size is > 1 (Torch-Pruning's own default, passed explicitly).

Fields per architecture:

* ``analyses``: ``tp.DependencyGraph().build_dependency`` ran without an exception;
  ``analysis_s`` its wall time (one thread).
* ``prunes``: ``tp.pruner.MetaPruner(..., importance=tp.importance.RandomImportance(),
  pruning_ratio=0.3)`` (local: 30 % of every group, seed 0) ran its ``step()``, pruned at
  least one group, and the pruned model still runs on the same inputs (``params_removed``:
  the fraction of parameters it removed).
* ``exact``: the pruned model's main output equals (rtol 1e-4, atol 1e-5·(1 + max|y|)) the
  main output of the *dense* model in which every parameter entry that the pruning deleted
  is set to zero (the entries are found by replaying the pruning history on a copy whose
  parameters hold their own indices, so they are exactly what Torch-Pruning removed: weight
  rows and columns, biases, norm affines, unwrapped parameter slices). Zeroing emulates
  removal wherever a channel's contribution is a sum of its weights' products, so a
  mismatch means the pruned network computes something else than "the dense network
  without those channels": wrong index coupling, a stale attribute, or an operation over
  the pruned dimension such as LayerNorm/GroupNorm/RMSNorm statistics or a softmax —
  ``groups`` tells which: every pruned group is also pruned alone on a fresh copy and
  checked the same way (``exact``, ``max_diff``, ``norm``: the group touches a layer
  normalising over the pruned dimension). ``max_diff`` is the whole model's; ``exact`` is
  ``None`` when nothing was pruned.
* ``prunable_share``: parameter entries that belong to at least one group Torch-Pruning
  offers for pruning (``DG.get_all_groups`` with the ignored layers, root types Conv,
  Linear, LSTM, as MetaPruner enumerates them), divided by all parameter entries. A group's
  entries are found by pruning its channels in two halves on index-valued copies (each half
  takes the same offsets in every channel group MetaPruner sees: grouped convolutions,
  GroupNorm groups, heads); groups whose pruning (of either half) raises count as not prunable
  (``share_errors``).
* ``exact_share``: the same count restricted to the offered groups whose removal is exact:
  each half of the group is pruned alone on a fresh copy and its main output compared with
  the dense model's in which that half's entries are zeroed (as for ``exact``); a group is
  exact when both halves are (and neither raises). Attention groups (those holding a layer of
  ``num_heads``) are checked on whole heads, as MetaPruner prunes them here
  (``prune_head_dims=False``): rooted at the downstream layer MetaPruner uses, first half of the
  heads, then the rest; their prunable entries are still those of the halves above.
  ``inexact_groups``: root names of the offered groups that are not exact (the first 20;
  ``inexact_count``: all of them).
* ``error``: the first exception (type: message, truncated), or the time limit with the stage
  it stopped in (``share k/n``: k of the n offered groups done); ``warnings``: Torch-Pruning's
  warnings (unknown operations and the like), deduplicated.

Results: ``--out`` (JSON: machine, versions, one row per architecture; with ``--only``, rows
of other architectures already in the file are kept) and a Markdown table next to it.

Usage:
    python benchmarks/bench_coverage.py [--only ID ...] [--out PATH] [--timeout 90]
    python benchmarks/bench_coverage.py --table [--out PATH]     # print the table of PATH
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "conformance"))
import zoo  # noqa: E402

RATIO = 0.3
Q_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q", "k", "v"), ("q_lin", "k_lin", "v_lin"),
           ("to_q", "to_k", "to_v"), ("wq", "wk", "wv"))
QKV_NAMES = ("qkv", "qkv_proj", "query_key_value", "Wqkv", "W_pack")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "key_value_proj_dim", "d_kv")
HEADS_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "num_attention_heads_per_partition")
KV_HEADS_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
WIDTH_ATTRS = ("all_head_size", "inner_dim", "embed_dim", "hidden_size", "split_size")


# ---------------------------------------------------------------------------------------------
# Torch-Pruning options derived from the model
# ---------------------------------------------------------------------------------------------

def tensors_of(out) -> list:
    """Every tensor in a (nested) output: tensors, tuples, lists, dicts, HF ModelOutput."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in tensors_of(o)]
    return []


def output_layers(case) -> list[str]:
    """Names of the parametrised modules that produce the main output (see the module docstring).

    Candidates are modules that hold parameters and have no child holding any (layers, not containers).
    """
    calls = []
    leaves = [(n, m) for n, m in case.model.named_modules()
              if any(True for _ in m.parameters(recurse=False))
              and not any(True for c in m.children() for _ in c.parameters())]
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: calls.append((n, o))) for n, m in leaves]
    try:
        with torch.no_grad():
            y = case.run()
    finally:
        for h in hooks:
            h.remove()
    ptr = y.untyped_storage().data_ptr()
    same = [n for n, o in calls for t in tensors_of(o)[:1] if t.untyped_storage().data_ptr() == ptr]
    if same:
        return same[-1:]
    last = [n for n, o in calls for t in tensors_of(o)[:1] if t.dim() and t.shape[-1] == y.shape[-1]]
    return last[-1:]


def attention_layers(model: nn.Module) -> dict:
    """``{attention module: (q/k/v or qkv Linear layers, query heads, key/value heads, head_dim)}`` by attributes."""
    found = {}
    for m in model.modules():
        children = dict(m.named_children())
        head_dim = next((getattr(m, a) for a in HEAD_DIM_ATTRS if isinstance(getattr(m, a, None), int)), None)
        heads = next((getattr(m, a) for a in HEADS_ATTRS if isinstance(getattr(m, a, None), int)), None)
        kv_heads = next((getattr(m, a) for a in KV_HEADS_ATTRS if isinstance(getattr(m, a, None), int)), None)
        for names in Q_NAMES:
            layers = [children.get(n) for n in names]
            if all(isinstance(x, nn.Linear) for x in layers):
                q, k, _ = layers
                if head_dim:
                    found[m] = (layers, q.out_features // head_dim, k.out_features // head_dim, head_dim)
                elif heads:
                    found[m] = (layers, heads, kv_heads or heads, q.out_features // heads)
                break
        else:
            for n in QKV_NAMES:
                qkv = children.get(n)
                if isinstance(qkv, nn.Linear) and (heads or head_dim):
                    heads = heads or qkv.out_features // (3 * head_dim)
                    if qkv.out_features % (3 * heads) == 0 and (kv_heads or heads) == heads:  # three equal parts
                        found[m] = ([qkv], heads, heads, qkv.out_features // (3 * heads))
                    break
    return found


def unwrapped_parameters(model: nn.Module, tp) -> list:
    """Parameters outside layer types Torch-Pruning knows, with its default dimension (the last non-singleton)."""
    dg = tp.DependencyGraph()
    wrapped = {id(p) for m in model.modules() if tp.ops.module2type(m) in dg.REGISTERED_PRUNERS
               and tp.ops.module2type(m) != tp.ops.OPTYPE.ELEMENTWISE for p in m.parameters()}
    out = []
    for p in model.parameters():
        dims = [i for i, s in enumerate(p.shape) if s > 1]
        if id(p) not in wrapped and dims:
            out.append((p, dims[-1]))
    return out


def tp_inputs(inputs):
    """Torch-Pruning calls ``model(*inputs)`` first: a lone tensor goes in a 1-tuple (else it is unpacked)."""
    return (inputs,) if isinstance(inputs, torch.Tensor) else inputs


def tp_options(case, model, tp) -> dict:
    """The keyword arguments of ``DependencyGraph.build_dependency`` and ``MetaPruner`` for ``model``."""
    names = dict(model.named_modules())
    attention = attention_layers(model)
    num_heads = {}
    for layers, heads, kv_heads, _ in attention.values():
        for i, layer in enumerate(layers):
            num_heads[layer] = heads if i == 0 or len(layers) == 1 else kv_heads
    mha = [m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    return {"example_inputs": tp_inputs(case.inputs), "output_transform": tensors_of,
            "unwrapped_parameters": unwrapped_parameters(model, tp),
            "ignored_layers": [names[n] for n in output_layers(case)],
            "num_heads": num_heads, "round_to": max(mha) if mha else None, "attention": attention}


def refresh_attention_attributes(attention: dict) -> list[str]:
    """After head pruning, update each attention module's head-count and width attributes that held the old values.

    ``attention`` comes from :func:`attention_layers` before pruning; head_dim is unchanged (whole heads are pruned).
    """
    changed = []
    for m, (layers, heads, kv_heads, head_dim) in attention.items():
        parts = 3 if len(layers) == 1 else 1
        new_heads = layers[0].out_features // (parts * head_dim)
        new_kv = layers[1].out_features // head_dim if len(layers) > 1 else new_heads
        updates = {a: (heads, new_heads) for a in HEADS_ATTRS} | {a: (kv_heads, new_kv) for a in KV_HEADS_ATTRS}
        updates["num_key_value_groups"] = (heads // kv_heads, new_heads // max(new_kv, 1))
        updates |= {a: (heads * head_dim, new_heads * head_dim) for a in WIDTH_ATTRS}
        for attr, (old, new) in updates.items():
            if getattr(m, attr, None) == old and old != new:
                setattr(m, attr, new)
                changed.append(f"{type(m).__name__}.{attr}")
    return sorted(set(changed))


# ---------------------------------------------------------------------------------------------
# Parameter entries deleted by a pruning
# ---------------------------------------------------------------------------------------------

def unique_params(model):
    seen, out = set(), []
    for name, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def fill_with_indices(model) -> int:
    """Overwrite every parameter entry with its global index (exact in float32 below 2**24); returns the count."""
    offset = 0
    with torch.no_grad():
        for _, p in unique_params(model):
            p.copy_(torch.arange(offset, offset + p.numel(), dtype=torch.float64).view_as(p).to(p.dtype))
            offset += p.numel()
    assert offset < 2 ** 24, "too many parameters to index exactly in float32"
    return offset


def remaining_indices(model) -> set:
    return {int(v) for _, p in model.named_parameters() for v in p.detach().reshape(-1).tolist()}


def fresh_graph(model, case, tp):
    """A copy of ``model`` and its dependency graph (a graph cannot be deep-copied: it holds autograd nodes)."""
    m = copy.deepcopy(model)
    dg = tp.DependencyGraph().build_dependency(m, tp_inputs(case.inputs), output_transform=tensors_of,
                                               unwrapped_parameters=unwrapped_parameters(m, tp), verbose=False)
    return m, dg


def replay(model, case, history, tp):
    """A copy of ``model`` pruned by ``history`` (``load_pruning_history``), attention attributes refreshed."""
    m, dg = fresh_graph(model, case, tp)
    attention = attention_layers(m)
    dg.load_pruning_history(history)
    refresh_attention_attributes(attention)
    return m


def deleted_by(model, case, history, tp) -> set:
    """Indices of the parameter entries that replaying the pruning ``history`` on a copy of ``model`` deletes.

    The graph is traced with the real weights (value-dependent routing, e.g. mixture of experts, stays
    the same), then the weights are overwritten with their indices and the history is replayed.
    """
    m, dg = fresh_graph(model, case, tp)
    total = fill_with_indices(m)
    dg.load_pruning_history(history)
    return set(range(total)) - remaining_indices(m)


def zero_entries(model, indices: set):
    """A copy of ``model`` with the parameter entries of global index in ``indices`` set to zero."""
    m = copy.deepcopy(model)
    wanted = torch.tensor(sorted(indices), dtype=torch.int64)
    offset = 0
    with torch.no_grad():
        for _, p in unique_params(m):
            idx = wanted[(wanted >= offset) & (wanted < offset + p.numel())] - offset
            if idx.numel():
                p.view(-1)[idx] = 0
            offset += p.numel()
    return m


def pruned_and_deleted(model, case, history, tp):
    """``(replay(model, case, history, tp), deleted_by(model, case, history, tp))`` from one traced copy.

    The copy is pruned with its parameters holding their indices (as in :func:`deleted_by`); every entry
    that remains still holds its index, so the real values are put back from those indices afterwards.
    Pruning that changes values other than by deleting entries (no integer left) falls back to :func:`replay`.
    """
    m, dg = fresh_graph(model, case, tp)
    attention = attention_layers(m)
    real = torch.cat([p.detach().reshape(-1).double() for _, p in unique_params(m)])
    total = fill_with_indices(m)
    dg.load_pruning_history(history)
    refresh_attention_attributes(attention)
    kept, restored = set(), True
    with torch.no_grad():
        for _, p in unique_params(m):
            values = p.detach().reshape(-1).double()
            idx = values.long()
            if not (torch.equal(idx.double(), values) and (idx.numel() == 0 or (idx.min() >= 0 and idx.max() < total))):
                restored = False
                break
            kept.update(idx.tolist())
            p.copy_(real[idx].view_as(p).to(p.dtype))
    deleted = set(range(total)) - kept
    if not restored:
        return replay(model, case, history, tp), deleted_by(model, case, history, tp)
    return m, deleted


def group_history(dg, group, idxs) -> list:
    root = group[0].dep.target.module
    return [[dg._module2name[root], dg.is_out_channel_pruning_fn(group[0].dep.handler), list(idxs)]]


def halves(n: int, ch_groups: int) -> list[list[int]]:
    """Two index sets covering ``range(n)``, each taking the same offsets in every one of ``ch_groups`` segments
    (grouped convolutions, GroupNorm, heads: what MetaPruner itself keeps consistent)."""
    seg = n // ch_groups
    if seg < 2:  # one channel per segment: split the segments instead
        return [list(range(n // 2)), list(range(n // 2, n))] if n > 1 else [list(range(n))]
    first = [s * seg + j for s in range(ch_groups) for j in range(seg // 2)]
    return [first, sorted(set(range(n)) - set(first))]


def head_halves(pruner, group) -> list | None:
    """For an attention group, the histories of its two halves of whole heads, as MetaPruner prunes heads
    (``prune_num_heads=True, prune_head_dims=False``): rooted at the downstream layer MetaPruner re-roots it
    to, head ``h`` = channels ``h*head_dim ... (h+1)*head_dim`` with MetaPruner's ``head_dim``. ``None`` for
    other groups (and attention groups MetaPruner cannot re-root)."""
    is_attention, qkv = pruner._is_atten_group(group)
    if not is_attention:
        return None
    rooted = pruner._downstream_node_as_root_if_attention(group)
    if rooted is None:
        return None
    root, is_out = group_history(pruner.DG, rooted, [])[0][:2]
    heads = max(pruner.num_heads[m] for m in qkv)
    head_dim = qkv[0].out_features // (pruner.num_heads[qkv[0]] * (3 if len(qkv) == 1 else 1))
    parts = [range(heads // 2), range(heads // 2, heads)] if heads > 1 else [range(heads)]
    return [[[root, is_out, [h * head_dim + j for h in part for j in range(head_dim)]]] for part in parts]


def touches_norm(dg, history_entry) -> bool:
    """Does the group of ``history_entry`` include a layer that normalises over the pruned dimension?

    LayerNorm, GroupNorm, or an unwrapped parameter of a module whose class name contains "Norm" (RMSNorm-like).
    """
    name, is_out, idxs = history_entry
    modules = dict(dg.model.named_modules())
    pruner = dg.get_pruner_of_module(modules[name])
    group = dg.get_pruning_group(modules[name], pruner.prune_out_channels if is_out else pruner.prune_in_channels,
                                 idxs)
    for item in group:
        target = item.dep.target.module
        if isinstance(target, (nn.LayerNorm, nn.GroupNorm)):
            return True
        if isinstance(target, nn.Parameter):
            owner = modules.get(dg._param_to_name.get(target, "").rpartition(".")[0])
            if owner is not None and "Norm" in type(owner).__name__:
                return True
    return False


def close(a, b) -> tuple[bool, float]:
    if a.shape != b.shape:
        return False, float("inf")
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + b.abs().max().item()))), diff


def half_exact(model, case, pruned, deleted: set) -> bool:
    """Does ``pruned`` give the main output of ``model`` with the entries ``deleted`` zeroed (False if it raises)?"""
    try:
        zeroed = zero_entries(model, deleted)
        with torch.no_grad():
            return close(case.run(pruned), case.run(zeroed))[0]
    except Exception:  # noqa: BLE001 - the pruned model does not run: not exact
        return False


# ---------------------------------------------------------------------------------------------
# One architecture
# ---------------------------------------------------------------------------------------------

def run_tp(case, report=lambda row: None) -> dict:  # noqa: C901
    """Torch-Pruning on one zoo case; the fields of the module docstring.

    ``report(row)`` is called with the fields known so far whenever a stage begins (``row["stage"]``),
    so that a caller that kills a hanging run still knows how far it got.
    """
    import torch_pruning as tp

    row = {"analyses": False, "prunes": False, "exact": False}
    model = case.model  # never traced: copies of it are (tracing can leave autograd tensors in module caches)

    def stage(name):
        row["stage"] = name
        report(row)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            stage("analysis")
            base = copy.deepcopy(model)
            opts = tp_options(case, base, tp)
            names = {m: n for n, m in base.named_modules()}
            row["output_layer"] = [names[m] for m in opts["ignored_layers"]]
            row["attention_layers"] = len(opts["attention"])
            row["unwrapped"] = [n for n, p in base.named_parameters()
                                if any(p is q for q, _ in opts["unwrapped_parameters"])]
            start = time.perf_counter()
            dg = tp.DependencyGraph().build_dependency(
                base, opts["example_inputs"], output_transform=opts["output_transform"],
                unwrapped_parameters=list(opts["unwrapped_parameters"]))
            row["analysis_s"] = time.perf_counter() - start
            row["analyses"] = True

            stage("groups")  # the groups MetaPruner offers, and its channel grouping of each
            pruned = copy.deepcopy(model)
            opts = tp_options(case, pruned, tp)
            torch.manual_seed(0)
            pruner = tp.pruner.MetaPruner(
                pruned, opts["example_inputs"], importance=tp.importance.RandomImportance(), pruning_ratio=RATIO,
                ignored_layers=opts["ignored_layers"], num_heads=opts["num_heads"], prune_num_heads=True,
                prune_head_dims=False, head_pruning_ratio=RATIO, round_to=opts["round_to"],
                output_transform=opts["output_transform"], unwrapped_parameters=opts["unwrapped_parameters"])
            offered = [(group_history(pruner.DG, g, [])[0][:2], len(g[0].idxs), pruner._get_channel_groups(g),
                        head_halves(pruner, g))
                       for g in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                         root_module_types=pruner.root_module_types)]
            row["groups_offered"] = len(offered)

            # each offered group pruned in two halves on index-valued copies; each half's exactness checked
            total = sum(p.numel() for _, p in unique_params(model))
            covered, covered_exact, share_errors, inexact = set(), set(), [], []
            for i, ((root, is_out), n, ch_groups, head_histories) in enumerate(offered):
                stage(f"share {i}/{len(offered)}")
                entries, exact = set(), True
                try:
                    for half in halves(n, ch_groups):
                        alone, deleted = pruned_and_deleted(model, case, [[root, is_out, half]], tp)
                        entries |= deleted
                        if head_histories is None:
                            exact = exact and half_exact(model, case, alone, deleted)
                except Exception as exc:  # noqa: BLE001 - recorded
                    share_errors.append(f"{root}: {type(exc).__name__}: {exc}"[:200])
                    continue
                for history in head_histories or []:  # attention: whole heads
                    try:
                        exact = exact and half_exact(model, case, *pruned_and_deleted(model, case, history, tp))
                    except Exception:  # noqa: BLE001 - pruning the heads raised: not exact
                        exact = False
                covered |= entries
                if exact:
                    covered_exact |= entries
                else:
                    inexact.append(root)
            stage("share")
            row["prunable_share"] = len(covered) / total
            row["share_errors"] = share_errors
            row["exact_share"] = len(covered_exact) / total
            row["inexact_groups"] = inexact[:20]
            row["inexact_count"] = len(inexact)

            stage("prune")  # random importance, 30 % of every group (whole heads in attention groups)
            pruner.step()
            row["attributes_updated"] = refresh_attention_attributes(opts["attention"])
            history = pruner.pruning_history()
            row["groups_pruned"] = len(history)
            row["params_removed"] = 1 - sum(p.numel() for _, p in unique_params(pruned)) / total
            if not history:
                raise RuntimeError("Torch-Pruning offered no group to prune")
            pruned.eval()
            with torch.no_grad():
                out = case.run(pruned)
            row["prunes"] = True

            stage("exact")  # the whole pruning, then every group alone
            zeroed = zero_entries(model, deleted_by(model, case, history, tp))
            with torch.no_grad():
                ref = case.run(zeroed)
            row["exact"], row["max_diff"] = close(out, ref)
            row["groups"] = []
            for entry in history:
                g = {"root": entry[0], "out": entry[1], "pruned": len(entry[2])}
                try:
                    g["norm"] = touches_norm(dg, entry)
                    alone, deleted = pruned_and_deleted(model, case, [entry], tp)
                    zeroed = zero_entries(model, deleted)
                    with torch.no_grad():
                        g["exact"], g["max_diff"] = close(case.run(alone), case.run(zeroed))
                except Exception as exc:  # noqa: BLE001 - recorded
                    g["exact"], g["error"] = False, f"{type(exc).__name__}: {exc}"[:200]
                row["groups"].append(g)
        except Exception as exc:  # noqa: BLE001 - recorded as the row's error
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            row["traceback"] = traceback.format_exc(limit=-4)[-1500:]
    if not row["prunes"]:
        row["exact"] = None  # nothing to compare
    seen = []
    for w in caught:
        text = str(w.message).split("\n")[0][:200]
        if "torch_pruning" in (w.filename or "") and text not in seen:
            seen.append(text)
    row["warnings"] = seen[:10]
    if "error" not in row:
        row["stage"] = "done"
    return row


def run_prunekit(case) -> dict:
    """prunekit on one zoo case, with the same fields as :func:`run_tp` (added by the prunekit side)."""
    raise NotImplementedError("prunekit's side of the coverage benchmark is not written yet")


def worker(name: str) -> dict:
    """Build zoo case ``name`` and run Torch-Pruning on it (one thread)."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    row = {"id": name, "kind": "hf" if name in zoo.HF_IDS else "hand"}
    try:
        case = zoo.ZOO[name]()
        row["params"] = sum(p.numel() for _, p in unique_params(case.model))
        row["tp"] = run_tp(case, report=lambda t: print("ROW " + json.dumps(row | {"tp": t}), flush=True))
    except Exception as exc:  # noqa: BLE001 - the zoo case itself failed
        row["tp"] = {"analyses": False, "prunes": False, "exact": False, "error": f"{type(exc).__name__}: {exc}"[:400]}
    row["total_s"] = time.perf_counter() - start
    return row


# ---------------------------------------------------------------------------------------------
# Driver, results, table
# ---------------------------------------------------------------------------------------------

def run_isolated(name: str, timeout: float) -> dict:
    """``worker(name)`` in a subprocess, killed after ``timeout`` seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        stdout, error = proc.stdout, f"worker exited {proc.returncode}: {proc.stderr[-400:]}"
    except subprocess.TimeoutExpired as exc:
        stdout, error = exc.stdout or "", f"Timeout: no result within {timeout:.0f} s"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    rows = [json.loads(line[4:]) for line in stdout.splitlines() if line.startswith("ROW ")]
    row = rows[-1] if rows else {"id": name, "tp": {"analyses": False, "prunes": False, "exact": False}}
    if row["tp"].get("stage") not in ("done", None) and "error" not in row["tp"]:
        row["tp"]["error"] = f"{error} (stage: {row['tp']['stage']})"
    elif not rows:
        row["tp"]["error"] = error
    if not row["tp"]["prunes"]:
        row["tp"]["exact"] = None
    row["total_s"] = time.perf_counter() - start
    return row


def versions() -> dict:
    import torch_pruning as tp
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torch_pruning": getattr(tp, "__version__", "?"), "transformers": transformers.__version__}


def markdown(result) -> str:
    rows = result["rows"]
    ok = lambda r, k: sum(1 for x in rows if x["tp"].get(k))
    lines = [f"# Coverage: Torch-Pruning {result['versions']['torch_pruning']} on the conformance zoo", "",
             "Commands (in order; a later one re-ran the architectures it names): "
             + ", ".join(f"`{c}`" for c in result["commands"]), "",
             f"Machine: {result['machine']}, {result['threads']} thread per architecture; torch "
             f"{result['versions']['torch']}, transformers {result['versions']['transformers']}.", "",
             f"{len(rows)} architectures: analyses {ok(rows, 'analyses')}, prunes {ok(rows, 'prunes')}, "
             f"exact {ok(rows, 'exact')}. Definitions: `benchmarks/bench_coverage.py` docstring. "
             "groups exact = pruned groups exact when pruned alone / pruned groups "
             "(n: of the inexact ones, those touching a LayerNorm/GroupNorm/RMSNorm-like weight); "
             "share = prunable share of the parameters, exact share = the part of it in groups whose removal "
             "is exact; removed = parameters removed by the 30 % pruning; "
             "– = not applicable (nothing pruned).", "",
             "| id | kind | params | analyses | prunes | exact | groups exact | share | exact share | removed "
             "| analysis (s) | error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    yes = lambda v: "–" if v is None else "yes" if v else "no"
    for r in rows:
        t = r["tp"]
        groups = t.get("groups") or []
        g_exact = sum(1 for g in groups if g.get("exact"))
        g_norm = sum(1 for g in groups if not g.get("exact") and g.get("norm"))
        gcol = f"{g_exact}/{len(groups)}" + (f" (n {g_norm})" if g_norm else "") if groups else ""
        share = f"{t['prunable_share']:.0%}" if "prunable_share" in t else ""
        exact_share = f"{t['exact_share']:.0%}" if "exact_share" in t else ""
        secs = f"{t['analysis_s']:.3f}" if "analysis_s" in t else ""
        removed = f"{t['params_removed']:.0%}" if t.get("prunes") else ""
        err = (t.get("error") or "").replace("|", "\\|").replace("\n", " ")[:120]
        lines.append(f"| {r['id']} | {r.get('kind', '')} | {r.get('params', '')} | {yes(t['analyses'])} | "
                     f"{yes(t['prunes'])} | {yes(t['exact'])} | {gcol} | {share} | {exact_share} | {removed} | "
                     f"{secs} | {err} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=None, help="zoo ids (default: all)")
    p.add_argument("--out", default="benchmarks/results/coverage.json")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds per architecture")
    p.add_argument("--table", action="store_true", help="print the Markdown table of --out and exit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print("ROW " + json.dumps(worker(a.worker)), flush=True)
        return
    out = Path(a.out)
    if a.table:
        print(markdown(json.loads(out.read_text())), end="")
        return
    ids = a.only or list(zoo.ZOO)
    unknown = [i for i in ids if i not in zoo.ZOO]
    if unknown:
        p.error(f"unknown ids {unknown}; known: {' '.join(zoo.ZOO)}")
    previous, commands = {}, []
    if a.only and out.exists():
        old = json.loads(out.read_text())
        previous, commands = {r["id"]: r for r in old["rows"]}, old["commands"]
    command = "python " + " ".join(shlex.quote(s) for s in sys.argv)
    result = {"benchmark": "coverage", "commands": commands + [command],
              "machine": f"{platform.machine()} {platform.processor()}".strip(), "cpus": os.cpu_count(),
              "threads": 1, "timeout_s": a.timeout, "pruning_ratio": RATIO, "versions": versions(), "rows": []}
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done = {}
    for name in ids:
        done[name] = run_isolated(name, a.timeout)
        t = done[name]["tp"]
        print(f"[{time.perf_counter() - start:.0f}s] {name}: analyses {t['analyses']} prunes {t['prunes']} "
              f"exact {t['exact']} share {t.get('prunable_share', float('nan')):.2f} "
              f"({done[name]['total_s']:.1f}s) {t.get('error', '')[:100]}", flush=True)
        merged = previous | done
        result["rows"] = [merged[i] for i in zoo.ZOO if i in merged]
        result["elapsed_s"] = time.perf_counter() - start
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')} in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
