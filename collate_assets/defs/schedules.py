"""`nightly_collate`: at 02:00 rebuild every partition whose outputs are missing or out of date.

A partition is out of date when the lineage stored on the latest materialization of any asset of
`collate_job` differs from the lineage computed tonight from its file's sha256, the tokenizer's
fingerprint, the packing settings and the code versions (see lineage.py). This covers what
Dagster's own stale status does not: a new tokenizer, new settings, and partitioned assets (a
schedule's `stale_assets_only` only looks at unpartitioned ones). Unchanged partitions request
nothing; partitions with a run in progress are left to it.
"""

import dagster as dg

from collate_assets.core import OUTPUT_FORMATS, CollateError, CollateSettings, file_sha256

from . import lineage
from .jobs import collate_job
from .partitions import INPUT_FILES
from .resources import CollatePaths, PackingSettings, TokenizerResource

ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _partitions_in_progress(instance: dg.DagsterInstance) -> set[str]:
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE_RUN_STATUSES))
    return {run.tags["dagster/partition"] for run in runs if "dagster/partition" in run.tags}


def stale_reason(
    instance: dg.DagsterInstance,
    partition_key: str,
    input_sha256: str,
    tokenizer_fingerprint: str,
    settings: CollateSettings,
) -> str | None:
    """Why the partition must be rebuilt, or None when every output is current."""
    want = lineage.tokenized_lineage(input_sha256, tokenizer_fingerprint, settings)
    tokenized = lineage.latest_materialization(instance, lineage.TOKENIZED_CONVERSATIONS, partition_key)
    if tokenized is None:
        return "never tokenized"
    if lineage.metadata_text(tokenized, lineage.LINEAGE_METADATA_KEY) != want:
        changed = [
            what
            for what, meta_key, now in (
                ("input file", "input_sha256", input_sha256),
                ("tokenizer", "tokenizer_fingerprint", tokenizer_fingerprint),
                ("settings", "settings_fingerprint", settings.fingerprint()),
            )
            if lineage.metadata_text(tokenized, meta_key) != now
        ]
        return f"{', '.join(changed) or 'tokenize code'} changed"
    for fmt in OUTPUT_FORMATS:
        packed = lineage.latest_materialization(instance, dg.AssetKey(f"packed_{fmt}"), partition_key)
        if packed is None:
            return f"packed_{fmt} missing"
        if lineage.metadata_text(packed, lineage.LINEAGE_METADATA_KEY) != lineage.packed_lineage(want, fmt):
            return f"packed_{fmt} out of date"
    return None


def find_stale_partitions(
    instance: dg.DagsterInstance,
    paths: CollatePaths,
    tokenizer: TokenizerResource,
    settings: CollateSettings,
    log=None,
) -> dict[str, str]:
    """Partition key -> reason, for every registered partition whose outputs are missing or out of date."""
    keys = instance.get_dynamic_partitions(INPUT_FILES.name)
    if not keys:
        return {}
    fingerprint = tokenizer.fingerprint()
    busy = _partitions_in_progress(instance)
    stale: dict[str, str] = {}
    for key in keys:
        try:
            path = paths.input_path(key)
        except CollateError as exc:
            if log:
                log.warning(f"partition {key!r} skipped: {exc}")
            continue
        if not path.is_file():
            if log:
                log.warning(f"partition {key!r}: {path} is gone (input_files_sensor drops it)")
            continue
        if key in busy:
            continue
        reason = stale_reason(instance, key, file_sha256(path), fingerprint, settings)
        if reason:
            stale[key] = reason
    return stale


@dg.schedule(
    cron_schedule="0 2 * * *",
    job=collate_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly: runs collate_job for each partition whose outputs are missing or out of date.",
)
def nightly_collate(
    context: dg.ScheduleEvaluationContext,
    paths: CollatePaths,
    tokenizer: TokenizerResource,
    packing: PackingSettings,
):
    stale = find_stale_partitions(context.instance, paths, tokenizer, packing.to_settings(), log=context.log)
    if not stale:
        return dg.SkipReason("every partition is up to date")
    for key, reason in stale.items():
        context.log.info(f"{key}: {reason}")
    # One tick never requests a partition twice: the scheduler dedups run keys per tick.
    return [
        dg.RunRequest(partition_key=key, run_key=key, tags={"collate/stale_reason": reason})
        for key, reason in stale.items()
    ]
