"""Balance that holds across workloads: replica counts and packings judged on every workload at once.

An engine's load record is a set of workloads (prefill of short and long inputs, decode, ...), and a
placement fit to their pooled mean loses its balance on the next workload it serves: DeepSeek's
EPLB, fit on seven of the shared DeepSeek-V3 workloads, averages max/mean 1.16 on the eighth (1.01
in-sample). Here every workload keeps its own loads ``shares [W, N]`` (each workload's share of a
layer's activations, so a long recording does not outweigh a short one), and

- ``robust_counts`` gives each redundant slot to the expert whose per-copy share is highest in the
  mean over workloads plus ``SPREAD`` standard deviations: an expert that is hot in only some
  workloads gets copies too, where the pooled mean would dilute it;
- ``pack_robust`` deals items (physical expert copies, or routing groups) into bins of equal size,
  minimizing the weighted mean over workloads of each workload's busiest bin: greedy by least
  squares, then swaps of two items in different bins while the objective falls. The busiest bin is
  smoothed (log-sum-exp at temperature ``SMOOTHING``), so a swap that relieves the second-busiest
  bin of a workload counts too.

A replicated expert's load is taken to split evenly over its copies, as DeepSeek's EPLB assumes and
``moeplace validate`` scores it.
"""

from __future__ import annotations

import numpy as np

SPREAD = 2.0  # standard deviations of a copy's share across workloads added to its mean
SMOOTHING = 30.0  # log-sum-exp temperature, in units of the mean bin load
SWAP_STEPS = 400  # improving swaps at most per packing
HOT_BINS = 2  # swaps take an item from the HOT_BINS busiest bins of some workload
REPLICA_LOAD = "a replicated expert's load split evenly over its copies"  # what every report says


def smooth_max(loads: np.ndarray) -> np.ndarray:
    """The busiest bin smoothed: log-sum-exp over bins (axis -2) at ``SMOOTHING``,
    ``[..., B, W] -> [..., W]``, loads in units of the mean bin."""
    top = loads.max(axis=-2, keepdims=True)
    total = np.exp(SMOOTHING * (loads - top)).sum(axis=-2, keepdims=True)
    return (top + np.log(total) / SMOOTHING)[..., 0, :]


def robust_counts(shares: np.ndarray, weights: np.ndarray, slots: int, max_copies: int) -> np.ndarray:
    """int64 ``[N]`` copies of each expert (at least 1, at most ``max_copies``, ``slots`` in all).

    ``shares``: float ``[W, N]`` load of each expert under each workload; ``weights``: float ``[W]``
    summing to 1. Each extra slot goes to the expert with the highest weighted mean + ``SPREAD``
    standard deviations of its per-copy share (ties: lowest id). One workload: EPLB's rule.
    """
    n = shares.shape[1]
    if slots < n or slots > n * max_copies:
        raise ValueError(f"{slots} slots cannot hold {n} experts at 1..{max_copies} copies each")
    mean = weights @ shares  # [N]
    std = np.sqrt(np.maximum(weights @ shares**2 - mean**2, 0.0))
    key = mean + SPREAD * std  # the per-copy figure divides by the copies: key / count
    copies = np.ones(n, np.int64)
    for _ in range(slots - n):
        per_copy = np.where(copies < max_copies, key / copies, -np.inf)
        copies[int(np.argmax(per_copy))] += 1
    return copies


def pack_robust(
    loads: np.ndarray,
    weights: np.ndarray,
    num_bins: int,
    labels: np.ndarray | None = None,
    steps: int = SWAP_STEPS,
) -> np.ndarray:
    """int64 ``[P]``: the bin of each of P items, ``P / num_bins`` items a bin.

    ``loads``: float ``[P, W]`` each item's load under each workload; ``weights``: float ``[W]``;
    ``labels``: int ``[P]`` (the expert of each copy) or None: no bin gets two items of one label.
    Minimizes ``sum_w weights[w] * smoothmax_b(bin load)`` (module docstring), loads in units of
    the weighted mean bin load.
    Deterministic: ties go to the lower item and bin.
    """
    items, _ = loads.shape
    per_bin = items // num_bins
    labels = np.arange(items) if labels is None else np.asarray(labels)
    # one scale for all workloads, so that where the items are shares of a whole layer (a node's
    # experts), a workload for which they are heavy weighs more: its busiest bin is the layer's
    mean = float(weights @ loads.sum(axis=0)) / num_bins
    scaled = loads / (mean if mean > 0 else 1.0)  # the mean bin's load is 1, weighted over workloads
    holds = np.zeros((num_bins, int(labels.max()) + 1), bool)
    bin_load = np.zeros((num_bins, scaled.shape[1]))
    room = np.full(num_bins, per_bin)
    bins = np.empty(items, np.int64)
    placed = np.zeros(items, bool)
    for item in np.argsort(-scaled.max(axis=1), kind="stable"):  # P iterations, not tokens
        growth = (2.0 * bin_load + scaled[item]) @ (weights * scaled[item])  # weighted squares' rise
        allowed = (room > 0) & ~holds[:, labels[item]]
        if not allowed.any():  # every bin with room holds this label: make room where it does not
            _make_room(item, labels, bins, room, holds, bin_load, scaled, placed)
            allowed = (room > 0) & ~holds[:, labels[item]]
        chosen = int(np.argmin(np.where(allowed, growth, np.inf)))
        bins[item] = chosen
        placed[item] = True
        bin_load[chosen] += scaled[item]
        room[chosen] -= 1
        holds[chosen, labels[item]] = True
    if num_bins > 1:
        _swap_search(scaled, weights, labels, bins, bin_load, holds, steps)
    return bins


