"""Write packed rows in each output format, atomically, and read them back.

Every writer receives record batches with the columns of PACKED_SCHEMA. Files are written under a
temporary name in the destination folder and renamed when complete, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import CollateError
from .settings import check_format

PACKED_COLUMNS = ("input_ids", "labels", "position_ids", "seq_lengths")
PACKED_SCHEMA = pa.schema([(name, pa.list_(pa.int32())) for name in PACKED_COLUMNS])


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); outputs get the usual permissions for this umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


class _ArrowWriter:
    def __init__(self, path: Path):
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, PACKED_SCHEMA)

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def close(self) -> None:
        self._writer.close()
        self._sink.close()


class _ParquetWriter:
    def __init__(self, path: Path):
        self._writer = pq.ParquetWriter(str(path), PACKED_SCHEMA, compression="zstd")

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def close(self) -> None:
        self._writer.close()


def _row_arrays(batch: pa.RecordBatch) -> Iterator[dict[str, np.ndarray]]:
    """The rows of a batch as dicts of int32 numpy views (no per-token Python objects)."""
    columns = {}
    for name in PACKED_COLUMNS:
        col = batch.column(name)
        columns[name] = (col.offsets.to_numpy(), col.values.to_numpy())
    for r in range(batch.num_rows):
        yield {name: values[offsets[r] : offsets[r + 1]] for name, (offsets, values) in columns.items()}


class _MsgpackWriter:
    def __init__(self, path: Path):
        self._file = open(path, "wb")
        self._packer = msgpack.Packer()

    def write(self, batch: pa.RecordBatch) -> None:
        for row in _row_arrays(batch):
            self._file.write(self._packer.pack({k: v.tolist() for k, v in row.items()}))

    def close(self) -> None:
        self._file.close()


class _JsonlWriter:
    def __init__(self, path: Path):
        self._file = open(path, "wb")

    def write(self, batch: pa.RecordBatch) -> None:
        lines = [orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) for row in _row_arrays(batch)]
        self._file.write(b"\n".join(lines) + b"\n" if lines else b"")

    def close(self) -> None:
        self._file.close()


_WRITERS = {"arrow": _ArrowWriter, "parquet": _ParquetWriter, "msgpack": _MsgpackWriter, "jsonl": _JsonlWriter}


@contextlib.contextmanager
def packed_writer(path: str | Path, fmt: str):
    """Open a writer for `fmt`; the file appears at `path` only when the block completes."""
    check_format(fmt)
    with atomic_path(path) as tmp:
        writer = _WRITERS[fmt](tmp)
        try:
            yield writer
        finally:
            writer.close()


def read_packed(path: str | Path, fmt: str) -> Iterator[dict[str, list[int]]]:
    """Read a packed output back as dict rows of int lists, whatever its format."""
    check_format(fmt)
    path = Path(path)
    if fmt == "arrow":
        with pa.memory_map(str(path)) as source:
            for batch in pa.ipc.open_stream(source):
                yield from batch.to_pylist()
    elif fmt == "parquet":
        for batch in pq.ParquetFile(str(path)).iter_batches():
            yield from batch.to_pylist()
    elif fmt == "msgpack":
        with open(path, "rb") as f:
            yield from msgpack.Unpacker(f, raw=False)
    else:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise CollateError(f"{path}:{n}: not a JSON line: {exc}") from exc
