"""Bin packing of tokenised sequences into fixed-size rows for padding-free training.

Each sequence has a length in tokens; a row (bin) holds whole sequences whose
lengths sum to at most ``max_length``. Fewer rows means less padding and fewer
optimiser steps wasted on empty space, so the default strategy is best-fit
decreasing ("bfd") followed by `fill_gaps`, which re-packs the rows with the most
free space into fewer rows when best fit is above the lower bound; the legacy
next-fit-decreasing ("greedy") is kept so old outputs can be reproduced.

Both strategies are deterministic: items are visited longest first, ties by
index ascending, and bins are returned in creation order with indices in the
order they were placed (after `fill_gaps`, the rows it re-packed take the places of
the first of them). The output depends only on the sequence of lengths and
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
    "fill_gaps",
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

    This is best-fit decreasing alone; ``pack(..., "bfd")`` and `pack_flat` follow it with `fill_gaps`.
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


# `fill_gaps` work: one unit is one step of filling a row (a bulk take, a pair searched, a value
# tried in that search) or one sequence gathered into the pool. The cap is a fixed amount plus a few units a
# sequence, so whatever the lengths the pass costs at most a small multiple of reading the rows once.
FILL_WORK_BASE = 200_000
FILL_WORK_PER_SEQUENCE = 1
FILL_FIRST_ROWS = 64  # rows re-packed in the first attempt; doubled after each attempt that saves no row
FILL_SLACK_PER_ROW = 8  # free tokens each of an attempt's rows must keep on average once one row is saved
# (at most a thousandth of max_length)
FILL_PAIR_SCAN = 8  # values tried as the first of a pair when filling what is left of a row
FILL_ROUNDS = 4  # attempts that saved rows, at most
FILL_STEP_MAX = 2 * FILL_PAIR_SCAN + 1  # units of one step: what the cap can be passed by


class _OutOfWork(Exception):
    pass


def fill_gaps(
    lengths: LengthsLike, items: np.ndarray, offsets: np.ndarray, max_length: int, *, stats: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Re-pack the rows with the most free space into fewer rows while the rows are above the lower bound.

    Best-fit decreasing fills each row with the longest sequences first and the shortest last: it can end with
    rows whose free space is shorter than any sequence left (a row of seven 1164-token sequences has 44
    tokens free) and a last row of short sequences that fit in no gap (60 MB of chat: 1752 rows for a lower
    bound of 1750, the last one 107 sequences of 49 tokens). This pass takes the K rows with the most free
    space (the last of equal free space first), K = `FILL_FIRST_ROWS`, 128, 256, ... up to all rows, skipping
    a K whose rows would keep fewer than `FILL_SLACK_PER_ROW` free tokens each on average without one of
    them, and packs all their sequences again, one row after the other, each row filled as exactly as it can:

    * while the longest length that leaves room for two of the shortest would still leave more than twice
      the longest length left, copies of it are taken at once (as many as leave that much room);
    * then the pair of lengths with the largest sum that fits (the first length among the `FILL_PAIR_SCAN`
      longest that fit, the second by binary search; an exact fill ends the search), or the single longest
      that fits, until nothing fits.

    Lengths are drawn from a table of counts of distinct lengths (sequences of one length are taken lowest
    index first), so a run of equal lengths costs one step. If the K rows need K rows or more again, the
    attempt is dropped and K doubles; once an attempt saves rows it replaces those rows (the new rows take
    the places of the first of them, the others keep their order and contents) and the pass starts again
    from the new rows, with attempts no larger than that one, `FILL_ROUNDS` times at most, until the lower
    bound is met. Work is capped at
    ``FILL_WORK_BASE + FILL_WORK_PER_SEQUENCE * n`` units (see above); an attempt cut by the cap is dropped.

    Valid rows in, valid rows out (every sequence once, each row at most max_length), never more rows than
    given; deterministic: rows by (free space, index), lengths by value, sequences by index, no randomness
    and no hashing but of integers. `stats`, when given, receives ``work``, ``cap``, ``attempts`` and
    ``rows_removed``. Memory: the rows' free space and, for an attempt, its sequences (a few integers each).

    Best-fit decreasing leaves 1, 0, 1 and 14 tokens free here; the pass fills every row:

    >>> lengths = [11, 1, 2, 3, 6, 15, 2, 6, 2]
    >>> items, offsets = _bfd_flat(lengths, 16)
    >>> _as_lists(items, offsets), lower_bound(sum(lengths), 16)
    ([[5], [0, 2, 6, 1], [4, 7, 3], [8]], 3)
    >>> _as_lists(*fill_gaps(lengths, items, offsets, 16))
    [[5, 1], [0, 3, 2], [4, 7, 6, 8]]
    """
    m_len = _check_max_length(max_length)
    arr = _as_lengths(lengths, m_len)
    n = arr.shape[0]
    cap = FILL_WORK_BASE + FILL_WORK_PER_SEQUENCE * n
    counters = {"work": 0, "cap": cap, "attempts": 0, "rows_removed": 0}
    bound = lower_bound(int(arr.sum()), m_len)
    out_items, out_offsets = items, offsets
    budget = [cap]
    largest = None  # attempts after the first round that saved rows are no larger than that one's
    try:
        for _ in range(FILL_ROUNDS):
            rows = len(out_offsets) - 1
            if rows <= bound:
                break
            got = _refill_once(arr, out_items, out_offsets, m_len, budget, counters, largest)
            if got is None:
                break
            out_items, out_offsets, largest = got
    except _OutOfWork:
        pass
    counters["work"] = cap - budget[0]
    counters["rows_removed"] = len(offsets) - len(out_offsets)
    if stats is not None:
        stats.update(counters)
    return out_items, out_offsets


