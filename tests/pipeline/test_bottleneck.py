"""Bottleneck detection and widening (expand-pruning)."""
from pathlib import Path

import pytest

import prunekit
from prunekit.pipeline.bottleneck import find_bottlenecks, layer_ratios, widen_bottlenecks, widen_uniform
from prunekit.core.plan import PruningPlan

ARCH = {"name": "attention_gcn", "kwargs": {"graph": "sbu", "num_classes": 8, "channels": [8, 8, 16, 16]}}


@pytest.fixture(scope="module")
def structures():
    model = prunekit.models.create(ARCH["name"], **ARCH["kwargs"]).eval()
    return prunekit.find_structures(model, prunekit.models.example_inputs(model, batch=1))


def test_layer_ratios_and_bottlenecks(structures):
    units = {g.root: g for g in structures.groups if structures[g.members[0]].kind == "unit"}
    # remove 3/4 of every block's units except block 2, which loses none
    removed = [m for root, g in units.items() if root != "blocks.2.gcn" for m in g.members[: 3 * len(g.members) // 4]]
    plan = PruningPlan.from_removed(structures, removed)
    ratios = layer_ratios(structures, plan)
    assert ratios["blocks.0.gcn:unit"] == 0.75 and ratios["blocks.2.gcn:unit"] == 0.0
    assert ratios["blocks.0.gcn:head"] == 0.0
    bottlenecks = find_bottlenecks(structures, plan, cutoff=0.5)
    overall = len(removed) / len(structures)
    assert bottlenecks == [n for n, r in ratios.items() if not n.endswith(":head") and r < 0.5 * overall]
    assert "blocks.2.gcn:unit" in bottlenecks and "blocks.0.gcn:unit" not in bottlenecks
    assert all(not n.endswith(":head") for n in bottlenecks)


def test_widening_rules_build_working_models():
    wide = widen_bottlenecks(ARCH, ["blocks.2.gcn:unit"], factor=2.0)
    assert wide["kwargs"]["channels"] == [8, 8, 32, 16]
    uniform = widen_uniform(ARCH, 1.1)
    assert uniform["kwargs"]["channels"] == [9, 9, 18, 18]
    for arch in (wide, uniform):
        model = prunekit.models.create(arch["name"], **arch["kwargs"])
        assert model(prunekit.models.example_inputs(model, batch=2)).shape == (2, 8)
    with pytest.raises(ValueError, match="no widening rule"):
        widen_uniform({"name": "resnet20", "kwargs": {}})


def test_expand_pruning_end_to_end_on_a_tiny_run(tmp_path):
    from prunekit.pipeline.bottleneck import expand_pruning
    arch = {"name": "attention_gcn", "kwargs": {"graph": "sbu", "num_classes": 8, "channels": [4, 4, 8],
                                                "num_heads": 2, "key_dim": 2}}
    out = expand_pruning(arch, {"format": "synthetic-sbu", "seed": 0, "fold": 1, "length": 8}, seeds=[0], epochs=1,
                         finetune=0, method="l1", out_dir=tmp_path, cache=tmp_path / "data")
    run = out["runs"][0]
    # every network is pruned back to (at most) the original pruned parameter count
    assert run["expand_x2"]["params"] <= run["original"]["params"]
    assert run["uniform_x1.1"]["params"] <= run["original"]["params"]
    assert run["uniform_x1.1"]["arch"] == [4, 4, 9]
    assert (tmp_path / "layer_ratios.png").exists() and (tmp_path / "accuracy_vs_params.png").exists()


def test_bottleneck_cli_rejects_unknown_keys(tmp_path, capsys):
    from prunekit.pipeline.cli import main
    config = tmp_path / "c.yaml"
    config.write_text("arch: {name: attention_gcn, kwargs: {}}\ndata: {format: synthetic-sbu}\nepoch: 3\n")
    assert main(["bottleneck", str(config)]) == 2
    assert "c.yaml: unknown key(s) ['epoch']" in capsys.readouterr().err


def test_every_bottleneck_config_loads():
    from prunekit.pipeline.bottleneck import load_bottleneck_config

    files = sorted((Path(__file__).resolve().parents[2] / "configs" / "bottleneck").glob("*.yaml"))
    assert files
    for f in files:
        config = load_bottleneck_config(f)
        assert config["arch"]["name"] == "attention_gcn" and config["method"] == "sosp-h"


def test_bottleneck_config_errors_name_file_and_key(tmp_path):
    from prunekit.pipeline.bottleneck import load_bottleneck_config

    p = tmp_path / "b.yaml"
    p.write_text("arch: {name: attention_gcn}\ndata: {format: synthetic-sbu}\nseed: 3\n")
    with pytest.raises(ValueError, match=r"b\.yaml: unknown key\(s\) \['seed'\]"):
        load_bottleneck_config(p)
    p.write_text("arch: {name: nonet}\ndata: {}\n")
    with pytest.raises(ValueError, match="b.yaml: unknown architecture 'nonet'"):
        load_bottleneck_config(p)
    p.write_text("data: {}\n")
    with pytest.raises(ValueError, match="b.yaml: missing key 'arch'"):
        load_bottleneck_config(p)
