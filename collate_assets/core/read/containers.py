"""Input containers: each one a small generator of records for the shared chunking loop in reader.py.

    .jsonl, .jsonl.gz, .jsonl.zst   JSON Lines (plain, gzip, zstandard); position = line number, 1-based
    .json                           one JSON array of records, streamed; position = array index, 0-based
                                    (a .json holding JSON Lines is read as JSON Lines; see `open_units`)
    .parquet                        one record per row, streamed per record batch; position = row, 0-based

A generator yields one *unit* per record (or line) as a tuple `(position, payload, nbytes, size)`:

    payload  bytes      raw JSON text of one record (a JSONL line), parsed by the loop with orjson
             None       a blank line
             Parsed     a record already parsed (.json, .parquet), with its excerpt
             Bad        a record rejected by the container (too long, a broken array), with its reason
    nbytes   bytes of the file consumed for it (feeds the progress bar; the units of a file sum to
             `progress_total(path)` or close to it)
    size     how much it weighs in memory, for closing chunks at `chunk_bytes`

Nothing here holds a whole file: JSON Lines are read line by line, a JSON array is parsed
incrementally by ijson (yajl2 C backend) with only the current record built, and Parquet is read
one record batch at a time. The `max_line_bytes` limit applies to every container: for JSON Lines
it is the line's length in bytes (as read, decompressed); for a .json record or a Parquet row it is
the length of the record serialised as compact JSON by orjson (UTF-8). A .json record is measured
while it is parsed and stops being built once it passes the limit, so a huge record never sits
whole in memory (ijson still holds any single string value whole while it is being read).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from ..errors import CollateError
from .formats import CONVERSATION_FIELDS

# What a record's excerpt keeps (the rejects file): enough to find it, never the whole record.
EXCERPT_CHARS = 200
# The record fields normalize_conversation looks for, in its order: a Parquet file needs one as a column.
CONVERSATION_COLUMNS = CONVERSATION_FIELDS
BOM = b"\xef\xbb\xbf"
# Compressed bytes read from a .zst file at a time, and handed to the decompressor at a time. zstandard's
# decompressobj has no output limit and a compressed byte can stand for ~10 KiB (a 128 KiB block of
# repeats in ~12 bytes), so small feeds bound what one call returns (512 B -> at most a few MiB).
ZSTD_READ_BYTES = 1 << 16
ZSTD_FEED_BYTES = 512
# Bytes ijson reads from a .json file at a time.
JSON_READ_BYTES = 1 << 16
# Parquet rows converted to Python objects at a time.
PARQUET_BATCH_ROWS = 256

UNITS = {"jsonl": "line", "json": "index", "parquet": "row"}


@dataclasses.dataclass(frozen=True, slots=True)
class Parsed:
    """A record parsed by its container, and the start of its JSON text for the rejects file."""

    record: object
    excerpt: str


@dataclasses.dataclass(frozen=True, slots=True)
class Bad:
    """A record the container rejects itself (not parsed or not complete)."""

    reason: str
    excerpt: str


Unit = tuple[int, "bytes | None | Parsed | Bad", int, int]


def excerpt(raw: bytes) -> str:
    return raw[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:EXCERPT_CHARS]


def _dumps(record: object) -> bytes:
    """A record as compact JSON (values orjson has no encoding for, such as bytes, written with str)."""
    try:
        return orjson.dumps(record, default=str)
    except TypeError:  # an integer beyond 64 bits
        return json.dumps(record, default=str, ensure_ascii=False, separators=(",", ":")).encode()


# -- which container ----------------------------------------------------------------------------------


def container_of(path: Path) -> str:
    """"jsonl", "json" or "parquet" by the file name (compressed JSON Lines are "jsonl")."""
    name = path.name
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".json"):
        return "json"
    return "jsonl"


def _first_byte(stream) -> tuple[bytes, int]:
    """The first byte that is not whitespace (or b"" at the end) and its offset, after a UTF-8 BOM."""
    head = stream.read(3)
    offset = 3 if head == BOM else 0
    stream.seek(offset)
    while block := stream.read(1 << 12):
        stripped = block.lstrip()
        if stripped:
            return stripped[:1], offset + len(block) - len(stripped)
        offset += len(block)
    return b"", offset


def position_unit(path: str | Path) -> str:
    """What a position means in `path`'s rejects: "line" (1-based), "index" or "row" (0-based)."""
    path = Path(path)
    kind = container_of(path)
    if kind == "json":
        try:
            with open(path, "rb") as stream:
                first, _ = _first_byte(stream)
        except OSError:
            return "index"
        return "index" if first == b"[" else "line"
    return UNITS[kind]


