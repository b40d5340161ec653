"""Run the asset graph in-process for the `collate` command, recorded in the Dagster instance.

Every file the command is given becomes a partition (registered first, as a dynamic partition must
exist before anything runs it), then `tokenized_conversations` and `packed_<format>` (with its
blocking checks) are materialized for it. The runs, their metadata and lineage show in the UI of a
`dagster dev` started with the same DAGSTER_HOME.
"""

import contextlib
import dataclasses
import fcntl
import logging
import os
import sys
import time
from pathlib import Path

import dagster as dg

from collate_assets.core import CollateError, CollateSettings, FileStats, PackStats, TokenizeStats, list_input_files
from collate_assets.core.reader import INPUT_PATTERNS, progress_total
from collate_assets.core.template_limits import RenderLimits
from collate_assets.core.writers import output_folder_problem, shown

from .assets import PACKED_ASSETS, PROGRESS_SINKS, raw_conversations, tokenized_conversations
from .checks import PACKED_CHECKS
from .io_managers import io_managers
from .partitions import INPUT_FILES, _scan, file_name_to_key, register_keys, register_partitions
from .resources import CollatePaths, PackingSettings, TokenizerResource

# The command prints its own summary; the run's full event log is in the instance (and the UI).
# The console logger stays silent (step and run failures would print their stack traces there): a
# failure becomes the command's one error line, and run warnings are printed one line each.
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
DEFAULT_DAGSTER_HOME = Path.home() / ".collate_assets" / "dagster_home"


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
        instance.get_dynamic_partitions(INPUT_FILES.name)
    return instance


def register_only(input_path: Path) -> list[str]:
    """Register the input files as partitions; returns their keys."""
    with get_instance() as instance:
        return register_partitions(instance, input_path)


@dataclasses.dataclass
class CollateRun:
    """What `run_collate` did: the statistics of each file done, and each file that failed, why."""

    results: list[FileStats] = dataclasses.field(default_factory=list)
    failures: list[tuple[Path, str]] = dataclasses.field(default_factory=list)


def plan_inputs(input_path: Path) -> tuple[dict[str, Path], list[tuple[Path, str]], list[str]]:
    """(files to run by partition key, files that cannot run with the reason, warnings)."""
    if input_path.is_file():
        return {file_name_to_key(input_path.name): input_path}, [], []
    list_input_files(input_path) if not input_path.is_dir() else None  # a missing input: CollateError
    files, clashes, skipped = _scan(input_path)
    failures = []
    for clash in clashes:
        name, _, reason = clash.partition(" skipped: ")
        failures.append((input_path / name, f"not processed: {reason}; rename one of them"))
    if not files and not failures:
        raise CollateError(f"no input files ({INPUT_PATTERNS}) in {shown(input_path)}")
    return files, failures, skipped


# Tags every run this process launches, so that a run left STARTED by a killed `collate` can be found.
PID_TAG = "collate/pid"
HOST_TAG = "collate/host"


