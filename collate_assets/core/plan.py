"""What a run has to do, decided before anything runs: the input files as work items, for every front-end.

    plan_inputs(source, shard_bytes) -> Plan(items, failures, warnings)

The `collate` command (through Dagster or `--no-dagster`), the input files sensor and the assets
all take their work from here, so they agree on what a work item is, what it is called and where
its outputs go:

- a work item is one input file, or one shard of a plain `.jsonl` over `shard_bytes` (shards.py);
- its key (a Dagster partition key, and the name the command prints) is the file name with every
  byte outside `[A-Za-z0-9._-]` written `%XX` and every `.` after a `.` written `%2E` (so `...`,
  Dagster's range syntax, never appears, and `%` is always escaped: the mapping is reversible), then
  for a shard `@` and the shard as outputs name it:

      demo.jsonl          -> demo.jsonl
      a,b c.jsonl         -> a%2Cb%20c.jsonl
      v1...final.jsonl    -> v1.%2E%2Efinal.jsonl
      données.jsonl       -> donn%C3%A9es.jsonl
      big.jsonl (4 shards) -> big.jsonl@00000-of-00004 ... big.jsonl@00003-of-00004

- its outputs are `<stem><shard suffix><ext>` (`output_file_name`), `name.jsonl(.gz|.zst)`,
  `name.json` and `name.parquet` all having the stem `name`;
- two files whose outputs would have the same name (`x.jsonl` and `x.jsonl.gz`, or a file named like
  another's shard) cannot both run: the first in sorted order does, the other is a failure with the
  reason (data, not an exception: the other files still run);
- entries of the folder that are not input files are left out with a warning.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from .errors import CollateError
from .read.reader import INPUT_PATTERNS, input_folder_and_pattern, input_stem, list_input_files, scan_inputs
from .read.shards import Shard, shard_count, shard_suffix
from .fs import fit_name, shown

_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_DOT = ord(".")
SHARD_SEP = "@"
_SHARD = re.compile(r"-(\d{5,})-of-(\d{5,})")
SHARDS_SUFFIX = ".shards.json"  # a split file's account of its shards: `<stem>.shards.json`


def file_name_to_key(name: str) -> str:
    """The key of the input file called `name` (a bare file name, no folder)."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"not a bare file name: {name!r}")
    out = []
    previous = None
    for byte in os.fsencode(name):
        if byte in _SAFE_BYTES and not (byte == _DOT and previous == _DOT):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
        previous = byte
    return "".join(out)


def key_to_file_name(key: str) -> str:
    """The inverse of `file_name_to_key`; raises ValueError for a string it could not have produced."""
    raw = bytearray()
    i = 0
    while i < len(key):
        char = key[i]
        if char == "%":
            try:
                raw.append(int(key[i + 1 : i + 3], 16))
            except ValueError:
                raise ValueError(f"bad escape in partition key {key!r}") from None
            if len(key[i + 1 : i + 3]) != 2:
                raise ValueError(f"bad escape in partition key {key!r}")
            i += 3
        else:
            if ord(char) not in _SAFE_BYTES:
                raise ValueError(f"unexpected character {char!r} in partition key {key!r}")
            raw.append(ord(char))
            i += 1
    name = os.fsdecode(bytes(raw))
    if file_name_to_key(name) != key:
        raise ValueError(f"not a canonical partition key: {key!r}")
    return name


def shard_key(file_key: str, index: int, count: int) -> str:
    """The key of shard `index` of `count` of the file whose key is `file_key`."""
    return f"{file_key}{SHARD_SEP}{shard_suffix(index, count)[1:]}"


def split_shard_key(key: str) -> tuple[str, tuple[int, int] | None]:
    """(the file's key, (index, count) or None for a whole file); ValueError for a malformed shard part."""
    file_key, sep, part = key.partition(SHARD_SEP)
    if not sep:
        return key, None
    match = _SHARD.fullmatch("-" + part)
    if match is None:
        raise ValueError(f"bad shard {part!r} in partition key {key!r} (expected 00000-of-00004)")
    index, count = int(match[1]), int(match[2])
    if not 0 <= index < count or count < 2 or shard_key(file_key, index, count) != key:
        raise ValueError(f"bad shard {part!r} in partition key {key!r}")
    return file_key, (index, count)


