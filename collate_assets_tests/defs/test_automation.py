"""Declarative automation: new and edited files run by themselves, and nothing else does.

Evaluated with Dagster's own `evaluate_automation_conditions` against a real instance (Dagster's
SQL storages, on in-memory SQLite: see helpers.instance_in_memory), tick after tick, with real runs
between ticks, as the automation sensor of `dagster dev` does.
"""

import shutil

import dagster as dg

from collate_assets.core import file_sha256
from collate_assets.sample import DEMO_INPUT_DIR

from .helpers import build_dataset_defs, demo_settings, instance_in_memory, materialize
from .test_sensor import tick as sensor_tick

EXTRA = ('{"messages": [{"role": "user", "content": "one more"}, '
         '{"role": "assistant", "content": "ok"}]}\n')
ASKED = {"tokenized_conversations", "packed_arrow", "packed_parquet"}


def requested(result) -> dict[str, set]:
    out = {}
    for key in ("tokenized_conversations", "packed_arrow", "packed_parquet", "packed_msgpack", "packed_jsonl"):
        partitions = result.get_requested_partitions(dg.AssetKey(key))
        if partitions:
            out[key] = set(partitions)
    return out


def run_requested(defs, instance, wanted: dict[str, set]) -> None:
    for partition in sorted(set().union(*wanted.values())):
        assets = [key for key, keys in wanted.items() if partition in keys]
        assert materialize(defs, instance, partition, assets=assets).success


