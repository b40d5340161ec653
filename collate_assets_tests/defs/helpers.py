"""Helpers for the Dagster layer's tests: settings on a copy of the demo sample, and real in-process runs."""

import shutil
from pathlib import Path

import dagster as dg

from collate_assets.core import CollateSettings
from collate_assets.defs.dataset import build_dataset_defs
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR

# Small enough that the demo packs into a handful of rows, large enough for its long conversations
# to exercise truncation.
TEST_MAX_LENGTH = 1024
ALL_FORMATS = ("arrow", "parquet", "msgpack", "jsonl")
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def copy_demo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("demo.jsonl", "demo_small.jsonl"):
        shutil.copyfile(DEMO_INPUT_DIR / name, folder / name)
    return folder


def demo_settings(input_dir: Path, output_dir, **changes) -> CollateSettings:
    values = {"input_dir": str(input_dir), "output_dir": str(output_dir), "tokenizer": str(DEMO_TOKENIZER_DIR),
              "max_length": TEST_MAX_LENGTH, "formats": ALL_FORMATS}
    values.update(changes)
    return CollateSettings(**values)


def materialize(defs: dg.Definitions, instance, keys, assets=None, **kwargs) -> dg.ExecuteInProcessResult:
    """Materialize `assets` (default: every asset of `defs`) for one partition key or a range of them."""
    if assets is None:
        assets = ["tokenized_conversations", *(f"packed_{fmt}" for fmt in ALL_FORMATS)]
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey.from_coercible(a) for a in assets})
    if isinstance(keys, str):
        where = {"partition_key": keys}
    else:
        where = {"tags": {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}}
    return job.execute_in_process(instance=instance, run_config=QUIET, **where, **kwargs)


def instance_in_memory() -> dg.DagsterInstance:
    """Dagster's ephemeral instance: the same SQL run and event log storages as the SQLite instance of
    `dg.instance_for_test()`, on in-memory SQLite databases, for tests run in this process only.

    `evaluate_automation_conditions` reads the dynamic partitions thousands of times per test, and on
    disk every read opens the index database again (~3 ms each: two thirds of test_automation.py's
    time). What the automation requests does not depend on where the instance keeps its tables. Tests
    that hand the instance to another process, or test the storage itself, keep an on-disk instance."""
    return dg.DagsterInstance.ephemeral()


def register(instance, defs_or_keys, keys=None, name="input_files") -> None:
    instance.add_dynamic_partitions(name, list(keys if keys is not None else defs_or_keys))


__all__ = ["ALL_FORMATS", "TEST_MAX_LENGTH", "build_dataset_defs", "copy_demo", "demo_settings", "materialize", "register",
           "DEMO_TOKENIZER_DIR"]


def register_folder(instance, input_dir, name="input_files") -> list[str]:
    """Register the input files of a folder (or one file) as partitions, as the sensor and `collate` do.

    Entries that are not input files are left out with a logged warning; two files with the same
    stem fail (CollateError), as `collate --register-only` does.
    """
    import logging

    from collate_assets.core import CollateError
    from collate_assets.core.plan import scan

    files, clashes, skipped = scan(input_dir)
    if clashes:
        raise CollateError("; ".join(clashes) + ": outputs would overwrite each other")
    for warning in skipped:
        logging.getLogger("collate_assets").warning("%s: %s", input_dir, warning)
    keys = list(files)
    known = set(instance.get_dynamic_partitions(name))
    instance.add_dynamic_partitions(name, [key for key in keys if key not in known])
    return keys


def arrow_defs(input_dir, output_dir, max_length=256, **settings) -> dg.Definitions:
    """The default dataset's definitions over `input_dir`, writing arrow only."""
    settings.setdefault("formats", ("arrow",))
    return build_dataset_defs(demo_settings(input_dir, output_dir, max_length=max_length, **settings))


def run_arrow(instance, defs: dg.Definitions, key: str) -> dg.ExecuteInProcessResult:
    """tokenized_conversations + packed_arrow (with its checks) for one partition; failures returned, not raised."""
    return materialize(defs, instance, key, assets=["tokenized_conversations", "packed_arrow"], raise_on_error=False)


def sensor_tick(instance, dataset):
    """Evaluate a dataset's input files sensor once and apply its result as the sensor daemon would."""
    from collate_assets.defs.resources import CollateConfig
    from collate_assets.defs.sensors import build_input_files_sensor

    sensor = build_input_files_sensor(dataset)
    context = dg.build_sensor_context(instance=instance,
                                      resources={dataset.resource_key: CollateConfig.from_settings(dataset.settings)})
    result = sensor.evaluate_tick(context)  # as the daemon calls it (resources by key)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    for request in result.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result
