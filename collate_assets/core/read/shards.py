"""Big JSON Lines files split into shards: line-aligned byte ranges, each read, packed and written alone.

A plain `.jsonl` file larger than `shard_bytes` is cut into `count = ceil(size / shard_bytes)` shards.
Shard `i` nominally starts at byte `i * size // count`; its real start is the first line that starts
at or after that byte (a line that straddles the nominal start belongs to the shard before), and it
ends where the next shard starts. Every line therefore lies in exactly one shard, whichever shard is
read first, and a shard is found from the file and `(index, count)` alone: the starts need only a
look at the bytes around each nominal start. The line number of a shard's first line (for rejects that
name true lines) is the count of newlines before its start.

Outputs are named like the Hugging Face hub's shards: `<stem>-00000-of-00004.<ext>`. Compressed JSON
Lines, JSON arrays and Parquet files cannot be cut by bytes; they always stay whole.

When every shard of a file is tokenized, `summarize` checks them against the file: the shards are
contiguous and cover it, each starts on the line after the previous one's last, and the lines read
add up to the file's own line count (counted again, independently of the reader).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from ..errors import CollateError

SHARD_DIGITS = 5
READ_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Shard:
    """Lines `[start, end)` (bytes) of a file, the `index`-th of `count`; `first_line` is 1-based."""

    index: int
    count: int
    start: int
    end: int
    first_line: int

    @property
    def suffix(self) -> str:
        """`-00000-of-00004`: what a shard's outputs add to the file's stem."""
        return shard_suffix(self.index, self.count)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def shard_suffix(index: int, count: int) -> str:
    return f"-{index:0{SHARD_DIGITS}d}-of-{count:0{SHARD_DIGITS}d}"


def splittable(path: str | Path) -> bool:
    """Only plain JSON Lines can be cut at byte offsets (not .gz / .zst, JSON arrays or Parquet)."""
    return Path(path).name.endswith(".jsonl")


def shard_count(path: str | Path, shard_bytes: int, size: int | None = None) -> int:
    """How many shards `path` is read as: 1 unless it is plain JSON Lines over `shard_bytes` (0: never split)."""
    if shard_bytes <= 0 or not splittable(path):
        return 1
    if size is None:
        size = os.stat(path).st_size
    return max(1, math.ceil(size / shard_bytes))


def _line_start_at_or_after(f, offset: int, size: int) -> int:
    """The offset of the first line starting at or after `offset` (`size` if none does)."""
    if offset <= 0:
        return 0
    f.seek(offset - 1)
    position = offset - 1
    while position < size:
        block = f.read(READ_BYTES)
        if not block:
            break
        newline = block.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(block)
    return size


def _newlines(f, start: int, end: int) -> int:
    f.seek(start)
    count = 0
    left = end - start
    while left > 0:
        block = f.read(min(READ_BYTES, left))
        if not block:
            break
        count += block.count(b"\n")
        left -= len(block)
    return count


def locate_shard(path: str | Path, index: int, count: int) -> Shard:
    """Shard `index` of `count` of `path` as the file is now (CollateError for an index out of range)."""
    if not 0 <= index < count:
        raise CollateError(f"{path}: shard {index} of {count} does not exist")
    if count > 1 and not splittable(path):
        raise CollateError(f"{path}: only plain .jsonl files are split into shards")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = _line_start_at_or_after(f, index * size // count, size)
        end = _line_start_at_or_after(f, (index + 1) * size // count, size) if index + 1 < count else size
        end = max(start, end)
        first_line = _newlines(f, 0, start) + 1
    return Shard(index, count, start, end, first_line)


def plan_shards(path: str | Path, shard_bytes: int) -> list[Shard] | None:
    """Every shard of `path`, or None when it is read whole."""
    count = shard_count(path, shard_bytes)
    if count == 1:
        return None
    return [locate_shard(path, index, count) for index in range(count)]


def count_lines(path: str | Path) -> int:
    """Lines of a file as a JSON Lines reader sees them: newlines, plus a last line without one."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        newlines = _newlines(f, 0, size)
        if size:
            f.seek(size - 1)
            newlines += f.read(1) != b"\n"
    return newlines


def summarize(path: str | Path, shards: list[dict[str, Any]], count: int, *, input_sha256: str,
              settings_fingerprint: str) -> dict[str, Any]:
    """The file-level account of its shards' tokenize statistics, checked against the file.

    `input_sha256` and `settings_fingerprint` say what the shards were made from (kept in the account,
    so a rerun can tell whether an account on disk is still the file's).

    `shards` are TokenizeStats dicts (with their `shard`). Returns the totals and `problems` (empty
    when the shards are exactly the file: contiguous, each starting on the line after the one before,
    lines read adding up to the file's line count, and every line written, rejected or blank).
    """
    by_index = {s["shard"]["index"]: s for s in shards if s.get("shard")}
    problems = []
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        problems.append(f"shards missing: {', '.join(shard_suffix(i, count)[1:] for i in missing)}")
    ordered = [by_index[i] for i in range(count) if i in by_index]
    position, line = 0, 1
    for stats in ordered:
        shard = stats["shard"]
        name = shard_suffix(shard["index"], count)[1:]
        if shard["count"] != count:
            problems.append(f"shard {name} was made for {shard['count']} shards")
        if not missing and (shard["start"], shard["first_line"]) != (position, line):
            problems.append(
                f"shard {name} starts at byte {shard['start']}, line {shard['first_line']}; "
                f"the shard before it ends at byte {position}, line {line}"
            )
        if stats["lines_read"] != stats["blank_lines"] + stats["conversations"] + stats["rejected"]:
            problems.append(f"shard {name}: lines read are not all written, rejected or blank")
        position, line = shard["end"], shard["first_line"] + stats["lines_read"]
    total = {
        field: sum(s[field] for s in ordered)
        for field in ("lines_read", "blank_lines", "conversations", "sequences", "rejected", "tokens", "trained_tokens")
    }
    file_lines = count_lines(path)
    size = os.stat(path).st_size
    if not missing:
        if position != size:
            problems.append(f"the shards end at byte {position}; the file has {size} bytes")
        if total["lines_read"] != file_lines:
            problems.append(f"the shards read {total['lines_read']} lines; the file has {file_lines}")
    return {
        "file": str(path),
        "size_bytes": size,
        "file_lines": file_lines,
        "shard_count": count,
        "shards_done": len(ordered),
        **total,
        "shards": [{**s["shard"], **{k: s[k] for k in ("lines_read", "rejected", "blank_lines", "sequences", "tokens")}}
                   for s in ordered],
        "problems": problems,
        "input_sha256": input_sha256,
        "settings_fingerprint": settings_fingerprint,
    }
