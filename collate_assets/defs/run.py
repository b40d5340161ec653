"""The `collate` command's runs: a dataset's graph, in-process, for the stale partitions only.

Which dataset:
- `collate -i IN -o OUT ...` is a dataset of its own in the instance, named after its output folder
  (`cli_<folder>_<hash of its path>`): its own asset keys, partitions and group, so the code
  location's sensors never see or drop its partitions, its automation never runs them, and what the
  UI shows for it is what this command wrote. Two commands with the same output folder are one
  dataset (the outputs are one set of files).
- `collate --dataset NAME` is a dataset of the code location (`default`: the COLLATE_* variables;
  else the defs.yaml named NAME under COLLATE_DATASETS_DIR), with its own settings: the command
  builds what a running `dagster dev` would, in the same instance, and `--register-only` only
  registers (and observes) its files.

Then, as the input files sensor and the automation do:
1. Every input file becomes a partition (a dynamic partition must exist before anything runs it) and
   each new or changed file is observed (its sha256 is the data version of `raw_conversations`).
2. Dagster's stale status (data versions and code versions, which carry the settings and the
   tokenizer's fingerprint), as `is_fresh` reads it with Dagster's public APIs, says which partitions
   need `tokenized_conversations`, which only need `packed_<format>` (a format not written yet), and
   which are up to date; an output that was deleted counts as missing.
3. The partitions that need work run in one in-process run per contiguous range of partition keys:
   a run costs a fixed number of event-log writes, so many small files cost little more than one.
   When a range run fails (a file that cannot be read, say), its partitions run again one by one,
   so every other file is still written and each failed one is named with its reason.
Up-to-date partitions launch nothing. The runs, their metadata and lineage show in the UI of a
`dagster dev` started with the same DAGSTER_HOME.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import re
import sys
import time
from pathlib import Path

import dagster as dg

from collate_assets.core import CollateError, CollateSettings, FileStats, PackStats, TokenizeStats
from collate_assets.core.process import RUN, host_tag, pid_alive
from collate_assets.core.settings import LocationSettings
from collate_assets.core.plan import plan_inputs as plan_work_items, split_shard_key
from collate_assets.core.fs import output_folder_problem, shown

from .assets import Dataset
from .dataset import DEFAULT_DATASET, build_dataset_defs, default_settings
from .files import DatasetFiles
from .partitions import register_keys
from .resources import cached_tokenizer
from .sensors import DATA_VERSION_TAG, file_observations

# The command prints its own summary; the run's full event log is in the instance (and the UI).
# The console logger stays silent (step and run failures would print their stack traces there): a
# failure becomes the command's one error line, and run warnings are printed one line each.
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
DEFAULT_DAGSTER_HOME = Path.home() / ".collate_assets" / "dagster_home"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# Tags every run this process launches, so that a run left STARTED by a killed `collate` can be found.
PID_TAG = "collate/pid"
HOST_TAG = "collate/host"
# ... and what it ran, so that two runs of x.jsonl from different folders differ in the Runs list.
DATASET_TAG = "collate/dataset"
INPUT_TAG = "collate/input"
OUTPUT_TAG = "collate/output"
CLI_PREFIX = "cli_"


def cli_dataset_name(output_dir: str | Path) -> str:
    """The dataset a `collate -i IN -o OUT` run is in the instance: `cli_<output folder's name>_<8 hex>`.

    The hex is of the output folder's absolute path (or URL), so two folders with one name differ;
    the name keeps to letters, digits and _ (it prefixes asset keys and names the asset group).
    """
    where = str(output_dir)
    if "://" not in where:
        where = str(Path(where).expanduser().resolve())
    base = where.rstrip("/").rsplit("/", 1)[-1]
    slug = re.sub(r"[^A-Za-z0-9]+", "_", base).strip("_")[:40] or "output"
    return f"{CLI_PREFIX}{slug}_{hashlib.sha256(where.encode()).hexdigest()[:8]}"


def code_location_dataset(name: str) -> Dataset:
    """The code location's dataset `name` as this environment defines it: `default` (the COLLATE_*
    variables) or a defs.yaml dataset under COLLATE_DATASETS_DIR (CollateError when there is none)."""
    if name == DEFAULT_DATASET:
        return Dataset(default_settings())
    folder = LocationSettings.from_env().datasets_dir
    if not folder:
        raise CollateError(f"no dataset {name!r}: COLLATE_DATASETS_DIR is not set, so the only dataset is {DEFAULT_DATASET!r}")
    from .component import load_datasets

    try:
        defs = load_datasets(Path(folder))
    except dg.DagsterInvalidDefinitionError as exc:
        raise CollateError(f"COLLATE_DATASETS_DIR={folder}: {str(exc).splitlines()[0]}") from exc
    datasets = {key.removeprefix("collate_"): resource for key, resource in (defs.resources or {}).items()
                if key.startswith("collate_") and hasattr(resource, "settings")}
    if name not in datasets:
        raise CollateError(f"no dataset {name!r} in COLLATE_DATASETS_DIR={folder} "
                           f"(datasets: {', '.join([DEFAULT_DATASET, *sorted(datasets)])})")
    return Dataset(datasets[name].settings(), name)


def dataset_label(dataset: Dataset) -> str:
    return dataset.name or DEFAULT_DATASET


def dagster_home() -> Path:
    """$DAGSTER_HOME, or ~/.collate_assets/dagster_home (made absolute and created)."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        # Dagster warns on every call without one; empty means its defaults (SQLite in this folder).
        config.write_text(
            "# Dagster instance settings (default storage: SQLite files in this folder).\n"
            "telemetry:\n  enabled: false\n"
        )
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance() -> dg.DagsterInstance:
    home = dagster_home()
    # Two commands starting on a new DAGSTER_HOME would both create the SQLite schema ("table
    # alembic_version already exists"): the first one to take the lock creates it.
    with open(home / ".collate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        instance = dg.DagsterInstance.get()
        instance.get_dynamic_partitions("input_files")
    return instance


def plan_inputs(input_path: Path, shard_bytes: int = 0) -> tuple[dict[str, Path], list[tuple[Path, str]], list[str]]:
    """(files to run by partition key, files that cannot run with the reason, warnings): the plan
    (`core.plan`) every front-end runs."""
    plan = plan_work_items(input_path, shard_bytes)
    return plan.items, plan.failures, plan.warnings


def register_only(dataset: Dataset, input_path: Path | None = None) -> list[str]:
    """Register the files of a code-location dataset's input folder as its partitions and observe
    them, as its input files sensor does; returns their keys.

    `input_path` (the command's -i), when given, must be that folder: files of another folder would
    be partitions the code location cannot read (its sensor and runs look in its own folder).
    """
    own = dataset.settings.input_path()
    if input_path is not None and _same_input(input_path) != _same_input(own):
        raise CollateError(
            f"dataset {dataset_label(dataset)!r} reads {shown(own)}, not {shown(input_path)}: --register-only registers a "
            f"dataset's own files (set {'COLLATE_INPUT_DIR' if dataset.name is None else 'input_dir in its defs.yaml'} "
            "to that folder for `dagster dev` and this command alike, or leave out -i)")
    files, failures, skipped = plan_inputs(own, dataset.settings.shard_bytes())
    if failures:
        raise CollateError("; ".join(f"{shown(path.name)}: {reason}" for path, reason in failures))
    for warning in skipped:
        logging.getLogger(__name__).warning("%s", warning)
    with get_instance() as instance:
        register_and_observe(instance, dataset, files)
    return list(files)


def register_and_observe(instance: dg.DagsterInstance, dataset: Dataset, files: dict[str, Path]) -> None:
    """What the input files sensor does for `files`: a partition for each new key, an observation
    (sha256 as data version) for each new or changed file."""
    register_keys(instance, dataset.partitions.name, list(files))
    for event in file_observations(instance, dataset.key("raw_conversations"), files):
        instance.report_runless_asset_event(event)


def _same_input(path: Path) -> str:
    return str(Path(path).expanduser().resolve())


@dataclasses.dataclass
class CollateRun:
    """What `run_collate` did: the statistics of each file and format, each failed file and why."""

    results: list[FileStats] = dataclasses.field(default_factory=list)
    failures: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    runs: int = 0  # Dagster runs launched (0 when everything was up to date)
    up_to_date: list[str] = dataclasses.field(default_factory=list)  # partition keys with nothing to do
    keys: list[str] = dataclasses.field(default_factory=list)  # every partition key of the input (a shard each)
    dataset: str = DEFAULT_DATASET  # the dataset the runs are recorded in


def run_collate(settings: CollateSettings, *, dataset: str | None = None, progress=None, warn=None) -> CollateRun:
    """Bring every input file's outputs (the formats of `settings.formats`) up to date.

    `dataset`: the name of the dataset the runs are recorded in (None: `cli_dataset_name` of the
    output folder; `default` is the code location's default dataset). `progress` (optional) is an
    object with `update(nbytes)` and `set_postfix_str(text)`, such as a tqdm bar; `warn(text)` gets
    each warning (entries of the folder left out, a run's warnings).
    """
    warn = warn or (lambda text: print(f"collate: warning: {text}", file=sys.stderr))
    input_path = settings.input_path()
    problem = output_folder_problem(input_path, settings.output_dir)
    if problem is not None:
        raise CollateError(problem)
    files, failures, skipped = plan_inputs(input_path, settings.shard_bytes())
    for warning in skipped:
        warn(f"{shown(input_path)}: {warning}")
    settings = settings.replace(
        input_dir=str(input_path.resolve()),
        output_dir=str(Path(settings.output_dir).expanduser().resolve()),
        spill_dir=str(Path(settings.spill_dir).expanduser().resolve()) if settings.spill_dir else None,
        chat_template=str(Path(settings.chat_template).expanduser().resolve()) if settings.chat_template else None,
    )
    cached_tokenizer(settings)  # a bad tokenizer fails here, once, with the loader's message
    name = cli_dataset_name(settings.output_dir) if dataset is None else dataset
    dataset = Dataset(settings, None if name == DEFAULT_DATASET else name)
    dataset_files = DatasetFiles(settings)
    for folder in dataset_files.old_layout():
        warn(f"{shown(folder)} is from an earlier output layout and is no longer read or written (outputs are now "
             f"{shown(settings.output_dir)}/<name>.<ext>); remove it when you no longer need it")
    defs = build_dataset_defs(settings, dataset.name)
    outcome = CollateRun(failures=list(failures), dataset=name)
    tags = {"collate/launched_by": "collate-cli", PID_TAG: str(os.getpid()), HOST_TAG: host_tag(),
            DATASET_TAG: name, INPUT_TAG: str(input_path.resolve()), OUTPUT_TAG: settings.output_dir}
    with get_instance() as instance, contextlib.ExitStack() as stack:
        stack.enter_context(RUN.cancelling(lambda: cancel_dead_runs(instance, pid=os.getpid())))
        cancel_dead_runs(instance)
        register_and_observe(instance, dataset, files)
        work = plan_work(instance, defs, dataset, dataset_files, list(files))
        if progress is not None:
            stack.enter_context(RUN.reporting(lambda nbytes, _lines: progress.update(nbytes)))
            done = sum(_size(key, files[key]) for key in files if key not in {k for keys in work.values() for k in keys})
            progress.update(done)
        failed: dict[str, str] = {}
        seconds: dict[str, float] = {}
        order = instance.get_dynamic_partitions(dataset.partitions.name)
        for selection, keys in work.items():
            for run_keys in contiguous_ranges(order, keys):
                if progress is not None:
                    progress.set_postfix_str(shown(files[run_keys[0]].name) + (f" (+{len(run_keys) - 1})" if len(run_keys) > 1 else ""))
                for key, (message, took) in _run(instance, defs, selection, run_keys, tags, warn, outcome).items():
                    if message is None:
                        seconds[key] = took
                    else:
                        failed[key] = message
        outcome.up_to_date = [key for key in files if not any(key in keys for keys in work.values())]
        outcome.keys = list(files)
        for key, path in files.items():
            if key in failed:
                outcome.failures.append((path, failed[key]))
                continue
            outcome.results.extend(_file_stats(instance, dataset, key, seconds.get(key, 0.0)))
    return outcome


def _size(key: str, path: Path) -> int:
    """The bytes a partition reads, about (a shard: its share of the file)."""
    from collate_assets.core.read.reader import progress_total

    shard = split_shard_key(key)[1]
    return progress_total(path) // (shard[1] if shard else 1)


def plan_work(instance, defs: dg.Definitions, dataset: Dataset, files: DatasetFiles, keys: list[str]) -> dict[tuple, list[str]]:
    """Asset keys to materialize -> the partitions that need exactly them (stale, missing or deleted outputs)."""
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    observed = {dataset.key("raw_conversations")}
    tokenized = dataset.key("tokenized_conversations")
    packed = {fmt: dataset.key(f"packed_{fmt}") for fmt in dataset.settings.formats}
    work: dict[tuple, list[str]] = {}
    for key in keys:
        if not is_fresh(instance, specs[tokenized], key, observed) or not files.manifest_path(key).is_file():
            selection = (tokenized, *packed.values())  # a stale tokenized partition packs again in every format
        else:
            selection = tuple(
                asset for fmt, asset in packed.items()
                if not is_fresh(instance, specs[asset], key, observed) or not files.output_path(key, fmt).exists()
            )
        if selection:
            work.setdefault(selection, []).append(key)
    return work


def is_fresh(instance: dg.DagsterInstance, spec: dg.AssetSpec, partition: str, observed: set[dg.AssetKey]) -> bool:
    """Whether `partition` of the asset `spec` is up to date: what Dagster's stale status calls FRESH.

    Public Dagster APIs only: `DagsterInstance.fetch_materializations` / `fetch_observations` with an
    `AssetRecordsFilter`, `DataProvenance.from_tags` on the tags of the latest materialization, and the
    `AssetSpec`s of `Definitions.resolve_all_asset_specs` (`code_version`, `deps`).

    Not fresh when the partition has no materialization (Dagster: MISSING) or, as Dagster's resolver
    decides STALE: the definition's code version differs from the recorded one, the dependencies differ
    from the recorded ones, or an input's partition has a new data version since the materialization.
    For that last test, as Dagster does, the recorded input data version is not used (for a partitioned
    input it is a hash over the step's partitions, of materializations only: a constant for
    `raw_conversations`); the input's event pointer is (`input_storage_ids`: its latest event when the
    step started): the input changed when its partition's latest data version now differs from its latest
    at that pointer. The inputs in `observed` (observable sources) have their data versions in
    observations, the others in materializations. Stricter than Dagster: a materialization without
    provenance tags is not fresh, nor one whose input had no event at all when it ran, once it has one.
    As in Dagster, staleness does not flow downstream: `plan_work` packs every partition it tokenizes.
    """
    latest = _latest_record(instance, spec.key, partition)
    if latest is None:
        return False
    provenance = dg.DataProvenance.from_tags(latest.asset_materialization.tags or {})
    if provenance is None:
        return False
    if spec.code_version and provenance.code_version != spec.code_version:
        return False
    deps = {dep.asset_key for dep in spec.deps}
    if set(provenance.input_data_versions) != deps:
        return False
    return not any(_input_changed(instance, dep, partition, provenance.input_storage_ids.get(dep), dep in observed)
                   for dep in deps)


def _input_changed(instance, asset_key: dg.AssetKey, partition: str, pointer: int | None, observed: bool) -> bool:
    """Whether the input partition's latest data version differs from its latest at event `pointer`
    (no pointer: the input had no event then, so any data version now is a change)."""
    now = _latest_record(instance, asset_key, partition, observed)
    if now is None or (pointer is not None and now.storage_id <= pointer):
        return False
    then = None if pointer is None else _latest_record(instance, asset_key, partition, observed, before=pointer + 1)
    return _data_version(then) != _data_version(now)


def _latest_record(instance, asset_key: dg.AssetKey, partition: str, observed: bool = False, before: int | None = None):
    """The latest materialization (or observation) record of an asset partition, before storage id `before`."""
    fetch = instance.fetch_observations if observed else instance.fetch_materializations
    records = fetch(dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition], before_storage_id=before),
                    limit=1).records
    return records[0] if records else None


