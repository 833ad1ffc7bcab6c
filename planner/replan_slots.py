"""Re-plans of load balance with few slot moves: replicas and routing groups kept.

A served placement with replicas (and routing groups on nodes) meets new traffic, say decode after
a prefill calibration. Every physical slot whose expert changes is a weight transfer, so the re-plan
changes at most ``max_moves`` slots a layer (counted against the served placement: a slot changed
and changed back costs nothing). Per layer, a greedy descent on the objective of the ``robust``
solver (``planner.workloads``: the weighted mean over the new traffic's workloads of the smoothed
busiest device's load), each step the best of

- a **swap** of the experts of two slots on different devices (two moves; replica counts kept), and
- a **re-point**: one slot of an expert with several copies takes another expert (one move; a copy
  moves from an expert that needs it less to one that needs it more),

that keeps every device free of two copies of one expert and, with groups on nodes, every group's
experts and replicas on their node. It stops when no step within the budget lowers the objective,
or after ``STEPS_PER_MOVE`` steps per move of the budget (steps among slots already changed cost
no move, so without a bound the descent could run long).
"""

from __future__ import annotations

import dataclasses
import functools
from concurrent.futures import Executor

import numpy as np

from moeplace.calibrate.stats import Statistics
from moeplace.planner.placement import Placement, yaml_safe
from moeplace.planner.replan import SLOT_MOVES, check_replan, moves_report, replanned
from moeplace.planner.solvers.base import Solution
from moeplace.planner.workloads import HOT_BINS, REPLICA_LOAD, busiest_over_mean, smooth_max

STEPS_PER_MOVE = 4  # descent steps a layer per move of the budget (rearranging moved slots is free)


def replan_slots(
    stats: Statistics,
    current: Placement,
    max_moves: int,
    calibration: dict | None = None,
    executor: Executor | None = None,
) -> Placement:
    """``current`` re-planned on ``stats`` (new traffic: load records or a trace's statistics), at
    most ``max_moves`` slots a layer changing expert; ``calibration`` describes the new traffic for
    the file; layers in parallel with an ``executor``."""
    check_replan(stats, current, max_moves)
    topology = current.topology
    groups = current.groups_on_nodes
    one = functools.partial(
        replan_layer,
        num_devices=topology.num_devices,
        max_moves=max_moves,
        device_node=topology.node_of_device if groups > 1 else None,  # groups stay on their nodes
        group_size=topology.num_experts // groups,
    )
    layers = [stats.layer(index) for index in range(stats.num_layers)]
    shares = [layer.workload_shares for layer in layers]
    weights = [layer.workload_weights for layer in layers]
    results = list(
        (executor.map if executor is not None else map)(
            one, shares, weights, list(current.physical_to_logical)
        )
    )
    new_layers = tuple(
        dataclasses.replace(
            layer,
            expert_to_device=Solution.from_slots(slots, topology, {}).expert_to_device,
            calibration_load=load,
            solver_report=yaml_safe(report),
            physical_to_logical=slots if topology.redundant_slots else None,
        )
        for layer, (slots, report), load in zip(current.layers, results, stats.pooled_load(), strict=True)
    )
    settings = SLOT_MOVES | ({"routing_groups": groups, "group_mode": "nodes"} if groups > 1 else {})
    return replanned(current, stats, max_moves, calibration, new_layers, settings)


