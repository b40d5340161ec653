"""The spill: an Arrow IPC file (random access) of tokenized sequences, and packing it into an output.

    pack_spill(spill, output, fmt, settings) -> PackStats

One record per sequence (input_ids, labels, line). The spill is read through pyarrow's IPC file
reader over a memory map: packing needs only the list offsets (the lengths); each write group's
rows are then gathered from numpy views of the mapped record batches. The map is re-opened for
every RELEASE_BYTES of spill data read, so the pages read leave the resident set as soon as they
are used (they are clean pages of the file: closing the map drops them, the page cache keeps
them): peak memory does not grow with the spill's size.

Rows are written in the order packing makes them, or, with the `balance_ranks` setting, shuffled and
ordered for data-parallel ranks of equal attention cost (`balanced_rows`, balance.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import packing
from ..write.arrays import to_arrow, to_numpy
from ..errors import CollateError
from ..settings import IGNORE_INDEX, CollateSettings, check_format
from ..stats import PackStats
from ..tokens.sequences import SPILL_SCHEMA, SPILL_SCHEMA_V1, SPILL_SCHEMA_WEIGHTED
from ..write.writers import packed_schema, packed_writer

# Rows are gathered and written in batches of about this many tokens (bounded memory).
WRITE_BATCH_TOKENS = 1 << 22
# At most about this many bytes of the spill are mapped into memory at once (see _batches).
RELEASE_BYTES = 1 << 26


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where each sequence of a spill is: its length, its record batch, its first token there."""

    lengths: np.ndarray  # int64, per sequence in file order
    batch: np.ndarray  # int64, the record batch holding it
    first: np.ndarray  # int64, the index of its first token in that batch's input_ids (and labels) values
    weighted: bool = False  # the spill has loss_weights (the loss_weights setting)


@contextlib.contextmanager
def _open_spill(path: str | Path) -> Iterator[pa.ipc.RecordBatchFileReader]:
    """The IPC file reader of a spill over a memory map; the file is unmapped once the block has
    ended and no buffer of it is left (then the pages read leave this process's resident set)."""
    try:
        if os.stat(path).st_size == 0:
            raise CollateError(f"{path}: spill file is empty")
        source = pa.memory_map(str(path))
    except FileNotFoundError as exc:
        raise CollateError(f"{path}: spill file not found; tokenize again") from exc
    try:
        try:
            # Through a BufferReader over the mapped bytes: reading a batch is then only slicing
            # them (the memory-mapped file itself would madvise(WILLNEED) every batch, 6x slower).
            reader = pa.ipc.open_file(pa.BufferReader(source.read_buffer()))
        except pa.ArrowInvalid as exc:
            raise CollateError(f"{path}: not a spill file ({exc}); tokenize again") from exc
        if not any(reader.schema.equals(schema) for schema in (SPILL_SCHEMA, SPILL_SCHEMA_WEIGHTED, SPILL_SCHEMA_V1)):
            raise CollateError(f"{path}: not a spill file (columns {reader.schema.names}); tokenize again")
        yield reader
    finally:
        source.close()


