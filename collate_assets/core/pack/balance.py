"""Rows ordered so that data-parallel ranks get near-equal attention cost at every step.

    row_costs(lengths, items, offsets)                      -> int64 cost of each packed row
    balance_order(costs, world_size, micro_batch, ...)      -> BalanceResult (order, report)
    imbalance(costs, world_size, micro_batch, layout=...)   -> {"steps", "mean", "worst", "overall"}
    balance_rows(costs, world_size, micro_batch, ...)       -> (order, report dict): what a writer calls

With FlashAttention's varlen kernel a row's attention cost is the sum over its sequences of length²
(`seq_lengths`), not its token count: packed rows all hold about max_length tokens, but a row of one
8192-token conversation costs 16× a row of sixteen 512-token ones. In data-parallel training every rank
reads `micro_batch` rows per step and the slowest rank sets the step's time, so within each step the
ranks' summed costs should be near equal.

How the reader deals rows to ranks (`layout`), without shuffling (the rows are already in random order):

- "sampler": `torch.utils.data.DistributedSampler(shuffle=False)`, `collate_assets.training.rank_rows(...,
  shuffle=False)`: rank r reads rows r, r + W, r + 2W, …, and its micro-batches are consecutive rows of
  that list. Step s is the rows [s·W·B, (s+1)·W·B) of the file; rank r's rows of the step are at
  s·W·B + j·W + r, j = 0..B-1.
- "trainer": transformers' `Trainer` with `train_sampling_strategy="sequential"` under accelerate
  (`BatchSamplerShard`): micro-batches of B consecutive rows, dealt round-robin to the ranks: rank r's
  rows of step s are at s·W·B + r·B + j.

With micro_batch 1 both are the same.

The algorithm. The rows are taken in their current (shuffled) order, in groups of W·B rows (one step
each) and windows of `window` groups. Within a window the rows are sorted by cost and cut into steps of
W·B rows of similar cost (rows of one step must have similar costs when B is 1: a rank gets one row);
each step's rows go to the ranks by LPT (largest cost first, each to the rank with the least cost so
far that still has a free slot; ties: the rank with the fewest free slots, then the lowest); the window's steps are then put in a seeded random order and laid out
as the reader expects. A row therefore moves at most one window (window·W·B rows) from where the
shuffle put it: the order stays random beyond a window, and a window's rows are all trained within
`window` steps of each other. The cost is that the rows of one step have similar costs (like
`group_by_length` over a mega-batch of `window` steps). `window=1` only permutes inside each step: it
changes nothing for micro_batch 1 and little when a few rows dominate.

The last partial group (the n mod W·B last rows, fewer than one step) is laid out by LPT among the
ranks with the slots the reader gives each of them in that group, and is left out of the figures (the
sampler pads it with the first rows of the file, or drops them with drop_last; the Trainer's last
batches differ again).

The figures (`imbalance`): for each complete step, the ranks' summed costs L_r and max_r L_r / mean_r L_r
(1 = perfectly balanced, W = one rank does everything). `mean`: the mean of that ratio over the steps;
`worst`: its largest value; `overall`: Σ_steps max / Σ_steps mean, the time all the steps take (each as
long as its slowest rank) over the time they would take balanced, when attention is all the cost.

Only numpy; deterministic for a given seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_WINDOW",
    "LAYOUTS",
    "BalanceResult",
    "balance_order",
    "balance_rows",
    "imbalance",
    "row_costs",
]

LAYOUTS: tuple[str, ...] = ("sampler", "trainer")
# Groups (steps) whose rows may be exchanged to balance them; see the module docstring.
DEFAULT_WINDOW = 32


def row_costs(lengths: np.ndarray, items: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Σ length² of the sequences of each row (row i holds items[offsets[i]:offsets[i + 1]]), int64."""
    rows = len(offsets) - 1
    if rows <= 0 or len(items) == 0:
        return np.zeros(max(rows, 0), dtype=np.int64)
    squares = np.asarray(lengths, dtype=np.int64)[items] ** 2
    return np.add.reduceat(squares, np.asarray(offsets[:-1], dtype=np.int64))


