"""The asset graph, one partition per input file:

    raw_conversations -> tokenized_conversations -> packed_arrow | packed_parquet | packed_msgpack | packed_jsonl

Each asset is a thin call into `collate_assets.core`; the packed assets hand a PackRequest to their
format's IO manager, which packs and writes (see io_managers.py).
"""

import time
import warnings
from pathlib import Path

import dagster as dg

from collate_assets.core import CollateError, TokenizeStats, file_sha256, tokenize_file
from collate_assets.core.reader import input_file_problem, progress_total

from . import lineage
from .io_managers import PackRequest, TokenizedSpill
from .partitions import INPUT_FILES
from .resources import CollatePaths, PackingSettings, TokenizerResource

GROUP = "collate"
PROGRESS_LOG_SECONDS = 15.0

SPILL_COLUMNS = dg.TableSchema(
    columns=[
        dg.TableColumn("input_ids", "list<int32>", description="token ids of one conversation (or split chunk)"),
        dg.TableColumn("labels", "list<int32>", description="-100 where not trained"),
        dg.TableColumn("line", "int64", description="line of the input file it came from"),
    ]
)

RAW_DESCRIPTION = """The input conversation files, one partition per file of the input folder.

Containers: JSON Lines (`*.jsonl`, `*.jsonl.gz`, `*.jsonl.zst`), one JSON array of records (`*.json`,
or JSON Lines under that name) and Parquet (`*.parquet`, a conversation list column); all streamed.

The data version of a partition is the sha256 of its file's bytes, so editing a file marks its
tokenized and packed partitions stale. `input_files_sensor` records these observations as it sees
files appear or change; observing this asset does the same on demand.
"""

# observable_source_asset is beta in 1.13; we use it knowingly, so keep its warning out of every load.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)

    @dg.observable_source_asset(
        name="raw_conversations",
        partitions_def=INPUT_FILES,
        group_name=GROUP,
        description=RAW_DESCRIPTION,
        metadata={
            "format": "chat conversations: JSON Lines (*.jsonl, *.jsonl.gz, *.jsonl.zst), a JSON array (*.json) "
            "or Parquet rows (*.parquet)"
        },
        tags={"dagster/kind/jsonl": ""},
    )
    def raw_conversations(context: dg.OpExecutionContext, paths: CollatePaths) -> dg.DataVersionsByPartition:
        """Observe the input files: the sha256 of each file is its partition's data version."""
        if context.has_partition_key:
            keys = [context.partition_key]
        else:
            keys = list(context.instance.get_dynamic_partitions(INPUT_FILES.name))
        versions = {}
        for key in keys:
            try:
                path = paths.input_path(key)
            except CollateError as exc:
                context.log.warning(str(exc))
                continue
            if path.is_file():
                versions[key] = file_sha256(path)
            else:
                context.log.warning(f"partition {key!r}: {path} is gone")
        return dg.DataVersionsByPartition(versions)


def _failure(exc: Exception) -> dg.Failure:
    return dg.Failure(description=str(exc), allow_retries=False)


@dg.asset(
    partitions_def=INPUT_FILES,
    deps=[raw_conversations],
    io_manager_key="spill_io_manager",
    group_name=GROUP,
    kinds={"huggingface", "arrow"},
    code_version=lineage.TOKENIZE_CODE_VERSION,
)
def tokenized_conversations(
    context: dg.AssetExecutionContext,
    paths: CollatePaths,
    tokenizer: TokenizerResource,
    packing: PackingSettings,
) -> dg.MaterializeResult:
    """Every conversation of one input file rendered with the chat template, tokenized and labelled.

    Written as an Arrow IPC spill file `<spill_dir>/<stem>.arrow` (input_ids, labels, line), with the
    lines that could not be used in `<stem>.rejects.jsonl` beside it. Overlong conversations follow
    `packing.overlong`. The data version hashes the input file, the tokenizer, the settings and this
    code's version, so the packed partitions go stale when any of them changes.
    """
    key = context.partition_key
    try:
        paths.check_folders()
        source = paths.input_path(key)
    except CollateError as exc:
        raise _failure(exc) from exc
    problem = input_file_problem(source)
    if problem is not None:
        raise dg.Failure(description=f"input file {source} for partition {key!r} {problem}", allow_retries=False)
    try:
        settings = packing.to_settings()
        tok = tokenizer.load()
        identity = tokenizer.describe()
    except CollateError as exc:
        raise _failure(exc) from exc

    before = source.stat()
    input_sha256 = file_sha256(source)
    version = lineage.tokenized_lineage(input_sha256, identity["fingerprint"], settings)
    spill = paths.spill_path(key)
    rejects = paths.rejects_path(key)
    previous = _reusable_spill(paths.manifest_path(key), version)
    if previous is not None:
        # Same file bytes, tokenizer, settings and code: the spill on disk is what we would write.
        context.log.info(f"{source} unchanged since {previous.spill_path} was written: reusing it")
        result = previous
        stats = TokenizeStats.from_dict(previous.stats)
    else:
        progress = _progress_logger(context, progress_total(source))
        context.log.info(f"tokenizing {source} ({before.st_size:,} bytes) with {identity['name']} into {spill}")
        try:
            stats = tokenize_file(source, spill, tok, settings, rejects_path=rejects, progress=progress)
        except CollateError as exc:
            raise _failure(exc) from exc
        after = source.stat()
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise dg.Failure(description=f"{source} changed while it was tokenized; run again", allow_retries=True)
        result = TokenizedSpill(
            partition_key=key,
            spill_path=str(spill),
            rejects_path=str(rejects),
            input_path=str(source),
            input_sha256=input_sha256,
            tokenizer=identity,
            settings=settings.as_dict(),
            lineage=version,
            stats=stats.to_dict(),
        )

    if stats.rejected:
        context.log.warning(f"{stats.rejected} of {stats.lines_read} lines rejected; reasons and lines in {rejects}")

    reasons = dict(sorted(stats.reject_reasons.items()))
    return dg.MaterializeResult(
        value=result,
        data_version=dg.DataVersion(version),
        metadata={
            "dagster/row_count": stats.sequences,
            "dagster/column_schema": SPILL_COLUMNS,
            "lines_read": stats.lines_read,
            "conversations": stats.conversations,
            "sequences": stats.sequences,
            "rejected": stats.rejected,
            "reject_reasons": dg.MetadataValue.json(reasons),
            "reject_reasons_table": dg.MetadataValue.md(_reasons_markdown(reasons)),
            "tokens": stats.tokens,
            "tokens_read": stats.tokens_read,
            "trained_tokens": stats.trained_tokens,
            "truncated": stats.truncated,
            "dropped": stats.dropped,
            "split": stats.split,
            "truncated_tokens": stats.truncated_tokens,
            "turn_sequences": stats.turn_sequences,
            "reasoning_dropped": stats.reasoning_dropped,
            "chat_template": dg.MetadataValue.json(stats.template),
            "length_histogram": dg.MetadataValue.md(stats.histogram_markdown()),
            "spill": dg.MetadataValue.path(str(spill)),
            "rejects": dg.MetadataValue.path(str(rejects)),
            "input_file": dg.MetadataValue.path(str(source)),
            "input_sha256": input_sha256,
            "tokenizer": identity["name"],
            "tokenizer_revision": identity["revision"] or "",
            "tokenizer_fingerprint": identity["fingerprint"],
            "settings": dg.MetadataValue.json(settings.as_dict()),
            "settings_fingerprint": settings.fingerprint(),
            lineage.LINEAGE_METADATA_KEY: version,
        },
    )


