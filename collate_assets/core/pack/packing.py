"""Bin packing of tokenised sequences into fixed-size rows for padding-free training.

Each sequence has a length in tokens; a row (bin) holds whole sequences whose
lengths sum to at most ``max_length``. Fewer rows means less padding and fewer
optimiser steps wasted on empty space, so the default strategy is best-fit
decreasing ("bfd"); the legacy next-fit-decreasing ("greedy") is kept so old
outputs can be reproduced.

Both strategies are deterministic: items are visited longest first, ties by
index ascending, and bins are returned in creation order with indices in the
order they were placed. The output depends only on the sequence of lengths and
``max_length`` (not on the container type), so re-running a job yields the same
rows.

>>> pack_best_fit_decreasing([5, 3, 4, 2, 6], 10)
[[4, 2], [0, 1, 3]]
>>> pack_greedy([5, 3, 4, 2, 6], 10)
[[4], [0, 2], [1, 3]]
>>> lower_bound(20, 10)
2

Only numpy and the standard library are used so this module can be imported
(and tested) without the rest of the engine.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import bisect

import numpy as np

__all__ = [
    "STRATEGIES",
    "lower_bound",
    "pack",
    "pack_flat",
    "pack_best_fit_decreasing",
    "pack_greedy",
]

STRATEGIES: tuple[str, ...] = ("bfd", "greedy")

LengthsLike = Sequence[int] | np.ndarray


def _check_max_length(max_length: int) -> int:
    try:
        m = operator.index(max_length)
    except TypeError:
        raise TypeError(f"max_length must be an integer, got {type(max_length).__name__}") from None
    if m < 1:
        raise ValueError(f"max_length must be >= 1, got {m}")
    return m


def _as_lengths(lengths: LengthsLike, max_length: int) -> np.ndarray:
    """Validate ``lengths`` and return them as a 1-D int64 array."""
    arr = np.asarray(lengths)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {arr.shape}")
    # Booleans and floats are almost certainly a caller bug (e.g. a mask or a
    # mean passed by mistake); silently truncating them would hide it.
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
    bad = (arr < 1) | (arr > max_length)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"length at index {i} is {int(arr[i])}; every length must be in 1..{max_length} "
            "(overlong sequences must be truncated, split or dropped before packing)"
        )
    return arr.astype(np.int64, copy=False)


def _decreasing_order(arr: np.ndarray) -> np.ndarray:
    # A stable sort on the negated lengths gives "longest first, ties by index
    # ascending" without a second key; values are <= max_length so no overflow.
    return np.argsort(-arr, kind="stable")


def pack_best_fit_decreasing(lengths: LengthsLike, max_length: int) -> list[list[int]]:
    """Pack sequence indices into bins with best-fit decreasing.

    Items are taken longest first (ties: lower index first). Each goes into the
    open bin with the *smallest* remaining capacity that still fits it, or into a
    new bin if none does. Among several bins with that same remaining capacity the
    one that most recently reached it is chosen (LIFO); this is deterministic and
    is what keeps filling the bin that just took an item of the same length.

    Bins are returned in creation order, indices within a bin in insertion order.
    Every length must be in ``1..max_length`` (``ValueError`` otherwise).

    >>> pack_best_fit_decreasing([5, 3, 4, 2, 6], 10)
    [[4, 2], [0, 1, 3]]
    >>> pack_best_fit_decreasing([], 8)
    []

    Complexity is O(n log n) for the sort plus, per run of equal lengths, a binary search over the
    capacities in use; memory follows the number of bins, never max_length.
    """
    items, offsets = _bfd_flat(lengths, max_length)
    return _as_lists(items, offsets)


def _as_lists(items: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    flat, bounds = items.tolist(), offsets.tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _bfd_flat(lengths: LengthsLike, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit decreasing as (items, offsets): bin i holds ``items[offsets[i]:offsets[i + 1]]``.

    The bin of each item is recorded in one integer array while items are placed, and the bins are
    made from it at the end (a stable sort keeps each bin's insertion order): a few numpy integers an
    item instead of a Python list per bin and an int object per item.
    """
    m_len = _check_max_length(max_length)
    arr = _as_lengths(lengths, m_len)
    n = arr.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    order = _decreasing_order(arr)
    sorted_len = arr[order]
    # Items of equal length are handled as one run: a single bin can take several of them at once and
    # new bins are made in bulk, which is where almost all the time would otherwise go.
    cuts = np.flatnonzero(sorted_len[1:] != sorted_len[:-1]) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    ends = np.concatenate((cuts, [n])).tolist()
    run_lengths = sorted_len[starts].tolist()
    del sorted_len, cuts
    bin_of = np.empty(n, dtype=np.int64)  # the bin of the item placed p-th (items in `order`)
    caps: list[int] = []  # capacities with at least one open bin, ascending
    stacks: dict[int, list[int]] = {}
    bins = 0

    def push(c: int, ids) -> None:
        dest = stacks.get(c)
        if dest is None:
            stacks[c] = list(ids)
        else:
            dest.extend(ids)

    for s, p, end in zip(run_lengths, starts, ends):
        rem = end - p
        touched: list[int] = []
        # Existing bins, in ascending free space from s up. A bin with c free tokens takes
        # min(c // s, rem) items and then has fewer than s free (or the run is done), so `caps` can
        # be brought up to date once the run ends: what changed is below s or behind the cursor.
        k_cap = bisect.bisect_left(caps, s)
        while rem and k_cap < len(caps):
            c = caps[k_cap]
            stack = stacks[c]
            touched.append(c)
            per_bin = c // s
            while stack and rem:
                b = stack.pop()
                k = per_bin if per_bin < rem else rem
                if k == 1:
                    bin_of[p] = b
                else:
                    bin_of[p : p + k] = b
                p += k
                rem -= k
                nc = c - k * s
                if nc:
                    push(nc, (b,))
                    touched.append(nc)
            k_cap += 1
        if rem:  # nothing open fits: new bins, each taking per_bin items (the last bin the rest)
            per_bin = m_len // s
            full = rem // per_bin
            first = bins
            if full:
                bin_of[p : p + full * per_bin] = np.arange(full * per_bin, dtype=np.int64) // per_bin + first
            bins += full
            p += full * per_bin
            nc = m_len - per_bin * s
            if nc and full:
                push(nc, range(first, first + full))
                touched.append(nc)
            last = end - p
            if last:
                bin_of[p:end] = bins
                bins += 1
                nc = m_len - last * s
                push(nc, (bins - 1,))
                touched.append(nc)
        for c in set(touched):
            i = bisect.bisect_left(caps, c)
            present = i < len(caps) and caps[i] == c
            if stacks.get(c):
                if not present:
                    caps.insert(i, c)
            else:
                stacks.pop(c, None)
                if present:
                    del caps[i]
    placed = np.argsort(bin_of, kind="stable")  # placements grouped by bin, each bin in insertion order
    items = order[placed]
    del placed, order
    offsets = np.zeros(bins + 1, dtype=np.int64)
    np.cumsum(np.bincount(bin_of, minlength=bins), out=offsets[1:])
    return items, offsets


