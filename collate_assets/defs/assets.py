"""The asset graph of one dataset, one partition per input file:

    raw_conversations -> tokenized_conversations -> packed_arrow | packed_parquet | packed_msgpack | packed_jsonl

Each asset does its own work through the engine (`collate_assets.core`) and returns a
`MaterializeResult`: `tokenized_conversations` renders, tokenizes and labels a file into a spill;
each packed asset packs that spill, writes its file, reads it back and reports its blocking checks
in the same step. No IO manager: the `DatasetFiles` of the dataset's settings locate every file.

A step may hold several partitions (the `collate` command runs a range of stale partitions in one
run); metadata is recorded per partition either way.

What is stale is Dagster's business: `raw_conversations` is observed with each file's sha256 as
its data version, and the code versions below carry the settings and the tokenizer's fingerprint,
so an edited file makes its partition stale, and new settings or a new tokenizer make every
partition stale (see automation.py for what then runs by itself).
"""


import dataclasses
import json
import time
import warnings
from pathlib import Path

import dagster as dg

from collate_assets.core import CollateError, CollateSettings, PackStats, file_sha256, read_packed, spill_lengths, tokenize_file
from collate_assets.core.api import write_shard_summary
from collate_assets.core.tokens.audit import supervision_problems, thresholds_set
from collate_assets.core.process import RUN
from collate_assets.core.read.reader import input_file_problem, progress_total
from collate_assets.core.read.shards import summarize
from collate_assets.core.tokens.tokenizer import tokenizer_files_fingerprint, tokenizer_fingerprint
from collate_assets.core.fs import shown

from . import checks
from .files import DatasetFiles, SpillManifest, is_local, local_copy, local_path, write_packed

# Bump when the code that writes an asset changes what it writes (every partition becomes stale).
TOKENIZE_CODE_VERSION = "4"  # 2: line limit; 3: tools, reasoning, flags; 4: one layout, manifest v2
PACK_CODE_VERSION = "4"  # 2: one layout (<output>/<name>.<ext>); 3: pack_stats in the metadata; 4: bfd + fill_gaps
PROGRESS_LOG_SECONDS = 15.0

SPILL_COLUMNS = dg.TableSchema(
    columns=[
        dg.TableColumn("input_ids", "list<int32>", description="token ids of one conversation (or split chunk)"),
        dg.TableColumn("labels", "list<int32>", description="-100 where not trained"),
        dg.TableColumn("line", "int64", description="line of the input file it came from"),
        dg.TableColumn("uncut_hash", "uint64", description="a cut sequence's hash before the overlong policy cut it; 0 when written whole"),
    ]
)
PACKED_COLUMNS = dg.TableSchema(
    columns=[
        dg.TableColumn("input_ids", "list<int32>", description="token ids of the row, several conversations back to back"),
        dg.TableColumn("labels", "list<int32>", description="-100 where not trained, and at every sequence start"),
        dg.TableColumn("position_ids", "list<int32>", description="restart at 0 where each sequence starts"),
        dg.TableColumn("seq_lengths", "list<int32>", description="length of each sequence in the row"),
    ]
)

