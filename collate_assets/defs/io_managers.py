"""IO managers: the spill handed from tokenizing to packing, and one writer per packed format.

Both read the top-level `paths` resource (declared as a required resource key rather than a nested
resource field: a nested resource keeps its definition-time config and would ignore a launchpad
override of `paths`).

Packed layout, on any universal_pathlib location (a local folder, file://, or an fsspec URL such
as s3://, gs://, memory:// when its filesystem package is installed):

    <output_dir>/<format>/<input file stem>.<ext>     e.g. collate_output/parquet/demo.parquet

A file appears whole or not at all: local outputs are written under a temporary name in the target
folder and renamed; remote ones are packed into a local temporary file and then uploaded with one
put (object stores publish an object only when its upload completes).
"""

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from upath import UPath

from collate_assets.core import EXTENSIONS, OUTPUT_FORMATS, CollateSettings, PackStats, atomic_path, pack_spill

from .resources import CollatePaths, is_local, local_path

PACKED_COLUMNS = dg.TableSchema(
    columns=[
        dg.TableColumn("input_ids", "list<int32>", description="token ids of the row, several conversations back to back"),
        dg.TableColumn("labels", "list<int32>", description="-100 where not trained, and at every sequence start"),
        dg.TableColumn("position_ids", "list<int32>", description="restart at 0 where each sequence starts"),
        dg.TableColumn("seq_lengths", "list<int32>", description="length of each sequence in the row"),
    ]
)


@dataclasses.dataclass(frozen=True)
class TokenizedSpill:
    """A tokenized input file: where its spill is and how it was made (the manifest beside it)."""

    partition_key: str
    spill_path: str
    rejects_path: str
    input_path: str
    input_sha256: str
    tokenizer: dict[str, Any]  # name, revision, chat_template, trust_remote_code, fingerprint
    settings: dict[str, Any]  # CollateSettings.as_dict()
    lineage: str
    stats: dict[str, Any]  # TokenizeStats.to_dict()

    def collate_settings(self) -> CollateSettings:
        return CollateSettings(**self.settings)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TokenizedSpill":
        return cls(**json.loads(text))


@dataclasses.dataclass(frozen=True)
class PackRequest:
    """What a packed asset hands its IO manager: pack this spill as `fmt` with these settings."""

    spill: TokenizedSpill
    fmt: str
    settings: CollateSettings
    lineage: str


class SpillIOManager(dg.IOManager):
    """Stores a TokenizedSpill as `<spill_dir>/<stem>.manifest.json`; loads it back for packing.

    The spill itself is written by `tokenized_conversations`; the manifest is written last, so a
    manifest always points at a complete spill.
    """

    def __init__(self, paths: CollatePaths):
        self.paths = paths

    def handle_output(self, context: dg.OutputContext, obj: TokenizedSpill) -> None:
        target = self.paths.manifest_path(context.asset_partition_key)
        with atomic_path(target) as tmp:
            tmp.write_text(obj.to_json(), encoding="utf-8")
        context.add_output_metadata({"manifest": dg.MetadataValue.path(str(target))})

    def load_input(self, context: dg.InputContext) -> "TokenizedSpill":
        key = context.asset_partition_key
        # The manifest recorded by the latest materialization wins: `collate` keeps its spills beside
        # its own output folder, and a later UI run of packed_* must use what was actually tokenized.
        manifest = _recorded_manifest(context, key) or self.paths.manifest_path(key)
        if not manifest.is_file():
            raise dg.Failure(
                description=f"no tokenized spill for partition {key!r} at {manifest}: materialize "
                "tokenized_conversations for it first",
                allow_retries=False,
            )
        spill = TokenizedSpill.from_json(manifest.read_text(encoding="utf-8"))
        if not Path(spill.spill_path).is_file():
            raise dg.Failure(
                description=f"spill file {spill.spill_path} is gone: materialize tokenized_conversations again",
                allow_retries=False,
            )
        return spill


def _recorded_manifest(context: dg.InputContext, key: str) -> Path | None:
    try:
        instance = context.instance
    except Exception:  # contexts built without an instance (direct IO manager tests)
        return None
    upstream = context.upstream_output.asset_key if context.upstream_output else None
    if instance is None or upstream is None:
        return None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=upstream, asset_partitions=[key]), limit=1
    ).records
    if not records:
        return None
    entry = records[0].asset_materialization.metadata.get("manifest")
    path = Path(entry.value) if entry is not None else None
    return path if path is not None and path.is_file() else None


def _unchanged_output(record: Path, dest: UPath, lineage: str) -> PackStats | None:
    """The stats of `dest` when it was written from exactly this lineage and not touched since."""
    try:
        kept = json.loads(record.read_text(encoding="utf-8"))
        info = dest.stat()
    except (OSError, ValueError):
        return None
    if (kept.get("lineage"), kept.get("output"), kept.get("size"), kept.get("mtime")) != (
        lineage, str(dest), info.st_size, info.st_mtime
    ):
        return None
    return PackStats(**kept["stats"])


