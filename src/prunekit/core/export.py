"""Export (pruned) models to ONNX and to ``torch.export`` programs, checked and written atomically.

Both exporters first trace the model with ``torch.export.export(strict=False)`` (the path the
conformance suite checks for every materialized architecture), in eval mode, with the batch
dimension dynamic by default: dim 0 of every tensor input whose dim 0 equals the first
tensor's (the rule of :func:`prunekit.core.measure.with_batch`). A batch-1 example is traced
at batch 2, since ``torch.export`` fixes sizes 0 and 1.

* :func:`to_onnx` converts that program with the **dynamo** exporter
  (``torch.onnx.export(program, dynamo=True)``, which needs ``onnxscript``). The legacy
  TorchScript exporter (``dynamo=False``) is deprecated since torch 2.9 (a warning on every
  use); it exported the pruned ResNet-20, GCN and BERT of the tests as well, but it traces the
  model a second time, apart from the program ``to_torch_export`` writes: prunekit does not use it.
* :func:`to_torch_export` writes the program with ``torch.export.save`` (a ``.pt2`` file).

Before anything is written the file is read back and run (onnxruntime, ``torch.export.load``)
on the example inputs, and on one more sample when the batch is dynamic, and compared with the
model (``check=False`` skips it). The file is written to a temporary beside ``path`` and
renamed: a failed export leaves nothing. Failures raise :class:`ExportError` naming the module
(and the op) that could not be exported.

Pruned layers export as plain ops: ``PrunedLayerNorm``/``PrunedGroupNorm`` (sums, index_add),
``FullWidthRMS`` (hooks scaling the RMS norm's input and output), ``PrunedMultiheadAttention``
(linear, matmul, softmax or scaled-dot-product attention). An attention whose value (or query/key)
head dims were all removed is exported with one zero dim per head instead of an empty one,
the same function, because ONNX ``Reshape`` cannot target empty shapes with a dynamic batch.

Example:
    >>> import torch, tempfile, os
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    >>> folder = tempfile.mkdtemp()
    >>> path = to_onnx(model, torch.randn(2, 4), os.path.join(folder, "m.onnx"))  # doctest: +SKIP
    >>> path = to_torch_export(model, torch.randn(2, 4), os.path.join(folder, "m.pt2"))
    >>> program = torch.export.load(path)
    >>> tuple(program.module()(torch.randn(5, 4)).shape)
    (5, 3)
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from .io import atomic_write_bytes
from .measure import _EvalNoGrad, _reference_batch, _tensors, call_model, with_batch
from .pruned_attention import PrunedMultiheadAttention

__all__ = ["ExportError", "to_onnx", "to_torch_export"]

log = logging.getLogger(__name__)

#: outputs must match the model within ``ATOL · max(1, max |output|)``
ATOL = 1e-4
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: loggers whose notices say nothing about the user's model (optional torchvision ops, optimizer passes)
_NOISY = {"torch.onnx._internal.exporter._registration": logging.ERROR, "onnx_ir": logging.WARNING,
          "onnxscript": logging.WARNING, "torch.fx.experimental.symbolic_shapes": logging.ERROR,
          "torch.export._trace": logging.CRITICAL}  # its exportdb hints: the ExportError says what failed
_EXTRA_HINT = "install them with: pip install 'prunekit[export]'"


class ExportError(RuntimeError):
    """A model that cannot be exported (naming the module and op), or an export that does not match it."""


# ------------------------------------------------------------------ inputs, path, model


def _split_inputs(example_inputs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _trace_inputs(example_inputs, dynamic_batch: bool):
    """``(inputs to trace with, dynamic_shapes)``: dim 0 of the batch tensors marked dynamic."""
    if not dynamic_batch:
        return example_inputs, None
    try:
        batch = _reference_batch(example_inputs)
    except ValueError:
        raise ExportError("dynamic_batch: the example inputs hold no tensor with a batch dimension; "
                          "pass dynamic_batch=False") from None
    dim = torch.export.Dim("batch")

    def spec(value):  # on the example inputs: the batch tensors
        if isinstance(value, torch.Tensor):
            return {0: dim} if value.dim() > 0 and value.shape[0] == batch else None
        if isinstance(value, Mapping):
            return {k: spec(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return type(value)(spec(v) for v in value)
        return None

    args, kwargs = _split_inputs(example_inputs)
    traced = with_batch(example_inputs, 2) if batch == 1 else example_inputs
    return traced, (spec(kwargs) if kwargs else spec(args))


def _check_path(path, suffix: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path}: is a folder; give the {suffix} file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"{path}: cannot write it, {parent} is not a folder")
            if not os.access(parent, os.W_OK):
                raise ExportError(f"{path}: cannot write it, {parent} is not writable")
            break
    return path


def _padded_linear(layer: nn.Linear, rows: int, cols: int) -> nn.Linear:
    """A copy of the empty ``layer`` widened to ``rows × cols`` with zeros."""
    new = nn.Linear(cols, rows, bias=layer.bias is not None, dtype=layer.weight.dtype, device=layer.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        if layer.bias is not None:
            new.bias.zero_()
            if layer.bias.numel() == rows:  # out_proj keeps its bias; an empty projection's is empty
                new.bias.copy_(layer.bias)
    return new


def _pad_attention(mha: PrunedMultiheadAttention) -> None:
    """Give an attention with no value (or query/key) dims one zero dim per head: the same outputs."""
    h = mha.num_heads
    if mha.v_head_dim == 0:
        mha.v_proj = _padded_linear(mha.v_proj, h, mha.v_proj.in_features)
        mha.out_proj = _padded_linear(mha.out_proj, mha.out_proj.out_features, h)
        mha.v_head_dim = 1
    if mha.qk_head_dim == 0:  # scores 0 either way
        mha.q_proj = _padded_linear(mha.q_proj, h, mha.q_proj.in_features)
        mha.k_proj = _padded_linear(mha.k_proj, h, mha.k_proj.in_features)
        mha.qk_head_dim = 1


@contextlib.contextmanager
def _exportable(model: nn.Module) -> Iterator[None]:
    """Eval mode, no grad, empty attention dims padded; everything restored afterwards."""
    saved = []
    for m in model.modules():
        if isinstance(m, PrunedMultiheadAttention) and 0 in (m.v_head_dim, m.qk_head_dim):
            saved.append((m, {k: getattr(m, k) for k in ("v_proj", "out_proj", "q_proj", "k_proj")},
                          (m.v_head_dim, m.qk_head_dim)))
            _pad_attention(m)
    try:
        with _EvalNoGrad(model), _quiet():
            yield
    finally:
        for m, layers, (v, qk) in saved:
            for name, layer in layers.items():
                setattr(m, name, layer)
            m.v_head_dim, m.qk_head_dim = v, qk


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch's own deprecation chatter and the exporter's optional-package notices."""
    loggers = {name: logging.getLogger(name) for name in _NOISY}
    levels = {name: logger.level for name, logger in loggers.items()}
    for name, logger in loggers.items():
        logger.setLevel(max(_NOISY[name], logger.getEffectiveLevel()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


# ------------------------------------------------------------------ errors naming the module


def _first_line(error: BaseException) -> str:
    text = _ANSI.sub("", str(error)).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _chain(error: BaseException) -> list[BaseException]:
    seen = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _failing_module(model: nn.Module, error: BaseException) -> str | None:
    """The innermost module of ``model`` whose ``forward`` was running when ``error`` was raised."""
    names = {id(m): n for n, m in model.named_modules()}
    found = None
    for e in _chain(error):
        tb = e.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in names:
                found = f"{names[id(owner)] or '(the model itself)'} ({type(owner).__name__})"
            tb = tb.tb_next
    return found


def _trace_error(model: nn.Module, error: BaseException, dynamic_batch: bool) -> ExportError:
    where = _failing_module(model, error)
    cause = _first_line(_chain(error)[-1])
    text = _ANSI.sub("", "\n".join(str(e) for e in _chain(error)))
    hint = ("; the model fixes its batch size: export with dynamic_batch=False (prunekit export --static-batch)"
            if dynamic_batch and "batch" in text and ("specialized" in text or "Constraints violated" in text) else "")
    return ExportError(f"torch.export could not trace {type(model).__name__}"
                       f"{f' in module {where}' if where else ''}: {cause}{hint}")


def _node_module(program, text: str) -> tuple[str | None, str | None]:
    """``(op, module)`` of the graph node an exporter message names (searched after decompositions too)."""
    node_name = re.search(r"translating node %(\S+)", text)
    op = re.search(r"OpOverload\(op='([^']+)', overload='([^']+)'\)", text)
    op_name = f"{op.group(1)}.{op.group(2)}" if op else None
    for get in (lambda: program, program.run_decompositions):
        try:
            graph = get().graph
        except Exception:  # only a better message is at stake
            continue
        for node in graph.nodes:
            if (node_name and node.name == node_name.group(1)) or (op_name and str(node.target) == op_name):
                stack = list((node.meta.get("nn_module_stack") or {}).values())
                path, kind = stack[-1] if stack else ("", "")
                kind = getattr(kind, "__name__", str(kind).rsplit(".", 1)[-1])
                return str(node.target), f"{path or '(the model itself)'}{f' ({kind})' if kind else ''}"
    return op_name, None


def _convert_error(program, model: nn.Module, error: BaseException) -> ExportError:
    """Name the op and the module of the graph node the ONNX translation stopped at."""
    op, module = _node_module(program, _ANSI.sub("", "\n".join(str(e) for e in _chain(error))))
    where = (f" at op {op}" if op else "") + (f" in module {module}" if module else "")
    return ExportError(f"cannot convert {type(model).__name__} to ONNX{where}: {_first_line(_chain(error)[-1])}")


# ------------------------------------------------------------------ tracing and checking


def _export_program(model: nn.Module, example_inputs, dynamic_batch: bool):
    traced, dynamic = _trace_inputs(example_inputs, dynamic_batch)
    args, kwargs = _split_inputs(traced)
    printed = io.StringIO()  # torch.export prints the partial graph of a failed trace to stderr
    try:
        with contextlib.redirect_stderr(printed):
            return torch.export.export(model, args, kwargs=kwargs or None, dynamic_shapes=dynamic, strict=False)
    except Exception as error:  # torch.export raises many types; all mean "cannot trace"
        log.debug("torch.export failed; its partial graph:\n%s", printed.getvalue())
        raise _trace_error(model, error, dynamic_batch) from error


def _check_inputs(example_inputs, dynamic_batch: bool) -> list:
    """The example inputs, and with a dynamic batch the same with one more sample."""
    checks = [example_inputs]
    if dynamic_batch:
        checks.append(with_batch(example_inputs, _reference_batch(example_inputs) + 1))
    return checks


def _compare(model: nn.Module, run, example_inputs, dynamic_batch: bool, atol: float, what: str) -> float:
    """Largest difference between ``run(inputs)`` (a list of arrays or tensors) and the model's outputs."""
    worst = 0.0
    for inputs in _check_inputs(example_inputs, dynamic_batch):
        want = [t for t in tree_leaves(call_model(model, inputs)) if isinstance(t, torch.Tensor)]
        got = [torch.as_tensor(v) for v in run(inputs)]
        batch = _reference_batch(inputs) if dynamic_batch else None
        if len(got) != len(want):
            raise ExportError(f"{what}: {len(got)} outputs, the model returns {len(want)} tensors")
        for k, (a, b) in enumerate(zip(got, want)):
            a, b = a.detach().cpu(), b.detach().cpu()
            if tuple(a.shape) != tuple(b.shape):
                raise ExportError(f"{what}: output {k} has shape {tuple(a.shape)}, the model's is "
                                  f"{tuple(b.shape)} (batch {batch})")
            if b.numel() == 0:
                continue
            err = (a.double() - b.double()).abs().max().item()
            scale = max(1.0, b.double().abs().max().item())
            if not err <= atol * scale:
                raise ExportError(f"{what}: output {k} differs from the model's by {err:.3g} "
                                  f"(> {atol:g} x {scale:.3g}; batch {batch})")
            worst = max(worst, err)
    return worst


def _write(path: Path, data: bytes, what: str) -> Path:
    atomic_write_bytes(path, data)
    log.info("%s: wrote %s (%.1f KiB)", path, what, len(data) / 1024)
    return path


# ------------------------------------------------------------------ the two exporters


def to_torch_export(model: nn.Module, example_inputs, path, *, dynamic_batch: bool = True,
                    check: bool = True, atol: float = ATOL) -> Path:
    """Write ``model`` as a ``torch.export`` program (``torch.export.save``, a ``.pt2`` file); returns the path.

    ``example_inputs``: a tensor, a tuple (positional) or a dict (keyword inputs). Load it with
    ``torch.export.load(path).module()``. Raises :class:`ExportError` naming the module it
    cannot trace.

    Example:
        >>> import torch, tempfile, os
        >>> path = to_torch_export(torch.nn.Linear(4, 2), torch.randn(3, 4), os.path.join(tempfile.mkdtemp(), "l.pt2"))
        >>> tuple(torch.export.load(path).module()(torch.randn(7, 4)).shape)
        (7, 2)
    """
    path = _check_path(path, ".pt2")
    with _exportable(model):
        program = _export_program(model, example_inputs, dynamic_batch)
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        data = buffer.getvalue()
        if check:
            loaded = torch.export.load(io.BytesIO(data)).module()
            err = _compare(model, lambda x: tree_leaves(call_model(loaded, x)), example_inputs, dynamic_batch,
                           atol, f"{path}: the exported program")
            log.info("%s: torch.export program matches the model (max difference %.2g)", path, err)
    return _write(path, data, "a torch.export program")


def _onnx_modules():
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's translation library)
        import onnx  # noqa: F401
    except ImportError as error:
        raise ExportError(f"ONNX export needs the packages onnx and onnxscript ({error}); {_EXTRA_HINT}") from None


def _onnxruntime_runner(data: bytes, path: Path):
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"{path}: checking the ONNX file needs onnxruntime ({_EXTRA_HINT}), "
                          "or pass check=False") from None
    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ExportError(f"{path}: onnxruntime cannot load the exported model: {_first_line(error)}") from error
    names = [i.name for i in session.get_inputs()]

    def run(inputs):
        tensors = _tensors(inputs)
        if len(tensors) != len(names):
            raise ExportError(f"{path}: the ONNX graph takes {len(names)} inputs, the model {len(tensors)} tensors")
        return session.run(None, {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)})
    return run


