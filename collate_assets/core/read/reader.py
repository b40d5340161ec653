"""Read conversation files in chunks and normalise every message to role/content.

Containers (see containers.py): `.jsonl`, `.jsonl.gz`, `.jsonl.zst` (one record a line), `.json` (one
array of records, streamed; or JSON Lines) and `.parquet` (one record a row). Accepted record shapes:
  {"conversation": [...]}, {"conversations": [...]} or {"messages": [...]}
with messages either {"role", "content"} or ShareGPT {"from", "value"}.
Other fields are ignored. Bad lines are reported as rejects, never dropped silently.

A line (or record) longer than `max_line_bytes` (default 8 MiB) is rejected without being parsed
or kept in memory: tokenizing one 16 MB line takes ~2.5 GB of RAM, and no conversation that fits a training
context comes near 8 MiB of text (128k tokens are ~0.5 MB).

Only regular files are read. In a folder, entries named like input files that are not regular files
(folders, FIFOs, broken symlinks) and symlinks that lead outside the folder are skipped with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from . import containers
from ..errors import CollateError
from .formats import normalize_record as normalize_conversation
from ..settings import DEFAULT_MAX_LINE_BYTES

INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".parquet")
# For messages: the input files a folder is searched for.
INPUT_PATTERNS = ", ".join(f"*{suffix}" for suffix in INPUT_SUFFIXES)
# How much of a rejected line is kept in the rejects file: enough to find it, never the whole line.
LINE_EXCERPT_CHARS = 200

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Reject:
    """One input record that could not become a training sequence.

    `line` is its position in the file, of the kind `unit` says: "line" (JSON Lines, 1-based),
    "index" (a .json array, 0-based) or "row" (Parquet, 0-based). The rejects file writes it under
    that name: {"file", "line" | "index" | "row", "reason", "excerpt"}.
    """

    file: str
    line: int
    reason: str
    excerpt: str
    unit: str = "line"

    def to_dict(self) -> dict:
        return {"file": self.file, self.unit: self.line, "reason": self.reason, "excerpt": self.excerpt}

    @property
    def where(self) -> str:
        """`file:12` for a line, `file index 3` / `file row 3` otherwise."""
        return f"{self.file}:{self.line}" if self.unit == "line" else f"{self.file} {self.unit} {self.line}"


@dataclasses.dataclass
class LineChunk:
    """A chunk of consecutive lines (or records): the parsed conversations and the rejects among them.

    `line_numbers` are positions in the file (see Reject.line); `lines_read` counts records read.
    """

    line_numbers: list[int]
    conversations: list[list[dict]]
    rejects: list[Reject]
    lines_read: int
    blank_lines: int
    bytes_read: int
    # The start of each conversation's line, for rejects found later (template, overlong, labels).
    excerpts: list[str] = dataclasses.field(default_factory=list)
    unit: str = "line"  # what the positions are (see Reject.unit), for the rejects found later


def is_input_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(INPUT_SUFFIXES)


def input_stem(path: Path) -> str:
    """`name.jsonl`, `name.jsonl.gz`, `name.jsonl.zst`, `name.json` and `name.parquet` all give `name`."""
    name = path.name
    for suffix in sorted(INPUT_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


position_unit = containers.position_unit
progress_total = containers.progress_total


def input_file_problem(path: Path, folder: Path | None = None) -> str | None:
    """Why `path` cannot be read as an input file, or None when it can.

    With `folder`, a path that resolves outside it (a symlink leading elsewhere) is a problem too.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode  # follows symlinks
    except FileNotFoundError:
        if path.is_symlink():
            return f"is a broken symlink (to {os.readlink(path)})"
        return "does not exist"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    if folder is not None:
        root = Path(folder).resolve()
        target = path.resolve()
        if not target.is_relative_to(root):
            return f"is a symlink to {target}, outside the input folder {root}"
    return None


