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
"""

import logging
import os
from pathlib import Path

import dagster as dg

from collate_assets.core import CollateError
from collate_assets.core import input_stem as _input_stem
from collate_assets.core.reader import INPUT_PATTERNS, scan_input_files

log = logging.getLogger(__name__)

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


def output_stem(key: str) -> str:
    """The stem every output of partition `key` is named after: `name.jsonl(.gz|.zst)`, `name.json`, `name.parquet` -> `name`."""
    return _input_stem(Path(key_to_file_name(key)))


def scan_input_folder(input_dir: str | Path) -> tuple[dict[str, Path], list[str]]:
    """The input files of `input_dir` by partition key, and warnings about files left out.

    A missing or empty folder gives no files (no error: a sensor must not fail while a folder is
    being created). Two files with the same stem (`x.jsonl` and `x.jsonl.gz`, or `x.json` and
    `x.parquet`) would write the same outputs, so only the first in sorted order is kept. Folders, special files, broken symlinks and
    symlinks leading outside `input_dir` are left out too.
    """
    by_key, clashes, skipped = _scan(input_dir)
    return by_key, skipped + clashes


def _scan(input_dir: str | Path) -> tuple[dict[str, Path], list[str], list[str]]:
    """(files by key, warnings about stem clashes, warnings about entries that are not input files)."""
    folder = Path(input_dir)
    if not folder.is_dir():
        return {}, [], [f"input folder {folder} does not exist"] if not folder.exists() else [
            f"input {folder} is not a folder"
        ]
    files, skipped = scan_input_files(folder)
    by_key: dict[str, Path] = {}
    stems: dict[str, str] = {}
    clashes: list[str] = []
    for path in files:
        key = file_name_to_key(path.name)
        stem = _input_stem(path)
        if stem in stems:
            clashes.append(f"{path.name} skipped: its outputs would overwrite those of {stems[stem]} (same name before .jsonl)")
            continue
        stems[stem] = path.name
        by_key[key] = path
    return by_key, clashes, skipped


def register_partitions(instance: dg.DagsterInstance, input_dir: str | Path, *, observe: bool = True) -> list[str]:
    """Add a partition for every input file of `input_dir` the instance does not know yet.

    `input_dir` is the input folder, or one input file (its key is then relative to its own folder,
    which must be the folder the run's `paths` resource reads). Returns the partition keys of the
    files, in file-name order (the ones just added and the ones already there). The `collate` CLI
    calls this before materializing, because a dynamic partition must exist before anything can
    run it. With `observe`, a file whose content changed since its last observation also gets a
    `raw_conversations` observation (its sha256), as the sensor would record, so Dagster's own
    staleness follows CLI runs too. Raises CollateError when there is no input file or two files
    would write the same outputs; entries that are not input files (folders, broken symlinks,
    symlinks leading outside the folder) are skipped with a logged warning, as
    `collate_assets.core.list_input_files` skips them.
    """
    source = Path(input_dir)
    if source.is_file():
        files = {file_name_to_key(source.name): source}
    else:
        files, clashes, skipped = _scan(source)
        if clashes:
            raise CollateError(
                "; ".join(c.replace(" skipped:", ":", 1) for c in clashes) + ": nothing registered, rename one of them"
            )
        for warning in skipped:
            log.warning("%s: %s", source, warning)
        if not files:
            raise CollateError(f"no input files ({INPUT_PATTERNS}) in {source}")
    return register_keys(instance, files, observe=observe)


def register_keys(instance: dg.DagsterInstance, files: dict[str, Path], *, observe: bool = True) -> list[str]:
    """Add the partitions `files` (key -> input file) the instance does not know yet; returns the keys."""
    known = set(instance.get_dynamic_partitions(INPUT_FILES.name))
    new = [key for key in files if key not in known]
    if new:
        instance.add_dynamic_partitions(INPUT_FILES.name, new)
    if observe:
        from .lineage import observe_if_changed  # lineage builds on this module

        for key, path in files.items():
            observe_if_changed(instance, key, path)
    return list(files)