def _data_version(record) -> str | None:
    event = record and (record.asset_observation or record.asset_materialization)
    return (event.tags or {}).get(DATA_VERSION_TAG) if event else None


def contiguous_ranges(order: list[str], keys: list[str]) -> list[list[str]]:
    """`keys` split into runs of consecutive partitions in the partitions definition's order."""
    wanted = set(keys)
    ranges: list[list[str]] = []
    current: list[str] = []
    for key in order:
        if key in wanted:
            current.append(key)
        elif current:
            ranges.append(current)
            current = []
    if current:
        ranges.append(current)
    return ranges


def _run(instance, defs, selection: tuple, keys: list[str], tags: dict, warn, outcome: CollateRun) -> dict[str, tuple]:
    """Materialize `selection` for `keys` (one run; one run per key again if it fails): key -> (error or None, seconds)."""
    started = time.perf_counter()
    if len(keys) == 1:
        result = _materialize(instance, defs, selection, {"partition_key": keys[0]}, tags)
    else:
        result = _materialize(instance, defs, selection, {"tags": {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}}, tags)
    outcome.runs += 1
    _print_run_warnings(instance, result.run_id, warn)
    took = (time.perf_counter() - started) / len(keys)
    if result.success:
        return {key: (None, took) for key in keys}
    if len(keys) == 1:
        return {keys[0]: (_failure_message(result), took)}
    out = {}
    for key in keys:  # isolate the file(s) that failed; the others are written all the same
        out.update(_run(instance, defs, selection, [key], tags, warn, outcome))
    return out


