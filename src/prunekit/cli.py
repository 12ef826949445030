"""The ``prunekit`` command line: ``demo | train | prune | bottleneck | inspect | data synth``.

Example:
    $ prunekit inspect resnet20 --input 1,3,32,32
    $ prunekit demo --quick
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,3,32,32, got {text!r}") from None


def _kwargs(items) -> dict:
    result = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not _:
            raise argparse.ArgumentTypeError(f"--arg expects key=value, got {item!r}")
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    return result


def cmd_inspect(args) -> int:
    import torch

    import prunekit

    model = prunekit.models.create(args.model, **_kwargs(args.arg)).eval()
    x = torch.randn(args.input) if args.input else prunekit.models.example_inputs(model, batch=1)
    structures = prunekit.find_structures(model, x)
    print(structures)
    print(f"{'group':>5}  {'kind':8} {'size':>5}  root")
    for group in structures.groups:
        kind = structures[group.members[0]].kind
        print(f"{group.id:>5}  {kind:8} {group.size:>5}  {group.root}")
    return 0


def cmd_demo(args) -> int:
    from .experiment import run_demo

    run_demo(out_dir=args.out, quick=args.quick, seed=args.seed)
    return 0


def cmd_train(args) -> int:
    from .experiment import train_from_config

    train_from_config(args.config, resume=args.resume)
    return 0


def cmd_data_synth(args) -> int:
    from .data.synth import synth_main

    print(synth_main(args.format, args.out, seed=args.seed, difficulty=args.difficulty))
    return 0


def cmd_prune(args) -> int:
    from .experiment import prune_checkpoint

    prune_checkpoint(args.checkpoint, method=args.method, out=args.out,
                     budget={k: v for k, v in (("structures", args.budget_structures), ("params", args.budget_params),
                                               ("macs", args.budget_macs)) if v is not None},
                     data_config=args.config, num_samples=args.num_samples, rate=args.rate, epochs=args.epochs,
                     finetune_epochs=args.finetune, cost=args.cost)
    return 0


def cmd_bottleneck(args) -> int:
    from .bottleneck import expand_pruning, load_bottleneck_config

    config = load_bottleneck_config(args.config)
    options = {k: v for k, v in config.items() if k not in ("arch", "data")}
    options.setdefault("out_dir", f"runs/{Path(args.config).stem}")
    result = expand_pruning(config["arch"], config["data"], **options)
    print(json.dumps(result["summary"], indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description="Structured, second-order and learned pruning.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job: synthetic skeleton data → train → prune with every method → report")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--quick", action="store_true", help="a one-minute version")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    inspect = sub.add_parser("inspect", help="list the prunable structures of a registered model")
    inspect.add_argument("model")
    inspect.add_argument("--input", type=_shape, help="example input shape, e.g. 1,3,32,32")
    inspect.add_argument("--arg", action="append", help="model keyword argument key=value (JSON values)")
    inspect.set_defaults(func=cmd_inspect)

    train = sub.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    train.set_defaults(func=cmd_train)

    prune = sub.add_parser("prune", help="prune a saved model with a criterion and a budget, or learn CTF masks",
                           description="prunekit prune runs/m/model --method sosp-h --budget-macs 0.5 --config C.yaml;"
                                       " prunekit prune --method ctf --rate 0.95 C.yaml")
    prune.add_argument("checkpoint", help="a folder written by prunekit.save / prunekit train "
                                          "(or, with --method ctf, a YAML training config)")
    prune.add_argument("--method", default="sosp-h",
                       choices=["sosp-h", "sosp-i", "taylor", "obd", "l1", "l2", "random", "ctf"])
    prune.add_argument("--budget-macs", type=float)
    prune.add_argument("--budget-params", type=float)
    prune.add_argument("--budget-structures", type=float)
    prune.add_argument("--rate", type=float, help="ctf: fraction of the prunable weights to remove")
    prune.add_argument("--cost", choices=["params", "macs"], default="params", help="ctf: what the rate counts")
    prune.add_argument("--epochs", type=int, help="ctf: epochs with masks (default: the config's, or 10)")
    prune.add_argument("--finetune", type=int, default=2, help="ctf: fine-tuning epochs after finalize")
    prune.add_argument("--config", help="YAML config naming the data for data-driven criteria")
    prune.add_argument("--num-samples", type=int, default=512)
    prune.add_argument("--out", help="output folder (default runs/<source>_<method>)")
    prune.set_defaults(func=cmd_prune)

    bottleneck = sub.add_parser("bottleneck", help="expand-pruning: find bottlenecks with SOSP, widen, re-prune, compare")
    bottleneck.add_argument("config", help="YAML with arch, data, seeds, epochs, finetune, cutoff, ...")
    bottleneck.set_defaults(func=cmd_bottleneck)

    data = sub.add_parser("data", help="data utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="write a synthetic SBU- or FPHA-format tree (labelled synthetic)")
    synth.add_argument("--format", choices=["sbu", "fpha"], required=True)
    synth.add_argument("--out", required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--difficulty", type=float, help="noise / overlap level (default: tuned per format)")
    synth.set_defaults(func=cmd_data_synth)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"prunekit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