def _batches(path: str | Path, indices) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(index, record batch) for the batches `indices` of a spill, in that order.

    The file is mapped afresh once the batches yielded hold RELEASE_BYTES (so at most about that
    much of it is resident at a time); a batch must not be kept after the next one is asked for.
    """
    indices = iter(indices)
    index = next(indices, None)
    while index is not None:
        with _open_spill(path) as reader:
            mapped = 0
            while index is not None and mapped < RELEASE_BYTES:
                try:
                    batch = reader.get_batch(index)
                except (pa.ArrowInvalid, OSError) as exc:
                    raise CollateError(f"{path}: record batch {index} is unreadable ({exc}); tokenize again") from exc
                mapped += batch.get_total_buffer_size()
                yield index, batch
                del batch
                index = next(indices, None)
            del reader


def _read_layout(path: str | Path) -> _Layout:
    """The layout of a spill, from the list offsets of its record batches only."""
    with _open_spill(path) as reader:
        count = reader.num_record_batches
        weighted = "loss_weights" in reader.schema.names
    lengths, firsts = [], []
    for _, batch in _batches(path, range(count)):
        offsets = to_numpy(batch.column(0).offsets).astype(np.int64)
        if not np.array_equal(offsets, to_numpy(batch.column(1).offsets)):
            raise CollateError(f"{path}: input_ids and labels of a sequence differ in length; tokenize again")
        lengths.append(np.diff(offsets))
        firsts.append(offsets[:-1])
        del batch, offsets
    if not lengths:  # a spill of an input without a usable conversation has no record batch
        empty = np.zeros(0, dtype=np.int64)
        return _Layout(empty, empty, empty, weighted)
    counts = np.fromiter((len(n) for n in lengths), dtype=np.int64, count=len(lengths))
    return _Layout(
        lengths=np.concatenate(lengths),
        batch=np.repeat(np.arange(len(lengths), dtype=np.int64), counts),
        first=np.concatenate(firsts),
        weighted=weighted,
    )


def spill_lengths(spill_path: str | Path) -> np.ndarray:
    """Sequence lengths of a spill file, read from its list offsets only."""
    return _read_layout(spill_path).lengths


def _gather_tokens(path: str | Path, layout: _Layout, seqs: np.ndarray, *, weights: bool = False):
    """The input_ids and labels of the sequences `seqs`, one after the other, as int32 arrays (and with
    `weights`, their loss weights as float32, or None when the spill has none).

    Read in file order (sequence numbers follow the file), batch by batch through numpy views of
    the mapped values, and copied to where each sequence goes in the output.
    """
    seq_lengths = layout.lengths[seqs]
    dest = np.zeros(len(seqs), dtype=np.int64)
    np.cumsum(seq_lengths[:-1], out=dest[1:])
    ids = np.empty(int(seq_lengths.sum()), dtype=np.int32)
    labels = np.empty_like(ids)
    loss_weights = np.empty(len(ids), dtype=np.float32) if weights and layout.weighted else None
    order = np.argsort(seqs, kind="stable")
    in_file_order = seqs[order]
    batches = layout.batch[in_file_order]
    wanted = np.unique(batches)
    per_batch = np.searchsorted(batches, wanted, side="right")
    starts = layout.first[in_file_order].tolist()
    ends = (layout.first[in_file_order] + seq_lengths[order]).tolist()
    dests = dest[order].tolist()
    done = 0
    for (index, batch), stop in zip(_batches(path, wanted.tolist()), per_batch.tolist()):
        id_values = to_numpy(batch.column(0).values)
        label_values = to_numpy(batch.column(1).values)
        weight_values = to_numpy(batch.column("loss_weights").values) if loss_weights is not None else None
        for start, end, to in zip(starts[done:stop], ends[done:stop], dests[done:stop]):
            ids[to : to + end - start] = id_values[start:end]
            labels[to : to + end - start] = label_values[start:end]
            if weight_values is not None:
                loss_weights[to : to + end - start] = weight_values[start:end]
        done = stop
        del batch, id_values, label_values, weight_values
    return (ids, labels, loss_weights) if weights else (ids, labels)


def pack_spill(spill_path: str | Path, output_path: str | Path, fmt: str, settings: CollateSettings) -> PackStats:
    """Pack the sequences of a spill file into rows of at most max_length and write them as `fmt`."""
    check_format(fmt)
    max_length = settings.max_length
    stats = PackStats(output=str(output_path), format=fmt, max_length=max_length, packing=settings.packing)
    clock = time.perf_counter()
    layout = _read_layout(spill_path)
    lengths = layout.lengths
    stats.stage_seconds["read"] = time.perf_counter() - clock
    if len(lengths) and lengths.max() > max_length:
        raise CollateError(
            f"{spill_path}: a sequence has {int(lengths.max())} tokens > max_length {max_length}; "
            "tokenize again with this max_length"
        )
    clock = time.perf_counter()
    items, offsets = packing.pack_flat(lengths, max_length, settings.packing)
    counts = np.diff(offsets)
    order = None  # rows in packing order; with balance_ranks, the order they are written in
    if settings.balance_shape() is not None:
        order, stats.balance = balanced_rows(lengths, items, offsets, settings)
    stats.stage_seconds["pack"] = time.perf_counter() - clock

    def gather(first: int, end: int) -> pa.RecordBatch:
        """Rows first..end-1 (of `order` when given) as a record batch."""
        if order is None:
            seqs = items[offsets[first]:offsets[end]]
            row_counts = counts[first:end]
        else:
            rows = order[first:end]
            row_counts = counts[rows]
            seqs = items[_expand(offsets[rows], row_counts)]
        ids, labels, weights = _gather_tokens(spill_path, layout, seqs, weights=True)
        batch, row_tokens = rows_batch(ids, labels, lengths[seqs], row_counts, weights)
        stats.rows += end - first
        stats.tokens += len(ids)
        stats.trained_tokens += int(np.count_nonzero(labels != IGNORE_INDEX))
        stats.max_row_tokens = max(stats.max_row_tokens, int(row_tokens.max()))
        return batch

    writing = 0.0  # seconds spent waiting for writes (a write overlaps the gathering of the next group)
    started = time.perf_counter()
    with packed_writer(output_path, fmt, weighted=layout.weighted) as writer, ThreadPoolExecutor(1, thread_name_prefix="collate-write") as pool:
        pending = None
        for first, end in write_groups(lengths, items, offsets, order):
            batch = gather(first, end)
            if pending is not None:
                clock = time.perf_counter()
                pending.result()
                writing += time.perf_counter() - clock
            pending = pool.submit(writer.write_batch, batch)
            del batch
        clock = time.perf_counter()
        if pending is not None:
            pending.result()
        writer.close()
    ended = time.perf_counter()
    writing += ended - clock  # the last write, closing, syncing and renaming the file
    stats.stage_seconds["gather"] = ended - started - writing
    stats.stage_seconds["write"] = writing

    stats.sequences = len(lengths)
    stats.lower_bound = packing.lower_bound(stats.tokens, max_length)
    stats.fill = stats.tokens / (stats.rows * max_length) if stats.rows else 0.0
    stats.sequences_per_row = stats.sequences / stats.rows if stats.rows else 0.0
    return stats


BALANCE_SEED = 0  # balance_ranks: the seed of the shuffle of a per-file output's rows


def balanced_rows(lengths: np.ndarray, items: np.ndarray, offsets: np.ndarray, settings: CollateSettings) -> tuple[np.ndarray, dict]:
    """balance_ranks: the order to write the rows in (row numbers of the packing), and the report.

    The rows are shuffled (seed BALANCE_SEED), then ordered by `balance.balance_rows` so that each step of
    world_size x micro_batch rows, read without shuffling as `balance_reader` says, gives the ranks
    near-equal Σ seq_len². The report's `before` is the shuffled order read as it is."""
    from .balance import balance_rows, row_costs

    world_size, micro_batch = settings.balance_shape()
    rows = len(offsets) - 1
    shuffled = np.random.default_rng(BALANCE_SEED).permutation(rows).astype(np.int64)
    costs = row_costs(lengths, items, offsets)
    within, report = balance_rows(costs[shuffled], world_size, micro_batch, layout=settings.balance_reader,
                                  seed=BALANCE_SEED)
    report["shuffle_seed"] = BALANCE_SEED
    return shuffled[within], report