def _materialize(instance, defs: dg.Definitions, selection: tuple, where: dict, tags: dict) -> dg.ExecuteInProcessResult:
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(selection))
    run_tags = {**tags, **where.get("tags", {})}
    return job.execute_in_process(
        instance=instance,
        partition_key=where.get("partition_key"),
        tags=run_tags,
        run_config=QUIET_RUN_CONFIG,
        raise_on_error=False,
    )


def cancel_dead_runs(instance: dg.DagsterInstance, pid: int | None = None) -> int:
    """Mark as canceled the runs `collate` started on this host that are still open but whose process
    is gone (killed), or, with `pid`, the open runs of that process (an interrupted `collate`)."""
    open_statuses = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
    tags = {HOST_TAG: host_tag()}
    if pid is not None:
        tags[PID_TAG] = str(pid)
    count = 0
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=open_statuses, tags=tags), limit=100):
        run_pid = run.tags.get(PID_TAG, "")
        if pid is None and (not run_pid.isdigit() or pid_alive(int(run_pid))):
            continue
        instance.report_run_canceled(run, message="collate was interrupted")
        count += 1
    return count


def _print_run_warnings(instance: dg.DagsterInstance, run_id: str, warn) -> None:
    """The run's own warnings (e.g. rejected lines), one line each."""
    for record in instance.all_logs(run_id):
        # errors are left out: the failure is the command's one error line
        if not record.is_dagster_event and logging.WARNING <= record.level < logging.ERROR and record.user_message:
            warn(record.user_message.strip().splitlines()[0])