def replan_layer(
    shares: np.ndarray,
    weights: np.ndarray,
    served: np.ndarray,
    num_devices: int,
    max_moves: int,
    device_node: np.ndarray | None = None,
    group_size: int | None = None,
) -> tuple[np.ndarray, dict]:
    """One layer: slots int64 ``[P]`` (slot p on device ``p // (P / D)``) reached from ``served``
    within ``max_moves`` changed slots, and the report (moves, objective before and after).

    ``shares``: float ``[W, N]`` the new traffic's workloads; ``weights`` ``[W]``; with groups on
    nodes, ``device_node`` ``[D]`` and ``group_size``: expert e belongs to group ``e // group_size``,
    whose node is the node of the device holding its copies in ``served``."""
    slots = np.array(served, np.int64)
    num_slots, n = slots.shape[0], shares.shape[1]
    per_device = num_slots // num_devices
    device = np.arange(num_slots) // per_device
    allowed = np.ones((num_devices, n), bool)  # allowed[d, e]: expert e may sit on device d
    if device_node is not None:
        group_node = np.full(n // group_size, -1)
        group_node[slots // group_size] = device_node[device]
        allowed = device_node[:, None] == np.repeat(group_node, group_size)[None, :]
    scale = num_devices / float(weights @ shares.sum(axis=1))  # mean device load 1 (weighted)
    share = shares.T * scale  # [N, W]
    before = _objective(slots, share, weights, num_devices)
    steps = 0
    while steps < STEPS_PER_MOVE * max_moves:  # a bound: steps within the moved slots cost no move
        moved = int(np.count_nonzero(slots != served))
        step = _best_step(slots, served, share, weights, num_devices, allowed, max_moves - moved)
        if step is None:
            break
        for slot, expert in step:
            slots[slot] = expert
        steps += 1
    copies = np.bincount(slots, minlength=n)
    per_copy = (share / copies[:, None])[slots]  # [P, W]
    busiest = busiest_over_mean(per_copy, device, num_devices)
    return slots, {
        **moves_report(int(np.count_nonzero(slots != served))),
        "steps": steps,
        "objective_before": before,
        "objective_after": _objective(slots, share, weights, num_devices),
        "fit_max_mean_load": float(weights @ busiest),
        "replica_load": REPLICA_LOAD,
    }


def _objective(slots, share, weights, num_devices) -> float:
    """The weighted mean over workloads of the smoothed busiest device load (units: the mean)."""
    return float(weights @ smooth_max(_device_loads(slots, share, num_devices)))


def _device_loads(slots, share, num_devices) -> np.ndarray:
    """float ``[D, W]``: device loads of ``slots`` ``[P]`` for expert loads ``share`` ``[N, W]``."""
    copies = np.bincount(slots, minlength=share.shape[0])
    return (share[slots] / copies[slots, None]).reshape(num_devices, -1, share.shape[1]).sum(axis=1)


def _best_step(slots, served, share, weights, num_devices, allowed, budget):
    """The best swap or re-point within ``budget`` more changed slots: ``[(slot, expert), ...]``,
    or None when none lowers the objective. Candidates: the slots of every workload's
    ``HOT_BINS`` busiest devices, against every slot (swaps) and every expert (re-points)."""
    if budget <= 0 and np.array_equal(slots, served):
        return None
    num_slots, n = slots.shape[0], share.shape[0]
    per_device = num_slots // num_devices
    device = np.arange(num_slots) // per_device
    loads = _device_loads(slots, share, num_devices)  # [D, W]
    current = weights @ smooth_max(loads)
    holds = np.zeros((num_devices, n), bool)
    holds[device, slots] = True
    copies = np.bincount(slots, minlength=n)
    per_copy = share / copies[:, None]  # [N, W]
    hot = np.unique(np.argsort(-loads, axis=0, kind="stable")[:HOT_BINS])
    best, best_gain = None, -1e-12
    for slot in np.flatnonzero(np.isin(device, hot)):
        here, expert = device[slot], slots[slot]
        changed_now = slots[slot] != served[slot]
        # swaps: slot <-> other; loads move between two devices
        others = np.flatnonzero(
            (device != here)
            & ~holds[device, expert]
            & ~holds[here, slots]
            & allowed[device, expert]
            & allowed[here, slots]
        )
        cost = (
            (expert != served[others]).astype(int)
            - (slots[others] != served[others])
            + (slots[others] != served[slot])
            - changed_now
        )
        others = others[cost <= budget]
        if others.size:
            delta = per_copy[slots[others]] - per_copy[expert]  # [O, W] into ``here``
            trial = np.broadcast_to(loads, (others.size, *loads.shape)).copy()
            trial[:, here] += delta
            trial[np.arange(others.size), device[others]] -= delta
            gain = current - smooth_max(trial) @ weights
            pick = int(np.argmax(gain))
            if gain[pick] > best_gain:
                best_gain, best = gain[pick], [(slot, slots[others[pick]]), (others[pick], expert)]
        # re-points: this slot takes expert y; expert's remaining copies and y's copies re-split
        if copies[expert] < 2:
            continue
        targets = np.flatnonzero(~holds[here] & allowed[here])
        cost = (targets != served[slot]).astype(int) - changed_now
        targets = targets[cost <= budget]
        if not targets.size:
            continue
        trial = np.broadcast_to(loads, (targets.size, *loads.shape)).copy()
        lose = share[expert] / (copies[expert] - 1) - per_copy[expert]  # each remaining copy of it
        trial[:, holds[:, expert]] += lose
        trial[:, here] -= lose + per_copy[expert]  # ``here`` had one of them and keeps none
        gain_y = share[targets] / (copies[targets, None] + 1)  # [Y, W] the new copy's load
        shift = gain_y - per_copy[targets]  # every old copy of y sheds this (negative)
        trial += holds[:, targets].T[:, :, None] * shift[:, None, :]
        trial[:, here] += gain_y
        gain = current - smooth_max(trial) @ weights
        pick = int(np.argmax(gain))
        if gain[pick] > best_gain:
            best_gain, best = gain[pick], [(slot, targets[pick])]
    return best