def _make_room(item, labels, bins, room, holds, bin_load, scaled, placed) -> None:
    """Move one placed item out of a bin that does not hold ``item``'s label into a bin with room
    that holds it, so that ``item`` can go where the moved one was (the label of the moved item
    must be new to its new bin). Raises ``AssertionError`` if no such move exists."""
    label = labels[item]
    for full in np.flatnonzero(~holds[:, label]):
        for other in np.flatnonzero(placed & (bins == full)):
            targets = np.flatnonzero((room > 0) & ~holds[:, labels[other]])
            if targets.size:
                target = int(targets[0])
                holds[full, labels[other]], holds[target, labels[other]] = False, True
                bin_load[full] -= scaled[other]
                bin_load[target] += scaled[other]
                room[full] += 1
                room[target] -= 1
                bins[other] = target
                return
    raise AssertionError("no bin can take the item: more copies of a label than bins")


def _swap_search(scaled, weights, labels, bins, bin_load, holds, steps) -> None:
    """Swap pairs of items in different bins, the best swap first, while the smoothed objective
    falls (``pack_robust``); updates ``bins``, ``bin_load`` and ``holds`` in place. Each step
    weighs every item of the workloads' busiest bins against every other item at once."""
    beta = SMOOTHING
    every = np.arange(bins.shape[0])
    for _ in range(steps):
        top = bin_load.max(axis=0)  # [W], keeps the exponentials finite
        terms = np.exp(beta * (bin_load - top))  # [B, W]
        total = terms.sum(axis=0)
        hot_bins = np.unique(np.argsort(-bin_load, axis=0, kind="stable")[:HOT_BINS])
        first = every[np.isin(bins, hot_bins)]  # items that leave a hot bin
        a, b = bins[first][:, None], bins[None, :]
        moved = scaled[None, :, :] - scaled[first][:, None, :]  # [I, P, W]: load into a, out of b
        change = (
            np.exp(beta * (bin_load[a] + moved - top))
            + np.exp(beta * (bin_load[b] - moved - top))
            - terms[a]
            - terms[b]
        )
        gain = np.log(np.maximum(1.0 + change / total, 1e-300)) @ weights / beta  # [I, P]
        label_a, label_b = labels[first][:, None], labels[None, :]
        gain[(a == b) | holds[a, label_b] | holds[b, label_a]] = np.inf
        best = int(np.argmin(gain))
        row, other = divmod(best, bins.shape[0])
        if not gain[row, other] < -1e-12:
            return
        item = int(first[row])
        source, target = int(bins[item]), int(bins[other])
        delta = scaled[other] - scaled[item]
        bin_load[source] += delta
        bin_load[target] -= delta
        holds[source, labels[item]], holds[target, labels[other]] = False, False
        holds[source, labels[other]], holds[target, labels[item]] = True, True
        bins[item], bins[other] = target, source


def busiest_over_mean(loads: np.ndarray, bins: np.ndarray, num_bins: int) -> np.ndarray:
    """float ``[W]``: each workload's busiest bin over its mean bin, for items ``loads [P, W]``
    in ``bins [P]``."""
    per_bin = np.zeros((num_bins, loads.shape[1]))
    np.add.at(per_bin, bins, loads)
    mean = per_bin.mean(axis=0)
    return np.where(mean > 0, per_bin.max(axis=0) / np.where(mean > 0, mean, 1.0), 1.0)