def one_file_built(tmp_path, instance):
    """demo_small.jsonl in an input folder, seen by the sensor and built by the first automation run:
    (folder, definitions, the evaluation that requested the run; none has followed it yet)."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", folder / "demo_small.jsonl")
    defs = build_dataset_defs(demo_settings(folder, tmp_path / "out", formats=("arrow",)))
    start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    sensor_tick(instance, folder)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
    run_requested(defs, instance, requested(first))
    return folder, defs, first


def test_new_and_edited_files_run_by_themselves_and_nothing_else(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("demo.jsonl", "demo_small.jsonl"):
        shutil.copyfile(DEMO_INPUT_DIR / name, folder / name)
    defs = build_dataset_defs(demo_settings(folder, tmp_path / "out", formats=("arrow", "parquet")))
    with instance_in_memory() as instance:
        start = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # the sensor's first tick
        assert requested(start) == {}
        sensor_tick(instance, folder)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
        # Only the formats asked for (COLLATE_FORMATS), for both new partitions.
        assert requested(first) == {key: {"demo.jsonl", "demo_small.jsonl"} for key in ASKED}
        run_requested(defs, instance, requested(first))

        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert requested(second) == {}  # up to date: nothing runs

        with open(folder / "demo_small.jsonl", "a") as f:
            f.write('{"messages": [{"role": "user", "content": "one more"}, {"role": "assistant", "content": "ok"}]}\n')
        sensor_tick(instance, folder)
        third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert requested(third) == {key: {"demo_small.jsonl"} for key in ASKED}
        run_requested(defs, instance, requested(third))
        fourth = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=third.cursor)
        assert requested(fourth) == {}
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("tokenized_conversations"), asset_partitions=["demo_small.jsonl"]),
            limit=1).records
        assert record.asset_materialization.metadata["input_sha256"].value == file_sha256(folder / "demo_small.jsonl")
        assert record.asset_materialization.metadata["conversations"].value == 41


def test_new_settings_rebuild_every_partition(tmp_path):
    with instance_in_memory() as instance:
        folder, defs, first = one_file_built(tmp_path, instance)
        again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert requested(again) == {}
        # The same dataset with another max_length: new code versions, so everything is stale.
        changed = build_dataset_defs(demo_settings(folder, tmp_path / "out", formats=("arrow",), max_length=512))
        after = dg.evaluate_automation_conditions(defs=changed, instance=instance, cursor=again.cursor)
        assert requested(after) == {"tokenized_conversations": {"demo_small.jsonl"}, "packed_arrow": {"demo_small.jsonl"}}


def test_formats_not_asked_for_carry_no_condition(tmp_path):
    defs = build_dataset_defs(demo_settings(tmp_path, tmp_path / "out", formats=("parquet",)))
    graph = defs.resolve_asset_graph()
    conditions = {key.to_user_string(): graph.get(key).automation_condition for key in graph.get_all_asset_keys()}
    assert conditions["packed_parquet"] is not None and conditions["tokenized_conversations"] is not None
    assert conditions["packed_arrow"] is None and conditions["packed_jsonl"] is None
    assert conditions["raw_conversations"] is None
    sensors = {s.name: s for s in defs.sensors}
    assert isinstance(sensors["collate_automation"], dg.AutomationConditionSensorDefinition)
    assert sensors["collate_automation"].default_status == dg.DefaultSensorStatus.RUNNING


def test_an_edit_observed_as_the_previous_run_ends_is_not_lost(tmp_path):
    """eager() alone drops an edit observed in the same evaluation as the partition's own update
    (its since-last-handled reset wins); input_changed keeps the partition requested until it is current."""
    with instance_in_memory() as instance:
        folder, defs, first = one_file_built(tmp_path, instance)
        # Edited and observed right after the run, before the next evaluation sees the run's update.
        with open(folder / "demo_small.jsonl", "a") as f:
            f.write(EXTRA)
        sensor_tick(instance, folder)
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert requested(second) == {"tokenized_conversations": {"demo_small.jsonl"}, "packed_arrow": {"demo_small.jsonl"}}
        # An edit observed while a run of the old bytes was going on: that run ends, the partition is still stale.
        run_requested(defs, instance, requested(second))
        with open(folder / "demo_small.jsonl", "a") as f:
            f.write(EXTRA)
        sensor_tick(instance, folder)
        third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert requested(third) == {"tokenized_conversations": {"demo_small.jsonl"}, "packed_arrow": {"demo_small.jsonl"}}
        run_requested(defs, instance, requested(third))
        fourth = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=third.cursor)
        assert requested(fourth) == {}  # current again: nothing more


def test_a_touched_file_runs_nothing(tmp_path):
    import os

    with instance_in_memory() as instance:
        folder, defs, first = one_file_built(tmp_path, instance)
        settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        path = folder / "demo_small.jsonl"
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
        sensor_tick(instance, folder)
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
        assert requested(after) == {}


def test_files_there_before_the_first_evaluation_are_built(tmp_path):
    """A fresh instance (or a dataset just added) whose files the sensor registered before the
    automation's first evaluation: that evaluation requests them (eager() alone counts its first
    evaluation as "handled" and leaves them to the nightly tick). Once built, nothing more."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("demo.jsonl", "demo_small.jsonl"):
        shutil.copyfile(DEMO_INPUT_DIR / name, folder / name)
    defs = build_dataset_defs(demo_settings(folder, tmp_path / "out", formats=("arrow",)))
    with instance_in_memory() as instance:
        sensor_tick(instance, folder)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # no cursor: the first evaluation
        both = {"demo.jsonl", "demo_small.jsonl"}
        assert requested(first) == {"tokenized_conversations": both, "packed_arrow": both}
        run_requested(defs, instance, requested(first))
        cursor = first.cursor
        for _ in range(3):
            later = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            assert requested(later) == {}
            cursor = later.cursor


def test_a_missing_partition_whose_run_failed_is_not_requested_again(tmp_path):
    """Requested once: a run that fails leaves the partition missing, and it waits for the nightly retry
    (a level "missing" condition would request it at every evaluation)."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.json").write_text("[ not json")
    defs = build_dataset_defs(demo_settings(folder, tmp_path / "out", formats=("arrow",)))
    with instance_in_memory() as instance:
        sensor_tick(instance, folder)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert requested(first) == {"tokenized_conversations": {"broken.json"}, "packed_arrow": {"broken.json"}}
        assert not materialize(defs, instance, "broken.json", assets=["tokenized_conversations", "packed_arrow"], raise_on_error=False).success
        cursor = first.cursor
        for _ in range(2):
            later = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            assert requested(later) == {}
            cursor = later.cursor
