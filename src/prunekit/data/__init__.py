"""Data: skeleton graphs, SBU / FPHA readers with their protocols, the synthetic generator,
transforms to model tensors, and image readers (IDX, CIFAR-10 pickle batches, digits).

Example:
    >>> import tempfile
    >>> from prunekit.data import write_sbu, load_sbu, default_transform, to_tensors
    >>> root = tempfile.mkdtemp()
    >>> _ = write_sbu(root, seed=0, sequences_per_set_action=1)
    >>> train, test = load_sbu(root, fold=1)
    >>> X, y = to_tensors(test, default_transform("sbu", length=32))
    >>> tuple(X.shape), test.synthetic
    ((32, 3, 32, 30), True)
"""
from .fpha import FPHA_CLASSES, FPHA_KNOWN_BAD, load_fpha, read_fpha_file, read_fpha_split
from .graphs import FPHA_JOINTS, SBU_JOINTS, Graph, get_graph, graph_names
from .images import load_cifar10, load_digits, load_idx, read_idx
from .records import SYNTHETIC_MARKER, DataFormatError, SkeletonDataset, SkeletonSequence
from .sbu import SBU_CLASSES, SBU_FOLDS, SBU_SETS, load_sbu, read_sbu_file
from .synth import DEFAULT_DIFFICULTY, FPHA_DEFAULT_DIFFICULTY, default_difficulty, synth_main, write_fpha, write_sbu
from .transforms import (
    CenterOn, Compose, MergePersons, NormalizeScale, Resample, SBUToMillimetres, ToTensor, default_transform,
    to_tensors,
)

__all__ = [
    "Graph", "get_graph", "graph_names", "SBU_JOINTS", "FPHA_JOINTS",
    "DataFormatError", "SkeletonSequence", "SkeletonDataset", "SYNTHETIC_MARKER",
    "load_sbu", "read_sbu_file", "SBU_CLASSES", "SBU_SETS", "SBU_FOLDS",
    "load_fpha", "read_fpha_file", "read_fpha_split", "FPHA_CLASSES", "FPHA_KNOWN_BAD",
    "write_sbu", "write_fpha", "synth_main", "DEFAULT_DIFFICULTY", "FPHA_DEFAULT_DIFFICULTY",
    "default_difficulty",
    "Compose", "CenterOn", "NormalizeScale", "Resample", "MergePersons", "SBUToMillimetres", "ToTensor",
    "to_tensors", "default_transform",
    "load_idx", "read_idx", "load_cifar10", "load_digits",
]