# -- JSON Lines ---------------------------------------------------------------------------------------


class _ZstdReader(io.RawIOBase):
    """A zstandard file as a raw binary stream, frame after frame; a truncated last frame is an EOFError.

    zstandard's `stream_reader` reports a file cut inside a frame as a clean end of file, so the frames
    are decoded here with `decompressobj`, which says when a frame is complete. Compressed input is fed
    ZSTD_FEED_BYTES at a time (memory stays bounded on highly compressed input). `compressed_read`
    counts the compressed bytes read from the file.
    """

    def __init__(self, path: Path):
        import zstandard  # imported here: only .zst inputs need it

        self._error = zstandard.ZstdError
        self._file = open(path, "rb")
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = None  # the decompressobj of a frame that has started and not ended
        self._pending = memoryview(b"")
        self._input = memoryview(b"")
        self.compressed_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            if not self._input:
                data = self._file.read(ZSTD_READ_BYTES)
                if not data:
                    if self._frame is not None:
                        raise EOFError("zstd: compressed file ended before the end of a frame (truncated?)")
                    return 0
                self.compressed_read += len(data)
                self._input = memoryview(data)
            data, self._input = self._input[:ZSTD_FEED_BYTES], self._input[ZSTD_FEED_BYTES:]
            out = []
            try:
                while data:
                    if self._frame is None:
                        self._frame = self._dctx.decompressobj()
                    out.append(self._frame.decompress(data))
                    if self._frame.eof:
                        data = self._frame.unused_data
                        self._frame = None
                    else:
                        data = b""
            except self._error as exc:
                raise OSError(f"zstd: {exc}") from exc
            self._pending = memoryview(b"".join(out))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def _jsonl_units(
    stream, max_line_bytes: int, consumed: Callable[[], int] | None = None, first_line: int = 1
) -> Iterator[Unit]:
    """Lines of a binary stream: raw JSON text, blank lines, and lines over `max_line_bytes` as Bad.

    A line longer than the limit (its newline not counted) is never held whole: its start is kept for
    the excerpt and the rest skipped. With `consumed` (bytes of the file read so far), a unit's nbytes
    counts file bytes (compressed input) instead of the line's length. `first_line`: the number of
    the stream's first line in its file (a shard starts part way in).
    """
    readline = stream.readline
    line_no = first_line - 1
    done = 0
    while raw := readline(max_line_bytes + 1):
        line_no += 1
        length = len(raw)
        if length > max_line_bytes and not raw.endswith(b"\n"):
            # Longer than the limit: keep its start, skip the rest without holding it.
            head = raw[: EXCERPT_CHARS * 4]
            del raw
            piece = b""
            while piece := readline(1 << 20):
                length += len(piece)
                if piece.endswith(b"\n"):
                    break
            content = length - 1 if piece.endswith(b"\n") else length
            payload = Bad(f"line longer than {max_line_bytes} bytes ({content} bytes); not parsed", excerpt(head))
        else:
            if line_no == 1 and raw.startswith(BOM):  # only the file's own first line
                raw = raw[3:]
            payload = raw if raw.strip() else None
        if consumed is None:
            nbytes = length
        else:
            now = consumed()
            nbytes, done = now - done, now
        yield line_no, payload, nbytes, length


def _open_jsonl(path: Path):
    """A buffered binary stream of the JSON Lines in `path` and a callable counting file bytes (or None)."""
    name = path.name
    if name.endswith(".gz"):
        # Opened by name so that closing the GzipFile closes the file too (not so with fileobj=).
        return io.BufferedReader(gzip.GzipFile(filename=path, mode="rb")), None
    if name.endswith(".zst"):
        raw = _ZstdReader(path)
        return io.BufferedReader(raw, 1 << 16), lambda: raw.compressed_read
    return open(path, "rb"), None


