"""Synthetic skeleton actions written in the real SBU and FPHA on-disk formats.

The generator exercises the real readers end to end: :func:`write_sbu` writes the
21-set × 8-action tree of ``skeleton_pos.txt`` files and :func:`write_fpha` writes
``Hand_pose_annotation_v1/Subject_k/<action>/<seq>/skeleton.txt`` plus
``data_split_action_recognition.txt``. Every tree gets a ``SYNTHETIC_DATA.txt`` marker
(its first lines are a ``#`` header saying the data are synthetic); the loaders see it
and set ``.synthetic = True``.

Motions are procedural and class-dependent, computed by forward kinematics on the
real skeletons (bones of ``docs/data.md``):

* SBU: two persons facing each other; per-class joint-angle and translation curves
  (walk cycles for approaching / departing, leg swing for kicking, arm thrusts for
  punching / pushing, both persons' arms for hugging / shaking hands / exchanging,
  the receiver's recoil), converted to SBU's normalised ``x, y, z`` units.
* FPHA: a right hand; each class is a verb template (twist, tilt, stir, tap, ...)
  applied to an object grip (per-finger curl, palm orientation), so classes sharing
  a verb or an object overlap as in the real data.

Variation: per participant/subject body or hand size, proportions, speed, amplitude
and posture style; per sequence timing, amplitude, length, view jitter and Gaussian
sensor noise. ``difficulty`` (sensible range 0–1.5) scales the noise, the timing /
amplitude / view jitter and the class overlap (each sequence's motion is blended with
a random other class's by a weight drawn from ``U(0, 0.6·difficulty)``). Its default
is tuned per format (:func:`default_difficulty`: 0.65 for SBU, 0.3 for FPHA); what
dense GCNs reach there, with the command, is in ``docs/data.md``. Raise it for
stronger models.
Output is a pure function of the arguments (seeded NumPy generators, no global state).

Example:
    >>> import tempfile
    >>> from prunekit.data.sbu import load_sbu
    >>> root = tempfile.mkdtemp()
    >>> written = write_sbu(root, seed=0, sequences_per_set_action=1)
    >>> len(written), load_sbu(root, fold=None).synthetic
    (168, True)
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .fpha import FPHA_CLASSES, FPHA_FILE, FPHA_SPLIT_FILE
from ..core._atomic import fsync_dir, write_temp
from .records import SYNTHETIC_MARKER, SkeletonSequence, synthetic_status
from .sbu import SBU_CLASSES, SBU_FILE, SBU_SETS

__all__ = ["write_sbu", "write_fpha", "synth_main", "DEFAULT_DIFFICULTY", "FPHA_DEFAULT_DIFFICULTY",
           "default_difficulty"]

DEFAULT_DIFFICULTY = 0.65  # SBU: both GCNs reach 0.91 / 0.94 (5-fold means, benchmarks/RESULTS.md §3)
FPHA_DEFAULT_DIFFICULTY = 0.3  # FPHA (6 training sequences per class): attention GCN 0.87; at 0.65 only 0.57


def default_difficulty(fmt: str) -> float:
    """The difficulty tuned per format so a dense GCN trained from scratch lands near 85–95 %.

    Example:
        >>> default_difficulty("sbu"), default_difficulty("fpha")
        (0.65, 0.3)
    """
    return FPHA_DEFAULT_DIFFICULTY if fmt == "fpha" else DEFAULT_DIFFICULTY
_SBU_DECIMALS = 6
_FPHA_DECIMALS = 4


# ----------------------------------------------------------------------------- helpers
def _bump(p, c, w):
    return np.exp(-0.5 * ((p - c) / w) ** 2)


def _step(p, c, w):
    return 1.0 / (1.0 + np.exp(-(p - c) / max(w, 1e-3)))


def _plateau(p, a, b, w):
    return _step(p, a, w) - _step(p, b, w)


def _smoothstep(p):
    return p * p * (3.0 - 2.0 * p)


def _count(spec, rng) -> int:
    if isinstance(spec, (tuple, list)):
        lo, hi = int(spec[0]), int(spec[1])
        if lo < 0 or hi < lo:
            raise ValueError(f"bad sequence-count range {spec!r}")
        return int(rng.integers(lo, hi + 1))
    if int(spec) < 0:
        raise ValueError(f"sequence count must be >= 0, got {spec!r}")
    return int(spec)


def _prepare_out(out_dir: Path, overwrite: bool, generated: list[str], fmt: str) -> None:
    """Refuse to mix synthetic files into a folder holding anything else; mark the tree incomplete first.

    The marker (``status: incomplete``) is written atomically *before* anything is
    deleted or written, so a generation killed at any point leaves a tree the readers
    refuse as incomplete, never one they read as real data.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        status = synthetic_status(out_dir)
        if status is None:
            raise ValueError(f"{out_dir} is not empty and holds no {SYNTHETIC_MARKER}: refusing to overwrite "
                             "what may be real data")
        if not overwrite:
            what = ("an interrupted (incomplete) synthetic tree" if status == "incomplete"
                    else "an earlier synthetic tree")
            raise ValueError(f"{out_dir} is not empty: it holds {what}; pass overwrite=True (prunekit data synth "
                             "--overwrite) to replace it")
        _write_marker(out_dir, fmt, complete=False)
        for name in generated:
            target = out_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_marker(out_dir, fmt, complete=False)


def _write_marker(out_dir: Path, fmt: str, seed: int | None = None, difficulty: float | None = None,
                  count: int | None = None, extra: str = "", *, complete: bool) -> None:
    """Write the marker atomically (temporary file, fsync, rename, fsync of the folder)."""
    text = (
        f"# SYNTHETIC DATA -- generated by prunekit.data.synth ({fmt} format).\n"
        f"# This is NOT the real {'SBU Kinect Interaction' if fmt == 'sbu' else 'FPHA'} data set: the motions\n"
        "# are procedural, class-dependent skeleton animations written in the real on-disk\n"
        "# format so the readers can be exercised end to end. Never report results on it\n"
        "# as results on the real data set.\n"
    )
    if complete:
        text += f"format: {fmt}\nseed: {seed}\ndifficulty: {difficulty}\nsequences: {count}\n{extra}status: complete\n"
    else:
        text += (f"format: {fmt}\nstatus: incomplete\n# generation in progress or interrupted: the readers refuse "
                 "this tree; regenerate it with `prunekit data synth --overwrite`\n")
    final = out_dir / SYNTHETIC_MARKER
    tmp = write_temp(final, text.encode("utf-8"))
    try:
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out_dir)