RAW_DESCRIPTION = """The input conversation files, one partition per file of the input folder.

Containers: JSON Lines (`*.jsonl`, `*.jsonl.gz`, `*.jsonl.zst`), one JSON array of records (`*.json`,
or JSON Lines under that name) and Parquet (`*.parquet`, a conversation list column); all streamed.

The data version of a partition is the sha256 of its file's bytes, so editing a file marks its
tokenized and packed partitions stale. The input files sensor records these observations as it sees
files appear or change; observing this asset does the same on demand.
"""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The names and settings that make one dataset's definitions distinct from another's."""

    settings: CollateSettings
    name: str | None = None  # None: the default dataset (no key prefix)

    @property
    def prefix(self) -> list[str]:
        return [self.name] if self.name else []

    @property
    def group(self) -> str:
        return self.name or "collate"

    @property
    def resource_key(self) -> str:
        return f"collate_{self.name}" if self.name else "collate"

    def key(self, asset: str) -> dg.AssetKey:
        return dg.AssetKey([*self.prefix, asset])

    def op_name(self, name: str) -> str:
        return f"{self.name}__{name}" if self.name else name

    @property
    def partitions(self) -> dg.DynamicPartitionsDefinition:
        from .partitions import input_files_partitions

        return input_files_partitions(f"{self.name}_input_files" if self.name else "input_files")

    def tokenize_code_version(self) -> str:
        s = self.settings
        tokenizer = tokenizer_files_fingerprint(s.tokenizer_name(), s.tokenizer_revision, s.chat_template)
        return f"{TOKENIZE_CODE_VERSION}.s{s.fingerprint()[:10]}.t{tokenizer[:10]}"

    def pack_code_version(self) -> str:
        # the settings that change the packed outputs only (balance_ranks), when set: the spills stay fresh
        extra = self.settings.pack_fingerprint()
        return f"{PACK_CODE_VERSION}.s{self.settings.fingerprint()[:10]}" + (f".p{extra[:10]}" if extra else "")


def _failure(exc: Exception | str) -> dg.Failure:
    return dg.Failure(description=shown(str(exc)), allow_retries=False)


def _each_partition(context: dg.AssetExecutionContext, work) -> dict:
    """`work(key) -> (metadata, result)` for every partition of the step; metadata recorded per partition.

    A partition that fails (CollateError) does not stop the others; the step fails at the end with
    every failure's reason (the `collate` command then runs those partitions one by one).
    """
    results, failures = {}, {}
    for key in context.partition_keys:
        try:
            metadata, results[key] = work(key)
        except CollateError as exc:
            failures[key] = str(exc)
            continue
        context.add_asset_metadata(metadata, partition_key=key)
    if failures:
        raise _failure("; ".join(failures.values()))
    return results


def _inputs(files: DatasetFiles, keys) -> list:
    """The input files of partitions `keys` (those that name no file are left out)."""
    out = []
    for key in keys:
        try:
            out.append(files.input_path(key))
        except (CollateError, ValueError):
            continue
    return out


def _config(context: dg.AssetExecutionContext, dataset: Dataset):
    return getattr(context.resources, dataset.resource_key)


def build_raw_conversations(dataset: Dataset) -> dg.AssetsDefinition:
    # observable_source_asset is beta in 1.13; we use it knowingly, so keep its warning out of every load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.observable_source_asset(
            key=dataset.key("raw_conversations"),
            partitions_def=dataset.partitions,
            group_name=dataset.group,
            description=RAW_DESCRIPTION,
            required_resource_keys={dataset.resource_key},
            metadata={"input": str(dataset.settings.input_path())},
            tags={"dagster/kind/jsonl": ""},
        )
        def raw_conversations(context) -> dg.DataVersionsByPartition:
            """Observe the input files: the sha256 of each file is its partition's data version."""
            files = _config(context, dataset).files()
            keys = [context.partition_key] if context.has_partition_key else list(
                context.instance.get_dynamic_partitions(dataset.partitions.name)
            )
            versions = {}
            for key in keys:
                try:
                    path = files.input_path(key)
                except CollateError as exc:
                    context.log.warning(str(exc))
                    continue
                if path.is_file():
                    versions[key] = file_sha256(path)
                else:
                    context.log.warning(f"partition {key!r}: {shown(path)} is gone")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dg.BetaWarning)
                return dg.DataVersionsByPartition(versions)

    return raw_conversations