class _Range(io.BufferedReader):
    """Bytes `[start, end)` of a file as a buffered stream (readline stops at `end`)."""

    def __init__(self, path: Path, start: int, end: int):
        raw = open(path, "rb", buffering=0)
        raw.seek(start)
        self._left = end - start
        super().__init__(raw, 1 << 16)

    def readline(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        limit = self._left if size is None or size < 0 else min(size, self._left)
        line = super().readline(limit)
        self._left -= len(line)
        return line


def _owning(stream, units: Iterator[Unit]) -> Iterator[Unit]:
    """`units`, closing `stream` when they end or are closed."""
    with stream:
        yield from units


# -- one JSON array, streamed -------------------------------------------------------------------------


class _Counting:
    """A read-only file that counts the bytes read from it (ijson reads it in blocks)."""

    def __init__(self, stream, read_bytes: int = 0):
        self._stream = stream
        self.read_bytes = read_bytes

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.read_bytes += len(data)
        return data


class _IntegerOverflow(Exception):
    """yajl's C parser met an integer beyond 64 bits (it cannot represent them; the Python backend can)."""


# orjson reads integers beyond this range as floats; a .json record reads the same way.
_INT_RANGE = range(-(1 << 63), 1 << 64)


def _json_size(value: object) -> int:
    try:
        return len(orjson.dumps(value))
    except TypeError:  # an integer beyond 64 bits
        return len(str(value))


def _array_units(stream: _Counting, max_line_bytes: int, basic_parse, c_backend: bool) -> Iterator[Unit]:
    """The records of a JSON array, from ijson's parse events; only the current record is built.

    Each record's size is its length as compact JSON (what `orjson.dumps(record)` gives), counted event
    by event; past `max_line_bytes` the record stops being built and becomes a Bad unit. A break in the
    array (truncated file, invalid JSON, content after the closing bracket) becomes one Bad unit at
    the index where it happened, and nothing after it is read: ijson cannot resume after an error.
    With `c_backend`, an integer beyond 64 bits raises _IntegerOverflow instead.
    """
    import ijson

    index = 0
    accounted = 0  # file bytes already given to a unit
    depth = 0  # 0 outside the array, 1 between records, more inside a record
    is_array: list[bool] = []  # per open container of the record: an array (else a map)
    counts: list[int] = []  # per open container: elements (or keys) seen so far
    containers: list = []  # the open containers, outermost first, while the record is kept
    keys: list = []  # the pending key of each kept open container (None for arrays)
    size = 0  # the record's length as compact JSON so far
    keep = True
    cut_excerpt = ""
    closed = False

    def emitted(payload) -> Unit:
        nonlocal index, accounted
        unit = (index, payload, stream.read_bytes - accounted, size)
        index += 1
        accounted = stream.read_bytes
        return unit

    try:
        for event, value in basic_parse(stream, use_float=True, buf_size=JSON_READ_BYTES):
            if depth == 0:
                if closed or event != "start_array":
                    raise ijson.JSONError(f"unexpected {event} outside the array")  # sniffed: cannot happen
                depth = 1
                continue
            if event == "map_key":
                size += (1 if counts[-1] else 0) + _json_size(value) + 1
                counts[-1] += 1
                if keep:
                    keys[-1] = value
                continue
            if event == "end_map" or event == "end_array":
                if depth == 1:  # the array's own closing bracket
                    depth, closed = 0, True
                    continue
                size += 1
                depth -= 1
                counts.pop()
                is_array.pop()
                if keep:
                    finished = containers.pop()
                    keys.pop()
                if depth == 1:
                    if keep:
                        yield emitted(Parsed(finished, excerpt(_dumps(finished))))
                    else:
                        yield emitted(Bad(_too_long(max_line_bytes, size), cut_excerpt))
                    finished = None
                continue
            # A value: a scalar, or the start of a map or an array.
            if depth == 1:  # a new record
                size, keep = 0, True
            elif is_array[-1]:
                if counts[-1]:
                    size += 1  # the comma before it
                counts[-1] += 1
            if event == "start_map" or event == "start_array":
                size += 1
                if keep:
                    new = {} if event == "start_map" else []
                    if containers:
                        _attach(containers[-1], keys[-1], new)
                    containers.append(new)
                    keys.append(None)
                is_array.append(event == "start_array")
                counts.append(0)
                depth += 1
            else:
                if type(value) is int and value not in _INT_RANGE:
                    value = float(value)
                size += _json_size(value)
                if depth == 1:  # a record that is not a container (the normaliser rejects it)
                    text = _dumps(value)
                    bad = size > max_line_bytes
                    yield emitted(Bad(_too_long(max_line_bytes, size), excerpt(text)) if bad else Parsed(value, excerpt(text)))
                    continue
                if keep:
                    _attach(containers[-1], keys[-1], value)
            if keep and size > max_line_bytes:
                # Too long: keep its start for the excerpt, count the rest without building it.
                keep = False
                cut_excerpt = excerpt(_dumps(containers[0]))
                containers, keys = [], []
    except ijson.JSONError as exc:
        if c_backend and "integer overflow" in str(exc):
            raise _IntegerOverflow from exc
        where = "after the end of the array" if closed else "here"
        text = str(exc).strip().splitlines()
        size = 0
        reason = f"broken JSON array {where}: {text[0] if text else type(exc).__name__}; nothing after it was read"
        yield emitted(Bad(reason, ""))
        return
    if not closed:  # yajl reports an array that is never closed as an error; kept as a safety net
        yield emitted(Bad("the JSON array is not closed (truncated file?); nothing after it was read", ""))


def _json_array(stream, offset: int, max_line_bytes: int) -> Iterator[Unit]:
    """The records of the JSON array starting at `offset`: ijson's yajl2 C backend, else its Python one.

    The C backend stops at an integer beyond 64 bits; the array is then read again from the start
    with the pure-Python backend (slower, rare), skipping the records already given.
    """
    import ijson  # the yajl2_c backend when it is built (it is in the wheels)

    c_backend = ijson.backend == "yajl2_c"
    given = 0  # records given
    given_bytes = offset
    stream.seek(offset)
    try:
        for unit in _array_units(_Counting(stream, offset), max_line_bytes, ijson.basic_parse, c_backend):
            yield unit
            given += 1
            given_bytes += unit[2]
    except _IntegerOverflow:
        stream.seek(offset)
        seen = offset
        python = ijson.get_backend("python")
        for position, payload, nbytes, size in _array_units(_Counting(stream, offset), max_line_bytes,
                                                            python.basic_parse, False):
            seen += nbytes
            if position >= given:
                yield position, payload, max(0, seen - given_bytes), size
                given_bytes = max(given_bytes, seen)


def _attach(parent, key, value) -> None:
    if type(parent) is list:
        parent.append(value)
    else:
        parent[key] = value


def _too_long(max_line_bytes: int, size: int) -> str:
    return f"record longer than {max_line_bytes} bytes as JSON ({size} bytes); not used"


def _looks_like_jsonl(stream, offset: int, max_line_bytes: int) -> bool:
    """Whether the first line (from `offset`) is a complete JSON object, or too long to be a pretty-printed one."""
    stream.seek(offset)
    line = stream.readline(max_line_bytes + 1)
    if len(line) > max_line_bytes and not line.endswith(b"\n"):
        return True
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def _no_units() -> Iterator[Unit]:
    yield from ()


def _open_json(path: Path, max_line_bytes: int) -> tuple[str, Iterator[Unit]]:
    """A .json file: one JSON array ("index" positions), or JSON Lines when it holds JSON Lines ("line").

    Anything else (a pretty-printed object, a string, a number) is a CollateError naming the file.
    """
    stream = open(path, "rb")
    try:
        first, offset = _first_byte(stream)
        if first == b"":  # empty or blank: no record, like an empty .jsonl
            stream.close()
            return "index", _no_units()
        if first == b"[":
            return "index", _owning(stream, _json_array(stream, offset, max_line_bytes))
        if first == b"{" and _looks_like_jsonl(stream, offset, max_line_bytes):
            stream.seek(0)
            return "line", _owning(stream, _jsonl_units(stream, max_line_bytes))
    except BaseException:
        stream.close()
        raise
    stream.close()
    what = "one JSON object over several lines" if first == b"{" else f"{first.decode('latin-1')!r}"
    raise CollateError(
        f"{path}: not a JSON array of records: the file starts with {what}; a .json input holds one array "
        "of conversation objects ([{...}, {...}]) or JSON Lines (one object a line)"
    )


# -- Parquet ------------------------------------------------------------------------------------------


def _drop_nulls(value):
    """Struct fields that are null read like absent keys (Parquet cannot tell absent from null)."""
    if type(value) is dict:
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if type(value) is list:
        return [_drop_nulls(v) for v in value]
    return value


def _open_parquet(path: Path):
    """The ParquetFile of `path` and its column names; CollateError when it is not usable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise CollateError(f"{name}: cannot open: not a readable Parquet file ({exc})") from exc
    columns = parquet.schema_arrow.names
    if not any(c in columns for c in CONVERSATION_COLUMNS):
        parquet.close()
        raise CollateError(
            f"{name}: no conversation column ('conversation', 'conversations' or 'messages'); "
            f"its columns are: {', '.join(repr(c) for c in columns) or 'none'}"
        )
    return parquet, columns


def _parquet_units(path: Path, parquet, columns: list[str], max_line_bytes: int) -> Iterator[Unit]:
    """The rows of a Parquet file as records, one record batch at a time.

    Every column goes into the record; a column that is null in a row is left out of that row, and so
    are null struct fields inside the conversation and `tools` columns (lists of structs). `tools`
    stored as a JSON string stays a string. A row's size is its length as compact JSON (orjson).
    Progress counts the file's bytes shared out over its rows.
    """
    import pyarrow as pa

    name = str(path)
    with parquet:
        nested = [c for c in (*CONVERSATION_COLUMNS, "tools") if c in columns]
        total_rows = parquet.metadata.num_rows
        file_size = os.stat(path).st_size
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for record in batch.to_pylist():
                    record = {k: v for k, v in record.items() if v is not None}
                    for column in nested:
                        if type(record.get(column)) is list:
                            record[column] = _drop_nulls(record[column])
                    text = _dumps(record)
                    size = len(text)
                    if size > max_line_bytes:
                        payload = Bad(f"row longer than {max_line_bytes} bytes as JSON ({size} bytes); not used",
                                      excerpt(text))
                    else:
                        payload = Parsed(record, excerpt(text))
                    del text
                    nbytes = file_size * (row + 1) // total_rows - file_size * row // total_rows
                    yield row, payload, nbytes, size
                    row += 1
        except (pa.ArrowException, OSError) as exc:
            raise CollateError(f"{name}: cannot read after {row} rows: {exc}") from exc


# -- all of them --------------------------------------------------------------------------------------


def open_units(path: Path, max_line_bytes: int, shard=None) -> tuple[str, Iterator[Unit]]:
    """The kind of position ("line", "index", "row") and the units of an input file (see the module docstring).

    The file is opened here (OSError when it cannot be; CollateError for a Parquet file that is not
    one or has no conversation column, or a .json that is neither an array nor JSON Lines); the rest
    is read as the units are taken. With `shard` (a `shards.Shard` of a plain .jsonl file), only its
    lines are read, numbered as in the whole file.
    """
    if shard is not None:
        stream = _Range(path, shard.start, shard.end)
        return "line", _owning(stream, _jsonl_units(stream, max_line_bytes, first_line=shard.first_line))
    kind = container_of(path)
    if kind == "parquet":
        parquet, columns = _open_parquet(path)
        return "row", _parquet_units(path, parquet, columns, max_line_bytes)
    if kind == "json":
        return _open_json(path, max_line_bytes)
    stream, consumed = _open_jsonl(path)
    return "line", _owning(stream, _jsonl_units(stream, max_line_bytes, consumed))


def progress_total(path: str | Path) -> int:
    """What the `bytes_read` of a file's chunks add up to, as far as cheaply known (for progress bars).

    The file size, except for gzip, whose units count uncompressed bytes: its trailer stores that size
    modulo 4 GiB. (zstd units count compressed bytes, Parquet units share out the file size.)
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                return int.from_bytes(f.read(4), "little")
        return path.stat().st_size
    except OSError:
        return 0