def _format_rows(frames: np.ndarray, values: np.ndarray, sep: str, decimals: int, frame_fmt: str) -> str:
    row_fmt = frame_fmt + sep + sep.join([f"%.{decimals}f"] * values.shape[1])
    return "\n".join(row_fmt % ((int(f),) + tuple(v)) for f, v in zip(frames, values)) + "\n"


# ----------------------------------------------------------------------------- SBU
# Per-person state channels (arrays over frames), radians / millimetres.
_SBU_CHANNELS = ("x", "bob", "lean", "sh_l", "el_l", "ab_l", "sh_r", "el_r", "ab_r", "hip_l", "kn_l", "hip_r", "kn_r")


def _sbu_subject(seed: int, participant: int) -> dict:
    r = np.random.default_rng([seed, 101, participant])
    return dict(
        height=r.uniform(0.9, 1.08), arm=r.uniform(0.93, 1.07), leg=r.uniform(0.95, 1.05),
        width=r.uniform(0.9, 1.1), speed=r.uniform(0.8, 1.25), amp=r.uniform(0.8, 1.2),
        idle_sh=r.uniform(0.05, 0.3), idle_el=r.uniform(0.1, 0.5), idle_ab=r.uniform(0.05, 0.25),
        lean=r.uniform(-0.06, 0.1), sway=r.uniform(0.01, 0.04), sway_f=r.uniform(0.5, 1.5),
        step=r.uniform(1.4, 2.4),
    )


def _sbu_idle(p, subj, rng) -> dict:
    phase = rng.uniform(0, 2 * np.pi)
    sway = subj["sway"] * np.sin(2 * np.pi * subj["sway_f"] * p + phase)
    z = np.zeros_like(p)
    return dict(
        x=z.copy(), bob=z.copy(), lean=subj["lean"] + sway, sh_l=subj["idle_sh"] + sway, el_l=subj["idle_el"] + z,
        ab_l=subj["idle_ab"] + z, sh_r=subj["idle_sh"] - sway, el_r=subj["idle_el"] + z, ab_r=subj["idle_ab"] + z,
        hip_l=z.copy(), kn_l=z + 0.05, hip_r=z.copy(), kn_r=z + 0.05,
    )


def _walk(state, p, subj, amount, rng, distance):
    """Add a walk cycle and a forward displacement of ``distance`` mm (weighted by ``amount``)."""
    cycles = subj["step"] * rng.uniform(0.85, 1.15)
    phase = rng.uniform(0, 2 * np.pi)
    s = np.sin(2 * np.pi * cycles * p + phase) * amount
    state["hip_l"] = state["hip_l"] + 0.35 * s
    state["hip_r"] = state["hip_r"] - 0.35 * s
    state["kn_l"] = state["kn_l"] + 0.45 * np.maximum(0, -s)
    state["kn_r"] = state["kn_r"] + 0.45 * np.maximum(0, s)
    state["sh_l"] = state["sh_l"] - 0.25 * s
    state["sh_r"] = state["sh_r"] + 0.25 * s
    state["bob"] = state["bob"] + 15.0 * np.abs(s)
    state["x"] = state["x"] + distance * _smoothstep(p)


