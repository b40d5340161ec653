"""One dynamic partition per input file, and the reversible mapping file name <-> partition key.

Partition keys must be safe to type in the UI and on the command line: Dagster reserves `...` (range
selection), commas break UI backfills (dagster#32183) and `/` reads like a path. A key is therefore the
file name, relative to the input folder, with every byte outside `[A-Za-z0-9._-]` written as `%XX`
(upper-case hex of its UTF-8 / filesystem bytes) and every `.` that follows another `.` written as `%2E`,
so `...` never appears and `%` itself is always escaped (`%25`), which makes the mapping reversible:

    demo.jsonl          -> demo.jsonl
    a,b c.jsonl         -> a%2Cb%20c.jsonl
    v1...final.jsonl    -> v1.%2E%2Efinal.jsonl
    données.jsonl       -> donn%C3%A9es.jsonl

Only the files directly in the input folder are partitions (`*.jsonl`, `*.jsonl.gz`, `*.jsonl.zst`,
`*.json`, `*.parquet`: `collate_assets.core.reader.INPUT_SUFFIXES`); subfolders are not scanned, matching `collate_assets.core.list_input_files`. Entries that are not regular files and symlinks
that resolve outside the input folder are skipped with a warning; `CollatePaths.input_path` refuses them
again when a partition is materialized (the folder may have changed since it was scanned).

A key can only ever name a file directly inside the input folder: the decoded name must be a bare file
name (no `/`, no NUL, not `.` or `..`), or the key is refused.

A plain `.jsonl` file over the `shard_mb` setting is several partitions, one per shard (see
`collate_assets.core.shards`): its key, `@`, and the shard as its outputs name it (`@` never appears in a
file's key, where it would be `%40`):

    big.jsonl@00000-of-00004 ... big.jsonl@00003-of-00004
"""

import os
import re
from pathlib import Path

import dagster as dg

from collate_assets.core import input_stem as _input_stem
from collate_assets.core.reader import scan_inputs
from collate_assets.core.shards import shard_count, shard_suffix


INPUT_FILES = dg.DynamicPartitionsDefinition(name="input_files")

_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_DOT = ord(".")


def file_name_to_key(name: str) -> str:
    """The partition key of the input file called `name` (a bare file name, no folder)."""
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


SHARD_SEP = "@"
_SHARD = re.compile(r"-(\d{5,})-of-(\d{5,})")


def shard_key(file_key: str, index: int, count: int) -> str:
    """The partition key of shard `index` of `count` of the file whose key is `file_key`."""
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
    """The stem every output of partition `key` is named after: `name.jsonl(.gz|.zst)`, `name.json`,
    `name.parquet` -> `name` (a shard's outputs add `-00000-of-00004` to it; see `files.DatasetFiles`)."""
    return _input_stem(Path(key_to_file_name(split_shard_key(key)[0])))


def shard_keys(files: dict[str, Path], shard_bytes: int) -> dict[str, Path]:
    """`files` by partition key, each file over `shard_bytes` (plain .jsonl) as the keys of its shards."""
    out = {}
    for key, path in files.items():
        try:
            count = shard_count(path, shard_bytes)
        except OSError:  # gone since the scan: its partition stays whole, and its run says why
            count = 1
        if count == 1:
            out[key] = path
        else:
            out.update((shard_key(key, index, count), path) for index in range(count))
    return out


def scan_input_folder(input_dir: str | Path, shard_bytes: int = 0) -> tuple[dict[str, Path], list[str]]:
    """The input files of `input_dir` by partition key, and warnings about files left out.

    `input_dir` is a folder, one input file, or a folder and a glob (`/data/chats/*.jsonl`). A
    missing or empty folder gives no files (no error: a sensor must not fail while a folder is
    being created). Two files with the same stem (`x.jsonl` and `x.jsonl.gz`, or `x.json` and
    `x.parquet`) would write the same outputs, so only the first in sorted order is kept. Folders,
    special files, broken symlinks and symlinks leading outside `input_dir` are left out too.
    """
    by_key, clashes, skipped = _scan(input_dir, shard_bytes)
    return by_key, skipped + clashes


def _scan(input_dir: str | Path, shard_bytes: int = 0) -> tuple[dict[str, Path], list[str], list[str]]:
    """(files by key, warnings about stem clashes, warnings about entries that are not input files);
    a file over `shard_bytes` is a key per shard."""
    files, clashes, skipped = scan_inputs(input_dir)
    by_key = shard_keys({file_name_to_key(path.name): path for path in files}, shard_bytes)
    names: dict[str, str] = {}  # a file named like another's shard (x-00000-of-00002.jsonl) would share its outputs
    for key in list(by_key):
        name = output_name(key)
        if name in names:
            clashes.append(f"{by_key.pop(key).name} skipped: its outputs would overwrite those of {names[name]} ({name}.*)")
        else:
            names[name] = key
    return by_key, clashes, skipped


def output_name(key: str) -> str:
    """The name (without extension) of partition `key`'s outputs: `name` or `name-00000-of-00004`."""
    shard = split_shard_key(key)[1]
    return output_stem(key) + (shard_suffix(*shard) if shard else "")


def register_keys(instance: dg.DagsterInstance, partitions_name: str, keys: list[str]) -> list[str]:
    """Add the partitions `keys` that the instance does not know yet; returns the keys added."""
    known = set(instance.get_dynamic_partitions(partitions_name))
    new = [key for key in keys if key not in known]
    if new:
        instance.add_dynamic_partitions(partitions_name, new)
    return new


def input_files_partitions(name: str = INPUT_FILES.name) -> dg.DynamicPartitionsDefinition:
    """The dynamic partitions of one dataset (`input_files` for the default one)."""
    return INPUT_FILES if name == INPUT_FILES.name else dg.DynamicPartitionsDefinition(name=name)
