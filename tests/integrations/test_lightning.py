"""prunekit.integrations.lightning with the real Lightning Trainer (CPU, a tiny CNN, random data)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.ctf import CTF
from prunekit.pipeline.train import fit

L = pytest.importorskip("lightning")

from prunekit.integrations.lightning import CTFCallback, PruneCallback  # noqa: E402


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def _batches(n=6, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


class Classifier(L.LightningModule):
    def __init__(self, net, lr=0.05, penalty_from=None):
        super().__init__()
        self.net, self.lr, self.penalty_from = net, lr, penalty_from

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        if self.penalty_from is not None:  # add_penalty=False: the module adds it
            term = self.penalty_from.extra_loss()
            loss = loss if term is None else loss + term
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def _trainer(callbacks, epochs):
    return L.Trainer(max_epochs=epochs, callbacks=callbacks, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0)


def _loader(batches):
    return torch.utils.data.DataLoader(batches, batch_size=None)


def test_ctf_callback_gives_the_plan_of_prunekit_fit():
    batches, epochs, rate = _batches(), 4, 0.8
    x = batches[0][0][:2]
    reference = _cnn()
    ctf = CTF(reference, rate, example_inputs=x)
    fit(reference, batches, epochs=epochs, optimizer=torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9),
        schedule="constant", progress=False, callbacks=[ctf])
    expected = ctf.finalize()

    net = _cnn()
    callback = CTFCallback(net, rate, example_inputs=x)
    module = Classifier(net)
    _trainer([callback], epochs).fit(module, _loader(batches))
    plan = callback.plan
    assert plan is not None and callback.ctf.finalized
    # the same steps in the same order: the same plan, bit for bit the same weights
    assert plan.removed == expected.removed
    assert sorted(plan.entry_masks) == sorted(expected.entry_masks)
    assert all(torch.equal(plan.entry_masks[k], expected.entry_masks[k]) for k in expected.entry_masks)
    for (name, a), (_, b) in zip(net.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    # exactly round((1 - r) N) prunable weights kept, the hard phase ran (4 epochs, hard=0.25)
    report = callback.ctf.report()
    total = report["prunable_weights"]
    assert report["kept_weights"] == round((1 - rate) * total)
    assert report["rate"] == pytest.approx(rate, abs=0.5 / total)
    assert report["hard_phase"] is True
    # the training_step wrapper is gone after fit
    assert "training_step" not in vars(module)
    # materialized == trained (masked) model, and smaller
    small = callback.pruned_model()
    net.eval()
    probe = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(small(probe), net(probe), atol=1e-5)
    params = dict(net.named_parameters())
    assert sum(int(params[n].count_nonzero()) for n in report["layers"]) == report["kept_weights"]
    assert prunekit.count(small, x)["params"] == plan.remaining["params"]


def test_ctf_callback_finalizes_after_its_epochs_and_holds_the_zeros_while_fine_tuning():
    batches, rate = _batches(), 0.95
    x = batches[0][0][:2]
    net = _cnn()
    callback = CTFCallback(net, rate, epochs=2, example_inputs=x)
    module = Classifier(net)
    snapshots = {}

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):  # runs after the CTF callback's
            snapshots[trainer.current_epoch] = {k: v.clone() for k, v in net.state_dict().items()}

    _trainer([callback, Snapshot()], 4).fit(module, _loader(batches))
    plan = callback.plan
    report = callback.ctf.report()
    assert report["kept_weights"] == round((1 - rate) * report["prunable_weights"])
    finalized, final = snapshots[1], net.state_dict()
    zeros = {k: v == 0 for k, v in finalized.items() if v.is_floating_point()}
    # fine-tuning moved the kept weights ...
    assert any(not torch.equal(final[k], finalized[k]) for k in zeros)
    # ... and every zero of the finalized model (entries, closed structures, their BatchNorm) stayed zero
    for k, z in zeros.items():
        assert int(final[k][z].count_nonzero()) == 0, k
    assert sum(int(z.sum()) for k, z in zeros.items() if k.endswith("weight")) > 0
    small = callback.pruned_model()
    net.eval()
    with torch.no_grad():
        assert torch.allclose(small(x), net(x), atol=1e-5)
    assert plan.removed, "CTF at 0.95 closed no whole channel on this CNN"


def test_ctf_callback_without_the_penalty_fails_on_the_first_step():
    net = _cnn()
    callback = CTFCallback(net, 0.5, add_penalty=False, example_inputs=_batches()[0][0][:2])
    with pytest.raises(RuntimeError, match="penalty was not added"):
        _trainer([callback], 2).fit(Classifier(net), _loader(_batches(n=2)))


def test_ctf_callback_unwraps_training_step_when_fit_fails():
    net = _cnn()
    module = Classifier(net)
    callback = CTFCallback(net, 0.5, example_inputs=_batches()[0][0][:2])

    class Boom(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            assert "training_step" in vars(pl_module)  # wrapped during fit
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        _trainer([callback, Boom()], 1).fit(module, _loader(_batches(n=2)))
    assert "training_step" not in vars(module)


def test_ctf_callback_penalty_added_by_the_module():
    batches = _batches(n=4)
    net = _cnn()
    callback = CTFCallback(net, 0.6, add_penalty=False, example_inputs=batches[0][0][:2])
    _trainer([callback], 2).fit(Classifier(net, penalty_from=callback), _loader(batches))
    report = callback.ctf.report()
    assert report["kept_weights"] == round(0.4 * report["prunable_weights"])


@pytest.mark.parametrize("method, at_epoch", [("l1", 0), ("taylor", 1)])
def test_prune_callback_meets_the_budget_and_masked_weights_stay_zero(method, at_epoch):
    batches = _batches()
    x = batches[0][0][:2]
    net = _cnn()
    before = copy.deepcopy(net)
    budget = prunekit.Budget(params=0.4)
    callback = PruneCallback(net, budget, method, at_epoch=at_epoch, num_batches=2)
    snapshots = {}

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots[trainer.current_epoch] = copy.deepcopy(net)

    _trainer([callback, Snapshot()], 3).fit(Classifier(net), _loader(batches))
    plan = callback.plan
    structures = prunekit.find_structures(before, x)
    # the budget, met by the shortest prefix: at least 40 %, less than 40 % plus one structure's share
    achieved = plan.achieved["params"]
    largest = max(s.params for s in structures) / structures.total_params
    assert 0.4 <= achieved < 0.4 + largest
    small = callback.pruned_model()
    counted = prunekit.count(small, x)["params"]
    assert counted == plan.remaining["params"] == round((1 - achieved) * structures.total_params)
    # every slice of a removed structure (and what reads it) is zero after each epoch of SGD with momentum
    zeroed = 0
    for model in [snapshots[e] for e in range(at_epoch, 3)] + [net]:
        params = model.state_dict()  # parameters and buffers (BatchNorm statistics)
        for sid in plan.removed:
            for name, dim, idxs in list(structures[sid].slices) + list(structures[sid].consumers):
                part = params[name].detach().index_select(dim, torch.tensor(idxs))
                assert int(part.count_nonzero()) == 0, name
                zeroed += part.numel()
    assert zeroed > 0
    # while the kept weights trained on
    assert not torch.equal(snapshots[2][0].weight, snapshots[1][0].weight)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(small(x), net(x), atol=1e-5)
