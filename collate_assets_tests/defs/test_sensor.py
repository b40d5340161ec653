"""input_files_sensor: new files become partitions and runs; deleted files drop their partitions."""

import shutil

import dagster as dg

from collate_assets.core import file_sha256
from collate_assets.defs.partitions import INPUT_FILES
from collate_assets.defs.resources import CollatePaths
from collate_assets.defs.sensors import input_files_sensor
from collate_assets.sample import DEMO_INPUT_DIR


def tick(instance, input_dir, cursor=None) -> dg.SensorResult:
    """Evaluate the sensor once and apply its result as the sensor daemon would."""
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"paths": CollatePaths(input_dir=str(input_dir), output_dir="out")}
    )
    result = input_files_sensor(context)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    for request in result.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def observed(instance) -> list[tuple[str, str]]:
    records = instance.fetch_observations(dg.AssetKey("raw_conversations"), limit=100, ascending=True).records
    return [(r.partition_key, r.asset_observation.tags["dagster/data_version"]) for r in records]


def test_new_files_become_partitions_with_one_run_each(tmp_path):
    shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", tmp_path / "demo_small.jsonl")
    with dg.instance_for_test() as instance:
        first = tick(instance, tmp_path)
        assert [r.partition_key for r in first.run_requests] == ["demo_small.jsonl"]
        assert instance.get_dynamic_partitions(INPUT_FILES.name) == ["demo_small.jsonl"]
        assert observed(instance) == [("demo_small.jsonl", file_sha256(tmp_path / "demo_small.jsonl"))]

        # Nothing new: nothing requested, nothing observed again.
        second = tick(instance, tmp_path, first.cursor)
        assert second.run_requests == [] and second.dynamic_partitions_requests == []
        assert second.skip_reason is not None
        assert len(observed(instance)) == 1

        # A new file with an awkward name: one more partition, one run, with a safe key.
        shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", tmp_path / "copy, 2.jsonl")
        third = tick(instance, tmp_path, second.cursor)
        assert [r.partition_key for r in third.run_requests] == ["copy%2C%202.jsonl"]
        assert third.run_requests[0].run_key.startswith("copy%2C%202.jsonl@")
        assert sorted(instance.get_dynamic_partitions(INPUT_FILES.name)) == ["copy%2C%202.jsonl", "demo_small.jsonl"]


def test_changed_file_is_observed_but_not_run(tmp_path):
    path = tmp_path / "demo_small.jsonl"
    shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", path)
    with dg.instance_for_test() as instance:
        first = tick(instance, tmp_path)
        with open(path, "a", encoding="utf-8") as f:
            f.write('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
        second = tick(instance, tmp_path, first.cursor)
        assert second.run_requests == []  # nightly_collate rebuilds changed files
        assert [sha for _, sha in observed(instance)] == [
            observed(instance)[0][1],
            file_sha256(path),
        ]


def test_deleted_file_drops_its_partition_and_missing_folder_deletes_nothing(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", tmp_path / name)
    with dg.instance_for_test() as instance:
        first = tick(instance, tmp_path)
        (tmp_path / "b.jsonl").unlink()
        second = tick(instance, tmp_path, first.cursor)
        assert second.run_requests == []
        assert instance.get_dynamic_partitions(INPUT_FILES.name) == ["a.jsonl"]

        gone = tick(instance, tmp_path / "not-there", second.cursor)
        assert gone.run_requests == [] and gone.dynamic_partitions_requests == []
        assert "does not exist" in gone.skip_reason.skip_message
        assert instance.get_dynamic_partitions(INPUT_FILES.name) == ["a.jsonl"]
