"""The spill: an Arrow IPC file (random access) of tokenized sequences, and packing it into an output.

    pack_spill(spill, output, fmt, settings) -> PackStats

One record per sequence (input_ids, labels, line). Packing reads only the IPC metadata and list
offsets (the lengths); rows are gathered with positioned reads of each sequence's tokens while
writing, so peak memory does not grow with the input size.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import packing
from .errors import CollateError
from .settings import IGNORE_INDEX, CollateSettings, check_format
from .stats import PackStats
from .writers import PACKED_SCHEMA, packed_writer

SPILL_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("line", pa.int64()),
    ]
)
# Rows are gathered and written in batches of about this many tokens (bounded memory).
WRITE_BATCH_TOKENS = 1 << 22


def _spill_layout(spill_file) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sequence of a spill: its length and the file positions of its input_ids and labels.

    Only the IPC metadata and list offsets are read (through a memory map that is released
    afterwards); tokens are then read with positioned reads, so nothing of the spill stays resident.
    """
    lengths, ids_at, labels_at = [], [], []
    with _mapped(spill_file) as mapped:
        base = pa.py_buffer(mapped)
        reader = pa.ipc.open_file(pa.BufferReader(base))
        batch = None  # a spill of an empty file has no record batch
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            ids_col, lab_col = batch.column(0), batch.column(1)
            offsets = ids_col.offsets.to_numpy().astype(np.int64)
            starts = offsets[:-1] * 4  # int32 tokens
            lengths.append(np.diff(offsets))
            ids_at.append(ids_col.values.to_numpy().ctypes.data - base.address + starts)
            labels_at.append(lab_col.values.to_numpy().ctypes.data - base.address + starts)
        del reader, batch, base
        _release(mapped)
    if not lengths:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(lengths), np.concatenate(ids_at), np.concatenate(labels_at)


def spill_lengths(spill_path: str | Path) -> np.ndarray:
    """Sequence lengths of a spill file, read from its list offsets only."""
    with open(spill_path, "rb") as spill_file:
        return _spill_layout(spill_file)[0]


def _read_into(fd: int, out: np.ndarray, position: int, path) -> None:
    if os.preadv(fd, [out], int(position)) != out.nbytes:
        raise CollateError(f"{path}: spill file is shorter than its metadata says; tokenize again")


def pack_spill(spill_path: str | Path, output_path: str | Path, fmt: str, settings: CollateSettings) -> PackStats:
    """Pack the sequences of a spill file into rows of at most max_length and write them as `fmt`."""
    check_format(fmt)
    max_length = settings.max_length
    stats = PackStats(output=str(output_path), format=fmt, max_length=max_length, packing=settings.packing)
    with open(spill_path, "rb") as spill_file:
        lengths, ids_at, labels_at = _spill_layout(spill_file)
        fd = spill_file.fileno()
        if len(lengths) and lengths.max() > max_length:
            raise CollateError(
                f"{spill_path}: a sequence has {int(lengths.max())} tokens > max_length {max_length}; "
                "tokenize again with this max_length"
            )
        bins = packing.pack(lengths, max_length, settings.packing)

        def gather(rows: list[list[int]]) -> pa.RecordBatch:
            seqs = list(itertools.chain.from_iterable(rows))
            seq_lengths = lengths[seqs].astype(np.int32)
            ids = np.empty(int(seq_lengths.sum()), dtype=np.int32)
            labels = np.empty_like(ids)
            pos = 0
            for s in seqs:
                n = int(lengths[s])
                _read_into(fd, ids[pos : pos + n], ids_at[s], spill_path)
                _read_into(fd, labels[pos : pos + n], labels_at[s], spill_path)
                pos += n
            seq_starts = np.zeros(len(seqs), dtype=np.int64)
            np.cumsum(seq_lengths[:-1], out=seq_starts[1:])
            positions = (np.arange(len(ids), dtype=np.int64) - np.repeat(seq_starts, seq_lengths)).astype(np.int32)
            labels[seq_starts] = IGNORE_INDEX  # never train across a sequence boundary
            row_tokens = np.fromiter((lengths[r].sum() for r in rows), dtype=np.int64, count=len(rows))
            row_offsets = pa.array(_offsets(row_tokens))
            seq_offsets = pa.array(_offsets([len(r) for r in rows]))
            batch = pa.record_batch(
                [
                    pa.ListArray.from_arrays(row_offsets, pa.array(ids)),
                    pa.ListArray.from_arrays(row_offsets, pa.array(labels)),
                    pa.ListArray.from_arrays(row_offsets, pa.array(positions)),
                    pa.ListArray.from_arrays(seq_offsets, pa.array(seq_lengths)),
                ],
                schema=PACKED_SCHEMA,
            )
            stats.rows += len(rows)
            stats.tokens += len(ids)
            stats.trained_tokens += int(np.count_nonzero(labels != IGNORE_INDEX))
            stats.max_row_tokens = max(stats.max_row_tokens, int(row_tokens.max()))
            return batch

        with packed_writer(output_path, fmt) as writer:
            group: list[list[int]] = []
            group_tokens = 0
            for row in bins:
                group.append(row)
                group_tokens += int(lengths[row].sum())
                if group_tokens >= WRITE_BATCH_TOKENS:
                    writer.write(gather(group))
                    group, group_tokens = [], 0
            if group:
                writer.write(gather(group))

    stats.sequences = len(lengths)
    stats.lower_bound = packing.lower_bound(stats.tokens, max_length)
    stats.fill = stats.tokens / (stats.rows * max_length) if stats.rows else 0.0
    stats.sequences_per_row = stats.sequences / stats.rows if stats.rows else 0.0
    return stats


@contextlib.contextmanager
def _mapped(file):
    """A read-only memory map of `file` (closed by the garbage collector once no view is left)."""
    if os.fstat(file.fileno()).st_size == 0:
        raise CollateError(f"{file.name}: spill file is empty")
    yield mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def _release(mapped: mmap.mmap) -> None:
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)


def _offsets(counts) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=out[1:])
    return out
