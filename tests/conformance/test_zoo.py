"""Smoke test of the conformance zoo: every architecture builds, runs and is deterministic."""
import pytest
import torch

from tests.conformance.zoo import HAND_IDS, HF_IDS, ZOO, call, main_output


def test_registry():
    assert len(ZOO) >= 42
    assert sorted(HF_IDS + HAND_IDS) == sorted(ZOO)
    assert not set(HF_IDS) & set(HAND_IDS)


@pytest.mark.parametrize("name", list(ZOO))
def test_builds_and_runs(name):
    outputs = []
    for _ in range(2):  # two builds: same weights, same inputs, same output
        case = ZOO[name]()
        assert not case.model.training
        with torch.no_grad():
            y = (case.output or main_output)(call(case.model, case.inputs))
        assert isinstance(y, torch.Tensor) and y.is_floating_point()
        assert torch.isfinite(y).all()
        outputs.append(y)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_main_output():
    t = torch.ones(2)
    assert main_output(t) is t
    assert main_output({"embedding": t * 2, "logits": t}) is t
    assert main_output({"last_hidden_state": t, "pooler_output": t * 2}) is t
    assert main_output({"a": None, "b": t}) is t
    assert main_output((None, (t, t * 2))) is t
    with pytest.raises(TypeError):
        main_output((None, "text"))