def write_packed(spill_path: str | Path, dest: UPath, fmt: str, settings: CollateSettings) -> PackStats:
    """Pack a spill into `dest` atomically, on a local folder or any fsspec location."""
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


class PackedFileIOManager(dg.IOManager):
    """Writes one packed format to `<output_dir>/<format>/<stem><ext>`; loads return that UPath."""

    def __init__(self, paths: CollatePaths, fmt: str):
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.paths = paths
        self.fmt = fmt

    def handle_output(self, context: dg.OutputContext, obj: PackRequest) -> None:
        if obj.fmt != self.fmt:
            raise dg.Failure(f"{self.fmt}_io_manager received a {obj.fmt} pack request", allow_retries=False)
        key = context.asset_partition_key
        dest = self.paths.output_path(key, self.fmt)
        self.paths.check_folders()
        record = self.paths.spill_root() / self.paths.file_name(key, f".{self.fmt}.packed.json")
        stats = _unchanged_output(record, dest, obj.lineage)
        if stats is not None:
            context.log.info(f"{dest} is already packed from this spill with these settings: kept as it is")
        else:
            stats = write_packed(obj.spill.spill_path, dest, self.fmt, obj.settings)
            info = dest.stat()
            with atomic_path(record) as tmp:
                tmp.write_text(json.dumps({"lineage": obj.lineage, "output": str(dest), "size": info.st_size,
                                           "mtime": info.st_mtime, "stats": stats.to_dict()}, sort_keys=True))
        context.add_output_metadata(packed_metadata(stats, dest, obj))

    def load_input(self, context: dg.InputContext) -> UPath:
        dest = self.paths.output_path(context.asset_partition_key, self.fmt)
        if not dest.exists():
            raise dg.Failure(
                description=f"{dest} does not exist: materialize packed_{self.fmt} for this partition",
                allow_retries=False,
            )
        return dest


def packed_metadata(stats: PackStats, dest: UPath, request: PackRequest) -> dict[str, Any]:
    """Numbers as int/float metadata (the UI plots them per partition), identity as text."""
    spill = request.spill
    tokenizer = spill.tokenizer
    location = dg.MetadataValue.path(str(local_path(dest))) if is_local(dest) else dg.MetadataValue.url(str(dest))
    return {
        "dagster/row_count": stats.rows,
        "dagster/column_schema": PACKED_COLUMNS,
        "dagster/uri": str(dest),
        "path": location,
        "rows": stats.rows,
        "lower_bound_rows": stats.lower_bound,
        "rows_over_lower_bound": stats.rows - stats.lower_bound,
        "fill": float(stats.fill),
        "sequences": stats.sequences,
        "sequences_per_row": float(stats.sequences_per_row),
        "tokens": stats.tokens,
        "trained_tokens": stats.trained_tokens,
        "max_row_tokens": stats.max_row_tokens,
        "max_length": stats.max_length,
        "packing": stats.packing,
        "padding_free": True,
        "size_bytes": int(dest.stat().st_size),
        "input_file": dg.MetadataValue.path(spill.input_path),
        "input_sha256": spill.input_sha256,
        "tokenizer": tokenizer["name"],
        "tokenizer_revision": tokenizer.get("revision") or "",
        "tokenizer_fingerprint": tokenizer["fingerprint"],
        "settings": dg.MetadataValue.json(request.settings.as_dict()),
        "lineage": request.lineage,
    }


@dg.io_manager(
    required_resource_keys={"paths"},
    description="Keeps the tokenized spill's manifest beside the spill in <spill_dir>.",
)
def spill_io_manager(init_context: dg.InitResourceContext) -> SpillIOManager:
    return SpillIOManager(init_context.resources.paths)


def packed_io_manager(fmt: str) -> dg.IOManagerDefinition:
    """The IO manager definition writing `fmt` files under `<output_dir>/<fmt>/`."""

    @dg.io_manager(
        required_resource_keys={"paths"},
        description=f"Packs the spill and writes <output_dir>/{fmt}/<stem>{EXTENSIONS[fmt]} atomically.",
    )
    def _packed_io_manager(init_context: dg.InitResourceContext) -> PackedFileIOManager:
        return PackedFileIOManager(init_context.resources.paths, fmt)

    return _packed_io_manager


def io_managers() -> dict[str, dg.IOManagerDefinition]:
    """`spill_io_manager` and `<format>_io_manager` for every output format."""
    return {"spill_io_manager": spill_io_manager, **{f"{fmt}_io_manager": packed_io_manager(fmt) for fmt in OUTPUT_FORMATS}}