def run_collate(
    *,
    input_path: Path,
    output_dir: Path,
    tokenizer: str,
    revision: str | None,
    chat_template: str | None,
    trust_remote_code: bool,
    settings: CollateSettings,
    fmt: str,
    progress=None,
    render_limits: RenderLimits | None = None,
    warn=None,
) -> CollateRun:
    """Materialize every input file as its own partition; a file that fails does not stop the others.

    `progress` (optional: None/False, True for a tqdm bar, or an object with `update(nbytes)` and
    `set_postfix_str(text)`, such as a tqdm bar) shows the bytes read; `warn(text)` gets each
    warning (entries of the folder left out, a run's warnings).
    """
    warn = warn or (lambda text: print(f"collate: warning: {text}", file=sys.stderr))
    problem = output_folder_problem(input_path, output_dir)
    if problem is not None:
        raise CollateError(problem)
    files, failures, skipped = plan_inputs(input_path)
    for warning in skipped:
        warn(f"{shown(input_path)}: {warning}")
    if progress is True:  # (the old boolean: a bar of its own)
        from tqdm import tqdm

        total = sum(progress_total(path) for path in files.values())
        progress = tqdm(total=total, unit="B", unit_scale=True, desc="collate", leave=False, file=sys.stderr)
    elif not progress:
        progress = None
    input_dir = input_path if input_path.is_dir() else input_path.parent
    output_dir = output_dir.resolve()
    limits = render_limits or RenderLimits()
    resources = {
        "paths": CollatePaths(
            input_dir=str(input_dir.resolve()),
            output_dir=str(output_dir),
            spill_dir=str(output_dir / ".collate_tokenized"),
            layout="flat",
        ),
        "tokenizer": TokenizerResource(
            name_or_path=tokenizer,
            revision=revision,
            chat_template=str(Path(chat_template).resolve()) if chat_template else None,
            trust_remote_code=trust_remote_code,
            render_timeout_seconds=limits.seconds,
            render_max_chars=limits.max_chars,
        ),
        "packing": PackingSettings(**settings.as_dict()),
        **io_managers(),
    }
    resources["tokenizer"].load()  # a bad tokenizer fails here, once, with the loader's message
    packed = PACKED_ASSETS[fmt]
    selection = dg.AssetSelection.assets(tokenized_conversations, packed)
    outcome = CollateRun(failures=list(failures))
    tags = {"collate/launched_by": "collate-cli", PID_TAG: str(os.getpid()), HOST_TAG: host_tag()}
    with get_instance() as instance, contextlib.ExitStack() as stack:
        ACTIVE["instance"] = instance
        stack.callback(ACTIVE.clear)
        cancel_dead_runs(instance)
        register_keys(instance, files)
        if progress is not None:
            PROGRESS_SINKS.append(lambda nbytes, _lines: progress.update(nbytes))
            stack.callback(PROGRESS_SINKS.clear)
        for key, path in files.items():
            if progress is not None:
                progress.set_postfix_str(shown(path.name))
            started = time.perf_counter()
            result = dg.materialize(
                [raw_conversations, tokenized_conversations, *PACKED_ASSETS.values(), *PACKED_CHECKS],
                selection=selection,
                instance=instance,
                partition_key=key,
                resources=resources,
                raise_on_error=False,
                tags=tags,
                run_config=QUIET_RUN_CONFIG,
            )
            _print_run_warnings(instance, result.run_id, warn)
            if not result.success:
                outcome.failures.append((path, _failure_message(result, path)))
                continue
            outcome.results.append(_file_stats(result, packed.key.path[-1], time.perf_counter() - started))
    return outcome


# The instance of the run in progress, for the signal handler of the `collate` command.
ACTIVE: dict = {}


def host_tag() -> str:
    from collate_assets.core.writers import _owner_tag

    return _owner_tag().split("-", 1)[0]


def cancel_dead_runs(instance: dg.DagsterInstance, pid: int | None = None) -> int:
    """Mark as canceled the runs `collate` started on this host that are still open but whose process
    is gone (killed), or, with `pid`, the open runs of that process (an interrupted `collate`)."""
    from collate_assets.core.writers import _pid_alive

    open_statuses = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
    tags = {HOST_TAG: host_tag()}
    if pid is not None:
        tags[PID_TAG] = str(pid)
    count = 0
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=open_statuses, tags=tags), limit=100):
        run_pid = run.tags.get(PID_TAG, "")
        if pid is None and (not run_pid.isdigit() or _pid_alive(int(run_pid))):
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


def _failure_message(result: dg.ExecuteInProcessResult, path: Path) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            message = _error_text(error)
            if error.cause is not None and "dagster._core.errors" in (error.cls_name or "") + (error.message or ""):
                message = _error_text(error.cause) or message
            return message.splitlines()[0] if message else f"{path}: step {event.step_key} failed"
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    if failed:
        return f"{path}: check {failed[0].check_name} failed: {failed[0].description or ''}".strip()
    return f"{path}: run {result.run_id} failed"


def _file_stats(result: dg.ExecuteInProcessResult, packed_node: str, seconds: float) -> FileStats:
    spill = result.output_for_node("tokenized_conversations")
    tokenize = TokenizeStats.from_dict(spill.stats)
    [materialization] = result.asset_materializations_for_node(packed_node)
    meta = {k: v.value for k, v in materialization.metadata.items()}
    pack = PackStats(
        output=meta["dagster/uri"],
        format=packed_node.removeprefix("packed_"),
        max_length=meta["max_length"],
        packing=meta["packing"],
        rows=meta["rows"],
        sequences=meta["sequences"],
        tokens=meta["tokens"],
        trained_tokens=meta["trained_tokens"],
        lower_bound=meta["lower_bound_rows"],
        fill=meta["fill"],
        sequences_per_row=meta["sequences_per_row"],
        max_row_tokens=meta["max_row_tokens"],
    )
    return FileStats(tokenize, pack, seconds=seconds)