def _sbu_motion(label: int, p, actor: dict, other: dict, rng, jitter: float):
    """State curves of (actor, receiver), start distance and facing of each, for class ``label``."""
    A, R = _sbu_idle(p, actor, rng), _sbu_idle(p, other, rng)
    amp = actor["amp"] * rng.uniform(1 - 0.3 * jitter, 1 + 0.3 * jitter)
    c = np.clip(0.5 + rng.uniform(-0.12, 0.12) * (1 + jitter), 0.25, 0.75)
    w = rng.uniform(0.09, 0.16) * (1 + 0.3 * jitter)
    face_a = face_r = 1.0
    if label == 0:  # approaching
        dist = rng.uniform(1500, 1850)
        _walk(A, p, actor, _plateau(p, 0.05, 0.95, 0.04), rng, rng.uniform(550, 800))
    elif label == 1:  # departing: actor turns away and walks off
        dist = rng.uniform(700, 900)
        face_a = -1.0
        _walk(A, p, actor, _plateau(p, 0.05, 0.95, 0.04), rng, rng.uniform(550, 800))
    elif label == 2:  # kicking (right leg)
        dist = rng.uniform(1000, 1300)
        A["hip_r"] = A["hip_r"] + amp * 1.25 * _bump(p, c, w)
        A["kn_r"] = A["kn_r"] + 1.1 * _bump(p, c - 0.8 * w, 0.7 * w)
        A["lean"] = A["lean"] - 0.2 * _bump(p, c, w)
        A["ab_l"] = A["ab_l"] + 0.35 * _bump(p, c, 1.5 * w)
        A["ab_r"] = A["ab_r"] + 0.35 * _bump(p, c, 1.5 * w)
        R["lean"] = R["lean"] - 0.15 * _bump(p, c + w, w)
        R["x"] = R["x"] - 120.0 * _step(p, c + w, 0.04)
    elif label == 3:  # punching (right arm) from a guard
        dist = rng.uniform(800, 1000)
        guard = _plateau(p, 0.1, 0.9, 0.05)
        A["sh_l"] = A["sh_l"] + 0.7 * guard
        A["el_l"] = A["el_l"] + 1.3 * guard
        A["sh_r"] = A["sh_r"] + 0.5 * guard + amp * 1.0 * _bump(p, c, 0.7 * w)
        A["el_r"] = A["el_r"] + 1.3 * guard * (1 - _bump(p, c, 0.7 * w))
        A["lean"] = A["lean"] + 0.15 * _bump(p, c, w)
        A["x"] = A["x"] + 100.0 * _bump(p, c, w)
        R["lean"] = R["lean"] - 0.25 * _bump(p, c + 0.6 * w, w)
        R["x"] = R["x"] - 80.0 * _step(p, c + 0.6 * w, 0.04)
    elif label == 4:  # pushing (both arms), receiver pushed back
        dist = rng.uniform(700, 900)
        push = _plateau(p, c - w, c + w, 0.03)
        for side in ("l", "r"):
            A[f"sh_{side}"] = A[f"sh_{side}"] + amp * 1.25 * push
            A[f"el_{side}"] = A[f"el_{side}"] + 0.3 * push
        A["lean"] = A["lean"] + 0.2 * push
        A["x"] = A["x"] + 250.0 * _step(p, c, 0.05)
        R["x"] = R["x"] - amp * 400.0 * _step(p, c + 0.3 * w, 0.05)
        R["lean"] = R["lean"] - 0.2 * _bump(p, c + 0.3 * w, w)
        R["ab_l"] = R["ab_l"] + 0.4 * _bump(p, c + 0.5 * w, w)
        R["ab_r"] = R["ab_r"] + 0.4 * _bump(p, c + 0.5 * w, w)
    elif label == 5:  # hugging: both close in and wrap arms
        dist = rng.uniform(900, 1200)
        close = _step(p, c - 0.15, 0.05)
        hug = _plateau(p, c - 0.12, c + 0.3, 0.04)
        for S, a in ((A, amp), (R, other["amp"])):
            S["x"] = S["x"] + 0.5 * (dist - 450.0) * close
            for side in ("l", "r"):
                S[f"sh_{side}"] = S[f"sh_{side}"] + a * 1.15 * hug
                S[f"ab_{side}"] = S[f"ab_{side}"] + 0.55 * hug
                S[f"el_{side}"] = S[f"el_{side}"] + 1.1 * hug
            S["lean"] = S["lean"] + 0.12 * hug
    elif label == 6:  # shaking hands
        dist = rng.uniform(800, 1000)
        hold = _plateau(p, c - 0.22, c + 0.22, 0.04)
        shake = 0.12 * np.sin(2 * np.pi * rng.uniform(3, 5) * p) * hold
        for S, a in ((A, amp), (R, other["amp"])):
            S["x"] = S["x"] + 80.0 * _step(p, c - 0.25, 0.05)
            S["sh_r"] = S["sh_r"] + a * 0.85 * hold + shake
            S["el_r"] = S["el_r"] + 0.35 * hold
    else:  # 7 exchanging: actor hands over, receiver takes a little later
        dist = rng.uniform(800, 1050)
        side = "r" if rng.random() < 0.75 else "l"
        give = _bump(p, c - 0.07, w)
        take = _bump(p, c + 0.07, w)
        A[f"sh_{side}"] = A[f"sh_{side}"] + amp * 0.95 * give
        A[f"el_{side}"] = A[f"el_{side}"] + 0.45 * give
        R["sh_r"] = R["sh_r"] + other["amp"] * 0.95 * take
        R["el_r"] = R["el_r"] + 0.45 * take
        R["lean"] = R["lean"] + 0.08 * take
    return A, R, dist, face_a, face_r


def _sbu_fk(state: dict, subj: dict, root: np.ndarray, forward: float) -> np.ndarray:
    """Forward kinematics of one person: ``[T, 15, 3]`` millimetres (X right, Y up, Z depth)."""
    T = root.shape[0]
    h, arm, leg = subj["height"], subj["arm"] * subj["height"], subj["leg"] * subj["height"]
    F = np.array([forward, 0.0, 0.0])
    U = np.array([0.0, 1.0, 0.0])
    L = np.cross(U, F)  # the person's left side
    col = lambda a: np.asarray(a)[:, None]  # noqa: E731
    out = np.zeros((T, 15, 3))
    torso = root + col(state["bob"]) * U
    lean = col(state["lean"])
    spine = np.sin(lean) * F + np.cos(lean) * U
    neck = torso + 300.0 * h * spine
    head = neck + 200.0 * h * (np.sin(1.2 * lean) * F + np.cos(1.2 * lean) * U)
    out[:, 0], out[:, 1], out[:, 2] = head, neck, torso
    for side, sigma, (i_sh, i_el, i_ha) in (("l", 1.0, (3, 4, 5)), ("r", -1.0, (6, 7, 8))):
        shoulder = neck + 170.0 * h * subj["width"] * sigma * L - 20.0 * h * U
        sh, el, ab = col(state[f"sh_{side}"]), col(state[f"el_{side}"]), col(state[f"ab_{side}"])
        upper = np.cos(ab) * (np.sin(sh) * F - np.cos(sh) * U) + np.sin(ab) * sigma * L
        fore_angle = sh + el
        fore = np.cos(ab) * (np.sin(fore_angle) * F - np.cos(fore_angle) * U) + np.sin(ab) * sigma * L
        elbow = shoulder + 280.0 * arm * upper
        out[:, i_sh], out[:, i_el], out[:, i_ha] = shoulder, elbow, elbow + 260.0 * arm * fore
    for side, sigma, (i_hip, i_kn, i_ft) in (("l", 1.0, (9, 10, 11)), ("r", -1.0, (12, 13, 14))):
        hip_pos = torso - 200.0 * h * U + 100.0 * h * subj["width"] * sigma * L
        hip, kn = col(state[f"hip_{side}"]), col(state[f"kn_{side}"])
        knee = hip_pos + 420.0 * leg * (np.sin(hip) * F - np.cos(hip) * U)
        foot = knee + 420.0 * leg * (np.sin(hip - kn) * F - np.cos(hip - kn) * U)
        out[:, i_hip], out[:, i_kn], out[:, i_ft] = hip_pos, knee, foot
    return out


