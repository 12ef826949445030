"""The pipeline around the core: configs, data specs, training, one-shot rows, commands, reports, the CLI.

data spec (:mod:`~prunekit.pipeline.dataspec`) → model (:mod:`prunekit.models`) → train
(:mod:`~prunekit.pipeline.train`, :mod:`~prunekit.pipeline.checkpoint`) → criterion
(:mod:`prunekit.criteria`, :mod:`prunekit.ctf`) → plan → materialize → measure (:mod:`prunekit.core`)
→ report (:mod:`~prunekit.pipeline.report`). :mod:`~prunekit.pipeline.oneshot` runs one
score–select–materialize–fine-tune row, :mod:`~prunekit.pipeline.commands` the bodies of
``prunekit train`` / ``prunekit prune``, :mod:`~prunekit.pipeline.demo` the demo,
:mod:`~prunekit.pipeline.bottleneck` SOSP's expand-pruning experiment,
:mod:`~prunekit.pipeline.recalibrate` BatchNorm statistics re-estimated after pruning,
:mod:`~prunekit.pipeline.cli` the command line.

Example:
    >>> from prunekit.pipeline import fit, evaluate, load_data
    >>> (X, y), test, info = load_data({"format": "digits"})
    >>> len(X) > 1000
    True
"""
from .dataspec import load_data
from .recalibrate import recalibrate_batchnorm
from .train import evaluate, fit

__all__ = ["load_data", "fit", "evaluate", "recalibrate_batchnorm"]
