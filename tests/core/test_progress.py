"""Progress bars of find_structures and saliency: shown with progress=True, hidden with False and, by
default, off a terminal; the results never depend on them."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit.core import structures as structures_module
from prunekit.criteria import _common


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 4)).eval()


def _data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 3, 5, 5, generator=g), torch.randint(0, 4, (5,), generator=g)) for _ in range(3)]


def test_find_structures_bar_on_stderr_only_when_asked(capsys, monkeypatch):
    model, x = _net(), torch.randn(1, 3, 5, 5)
    monkeypatch.setattr(structures_module, "_PROBE_CACHE", {})  # the probe runs, so its bar shows too
    shown = prunekit.find_structures(model, x, progress=True)
    captured = capsys.readouterr()
    assert "find_structures" in captured.err and "/3 " in captured.err
    assert "probe:" in captured.err and "group/s" in captured.err  # the per-group probe bar
    assert captured.out == ""

    monkeypatch.setattr(structures_module, "_PROBE_CACHE", {})
    hidden = prunekit.find_structures(model, x, progress=False)
    default = prunekit.find_structures(model, x)  # stderr is captured here, not a terminal: hidden
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    assert len(shown) == len(hidden) == len(default) == 8 + 6
    assert shown.signature() == hidden.signature() == default.signature()
    assert shown.cost([0, 9]) == hidden.cost([0, 9])


def test_find_structures_without_probe_counts_two_steps(capsys):
    prunekit.find_structures(_net(), torch.randn(1, 3, 5, 5), probe=False, progress=True)
    err = capsys.readouterr().err
    assert "/2 " in err and "/3 " not in err


@pytest.mark.parametrize("method", ["taylor", "sosp-h"])
def test_saliency_bar_counts_samples_and_leaves_scores_alone(capsys, method):
    model = _net()
    structures = prunekit.find_structures(model, torch.randn(1, 3, 5, 5), progress=False)
    capsys.readouterr()
    shown = prunekit.saliency(model, structures, _data(), method, progress=True)
    err = capsys.readouterr().err
    assert f"saliency {method}" in err and "/15 " in err and "sample" in err

    hidden = prunekit.saliency(model, structures, _data(), method, progress=False)
    default = prunekit.saliency(model, structures, _data(), method)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    assert torch.equal(shown, hidden) and torch.equal(shown, default)
    assert shown.shape == (14,) and float(shown.abs().sum()) > 0


def test_saliency_bar_total_is_num_samples(capsys):
    model = _net()
    structures = prunekit.find_structures(model, torch.randn(1, 3, 5, 5), progress=False)
    prunekit.saliency(model, structures, _data(), "taylor", num_samples=7, progress=True)
    err = capsys.readouterr().err
    assert "/7 " in err and "/15 " not in err


def test_data_free_saliency_writes_nothing(capsys):
    model = _net()
    structures = prunekit.find_structures(model, torch.randn(1, 3, 5, 5), progress=False)
    prunekit.saliency(model, structures, None, "l1", progress=True)
    assert capsys.readouterr().err == ""


def test_bad_progress_values_are_refused():
    model = _net()
    with pytest.raises(ValueError, match="progress must be True, False or None"):
        prunekit.find_structures(model, torch.randn(1, 3, 5, 5), progress="yes")
    structures = prunekit.find_structures(model, torch.randn(1, 3, 5, 5), progress=False)
    with pytest.raises(ValueError, match="progress must be True, False or None"):
        prunekit.saliency(model, structures, _data(), "taylor", progress=1)


def test_ranks_other_than_zero_never_show_a_bar(monkeypatch, capsys):
    disabled = structures_module._bar_disabled
    assert disabled(True) is False and disabled(False) is True and disabled(None) is None
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    assert disabled(True) is True
    prunekit.find_structures(_net(), torch.randn(1, 3, 5, 5), progress=True)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 0)
    assert disabled(True) is False


def test_sample_total_where_it_is_cheap():
    data = _data()
    assert _common._sample_total(data, None) == 15
    assert _common._sample_total(data, 4) == 4
    assert _common._sample_total(iter(data), None) is None
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(11, 2), torch.zeros(11)),
                                         batch_size=4)
    assert _common._sample_total(loader, None) == 11
