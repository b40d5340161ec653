"""Write packed rows in each output format, atomically, and read them back.

Every writer receives record batches with the columns of PACKED_SCHEMA (and `loss_weights`, float32,
under the loss_weights setting: PACKED_SCHEMA_WEIGHTED). Files are written under a
temporary name in the destination folder and renamed when complete, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CollateError
from ..fs import PACKED_COLUMNS, WEIGHTS_COLUMN, atomic_path, shown
from ..settings import EXTENSIONS, OUTPUT_FORMATS, check_format
from .arrays import to_numpy

PACKED_SCHEMA = pa.schema([(name, pa.list_(pa.int32())) for name in PACKED_COLUMNS])
PACKED_SCHEMA_WEIGHTED = PACKED_SCHEMA.append(pa.field(WEIGHTS_COLUMN, pa.list_(pa.float32())))


def packed_schema(weighted: bool) -> pa.Schema:
    return PACKED_SCHEMA_WEIGHTED if weighted else PACKED_SCHEMA


@dataclasses.dataclass(frozen=True)
class WriteCounts:
    """What a packed writer wrote: rows, and bytes of the finished file."""

    rows: int = 0
    bytes: int = 0


class PackedWriter:
    """One packed output being written to `path` (the temporary path of `packed_writer`).

    The interface of the datasets library's ArrowWriter: `write_batch(batch)` for each record
    batch of PACKED_SCHEMA, then `close()`, which returns the counts and may be called again
    (it then only returns them). Subclasses open their file in `_open` and implement `_write`
    and `_close`; the rows are counted here and the bytes are the file's size once closed.
    """

    def __init__(self, path: str | Path, weighted: bool = False):
        self.path = Path(path)
        self.schema = packed_schema(weighted)
        self.rows = 0
        self._counts: WriteCounts | None = None
        self._open()

    def write_batch(self, batch: pa.RecordBatch) -> None:
        if self._counts is not None:
            raise ValueError(f"{shown(self.path)}: write_batch after close")
        self._write(batch)
        self.rows += batch.num_rows

    write = write_batch  # the name before the datasets-like interface

    def close(self) -> WriteCounts:
        if self._counts is None:
            self._close()
            self._counts = WriteCounts(rows=self.rows, bytes=os.path.getsize(self.path))
        return self._counts

    def _open(self) -> None:
        raise NotImplementedError

    def _write(self, batch: pa.RecordBatch) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class _ArrowWriter(PackedWriter):
    """An Arrow IPC stream (what `datasets.Dataset.from_file` loads)."""

    def _open(self) -> None:
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)

    def _write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._sink.close()


class _ParquetWriter(PackedWriter):
    def _open(self) -> None:
        self._writer = pq.ParquetWriter(str(self.path), self.schema, compression="zstd")

    def _write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _close(self) -> None:
        self._writer.close()


def _row_arrays(batch: pa.RecordBatch) -> Iterator[dict[str, np.ndarray]]:
    """The rows of a batch as dicts of int32 (loss_weights: float32) numpy views (no per-token Python objects)."""
    columns = {}
    for name in batch.schema.names:
        col = batch.column(name)
        # For a sliced batch, .offsets are sliced but still index the parent's full .values.
        columns[name] = (to_numpy(col.offsets), to_numpy(col.values))
    for r in range(batch.num_rows):
        yield {name: values[offsets[r] : offsets[r + 1]] for name, (offsets, values) in columns.items()}


class _FileWriter(PackedWriter):
    """Writers that serialise rows themselves into a plain binary file."""

    def _open(self) -> None:
        self._file = open(self.path, "wb")

    def _close(self) -> None:
        self._file.close()


class _MsgpackWriter(_FileWriter):
    def _open(self) -> None:
        super()._open()
        self._packer = msgpack.Packer(use_single_float=True)  # loss_weights as float32, exactly

    def _write(self, batch: pa.RecordBatch) -> None:
        for row in _row_arrays(batch):
            self._file.write(self._packer.pack({k: v.tolist() for k, v in row.items()}))


class _JsonlWriter(_FileWriter):
    def _write(self, batch: pa.RecordBatch) -> None:
        lines = [orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) for row in _row_arrays(batch)]
        self._file.write(b"\n".join(lines) + b"\n" if lines else b"")


def _read_arrow(path: Path, numpy: bool) -> Iterator[dict]:
    with pa.memory_map(str(path)) as source:
        for batch in pa.ipc.open_stream(source):
            yield from _row_arrays(batch) if numpy else batch.to_pylist()


def _read_parquet(path: Path, numpy: bool) -> Iterator[dict]:
    for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=1024):
        yield from _row_arrays(batch) if numpy else batch.to_pylist()


def _read_msgpack(path: Path, numpy: bool) -> Iterator[dict]:
    with open(path, "rb") as f:
        rows = msgpack.Unpacker(f, raw=False)
        yield from (_as_arrays(row) for row in rows) if numpy else rows


def _read_jsonl(path: Path, numpy: bool) -> Iterator[dict]:
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise CollateError(f"{path}:{n}: not a JSON line: {exc}") from exc
            yield _as_arrays(row) if numpy else row


@dataclasses.dataclass(frozen=True)
class PackedFormat:
    """One output format: its name and extension (`settings.EXTENSIONS`), its writer and its reader."""

    name: str
    extension: str
    writer: type[PackedWriter]
    read: Callable[[Path, bool], Iterator[dict]]


# The one registry of output formats: every format of OUTPUT_FORMATS, and nothing else.
FORMATS: dict[str, PackedFormat] = {
    spec.name: spec
    for spec in (
        PackedFormat("arrow", EXTENSIONS["arrow"], _ArrowWriter, _read_arrow),
        PackedFormat("parquet", EXTENSIONS["parquet"], _ParquetWriter, _read_parquet),
        PackedFormat("msgpack", EXTENSIONS["msgpack"], _MsgpackWriter, _read_msgpack),
        PackedFormat("jsonl", EXTENSIONS["jsonl"], _JsonlWriter, _read_jsonl),
    )
}
assert tuple(FORMATS) == OUTPUT_FORMATS


@contextlib.contextmanager
def packed_writer(path: str | Path, fmt: str, *, weighted: bool = False) -> Iterator[PackedWriter]:
    """Open a writer for `fmt` (`weighted`: rows with loss_weights); the file appears at `path` only when
    the block completes.

    The writer is closed when the block ends (whether or not the block closed it to read its
    counts); on an exception or Ctrl-C the temporary file is removed and nothing appears at `path`.
    """
    check_format(fmt)
    with atomic_path(path) as tmp:
        writer = FORMATS[fmt].writer(tmp, weighted)
        try:
            yield writer
        finally:
            writer.close()


def read_packed(path: str | Path, fmt: str, *, numpy: bool = False) -> Iterator[dict]:
    """Read a packed output back as dict rows, whatever its format.

    Rows hold int lists, or with `numpy=True` int32 arrays (zero-copy views for arrow and parquet
    batches, which makes reading millions of tokens back cheap).
    """
    check_format(fmt)
    return FORMATS[fmt].read(Path(path), numpy)


def _as_arrays(row: dict) -> dict:
    return {k: np.asarray(v, dtype=np.float32 if k == WEIGHTS_COLUMN else np.int32) for k, v in row.items()}
