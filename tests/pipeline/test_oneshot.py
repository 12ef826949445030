"""One row of a comparison (``prune_and_finetune``): the selection options reach ``select``."""
import torch

import prunekit
from prunekit.pipeline.oneshot import prune_and_finetune


def test_select_options_reach_select_and_change_the_plan():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 3)).eval()
    with torch.no_grad():
        model[2].weight.mul_(50.0)  # the second layer's L1 scores dwarf the first's: raw ranking empties the first
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    s = prunekit.find_structures(model, x[:1])
    budget = prunekit.Budget(structures=0.3)
    rows = {norm: prune_and_finetune(model, s, (x, y), (x, y), "l1", budget, finetune_epochs=0, lr=0.01,
                                     select_options={"group_norm": norm}) for norm in (None, "mean")}
    scores = prunekit.saliency(model, s, None, "l1")
    for norm, row in rows.items():
        assert row["plan"].removed == prunekit.select(s, scores, budget, group_norm=norm).removed
        assert row["plan"].meta["selection"]["group_norm"] == norm
    assert rows[None]["plan"].removed != rows["mean"]["plan"].removed