def _refill_once(arr, items, offsets, m_len, budget, counters, largest):
    """One round of `fill_gaps`: the new (items, offsets, rows re-packed) with fewer rows, or None if no
    attempt (of at most `largest` rows, when given) saved one."""
    offsets = np.asarray(offsets, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    rows = len(offsets) - 1
    counts = np.diff(offsets)
    gap = m_len - np.add.reduceat(arr[items], offsets[:-1])
    by_gap = np.lexsort((-np.arange(rows), -gap))  # most free space first, ties: the last row first
    free = np.cumsum(gap[by_gap])
    slack = min(FILL_SLACK_PER_ROW, m_len // 1024)
    k = FILL_FIRST_ROWS
    last = rows if largest is None else min(rows, largest)
    while True:
        k = min(k, last)
        if free[k - 1] - m_len >= slack * (k - 1):
            chosen = np.sort(by_gap[:k])
            got = _repack(arr, items, offsets, counts, chosen, m_len, budget, counters)
            if got is not None:
                return (*got, k)
        if k == last:
            return None
        k *= 2


def _spans(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The positions ``starts[i] .. starts[i] + sizes[i] - 1`` of each span, one span after the other."""
    ends = np.cumsum(sizes)
    return np.repeat(starts - (ends - sizes), sizes) + np.arange(int(ends[-1]) if len(ends) else 0)


def _spend(budget: list[int], units: int) -> None:
    if units > budget[0]:
        raise _OutOfWork
    budget[0] -= units


def _repack(arr, items, offsets, counts, chosen, m_len, budget, counters):
    """Pack the sequences of rows `chosen` (ascending) again; the new packing if it has fewer rows, else None."""
    counters["attempts"] += 1
    spans = counts[chosen]
    _spend(budget, int(spans.sum()))
    seqs = np.sort(items[_spans(offsets[chosen], spans)])
    by_len = seqs[np.argsort(arr[seqs], kind="stable")]  # by length, then by index
    values, first, per_value = np.unique(arr[by_len], return_index=True, return_counts=True)
    cnt = dict(zip(values.tolist(), per_value.tolist()))
    start = dict(zip(values.tolist(), first.tolist()))  # next sequence of each length in `by_len`
    vals = values.tolist()  # lengths left, ascending
    new_rows: list[list[tuple[int, int]]] = []  # each row as (length, copies)
    steps = 0

    def take(row: list, v: int, c: int) -> None:
        row.append((v, c))
        left = cnt[v] - c
        if left:
            cnt[v] = left
        else:
            del cnt[v]
            del vals[bisect.bisect_left(vals, v)]

    while vals:
        if len(new_rows) >= len(chosen) - 1:
            return None  # no row saved
        row: list[tuple[int, int]] = []
        room = m_len
        while vals and room >= vals[0]:
            if steps > budget[0]:  # checked before each step: the cap is passed by one step at most
                budget[0] -= steps
                raise _OutOfWork
            if room in cnt:
                take(row, room, 1)
                break
            top = vals[-1]
            i = bisect.bisect_right(vals, room - 2 * vals[0]) - 1  # the longest that leaves room for two
            if i >= 0 and room - vals[i] > 2 * top:  # far from full: copies of it, leaving 2 * top
                v = vals[i]
                c = min(cnt[v], max(1, (room - 2 * top) // v))
                take(row, v, c)
                room -= c * v
                steps += 1
                continue
            # the pair (or single) with the largest sum that fits: an exact pair first (a lookup each),
            # else the best by binary search, among the FILL_PAIR_SCAN longest lengths that fit
            i = bisect.bisect_right(vals, room) - 1
            scan = vals[max(0, i - FILL_PAIR_SCAN + 1) : i + 1]
            steps += 1 + len(scan)
            pa = pb = 0
            for a in reversed(scan):
                b = room - a
                if b in cnt and (b != a or cnt[a] > 1):
                    pa, pb = a, b
                    break
            if pa:
                best = 0
            else:
                best = room + 1
                for a in reversed(scan):
                    rest = room - a
                    if rest < best:
                        best, pa, pb = rest, a, 0
                    j = bisect.bisect_right(vals, rest) - 1
                    if j >= 0 and vals[j] == a and cnt[a] < 2:
                        j -= 1
                    if j >= 0 and rest - vals[j] < best:
                        best, pa, pb = rest - vals[j], a, vals[j]
                steps += len(scan)
            if pb == pa:
                take(row, pa, 2)
            else:
                take(row, pa, 1)
                if pb:
                    take(row, pb, 1)
            room = best
        budget[0] -= steps
        steps = 0
        if budget[0] < 0:
            raise _OutOfWork
        new_rows.append(row)
    # sequences of each length in index order, row after row
    picked = []
    sizes = []
    for row in new_rows:
        size = 0
        for v, c in row:
            s = start[v]
            picked.append(by_len[s : s + c])
            start[v] = s + c
            size += c
        sizes.append(size)
    new_items = np.concatenate(picked)
    # the new rows take the places of the first chosen rows; the other chosen rows go
    new_counts = counts.copy()
    new_counts[chosen] = 0
    new_counts[chosen[: len(new_rows)]] = sizes
    out_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(new_counts, out=out_offsets[1:])
    out = np.empty(len(items), dtype=np.int64)
    keep = np.ones(len(counts), dtype=bool)
    keep[chosen] = False
    kept_pos = np.repeat(keep, counts)
    shift = np.repeat(out_offsets[:-1] - offsets[:-1], counts)
    out[(np.arange(len(items)) + shift)[kept_pos]] = items[kept_pos]
    out[_spans(out_offsets[chosen[: len(new_rows)]], np.asarray(sizes, dtype=np.int64))] = new_items
    nonempty = new_counts > 0
    return out, np.concatenate(([0], out_offsets[1:][nonempty]))


def pack_flat(lengths: LengthsLike, max_length: int, strategy: str = "bfd") -> tuple[np.ndarray, np.ndarray]:
    """`pack` as (items, offsets) numpy arrays: row i holds ``items[offsets[i]:offsets[i + 1]]``.

    The same rows as `pack`, in the same order, without a Python object per item (what big files and
    mixes of many sequences pack with). ``"bfd"`` is best-fit decreasing followed by `fill_gaps`.
    """
    if strategy == "bfd":
        items, offsets = _bfd_flat(lengths, max_length)
        return fill_gaps(lengths, items, offsets, max_length)
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
    """Pack with the named strategy: ``"bfd"`` (best-fit decreasing, then `fill_gaps`) or ``"greedy"``.

    >>> pack([5, 3, 4, 2, 6], 10, "bfd")
    [[4, 2], [0, 1, 3]]
    """
    if strategy == "bfd":
        return _as_lists(*pack_flat(lengths, max_length, "bfd"))
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