def _reusable_spill(manifest: Path, version: str) -> TokenizedSpill | None:
    """The spill a previous run wrote for exactly this lineage, if it and its rejects file are intact."""
    if not manifest.is_file():
        return None
    try:
        previous = TokenizedSpill.from_json(manifest.read_text(encoding="utf-8"))
    except (ValueError, TypeError):
        return None
    if previous.lineage != version or not Path(previous.spill_path).is_file():
        return None
    if previous.rejects_path and not Path(previous.rejects_path).is_file():
        return None
    return previous


def _reasons_markdown(reasons: dict[str, int]) -> str:
    if not reasons:
        return "no rejected lines"
    rows = ["| reason | lines |", "|---|---|"]
    rows += ["| {} | {} |".format(reason.replace("|", r"\|"), count) for reason, count in reasons.items()]
    return "\n".join(rows)


# Extra progress callbacks (bytes_read, lines_read) for in-process runs: the `collate` command puts
# its progress bar here. Steps in other processes never see them.
PROGRESS_SINKS: list = []


def _progress_logger(context: dg.AssetExecutionContext, total_bytes: int):
    """A tokenize_file progress callback that logs at most every PROGRESS_LOG_SECONDS."""
    state = {"bytes": 0, "lines": 0, "last": time.monotonic()}

    def progress(bytes_read: int, lines_read: int) -> None:
        for sink in PROGRESS_SINKS:
            sink(bytes_read, lines_read)
        state["bytes"] += bytes_read
        state["lines"] += lines_read
        now = time.monotonic()
        if now - state["last"] >= PROGRESS_LOG_SECONDS:
            state["last"] = now
            share = state["bytes"] / total_bytes if total_bytes else 1.0
            context.log.info(f"tokenized {state['lines']:,} lines ({share:.0%} of the file)")

    return progress


def build_packed_asset(fmt: str) -> dg.AssetsDefinition:
    """`packed_<fmt>`: the tokenized partition packed into rows, written by `<fmt>_io_manager`."""

    @dg.asset(
        name=f"packed_{fmt}",
        partitions_def=INPUT_FILES,
        io_manager_key=f"{fmt}_io_manager",
        group_name=GROUP,
        kinds={fmt},
        code_version=lineage.PACK_CODE_VERSION,
        description=(
            f"Packed training rows of one input file as {fmt}: whole conversations back to back, at most "
            "max_length tokens a row, with position_ids restarting at every sequence, labels -100 at every "
            "sequence start, seq_lengths per row and no attention_mask (padding-free). Written to "
            f"<output_dir>/{fmt}/<stem> by {fmt}_io_manager; loading it gives the file's UPath."
        ),
    )
    def _packed(tokenized_conversations: TokenizedSpill, packing: PackingSettings) -> PackRequest:
        try:
            settings = packing.to_settings()
        except CollateError as exc:
            raise _failure(exc) from exc
        if settings.fingerprint() != tokenized_conversations.collate_settings().fingerprint():
            raise dg.Failure(
                description=(
                    "the packing settings differ from the ones tokenized_conversations used "
                    f"({tokenized_conversations.settings} vs {settings.as_dict()}): materialize "
                    "tokenized_conversations with these settings too"
                ),
                allow_retries=False,
            )
        return PackRequest(
            spill=tokenized_conversations,
            fmt=fmt,
            settings=settings,
            lineage=lineage.packed_lineage(tokenized_conversations.lineage, fmt),
        )

    return _packed


packed_arrow = build_packed_asset("arrow")
packed_parquet = build_packed_asset("parquet")
packed_msgpack = build_packed_asset("msgpack")
packed_jsonl = build_packed_asset("jsonl")

PACKED_ASSETS = {"arrow": packed_arrow, "parquet": packed_parquet, "msgpack": packed_msgpack, "jsonl": packed_jsonl}
