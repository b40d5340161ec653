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

import numpy as np

__all__ = [
    "STRATEGIES",
    "lower_bound",
    "pack",
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

    Complexity is O(n log n) for the sort plus O(n log max_length) for placement.
    """
    m_len = _check_max_length(max_length)
    arr = _as_lengths(lengths, m_len)
    n = arr.shape[0]
    if n == 0:
        return []

    if m_len > _TREE_MAX_LENGTH:
        return _bfd_sorted_capacities(arr, m_len)
    order = _decreasing_order(arr)
    sorted_len = arr[order]
    # Items of equal length are handled as one run: that lets a single bin take
    # several of them at once and lets new bins be created in bulk, which is
    # where almost all the time would otherwise go for large inputs.
    cuts = np.flatnonzero(sorted_len[1:] != sorted_len[:-1]) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    ends = np.concatenate((cuts, [n])).tolist()
    run_lengths = sorted_len[starts].tolist()
    order_list = order.tolist()

    # Segment tree over remaining capacities 0..max_length. Leaf c holds c if at
    # least one open bin has exactly c free tokens, else -1; inner nodes hold the
    # max of their children. "Smallest capacity >= s with a bin" is then a single
    # root-to-leaf walk: go left whenever the left subtree's max is >= s.
    size = 1 << m_len.bit_length()  # power of two > max_length, so leaf max_length exists
    tree = [-1] * (2 * size)
    # stacks[c]: ids of open bins with c free tokens, most recent last. Created
    # lazily because max_length may be large while few capacities are in use.
    stacks: list[list[int] | None] = [None] * (m_len + 1)
    bins: list[list[int]] = []

    for s, p, end in zip(run_lengths, starts, ends):
        rem = end - p
        touched: list[int] = []

        # Phase 1: existing bins, visited in ascending capacity from s upwards.
        # A bin with c free tokens takes min(c // s, rem) items and drops below s,
        # so it cannot be picked again in this run. That also means the tree need
        # not be updated until the run ends: every capacity that changes is either
        # below s or behind the cursor, and the search always starts past both.
        lo = s
        while rem and tree[1] >= lo:
            i = 1
            while i < size:
                i <<= 1
                if tree[i] < lo:
                    i += 1
            c = i - size
            stack = stacks[c]
            touched.append(c)
            per_bin = c // s
            while stack and rem:
                b = stack.pop()
                k = per_bin if per_bin < rem else rem
                if k == 1:
                    bins[b].append(order_list[p])
                else:
                    bins[b].extend(order_list[p : p + k])
                p += k
                rem -= k
                nc = c - k * s
                if nc:
                    dest = stacks[nc]
                    if dest is None:
                        stacks[nc] = [b]
                    else:
                        dest.append(b)
                    touched.append(nc)
            lo = c + 1

        # Phase 2: nothing left fits, so open new bins. Each new bin would be the
        # best fit for the next item of this run until it has fewer than s free
        # tokens, so it takes per_bin items; the bins are made in bulk.
        if rem:
            per_bin = m_len // s
            full = rem // per_bin
            first = len(bins)
            if per_bin == 1:
                bins += [[x] for x in order_list[p:end]]
            else:
                bins += [order_list[j : j + per_bin] for j in range(p, p + full * per_bin, per_bin)]
            p += full * per_bin
            nc = m_len - per_bin * s
            if nc and full:
                dest = stacks[nc]
                if dest is None:
                    stacks[nc] = list(range(first, first + full))
                else:
                    dest.extend(range(first, first + full))
                touched.append(nc)
            last = end - p
            if last:
                # Created after the full bins, so it is pushed last (LIFO rule).
                bins.append(order_list[p:end])
                nc = m_len - last * s
                dest = stacks[nc]
                if dest is None:
                    stacks[nc] = [len(bins) - 1]
                else:
                    dest.append(len(bins) - 1)
                touched.append(nc)

        # Bring the tree in line with the stacks for every capacity this run used.
        for c in touched:
            want = c if stacks[c] else -1
            i = c + size
            if tree[i] == want:
                continue
            tree[i] = want
            if want >= 0:
                # Maxima only grow here, so stop at the first ancestor already >= c.
                i >>= 1
                while i and tree[i] < want:
                    tree[i] = want
                    i >>= 1
            else:
                i >>= 1
                while i:
                    a = tree[2 * i]
                    b2 = tree[2 * i + 1]
                    v = a if a > b2 else b2
                    if tree[i] == v:
                        break
                    tree[i] = v
                    i >>= 1

    return bins


# Up to this max_length the capacities are indexed by a segment tree over 0..max_length (a few MB at
# most); beyond it, by a sorted list of the capacities in use, so memory follows the number of rows
# and never max_length itself.
_TREE_MAX_LENGTH = 1 << 16


def _bfd_sorted_capacities(arr: np.ndarray, m_len: int) -> list[list[int]]:
    """Best-fit decreasing exactly as above, with the open capacities in a sorted list (any max_length)."""
    import bisect

    n = arr.shape[0]
    order = _decreasing_order(arr)
    sorted_len = arr[order]
    cuts = np.flatnonzero(sorted_len[1:] != sorted_len[:-1]) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    ends = np.concatenate((cuts, [n])).tolist()
    run_lengths = sorted_len[starts].tolist()
    order_list = order.tolist()
    caps: list[int] = []  # capacities with at least one open bin, ascending
    stacks: dict[int, list[int]] = {}
    bins: list[list[int]] = []

    def push(c: int, ids) -> None:
        dest = stacks.get(c)
        if dest is None:
            stacks[c] = list(ids)
        else:
            dest.extend(ids)

    for s, p, end in zip(run_lengths, starts, ends):
        rem = end - p
        touched: list[int] = []
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
                    bins[b].append(order_list[p])
                else:
                    bins[b].extend(order_list[p : p + k])
                p += k
                rem -= k
                nc = c - k * s
                if nc:
                    push(nc, (b,))
                    touched.append(nc)
            k_cap += 1
        if rem:
            per_bin = m_len // s
            full = rem // per_bin
            first = len(bins)
            if per_bin == 1:
                bins += [[x] for x in order_list[p:end]]
            else:
                bins += [order_list[j : j + per_bin] for j in range(p, p + full * per_bin, per_bin)]
            p += full * per_bin
            nc = m_len - per_bin * s
            if nc and full:
                push(nc, range(first, first + full))
                touched.append(nc)
            last = end - p
            if last:
                bins.append(order_list[p:end])
                nc = m_len - last * s
                push(nc, (len(bins) - 1,))
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
    return bins


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
