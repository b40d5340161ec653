"""File-system safety: what this tool writes never replaces what it did not write, and never shows half a file.

- `atomic_path`: written under a temporary name beside the target, renamed when complete; a target
  there that this tool did not write (`written_by_collate`) is refused before anything is written;
- temporaries name their writer (`<host>-<pid>`), so those of killed runs are removed by the next run
  (`remove_stale_temps`), and an interrupted run removes its own (process.RUN);
- `fit_name`: names kept within the file system's limit; `shown`: any name printable;
- `output_folder_problem`: outputs never inside the input folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import json

import msgpack
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import CollateError
from .process import RUN, host_tag, owner_tag, pid_alive

# What the files this tool writes hold, by which it knows them (`written_by_collate`): the columns of
# packed rows (write/writers.py), of a tokenized spill (pack/spill.py) and the fields of a rejects line.
PACKED_COLUMNS = ("input_ids", "labels", "position_ids", "seq_lengths")
WEIGHTS_COLUMN = "loss_weights"  # a fifth column of packed rows (and of spills) under the loss_weights setting
SPILL_COLUMNS = ("input_ids", "labels", "line", "uncut_hash")  # or the first three: a spill written before uncut_hash
REJECT_FIELDS = ("file", "line", "reason", "excerpt")
# Longest file name (bytes) on the file systems we write to (ext4, xfs, btrfs, tmpfs, APFS: 255).
NAME_MAX = 255

def fit_name(stem: str, suffix: str = "", prefix: str = "", limit: int = NAME_MAX) -> str:
    """`prefix + stem + suffix`, with `stem` shortened if the whole is over `limit` bytes.

    A shortened stem keeps its start and gets `~` and 8 hex digits of its sha256, so different
    stems stay different and the same stem always gives the same name. Names are measured in
    file-system bytes (`os.fsencode`: UTF-8, and non-UTF-8 bytes as they are on disk).
    """
    digest = hashlib.sha256(os.fsencode(stem)).hexdigest()[:8]
    if not _is_utf8(stem):
        # Bytes that are not UTF-8 (legal in a POSIX name) are written %XX: libraries that take
        # paths as UTF-8 text (pyarrow) could not open the name otherwise. The hash keeps it unique.
        stem = _escape_non_utf8(os.fsencode(stem)) + "~" + digest
    name = prefix + stem + suffix
    if len(os.fsencode(name)) <= limit:
        return name
    budget = limit - len(os.fsencode(prefix + suffix)) - 9
    if budget < 1:
        raise CollateError(f"cannot make a file name of at most {limit} bytes ending in {suffix!r}")
    head, used = [], 0
    for char in stem:
        size = len(os.fsencode(char))
        if used + size > budget:
            break
        head.append(char)
        used += size
    return f"{prefix}{''.join(head)}~{digest}{suffix}"


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escape_non_utf8(raw: bytes) -> str:
    """`raw` decoded as UTF-8, each byte that is not part of valid UTF-8 written `%XX`."""
    out, i = [], 0
    while i < len(raw):
        try:
            out.append(raw[i:].decode("utf-8"))
            break
        except UnicodeDecodeError as exc:
            out.append(raw[i : i + exc.start].decode("utf-8"))
            out.append("".join(f"%{b:02X}" for b in raw[i + exc.start : i + exc.end]))
            i += exc.end
    return "".join(out)


def shown(value: object) -> str:
    """A path or name as text fit for messages and JSON: bytes that are not UTF-8 written `\\xNN`."""
    text = str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", errors="backslashreplace")


def written_by_collate(path: str | Path) -> bool:
    """Whether the regular file at `path` is one this tool writes (an output, spill, rejects file or
    record), judged from its content: only such files are ever replaced. Empty files count as ours."""
    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISREG(info.st_mode):
        return False
    if info.st_size == 0:
        return True
    name = path.name
    try:
        if name.endswith(".arrow"):
            try:
                with pa.memory_map(str(path)) as source:
                    schema = pa.ipc.open_stream(source).schema
            except pa.ArrowInvalid:
                with pa.memory_map(str(path)) as source:
                    schema = pa.ipc.open_file(source).schema
            return tuple(schema.names) in (PACKED_COLUMNS, PACKED_COLUMNS + (WEIGHTS_COLUMN,), SPILL_COLUMNS,
                                           SPILL_COLUMNS + (WEIGHTS_COLUMN,), SPILL_COLUMNS[:3])
        if name.endswith(".parquet"):
            return tuple(pq.read_schema(str(path)).names) in (PACKED_COLUMNS, PACKED_COLUMNS + (WEIGHTS_COLUMN,))
        if name.endswith(".msgpack"):
            with open(path, "rb") as f:
                first = next(iter(msgpack.Unpacker(f, raw=False, max_buffer_size=64 << 20)))
            return isinstance(first, dict) and tuple(first) in (PACKED_COLUMNS, PACKED_COLUMNS + (WEIGHTS_COLUMN,))
        if name.endswith(".jsonl"):
            with open(path, "rb") as f:
                first = orjson.loads(f.readline(64 << 20))
            return isinstance(first, dict) and tuple(first) in (PACKED_COLUMNS, PACKED_COLUMNS + (WEIGHTS_COLUMN,), REJECT_FIELDS)
        if name.endswith(".json"):
            with open(path, "rb") as f:
                record = json.loads(f.read(64 << 20))  # (json: manifests may hold escaped non-UTF-8 names)
            # spill manifests (and the records of earlier layouts, which had a lineage), shard summaries
            # (core.read.shards.summarize) and training set manifests (core.pack.mix)
            return isinstance(record, dict) and (
                "lineage" in record
                or {"spill_path", "partition_key"} <= record.keys()
                or {"shard_count", "shards", "file_lines", "problems"} <= record.keys()
                or {"sources", "splits", "files", "settings"} <= record.keys()
            )
    except Exception:  # unreadable or another format: not ours
        return False
    return False


def check_replaceable(path: str | Path) -> None:
    """CollateError unless `path` is free or holds a file this tool wrote (never replace a user's file)."""
    path = Path(path)
    if os.path.lexists(path) and not written_by_collate(path):
        kind = "folder" if path.is_dir() else "symlink" if path.is_symlink() else "file"
        raise CollateError(
            f"{shown(path)} exists and is a {kind} this tool did not write: not replacing it "
            "(move it away or choose another output folder)"
        )


def output_folder_problem(input_path: str | Path, output_dir: str | Path) -> str | None:
    """Why `output_dir` may not hold the outputs of `input_path` (a file or folder), or None.

    Outputs never go where an input could be read or overwritten: the output folder may not be
    the input folder (of a file: its folder) nor inside it. Compared after resolving symlinks.
    """
    source = Path(input_path).expanduser()
    if not source.exists():
        return None  # nothing there to protect (the missing input is reported where it is read)
    folder = source if source.is_dir() else source.parent
    folder = folder.resolve()
    out = Path(output_dir).expanduser().resolve()
    if out == folder:
        return f"the output folder {shown(out)} is the input folder: outputs would be read as inputs or replace them"
    if out.is_relative_to(folder):
        return f"the output folder {shown(out)} is inside the input folder {shown(folder)}"
    return None


def remove_stale_temps(folder: str | Path, pattern: str) -> list[Path]:
    """Remove the entries of `folder` whose name matches `pattern` and whose writer is dead.

    `pattern` is a regular expression whose group `tag` captures a `<host>-<pid>` owner tag. Only
    entries of this host whose process no longer exists are removed (a live pid, even a reused one,
    keeps its entry), so a run killed with SIGKILL leaves at most one temporary per target behind
    until the next run of that target. Returns what was removed.
    """
    folder = Path(folder)
    host = host_tag()
    regex = re.compile(pattern)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = regex.fullmatch(entry.name)
        if match is None:
            continue
        entry_host, _, pid = match.group("tag").partition("-")
        if entry_host != host or not pid.isdigit() or pid_alive(int(pid)):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:  # gone meanwhile, or not ours to remove
            continue
        removed.append(path)
    return removed


# `.<host>-<pid>.<random>.tmp` after the name: the host hash, a pid, mkstemp's 8 characters.
_TEMP_SUFFIX_BYTES = len(".00000000-4194304..12345678.tmp") + 4


def _temp_stem(path: str | Path) -> str:
    """The part of the target's name in its temporary names (shortened so they fit NAME_MAX)."""
    return fit_name(Path(path).name, "x" * _TEMP_SUFFIX_BYTES, ".")[1 : -_TEMP_SUFFIX_BYTES]


def temp_name_pattern(path: str | Path) -> str:
    """The names `atomic_path(path)` gives its temporary files: `.<name>.<host>-<pid>.<random>.tmp`."""
    return rf"\.{re.escape(_temp_stem(path))}\.(?P<tag>[0-9a-f]{{8}}-\d+)\.[a-z0-9_]{{8}}\.tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    The temporary name `.<name>.<host>-<pid>.<random>.tmp` is hidden, never ends like an input or
    output file, and names its writer: temporaries of the same target left by dead processes
    (a run killed with SIGKILL) are removed when the target is written again. `<name>` is shortened
    when the whole would be longer than a file name may be.

    An existing `path` is replaced only if this tool wrote it (`written_by_collate`); anything else
    there (a user's file, a folder, a symlink) raises CollateError before anything is written.
    """
    path = Path(path)
    check_replaceable(path)
    RUN.check_not_stopping()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, temp_name_pattern(path))
    RUN.temp_dirs.add(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{_temp_stem(path)}.{owner_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    RUN.temps.add(Path(tmp))
    if RUN.stopping.is_set():
        os.unlink(tmp)
        RUN.check_not_stopping()
    # mkstemp makes the file private (0600); outputs get the usual permissions for this umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        RUN.temps.discard(Path(tmp))


@contextlib.contextmanager
def work_dir(parent: str | Path | None = None, prefix: str = "collate-"):
    """A temporary folder `<prefix><host>-<pid>-<random>` in `parent` (default: the system temp folder).

    Folders of the same prefix left by dead processes in `parent` are removed first.
    """
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    RUN.check_not_stopping()
    remove_stale_temps(parent, rf"{re.escape(prefix)}(?P<tag>[0-9a-f]{{8}}-\d+)-[a-z0-9_]{{8}}")
    RUN.temp_dirs.add(parent)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{owner_tag()}-", dir=parent) as tmp:
        RUN.temps.add(Path(tmp))
        try:
            yield Path(tmp)
        finally:
            RUN.temps.discard(Path(tmp))


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
