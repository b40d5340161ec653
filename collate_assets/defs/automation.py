"""What runs by itself: Dagster's declarative automation, evaluated by one sensor per dataset.

Every asset the dataset asks for (`tokenized_conversations` and `packed_<format>` for each format of
the `formats` setting) carries the same condition:

- a new file (a new partition, missing) or an edited one (its `raw_conversations` observation has a
  new data version) is tokenized and packed at the next evaluation, and nothing else. This is
  `eager()` without its reset on the condition's first evaluation: Dagster's `since_last_handled()`
  counts that evaluation as "handled", so the files already there when the automation first runs
  (a fresh instance, a dataset just added with a defs.yaml) were never built until the nightly tick.
  `eager()` can also lose an edit that is observed in the same evaluation as the partition's
  previous run ends (its since-last-handled reset wins), so `input_changed` adds, to
  tokenized_conversations, a condition that holds as long as the file's latest observed sha256
  differs from the one its latest tokenization read; the packed assets are requested with
  tokenized_conversations whenever it is ("its input requested"), so they run in the same run;
- new settings or a new tokenizer (a new code version) rebuild every partition;
- each night at 02:00 partitions that are still missing or whose latest run failed are tried again.

Packed formats not asked for carry no condition: they stay available in the UI. The sensor is
running by default, so `dagster dev` keeps the outputs current without a schedule of its own.
"""

import warnings

import dagster as dg

NIGHTLY_CRON = "0 2 * * *"
DATA_VERSION_TAG = "dagster/data_version"
EVALUATION_SECONDS = 30


class InputChanged(dg.AutomationCondition):
    """True for the partitions whose input file changed since their latest tokenization.

    Compares, per partition, the data version (sha256) of the latest `raw_conversations`
    observation with the `input_sha256` that the latest `tokenized_conversations` materialization
    recorded (one query for the observations of the whole asset, one per partition for its latest
    materialization). Level-triggered: it stays
    true until a run brings the partition up to date. Runs in the code server (the automation
    sensor sets `use_user_code_server`), as Dagster requires for conditions written in Python.
    """

    @property
    def name(self) -> str:
        return "input_changed"

    @property
    def description(self) -> str:
        return "input file changed since its latest tokenization"

    def evaluate(self, context) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty:
            return dg.AutomationResult(context=context, true_subset=candidates)
        prefix = list(context.key.path[:-1])
        changed = changed_partitions(
            context.asset_graph_view.instance,
            dg.AssetKey([*prefix, "raw_conversations"]),
            dg.AssetKey([*prefix, "tokenized_conversations"]),
            candidates.expensively_compute_partition_keys(),
        )
        return dg.AutomationResult(context=context, true_subset=candidates.compute_intersection_with_partition_keys(changed))


def changed_partitions(instance: dg.DagsterInstance, raw_key: dg.AssetKey, tokenized_key: dg.AssetKey, keys) -> set[str]:
    """The partitions among `keys` whose latest observed sha256 is not the one their latest tokenization read.

    Every made partition is compared, also those observed before their latest materialization
    ended: a run that started before an edit finishes after the edit's observation.
    """
    storage = instance.event_log_storage
    observed = storage.get_latest_tags_by_partition(
        raw_key, dg.DagsterEventType.ASSET_OBSERVATION, [DATA_VERSION_TAG], asset_partitions=list(keys))
    changed = set()
    for key, tags in observed.items():
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=tokenized_key, asset_partitions=[key]), limit=1).records
        if not records:
            continue  # never made: missing, eager's business
        entry = records[0].asset_materialization.metadata.get("input_sha256")
        if entry is None or entry.value != tags.get(DATA_VERSION_TAG):
            changed.add(key)
    return changed


def eager_from_the_start() -> dg.AutomationCondition:
    """`AutomationCondition.eager()` whose first evaluation requests what is missing.

    eager() is `(newly_missing | any_deps_updated).since_last_handled()` (and no dependency missing
    or in progress, the asset not in progress), where "handled" is requested, updated, or the
    condition's first evaluation. On that first evaluation every partition already there is newly
    missing, and the reset wins: eager() deliberately leaves existing partitions alone. Here the
    reset is requested or updated only, so each missing partition is requested once; one that was
    then canceled or failed is not requested again (it is no longer newly missing), which the
    nightly retry covers.
    """
    condition = dg.AutomationCondition
    handled = (condition.newly_requested() | condition.newly_updated()).with_label("requested or updated")
    return (
        (condition.newly_missing() | condition.any_deps_updated()).since(handled)
        & ~condition.any_deps_missing()
        & ~condition.any_deps_in_progress()
        & ~condition.in_progress()
    ).with_label("eager, from the first evaluation")


def collate_condition(cron: str = NIGHTLY_CRON, *, input_changed: bool = True) -> dg.AutomationCondition:
    """eager (from the first evaluation) | input changed | new code version | missing or failed after the nightly tick.

    `input_changed` is for tokenized_conversations only, the asset that reads the file. A packed asset
    is requested whenever tokenized_conversations is, in the same evaluation (so in the same run),
    whatever asked for it. With input_changed of its own it was once requested alone: the evaluation read the
    edit's observation, recorded between the evaluation of tokenized_conversations (which had not
    seen it) and its own, and packed the old spill once more (seen in the e2e test, evaluation records
    of the instance: "input changed" on packed_arrow only).
    """
    not_busy = ~dg.AutomationCondition.in_progress() & ~dg.AutomationCondition.any_deps_in_progress()
    condition = eager_from_the_start()
    if input_changed:
        condition = condition | (InputChanged() & ~dg.AutomationCondition.execution_failed() & not_busy).with_label("input changed")
    else:  # in the same run as tokenized_conversations, whatever asked for it (eager's reset may not say so)
        condition = condition | (
            dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested()) & ~dg.AutomationCondition.in_progress()
        ).with_label("its input requested")
    return (
        condition
        | (dg.AutomationCondition.code_version_changed() & not_busy).with_label("code version changed")
        | (
            dg.AutomationCondition.cron_tick_passed(cron)
            & (dg.AutomationCondition.missing() | dg.AutomationCondition.execution_failed())
            & ~dg.AutomationCondition.any_deps_missing()
            & not_busy
        ).with_label(f"missing or failed after {cron}")
    ).with_label("collate")


def automation_sensor(name: str, selection: dg.AssetSelection, seconds: int = EVALUATION_SECONDS,
                      running: bool = True) -> dg.AutomationConditionSensorDefinition:
    # use_user_code_server is beta in 1.13; we use it knowingly, so keep its warning out of every load
    # (the `collate` command printed it on every run).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.AutomationConditionSensorDefinition(
            name=name,
            target=selection,
            default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
            minimum_interval_seconds=seconds,
            use_user_code_server=True,  # input_changed is Python of ours
            # One run per partition, launched by the tick itself: a backfill (Dagster's default when a
            # tick requests several partitions) waits for the backfill daemon's next pass, which made
            # the first build of a folder's files take 30-50 s longer, and ran one partition per run anyway.
            emit_backfills=False,
            description="Evaluates the datasets' automation conditions: new and edited files, new settings, nightly retries.",
        )