def _check(world_size: int, micro_batch: int, layout: str, window: int = 1) -> None:
    for name, value in (("world_size", world_size), ("micro_batch", micro_batch), ("window", window)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")


def _slots(world_size: int, micro_batch: int, layout: str) -> np.ndarray:
    """slots[r, j]: the offset within a step's W·B rows of rank r's j-th row."""
    ranks = np.arange(world_size)[:, None]
    slot = np.arange(micro_batch)[None, :]
    return slot * world_size + ranks if layout == "sampler" else ranks * micro_batch + slot


def imbalance(costs: np.ndarray, world_size: int, micro_batch: int, *, layout: str = "sampler") -> dict[str, Any]:
    """How unequal the ranks' costs are at each complete step when the rows are read in this order
    without shuffling: {"steps", "mean", "worst", "overall"} (see the module docstring; 1.0 each when
    there is no complete step)."""
    _check(world_size, micro_batch, layout)
    costs = np.asarray(costs, dtype=np.float64)
    group = world_size * micro_batch
    steps = len(costs) // group
    if steps == 0:
        return {"steps": 0, "mean": 1.0, "worst": 1.0, "overall": 1.0}
    per_step = costs[: steps * group].reshape(steps, group)
    loads = per_step[:, _slots(world_size, micro_batch, layout)].sum(axis=2)  # (steps, W)
    high, mean = loads.max(axis=1), loads.mean(axis=1)
    ratio = np.divide(high, mean, out=np.ones_like(high), where=mean > 0)
    return {
        "steps": int(steps),
        "mean": round(float(ratio.mean()), 4),
        "worst": round(float(ratio.max()), 4),
        "overall": round(float(high.sum() / mean.sum()) if mean.sum() > 0 else 1.0, 4),
    }


def _lpt(step_costs: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """LPT over many steps at once: step_costs (S, N) sorted descending within each step, capacity (S, W)
    slots of each rank (summing to N per step). Returns rank (S, N): the rank of each row."""
    steps, n = step_costs.shape
    width = capacity.shape[1]
    loads = np.zeros((steps, width), dtype=np.float64)
    used = np.zeros((steps, width), dtype=np.int64)
    rank = np.zeros((steps, n), dtype=np.int64)
    every = np.arange(steps)
    for t in range(n):
        # the least loaded rank with a free slot; ties: the one with the fewest free slots (a rank that can
        # take one more row takes the costliest left), then the lowest rank
        free = capacity - used
        candidates = np.where(free > 0, loads, np.inf)
        tied = candidates == candidates.min(axis=1, keepdims=True)
        chosen = np.where(tied, free, np.iinfo(np.int64).max).argmin(axis=1)
        rank[:, t] = chosen
        loads[every, chosen] += step_costs[:, t]
        used[every, chosen] += 1
    return rank


def _place(rank: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Offsets within the step of each row given its rank (S, N): rank r's rows fill slots[r] in order."""
    steps, n = rank.shape
    # the j-th row given to rank r goes to its j-th slot
    order = np.argsort(rank, axis=1, kind="stable")
    sorted_rank = np.take_along_axis(rank, order, axis=1)
    change = np.ones_like(sorted_rank, dtype=bool)
    change[:, 1:] = sorted_rank[:, 1:] != sorted_rank[:, :-1]
    index = np.broadcast_to(np.arange(n), (steps, n))
    first = np.maximum.accumulate(np.where(change, index, 0), axis=1)
    nth = index - first
    offset_sorted = slots[sorted_rank, nth]
    offset = np.empty_like(offset_sorted)
    np.put_along_axis(offset, order, offset_sorted, axis=1)
    return offset


@dataclasses.dataclass(frozen=True)
class BalanceResult:
    order: np.ndarray  # int64 permutation: position p of the new order holds row order[p] of the old one
    report: dict  # world_size, micro_batch, layout, window, seed, steps, partial_rows, before, after


def balance_order(
    costs: np.ndarray,
    world_size: int,
    micro_batch: int = 1,
    *,
    layout: str = "sampler",
    window: int = DEFAULT_WINDOW,
    seed: int = 0,
) -> BalanceResult:
    """A new order of rows whose costs (Σ seq_len², in their current order) are `costs`, such that every
    step of `world_size` ranks × `micro_batch` rows, read without shuffling as `layout` deals them, gives
    the ranks near-equal costs. See the module docstring for the algorithm, the last partial group and the
    report's figures (`report["before"]` is this order read as it is, `report["after"]` the new one)."""
    _check(world_size, micro_batch, layout, window)
    costs = np.asarray(costs)
    if costs.ndim != 1 or (costs.size and costs.dtype.kind not in "iuf"):
        raise ValueError(f"costs must be a 1-D array of numbers, got {costs.dtype} {costs.shape}")
    costs = costs.astype(np.float64, copy=False)
    n = len(costs)
    group = world_size * micro_batch
    full = n // group
    rng = np.random.default_rng(seed)
    slots = _slots(world_size, micro_batch, layout)
    order = np.arange(n, dtype=np.int64)
    if full:
        # windows of `window` groups (the last one may hold fewer): sort each window's rows by cost
        # (descending, ties by position) and cut it into steps of similar rows
        positions = np.arange(full * group, dtype=np.int64)
        window_of = positions // (window * group)
        by_cost = np.lexsort((positions, -costs[: full * group], window_of))
        steps = by_cost.reshape(full, group)  # each step's rows, costliest first
        rank = _lpt(costs[steps], np.full((full, world_size), micro_batch))
        offset = _place(rank, slots)
        laid = np.empty_like(steps)
        np.put_along_axis(laid, offset, steps, axis=1)
        # the steps of each window in a seeded random order
        step_window = np.arange(full) // window
        step_order = np.lexsort((rng.random(full), step_window))
        order[: full * group] = laid[step_order].reshape(-1)
    partial = n - full * group
    if partial:
        rows = np.arange(full * group, n, dtype=np.int64)
        rows = rows[np.argsort(-costs[rows], kind="stable")]
        flat = slots.reshape(-1)
        capacity = np.bincount(np.broadcast_to(np.arange(world_size)[:, None], slots.shape).reshape(-1)[flat < partial],
                               minlength=world_size)
        # the partial group's own slots: offsets below `partial`, each rank's in reading order
        part_slots = np.full_like(slots, -1)
        for r in range(world_size):
            mine = np.sort(slots[r][slots[r] < partial])
            part_slots[r, : len(mine)] = mine
        rank = _lpt(costs[rows][None, :], capacity[None, :])
        offset = _place(rank, part_slots)[0]
        tail = np.empty(partial, dtype=np.int64)
        tail[offset] = rows
        order[full * group:] = tail
    report = {
        "world_size": int(world_size),
        "micro_batch": int(micro_batch),
        "layout": layout,
        "window": int(window),
        "seed": int(seed),
        "rows": int(n),
        "partial_rows": int(partial),
        "before": imbalance(costs, world_size, micro_batch, layout=layout),
        "after": imbalance(costs[order], world_size, micro_batch, layout=layout),
    }
    return BalanceResult(order=order, report=report)


def balance_rows(costs: np.ndarray, world_size: int, micro_batch: int = 1, **options) -> tuple[np.ndarray, dict]:
    """What a writer calls with the costs of its rows in their shuffled order: (the order to write them
    in, as positions into that shuffled order; the report for the metadata). `balance_order`, unpacked."""
    result = balance_order(costs, world_size, micro_batch, **options)
    return result.order, result.report