def _expand(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The positions starts[i], starts[i] + 1, ..., starts[i] + counts[i] - 1 for every i, in order."""
    counts = np.asarray(counts, dtype=np.int64)
    if not len(counts):
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.arange(int(ends[-1]), dtype=np.int64) + np.repeat(np.asarray(starts, dtype=np.int64) - (ends - counts), counts)


def write_groups(lengths: np.ndarray, items: np.ndarray, offsets: np.ndarray, rows: np.ndarray | None = None) -> Iterator[tuple[int, int]]:
    """(first, end) positions in `rows` (default: every row in order) of the write groups: rows are
    taken until they hold WRITE_BATCH_TOKENS tokens, so a group's memory is bounded."""
    n = len(offsets) - 1 if rows is None else len(rows)
    if n == 0:
        return
    row_tokens = np.add.reduceat(lengths[items], offsets[:-1]) if len(items) else np.zeros(len(offsets) - 1, np.int64)
    if rows is not None:
        row_tokens = row_tokens[rows]
    first, group_tokens = 0, 0
    for index, tokens in enumerate(row_tokens.tolist()):
        group_tokens += tokens
        if group_tokens >= WRITE_BATCH_TOKENS:
            yield first, index + 1
            first, group_tokens = index + 1, 0
    if first < n:
        yield first, n


def rows_batch(ids: np.ndarray, labels: np.ndarray, seq_lengths: np.ndarray, seqs_per_row,
               weights: np.ndarray | None = None) -> tuple[pa.RecordBatch, np.ndarray]:
    """Packed rows as a record batch, and the tokens of each row.

    `ids` and `labels` are the sequences' tokens one after the other, `seq_lengths` their lengths,
    `seqs_per_row` how many consecutive sequences each row holds. Each sequence's first label is
    already ignored (sequences.py), so no row trains across a sequence boundary. `weights`: the
    tokens' loss weights, written as a fifth column `loss_weights` (float32).
    """
    seq_lengths = np.asarray(seq_lengths).astype(np.int32)
    seq_starts = np.zeros(len(seq_lengths), dtype=np.int64)
    np.cumsum(seq_lengths[:-1], out=seq_starts[1:])
    positions = _positions(seq_starts, seq_lengths, len(ids))
    if len(labels) and (labels[seq_starts[seq_lengths > 0]] != IGNORE_INDEX).any():
        # every sequence is made by tokens/sequences.py; a spill with another is not one of ours
        raise CollateError("a sequence of the spill has its first label trained: it was not made by collate's tokenize step")
    seq_offsets = _offsets(seqs_per_row)
    row_tokens = np.add.reduceat(seq_lengths.astype(np.int64), seq_offsets[:-1]) if len(seq_lengths) else np.zeros(0, np.int64)
    row_offsets = to_arrow(_offsets(row_tokens), pa.int32())
    columns = [
        pa.ListArray.from_arrays(row_offsets, to_arrow(ids, pa.int32())),
        pa.ListArray.from_arrays(row_offsets, to_arrow(labels, pa.int32())),
        pa.ListArray.from_arrays(row_offsets, to_arrow(positions, pa.int32())),
        pa.ListArray.from_arrays(to_arrow(seq_offsets, pa.int32()), to_arrow(seq_lengths, pa.int32())),
    ]
    if weights is not None:
        columns.append(pa.ListArray.from_arrays(row_offsets, to_arrow(weights, pa.float32())))
    batch = pa.record_batch(columns, schema=packed_schema(weights is not None))
    return batch, row_tokens


def _positions(seq_starts: np.ndarray, seq_lengths: np.ndarray, n: int) -> np.ndarray:
    """int32 position ids 0, 1, ... restarting at every sequence start: a running sum of ones that
    steps back by the previous sequence's length at each start (empty sequences step back by 0)."""
    steps = np.ones(n, dtype=np.int32)
    if n:
        nonempty = seq_lengths > 0
        starts, lengths = seq_starts[nonempty], seq_lengths[nonempty]
        steps[starts[1:]] = 1 - lengths[:-1]
        steps[0] = 0
    return np.cumsum(steps, dtype=np.int32)


def _offsets(counts) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=out[1:])
    return out
