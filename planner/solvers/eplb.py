"""``eplb``: DeepSeek's expert-parallel load balancer, load only, with replicas of hot experts.

Reimplemented in NumPy from the published algorithm (deepseek-ai/EPLB ``eplb.py``): replicate the
expert with the highest load per replica until every physical slot is used, then pack physical
experts onto GPUs with balanced packing (heaviest first, each to the lightest pack with room).
Hierarchical when the expert groups split evenly over the nodes: groups to nodes, replicas within
each node, then GPUs; otherwise the global policy (one group, one node). Float32 like the original;
ties go to the lowest index (stable sorts), where torch's unstable sort leaves them undefined.

One deliberate difference: no GPU gets two copies of one expert (``moeplace.planner.slots`` says
why engines need that). An expert gets at most one copy per GPU (per GPU of its node when
hierarchical), and the packing skips GPUs that hold the expert already. Where EPLB's own result
has no such repeat, this is EPLB's result (it reproduces the example in DeepSeek's README).
"""

from __future__ import annotations

import numpy as np

from moeplace.calibrate.stats import LayerStats
from moeplace.planner.slots import copies_fit
from moeplace.planner.solvers.base import Solution, SolverOptions, SolverSpec
from moeplace.planner.solvers.frequency import heaviest_first
from moeplace.planner.topology import Topology


