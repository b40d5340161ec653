"""One dynamic partition per work item of the plan: an input file, or a shard of a big plain .jsonl.

Partition keys are the plan's keys (`collate_assets.core.plan`, which says how a file name becomes a
key and back): safe to type in the UI and on the command line, since Dagster reserves `...` (range
selection), commas break UI backfills (dagster#32183) and `/` reads like a path.

Only the files directly in the input folder are partitions (`*.jsonl`, `*.jsonl.gz`, `*.jsonl.zst`,
`*.json`, `*.parquet`); subfolders are not scanned. Entries that are not regular files and symlinks
that resolve outside the input folder are skipped with a warning; `DatasetFiles.input_path` refuses
them again when a partition is materialized (the folder may have changed since it was scanned). A key
can only ever name a file directly inside the input folder.
"""

from pathlib import Path

import dagster as dg

from collate_assets.core.plan import scan

INPUT_FILES = dg.DynamicPartitionsDefinition(name="input_files")


def scan_input_folder(input_dir: str | Path, shard_bytes: int = 0) -> tuple[dict[str, Path], list[str]]:
    """The input files of `input_dir` by partition key, and warnings about files left out.

    `input_dir` is a folder, one input file, or a folder and a glob (`/data/chats/*.jsonl`). A
    missing or empty folder gives no files (no error: a sensor must not fail while a folder is
    being created). Two files with the same stem (`x.jsonl` and `x.jsonl.gz`, or `x.json` and
    `x.parquet`) would write the same outputs, so only the first in sorted order is kept. Folders,
    special files, broken symlinks and symlinks leading outside `input_dir` are left out too.
    """
    by_key, clashes, skipped = scan(input_dir, shard_bytes)
    return by_key, skipped + clashes


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
