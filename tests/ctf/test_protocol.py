"""The one protocol of CTF and its baselines (prunekit.ctf.run): exact rates, consistent numbers, one budget."""
import json
import warnings

import pytest
import torch

import prunekit
from prunekit.ctf import FINETUNE, METHODS, prunable_weights, run
from prunekit.ctf.baselines import group_ids
from prunekit.ctf.common import weight_layouts
from prunekit.pipeline.train import evaluate
from tests.ctf.helpers import gcn, inputs

# structured-only methods meet the rate with whole groups of this granularity; channel-only reaches only 0.23 here
GROUPED = {"channel-only": "channel", "column-only": "column", "row-only": "row", "group-lasso": "column"}
RATES = {"channel-only": 0.2}


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    X = inputs(batch=16, frames=16, seed=2)
    y = torch.randint(0, 8, (16,), generator=torch.Generator().manual_seed(3))
    dense = gcn()
    names, _ = prunable_weights(dense, X[:2])
    return {"dense": dense, "train": (X, y), "test": (X[:8], y[:8]), "names": names,
            "state": {k: v.clone() for k, v in dense.state_dict().items()}}


def _pruned_entries(dense, plan, names, x) -> int:
    """Prunable entries the plan zeroes: the removed structures' own slices and the entry masks' zeros."""
    structures = prunekit.find_structures(dense, x)
    params = dict(dense.named_parameters())
    pruned = {n: ~plan.entry_masks[n] if n in plan.entry_masks else torch.zeros(params[n].shape, dtype=torch.bool)
              for n in names}
    for sid in plan.removed:
        for n, dim, idxs in structures[sid].slices:
            if n in pruned:
                pruned[n].index_fill_(dim, torch.as_tensor(idxs, dtype=torch.long), True)
    return sum(int(p.sum()) for p in pruned.values())