def output_stem(key: str) -> str:
    """The stem every output of `key` is named after: `name.jsonl(.gz|.zst)`, `name.json`, `name.parquet`
    -> `name` (a shard's outputs add `-00000-of-00004` to it)."""
    return input_stem(Path(key_to_file_name(split_shard_key(key)[0])))


def output_name(key: str) -> str:
    """The name (without extension) of the outputs of `key`: `name` or `name-00000-of-00004`."""
    shard = split_shard_key(key)[1]
    return output_stem(key) + (shard_suffix(*shard) if shard else "")


def item_key(path: str | Path, shard=None) -> str:
    """The key of the input file `path`, or of its shard (a `shards.Shard`, or `(index, count)`)."""
    key = file_name_to_key(Path(path).name)
    if shard is None:
        return key
    index, count = (shard.index, shard.count) if isinstance(shard, Shard) else shard
    return shard_key(key, index, count)


def account_file_name(key: str) -> str:
    """`<stem>.shards.json`: the name of the account of the file that `key` (or one of its shards) reads."""
    return fit_name(output_stem(key), SHARDS_SUFFIX)


def output_file_name(key: str, suffix: str) -> str:
    """`<stem><shard suffix><suffix>` for the work item `key` (`.arrow`, `.rejects.jsonl`, `.shards.json`
    for the whole file's account), shortened if too long for a file name."""
    shard = split_shard_key(key)[1]
    return fit_name(output_stem(key), (shard_suffix(*shard) if shard else "") + suffix)


def shard_keys(files: dict[str, Path], shard_bytes: int) -> dict[str, Path]:
    """`files` by key, each file over `shard_bytes` (plain .jsonl) as the keys of its shards."""
    out = {}
    for key, path in files.items():
        try:
            count = shard_count(path, shard_bytes)
        except OSError:  # gone since the scan: it stays whole, and its run says why
            count = 1
        if count == 1:
            out[key] = path
        else:
            out.update((shard_key(key, index, count), path) for index in range(count))
    return out


def scan(source: str | Path, shard_bytes: int = 0) -> tuple[dict[str, Path], list[str], list[str]]:
    """(files by key, warnings about output name clashes, warnings about entries that are not input
    files) of a folder, one file's folder or a folder and a glob; a file over `shard_bytes` is a key
    per shard. A missing or empty folder gives no files (no error: a sensor must not fail while a
    folder is being created)."""
    files, clashes, skipped = scan_inputs(source)
    by_key = shard_keys({file_name_to_key(path.name): path for path in files}, shard_bytes)
    names: dict[str, str] = {}  # a file named like another's shard (x-00000-of-00002.jsonl) would share its outputs
    for key in list(by_key):
        if key not in by_key:
            continue
        name = output_name(key)
        if name in names:
            path = by_key[key]  # the whole file is left out, every shard of it
            left_out = {k for k, p in by_key.items() if p == path}
            clashes.append(f"{path.name} skipped: its outputs would overwrite those of {by_key[names[name]].name} ({name}.*)")
            for k in left_out:
                del by_key[k]
            names = {n: k for n, k in names.items() if k not in left_out}
        else:
            names[name] = key
    return by_key, clashes, skipped


@dataclasses.dataclass
class Plan:
    """The work items of an input: `items` (key -> input file, in key order of the scan), `failures`
    (files that cannot run, with the reason) and `warnings` (entries of the folder left out)."""

    items: dict[str, Path]
    failures: list[tuple[Path, str]]
    warnings: list[str]


def plan_inputs(source: str | Path, shard_bytes: int = 0) -> Plan:
    """The plan of `source` (one file, a folder, or a folder and a glob); CollateError when it has no
    input file at all (with why: a missing folder, only subfolders, ...)."""
    source = Path(source)
    if source.is_file():
        return Plan(shard_keys({file_name_to_key(source.name): source}, shard_bytes), [], [])
    folder, pattern = input_folder_and_pattern(source)
    if pattern is None and not source.is_dir():
        list_input_files(source)  # a missing input: CollateError with the usual message
    if pattern is not None and not folder.is_dir():
        raise CollateError(f"input not found: {shown(folder)} (of {shown(source)}) is not a folder")
    files, clashes, skipped = scan(source, shard_bytes)
    failures = []
    for clash in clashes:
        name, _, reason = clash.partition(" skipped: ")
        failures.append((folder / name, f"not processed: {reason}; rename one of them"))
    if not files and not failures:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise CollateError(f"no input files ({INPUT_PATTERNS}) in {shown(source)}{why}")
    return Plan(files, failures, skipped)