def to_onnx(model: nn.Module, example_inputs, path, *, opset: int | None = None, dynamic_batch: bool = True,
            check: bool = True, atol: float = ATOL) -> Path:
    """Write ``model`` as an ONNX file (dynamo exporter, weights inside the file); returns the path.

    ``example_inputs``: a tensor, a tuple (positional) or a dict (keyword inputs); the ONNX
    inputs are its tensors in that order, named after the ``forward`` arguments. ``opset``:
    the ONNX opset (default: torch's recommended one). With ``check`` the file is run with
    onnxruntime first (see the module). Needs ``pip install 'prunekit[export]'``.

    Example:
        >>> import torch, tempfile, os, onnxruntime   # doctest: +SKIP
        >>> path = to_onnx(torch.nn.Linear(4, 2), torch.randn(3, 4), os.path.join(tempfile.mkdtemp(), "l.onnx"))  # doctest: +SKIP
        >>> onnxruntime.InferenceSession(path).run(None, {"input": torch.randn(7, 4).numpy()})[0].shape  # doctest: +SKIP
        (7, 2)
    """
    path = _check_path(path, ".onnx")
    if opset is not None and (not isinstance(opset, int) or opset < 7):
        raise ExportError(f"opset must be an integer ONNX opset version (>= 7), got {opset!r}")
    _onnx_modules()
    with _exportable(model):
        program = _export_program(model, example_inputs, dynamic_batch)
        try:
            onnx_program = torch.onnx.export(program, (), None, dynamo=True, opset_version=opset, verbose=False,
                                             external_data=False)
            data = onnx_program.model_proto.SerializeToString()
        except Exception as error:  # the exporter's errors: missing translations, protobuf's 2 GiB limit
            raise _convert_error(program, model, error) from error
        if check:
            err = _compare(model, _onnxruntime_runner(data, path), example_inputs, dynamic_batch, atol,
                           f"{path}: the ONNX model")
            log.info("%s: onnxruntime output matches the model (max difference %.2g)", path, err)
    return _write(path, data, "an ONNX model")
