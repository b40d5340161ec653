"""The engine's public steps, and both together for the CLI and scripts.

    tokenize_file(input, spill, tokenizer, settings)  -> TokenizeStats   (tokenize.py)
    pack_spill(spill, output, fmt, settings)           -> PackStats       (spill.py)
    collate_file / collate_folder                       both steps
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from .tokens.audit import supervision_problems
from .errors import CollateError
from .plan import account_file_name, item_key, output_file_name
from .read.reader import list_input_files
from .settings import EXTENSIONS, CollateSettings, check_format
from .read.shards import Shard
from .stats import FileStats
from .pack.spill import pack_spill
from .tokens.tokenize import Progress, tokenize_file
from .fs import fit_name, output_folder_problem
from .fs import work_dir as _work_dir


def output_path_for(input_path: Path, output_dir: Path, fmt: str, shard: Shard | None = None) -> Path:
    """`in/name.jsonl(.gz)` → `out/name.<ext>`, a shard's `out/name-00000-of-00004.<ext>` (a name too
    long for the file system is shortened)."""
    return Path(output_dir) / output_file_name(item_key(input_path, shard), EXTENSIONS[fmt])


def shard_summary_path(input_path: Path, output_dir: Path) -> Path:
    """`out/name.shards.json`: the account of a sharded file's shards."""
    return Path(output_dir) / account_file_name(item_key(input_path))


def write_shard_summary(path: Path, summary: dict) -> None:
    import json

    from .fs import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def rejects_path_for(output_path: Path) -> Path:
    return output_path.with_name(fit_name(output_path.name.rsplit(".", 1)[0], ".rejects.jsonl"))


def collate_file(
    input_path: str | Path,
    output_path: str | Path,
    tokenizer,
    settings: CollateSettings,
    fmt: str = "arrow",
    *,
    rejects_path: str | Path | None = None,
    progress: Progress | None = None,
    work_dir: str | Path | None = None,
    max_line_bytes: int | None = None,
) -> FileStats:
    """Tokenize and pack one file; the spill file lives in a temporary folder.

    The folder is `collate-<host>-<pid>-*` in `work_dir` (default: the system temp folder); such
    folders left behind by killed runs are removed by the next run.
    """
    [stats] = collate_file_formats(
        input_path, {fmt: Path(output_path)}, tokenizer, settings,
        rejects_path=rejects_path, progress=progress, work_dir=work_dir, max_line_bytes=max_line_bytes,
    )
    return stats


def collate_file_formats(
    input_path: str | Path,
    outputs: Mapping[str, str | Path],
    tokenizer,
    settings: CollateSettings,
    *,
    rejects_path: str | Path | None = None,
    progress: Progress | None = None,
    work_dir: str | Path | None = None,
    max_line_bytes: int | None = None,
    shard: Shard | None = None,
) -> list[FileStats]:
    """Tokenize one file (or one shard of it) once and pack it into each format of `outputs` (format -> output path).

    The rejects file is the first output's (`rejects_path_for`) unless given. A file whose supervision
    audit is over a threshold of the settings (`min_trained_share`, `max_untrained_turn_ends`) is not
    packed: CollateError with the figure and the threshold, as the Dagster layer's blocking checks do.
    """
    for fmt in outputs:
        check_format(fmt)
    if not outputs:
        raise ValueError("no output format given")
    start = time.perf_counter()
    if rejects_path is None:
        rejects_path = rejects_path_for(Path(next(iter(outputs.values()))))
    out = []
    with _work_dir(work_dir) as tmp:
        spill = Path(tmp) / "spill.arrow"
        tok_stats = tokenize_file(
            input_path, spill, tokenizer, settings,
            rejects_path=rejects_path, progress=progress, max_line_bytes=max_line_bytes, shard=shard,
        )
        tokenized = time.perf_counter() - start
        failed = [message for _, passed, message in supervision_problems(tok_stats.supervision, settings) if not passed]
        if failed:
            raise CollateError(f"{input_path}: {'; '.join(failed)}")
        for fmt, output_path in outputs.items():
            begun = time.perf_counter()
            pack_stats = pack_spill(spill, Path(output_path), fmt, settings)
            out.append(FileStats(tok_stats, pack_stats, tokenized + time.perf_counter() - begun))
    return out


def collate_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    tokenizer,
    settings: CollateSettings,
    fmt: str = "arrow",
    *,
    progress: Progress | None = None,
    max_line_bytes: int | None = None,
) -> list[FileStats]:
    """Collate every `*.jsonl(.gz)` of a folder (or one file): one output per input file.

    The output folder may not be the input folder or inside it (CollateError).
    """
    problem = output_folder_problem(input_dir, output_dir)
    if problem is not None:
        raise CollateError(problem)
    return [
        collate_file(path, output_path_for(path, Path(output_dir), fmt), tokenizer, settings, fmt,
                     progress=progress, max_line_bytes=max_line_bytes)
        for path in list_input_files(input_dir)
    ]