def balanced_packing(
    weight: np.ndarray, num_packs: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pack n items into ``num_packs`` packs of n / num_packs each, balancing weight.

    ``weight``: float ``[X, n]``; ``labels``: int ``[X, n]`` (the expert of each physical item) or
    None. Heaviest first, each to the lightest pack with room; with labels, never to a pack that
    holds its label already, and only where the items still to come can be packed the same way
    (EPLB's own packing may put two copies of an expert on one GPU, which engines cannot serve).
    Returns int64 ``pack_index`` and ``rank_in_pack``, both ``[X, n]``.
    """
    rows, n = weight.shape
    per_pack = n // num_packs
    if per_pack == 1:
        return np.tile(np.arange(n), (rows, 1)), np.zeros((rows, n), np.int64)
    if labels is None:
        packed = [heaviest_first(row, num_packs, np.float32) for row in weight]
        return np.stack([p for p, _ in packed]), np.stack([r for _, r in packed])
    pack_index = np.full((rows, n), -1, np.int64)
    rank_in_pack = np.full((rows, n), -1, np.int64)
    for row in range(rows):
        pack_weight = np.zeros(num_packs, np.float32)
        items = np.zeros(num_packs, np.int64)
        label = labels[row]
        left = np.bincount(label, minlength=int(label.max()) + 1)
        repeated = left > 1  # only labels with several items can collide
        holds = np.zeros((num_packs, left.shape[0]), bool)
        for item in np.argsort(-weight[row], kind="stable"):
            expert = label[item]
            left[expert] -= 1
            pack = _lightest_allowed(
                pack_weight,
                (items < per_pack) & ~holds[:, expert],
                holds,
                left,
                repeated,
                per_pack - items,
                expert,
            )
            holds[pack, expert] = True
            pack_index[row, item], rank_in_pack[row, item] = pack, items[pack]
            pack_weight[pack] += weight[row, item]
            items[pack] += 1
    return pack_index, rank_in_pack


def _lightest_allowed(pack_weight, allowed, holds, left, repeated, room, expert) -> int:
    """The lightest allowed pack after which the ``left`` items of every label still fit (items of
    labels with one item go anywhere, so only the repeated labels' are checked)."""
    order = np.argsort(np.where(allowed, pack_weight, np.inf), kind="stable")[: allowed.sum()]
    if not (left[repeated] > 0).any():
        return int(order[0])
    for pack in order:
        holds[pack, expert], room[pack] = True, room[pack] - 1
        fits = copies_fit(np.where(repeated, left, 0), holds, room)
        holds[pack, expert], room[pack] = False, room[pack] + 1
        if fits:
            return int(pack)
    raise AssertionError("no pack can take the item: more copies of an expert than packs")


def replicate_experts(
    weight: np.ndarray, num_physical: int, max_copies: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give ``num_physical`` slots to ``weight.shape[1]`` experts: each extra slot to the expert
    with the highest load per replica, among those with fewer than ``max_copies`` (the GPUs that
    can hold one copy each; None: no limit, as in EPLB). Returns ``phy2log``, ``rank`` ``[X, P]``
    and ``logcnt`` ``[X, L]``."""
    rows, num_logical = weight.shape
    phy2log = np.tile(np.arange(num_physical), (rows, 1))
    rank = np.zeros((rows, num_physical), np.int64)
    logcnt = np.ones((rows, num_logical), np.int64)
    every = np.arange(rows)
    for slot in range(num_logical, num_physical):
        share = weight / logcnt.astype(np.float32)
        if max_copies is not None:
            share = np.where(logcnt < max_copies, share, -np.inf)
        expert = np.argmax(share, axis=1)
        phy2log[:, slot], rank[:, slot] = expert, logcnt[every, expert]
        logcnt[every, expert] += 1
    return phy2log, rank, logcnt


def _inverse(perm: np.ndarray) -> np.ndarray:
    inverse = np.empty_like(perm)
    np.put_along_axis(inverse, perm, np.arange(perm.shape[1])[None, :].repeat(perm.shape[0], 0), axis=1)
    return inverse


def rebalance_hierarchical(
    weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int, num_gpus: int
) -> np.ndarray:
    """``phy2log`` int64 ``[X, P]``: the logical expert in each physical slot (slot p on GPU
    ``p // (P / num_gpus)``), for loads ``weight`` float32 ``[X, L]``."""
    rows, num_logical = weight.shape
    group_size, groups_per_node = num_logical // num_groups, num_groups // num_nodes
    per_gpu = num_physical // num_gpus
    # 1. groups to nodes
    group_pack, group_rank = balanced_packing(weight.reshape(rows, num_groups, group_size).sum(-1), num_nodes)
    log2mlog = (
        ((group_pack * groups_per_node + group_rank) * group_size)[:, :, None] + np.arange(group_size)
    ).reshape(rows, -1)
    mlog2log = _inverse(log2mlog)
    # 2. replicas within each node
    node_weight = np.take_along_axis(weight, mlog2log, axis=1).reshape(rows * num_nodes, -1)
    gpus_per_node = num_gpus // num_nodes
    phy2mlog, _, mlogcnt = replicate_experts(node_weight, num_physical // num_nodes, gpus_per_node)
    # 3. physical experts to GPUs within each node, no GPU with two copies of one expert
    phy_weight = np.take_along_axis(node_weight / mlogcnt.astype(np.float32), phy2mlog, axis=1)
    pack, rank = balanced_packing(phy_weight, gpus_per_node, labels=phy2mlog)
    pphy2phy = _inverse(pack * per_gpu + rank)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1).reshape(rows, num_nodes, -1)
    pphy2mlog = (pphy2mlog + (np.arange(num_nodes) * (num_logical // num_nodes))[None, :, None]).reshape(
        rows, -1
    )
    return np.take_along_axis(mlog2log, pphy2mlog, axis=1)


def rebalance_experts(
    weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int, num_gpus: int
) -> np.ndarray:
    """DeepSeek EPLB: hierarchical if ``num_groups % num_nodes == 0`` (and a node's experts fill a
    GPU's slots without repeating one), else global."""
    weight = np.asarray(weight, dtype=np.float32)
    if num_groups % num_nodes == 0 and num_physical // num_gpus <= weight.shape[1] // num_nodes:
        return rebalance_hierarchical(weight, num_physical, num_groups, num_nodes, num_gpus)
    return rebalance_hierarchical(weight, num_physical, 1, 1, num_gpus)


def eplb_slots(load: np.ndarray, topology: Topology, num_groups: int = 1) -> np.ndarray:
    """int64 ``[X, N + R]``: the expert in each physical slot of ``topology`` for each row of
    expert loads ``load`` ``[X, N]``, the routed experts in ``num_groups`` routing groups.

    With one group (plain top-k routing) and several nodes this is EPLB's global policy, as
    DeepSeek's code runs it for one group."""
    return rebalance_experts(
        load,
        topology.num_physical,
        num_groups=num_groups,
        num_nodes=topology.num_nodes,
        num_gpus=topology.num_devices,
    )


def solve(stats: LayerStats, topology: Topology, options: SolverOptions) -> Solution:
    """One layer: ``N + R`` physical slots over D GPUs in M nodes, by calibration load."""
    phy2log = eplb_slots(stats.load[None, :], topology)[0]
    return Solution.from_slots(phy2log, topology, {"replicated": int(topology.redundant_slots)})


SPEC = SolverSpec(
    solve,
    "DeepSeek's EPLB: replicas by load, hierarchical packing (frequency without replicas)",
    uses_coactivation=False,
    capped=False,
    places_replicas=True,
    compared_by_default=False,
)