def _sbu_sequence(seed: int, set_index: int, label: int, seq_index: int, difficulty: float):
    """One SBU sequence in SBU units ``[T, 2, 15, 3]`` (before rounding)."""
    set_name = SBU_SETS[set_index]
    pa, pb = int(set_name[1:3]), int(set_name[4:6])
    subj = {0: _sbu_subject(seed, pa), 1: _sbu_subject(seed, pb)}
    scene = np.random.default_rng([seed, 202, set_index])
    rng = np.random.default_rng([seed, 303, set_index, label, seq_index])
    d = difficulty

    actor = 0 if rng.random() < 0.5 else 1  # 0: person A (left) acts
    speed = subj[actor]["speed"] * rng.uniform(1 - 0.15 * d, 1 + 0.15 * d)
    base = rng.uniform(34, 55) if label in (0, 1, 5) else rng.uniform(24, 44)
    T = int(np.clip(round(base / speed), 20, 60))
    p = np.linspace(0.0, 1.0, T)
    p = p ** np.exp(rng.normal(0.0, 0.2 * d))  # monotone time warp, endpoints kept

    def motion(lbl, gen):
        a_state, r_state, dist, fa, fr = _sbu_motion(lbl, p, subj[actor], subj[1 - actor], gen, d)
        return a_state, r_state, dist, fa, fr

    A, R, dist, face_a, face_r = motion(label, rng)
    overlap = 0.6 * d
    if overlap > 0:
        other = int(rng.choice([k for k in range(len(SBU_CLASSES)) if k != label]))
        weight = rng.uniform(0.0, overlap)
        A2, R2, dist2, _, _ = motion(other, np.random.default_rng([seed, 404, set_index, label, seq_index]))
        for key in _SBU_CHANNELS:
            A[key] = (1 - weight) * A[key] + weight * A2[key]
            R[key] = (1 - weight) * R[key] + weight * R2[key]
        dist = (1 - weight) * dist + weight * dist2

    # Place the persons: A on the left facing +X, B on the right facing -X ("toward" each other).
    centre = np.array([scene.uniform(-150, 150), scene.uniform(200, 300), scene.uniform(2400, 3100)])
    states = {actor: (A, face_a), 1 - actor: (R, face_r)}
    persons = []
    for person in (0, 1):
        state, face = states[person]
        toward = 1.0 if person == 0 else -1.0
        forward = toward * face
        root = np.tile(centre, (T, 1))
        root[:, 0] += (-0.5 if person == 0 else 0.5) * dist + forward * state["x"]
        root[:, 2] += rng.normal(0, 60)
        persons.append(_sbu_fk(state, subj[person], root, forward))
    mm = np.stack(persons, axis=1)  # [T, 2, 15, 3]

    # View jitter (rotation about the vertical axis through the scene centre), noise.
    yaw = rng.normal(0.0, 0.12 * d)
    c, s = np.cos(yaw), np.sin(yaw)
    rel = mm - centre
    mm = centre + np.stack([c * rel[..., 0] + s * rel[..., 2], rel[..., 1], -s * rel[..., 0] + c * rel[..., 2]], -1)
    sigma = 48.0 * d  # Kinect-like joint noise in mm (difficulty 0: exact forward kinematics)
    drift = np.cumsum(rng.normal(0.0, 3.0 * d, size=mm.shape), axis=0)
    mm = mm + rng.normal(0.0, sigma, size=mm.shape) + drift

    x = (1280.0 - mm[..., 0]) / 2560.0
    y = (960.0 - mm[..., 1]) / 1920.0
    z = mm[..., 2] * 7.8125 / 10000.0
    return np.stack([x, y, z], axis=-1)


def write_sbu(out_dir: str | os.PathLike, seed: int = 0, sequences_per_set_action=(1, 3), *,
              difficulty: float = DEFAULT_DIFFICULTY, overwrite: bool = False) -> list[SkeletonSequence]:
    """Write a synthetic SBU tree ``<set>/<action>/<seq>/skeleton_pos.txt`` under ``out_dir``.

    Args:
        out_dir: target folder (created; must be empty unless ``overwrite`` and it holds
            an earlier synthetic tree).
        seed: everything written is a pure function of the arguments.
        sequences_per_set_action: an int, or ``(lo, hi)`` inclusive drawn per
            (set, action); the default ``(1, 3)`` gives about 340 sequences (real: 282).
        difficulty: noise / jitter / class-overlap level (see the module docstring).

    Returns:
        The sequences written, in load order, with ``data`` rounded as in the file
        (6 decimals) so a reader must give them back to float32 precision.

    Example:
        >>> import tempfile
        >>> seqs = write_sbu(tempfile.mkdtemp(), seed=0, sequences_per_set_action=(1, 2))
        >>> seqs[0].group, seqs[0].label, seqs[0].data.shape[1:]
        ('s01s02', 0, (2, 15, 3))
    """
    out_dir = Path(out_dir)
    _prepare_out(out_dir, overwrite, list(SBU_SETS), "sbu")
    counts_rng = np.random.default_rng([seed, 505])
    written: list[SkeletonSequence] = []
    for set_index, set_name in enumerate(SBU_SETS):
        for label in range(len(SBU_CLASSES)):
            n = _count(sequences_per_set_action, counts_rng)
            for k in range(n):
                values = _sbu_sequence(seed, set_index, label, k, difficulty)
                values = np.round(values, _SBU_DECIMALS)
                folder = out_dir / set_name / f"{label + 1:02d}" / f"{k + 1:03d}"
                folder.mkdir(parents=True, exist_ok=True)
                start = int(np.random.default_rng([seed, 606, set_index, label, k]).integers(1, 40))
                frames = np.arange(start, start + values.shape[0])
                path = folder / SBU_FILE
                path.write_text(_format_rows(frames, values.reshape(values.shape[0], -1), ",", _SBU_DECIMALS, "%d"))
                written.append(SkeletonSequence(values.astype(np.float32), label, set_name, str(path)))
    _write_marker(out_dir, "sbu", seed, difficulty, len(written),
                  f"sequences_per_set_action: {sequences_per_set_action}\n", complete=True)
    return written


# ----------------------------------------------------------------------------- FPHA
# Hand model (local frame: fingers along +y, palm side -z, thumb on +x; mapped to a right hand below), mm.
_MCP = np.array([[28, 30, -12], [24, 88, 0], [5, 92, 0], [-13, 86, 0], [-29, 76, 0]], dtype=float)
_SEGMENTS = np.array([[32, 28, 24], [42, 24, 20], [46, 28, 22], [43, 27, 21], [33, 20, 18]], dtype=float)
_SPREAD = np.array([0.0, 0.12, 0.0, -0.1, -0.22])
_THUMB_DIR = np.array([0.75, 0.55, -0.35]) / np.linalg.norm([0.75, 0.55, -0.35])
_THUMB_BEND = np.array([-0.6, 0.2, -0.75])
_THUMB_BEND = _THUMB_BEND - _THUMB_BEND.dot(_THUMB_DIR) * _THUMB_DIR
_THUMB_BEND /= np.linalg.norm(_THUMB_BEND)

