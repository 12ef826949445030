"""Small composable transforms from skeleton arrays ``[T, M, V, 3]`` to model input ``[C, T, V]``.

Every transform is a callable on a NumPy array that returns a new array (inputs are
never modified); :class:`ToTensor` ends a pipeline with a float32 ``torch.Tensor``.
:func:`default_transform` builds the pipeline prunekit uses for SBU and FPHA, and
:func:`to_tensors` stacks a whole :class:`~prunekit.data.records.SkeletonDataset`.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 2, 15, 3)).astype(np.float32)
    >>> t = Compose([CenterOn(2), Resample(32), MergePersons(), ToTensor(velocity=True)])
    >>> t(x).shape
    torch.Size([6, 32, 30])
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .records import SkeletonDataset

__all__ = [
    "Compose", "CenterOn", "NormalizeScale", "Resample", "MergePersons", "ToTensor", "SBUToMillimetres",
    "to_tensors", "default_transform",
]


def _check(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name}: expected an array [T, M, V, 3], got shape {x.shape}")
    if x.shape[0] < 1:
        raise ValueError(f"{name}: sequence has no frames")
    return x


class Compose:
    """Apply transforms in order.

    Example:
        >>> import numpy as np
        >>> Compose([Resample(8), MergePersons()])(np.zeros((3, 2, 15, 3))).shape
        (8, 1, 30, 3)
    """

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class CenterOn:
    """Translate so that one joint of one person in one frame sits at the origin.

    The same offset is subtracted from every person and frame, so relative positions
    (between SBU's two persons, and over time) are kept. ``per_frame=True`` instead
    subtracts each frame's own joint position (removes global translation).
    Use joint 2 (torso) for SBU, joint 0 (wrist) for FPHA.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(5, 2, 15, 3))
        >>> y = CenterOn(2)(x)
        >>> np.allclose(y[0, 0, 2], 0), np.allclose(y[:, 1] - y[:, 0], x[:, 1] - x[:, 0])
        (True, True)
    """

    def __init__(self, joint: int, person: int = 0, frame: int = 0, per_frame: bool = False):
        self.joint, self.person, self.frame, self.per_frame = joint, person, frame, per_frame

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = _check(x, "CenterOn")
        if self.per_frame:
            return x - x[:, self.person: self.person + 1, self.joint: self.joint + 1, :]
        return x - x[self.frame, self.person, self.joint]

    def __repr__(self) -> str:
        return (f"CenterOn(joint={self.joint}, person={self.person}, frame={self.frame}, "
                f"per_frame={self.per_frame})")


class NormalizeScale:
    """Divide coordinates by a reference length.

    With ``bone=(i, j)`` the reference is the mean length of that bone of ``person``
    over all frames (e.g. SBU neck–torso ``(1, 2)``, FPHA wrist–middle MCP ``(0, 3)``);
    with ``bone=None`` it is the global standard deviation of all coordinates. A
    reference below ``eps`` leaves the array unchanged.

    Example:
        >>> import numpy as np
        >>> x = np.zeros((2, 1, 21, 3)); x[:, 0, 3, 1] = 80.0
        >>> float(np.linalg.norm(NormalizeScale((0, 3))(x)[0, 0, 3]))
        1.0
    """

    def __init__(self, bone: tuple[int, int] | None = None, person: int = 0, eps: float = 1e-6):
        self.bone, self.person, self.eps = bone, person, eps

    def reference(self, x: np.ndarray) -> float:
        """The length the array is divided by."""
        x = _check(x, "NormalizeScale")
        if self.bone is None:
            return float(np.std(x))
        i, j = self.bone
        return float(np.linalg.norm(x[:, self.person, i] - x[:, self.person, j], axis=-1).mean())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        ref = self.reference(x)
        return x / ref if ref > self.eps else np.array(x, copy=True)

    def __repr__(self) -> str:
        return f"NormalizeScale(bone={self.bone}, person={self.person})"


class Resample:
    """Linear temporal interpolation to exactly ``length`` frames; first and last frames are kept.

    Example:
        >>> import numpy as np
        >>> x = np.arange(3, dtype=float).reshape(3, 1, 1, 1).repeat(3, axis=-1)
        >>> Resample(5)(x)[:, 0, 0, 0].tolist()
        [0.0, 0.5, 1.0, 1.5, 2.0]
    """

    def __init__(self, length: int):
        if length < 1:
            raise ValueError(f"Resample: length must be >= 1, got {length}")
        self.length = int(length)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = _check(x, "Resample")
        t = x.shape[0]
        if t == 1:
            return np.repeat(x, self.length, axis=0)
        pos = np.linspace(0.0, t - 1, self.length) if self.length > 1 else np.zeros(1)
        lo = np.clip(np.floor(pos).astype(np.int64), 0, t - 2)
        frac = (pos - lo).reshape(-1, 1, 1, 1)
        out = x[lo] * (1.0 - frac) + x[lo + 1] * frac
        return out.astype(x.dtype, copy=False)

    def __repr__(self) -> str:
        return f"Resample({self.length})"


class MergePersons:
    """Concatenate persons along the joint axis: ``[T, M, V, 3] -> [T, 1, M·V, 3]``.

    For SBU this gives the 30-joint order of graph ``"sbu"``: person A's 15 joints then
    person B's.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(4, 2, 15, 3))
        >>> y = MergePersons()(x)
        >>> y.shape, np.array_equal(y[:, 0, 15:], x[:, 1])
        ((4, 1, 30, 3), True)
    """

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = _check(x, "MergePersons")
        t, m, v, c = x.shape
        return x.reshape(t, 1, m * v, c).copy()

    def __repr__(self) -> str:
        return "MergePersons()"


class SBUToMillimetres:
    """Convert SBU's normalised ``(x, y, z)`` to millimetres (``docs/data.md``).

    ``X = 1280 − 2560·x``, ``Y = 960 − 1920·y``, ``Z = 10000·z / 7.8125``: SBU's raw
    units differ per axis, so convert before any length-based normalisation.

    Example:
        >>> import numpy as np
        >>> SBUToMillimetres()(np.array([[[[0.5, 0.5, 7.8125]]]])).tolist()
        [[[[0.0, 0.0, 10000.0]]]]
    """

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = _check(x, "SBUToMillimetres")
        out = np.empty_like(x)
        out[..., 0] = 1280.0 - 2560.0 * x[..., 0]
        out[..., 1] = 960.0 - 1920.0 * x[..., 1]
        out[..., 2] = 10000.0 * x[..., 2] / 7.8125
        return out

    def __repr__(self) -> str:
        return "SBUToMillimetres()"


class ToTensor:
    """``[T, 1, V, 3]`` array → float32 tensor ``[C, T, V]``, C = 3 (xyz) or 6 (xyz + velocity).

    Velocity is the frame difference ``x[t] − x[t−1]`` with zero at ``t = 0``. Several
    persons must be merged first (:class:`MergePersons`).

    Example:
        >>> import numpy as np
        >>> x = np.arange(3, dtype=float).reshape(3, 1, 1, 1).repeat(3, axis=-1)
        >>> ToTensor(velocity=True)(x)[:, :, 0].tolist()[3]
        [0.0, 1.0, 1.0]
    """

    def __init__(self, velocity: bool = False):
        self.velocity = velocity

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        x = _check(x, "ToTensor")
        if x.shape[1] != 1:
            raise ValueError(f"ToTensor: expected one person (apply MergePersons first), got {x.shape[1]}")
        pos = np.asarray(x[:, 0], dtype=np.float32)  # [T, V, 3]
        feats = [pos]
        if self.velocity:
            vel = np.zeros_like(pos)
            vel[1:] = pos[1:] - pos[:-1]
            feats.append(vel)
        out = np.concatenate(feats, axis=-1)  # [T, V, C]
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return f"ToTensor(velocity={self.velocity})"


def default_transform(name: str, length: int = 32, velocity: bool = False) -> Compose:
    """The standard pipeline for ``"sbu"`` or ``"fpha"``, ending in a tensor ``[C, length, V]``.

    SBU: millimetres, centre on person A's torso in frame 0, divide by A's mean
    neck–torso length, resample, merge persons (V = 30). FPHA: centre on the wrist in
    frame 0, divide by the mean wrist–middle-MCP length, resample (V = 21).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).uniform(size=(50, 2, 15, 3))
        >>> default_transform("sbu", length=16, velocity=True)(x).shape
        torch.Size([6, 16, 30])
    """
    if name == "sbu":
        steps = [SBUToMillimetres(), CenterOn(2), NormalizeScale((1, 2)), Resample(length), MergePersons()]
    elif name == "fpha":
        steps = [CenterOn(0), NormalizeScale((0, 3)), Resample(length)]
    else:
        raise ValueError(f"default_transform: unknown data set {name!r} (expected 'sbu' or 'fpha')")
    return Compose(steps + [ToTensor(velocity=velocity)])


def to_tensors(dataset: SkeletonDataset, transform: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``transform`` to every sequence and stack: ``X [N, C, T, V]`` float32, ``y [N]`` int64.

    The transform must give every sequence the same shape (use :class:`Resample`).

    Example:
        >>> import numpy as np
        >>> from prunekit.data.records import SkeletonDataset, SkeletonSequence
        >>> seqs = [SkeletonSequence(np.ones((t, 1, 21, 3)), t % 2, "Subject_1", str(t)) for t in (20, 31)]
        >>> X, y = to_tensors(SkeletonDataset(seqs, ["a", "b"], "fpha"), default_transform("fpha", 16))
        >>> tuple(X.shape), y.tolist()
        ((2, 3, 16, 21), [0, 1])
    """
    if len(dataset) == 0:
        raise ValueError("to_tensors: the dataset is empty")
    items = []
    for seq in dataset.sequences:
        out = transform(seq.data)
        out = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
        if items and out.shape != items[0].shape:
            raise ValueError(f"to_tensors: {seq.path} gives shape {tuple(out.shape)} but the first sequence gives "
                             f"{tuple(items[0].shape)}; add Resample(length) to the transform")
        items.append(out.float())
    return torch.stack(items), torch.as_tensor(dataset.labels(), dtype=torch.long)
