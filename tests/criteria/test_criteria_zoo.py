"""Criteria on every architecture of the conformance zoo, on the structures prunekit finds.

For every zoo architecture (``tests/conformance/zoo.py``: Hugging Face configs and
hand-written patterns), ``prunekit.find_structures`` gives the structures and ``l1``,
``taylor``, ``sosp-h`` (Gauss-Newton), ``obd`` and ``sosp-i`` score them through
``prunekit.saliency`` with ``output=`` picking the case's main output. Targets come from the
main output itself:

* classification logits, ``[N, C]`` or ``[N, T, C]`` (a 3-d output counts as logits when the
  model returns it as a plain tensor or as its ``logits`` entry): cross-entropy, targets the
  argmax of the output;
* anything else (a last hidden state, a segmentation map): MSE to a fixed random target.

Checked: one finite float64 score per structure, and the same call twice gives the same
scores bit for bit. Architectures with no structure are skipped. SOSP-I costs one backward
pass per output entry of a sample, so it is left out where a sample has more than
``SOSP_I_MAX_OUTPUTS`` of them (language-model logits ``[N, T, vocab]``, the U-Net's map);
every other method runs on every architecture. About 45 s of CPU on one thread, most of it
``find_structures``. The exactness of the scores is checked against brute force elsewhere
(``test_criteria_structures.py``, ``test_criteria_general.py``, ``test_criteria_fallback.py``);
this file checks that every criterion runs on every architecture.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import prunekit
from prunekit.core.measure import call_model
from prunekit.core.structures import FrozenWarning

from tests.conformance.zoo import ZOO, main_output  # noqa: E402

METHODS = ("l1", "taylor", "sosp-h", "obd", "sosp-i")
SOSP_I_MAX_OUTPUTS = 256

# Inputs added for the gradient pass only (find_structures sees the case's own inputs).
GRADIENT_INPUTS = {
    # transformers' RWKV in eval mode writes its recurrent state in place (use_cache defaults to
    # True outside training), so no gradient of its output exists at all (a plain backward fails);
    # use_cache=False is what training does.
    "rwkv": {"use_cache": False},
}


def _is_logits(raw, out: torch.Tensor) -> bool:
    if out.dim() == 2:
        return True
    if out.dim() != 3:
        return False
    if isinstance(raw, torch.Tensor):
        return True
    logits = raw.get("logits") if isinstance(raw, dict) else getattr(raw, "logits", None)
    return logits is out


def _targets(model, inputs, pick):
    """``(targets, loss, output entries per sample)`` from the model's main output."""
    with torch.no_grad():
        raw = call_model(model, inputs)
        out = pick(raw)
    if _is_logits(raw, out):
        return out.argmax(-1), "cross_entropy", out[0].numel()
    gen = torch.Generator().manual_seed(0)
    return torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype), "mse", out[0].numel()


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_criteria_run_on_every_architecture(arch):
    case = ZOO[arch]()
    model = case.model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrozenWarning)
        structures = prunekit.find_structures(model, case.inputs)
    if len(structures) == 0:
        pytest.skip(f"{arch}: no structure ({structures.frozen})")
    inputs = dict(case.inputs, **GRADIENT_INPUTS[arch]) if arch in GRADIENT_INPUTS else case.inputs
    pick = case.output or main_output
    targets, loss, per_sample = _targets(model, inputs, pick)
    methods = [m for m in METHODS if m != "sosp-i" or per_sample <= SOSP_I_MAX_OUTPUTS]
    for method in methods:
        runs = [prunekit.saliency(model, structures, (inputs, targets), method, loss=loss, output=pick)
                for _ in range(2)]
        scores = runs[0]
        assert scores.shape == (len(structures),) and scores.dtype == torch.float64, (arch, method)
        assert torch.isfinite(scores).all(), f"{arch} {method}: non-finite scores"
        assert torch.equal(runs[0], runs[1]), f"{arch} {method}: two identical calls differ"
