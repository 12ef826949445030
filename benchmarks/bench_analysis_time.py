"""Time of ``find_structures`` on models of 20–35 M parameters (issue 10's goal: ≤ 2 s up to 30 M).

Three Hugging Face models built from configs (random weights, nothing downloaded), one
thread, batch 1: ViT-S/16 at 224² (21.7 M), BERT with hidden 512 × 6 layers at 128
tokens (35.1 M), ResNet-50 at 224² (23.5 M). Per model: one forward, the analysis without
the probe (``probe=False``: trace + structures + cost model), with it (the default, probe
cache cleared), and again with the probe's outcome cached (a second analysis of the same
architecture in a process, e.g. ``materialize`` or ``load``); the best of ``--repeat`` runs. The first analysis in a process (imports, dispatcher
warm-up) is timed separately on a two-layer MLP.

Usage: ``python benchmarks/bench_analysis_time.py [--repeat 2] [--out benchmarks/results/analysis_time.json]``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import torch

import prunekit
from prunekit.core.structures import _PROBE_CACHE


def vit_s():
    from transformers import ViTConfig, ViTForImageClassification
    c = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                  attn_implementation="eager")
    return ViTForImageClassification(c).eval(), torch.randn(1, 3, 224, 224)


def bert_512x6():
    from transformers import BertConfig, BertForSequenceClassification
    c = BertConfig(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
                   attn_implementation="eager")
    ids = torch.randint(0, 30000, (1, 128), generator=torch.Generator().manual_seed(0))
    return BertForSequenceClassification(c).eval(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def resnet50():
    from transformers import ResNetConfig, ResNetForImageClassification
    c = ResNetConfig(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                     embedding_size=64)
    return ResNetForImageClassification(c).eval(), torch.randn(1, 3, 224, 224)


MODELS = {"vit_s16": vit_s, "bert_512x6": bert_512x6, "resnet50": resnet50}


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/analysis_time.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    first, _ = best(lambda: prunekit.find_structures(mlp, torch.randn(2, 4)), 1)
    again, _ = best(lambda: prunekit.find_structures(mlp, torch.randn(2, 4)), 1)
    rows = []
    for name, build in MODELS.items():
        model, x = build()
        params = sum(p.numel() for p in model.parameters())
        fwd, _ = best(lambda: prunekit.core.measure.call_model(model, x), a.repeat)
        noprobe, _ = best(lambda: prunekit.find_structures(model, x, probe=False), a.repeat)
        def fresh():
            _PROBE_CACHE.clear()  # time the probe itself, not its cache
            return prunekit.find_structures(model, x)
        full, s = best(fresh, a.repeat)
        cached, _ = best(lambda: prunekit.find_structures(model, x), a.repeat)
        rows.append({"model": name, "params": params, "forward_s": fwd, "analysis_noprobe_s": noprobe,
                     "analysis_s": full, "analysis_cached_probe_s": cached, "structures": len(s),
                     "frozen_share": s.frozen["share"]})
        print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {"benchmark": "analysis_time", "command": "python benchmarks/bench_analysis_time.py",
              "machine": f"{platform.machine()} {os.cpu_count()} cpus", "threads": 1, "torch": torch.__version__,
              "load_average_1min": load, "first_call_extra_s": first - again, "rows": rows}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