# Object grips: per-finger curl (thumb..pinky, rad), spread, palm orientation (roll, pitch, yaw).
_OBJECTS = {
    "juice_bottle": ([0.7, 0.9, 0.95, 1.0, 1.05], 0.0, (1.2, 0.2, 0.0)),
    "peanut_butter": ([0.6, 0.6, 0.65, 0.7, 0.75], 0.3, (0.3, 0.9, 0.0)),
    "fork": ([0.5, 0.4, 1.1, 1.3, 1.3], 0.0, (0.8, 0.4, 0.2)),
    "spoon": ([0.5, 0.5, 1.0, 1.2, 1.3], 0.0, (0.9, 0.3, 0.1)),
    "milk": ([0.6, 0.8, 0.85, 0.9, 0.95], 0.1, (1.0, 0.3, 0.2)),
    "mug": ([0.7, 1.2, 1.3, 1.3, 1.2], 0.0, (1.4, 0.1, 0.0)),
    "tea_bag": ([0.7, 0.7, 1.2, 1.3, 1.3], 0.0, (0.5, 0.5, 0.0)),
    "salt": ([0.7, 0.85, 0.9, 0.95, 1.0], 0.0, (1.2, 0.1, 0.2)),
    "soap": ([0.5, 0.7, 0.75, 0.8, 0.85], 0.1, (1.1, 0.2, -0.2)),
    "sponge": ([0.4, 0.5, 0.5, 0.55, 0.6], 0.2, (0.1, 0.8, 0.0)),
    "soda_can": ([0.7, 0.9, 0.95, 1.0, 1.05], 0.0, (1.2, 0.2, 0.3)),
    "flash": ([0.9, 1.0, 1.0, 1.0, 1.0], 0.0, (1.2, 0.0, 0.3)),
    "pen": ([0.6, 0.6, 0.9, 1.3, 1.4], 0.0, (0.5, 0.7, 0.3)),
    "paper": ([0.4, 0.3, 0.4, 0.6, 0.8], 0.15, (0.3, 0.5, 0.0)),
    "letter": ([0.3, 0.2, 0.3, 0.4, 0.5], 0.15, (0.2, 0.6, 0.0)),
    "book": ([0.3, 0.1, 0.2, 0.3, 0.4], 0.3, (0.2, 0.9, 0.0)),
    "calculator": ([0.4, 0.2, 1.1, 1.3, 1.3], 0.0, (0.1, 1.0, 0.0)),
    "lighter": ([0.5, 0.9, 1.0, 1.0, 1.0], 0.0, (1.0, 0.3, 0.0)),
    "phone": ([0.5, 0.6, 0.7, 0.75, 0.8], 0.1, (0.6, 0.5, 0.2)),
    "glasses": ([0.5, 0.5, 0.8, 1.1, 1.2], 0.1, (0.6, 0.4, -0.3)),
    "wallet": ([0.4, 0.5, 0.55, 0.6, 0.65], 0.1, (0.7, 0.6, 0.0)),
    "coin": ([0.7, 0.6, 1.2, 1.3, 1.3], 0.0, (0.8, 0.6, 0.0)),
    "card": ([0.6, 0.5, 1.0, 1.2, 1.3], 0.0, (0.7, 0.6, 0.0)),
    "wine": ([0.8, 1.1, 1.2, 1.2, 1.1], 0.0, (1.3, 0.2, 0.0)),
    "none": ([0.3, 0.25, 0.3, 0.35, 0.4], 0.2, (1.2, 0.2, 0.0)),
}