def pack_flat(lengths: LengthsLike, max_length: int, strategy: str = "bfd") -> tuple[np.ndarray, np.ndarray]:
    """`pack` as (items, offsets) numpy arrays: row i holds ``items[offsets[i]:offsets[i + 1]]``.

    The same rows as `pack`, in the same order, without a Python object per item (what big files and
    mixes of many sequences pack with).
    """
    if strategy == "bfd":
        return _bfd_flat(lengths, max_length)
    rows = pack(lengths, max_length, strategy)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    items = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(offsets[-1]))
    return items, offsets


def pack_greedy(lengths: LengthsLike, max_length: int) -> list[list[int]]:
    """Pack with the legacy next-fit decreasing strategy.

    Items are taken longest first (ties: lower index first) into a single open
    bin; when the next item does not fit, that bin is closed for good and a new
    one opened. Kept for reproducing outputs made before best-fit was the default.

    >>> pack_greedy([5, 3, 4, 2, 6], 10)
    [[4], [0, 2], [1, 3]]
    """
    m_len = _check_max_length(max_length)
    arr = _as_lengths(lengths, m_len)
    if arr.shape[0] == 0:
        return []
    order = _decreasing_order(arr)
    bins: list[list[int]] = []
    current: list[int] = []
    free = m_len
    for idx, s in zip(order.tolist(), arr[order].tolist()):
        if s > free:
            bins.append(current)
            current = []
            free = m_len
        current.append(idx)
        free -= s
    bins.append(current)
    return bins


def pack(lengths: LengthsLike, max_length: int, strategy: str = "bfd") -> list[list[int]]:
    """Pack with the named strategy: ``"bfd"`` (best-fit decreasing) or ``"greedy"``.

    >>> pack([5, 3, 4, 2, 6], 10, "bfd")
    [[4, 2], [0, 1, 3]]
    """
    if strategy == "bfd":
        return pack_best_fit_decreasing(lengths, max_length)
    if strategy == "greedy":
        return pack_greedy(lengths, max_length)
    raise ValueError(f"unknown packing strategy {strategy!r}; expected one of {STRATEGIES}")


def lower_bound(total_tokens: int, max_length: int) -> int:
    """Fewest rows any packing could use: ``ceil(total_tokens / max_length)``.

    >>> lower_bound(0, 8), lower_bound(8, 8), lower_bound(9, 8)
    (0, 1, 2)
    """
    m_len = _check_max_length(max_length)
    total = operator.index(total_tokens)
    if total < 0:
        raise ValueError(f"total_tokens must be >= 0, got {total}")
    return -(-total // m_len)