def scan_input_files(folder: str | Path) -> tuple[list[Path], list[str]]:
    """The input files directly in `folder`, sorted, and a warning for each entry left out.

    Entries are named like INPUT_SUFFIXES (`*.jsonl`, `*.jsonl.gz`, `*.jsonl.zst`, `*.json`,
    `*.parquet`); left out (with the reason) are folders, FIFOs and other special files, broken
    symlinks and symlinks that resolve outside `folder`. Subfolders (not hidden ones) are counted in
    one warning: they are not read.
    """
    folder = Path(folder)
    files, warnings = [], []
    subfolders = 0
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(INPUT_SUFFIXES):
            subfolders += path.is_dir() and not path.name.startswith(".")
            continue
        problem = input_file_problem(path, folder)
        if problem is None:
            files.append(path)
        else:
            warnings.append(f"{path.name} skipped: {problem}")
    if subfolders:
        # Not an error (an output folder may live there), but never silent.
        warnings.append(
            f"{subfolders} subfolder{'s' if subfolders > 1 else ''} skipped: the input folder is not read recursively"
        )
    return files, warnings


def input_folder_and_pattern(source: str | Path) -> tuple[Path, str | None]:
    """(folder, file-name pattern) of an input: a folder, one file (its folder and its name) or `folder/*.jsonl`.

    A glob may only be in the last part: the inputs are files of one folder.
    """
    source = Path(source)
    if any(char in source.name for char in "*?["):
        return source.parent, source.name
    if source.is_file():
        return source.parent, "".join(f"[{c}]" if c in "*?[" else c for c in source.name)
    return source, None


def scan_inputs(source: str | Path) -> tuple[list[Path], list[str], list[str]]:
    """(input files, warnings about stem clashes, warnings about entries left out) of a folder, file or glob.

    Two files with the same stem (`x.jsonl` and `x.jsonl.gz`, or `x.json` and `x.parquet`) would
    write the same outputs: only the first in sorted order is kept, the other is named in a clash
    warning (`<name> skipped: its outputs would overwrite those of <other> …`). A missing folder
    gives no files and one warning.
    """
    import fnmatch

    folder, pattern = input_folder_and_pattern(source)
    if not folder.is_dir():
        return [], [], [f"input folder {folder} does not exist" if not folder.exists() else f"input {folder} is not a folder"]
    files, skipped = scan_input_files(folder)
    if pattern is not None:
        files = [path for path in files if fnmatch.fnmatchcase(path.name, pattern)]
        skipped = [warning for warning in skipped if "subfolder" not in warning]
    kept, stems, clashes = [], {}, []
    for path in files:
        stem = input_stem(path)
        if stem in stems:
            clashes.append(f"{path.name} skipped: its outputs would overwrite those of {stems[stem]} (same name before .jsonl)")
            continue
        stems[stem] = path.name
        kept.append(path)
    return kept, clashes, skipped


def list_input_files(source: str | Path) -> list[Path]:
    """The input files of a folder (INPUT_SUFFIXES; not recursive), sorted; or the one file given.

    Entries of the folder that cannot be input files are skipped with a logged warning (see
    `scan_input_files`).
    """
    path = Path(source)
    if path.is_file():
        return [path]
    if not path.exists():
        raise CollateError(f"input not found: {path}")
    if not path.is_dir():
        raise CollateError(f"input is neither a file nor a folder: {path}")
    files, warnings = scan_input_files(path)
    for warning in warnings:
        log.warning("%s: %s", path, warning)
    if not files:
        raise CollateError(f"no input files ({INPUT_PATTERNS}) in {path}")
    return files


def _excerpt(raw: bytes) -> str:
    return raw[: LINE_EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:LINE_EXCERPT_CHARS]




@dataclasses.dataclass
class RawChunk:
    """A chunk of consecutive records as read, before parsing: what a worker process needs to parse,
    render and tokenize them (small to pickle: JSONL lines stay bytes).

    `records` are (position, payload) pairs for the non-blank records: the line's bytes (JSON Lines),
    a `containers.Bad` (a record rejected while reading) or a parsed record of a .json array or a
    Parquet file (`.record`, `.excerpt`).
    """

    name: str
    unit: str
    records: list
    lines_read: int = 0
    blank_lines: int = 0
    bytes_read: int = 0


