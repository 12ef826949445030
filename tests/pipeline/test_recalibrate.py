"""BatchNorm recalibration after pruning: exact statistics, modes restored, and what it buys."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit.pipeline.recalibrate import recalibrate_batchnorm


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=0.3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_statistics_are_the_average_over_batches_and_modes_are_restored():
    net = _net().eval()
    net[3].train()  # a mixed state, restored as it was
    x = torch.randn(64, 3, 6, 6) * 2 + 0.5
    inputs = {}
    net[1].register_forward_hook(lambda m, i, o: inputs.setdefault("bn1", []).append(i[0].detach()))
    assert recalibrate_batchnorm(net, (x, torch.zeros(64)), batch_size=16) == 2
    seen = inputs["bn1"]
    assert len(seen) == 4  # four batches of 16
    mean = torch.stack([b.mean((0, 2, 3)) for b in seen]).mean(0)
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in seen]).mean(0)
    torch.testing.assert_close(net[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[1].running_var, var, rtol=1e-5, atol=1e-6)
    assert [m.training for m in net] == [False, False, False, True] + [False] * 6
    assert net[1].momentum == 0.1 and net[5].momentum == 0.3 and not net[1].weight.grad


def test_num_batches_iterables_and_errors():
    net = _net().eval()
    x = torch.randn(40, 3, 6, 6)
    recalibrate_batchnorm(net, [(x[:8], None), (x[8:16], None), (x[16:], None)], num_batches=2)
    assert int(net[1].num_batches_tracked) == 2
    before = net[1].running_mean.clone()
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batchnorm(net, [])
    assert torch.equal(net[1].running_mean, before)  # nothing reset by a failed call
    assert recalibrate_batchnorm(nn.Linear(3, 2), torch.randn(4, 3)) == 0


def test_recalibration_restores_a_pruned_network_before_fine_tuning():
    """A ResNet-20 fitted to a fixed random labelling, then half its MACs removed by L1: with the dense
    statistics the pruned network's outputs drift; recalibrated, they are closer to the dense network's."""
    torch.manual_seed(0)
    model = prunekit.models.create("resnet20", num_classes=4, width=0.5)
    x = torch.randn(96, 3, 16, 16)
    model.train()
    with torch.no_grad():
        for i in range(0, 96, 32):  # BN statistics of the dense net on this data
            model(x[i:i + 32])
    model.eval()
    s = prunekit.find_structures(model, x[:1])
    plan = prunekit.select(s, prunekit.saliency(model, s, None, "l1"), prunekit.Budget(macs=0.5))
    small = prunekit.materialize(model, plan, s).eval()
    dense_out = model(x).detach()
    stale = (small(x) - dense_out).square().mean().item()
    recalibrate_batchnorm(small, x, batch_size=32)
    fresh = (small(x) - dense_out).square().mean().item()
    assert fresh < stale