def build_tokenized_conversations(dataset: Dataset, automation: dg.AutomationCondition | None) -> dg.AssetsDefinition:
    key = dataset.key("tokenized_conversations")
    # the supervision audit's blocking checks, when the dataset's settings set a threshold
    supervision_specs = checks.supervision_check_specs(key, dataset.partitions) if thresholds_set(dataset.settings) else []

    @dg.asset(
        key=key,
        check_specs=supervision_specs or None,
        partitions_def=dataset.partitions,
        deps=[dataset.key("raw_conversations")],
        group_name=dataset.group,
        kinds={"huggingface", "arrow"},
        code_version=dataset.tokenize_code_version(),
        automation_condition=automation,
        required_resource_keys={dataset.resource_key},
    )
    def tokenized_conversations(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Every conversation of one input file rendered with the chat template, tokenized and labelled.

        Written as an Arrow IPC spill `<spill_dir>/<name>.arrow` (input_ids, labels, line) with a
        manifest beside it; records that could not be used go to `<output_dir>/<name>.rejects.jsonl`
        with the reason. Overlong conversations follow the `overlong` setting. The code version
        carries the settings and the tokenizer's fingerprint, so changing either makes it stale.
        """
        config = _config(context, dataset)
        try:
            settings = config.settings()
            files = DatasetFiles(settings)
            files.check_folders()
            tokenizer = config.load_tokenizer(_inputs(files, context.partition_keys))
        except CollateError as exc:
            raise _failure(exc) from exc
        identity = {
            "name": settings.tokenizer_name(),
            "revision": settings.tokenizer_revision,
            "chat_template": settings.chat_template,
            "fingerprint": tokenizer_fingerprint(tokenizer),
        }
        audits = _each_partition(
            context, lambda key: (meta := _tokenize_partition(context, files, key, tokenizer, settings, identity),
                                  meta["supervision"].value))
        if supervision_specs:
            return dg.MaterializeResult(check_results=checks.supervision_check_results(audits, settings))
        return dg.MaterializeResult()

    return tokenized_conversations


def _tokenize_partition(context, files: DatasetFiles, key: str, tokenizer, settings: CollateSettings, identity: dict) -> dict:
    source = files.input_path(key)
    problem = input_file_problem(source)
    if problem is not None:
        raise CollateError(f"input file {source} for partition {key!r} {problem}")
    shard = files.shard(key, source)
    before = source.stat()
    input_sha256 = file_sha256(source)
    spill = files.spill_path(key)
    rejects = files.rejects_path(key)
    part = f" (bytes {shard.start:,}-{shard.end:,}, from line {shard.first_line:,})" if shard else ""
    context.log.info(f"tokenizing {shown(source)}{part} ({before.st_size:,} bytes) with {identity['name']} into {shown(spill)}")
    total = shard.end - shard.start if shard else progress_total(source)
    stats = tokenize_file(
        source, spill, tokenizer, settings, rejects_path=rejects, progress=_progress_logger(context, total), shard=shard
    )
    after = source.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise CollateError(f"{source} changed while it was tokenized; run again")
    manifest = SpillManifest(
        partition_key=key, spill_path=str(spill), rejects_path=str(rejects), input_path=str(source),
        input_sha256=input_sha256, tokenizer=identity, settings=settings.as_dict(), stats=stats.to_dict(),
    )
    manifest.write(files.manifest_path(key))
    account = file_account(files, manifest, write=True) if shard else None
    if stats.rejected:
        context.log.warning(
            f"{shown(source.name)}: {stats.rejected} of {stats.lines_read} records rejected; reasons and records in {shown(rejects)}"
        )
    reasons = dict(sorted(stats.reject_reasons.items()))
    return {
        "dagster/row_count": stats.sequences,
        "dagster/column_schema": SPILL_COLUMNS,
        "lines_read": stats.lines_read,
        "conversations": stats.conversations,
        "sequences": stats.sequences,
        "rejected": stats.rejected,
        "blank_lines": stats.blank_lines,
        "reject_reasons": dg.MetadataValue.json(reasons),
        "reject_reasons_table": checks.table([("reason", "string"), ("lines", "int")],
                                             [{"reason": r, "lines": n} for r, n in reasons.items()]),
        "tokens": stats.tokens,
        "tokens_read": stats.tokens_read,
        "trained_tokens": stats.trained_tokens,
        "truncated": stats.truncated,
        "dropped": stats.dropped,
        "split": stats.split,
        **({"turn_split": stats.turn_split, "turns_not_fit": stats.turns_not_fit} if stats.turn_split or stats.turns_not_fit else {}),
        **({"padding_tokens": stats.padding_tokens} if stats.padding_tokens else {}),
        "truncated_tokens": stats.truncated_tokens,
        "turn_sequences": stats.turn_sequences,
        "reasoning_dropped": stats.reasoning_dropped,
        "reasoning_unshown": stats.reasoning_unshown,
        "double_encoded_arguments": stats.double_encoded_arguments,
        "chat_template": dg.MetadataValue.json(stats.template),
        **checks.supervision_metadata(stats.supervision),  # what is trained: shares, turn ends, special tokens
        "tokenizer_drift": dg.MetadataValue.json(stats.tokenizer_drift),  # tokenizer.json vs transformers' pipeline
        "encoder": dg.MetadataValue.json(stats.encoder),  # fastokens or tokenizers, and its checks against the reference
        "length_histogram": checks.table([("tokens", "string"), ("sequences", "int")],
                                         [{"tokens": f"{lo}–{hi - 1}", "sequences": n} for lo, hi, n in stats.histogram]),
        "stats": dg.MetadataValue.json(stats.to_dict()),  # with the seconds of each stage
        "workers": stats.workers,
        "spill": dg.MetadataValue.path(str(spill)),
        "rejects": dg.MetadataValue.path(str(rejects)),
        "input_file": dg.MetadataValue.path(str(source)),
        "input_sha256": input_sha256,
        "tokenizer": identity["name"],
        "tokenizer_revision": identity["revision"] or "",
        "tokenizer_fingerprint": identity["fingerprint"],
        "settings": dg.MetadataValue.json(settings.output_dict()),
        "settings_fingerprint": settings.fingerprint(),
        **(_shard_metadata(shard, account, files.summary_path(key)) if shard else {}),
    }


def _shard_metadata(shard, account: dict, summary_path) -> dict:
    out = {
        "shard": dg.MetadataValue.json(shard.to_dict()),
        "first_line": shard.first_line,
        "shards_tokenized": account["shards_done"],
        "shard_count": shard.count,
    }
    if "file_lines" in account:
        out["file_summary"] = _summary_text(account)
        out["file_shards"] = checks.table(
            [("shard", "int"), ("first_line", "int"), ("lines", "int"), ("rejected", "int"), ("sequences", "int"), ("tokens", "int")],
            [{"shard": sh["index"], "first_line": sh["first_line"], "lines": sh["lines_read"], "rejected": sh["rejected"],
              "sequences": sh["sequences"], "tokens": sh["tokens"]} for sh in account["shards"]])
        out["file_summary_path"] = dg.MetadataValue.path(str(summary_path))
    return out


def _summary_text(account: dict) -> str:
    return (f"{account['shard_count']} shards of {shown(account['file'])}: {account['lines_read']:,} of "
            f"{account['file_lines']:,} lines read, {account['conversations']:,} written, {account['rejected']:,} "
            f"rejected, {account['blank_lines']:,} blank" + ("" if not account["problems"] else "; PROBLEMS: " + "; ".join(account["problems"])))


def file_account(files: DatasetFiles, manifest: SpillManifest, *, write: bool = False) -> dict:
    """The account of a shard's file: `core.read.shards.summarize` over every shard's manifest once all are
    tokenized from the same file and settings, else how many are (`shards_done`, `shard_count`).

    With `write`, a complete account is written to `<output_dir>/<stem>.shards.json` (by whichever
    shard completes it; the same bytes whoever writes it). Without, it is read back from there.
    """
    count = manifest.stats["shard"]["count"]
    path = files.summary_path(manifest.partition_key)
    if not write:
        try:
            with local_copy(path) as local:
                account = json.loads(local.read_text(encoding="utf-8"))
            if account.get("input_sha256") == manifest.input_sha256 and account.get("settings_fingerprint") == manifest.collate_settings().fingerprint():
                return account
        except (OSError, ValueError):
            pass
    done = []
    for sibling in files.shard_keys(manifest.partition_key):
        other = manifest_for(files, sibling)
        if (other is not None and other.input_sha256 == manifest.input_sha256
                and other.settings == manifest.settings and other.tokenizer == manifest.tokenizer):
            done.append(other.stats)
    if len(done) < count or not write:
        return {"shards_done": len(done), "shard_count": count}
    account = summarize(manifest.input_path, done, count, input_sha256=manifest.input_sha256,
                        settings_fingerprint=manifest.collate_settings().fingerprint())
    if is_local(path):
        write_shard_summary(local_path(path), account)
    else:  # an object store publishes the object whole
        path.write_text(json.dumps(account, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return account


def _progress_logger(context: dg.AssetExecutionContext, total_bytes: int):
    """A tokenize_file progress callback that logs at most every PROGRESS_LOG_SECONDS."""
    state = {"bytes": 0, "lines": 0, "last": time.monotonic()}

    def progress(bytes_read: int, lines_read: int) -> None:
        RUN.report_progress(bytes_read, lines_read)  # the `collate` command's bar, in its own process
        state["bytes"] += bytes_read
        state["lines"] += lines_read
        now = time.monotonic()
        if now - state["last"] >= PROGRESS_LOG_SECONDS:
            state["last"] = now
            share = state["bytes"] / total_bytes if total_bytes else 1.0
            context.log.info(f"tokenized {state['lines']:,} lines ({share:.0%} of the file)")

    return progress


def build_packed(dataset: Dataset, fmt: str, automation: dg.AutomationCondition | None) -> dg.AssetsDefinition:
    """`packed_<fmt>`: the tokenized partition packed into rows and written, with its blocking checks."""
    key = dataset.key(f"packed_{fmt}")

    @dg.asset(
        key=key,
        partitions_def=dataset.partitions,
        deps=[dataset.key("tokenized_conversations")],
        group_name=dataset.group,
        kinds={fmt},
        code_version=dataset.pack_code_version(),
        automation_condition=automation,
        check_specs=checks.check_specs(key, dataset.partitions),
        required_resource_keys={dataset.resource_key},
        description=(
            f"Packed training rows of one input file as {fmt}: whole conversations back to back, at most "
            "max_length tokens a row, with position_ids restarting at every sequence, labels -100 at every "
            "sequence start, seq_lengths per row and no attention_mask (padding-free). Written to "
            f"<output_dir>/<name>{'.' + fmt if fmt != 'arrow' else '.arrow'}, read back and checked in the same step."
        ),
    )
    def packed(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        config = _config(context, dataset)
        try:
            settings = config.settings()
            files = DatasetFiles(settings)
            files.check_folders()
        except CollateError as exc:
            raise _failure(exc) from exc
        results = _each_partition(context, lambda key: _pack_partition(files, key, fmt, settings))
        return dg.MaterializeResult(check_results=checks.combined_results(results))

    return packed


def _pack_partition(files: DatasetFiles, key: str, fmt: str, settings: CollateSettings) -> tuple[dict, list]:
    manifest = SpillManifest.read(files.manifest_path(key))
    if manifest.collate_settings().fingerprint() != settings.fingerprint():
        raise CollateError(
            f"partition {key!r}: the settings differ from the ones tokenized_conversations used "
            f"({manifest.collate_settings().output_dict()} vs {settings.output_dict()}): materialize "
            "tokenized_conversations with these settings too"
        )
    # The blocking supervision checks stop packing in the run that tokenizes; a later run that only packs
    # (tokenized_conversations is fresh) must not pack a file over a threshold either.
    failed = [m for _, passed, m in supervision_problems(manifest.stats.get("supervision") or {}, settings) if not passed]
    if failed and thresholds_set(settings):
        raise CollateError(f"partition {key!r} is not packed: {'; '.join(failed)}")
    dest = files.output_path(key, fmt)
    stats = write_packed(manifest.spill_path, dest, fmt, settings)
    with local_copy(dest) as path:
        report = checks.verify_packed_rows(read_packed(path, fmt, numpy=True), settings.max_length)
    account = file_account(files, manifest) if manifest.stats.get("shard") else None
    results = list(checks.check_results(report, manifest, spill_lengths(manifest.spill_path), account))
    return packed_metadata(stats, dest, manifest, settings), results


def packed_metadata(stats: PackStats, dest, manifest: SpillManifest, settings: CollateSettings) -> dict:
    """Numbers as int/float metadata (the UI plots them per partition), identity as text."""
    tokenizer = manifest.tokenizer
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
        "input_file": dg.MetadataValue.path(manifest.input_path),
        "input_sha256": manifest.input_sha256,
        "tokenizer": tokenizer["name"],
        "tokenizer_revision": tokenizer.get("revision") or "",
        "tokenizer_fingerprint": tokenizer["fingerprint"],
        "settings": dg.MetadataValue.json({**settings.output_dict(), **settings.pack_dict()}),
        **({"rank_imbalance_before": float(stats.balance["before"]["mean"]),
            "rank_imbalance_after": float(stats.balance["after"]["mean"])} if stats.balance else {}),
        "tokenize_stats": dg.MetadataValue.json(manifest.stats),
        "pack_stats": dg.MetadataValue.json(stats.to_dict()),  # read back whole by `collate` (defs/run.py)
    }


def manifest_for(files: DatasetFiles, key: str) -> SpillManifest | None:
    path: Path = files.manifest_path(key)
    try:
        return SpillManifest.read(path)
    except CollateError:
        return None
