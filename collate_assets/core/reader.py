"""Read JSONL conversation files in chunks and normalise every message to role/content.

Accepted shapes, one JSON object per line:
  {"conversation": [...]}, {"conversations": [...]} or {"messages": [...]}
with messages either {"role", "content"} or ShareGPT {"from", "value"}.
Other fields are ignored. Bad lines are reported as rejects, never dropped silently.

A line longer than `max_line_bytes` (default 8 MiB) is rejected without being parsed or kept in
memory: tokenizing one 16 MB line takes ~2.5 GB of RAM, and no conversation that fits a training
context comes near 8 MiB of text (128k tokens are ~0.5 MB).

Only regular files are read. In a folder, entries named like input files that are not regular files
(folders, FIFOs, broken symlinks) and symlinks that lead outside the folder are skipped with a warning.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from .errors import CollateError
from .settings import DEFAULT_MAX_LINE_BYTES

CONVERSATION_FIELDS = ("conversation", "conversations", "messages")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}
KNOWN_ROLES = frozenset({"system", "user", "assistant", "tool"})
INPUT_SUFFIXES = (".jsonl", ".jsonl.gz")
# How much of a rejected line is kept in the rejects file: enough to find it, never the whole line.
LINE_EXCERPT_CHARS = 200
_BOM = b"\xef\xbb\xbf"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Reject:
    """One input line that could not become a training sequence."""

    file: str
    line: int
    reason: str
    excerpt: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LineChunk:
    """A chunk of consecutive lines: the parsed conversations and the rejects among them."""

    line_numbers: list[int]
    conversations: list[list[dict]]
    rejects: list[Reject]
    lines_read: int
    blank_lines: int
    bytes_read: int
    # The start of each conversation's line, for rejects found later (template, overlong, labels).
    excerpts: list[str] = dataclasses.field(default_factory=list)


def is_input_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(INPUT_SUFFIXES)


def input_stem(path: Path) -> str:
    """`name.jsonl` and `name.jsonl.gz` both give `name`."""
    name = path.name
    for suffix in INPUT_SUFFIXES[::-1]:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


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

    Entries are named `*.jsonl` / `*.jsonl.gz`; left out (with the reason) are folders, FIFOs and
    other special files, broken symlinks and symlinks that resolve outside `folder`. Subfolders
    (not hidden ones) are counted in one warning: they are not read.
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


def list_input_files(source: str | Path) -> list[Path]:
    """The `*.jsonl` / `*.jsonl.gz` files of a folder (not recursive), sorted; or the one file given.

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
        raise CollateError(f"no *.jsonl or *.jsonl.gz files in {path}")
    return files


def _excerpt(raw: bytes) -> str:
    return raw[: LINE_EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:LINE_EXCERPT_CHARS]


def normalize_conversation(obj: object) -> list[dict]:
    """Return the messages as [{"role", "content"}, ...]; raise ValueError with the reason otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"line is JSON {type(obj).__name__}, not an object")
    for field in CONVERSATION_FIELDS:
        if field in obj:
            messages = obj[field]
            break
    else:
        raise ValueError("no 'conversation', 'conversations' or 'messages' field")
    if not isinstance(messages, list):
        raise ValueError(f"'{field}' is {type(messages).__name__}, not a list")
    if not messages:
        raise ValueError(f"'{field}' is empty")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} is {type(message).__name__}, not an object")
        if "role" in message or "content" in message:
            role, content = message.get("role"), message.get("content")
            if role is None:
                raise ValueError(f"message {i} has no 'role'")
            if not isinstance(role, str) or role not in KNOWN_ROLES:
                raise ValueError(f"message {i} has unknown role {role!r}")
        elif "from" in message or "value" in message:
            speaker, content = message.get("from"), message.get("value")
            if speaker is None:
                raise ValueError(f"message {i} has no 'from'")
            role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
            if role is None:
                raise ValueError(f"message {i} has unknown role {speaker!r}")
        else:
            raise ValueError(f"message {i} has neither role/content nor from/value")
        if content is None:
            raise ValueError(f"message {i} has no content")
        if not isinstance(content, str):
            raise ValueError(f"message {i} content is {type(content).__name__}, not a string")
        out.append({"role": role, "content": content})
    return out


def _open_binary(path: Path):
    if path.name.endswith(".gz"):
        # Opened by name so that closing the GzipFile closes the file too (not so with fileobj=).
        return gzip.GzipFile(filename=path, mode="rb")
    return open(path, "rb")


def iter_chunks(
    path: str | Path,
    chunk_lines: int = 1024,
    chunk_bytes: int = 8 << 20,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[LineChunk]:
    """Yield the file as chunks of parsed conversations; never the whole file in memory.

    A chunk closes at `chunk_lines` lines or `chunk_bytes` bytes, whichever comes first. A line
    longer than `max_line_bytes` (its newline not counted) is rejected without being parsed, and
    at most `max_line_bytes` of it is held in memory. A file that cannot be read (missing, not a
    regular file, corrupt gzip) raises CollateError.
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
        stream = _open_binary(path)
    except OSError as exc:
        raise CollateError(f"{name}: cannot open: {exc.strerror or exc}") from exc
    chunk = LineChunk([], [], [], 0, 0, 0)
    size = 0
    line_no = 0
    try:
        with stream:
            reader = io.BufferedReader(stream) if isinstance(stream, gzip.GzipFile) else stream
            readline = reader.readline
            while raw := readline(max_line_bytes + 1):
                line_no += 1
                length = len(raw)
                if length > max_line_bytes and not raw.endswith(b"\n"):
                    # Longer than the limit: keep its start, skip the rest without holding it.
                    head = raw[: LINE_EXCERPT_CHARS * 4]
                    del raw
                    while piece := readline(1 << 20):
                        length += len(piece)
                        if piece.endswith(b"\n"):
                            break
                    content = length - 1 if piece.endswith(b"\n") else length
                    reason = f"line longer than {max_line_bytes} bytes ({content} bytes); not parsed"
                    chunk.rejects.append(Reject(name, line_no, reason, _excerpt(head)))
                    chunk.lines_read += 1
                    chunk.bytes_read += length
                    size += length
                else:
                    chunk.lines_read += 1
                    chunk.bytes_read += length
                    size += length
                    if line_no == 1 and raw.startswith(_BOM):
                        raw = raw[3:]
                    if not raw.strip():
                        chunk.blank_lines += 1
                    else:
                        try:
                            messages = normalize_conversation(orjson.loads(raw))
                        except orjson.JSONDecodeError as exc:
                            reason = f"invalid JSON: {exc}"
                            try:
                                raw.decode("utf-8")
                            except UnicodeDecodeError as bad:
                                reason = f"invalid UTF-8: bad byte at offset {bad.start}"
                            chunk.rejects.append(Reject(name, line_no, reason, _excerpt(raw)))
                        except ValueError as exc:
                            chunk.rejects.append(Reject(name, line_no, str(exc), _excerpt(raw)))
                        else:
                            chunk.line_numbers.append(line_no)
                            chunk.conversations.append(messages)
                            chunk.excerpts.append(_excerpt(raw))
                if chunk.lines_read >= chunk_lines or size >= chunk_bytes:
                    yield chunk
                    chunk = LineChunk([], [], [], 0, 0, 0)
                    size = 0
    except (OSError, EOFError, zlib.error) as exc:
        raise CollateError(f"{name}: cannot read after line {line_no}: {exc}") from exc
    if chunk.lines_read:
        yield chunk
