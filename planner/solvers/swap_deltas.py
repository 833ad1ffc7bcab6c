"""Exact fan-out change of every expert swap, kept current through swaps.

For a grouping of experts (devices, or nodes), the change of the token-weighted fan-out when
experts a (group A) and b (group B) trade places is

    delta(a, b) = -leave[a] + join[a, B] - leave[b] + join[b, A] + shared[a, b] + shared[b, a]

with ``leave[e]`` the weight of sets that lose a group when e leaves it (e is its set's only
member there), ``join[e, X]`` the weight of sets that gain one when e arrives in X (none of the
set is there yet), and ``shared[a, b]`` the weight of sets holding a and b in which a is alone,
correcting the sets a swap leaves alone. Every term is a sum over sets, so a swap changes only the
terms of the sets holding a or b, and within those only through their members in groups A and B:
``swap`` adds just those changes, so a step costs the sets it touches, not the whole calibration
trace. Weights are token counts, so the sums are exact integers in float64 and the kept terms
equal a fresh count bit for bit (tested).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moeplace.calibrate.stats import TopkSets
from moeplace.planner.topology import Topology

if TYPE_CHECKING:
    from scipy import sparse


class GroupFanout:
    """The three terms over one grouping, for sets ``[H, k]`` (-1 padding) with token ``weight`` [H].

    Attributes: ``group`` int64 ``[N]`` (the grouping, updated by ``swap``), ``per_set`` int16
    ``[H, G]`` members of each set in each group, ``leave`` ``[N]``, ``join`` ``[N, G]``,
    ``shared`` ``[N, N]``.
    """

    def __init__(self, topk_sets: TopkSets, incidence: sparse.csr_matrix, group: np.ndarray, num_groups: int):
        from scipy import sparse

        self.sets = topk_sets.sets.astype(np.int64)
        self.weight = topk_sets.counts.astype(np.float64)
        self.incidence = incidence  # [N, H], CSR: row e lists the sets holding e
        self.group = np.asarray(group, np.int64).copy()
        n, h = incidence.shape
        self._marked = np.zeros(h, bool)  # scratch for ``swap``
        set_of_pin, slot = np.nonzero(self.sets >= 0)
        expert_of_pin = self.sets[set_of_pin, slot]
        per_set = np.bincount(set_of_pin * num_groups + self.group[expert_of_pin], minlength=h * num_groups)
        self.per_set = per_set.reshape(h, num_groups).astype(np.int16)
        alone = self.per_set[set_of_pin, self.group[expert_of_pin]] == 1  # [P]
        lonely_weight = self.weight[set_of_pin] * alone
        self.leave = np.bincount(expert_of_pin, weights=lonely_weight, minlength=n)
        self.join = np.asarray(incidence @ (self.weight[:, None] * (self.per_set == 0)))
        lonely = sparse.csr_matrix((lonely_weight, (expert_of_pin, set_of_pin)), shape=(n, h))
        self.shared = (lonely @ incidence.T).toarray()

    def deltas(self) -> np.ndarray:
        """Change of the fan-out for every swap (a, b) of experts in different groups, ``[N, N]``."""
        join_other = self.join[:, self.group]  # [a, b] -> join[a, group of b]
        shared = self.shared + self.shared.T
        return -self.leave[:, None] - self.leave[None, :] + join_other + join_other.T + shared

    def swap(self, a: int, b: int) -> None:
        """Experts a and b trade groups; the terms change only through the sets holding either."""
        group_a, group_b = self.group[a], self.group[b]
        if group_a == group_b:
            return
        n, indptr, indices = self.group.shape[0], self.incidence.indptr, self.incidence.indices
        rows_a, rows_b = indices[indptr[a] : indptr[a + 1]], indices[indptr[b] : indptr[b + 1]]
        self._marked[rows_a] = True  # the sets holding a or b, each once, without sorting
        rows = np.concatenate([rows_a, rows_b[~self._marked[rows_b]]])
        self._marked[rows_a] = False
        members = self.sets[rows]  # [R, k]
        valid = members >= 0
        expert = np.where(valid, members, 0)
        weight = self.weight[rows]
        # Only groups A and B change their counts: column 0 = A, 1 = B, 2 = any other (never 1).
        before = np.zeros((rows.shape[0], 3), np.int16)
        before[:, 0], before[:, 1] = self.per_set[rows, group_a], self.per_set[rows, group_b]
        moved = (members == a).any(axis=1).astype(np.int16) - (members == b).any(axis=1)  # A -> B
        after = before.copy()
        after[:, 0] -= moved
        after[:, 1] += moved
        self.per_set[rows, group_a], self.per_set[rows, group_b] = after[:, 0], after[:, 1]
        alone_before = self._alone(before, expert, valid, group_a, group_b)
        self.group[a], self.group[b] = group_b, group_a
        alone_change = self._alone(after, expert, valid, group_a, group_b) - alone_before
        row, slot = np.nonzero(alone_change)
        change_weight = weight[row] * alone_change[row, slot]
        self.leave += np.bincount(expert[row, slot], weights=change_weight, minlength=n)
        partners = valid[row]  # [M, k]: every member of the set of a pin whose aloneness changed
        index = (expert[row, slot][:, None] * n + expert[row])[partners]
        pair_weight = np.broadcast_to(change_weight[:, None], partners.shape)[partners]
        self.shared += np.bincount(index, weights=pair_weight, minlength=n * n).reshape(n, n)
        for column, group in ((0, group_a), (1, group_b)):  # join changes in columns A and B only
            changed = (after[:, column] == 0).astype(np.int8) - (before[:, column] == 0)
            hit = np.flatnonzero(changed)
            pins = valid[hit]
            pin_weight = np.broadcast_to((weight[hit] * changed[hit])[:, None], pins.shape)[pins]
            self.join[:, group] += np.bincount(expert[hit][pins], weights=pin_weight, minlength=n)

    def _alone(self, count, expert, valid, group_a, group_b) -> np.ndarray:
        """int8 ``[R, k]``: 1 where a member is alone in group A or B by ``count`` ``[R, 3]``."""
        member_group = self.group[expert]
        column = np.where(member_group == group_a, 0, np.where(member_group == group_b, 1, 2))
        return (valid & (np.take_along_axis(count, column, axis=1) == 1)).astype(np.int8)


class SwapDeltas:
    """Swap deltas of the local search's objective, fan-out over devices + C x fan-out over nodes,
    for placement ``device`` [N], kept current by ``swap``."""

    def __init__(
        self,
        topk_sets: TopkSets,
        incidence: sparse.csr_matrix,
        topology: Topology,
        device: np.ndarray,
        node_cost: float,
    ):
        self.devices = GroupFanout(topk_sets, incidence, device, topology.num_devices)
        self.node_cost = node_cost
        self.nodes = (
            GroupFanout(topk_sets, incidence, topology.node_of_device[device], topology.num_nodes)
            if node_cost
            else None
        )

    def deltas(self) -> np.ndarray:
        """Exact change of the objective for every swap (a, b), float ``[N, N]``."""
        delta = self.devices.deltas()
        if self.nodes is not None:
            node = self.nodes.group
            across = node[:, None] != node[None, :]  # a swap inside a node leaves nodes alone
            delta += self.node_cost * np.where(across, self.nodes.deltas(), 0.0)
        return delta

    def swap(self, a: int, b: int) -> None:
        """Experts a and b trade devices (and so nodes)."""
        self.devices.swap(a, b)
        if self.nodes is not None:
            self.nodes.swap(a, b)