def iter_raw_chunks(
    path: str | Path,
    chunk_lines: int = 1024,
    chunk_bytes: int = 8 << 20,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    shard=None,
) -> Iterator[RawChunk]:
    """Yield the file as chunks of records, unparsed; never the whole file in memory (see iter_chunks).

    With `shard` (a `shards.Shard`), only that shard's lines are read, numbered as in the whole file.
    """
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be at least 1, got {max_line_bytes!r}")
    path = Path(path)
    name = str(path)
    problem = input_file_problem(path)
    if problem is not None:
        # Checked before opening: opening a FIFO for reading would block until a writer comes.
        raise CollateError(f"{name}: cannot open: {problem}")
    try:
        unit, units = containers.open_units(path, max_line_bytes, shard)
    except OSError as exc:
        raise CollateError(f"{name}: cannot open: {exc.strerror or exc}") from exc
    chunk = RawChunk(name, unit, [])
    size = 0
    position = None
    records = 0
    try:
        with contextlib.closing(units):
            for position, payload, nbytes, weight in units:
                records += 1
                chunk.lines_read += 1
                chunk.bytes_read += nbytes
                size += weight
                if payload is None:
                    chunk.blank_lines += 1
                else:
                    chunk.records.append((position, payload))
                if chunk.lines_read >= chunk_lines or size >= chunk_bytes:
                    yield chunk
                    chunk = RawChunk(name, unit, [])
                    size = 0
    except (OSError, EOFError, zlib.error) as exc:
        where = f"line {position or 0}" if unit == "line" else f"{records} records"
        raise CollateError(f"{name}: cannot read after {where}: {exc}") from exc
    if chunk.lines_read:
        yield chunk


def parse_chunk(raw: RawChunk) -> LineChunk:
    """Parse and normalise the records of a raw chunk: the conversations and the rejects among them."""
    name, unit = raw.name, raw.unit
    chunk = LineChunk([], [], [], raw.lines_read, raw.blank_lines, raw.bytes_read, unit=unit)
    parse = orjson.loads
    for position, payload in raw.records:
        if type(payload) is bytes:
            excerpt = _excerpt(payload)
            try:
                record = parse(payload)
            except orjson.JSONDecodeError as exc:
                reason = f"invalid JSON: {exc}"
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError as bad:
                    reason = f"invalid UTF-8: bad byte at offset {bad.start}"
                chunk.rejects.append(Reject(name, position, reason, excerpt, unit))
                continue
        elif type(payload) is containers.Bad:
            chunk.rejects.append(Reject(name, position, payload.reason, payload.excerpt, unit))
            continue
        else:
            record, excerpt = payload.record, payload.excerpt
        try:
            messages = normalize_conversation(record)
        except ValueError as exc:
            chunk.rejects.append(Reject(name, position, str(exc), excerpt, unit))
        else:
            chunk.line_numbers.append(position)
            chunk.conversations.append(messages)
            chunk.excerpts.append(excerpt)
    return chunk


def iter_chunks(
    path: str | Path,
    chunk_lines: int = 1024,
    chunk_bytes: int = 8 << 20,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[LineChunk]:
    """Yield the file as chunks of parsed conversations; never the whole file in memory.

    A chunk closes at `chunk_lines` records or `chunk_bytes` bytes, whichever comes first. A line
    longer than `max_line_bytes` (its newline not counted) is rejected without being parsed, and
    at most `max_line_bytes` of it is held in memory; a .json or Parquet record longer than that as
    compact JSON is rejected too (see containers.py). A file that cannot be read (missing, not a
    regular file, corrupt gzip or zstd or Parquet, a .json that is neither an array nor JSON Lines,
    a Parquet file without a conversation column) raises CollateError. A .json array that breaks
    part way is read up to the break, which becomes one reject (the records before it are kept).
    """
    for raw in iter_raw_chunks(path, chunk_lines, chunk_bytes, max_line_bytes):
        yield parse_chunk(raw)