def _largest_group(dense, names, granularity) -> int:
    params, layouts = dict(dense.named_parameters()), weight_layouts(dense, names)
    return max(int(torch.bincount(group_ids(params[n].shape, layouts[n][0], granularity).flatten()).max())
               for n in names)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_hits_the_rate_and_reports_what_the_model_is(task, method):
    rate, X = RATES.get(method, 0.8), task["train"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no method may fall short of its rate here (CTF warns when it cannot reach it)
        result = run(task["dense"], task["train"], task["test"], rate, epochs=1, finetune_epochs=1, method=method,
                     seed=0, batch_size=8)
    total = sum(p.numel() for n, p in task["dense"].named_parameters() if n in task["names"])
    zeros = _pruned_entries(task["dense"], result.plan, task["names"], X[:1])
    if method in GROUPED:  # whole groups: at least the rate, over by less than one group
        assert 0 <= zeros - rate * total < _largest_group(task["dense"], task["names"], GROUPED[method])
    else:
        assert zeros == round(rate * total)
    assert result.rate_reached == pytest.approx(zeros / total, abs=1e-12)
    # the numbers are those of the returned (materialized, fine-tuned) model
    counted = prunekit.count(result.model, X[:1])
    assert (result.params, result.macs) == (counted["params"], counted["macs"])
    assert result.nonzero_params == sum(int(torch.count_nonzero(p)) for p in result.model.parameters())
    assert result.nonzero_params < result.params or method in GROUPED
    assert result.accuracy == evaluate(result.model, task["test"])["accuracy"]
    # one budget of epochs and one fine-tuning for every method
    history = result.history
    trained = len(history["train"]["epoch"]) if "train" in history else 0
    assert trained + len(history["finetune"]["epoch"]) == 2
    assert history["finetune"]["lr"][0] == pytest.approx(FINETUNE["lr"])
    assert (result.accuracy_masks is None) == (method not in ("ctf", "ctf-fixed", "channel-only", "column-only",
                                                              "row-only"))
    row = json.loads(json.dumps(result.row()))
    assert row["achieved"]["weights"] == result.rate_reached and row["budget"]["weights"] == rate
    assert row["structures_removed"] == len(result.plan.removed) and row["method"] == method
    assert all(torch.equal(v, task["state"][k]) for k, v in task["dense"].state_dict().items())  # input untouched


def test_ctf_reports_its_masks_and_its_rank_fix(task):
    result = run(task["dense"], task["train"], task["test"], 0.9, epochs=2, finetune_epochs=0, batch_size=8)
    report = result.report
    assert report["rank_fix"]["prunable"] == sum(p.numel() for n, p in task["dense"].named_parameters()
                                                 if n in task["names"])
    assert sum(report["attributed"].values()) == pytest.approx(report["pruned_by_masks"], abs=1e-9)
    assert [row["epoch"] for row in result.history["masks"]] == [0, 1] and result.finetune_epochs == 0
    assert result.accuracy == result.accuracy_before_finetune  # no fine-tuning: the finalized model itself


def test_fine_tuning_keeps_the_zeros_and_one_shot_methods_fine_tune_the_whole_budget(task):
    untuned = run(task["dense"], task["train"], task["test"], 0.7, epochs=0, finetune_epochs=0, method="magnitude")
    tuned = run(task["dense"], task["train"], task["test"], 0.7, epochs=1, finetune_epochs=2, method="magnitude",
                batch_size=8)
    assert tuned.plan.removed == untuned.plan.removed and tuned.finetune_epochs == 3 and tuned.epochs == 0
    def masked(model):  # the zeros of the masked weights must not regrow (biases start at 0 and do train)
        return {n: p for n, p in model.named_parameters() if n in task["names"]}

    nonzeros = {n: int(torch.count_nonzero(p)) for n, p in masked(tuned.model).items()}
    assert nonzeros == {n: int(torch.count_nonzero(p)) for n, p in masked(untuned.model).items()}
    assert sum(nonzeros.values()) < 0.4 * sum(p.numel() for p in masked(tuned.model).values())
    changed = [not torch.equal(a, b) for a, b in zip(tuned.model.parameters(), untuned.model.parameters())]
    assert sum(changed) > len(changed) // 2


def test_an_unknown_method_is_refused_with_the_list():
    with pytest.raises(ValueError, match="magnitude-normalized"):
        run(gcn(), (inputs(), torch.zeros(4, dtype=torch.long)), None, 0.5, epochs=1, finetune_epochs=0,
            method="obd")


def test_rewind_fine_tunes_the_learned_plan_from_the_dense_weights(task):
    """``rewind=True``: the same learned plan, applied to the model's own weights, fine-tuned for the whole budget."""
    common = dict(epochs=2, finetune_epochs=1, seed=0, batch_size=8)
    plain = run(task["dense"], task["train"], task["test"], 0.8, **common)
    rewound = run(task["dense"], task["train"], task["test"], 0.8, rewind=True, **common)
    assert rewound.plan.removed == plain.plan.removed
    assert set(rewound.plan.entry_masks) == set(plain.plan.entry_masks)
    assert all(torch.equal(rewound.plan.entry_masks[n], m) for n, m in plain.plan.entry_masks.items())
    assert (rewound.epochs, rewound.finetune_epochs) == (2, 3) and (plain.epochs, plain.finetune_epochs) == (2, 1)
    # before fine-tuning it is the dense model under the plan, not the weights trained with the masks
    dense_under_plan = prunekit.materialize(task["dense"].eval(), rewound.plan)
    assert rewound.accuracy_before_finetune == evaluate(dense_under_plan, task["test"])["accuracy"]
    def kept(result):   # nonzero prunable entries after fine-tuning (the zeros stay frozen)
        params = dict(result.model.named_parameters())
        return {n: int((params[n] != 0).sum()) for n in task["names"]}
    assert kept(rewound) == kept(plain) and rewound.rate_reached == plain.rate_reached
    with pytest.raises(ValueError, match="rewind applies to the methods that learn masks"):
        run(task["dense"], task["train"], task["test"], 0.8, method="magnitude", rewind=True, **common)