# Verb templates: (channel, kind, amplitude, a, b). Channels: tx ty tz (mm, camera frame),
# roll pitch yaw (rad), c0..c4 / call (finger curl, rad), spread. Kinds: sin (a cycles,
# b phase), bump (a centre, b width), step (a centre, b width), ramp (linear).
_VERBS = {
    "open": [("roll", "sin", 0.5, 3.0, 0.0), ("c1", "sin", 0.15, 3.0, 0.0), ("c2", "sin", 0.15, 3.0, 0.0),
             ("ty", "step", 15.0, 0.8, 0.05), ("tz", "step", -20.0, 0.85, 0.04)],
    "close": [("roll", "sin", 0.5, 3.0, np.pi), ("c1", "sin", 0.15, 3.0, np.pi), ("c2", "sin", 0.15, 3.0, np.pi),
              ("ty", "step", -15.0, 0.2, 0.05), ("tz", "step", 20.0, 0.15, 0.04)],
    "pour": [("roll", "bump", 1.3, 0.5, 0.2), ("ty", "bump", 40.0, 0.5, 0.25), ("tx", "bump", 30.0, 0.5, 0.25)],
    "prick": [("ty", "sin", 25.0, 3.0, 0.0), ("tz", "bump", -20.0, 0.5, 0.3)],
    "sprinkle": [("roll", "sin", 0.25, 5.0, 0.0), ("ty", "bump", 30.0, 0.5, 0.3)],
    "scoop": [("ty", "bump", -40.0, 0.35, 0.12), ("roll", "step", 0.6, 0.45, 0.05), ("ty", "bump", 50.0, 0.7, 0.12)],
    "put": [("ty", "bump", -50.0, 0.5, 0.18), ("call", "step", -0.4, 0.55, 0.05)],
    "stir": [("tx", "sin", 25.0, 4.0, 0.0), ("tz", "sin", 25.0, 4.0, np.pi / 2)],
    "drink": [("ty", "bump", 120.0, 0.5, 0.25), ("tz", "bump", -80.0, 0.5, 0.25), ("pitch", "bump", 0.8, 0.5, 0.2)],
    "wash": [("tx", "sin", 40.0, 3.0, 0.0), ("tz", "sin", 20.0, 3.0, np.pi / 2), ("call", "sin", 0.2, 3.0, 0.0)],
    "flip": [("roll", "bump", 2.2, 0.5, 0.2)],
    "scratch": [("tx", "sin", 35.0, 5.0, 0.0), ("ty", "sin", 8.0, 5.0, 1.0)],
    "squeeze": [("call", "sin", 0.45, 2.5, 0.0)],
    "open_can": [("c1", "bump", -0.8, 0.5, 0.12), ("pitch", "bump", 0.3, 0.5, 0.15), ("ty", "bump", 10.0, 0.5, 0.2)],
    "use": [("c0", "sin", 0.3, 4.0, 0.0), ("pitch", "sin", 0.1, 2.0, 0.0)],
    "write": [("tx", "ramp", 70.0, 0.0, 0.0), ("tx", "sin", 8.0, 6.0, 0.0), ("ty", "sin", 8.0, 6.0, np.pi / 2)],
    "tear": [("roll", "bump", 0.7, 0.5, 0.15), ("tx", "step", 60.0, 0.5, 0.05)],
    "open_letter": [("tx", "sin", 30.0, 2.0, 0.0), ("c1", "bump", 0.4, 0.5, 0.2), ("pitch", "bump", 0.3, 0.5, 0.2)],
    "take": [("tz", "step", -80.0, 0.5, 0.1), ("ty", "step", 30.0, 0.5, 0.1), ("call", "step", 0.3, 0.35, 0.05)],
    "read": [("pitch", "sin", 0.08, 1.0, 0.0), ("ty", "sin", 5.0, 1.0, 0.0)],
    "flip_pages": [("roll", "sin", 0.6, 3.0, 0.0), ("tx", "sin", 40.0, 3.0, 0.0)],
    "tap": [("c1", "sin", 0.35, 7.0, 0.0), ("tx", "sin", 15.0, 2.0, 0.0)],
    "light": [("c0", "bump", 0.8, 0.3, 0.05), ("c0", "bump", 0.8, 0.55, 0.05), ("tz", "bump", 40.0, 0.6, 0.2)],
    "charge": [("tz", "step", 70.0, 0.5, 0.08), ("pitch", "step", 0.3, 0.5, 0.08)],
    "unfold": [("yaw", "bump", 0.8, 0.5, 0.2), ("spread", "bump", 0.3, 0.5, 0.2), ("tx", "bump", -30.0, 0.5, 0.2)],
    "clean": [("tx", "sin", 20.0, 5.0, 0.0), ("c0", "sin", 0.1, 5.0, 0.0)],
    "open_wallet": [("roll", "step", 0.9, 0.5, 0.06), ("c0", "step", -0.5, 0.5, 0.06)],
    "give": [("tz", "bump", 120.0, 0.5, 0.2), ("call", "step", -0.5, 0.6, 0.05)],
    "receive": [("tz", "bump", 120.0, 0.5, 0.2), ("call", "step", 0.5, 0.55, 0.05), ("pitch", "step", 0.5, 0.4, 0.08)],
    "toast": [("tz", "bump", 90.0, 0.5, 0.12), ("tx", "bump", -50.0, 0.5, 0.12)],
    "handshake": [("ty", "sin", 35.0, 3.0, 0.0), ("tz", "step", 100.0, 0.2, 0.06)],
    "high_five": [("tz", "bump", 150.0, 0.5, 0.1), ("ty", "bump", 80.0, 0.5, 0.15), ("call", "bump", -0.5, 0.5, 0.2),
                  ("spread", "bump", 0.3, 0.5, 0.2)],
}

_FPHA_RECIPES = (
    ("open", "juice_bottle"), ("close", "juice_bottle"), ("pour", "juice_bottle"), ("open", "peanut_butter"),
    ("close", "peanut_butter"), ("prick", "fork"), ("sprinkle", "spoon"), ("scoop", "spoon"), ("put", "spoon"),
    ("stir", "spoon"), ("open", "milk"), ("close", "milk"), ("pour", "milk"), ("drink", "mug"), ("put", "tea_bag"),
    ("sprinkle", "salt"), ("open", "soap"), ("close", "soap"), ("pour", "soap"), ("wash", "sponge"),
    ("flip", "sponge"), ("scratch", "sponge"), ("squeeze", "sponge"), ("open_can", "soda_can"), ("use", "flash"),
    ("write", "pen"), ("tear", "paper"), ("squeeze", "paper"), ("open_letter", "letter"), ("take", "letter"),
    ("read", "letter"), ("flip_pages", "book"), ("tap", "calculator"), ("light", "lighter"), ("charge", "phone"),
    ("unfold", "glasses"), ("clean", "glasses"), ("open_wallet", "wallet"), ("give", "coin"), ("receive", "coin"),
    ("give", "card"), ("pour", "wine"), ("toast", "wine"), ("handshake", "none"), ("high_five", "none"),
)
assert len(_FPHA_RECIPES) == len(FPHA_CLASSES)
_CURVE_CHANNELS = ("tx", "ty", "tz", "roll", "pitch", "yaw", "c0", "c1", "c2", "c3", "c4", "spread")


def _fpha_class(label: int) -> dict:
    """Fixed (seed-independent) definition of class ``label``: verb components, grip, orientation."""
    verb, obj = _FPHA_RECIPES[label]
    r = np.random.default_rng([7919, label])
    curl, spread, euler = _OBJECTS[obj]
    comps = [(ch, kind, amp * r.uniform(0.85, 1.15), a, b) for ch, kind, amp, a, b in _VERBS[verb]]
    return dict(comps=comps, curl=np.array(curl) + r.normal(0, 0.05, 5), spread=spread,
                euler=np.array(euler) + r.normal(0, 0.08, 3))


def _fpha_subject(seed: int, subject: int) -> dict:
    r = np.random.default_rng([seed, 111, subject])
    return dict(size=r.uniform(0.88, 1.12), fingers=r.uniform(0.95, 1.05, 5), curl=r.normal(0, 0.1, 5),
                euler=r.normal(0, 0.15, 3), pos=np.array([0.0, 30.0, 380.0]) + r.normal(0, 25, 3),
                speed=r.uniform(0.8, 1.25), amp=r.uniform(0.8, 1.2))


