"""Read JSONL conversation files in chunks and normalise every message to role/content.

Accepted shapes, one JSON object per line:
  {"conversation": [...]}, {"conversations": [...]} or {"messages": [...]}
with messages either {"role", "content"} or ShareGPT {"from", "value"}.
Other fields are ignored. Bad lines are reported as rejects, never dropped silently.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from .errors import CollateError

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


def is_input_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(INPUT_SUFFIXES)


def input_stem(path: Path) -> str:
    """`name.jsonl` and `name.jsonl.gz` both give `name`."""
    name = path.name
    for suffix in INPUT_SUFFIXES[::-1]:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def list_input_files(source: str | Path) -> list[Path]:
    """The `*.jsonl` / `*.jsonl.gz` files of a folder (not recursive), sorted; or the one file given."""
    path = Path(source)
    if path.is_file():
        return [path]
    if not path.exists():
        raise CollateError(f"input not found: {path}")
    if not path.is_dir():
        raise CollateError(f"input is neither a file nor a folder: {path}")
    files = sorted(p for p in path.iterdir() if is_input_file(p))
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


def iter_chunks(path: str | Path, chunk_lines: int = 1024, chunk_bytes: int = 8 << 20) -> Iterator[LineChunk]:
    """Yield the file as chunks of parsed conversations; never the whole file in memory.

    A chunk closes at `chunk_lines` lines or `chunk_bytes` bytes, whichever comes first.
    A file that cannot be read (missing, unreadable, corrupt gzip) raises CollateError.
    """
    path = Path(path)
    name = str(path)
    try:
        stream = _open_binary(path)
    except OSError as exc:
        raise CollateError(f"{name}: cannot open: {exc.strerror or exc}") from exc
    chunk = LineChunk([], [], [], 0, 0, 0)
    size = 0
    line_no = 0
    try:
        with stream:
            for raw in io.BufferedReader(stream) if isinstance(stream, gzip.GzipFile) else stream:
                line_no += 1
                chunk.lines_read += 1
                chunk.bytes_read += len(raw)
                size += len(raw)
                if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
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
                if chunk.lines_read >= chunk_lines or size >= chunk_bytes:
                    yield chunk
                    chunk = LineChunk([], [], [], 0, 0, 0)
                    size = 0
    except (OSError, EOFError, zlib.error) as exc:
        raise CollateError(f"{name}: cannot read after line {line_no}: {exc}") from exc
    if chunk.lines_read:
        yield chunk
