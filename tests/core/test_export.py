"""ONNX and torch.export files of pruned models: run them (onnxruntime, torch.export.load) and compare.

Every model here is pruned and materialized first, so the pruned layer classes are what gets
exported: PrunedLayerNorm / PrunedGroupNorm, FullWidthRMS hooks, PrunedMultiheadAttention
(also with all value dims removed), pruned convolutions and graph convolutions.
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import prunekit
from prunekit.core.export import ExportError, to_onnx, to_torch_export
from prunekit.core.pruned_attention import PrunedMultiheadAttention
from prunekit.core.pruned_layers import PrunedGroupNorm, PrunedLayerNorm
from prunekit.core.structures import FrozenWarning

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOL = 1e-4


def _prune(model, inputs, macs=0.5):
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrozenWarning)
        structures = prunekit.find_structures(model, inputs)
    scores = prunekit.saliency(model, structures, None, method="l1")
    plan = prunekit.select(structures, scores, prunekit.Budget(macs=macs))
    return prunekit.materialize(model, plan, structures, example_inputs=inputs).eval()


def _leaves(out):
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _call(model, inputs):
    with torch.no_grad():
        if isinstance(inputs, dict):
            return _leaves(model(**inputs))
        return _leaves(model(*inputs) if isinstance(inputs, tuple) else model(inputs))


def _flat_inputs(inputs):
    return list(inputs.values()) if isinstance(inputs, dict) else list(inputs) if isinstance(inputs, tuple) else [inputs]


def _rebatch(inputs, n):
    """Every tensor input with ``n`` samples (rows repeated)."""
    def one(t):
        return t[torch.arange(n) % t.shape[0]]
    if isinstance(inputs, dict):
        return {k: one(v) for k, v in inputs.items()}
    return tuple(one(t) for t in inputs) if isinstance(inputs, tuple) else one(inputs)


def _max_error(got, want):
    assert len(got) == len(want) and len(want) > 0
    for a, b in zip(got, want):
        assert tuple(a.shape) == tuple(b.shape)
    return max(float(np.abs(np.asarray(a, dtype=np.float64) - b.double().numpy()).max()) for a, b in zip(got, want))


def _run_onnx(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, _flat_inputs(inputs))}), session


def _check_both(model, inputs, tmp_path, other_batch=5):
    """Export to ONNX and torch.export; both files equal the model at the example batch and at ``other_batch``."""
    onnx_path = to_onnx(model, inputs, tmp_path / "m.onnx")
    pt2_path = to_torch_export(model, inputs, tmp_path / "m.pt2")
    assert onnx_path.stat().st_size > 0 and pt2_path.stat().st_size > 0
    program = torch.export.load(pt2_path).module()
    for batch_inputs in (inputs, _rebatch(inputs, other_batch)):
        want = _call(model, batch_inputs)
        got, session = _run_onnx(onnx_path, batch_inputs)
        assert _max_error(got, want) <= TOL
        assert _max_error([t.numpy() for t in _call(program, batch_inputs)], want) <= TOL
    assert isinstance(session.get_inputs()[0].shape[0], str)  # the batch dim is symbolic
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt2"]  # no temporaries left


# ------------------------------------------------------------------ models


class NormNet(nn.Module):
    """Convolutions with GroupNorm, then LayerNorm on a linear layer."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.c2, self.n2 = nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.fc, self.ln, self.head = nn.Linear(16, 24), nn.LayerNorm(24), nn.Linear(24, 5)

    def forward(self, x):
        h = torch.relu(self.n1(self.c1(x)))
        h = torch.relu(self.n2(self.c2(h))).mean((2, 3))
        return self.head(torch.relu(self.ln(self.fc(h))))


