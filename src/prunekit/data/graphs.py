"""Skeleton layouts as named graphs, and the adjacency subsets GCNs aggregate over.

A :class:`Graph` names the joints and bones of a skeleton (from ``docs/data.md``)
and builds the ST-GCN "spatial" partition of the normalised adjacency into
``K = 3`` subsets: the self loop, the edges pointing towards the root
(centripetal) and the edges pointing away from it (centrifugal)::

    A_0 = I,   A_1 = Λ_in^{-1} E_in,   A_2 = Λ_out^{-1} E_out

where ``E_in[i, j] = 1`` when ``j`` is a neighbour of ``i`` closer to the root,
and ``Λ`` holds the row sums (rows without edges stay zero).

Example:
    >>> g = get_graph("sbu")
    >>> g.num_joints, g.adjacency().shape
    (30, torch.Size([3, 30, 30]))
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

__all__ = ["Graph", "get_graph", "graph_names", "SBU_JOINTS", "FPHA_JOINTS"]

SBU_JOINTS = (
    "head", "neck", "torso", "l-shoulder", "l-elbow", "l-hand", "r-shoulder", "r-elbow",
    "r-hand", "l-hip", "l-knee", "l-foot", "r-hip", "r-knee", "r-foot",
)
SBU_BONES = (
    (0, 1), (1, 2), (1, 3), (3, 4), (4, 5), (1, 6), (6, 7), (7, 8), (2, 9), (9, 10),
    (10, 11), (2, 12), (12, 13), (13, 14),
)
FPHA_JOINTS = (
    "wrist", "TMCP", "IMCP", "MMCP", "RMCP", "PMCP", "TPIP", "TDIP", "TTIP", "IPIP",
    "IDIP", "ITIP", "MPIP", "MDIP", "MTIP", "RPIP", "RDIP", "RTIP", "PPIP", "PDIP", "PTIP",
)
FPHA_BONES = (
    (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 6), (6, 7), (7, 8), (2, 9), (9, 10),
    (10, 11), (3, 12), (12, 13), (13, 14), (4, 15), (15, 16), (16, 17), (5, 18), (18, 19),
    (19, 20),
)


@dataclass(frozen=True)
class Graph:
    """A skeleton layout: joint names, undirected bones and the root joint(s).

    ``roots`` holds one root per connected skeleton (two for SBU's two persons).
    """

    name: str
    joint_names: tuple[str, ...]
    bones: tuple[tuple[int, int], ...]
    roots: tuple[int, ...] = (0,)
    num_subsets: int = field(default=3)

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def hop_distance(self) -> list[int]:
        """Breadth-first hop distance of every joint to its nearest root."""
        neighbours: list[list[int]] = [[] for _ in range(self.num_joints)]
        for i, j in self.bones:
            neighbours[i].append(j)
            neighbours[j].append(i)
        distance = [-1] * self.num_joints
        queue = deque(self.roots)
        for root in self.roots:
            distance[root] = 0
        while queue:
            node = queue.popleft()
            for other in neighbours[node]:
                if distance[other] < 0:
                    distance[other] = distance[node] + 1
                    queue.append(other)
        if min(distance) < 0:
            unreachable = [self.joint_names[i] for i, d in enumerate(distance) if d < 0]
            raise ValueError(f"graph {self.name!r}: joints {unreachable} are not connected to a root")
        return distance

    def adjacency(self) -> torch.Tensor:
        """The spatial partition ``[3, V, V]`` (self, centripetal, centrifugal), row-normalised."""
        v = self.num_joints
        distance = self.hop_distance()
        inward = torch.zeros(v, v)
        outward = torch.zeros(v, v)
        for i, j in self.bones:
            for a, b in ((i, j), (j, i)):
                if distance[b] < distance[a]:
                    inward[a, b] = 1.0
                else:
                    outward[a, b] = 1.0

        def normalise(m: torch.Tensor) -> torch.Tensor:
            rows = m.sum(dim=1, keepdim=True)
            return torch.where(rows > 0, m / rows.clamp(min=1.0), m)

        return torch.stack([torch.eye(v), normalise(inward), normalise(outward)])


def _two_persons(name: str, joints: tuple[str, ...], bones, root: int) -> Graph:
    n = len(joints)
    names = tuple(f"A:{j}" for j in joints) + tuple(f"B:{j}" for j in joints)
    both = tuple(bones) + tuple((i + n, j + n) for i, j in bones)
    return Graph(name, names, both, roots=(root, root + n))


_GRAPHS = {
    "sbu": _two_persons("sbu", SBU_JOINTS, SBU_BONES, root=2),
    "sbu-single": Graph("sbu-single", SBU_JOINTS, SBU_BONES, roots=(2,)),
    "fpha": Graph("fpha", FPHA_JOINTS, FPHA_BONES, roots=(0,)),
}


def graph_names() -> list[str]:
    """Names accepted by :func:`get_graph`."""
    return sorted(_GRAPHS)


def get_graph(name: str | Graph) -> Graph:
    """Return a named skeleton layout (``"sbu"``: two persons, 30 joints; ``"fpha"``: 21 hand joints)."""
    if isinstance(name, Graph):
        return name
    try:
        return _GRAPHS[name]
    except KeyError:
        raise ValueError(f"unknown skeleton graph {name!r}; known: {graph_names()}") from None
