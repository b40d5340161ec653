"""Where a dataset's files are: its input files, and the outputs, rejects and spills of a partition.

One layout for the `collate` command and the asset graph (collate-rs's layout):

    <output_dir>/<name>.<ext>                   packed rows, one file per format asked for
    <output_dir>/<name>.rejects.jsonl           records that could not be used, with the reason
    <spill_dir>/<name>.arrow                    tokenized sequences (Arrow IPC file)
    <spill_dir>/<name>.manifest.json            how the spill was made (input, tokenizer, settings, stats)

`<spill_dir>` is `<output_dir>/.collate_tokenized` unless set. Outputs may live on any fsspec
location (UPath: s3://, gs://, memory://); spills are memory-mapped, so they stay on local disk (a
temporary folder beside a remote output, which also holds the rejects file then). Layouts before
this one (`<output_dir>/<format>/<name>.<ext>` and `<output_dir>/_tokenized/`) are not read: the
first run in such a folder writes the new layout and says so once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from upath import UPath

from collate_assets.core import EXTENSIONS, CollateError, CollateSettings, PackStats, pack_spill
from collate_assets.core.read.reader import INPUT_PATTERNS, INPUT_SUFFIXES, input_file_problem, input_folder_and_pattern
from collate_assets.core.read.shards import Shard, locate_shard, shard_count
from collate_assets.core.fs import atomic_path, output_folder_problem

from collate_assets.core.plan import account_file_name, key_to_file_name, output_file_name, shard_key, split_shard_key
from collate_assets.core.plan import output_stem as _output_stem

LOCAL_PROTOCOLS = ("", "file", "local")
SPILL_FOLDER = ".collate_tokenized"


def is_local(path: UPath) -> bool:
    return path.protocol in LOCAL_PROTOCOLS


def local_path(path: UPath) -> Path:
    """A local UPath (plain or file://) as a pathlib.Path."""
    return Path(path.path)


def _input_file_name(partition_key: str) -> str:
    """The input file name of a partition key: a bare input file name (INPUT_SUFFIXES), or CollateError."""
    try:
        name = key_to_file_name(split_shard_key(partition_key)[0])
    except ValueError as exc:
        raise CollateError(
            f"partition key {partition_key!r} does not name a file of the input folder ({exc}); partitions "
            "are made from the files of the input folder (by the input files sensor or `collate`), "
            "not typed by hand"
        ) from exc
    if not name.endswith(INPUT_SUFFIXES):
        raise CollateError(f"partition key {partition_key!r} does not name an input file ({INPUT_PATTERNS})")
    return name


def output_stem(partition_key: str) -> str:
    """The stem outputs of a partition are named after; CollateError for a key no input file could have."""
    _input_file_name(partition_key)
    stem = _output_stem(partition_key)
    if "/" in stem or "\0" in stem:  # cannot happen for a bare file name; never write elsewhere
        raise CollateError(f"partition key {partition_key!r} gives an unsafe output name {stem!r}")
    return stem


class DatasetFiles:
    """The file locations of one dataset's settings (input, output and spill folders)."""

    def __init__(self, settings: CollateSettings):
        self.settings = settings
        self.input_folder, self.pattern = input_folder_and_pattern(settings.input_path())

    def input_path(self, partition_key: str) -> Path:
        """The input file of a partition: always directly inside the input folder.

        A symlink there that resolves outside the folder is refused (CollateError); a missing file
        or a folder is left for the caller to report.
        """
        path = self.input_folder / _input_file_name(partition_key)
        if path.is_symlink():
            problem = input_file_problem(path, self.input_folder)
            if problem is not None and "outside the input folder" in problem:
                raise CollateError(f"input {path} for partition {partition_key!r} {problem}: refused")
        return path

    def output_root(self) -> UPath:
        return UPath(self.settings.output_dir)

    def check_folders(self) -> None:
        """CollateError when an output or spill folder is the input folder or inside it."""
        folders = [self.spill_root()]
        if is_local(self.output_root()):
            folders.insert(0, local_path(self.output_root()))
        for folder in folders:
            problem = output_folder_problem(self.input_folder, folder)
            if problem is not None:
                raise CollateError(f"{problem}; set another output_dir / spill_dir")

    def file_name(self, partition_key: str, suffix: str) -> str:
        """`<stem><suffix>` of a partition (`<stem>-00000-of-00004<suffix>` for a shard), shortened if too
        long for a file name."""
        output_stem(partition_key)  # CollateError for a key no input file could have
        return output_file_name(partition_key, suffix)

    def shard(self, partition_key: str, path: Path) -> Shard | None:
        """The part of `path` a partition reads (None: all of it), as the file is now.

        CollateError when the file is no longer split as the key says (it grew or shrank, or shard_mb
        changed): the input files sensor (or `collate`) registers the partitions it is split into now,
        and outputs are never written under a count that is out of date.
        """
        shard = split_shard_key(partition_key)[1]
        now = shard_count(path, self.settings.shard_bytes())
        if (shard[1] if shard else 1) != now:
            split = f"split into {now} shards" if now > 1 else "read whole"
            raise CollateError(
                f"partition {partition_key!r}: {path.name} is now {split} (shard_mb={self.settings.shard_mb:g}); "
                "its partitions are registered anew by the input files sensor or `collate`"
            )
        return locate_shard(path, *shard) if shard else None

    def shard_keys(self, partition_key: str) -> list[str]:
        """Every partition key of the file partition `partition_key` reads (itself for a whole file)."""
        file_key, shard = split_shard_key(partition_key)
        if shard is None:
            return [partition_key]
        return [shard_key(file_key, index, shard[1]) for index in range(shard[1])]

    def summary_path(self, partition_key: str) -> UPath:
        """`<output_dir>/<stem>.shards.json`: the account of a split file's shards."""
        output_stem(partition_key)  # CollateError for a key no input file could have
        return self.output_root() / account_file_name(partition_key)

    def output_path(self, partition_key: str, fmt: str) -> UPath:
        """`<output_dir>/<stem><ext>`: the stem of a bare file name, so never outside output_dir."""
        return self.output_root() / self.file_name(partition_key, EXTENSIONS[fmt])

    def spill_root(self) -> Path:
        if self.settings.spill_dir:
            return Path(self.settings.spill_dir).expanduser()
        root = self.output_root()
        if is_local(root):
            return local_path(root) / SPILL_FOLDER
        # The engine memory-maps spills, so they stay on local disk next to a remote output.
        tag = hashlib.sha256(self.settings.output_dir.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / "collate_spill" / tag

    def spill_path(self, partition_key: str) -> Path:
        return self.spill_root() / self.file_name(partition_key, ".arrow")

    def rejects_path(self, partition_key: str) -> Path:
        name = self.file_name(partition_key, ".rejects.jsonl")
        if is_local(self.output_root()):
            return local_path(self.output_root()) / name
        return self.spill_root() / name

    def manifest_path(self, partition_key: str) -> Path:
        return self.spill_root() / self.file_name(partition_key, ".manifest.json")

    def old_layout(self) -> list[Path]:
        """Folders of the layout before this one in a local output folder (never read, never removed)."""
        root = self.output_root()
        if not is_local(root):
            return []
        base = local_path(root)
        return [base / name for name in ("_tokenized", *EXTENSIONS) if (base / name).is_dir()]


def write_packed(spill_path: str | Path, dest: UPath, fmt: str, settings: CollateSettings) -> PackStats:
    """Pack a spill into `dest` atomically, on a local folder or any fsspec location.

    Local outputs are written under a temporary name and renamed; remote ones are packed into a
    local temporary file and uploaded with one put (object stores publish an object only when its
    upload completes).
    """
    if is_local(dest):
        return pack_spill(spill_path, local_path(dest), fmt, settings)
    with tempfile.TemporaryDirectory(prefix="collate-pack-") as tmp:
        staged = Path(tmp) / dest.name
        stats = pack_spill(spill_path, staged, fmt, settings)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.fs.put_file(str(staged), dest.path)
    stats.output = str(dest)
    return stats


@contextlib.contextmanager
def local_copy(path: UPath) -> Iterator[Path]:
    """A local path to read `path` from: itself when local, else a downloaded temporary copy."""
    if is_local(path):
        yield local_path(path)
        return
    with tempfile.TemporaryDirectory(prefix="collate-read-") as tmp:
        staged = Path(tmp) / path.name
        path.fs.get_file(path.path, str(staged))
        yield staged


@dataclasses.dataclass(frozen=True)
class SpillManifest:
    """A tokenized input file: where its spill is and how it was made (`<spill_dir>/<name>.manifest.json`).

    `tokenized_conversations` writes it after the spill, so a manifest always points at a complete
    spill; the packed assets read it to find the spill and its statistics.
    """

    partition_key: str
    spill_path: str
    rejects_path: str
    input_path: str
    input_sha256: str
    tokenizer: dict[str, Any]  # name, revision, chat_template, fingerprint
    settings: dict[str, Any]  # CollateSettings.as_dict()
    stats: dict[str, Any]  # TokenizeStats.to_dict()

    def collate_settings(self) -> CollateSettings:
        return CollateSettings(**self.settings)

    def write(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> "SpillManifest":
        """The manifest at `path`; CollateError when it or its spill is missing or unreadable."""
        try:
            manifest = cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise CollateError(f"no tokenized spill manifest at {path}: materialize tokenized_conversations first") from None
        except (OSError, ValueError, TypeError) as exc:
            raise CollateError(f"unreadable spill manifest {path} ({exc}): materialize tokenized_conversations again") from exc
        if not Path(manifest.spill_path).is_file():
            raise CollateError(f"spill file {manifest.spill_path} is gone: materialize tokenized_conversations again")
        return manifest
