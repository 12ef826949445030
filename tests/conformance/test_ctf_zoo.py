"""CTF on every architecture of the zoo: masks attach, train, finalize to a plan that replays exactly.

A short custom loop (CTF's documented use outside ``fit``): the loss is the mean square of
the main output plus CTF's penalty, a few steps per epoch; then ``finalize`` must hit the
rate, leave the model equal to ``apply_masks(dense, plan)`` and materialize exactly.
Heads and graph subsets that the analysis finds become CTF's channel-wise blocks.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import prunekit
from prunekit.ctf import CTF
from prunekit.core.materialize import output_error
from prunekit.core.structures import FrozenWarning

from tests.conformance.zoo import ZOO, main_output

ARCHS = sorted(ZOO)


def _run(model, inputs):
    return prunekit.core.measure.call_model(model, inputs)


KNOWN: dict[str, str] = {}


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.xfail(reason=KNOWN[a], strict=True))
                                  if a in KNOWN else a for a in ARCHS])
def test_ctf_trains_and_finalizes_on_foreign_architectures(arch):
    torch.manual_seed(0)
    case = ZOO[arch]()
    model, inputs = case.model, case.inputs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrozenWarning)
        ctf = CTF(model, 0.5, example_inputs=inputs, hard=0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01)
    model.train()
    for epoch in range(2):
        ctf.step(epoch, 2)
        for _ in range(2):
            opt.zero_grad()
            loss = main_output(_run(model, inputs)).float().pow(2).mean() + ctf.penalty()
            loss.backward()
            opt.step()
    model.eval()
    plan = ctf.finalize()
    assert ctf.report()["rate"] == pytest.approx(0.5, abs=0.02)
    with torch.no_grad():
        trained = copy.deepcopy(model)
        # the finalized model is the plan applied to its own weights, and it materializes exactly
        replay = prunekit.apply_masks(trained, plan)
        assert output_error(_run(trained, inputs), _run(replay, inputs)) <= 1e-6
        small = prunekit.materialize(trained, plan, example_inputs=inputs)
        assert output_error(_run(replay, inputs), _run(small, inputs)) <= 1e-5