def _fpha_curves(label: int, p: np.ndarray, rng, jitter: float, amp: float) -> dict:
    spec = _fpha_class(label)
    curves = {ch: np.zeros_like(p) for ch in _CURVE_CHANNELS}
    shift = rng.uniform(-0.08, 0.08) * (1 + jitter)
    for ch, kind, a, x, y in spec["comps"]:
        a = a * amp * rng.uniform(1 - 0.35 * jitter, 1 + 0.35 * jitter)
        if kind == "sin":
            cycles = x * rng.uniform(0.85, 1.15)
            value = a * np.sin(2 * np.pi * cycles * p + y + rng.normal(0, np.pi * 0.25 * jitter))
        elif kind == "bump":
            value = a * _bump(p, x + shift, y)
        elif kind == "step":
            value = a * _step(p, x + shift, y)
        else:
            value = a * p
        targets = ("c0", "c1", "c2", "c3", "c4") if ch == "call" else (ch,)
        for t in targets:
            curves[t] = curves[t] + value
    static = {"curl": spec["curl"], "spread": spec["spread"], "euler": spec["euler"]}
    return {"curves": curves, **static}


def _rotation(roll, pitch, yaw) -> np.ndarray:
    """Rotation matrices ``[T, 3, 3]``: roll about local y (forearm), pitch about x, yaw about z."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    one, zero = np.ones_like(roll), np.zeros_like(roll)
    Ry = np.stack([np.stack([cr, zero, sr], -1), np.stack([zero, one, zero], -1), np.stack([-sr, zero, cr], -1)], -2)
    Rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1), np.stack([zero, sp, cp], -1)], -2)
    Rz = np.stack([np.stack([cy, -sy, zero], -1), np.stack([sy, cy, zero], -1), np.stack([zero, zero, one], -1)], -2)
    return Rz @ Rx @ Ry


# Camera frame: x right, y down, z forward. The hand model above is built with a
# left-handed axis convention (thumb +x, fingers +y, back of the hand +z), so the
# neutral pose maps it with a reflection (det -1), giving a right hand: thumb left,
# back of the hand up, fingers forward; then the fingers are tilted 0.3 rad down.
_HAND_TO_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.3), np.sin(0.3)], [0.0, -np.sin(0.3), np.cos(0.3)]]) @ \
    np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def _hand_fk(curl: np.ndarray, spread: np.ndarray, size: float, fingers: np.ndarray) -> np.ndarray:
    """Hand-local joint positions ``[T, 21, 3]`` from per-finger curl ``[T, 5]`` and spread ``[T]``."""
    T = curl.shape[0]
    out = np.zeros((T, 21, 3))
    z = np.array([0.0, 0.0, 1.0])
    for f in range(5):
        out[:, 1 + f] = _MCP[f] * size
        pos = np.tile(_MCP[f] * size, (T, 1))
        angles = curl[:, f:f + 1] * (np.array([[0.6, 1.0, 0.8]]) if f == 0 else np.array([[1.0, 1.1, 0.7]]))
        if f == 0:
            d0 = np.tile(_THUMB_DIR, (T, 1))
            bend = np.tile(_THUMB_BEND, (T, 1))
        else:
            a = (_SPREAD[f] * (1.0 + spread))[:, None]
            d0 = np.concatenate([np.sin(a), np.cos(a), np.zeros_like(a)], axis=1)
            bend = np.tile(-z, (T, 1))
        cumulative = np.cumsum(angles, axis=1)
        for k in range(3):
            th = cumulative[:, k:k + 1]
            direction = np.cos(th) * d0 + np.sin(th) * bend
            pos = pos + _SEGMENTS[f, k] * size * fingers[f] * direction
            out[:, 6 + 3 * f + k] = pos
    return out


def _fpha_sequence(seed: int, subject: int, label: int, seq_index: int, difficulty: float) -> np.ndarray:
    """One FPHA sequence ``[T, 1, 21, 3]`` in millimetres (before rounding)."""
    subj = _fpha_subject(seed, subject)
    rng = np.random.default_rng([seed, 222, subject, label, seq_index])
    d = difficulty
    speed = subj["speed"] * rng.uniform(1 - 0.15 * d, 1 + 0.15 * d)
    T = int(np.clip(round(rng.uniform(28, 100) / speed), 16, 120))
    p = np.linspace(0.0, 1.0, T) ** np.exp(rng.normal(0.0, 0.2 * d))
    amp = subj["amp"]
    own = _fpha_curves(label, p, rng, d, amp)
    other_label = int(rng.choice([k for k in range(len(FPHA_CLASSES)) if k != label]))
    other = _fpha_curves(other_label, p, np.random.default_rng([seed, 333, subject, label, seq_index]), d, amp)
    w = rng.uniform(0.0, 0.6 * d)
    mix = lambda a, b: (1 - w) * a + w * b  # noqa: E731
    curves = {ch: mix(own["curves"][ch], other["curves"][ch]) for ch in _CURVE_CHANNELS}
    grip = mix(own["curl"], other["curl"]) + subj["curl"] + rng.normal(0, 0.08 * d, 5)
    euler = mix(own["euler"], other["euler"]) + subj["euler"] + rng.normal(0, 0.2 * d, 3)

    curl = grip[None, :] + np.stack([curves[f"c{f}"] for f in range(5)], axis=1)
    spread = mix(own["spread"], other["spread"]) + curves["spread"]
    local = _hand_fk(curl, spread, subj["size"], subj["fingers"])
    R = _rotation(euler[0] + curves["roll"], euler[1] + curves["pitch"], euler[2] + curves["yaw"])
    cam = np.einsum("ij,tjk,tvk->tvi", _HAND_TO_CAMERA, R, local)
    trans = np.stack([curves["tx"], -curves["ty"], curves["tz"]], axis=1)  # template ty is "up"; camera y is down
    drift = np.cumsum(rng.normal(0.0, 0.8 * d, size=(T, 3)), axis=0)
    cam = cam + (subj["pos"] + rng.normal(0, 15 * d, 3) + trans + drift)[:, None, :]
    cam = cam + rng.normal(0.0, 10.0 * d, size=cam.shape)  # sensor noise, mm
    return cam[:, None]


def write_fpha(out_dir: str | os.PathLike, seed: int = 0, sequences_per_subject_action=2, *, subjects: int = 6,
               difficulty: float = FPHA_DEFAULT_DIFFICULTY, overwrite: bool = False):
    """Write a synthetic FPHA tree and its 1:1 split file under ``out_dir``.

    Writes ``Hand_pose_annotation_v1/Subject_<k>/<action>/<seq>/skeleton.txt``
    (sequences numbered from 1) and ``data_split_action_recognition.txt``: for each
    (subject, action) the sequences are shuffled and split half / half (an odd one
    goes alternately to train and test), giving a 1:1 split.

    Args:
        out_dir: target folder (created; must be empty unless ``overwrite`` and it
            holds an earlier synthetic tree).
        seed: everything written is a pure function of the arguments.
        sequences_per_subject_action: an int, or ``(lo, hi)`` inclusive drawn per
            (subject, action). The default 2 gives 540 sequences (real: 1,175).
        subjects: number of subjects (default 6, as in FPHA).
        difficulty: noise / jitter / class-overlap level (see the module docstring).

    Returns:
        ``(train, test)`` lists of the sequences written, in split-file order, with
        ``data`` rounded as in the files (4 decimals).

    Example:
        >>> import tempfile
        >>> train, test = write_fpha(tempfile.mkdtemp(), seed=0, sequences_per_subject_action=2, subjects=2)
        >>> len(train), len(test), train[0].group, train[0].data.shape[1:]
        (90, 90, 'Subject_1', (1, 21, 3))
    """
    out_dir = Path(out_dir)
    ann_name = "Hand_pose_annotation_v1"
    _prepare_out(out_dir, overwrite, [ann_name, FPHA_SPLIT_FILE], "fpha")
    counts_rng = np.random.default_rng([seed, 515])
    split_rng = np.random.default_rng([seed, 525])
    train: list[tuple[str, SkeletonSequence]] = []
    test: list[tuple[str, SkeletonSequence]] = []
    odd = 0
    for subject in range(1, subjects + 1):
        for label, action in enumerate(FPHA_CLASSES):
            n = _count(sequences_per_subject_action, counts_rng)
            order = split_rng.permutation(n)
            n_train = n // 2 + (n % 2) * (odd % 2 == 0)
            odd += n % 2
            for rank, k in enumerate(order):
                values = np.round(_fpha_sequence(seed, subject, label, int(k), difficulty), _FPHA_DECIMALS)
                entry = f"Subject_{subject}/{action}/{int(k) + 1}"
                folder = out_dir / ann_name / f"Subject_{subject}" / action / str(int(k) + 1)
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / FPHA_FILE
                frames = np.arange(values.shape[0])
                path.write_text(_format_rows(frames, values.reshape(values.shape[0], -1), " ", _FPHA_DECIMALS, "%04d"))
                seq = SkeletonSequence(values.astype(np.float32), label, f"Subject_{subject}", str(path))
                (train if rank < n_train else test).append((entry, seq))
    train.sort(key=lambda item: _entry_key(item[0]))
    test.sort(key=lambda item: _entry_key(item[0]))
    lines = [f"Training {len(train)}"] + [f"{e} {s.label}" for e, s in train]
    lines += [f"Test {len(test)}"] + [f"{e} {s.label}" for e, s in test]
    (out_dir / FPHA_SPLIT_FILE).write_text("\n".join(lines) + "\n")
    _write_marker(out_dir, "fpha", seed, difficulty, len(train) + len(test),
                  f"subjects: {subjects}\nsequences_per_subject_action: {sequences_per_subject_action}\n",
                  complete=True)
    return [s for _, s in train], [s for _, s in test]


def _entry_key(entry: str):
    subject, action, seq = entry.split("/")
    return int(subject.split("_")[1]), FPHA_CLASSES.index(action), int(seq)


# ----------------------------------------------------------------------------- CLI
def synth_main(format: str, out: str | os.PathLike, seed: int = 0, *, difficulty: float | None = None,
               overwrite: bool = False, **kwargs) -> str:
    """Entry point for ``prunekit data synth``: write a synthetic tree, return a summary line.

    ``format`` is ``"sbu"``, ``"fpha"`` or ``"all"`` (writes ``out/sbu`` and ``out/fpha``).
    Extra keyword arguments go to :func:`write_sbu` / :func:`write_fpha` (with ``"all"``,
    each goes to the writer that takes it).

    ``difficulty=None`` takes each format's :func:`default_difficulty`.

    Example:
        >>> import tempfile
        >>> print(synth_main("fpha", tempfile.mkdtemp(), seed=0, subjects=1))  # doctest: +ELLIPSIS
        wrote SYNTHETIC FPHA data: 90 sequences (45 train / 45 test), seed 0, difficulty 0.3 -> ...
    """
    out = Path(out)
    if difficulty is None and format in ("sbu", "fpha"):
        difficulty = default_difficulty(format)
    if format == "sbu":
        seqs = write_sbu(out, seed, difficulty=difficulty, overwrite=overwrite, **kwargs)
        return (f"wrote SYNTHETIC SBU data: {len(seqs)} sequences in {len(SBU_SETS)} sets, seed {seed}, "
                f"difficulty {difficulty} -> {out}")
    if format == "fpha":
        train, test = write_fpha(out, seed, difficulty=difficulty, overwrite=overwrite, **kwargs)
        return (f"wrote SYNTHETIC FPHA data: {len(train) + len(test)} sequences ({len(train)} train / "
                f"{len(test)} test), seed {seed}, difficulty {difficulty} -> {out}")
    if format == "all":
        own = {"sbu": {"sequences_per_set_action"}, "fpha": {"sequences_per_subject_action", "subjects"}}
        unknown = set(kwargs) - own["sbu"] - own["fpha"]
        if unknown:
            raise TypeError(f"synth_main: unknown options {sorted(unknown)}")
        return "\n".join(
            synth_main(f, out / f, seed, difficulty=difficulty, overwrite=overwrite,
                       **{k: v for k, v in kwargs.items() if k in own[f]})
            for f in ("sbu", "fpha"))
    raise ValueError(f"unknown synthetic format {format!r} (expected 'sbu', 'fpha' or 'all')")
