"""The data-driven criteria against brute force, and on inputs, outputs and losses beyond
[batch, classes] + cross-entropy.

Against brute force (tests.criteria.brute.brute_case: G = Jᵀ (∇²_f L) J with the autograd Hessian of the
mean loss actually optimised, no closed-form Λ): token classification with ignored tokens, soft
labels, MSE regression, keyword (dict) inputs with dict / dataclass outputs, positional (tuple)
inputs with a tuple output, and user loss functions (curvature by Hessian-vector products);
and the structures ``find_structures`` finds on three models written as users write them
(``found_cases.py``: heads overlapping head dims, subsets overlapping units, flatten couplings).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.criteria.brute import (CASES, N_SAMPLES, KeywordModel, build_case, cached_case, case_batches, expected,
                            slice_inputs)
from prunekit.criteria import fisher_diagonal, saliency, sosp_h_terms, sosp_i_pairwise
from prunekit.criteria.losses import MSE, CrossEntropy, select_output
from prunekit.core.structure_types import Structure
from tests.criteria.found_cases import FOUND

DATA_METHODS = ["taylor", "obd", "sosp-h", "sosp-i"]
RTOL = 1e-5


def close(actual, wanted, rtol=RTOL):
    torch.testing.assert_close(actual, wanted.to(actual.dtype), rtol=rtol, atol=1e-12 * (1 + float(wanted.abs().max())))


@pytest.mark.parametrize("name", CASES + FOUND)
@pytest.mark.parametrize("method,options", [("taylor", {}), ("obd", {}), ("sosp-h", {}),
                                            ("sosp-h", {"curvature": "hessian"}),
                                            ("sosp-h", {"first_order": False}), ("sosp-i", {})])
def test_matches_brute_force(name, method, options):
    case, ref = cached_case(name)
    got = saliency(case["model"], case["structures"], case_batches(case, 4), method, **case["options"], **options)
    want = expected(ref, method, options.get("curvature", "gauss-newton"), options.get("first_order", True))
    assert got.shape == (len(case["structures"]),) and got.dtype == torch.float64
    assert float(want.abs().max()) > 1e-6  # not a vacuous comparison
    close(got, want)


@pytest.mark.parametrize("name", CASES + FOUND)
def test_signed_terms_match_brute_force(name):
    """θ_sᵀ g, θ_sᵀ G θ_P (SOSP-H) and the whole Q = Θ G Θᵀ (SOSP-I); overlapping structures
    (heads and head dims, subsets and units) have non-zero off-diagonal terms."""
    case, ref = cached_case(name)
    model, structures, opts = case["model"], case["structures"], case["options"]
    Th = ref["Theta"]
    terms = sosp_h_terms(model, structures, case_batches(case, 4), loss_fn=opts.get("loss"), output=opts.get("output"))
    close(terms["gradient"], Th @ ref["g"])
    close(terms["curvature"], Th @ (ref["G"] @ Th.sum(0)))
    stats = sosp_i_pairwise(model, structures, case_batches(case, 4), loss_fn=opts.get("loss"),
                            output=opts.get("output"))
    close(stats.Q, Th @ ref["G"] @ Th.T)
    close(stats.gradient, Th @ ref["g"])
    assert stats.num_samples == N_SAMPLES


@pytest.mark.parametrize("name", ["tokens", "regression", "dict", "positional", "user-wce"])
@pytest.mark.parametrize("method,options", [("taylor", {}), ("obd", {"chunk_size": 2}), ("sosp-h", {}),
                                            ("sosp-h", {"curvature": "hessian"}), ("sosp-i", {"chunk_size": 2})])
def test_batching_does_not_change_built_in_losses(name, method, options):
    """Built-in losses weight each batch by its counted entries, so any batching gives the mean over all
    counted entries (batch size 1 meets a sample whose tokens are all ignored). A user loss_fn is a batch
    mean: only its single-batch scores are compared here."""
    case = build_case(name)
    sizes = (N_SAMPLES,) if name.startswith("user") else (1, 2, 4, N_SAMPLES)
    results = [saliency(case["model"], case["structures"], case_batches(case, b), method, **case["options"],
                        **options) for b in sizes]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", DATA_METHODS)
def test_num_samples_truncates_every_batched_tensor(method):
    """Keyword inputs: x is cut, the shared ``shift`` [C] (not batch-sized) and ``flag`` are not."""
    case = build_case("dict")
    model, structures = case["model"], case["structures"]
    want = saliency(model, structures, case_batches(case, 4, n=N_SAMPLES)[:1] + [
        (slice_inputs(case["inputs"], 4, 5), case["targets"][4:5])], method, output="logits")
    got = saliency(model, structures, case_batches(case, 4), method, output="logits", num_samples=5)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    single = saliency(model, structures, (slice_inputs(case["inputs"], 0, 5), case["targets"][:5]), method,
                      output="logits")
    torch.testing.assert_close(got, single, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", DATA_METHODS)
@pytest.mark.parametrize("output", [None, "logits", lambda raw: raw["logits"], 1])
def test_output_selection(method, output):
    """Default (the 'logits' entry), a key, a callable and an index all select the same tensor."""
    case, ref = cached_case("dict")
    got = saliency(case["model"], case["structures"], case_batches(case, 4), method, output=output)
    close(got, expected(ref, method))


@pytest.mark.parametrize("method", ["taylor", "sosp-h"])
def test_huggingface_model_output(method):
    """A transformers ModelOutput (a dict and a dataclass at once) picks its ``logits``."""
    outputs = pytest.importorskip("transformers.modeling_outputs")
    case, ref = cached_case("dict")

    class HF(KeywordModel):
        def forward(self, x, shift, flag=True):
            raw = super().forward(x, shift, flag)
            return outputs.TokenClassifierOutput(logits=raw["logits"], hidden_states=(raw["hidden"],))

    model = HF().double().eval()
    model.load_state_dict(case["model"].state_dict())
    close(saliency(model, case["structures"], case_batches(case, 4), method), expected(ref, method))


@pytest.mark.parametrize("loss", ["mse", MSE(), "cross_entropy"])
def test_gauss_newton_is_the_hessian_for_a_model_linear_in_its_parameters(loss):
    """f linear in θ ⇒ H = Jᵀ ∇²_f L J = G exactly: a wrong normalisation of Λ (the 2 of MSE, the count of
    ignored tokens) would show here without any brute-force reference."""
    torch.manual_seed(1)
    model = nn.Linear(3, 4).double()
    s = [Structure(k, "", "unit", [("weight", 0, [k]), ("bias", 0, [k])]) for k in range(4)]
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    if loss == "cross_entropy":
        y = torch.randint(0, 4, (5, 2))
        y[1, 0] = y[3, 1] = -100
    else:
        y = torch.randn(5, 2, 4, dtype=torch.float64)
    data = [(x[:3], y[:3]), (x[3:], y[3:])]
    gn = sosp_h_terms(model, s, data, loss_fn=loss)
    exact = sosp_h_terms(model, s, data, loss_fn=loss, curvature="hessian")
    close(gn["curvature"], exact["curvature"], rtol=1e-10)
    for method in ("sosp-h", "sosp-i"):
        close(saliency(model, s, data, method, loss=loss),
              saliency(model, s, data, "sosp-h", loss=loss, curvature="hessian") if method == "sosp-h"
              else sosp_i_pairwise(model, s, data, loss_fn=loss).saliency(), rtol=1e-10)


def test_user_loss_generic_curvature_equals_the_closed_form():
    """A user loss_fn equal to a built-in one gets the same Λ from Hessian-vector products."""
    case, _ = cached_case("regression")
    model, structures = case["model"], case["structures"]
    data = [(case["inputs"], case["targets"])]
    for method in ("sosp-h", "sosp-i"):
        close(saliency(model, structures, data, method, loss_fn=lambda o, y: F.mse_loss(o, y)),
              saliency(model, structures, data, method, loss="mse"), rtol=1e-10)


def test_ignore_index_is_configurable():
    case, _ = cached_case("tokens")
    targets = case["targets"].clone()
    targets[targets == -100] = 7  # the same tokens, ignored under another index
    data = [(case["inputs"], case["targets"])]
    other = [(case["inputs"], targets)]
    for method in DATA_METHODS:
        torch.testing.assert_close(saliency(case["model"], case["structures"], other, method,
                                            loss=CrossEntropy(ignore_index=7)),
                                   saliency(case["model"], case["structures"], data, method), rtol=1e-10, atol=1e-14)


def test_obd_fisher_weights_samples_by_counted_tokens():
    """F = Σ_n (c_n/W) (∇ℓ_n)², written out with a per-sample loop over the model itself."""
    case, ref = cached_case("tokens")
    model, x, y = case["model"], case["inputs"], case["targets"]
    fisher = fisher_diagonal(model, case["structures"], case_batches(case, 4))
    counted = (y != -100).sum(1)
    want = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for i in range(N_SAMPLES):
        if counted[i] == 0:
            continue
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i:i + 1]).reshape(-1, 3), y[i], ignore_index=-100).backward()
        for k, p in model.named_parameters():
            want[k] += counted[i] / counted.sum() * p.grad.square()
    model.zero_grad(set_to_none=True)
    for name, f in fisher.items():
        close(f, want[name])


# ------------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("method", DATA_METHODS)
def test_cross_entropy_target_shape_mismatch(method):
    case = build_case("tokens")
    with pytest.raises(ValueError, match=r"cross_entropy.*\(6, 4, 3\).*\(6, 4\).*\(6,\)"):
        saliency(case["model"], case["structures"], (case["inputs"], torch.zeros(6, dtype=torch.long)), method)


@pytest.mark.parametrize("method", DATA_METHODS)
def test_mse_target_shape_mismatch(method):
    case = build_case("regression")
    with pytest.raises(ValueError, match=r"mse.*\(6, 1\).*\(6, 2\)"):
        saliency(case["model"], case["structures"], (case["inputs"], case["targets"][:, :1]), method, loss="mse")


def test_mse_needs_float_targets_and_ce_needs_class_indices():
    case = build_case("regression")
    with pytest.raises(ValueError, match="floating"):
        saliency(case["model"], case["structures"], (case["inputs"], torch.zeros(6, 2, dtype=torch.long)), "taylor",
                 loss="mse")
    tokens = build_case("tokens")
    bad = tokens["targets"].clone()
    bad[0, 0] = 3
    with pytest.raises(ValueError, match="class index"):
        saliency(tokens["model"], tokens["structures"], (tokens["inputs"], bad), "sosp-h")
    with pytest.raises(ValueError, match="integer class indices"):
        saliency(tokens["model"], tokens["structures"], (tokens["inputs"], bad.double()), "sosp-h")


@pytest.mark.parametrize("method", DATA_METHODS)
def test_output_key_that_does_not_exist(method):
    case = build_case("dict")
    with pytest.raises(ValueError, match=r"'scores'.*hidden, logits, note"):
        saliency(case["model"], case["structures"], case_batches(case, 4), method, output="scores")


@pytest.mark.parametrize("output,match", [("scores", "no key or attribute 'scores'.*hidden, logits, aux"),
                                          (7, "index out of range"), ("aux", "selected a NoneType, not a tensor")])
def test_output_errors_on_a_dataclass(output, match):
    case = build_case("dataclass")
    with pytest.raises(ValueError, match=match):
        saliency(case["model"], case["structures"], case_batches(case, 4), "taylor", output=output)


class Strange(nn.Module):
    def __init__(self, returns):
        super().__init__()
        self.lin = nn.Linear(2, 3)
        self.returns = returns

    def forward(self, x):
        self.lin(x)
        return {"string": "no tensor", "count": 3} if self.returns == "dict" else ["a", None]


@pytest.mark.parametrize("returns", ["dict", "list"])
@pytest.mark.parametrize("method", DATA_METHODS)
def test_non_tensor_outputs(returns, method):
    s = [Structure(0, "lin", "unit", [("lin.weight", 0, [0])])]
    with pytest.raises(ValueError, match="no tensor"):
        saliency(Strange(returns), s, (torch.randn(4, 2), torch.zeros(4, dtype=torch.long)), method)


def test_other_output_and_loss_errors():
    case = build_case("tokens")
    model, structures, data = case["model"], case["structures"], (case["inputs"], case["targets"])
    with pytest.raises(ValueError, match="output='logits'.*Tensor"):
        saliency(model, structures, data, "taylor", output="logits")
    with pytest.raises(ValueError, match="output=0: an index needs"):
        saliency(model, structures, data, "taylor", output=0)
    with pytest.raises(ValueError, match="output must be"):
        saliency(model, structures, data, "taylor", output=1.5)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        saliency(model, structures, data, "taylor", loss="hinge")
    with pytest.raises(ValueError, match="not both"):
        saliency(model, structures, data, "taylor", loss="mse", loss_fn=F.mse_loss)
    with pytest.raises(ValueError, match="scalar"):
        saliency(model, structures, data, "sosp-h", loss_fn=lambda o, y: o.sum(-1))
    everything_ignored = torch.full_like(case["targets"], -100)
    with pytest.raises(ValueError, match="ignore_index"):
        saliency(model, structures, (case["inputs"], everything_ignored), "sosp-i")
    assert saliency(model, structures, None, "l2", output="logits").shape == (len(structures),)  # data-free: ignored


def test_select_output_defaults():
    t = torch.zeros(2)
    assert select_output(t) is t
    assert select_output((None, "x", t)) is t
    assert select_output({"a": t, "logits": t + 1}).sum() == 2
    from tests.criteria.brute import TinyOutput
    assert select_output(TinyOutput(hidden=t, logits=t + 1)).sum() == 2
