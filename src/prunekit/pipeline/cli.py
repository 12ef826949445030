"""The ``prunekit`` command line: ``demo | train | prune | bottleneck | inspect | export | data synth``.

The model of ``inspect`` and ``prune`` is a registered name (``resnet20``), a folder
saved by prunekit, or your own model: ``path/to/file.py:factory`` or
``package.module:factory``, where ``factory`` is a callable returning an ``nn.Module``
(a function or an ``nn.Module`` class; ``--arg key=value`` are its keyword arguments).
``--weights`` loads a safetensors file strictly; ``--input-shape`` (repeatable, one per
positional input) gives the example input the analysis runs on.

Example:
    $ prunekit inspect resnet20 --input-shape 1,3,32,32
    $ prunekit inspect models/net.py:build --weights net.safetensors --input-shape 1,3,224,224
    $ prunekit prune mypkg.models:Net --input-shape 1,3,32,32 --method l1 --budget-macs 0.5 --out runs/small
    $ prunekit prune runs/small --model mypkg.models:Net --method l1 --budget-macs 0.3 --out runs/smaller
    $ prunekit prune resnet56 --method l1 --budget-latency 0.5 --latency-batch 64 --latency-threads 1
    $ prunekit export runs/small --onnx small.onnx
    $ prunekit demo --quick
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import warnings
from pathlib import Path

from ..core.plan import DEFAULT_GROUP_NORM, GROUP_NORMS

__all__ = ["main", "build_parser", "CliError"]


class CliError(ValueError):
    """A user error the command line reports as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prunekit inspect: error: ...``) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,3,32,32, got {text!r}") from None
    if any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return shape


