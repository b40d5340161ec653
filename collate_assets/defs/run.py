"""Run the asset graph in-process for the `collate` command, recorded in the Dagster instance.

Every file the command is given becomes a partition (registered first, as a dynamic partition must
exist before anything runs it), then `tokenized_conversations` and `packed_<format>` (with its
blocking checks) are materialized for it. The runs, their metadata and lineage show in the UI of a
`dagster dev` started with the same DAGSTER_HOME.
"""

import contextlib
import fcntl
import logging
import os
import sys
import time
from pathlib import Path

import dagster as dg

from collate_assets.core import CollateError, CollateSettings, FileStats, PackStats, TokenizeStats, list_input_files
from collate_assets.core.reader import progress_total

from .assets import PACKED_ASSETS, PROGRESS_SINKS, raw_conversations, tokenized_conversations
from .checks import PACKED_CHECKS
from .io_managers import io_managers
from .partitions import INPUT_FILES, register_partitions
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
    progress: bool = True,
) -> list[FileStats]:
    from tqdm import tqdm

    files = list_input_files(input_path)
    input_dir = input_path if input_path.is_dir() else input_path.parent
    output_dir = output_dir.resolve()
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
        ),
        "packing": PackingSettings(**settings.as_dict()),
        **io_managers(),
    }
    resources["tokenizer"].load()  # a bad tokenizer fails here, once, with the loader's message
    packed = PACKED_ASSETS[fmt]
    selection = dg.AssetSelection.assets(tokenized_conversations, packed)
    total = sum(progress_total(f) for f in files)
    results = []
    with get_instance() as instance, contextlib.ExitStack() as stack:
        keys = register_partitions(instance, input_path)
        bar = stack.enter_context(
            tqdm(total=total, unit="B", unit_scale=True, desc="collate", disable=not progress, leave=False)
        )
        PROGRESS_SINKS.append(lambda nbytes, _lines: bar.update(nbytes))
        stack.callback(PROGRESS_SINKS.clear)
        for key, path in zip(keys, files):
            bar.set_postfix_str(path.name)
            started = time.perf_counter()
            result = dg.materialize(
                [raw_conversations, tokenized_conversations, *PACKED_ASSETS.values(), *PACKED_CHECKS],
                selection=selection,
                instance=instance,
                partition_key=key,
                resources=resources,
                raise_on_error=False,
                tags={"collate/launched_by": "collate-cli"},
                run_config=QUIET_RUN_CONFIG,
            )
            _print_run_warnings(instance, result.run_id)
            if not result.success:
                raise CollateError(_failure_message(result, path))
            results.append(_file_stats(result, packed.key.path[-1], time.perf_counter() - started))
    return results


def _print_run_warnings(instance: dg.DagsterInstance, run_id: str) -> None:
    """The run's own warnings (e.g. rejected lines), one line each on stderr."""
    for record in instance.all_logs(run_id):
        # errors are left out: the failure is the command's one error line
        if not record.is_dagster_event and logging.WARNING <= record.level < logging.ERROR and record.user_message:
            print(f"collate: warning: {record.user_message.strip().splitlines()[0]}", file=sys.stderr)


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