class Encoder(nn.Module):
    """nn.TransformerEncoder (pre-norm, batch-first) with a key padding mask."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 48, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(32, 3)

    def forward(self, x, pad):
        return self.out(self.encoder(self.inp(x), src_key_padding_mask=pad)[:, 0])


def _hf(config_name, model_name, **extra):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, intermediate_size=64,
                                                max_position_embeddings=64, num_labels=3, pad_token_id=0, **extra)
    config._attn_implementation = "eager"
    model = getattr(transformers, model_name)(config).eval()
    ids = torch.randint(3, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    ids[1, -2:], mask[1, -2:] = 0, 0
    return model, {"input_ids": ids, "attention_mask": mask}


# ------------------------------------------------------------------ round trips


def test_pruned_resnet20_at_half_the_macs(tmp_path):
    torch.manual_seed(0)
    dense = prunekit.models.create("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)  # batch 1: traced at 2, dynamic all the same
    small = _prune(dense, x)
    assert prunekit.count(small, x)["macs"] <= 0.5 * prunekit.count(dense, x)["macs"]
    _check_both(small, x, tmp_path, other_batch=4)


def test_pruned_attention_gcn(tmp_path):
    torch.manual_seed(0)
    model = prunekit.models.create("attention_gcn", channels=(8, 16)).eval()
    x = prunekit.models.example_inputs(model, batch=2)
    small = _prune(model, x)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    _check_both(small, x, tmp_path)


def test_pruned_group_and_layer_norms(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    small = _prune(NormNet(), x)
    assert isinstance(small.n1, PrunedGroupNorm) and isinstance(small.ln, PrunedLayerNorm)
    _check_both(small, x, tmp_path)


def test_pruned_transformer_encoder_with_padding_mask(tmp_path):
    torch.manual_seed(0)
    x, pad = torch.randn(2, 7, 6), torch.zeros(2, 7, dtype=torch.bool)
    pad[1, -2:] = True
    small = _prune(Encoder(), (x, pad))
    assert sum(isinstance(m, PrunedMultiheadAttention) for m in small.modules()) == 2
    assert any(isinstance(m, PrunedLayerNorm) for m in small.modules())
    _check_both(small, (x, pad), tmp_path)


def test_pruned_bert_from_a_tiny_config(tmp_path):
    model, inputs = _hf("BertConfig", "BertForSequenceClassification")
    small = _prune(model, inputs)
    assert small.bert.encoder.layer[0].attention.self.query.out_features < 32  # heads / head dims removed
    _check_both(small, inputs, tmp_path, other_batch=3)
    _, session = _run_onnx(tmp_path / "m.onnx", inputs)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]


def test_pruned_llama_with_full_width_rms_hooks(tmp_path):
    model, inputs = _hf("LlamaConfig", "LlamaForSequenceClassification", num_key_value_heads=2, use_cache=False)
    small = _prune(model, inputs)
    assert getattr(small.model.norm, "prunekit_full_width", None) == 32
    _check_both(small, inputs, tmp_path, other_batch=3)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_attention_without_value_dims_exports_the_same_function(tmp_path):
    """All value head dims removed: exported with one zero dim per head, the module itself untouched."""
    torch.manual_seed(0)
    mha = PrunedMultiheadAttention(8, 2, qk_head_dim=3, v_head_dim=0, batch_first=True).eval()
    with torch.no_grad():
        mha.out_proj.bias.uniform_(-1, 1)
    x = torch.randn(2, 5, 8)

    class Self(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model = Self().train()
    want = model.eval()(x)
    model.train()
    assert torch.equal(want, mha.out_proj.bias.expand(2, 5, 8))
    _check_both(model, x, tmp_path)
    assert model.training and mha.training  # modes restored
    assert mha.v_head_dim == 0 and mha.v_proj.out_features == 0 and mha.out_proj.in_features == 0


def test_static_batch_fixes_the_batch_size(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh()).eval()
    x = torch.randn(3, 4)
    to_onnx(model, x, tmp_path / "s.onnx", dynamic_batch=False, opset=18)
    got, session = _run_onnx(tmp_path / "s.onnx", x)
    assert session.get_inputs()[0].shape == [3, 4]
    assert _max_error(got, _call(model, x)) <= TOL
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {session.get_inputs()[0].name: torch.randn(5, 4).numpy()})
    import onnx
    assert onnx.load(str(tmp_path / "s.onnx")).opset_import[0].version == 18
    to_torch_export(model, x, tmp_path / "s.pt2", dynamic_batch=False)
    with pytest.raises(Exception):  # noqa: B017 - torch raises its own guard error type
        torch.export.load(tmp_path / "s.pt2").module()(torch.randn(5, 4))


# ------------------------------------------------------------------ errors


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


class Net(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), inner)

    def forward(self, x):
        return self.body(x)


class Eigen(nn.Module):
    def forward(self, x):
        return torch.linalg.eigvalsh(x.T @ x)


class ExportsDifferently(nn.Module):
    def forward(self, x):
        return x + 1 if torch.compiler.is_exporting() else x


@pytest.mark.parametrize("export", [to_onnx, to_torch_export])
def test_untraceable_model_names_its_module_and_writes_nothing(tmp_path, export):
    with pytest.raises(ExportError, match=r"could not trace Net in module body\.1 \(DataDependent\).*data-dependent"):
        export(Net(DataDependent()), torch.randn(3, 4), tmp_path / "m.out")
    assert list(tmp_path.iterdir()) == []


def test_op_without_onnx_translation_names_op_and_module(tmp_path):
    model = Net(Eigen())
    with pytest.raises(ExportError, match=r"cannot convert Net to ONNX at op aten\._linalg_eigh\S* "
                                          r"in module body\.1 \(Eigen\)"):
        to_onnx(model, torch.randn(3, 4), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    to_torch_export(model, torch.randn(3, 4), tmp_path / "m.pt2")  # torch.export handles it
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt2"]


@pytest.mark.parametrize("export", [to_onnx, to_torch_export])
def test_an_export_that_differs_from_the_model_is_refused(tmp_path, export):
    with pytest.raises(ExportError, match=r"output 0 differs from the model's by 1"):
        export(ExportsDifferently(), torch.randn(3, 4), tmp_path / "m.out")
    assert list(tmp_path.iterdir()) == []
    export(ExportsDifferently(), torch.randn(3, 4), tmp_path / "m.out", check=False)  # written when asked
    assert (tmp_path / "m.out").stat().st_size > 0


@pytest.mark.parametrize("export", [to_onnx, to_torch_export])
def test_bad_output_paths(tmp_path, export):
    model, x = nn.Linear(4, 2), torch.randn(2, 4)
    with pytest.raises(ExportError, match="is a folder"):
        export(model, x, tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ExportError, match=r"file is not a folder"):
        export(model, x, tmp_path / "file" / "m.out")
    path = export(model, x, tmp_path / "new" / "deeper" / "m.out")  # missing folders are created
    assert path.is_file()


def test_bad_options(tmp_path):
    with pytest.raises(ExportError, match="opset"):
        to_onnx(nn.Linear(4, 2), torch.randn(2, 4), tmp_path / "m.onnx", opset=3)
    with pytest.raises(ExportError, match="no tensor with a batch dimension"):
        to_torch_export(nn.Identity(), torch.tensor(1.0), tmp_path / "m.pt2")
    assert list(tmp_path.iterdir()) == []


def test_missing_packages_are_named_with_the_extra(tmp_path, monkeypatch):
    model, x = nn.Linear(4, 2), torch.randn(2, 4)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # importing it now raises ImportError
    with pytest.raises(ExportError, match=r"needs onnxruntime .*prunekit\[export\].*check=False"):
        to_onnx(model, x, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    to_onnx(model, x, tmp_path / "m.onnx", check=False)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ExportError, match=r"onnx and onnxscript .*pip install 'prunekit\[export\]'"):
        to_onnx(model, x, tmp_path / "n.onnx")


def test_import_prunekit_loads_no_onnx_package():
    code = "import sys, prunekit, prunekit.core.export; print(sorted(m for m in sys.modules if m.startswith('onnx')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"]


class FixedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x).view(3, 2, 2)  # batch 3, hard-coded


def test_a_model_with_a_fixed_batch_is_told_to_use_a_static_batch(tmp_path):
    model, x = FixedBatch(), torch.randn(3, 4)
    with pytest.raises(ExportError, match=r"fixes its batch size: export with dynamic_batch=False"):
        to_torch_export(model, x, tmp_path / "m.pt2")
    to_torch_export(model, x, tmp_path / "m.pt2", dynamic_batch=False)
    assert _max_error([_call(torch.export.load(tmp_path / "m.pt2").module(), x)[0].numpy()], _call(model, x)) == 0