def _multiple(text: str):
    """argparse type of ``--multiple-of``: ``auto`` or an integer >= 1."""
    return "auto" if text == "auto" else _int_at_least(1)(text)


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum`` (``--epochs 0`` and ``--num-samples -5`` are refused)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _fraction(text: str) -> float:
    """argparse type: a finite fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {text!r}")
    return value


def _open_fraction(text: str) -> float:
    """argparse type: a fraction strictly between 0 and 1 (``--budget-latency``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _kwargs(items) -> dict:
    result = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not _:
            raise CliError(f"--arg expects key=value, got {item!r}")
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    return result


# ------------------------------------------------------------------ the model argument

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _split_reference(text: str) -> tuple[str, str, str] | None:
    """``("file", path, attr)``, ``("module", name, attr)``, or None for a registered name / folder."""
    head, sep, attr = text.rpartition(":")
    if not sep or not head or not _DOTTED.fullmatch(attr):
        return None
    if head.endswith(".py") or "/" in head or os.sep in head:
        return "file", head, attr
    if _DOTTED.fullmatch(head):
        return "module", head, attr
    return None


def _import_file(path_text: str):
    path = Path(path_text)
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    name = f"_prunekit_user_{re.sub(r'[^0-9A-Za-z_]', '_', str(path.resolve()))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    if folder not in sys.path:  # the file's own sibling imports work, as with `python file.py`
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise CliError(f"{path}: importing it raised {type(error).__name__}: {error}") from error
    return module


def _import_module(name: str):
    if "" not in sys.path and os.getcwd() not in sys.path:  # as `python -m`: the working folder is importable
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise CliError(f"cannot import {name!r}: {error}") from error
    except Exception as error:
        raise CliError(f"importing {name!r} raised {type(error).__name__}: {error}") from error


def build_user_model(reference: str, kwargs: dict | None = None):
    """The ``nn.Module`` that ``file.py:factory`` or ``package.module:factory`` names.

    ``factory`` may be dotted (``module:Class.create``); a callable is called with
    ``kwargs``, an ``nn.Module`` instance is used as it is. Raises :class:`CliError`
    with one line naming what is wrong.
    """
    from torch import nn

    parts = _split_reference(reference)
    if parts is None:
        raise CliError(f"{reference!r}: expected path/to/file.py:factory or package.module:factory")
    kind, where, attr = parts
    obj = _import_file(where) if kind == "file" else _import_module(where)
    for name in attr.split("."):
        if not hasattr(obj, name):
            raise CliError(f"{reference}: {where} has no attribute {attr!r}")
        obj = getattr(obj, name)
    kwargs = kwargs or {}
    if isinstance(obj, nn.Module):
        if kwargs:
            raise CliError(f"{reference}: is a module instance, not a factory; it takes no --arg")
        model = obj
    elif callable(obj):
        try:
            model = obj(**kwargs)
        except Exception as error:
            raise CliError(f"{reference}: calling it raised {type(error).__name__}: {error}") from error
    else:
        raise CliError(f"{reference}: is a {type(obj).__name__}, not a callable returning an nn.Module")
    if not isinstance(model, nn.Module):
        raise CliError(f"{reference}: returned a {type(model).__name__}, not an nn.Module")
    return model


def load_weights(model, path_text: str) -> None:
    """Load a safetensors file into ``model`` strictly; one-line :class:`CliError` on any mismatch."""
    from safetensors.torch import load_file

    path = Path(path_text)
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    if path.suffix != ".safetensors":
        raise CliError(f"{path}: --weights reads .safetensors files only (no pickles); write one with "
                       "safetensors.torch.save_model(model, 'weights.safetensors')")
    try:
        state = load_file(str(path))
    except Exception as error:
        raise CliError(f"{path}: unreadable safetensors file: {error}") from error
    expected = model.state_dict()
    # tied tensors (one storage under two names) are stored once by safetensors.torch.save_model
    stored = {expected[k].data_ptr() for k in state if k in expected}
    missing = [k for k in expected if k not in state and not (expected[k].numel() and expected[k].data_ptr() in stored)]
    unexpected = sorted(k for k in state if k not in expected)
    counts = f"({len(missing)} missing, {len(unexpected)} unexpected)"
    if missing:
        raise CliError(f"{path}: does not match the model: missing key {missing[0]!r} {counts}")
    if unexpected:
        raise CliError(f"{path}: does not match the model: unexpected key {unexpected[0]!r} {counts}")
    for key, tensor in expected.items():
        if key in state and tuple(state[key].shape) != tuple(tensor.shape):
            raise CliError(f"{path}: key {key!r} has shape {tuple(state[key].shape)}, "
                           f"the model expects {tuple(tensor.shape)}")
    model.load_state_dict(state, strict=False)  # strict above; tied names are filled through their storage


_DTYPES = {"float": "float32", "double": "float64", "half": "float16", "bfloat16": "bfloat16",
           "long": "int64", "int": "int32", "bool": "bool"}


def _input_tensors(shapes, dtypes, high: int, model):
    """Seeded example inputs: normal floats, integers (token ids, masks) drawn from ``[0, high)``."""
    import torch

    dtypes = dtypes or ["float"]
    if len(dtypes) not in (1, len(shapes)):
        raise CliError(f"give one --input-dtype for all inputs or one per --input-shape "
                       f"({len(shapes)} shapes, {len(dtypes)} dtypes)")
    dtypes = dtypes * len(shapes) if len(dtypes) == 1 else dtypes
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for shape, name in zip(shapes, dtypes):
        dtype = getattr(torch, _DTYPES[name])
        if dtype.is_floating_point:
            x = torch.randn(shape, generator=generator, dtype=dtype)
            if name == "float" and reference is not None:
                x = x.to(reference.dtype)
        else:
            x = torch.randint(0, max(int(high), 1), shape, generator=generator).to(dtype)
        tensors.append(x)
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def _saved_spec(folder: Path) -> dict:
    try:
        return json.loads((folder / "prunekit.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # prunekit.load reports it, naming the file


def load_model(args):
    """``(model, example_inputs, label)`` from ``args.model`` (or ``args.checkpoint``) and the model options."""
    import prunekit

    source = args.checkpoint if hasattr(args, "checkpoint") else args.model
    rebuild = getattr(args, "rebuild", None)
    kwargs = _kwargs(args.arg)
    folder = Path(source)
    if folder.is_dir():
        if args.weights:
            raise CliError(f"{folder}: a saved folder holds its own weights; --weights is for a model reference")
        spec = _saved_spec(folder)
        if rebuild is None and spec and not spec.get("arch"):
            built = (spec.get("extra") or {}).get("model")
            hint = f" (built by {built})" if built else ""
            raise CliError(f"{folder}: saved from your own model{hint}; pass --model path.py:factory "
                           "or --model package.module:factory to rebuild it")
        dense = build_user_model(rebuild, kwargs) if rebuild else None
        model = prunekit.load(folder, model=dense).eval()
        label = str(folder)
    elif _split_reference(source) is not None:
        model = build_user_model(source, kwargs).eval()
        label = source
    elif not Path(source).suffix and "/" not in source:
        try:
            model = prunekit.models.create(source, **kwargs).eval()
        except ValueError as error:
            raise CliError(f"{source}: no such folder, not path/to/file.py:factory or package.module:factory, "
                           f"and {error}") from error
        label = source
    else:
        raise CliError(f"{source}: no such folder, and not a registered model name, path/to/file.py:factory "
                       "or package.module:factory")
    if args.weights:
        load_weights(model, args.weights)
    return model, _example_inputs(args, model, label), label


def _example_inputs(args, model, label: str):
    """``--input-shape``, else the input a saved plan records, else a registered model's own."""
    import prunekit
    from ..core.structures import inputs_from_spec

    if args.input_shape:
        return _input_tensors(args.input_shape, args.input_dtype, args.input_high, model)
    if getattr(model, "prunekit_plan", None) is not None:
        return inputs_from_spec(model.prunekit_plan.input_spec, model)
    if isinstance(getattr(model, "prunekit_arch", None), dict):
        return prunekit.models.example_inputs(model, batch=1)
    raise CliError(f"{label}: give the example input shape, e.g. --input-shape 1,3,32,32 "
                   "(repeat it for several inputs; --input-dtype long for token ids)")


# ------------------------------------------------------------------ commands


def cmd_inspect(args) -> int:
    import prunekit

    model, example, _ = load_model(args)
    structures = prunekit.find_structures(model, example)
    print(structures)
    print(structures.summary())
    return 0


def cmd_export(args) -> int:
    from ..core.export import to_onnx, to_torch_export

    if args.opset is not None and not args.onnx:
        raise CliError("--opset applies to --onnx only")
    model, example, label = load_model(args)
    options = {"dynamic_batch": not args.static_batch, "check": not args.no_check}
    if args.onnx:
        path = to_onnx(model, example, args.onnx, opset=args.opset, **options)
    else:
        path = to_torch_export(model, example, args.torch_export, **options)
    checked = "" if args.no_check else ", checked against the model"
    print(f"{label}: wrote {path} ({path.stat().st_size / 1024:.1f} KiB{checked})")
    return 0


def _shown(name: str):
    """Show logger ``name``'s INFO lines on stdout while the block runs."""
    import contextlib

    @contextlib.contextmanager
    def shown():
        logger = logging.getLogger(name)
        handler, level = logging.StreamHandler(sys.stdout), logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
    return shown()


def cmd_demo(args) -> int:
    from .demo import run_demo

    with _shown("prunekit.pipeline.demo"):
        run_demo(out_dir=args.out, quick=args.quick, seed=args.seed)
    return 0


def _device(text: str) -> str:
    """argparse type: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``, available in this PyTorch."""
    import torch

    if not (text in ("cpu", "cuda", "auto", "mps") or re.fullmatch(r"cuda:\d+", text)):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N, mps or auto, got {text!r}")
    if text.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (int(text[5:]) if ":" in text else 0) >= count:
            raise argparse.ArgumentTypeError(f"{text}: this PyTorch sees {count or 'no'} CUDA device(s) (or is a "
                                             "CPU-only build); use cpu or auto")
    return text


def _run_options(parser: argparse.ArgumentParser, amp: bool = False) -> None:
    """``--device`` (and ``--amp``) of the commands that train or score."""
    parser.add_argument("--device", type=_device, help="cpu, cuda, cuda:N, mps or auto (CUDA when present); "
                        "default: the config's (train) or cpu (prune). Under torchrun, cuda is cuda:LOCAL_RANK")
    if amp:
        parser.add_argument("--amp", choices=["bf16", "fp16"],
                            help="mixed precision: autocast in bf16 or fp16 (fp16 with a GradScaler); worth it on CUDA")


def _main_rank() -> bool:
    """Not launched by torchrun, or its rank 0: the process that prints the result."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def cmd_train(args) -> int:
    from .commands import train_from_config

    result = train_from_config(args.config, resume=args.resume, overwrite=args.overwrite, device=args.device,
                               amp=args.amp)
    if _main_rank():
        print(f"test accuracy {result['evaluation']['accuracy']:.4f} ({result['data'].get('format')}); "
              f"saved {result['saved']}")
    return 0


def cmd_data_synth(args) -> int:
    from ..data.synth import synth_main

    print(synth_main(args.format, args.out, seed=args.seed, difficulty=args.difficulty, overwrite=args.overwrite))
    return 0


def _budget(args) -> dict:
    return {k: v for k, v in (("structures", args.budget_structures), ("params", args.budget_params),
                              ("macs", args.budget_macs), ("latency", args.budget_latency)) if v is not None}


def _latency_options(args) -> dict:
    """``--latency-batch`` and ``--latency-threads`` for :func:`~prunekit.pipeline.commands.prune_model`."""
    return {"latency_batch": args.latency_batch, "latency_threads": args.latency_threads,
            "latency_rounds": args.latency_rounds}


def _group_norm(args) -> str | None:
    """``--group-norm``: ``none`` is select's ``group_norm=None`` (the raw scores)."""
    return None if args.group_norm == "none" else args.group_norm


def _registered_folder(args) -> bool:
    """A saved folder prunekit rebuilds by itself (registered architecture, no model options given)."""
    folder = Path(args.checkpoint)
    return (folder.is_dir() and args.rebuild is None and not args.input_shape and not args.weights
            and not args.arg and bool(_saved_spec(folder).get("arch")))


def cmd_prune(args) -> int:
    from .commands import prune_checkpoint

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise CliError(f"{args.out}: exists and is not a folder (--out names the folder to save the pruned model in)")
    from .train import init_distributed

    init_distributed(args.device or "cpu")  # under torchrun (WORLD_SIZE > 1): each rank scores its share
    if Path(args.checkpoint).suffix in (".yaml", ".yml") or _registered_folder(args):
        summary = prune_checkpoint(args.checkpoint, method=args.method, out=args.out, budget=_budget(args),
                                   data_config=args.config, num_samples=args.num_samples, rate=args.rate,
                                   epochs=args.epochs, finetune_epochs=args.finetune, cost=args.cost,
                                   device=args.device, multiple_of=args.multiple_of,
                                   temperature=args.temperature, group_norm=_group_norm(args),
                                   **_latency_options(args))
        if _main_rank():
            print(json.dumps(summary, indent=1))
        return 0
    model, example, label = load_model(args)
    if getattr(model, "prunekit_plan", None) is not None:
        raise CliError(f"{label}: is already pruned and plans do not chain yet; prune its dense model "
                       "(--weights with the dense safetensors file)")
    _prune_model(model, example, label, args)
    return 0


def _prune_model(model, example, label: str, args) -> dict:
    """``prunekit prune`` on a user's model (a reference, or a folder rebuilt with ``--model``)."""
    from ..core.io import save
    from .commands import prune_model, write_summary
    from .config import load_config
    from .dataspec import load_data

    train = test = config = None
    if args.config:
        config = load_config(args.config)
        train, test, _ = load_data(config.data)
    stem = re.sub(r"[^0-9A-Za-z_.-]+", "_", Path(label).name if Path(label).is_dir() else label.rsplit(":", 1)[-1])
    out = Path(args.out) if args.out else Path("runs") / f"{stem}_{args.method}"
    options = {"lr": config.lr, "batch_size": config.batch_size, "seed": config.seed} if config else {}
    try:
        plan, pruned, summary = prune_model(model, example, args.method, _budget(args), train=train, test=test,
                                            num_samples=args.num_samples, rate=args.rate, epochs=args.epochs,
                                            finetune_epochs=args.finetune, cost=args.cost, device=args.device,
                                            multiple_of=args.multiple_of, temperature=args.temperature,
                                            group_norm=_group_norm(args), **_latency_options(args), **options)
    except ValueError as error:
        raise CliError(str(error)) from None
    built = args.rebuild or (label if _split_reference(label) else None)
    save(pruned, out, plan=plan, extra={"model": built} if built else None)
    summary["saved"] = str(out)
    write_summary(out, summary)
    if _main_rank():
        print(json.dumps(summary, indent=1))
    return summary


def cmd_bottleneck(args) -> int:
    from .bottleneck import expand_pruning, load_bottleneck_config

    config = load_bottleneck_config(args.config)
    options = {k: v for k, v in config.items() if k not in ("arch", "data")}
    options.setdefault("out_dir", f"runs/{Path(args.config).stem}")
    with _shown("prunekit.pipeline.bottleneck"):  # one line per seed, as it finishes
        result = expand_pruning(config["arch"], config["data"], **options)
    print(json.dumps(result["summary"], indent=1))
    return 0


def _version() -> str:
    from .. import __version__

    return __version__


def _model_options(parser: argparse.ArgumentParser) -> None:
    """The options that build a model and its example input (``inspect`` and ``prune``)."""
    parser.add_argument("--arg", action="append", metavar="KEY=VALUE",
                        help="keyword argument of the registered model or factory (JSON values); repeatable")
    parser.add_argument("--weights", metavar="FILE.safetensors",
                        help="load these weights into the model, strictly (safetensors only)")
    parser.add_argument("--input-shape", "--input", dest="input_shape", action="append", type=_shape,
                        metavar="N,C,...", help="example input shape, e.g. 1,3,32,32; repeat for several positional "
                                               "inputs (default: the registered model's or the saved plan's)")
    parser.add_argument("--input-dtype", action="append", choices=sorted(_DTYPES),
                        help="dtype of the example inputs: one for all, or one per --input-shape (default float; "
                             "long for token ids)")
    parser.add_argument("--input-high", type=_int_at_least(1), default=2, metavar="N",
                        help="integer inputs are drawn from [0, N) (default 2: valid token, type and mask ids)")


MODEL_HELP = ("a registered model name (resnet20), path/to/file.py:factory or package.module:factory "
              "(factory: a callable returning an nn.Module, or an nn.Module class)")


def _budget_options(prune: argparse.ArgumentParser) -> None:
    """The budgets of ``prune`` (fractions to remove) and the settings the latency is measured with."""
    prune.add_argument("--budget-macs", type=_fraction, help="fraction of the MACs to remove")
    prune.add_argument("--budget-params", type=_fraction, help="fraction of the parameters to remove")
    prune.add_argument("--budget-structures", type=_fraction, help="fraction of the structures to remove")
    prune.add_argument("--budget-latency", type=_open_fraction, metavar="F",
                       help="fraction of the measured latency to remove, in (0, 1): a latency model is measured "
                            "first (cached in $PRUNEKIT_CACHE/latency, else ~/.cache/prunekit/latency) and the "
                            "summary shows predicted and measured latency; combines with the other budgets")
    prune.add_argument("--latency-batch", type=_int_at_least(1), metavar="B",
                       help="batch size the latency is measured at (default: the example input's); with another "
                            "budget alone, still measures and reports predicted and measured latency")
    prune.add_argument("--latency-rounds", type=_int_at_least(1), metavar="N", default=6,
                       help="--budget-latency alone: time up to N plans and correct the request by the measured "
                            "shortfall (default 6; 1: the latency model's plan as predicted)")
    prune.add_argument("--latency-threads", type=_int_at_least(1), metavar="T",
                       help="CPU threads the latency is measured with (default: torch's current count); as "
                            "--latency-batch, also reports latency with another budget")


def _selection_options(prune: argparse.ArgumentParser) -> None:
    """How ``prune`` turns scores into a plan (``select``'s ``multiple_of`` and ``group_norm``)."""
    prune.add_argument("--multiple-of", type=_multiple, default=1, metavar="K",
                       help="keep every group whole or a multiple of K channels/neurons/heads (default 1); "
                            "'auto' (with a latency model): 8 where the step probe finds odd widths slow, else 1")
    prune.add_argument("--group-norm", choices=[norm or "none" for norm in GROUP_NORMS], default=DEFAULT_GROUP_NORM,
                       help="rescale the scores within each group before the global ranking (default mean); "
                            "none ranks the raw scores (recommended with --budget-latency: docs/selection.md)")


def _add_export(sub) -> None:
    """The ``export`` subcommand."""
    export = sub.add_parser("export", help="write a (pruned) model as an ONNX file or a torch.export program",
                            description="prunekit export runs/small --onnx small.onnx; prunekit export runs/small "
                                        "--torch-export small.pt2; prunekit export net.py:build --weights "
                                        "w.safetensors --input-shape 1,3,32,32 --onnx net.onnx")
    export.add_argument("model", help=MODEL_HELP + ", or a folder saved by prunekit (e.g. by prunekit prune)")
    export.add_argument("--model", dest="rebuild", metavar="REFERENCE",
                        help="with a saved folder of your own model: the file.py:factory or module:factory "
                             "that builds its dense model")
    _model_options(export)
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("--onnx", metavar="OUT.onnx",
                        help="write an ONNX file (dynamo exporter; needs pip install 'prunekit[export]')")
    target.add_argument("--torch-export", metavar="OUT.pt2",
                        help="write a torch.export program (torch.export.save; load with torch.export.load)")
    export.add_argument("--opset", type=_int_at_least(7), help="ONNX opset version (default: torch's recommended one)")
    export.add_argument("--static-batch", action="store_true",
                        help="fix the batch size to the example input's (default: dim 0 of the inputs is dynamic)")
    export.add_argument("--no-check", action="store_true",
                        help="do not run the written model (onnxruntime / torch.export.load) against the model")
    export.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunekit", description="Structured, second-order and learned pruning.")
    parser.add_argument("--version", action="version", version=f"prunekit {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="the main job: synthetic skeleton data → train → prune with every method → report")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a one-minute version")
    demo.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    demo.set_defaults(func=cmd_demo)

    inspect = sub.add_parser("inspect", help="list the prunable structures of a model, one row per group",
                             description="prunekit inspect resnet20; prunekit inspect net.py:build --weights "
                                         "w.safetensors --input-shape 1,3,224,224; prunekit inspect runs/small")
    inspect.add_argument("model", help=MODEL_HELP + ", or a folder saved by prunekit")
    inspect.add_argument("--model", dest="rebuild", metavar="REFERENCE",
                         help="with a saved folder of your own model: the file.py:factory or module:factory "
                              "that builds its dense model")
    _model_options(inspect)
    inspect.set_defaults(func=cmd_inspect)

    _add_export(sub)

    train = sub.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config", help="YAML training config (model, data, epochs, ...)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an earlier run in the same output folder (refused otherwise)")
    _run_options(train, amp=True)
    train.set_defaults(func=cmd_train)

    prune = sub.add_parser("prune", help="prune a model with a criterion and a budget, or learn CTF masks",
                           description="prunekit prune runs/m/model --method sosp-h --budget-macs 0.5 --config C.yaml;"
                                       " prunekit prune net.py:build --weights w.safetensors --input-shape 1,3,32,32"
                                       " --method l1 --budget-macs 0.5; prunekit prune --method ctf --rate 0.95 C.yaml")
    prune.add_argument("checkpoint", metavar="model",
                       help="a folder written by prunekit.save / prunekit train, " + MODEL_HELP +
                            " (or, with --method ctf, a YAML training config)")
    prune.add_argument("--model", dest="rebuild", metavar="REFERENCE",
                       help="with a folder saved from your own model: the file.py:factory or module:factory "
                            "that builds its dense model")
    _model_options(prune)
    prune.add_argument("--method", default="sosp-h",
                       choices=["sosp-h", "sosp-i", "taylor", "obd", "l1", "l2", "random", "ctf"],
                       help="criterion (default sosp-h; l1, l2 and random need no data) or ctf (learned masks)")
    _budget_options(prune)
    _selection_options(prune)
    prune.add_argument("--rate", type=_fraction, help="ctf: fraction of the prunable weights to remove")
    prune.add_argument("--cost", choices=["params", "macs"], default="params", help="ctf: what the rate counts")
    prune.add_argument("--epochs", type=_int_at_least(1), help="ctf: epochs with masks (default: the config's, or 10)")
    prune.add_argument("--finetune", type=_int_at_least(0), default=2, help="ctf: fine-tuning epochs after finalize")
    prune.add_argument("--config", help="YAML config naming the data for data-driven criteria")
    prune.add_argument("--num-samples", type=_int_at_least(1), default=512,
                       help="training samples the data-driven criteria score on (default 512)")
    prune.add_argument("--temperature", type=_positive_float, default=1.0, metavar="T",
                       help="taylor, obd, sosp-h, sosp-i: score on the cross-entropy of logits / T (default 1, "
                            "the plain loss; > 1 softens the saturated predictions of a well-trained network)")
    prune.add_argument("--out", help="output folder (default runs/<source>_<method>)")
    _run_options(prune)
    prune.set_defaults(func=cmd_prune)

    bottleneck = sub.add_parser("bottleneck", help="expand-pruning: find bottlenecks with SOSP, widen, re-prune, compare")
    bottleneck.add_argument("config", help="YAML with arch, data, seeds, epochs, finetune, cutoff, ...")
    bottleneck.set_defaults(func=cmd_bottleneck)

    data = sub.add_parser("data", help="data utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synth = data_sub.add_parser("synth", help="write a synthetic SBU- or FPHA-format tree (labelled synthetic)")
    synth.add_argument("--format", choices=["sbu", "fpha"], required=True, help="on-disk format to write")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    synth.add_argument("--difficulty", type=_non_negative_float,
                       help="noise / overlap level (default: tuned per format)")
    synth.add_argument("--overwrite", action="store_true",
                       help="replace an earlier (or interrupted) synthetic tree in --out; never real data")
    synth.set_defaults(func=cmd_data_synth)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line naming their kind, without the source line of the library."""
    print(f"prunekit: {category.__name__}: {message}", file=file or sys.stderr)


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version, usage errors (already printed, one line)
        return stop.code if isinstance(stop.code, int) else 2
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.func(args)
        except (ValueError, OSError, RuntimeError) as error:  # incl. FileExistsError, FolderLockedError
            print(f"prunekit {args.command}: error: {_one_line(error)}", file=sys.stderr)
            return 2
        except Exception as error:  # a bug, not a user error: still one line; the traceback on request
            if os.environ.get("PRUNEKIT_TRACEBACK"):
                raise
            print(f"prunekit {args.command}: internal error: {type(error).__name__}: {_one_line(error)} "
                  "(set PRUNEKIT_TRACEBACK=1 to see the traceback)", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