def _error_text(error) -> str:
    """A SerializableErrorInfo's message without the `module.Class: ` prefix Python puts before it."""
    message = (error.message or "").strip()
    head, sep, rest = message.partition(": ")
    if sep and error.cls_name and head.rsplit(".", 1)[-1] == error.cls_name:
        return rest.strip()
    return message


def _failure_message(result: dg.ExecuteInProcessResult, path=None) -> str:
    # a blocking check that says why (the supervision checks: the figure and the threshold) before the
    # step failure it causes, whose message only counts the failed checks
    described = [e for e in result.get_asset_check_evaluations() if not e.passed and e.description]
    if described:
        return f"check {described[0].check_name} failed: {described[0].description}"
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            message = _error_text(error)
            # a Dagster error wrapping the user's: its cause says why (the module of Dagster's errors, by a public one)
            if error.cause is not None and dg.DagsterExecutionStepExecutionError.__module__ in (error.cls_name or "") + (error.message or ""):
                message = _error_text(error.cause) or message
            return _one_line(message) if message else f"step {event.step_key} failed"
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    if failed:
        return f"check {failed[0].check_name} failed: {failed[0].description or ''}".strip()
    return f"run {result.run_id} failed"


def _one_line(message: str, limit: int = 2000) -> str:
    """A message on one line, whole (Dagster wraps long ones over several lines): its lines joined."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _latest_metadata(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def _file_stats(instance, dataset: Dataset, key: str, seconds: float) -> list[FileStats]:
    """The statistics of one partition's outputs, one per format: the engine's own, as its latest
    materializations recorded them (`tokenize_stats`, `pack_stats`)."""
    out = []
    for fmt in dataset.settings.formats:
        meta = _latest_metadata(instance, dataset.key(f"packed_{fmt}"), key)
        if meta:
            out.append(FileStats(TokenizeStats.from_dict(meta["tokenize_stats"]), PackStats.from_dict(meta["pack_stats"]), seconds=seconds))
    return out
