"""The input files sensor: files become partitions and observations, never runs; deleted files drop their partitions."""

import os
import shutil

import dagster as dg

from collate_assets.core import file_sha256
from collate_assets.defs.assets import Dataset
from collate_assets.sample import DEMO_INPUT_DIR

from .helpers import demo_settings, sensor_tick


def tick(instance, input_dir):
    """Evaluate the sensor of the demo settings over `input_dir` once and apply its result."""
    return sensor_tick(instance, Dataset(demo_settings(input_dir, "out")))


def observed(instance) -> list[tuple[str, str]]:
    records = instance.fetch_observations(dg.AssetKey("raw_conversations"), limit=100, ascending=True).records
    return [(r.partition_key, r.asset_observation.tags["dagster/data_version"]) for r in records]


def test_new_files_become_partitions_and_observations_without_runs(tmp_path):
    shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", tmp_path / "demo_small.jsonl")
    with dg.instance_for_test() as instance:
        first = tick(instance, tmp_path)
        assert not first.run_requests  # what runs is the automation's decision
        assert instance.get_dynamic_partitions("input_files") == ["demo_small.jsonl"]
        assert observed(instance) == [("demo_small.jsonl", file_sha256(tmp_path / "demo_small.jsonl"))]
        assert tick(instance, tmp_path).skip_message  # nothing new: no event, no hashing
        shutil.copyfile(DEMO_INPUT_DIR / "demo.jsonl", tmp_path / "demo.jsonl")
        tick(instance, tmp_path)
        assert instance.get_dynamic_partitions("input_files") == ["demo_small.jsonl", "demo.jsonl"]
        assert [key for key, _ in observed(instance)] == ["demo_small.jsonl", "demo.jsonl"]


def test_changed_file_gets_a_new_data_version_and_a_touched_one_does_not(tmp_path):
    path = tmp_path / "demo_small.jsonl"
    shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", path)
    with dg.instance_for_test() as instance:
        tick(instance, tmp_path)
        before = file_sha256(path)
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
        tick(instance, tmp_path)
        assert [version for _, version in observed(instance)] == [before, before]  # same bytes, same version
        with open(path, "a") as f:
            f.write('{"messages": [{"role": "user", "content": "one more"}, {"role": "assistant", "content": "ok"}]}\n')
        result = tick(instance, tmp_path)
        assert not result.run_requests
        assert observed(instance)[-1] == ("demo_small.jsonl", file_sha256(path)) != ("demo_small.jsonl", before)


def test_deleted_file_drops_its_partition_and_missing_folder_deletes_nothing(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("demo.jsonl", "demo_small.jsonl"):
        shutil.copyfile(DEMO_INPUT_DIR / name, folder / name)
    with dg.instance_for_test() as instance:
        tick(instance, folder)
        (folder / "demo.jsonl").unlink()
        tick(instance, folder)
        assert instance.get_dynamic_partitions("input_files") == ["demo_small.jsonl"]
        shutil.rmtree(folder)
        result = tick(instance, folder)
        assert result.skip_message and "does not exist" in result.skip_message
        assert instance.get_dynamic_partitions("input_files") == ["demo_small.jsonl"]


def test_partitions_observed_in_another_folder_are_never_dropped(tmp_path):
    """A sensor only drops the partitions of files gone from its own folder: a partition of the same
    dataset registered and observed from another folder (as `collate -i OTHER --register-only` did
    before it was refused) stays, while a file deleted from the sensor's folder still goes."""
    from collate_assets.defs.sensors import file_observations

    own, other = tmp_path / "own", tmp_path / "other"
    own.mkdir()
    other.mkdir()
    shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", own / "demo_small.jsonl")
    shutil.copyfile(DEMO_INPUT_DIR / "demo.jsonl", own / "demo.jsonl")
    shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", other / "elsewhere.jsonl")
    with dg.instance_for_test() as instance:
        tick(instance, own)
        instance.add_dynamic_partitions("input_files", ["elsewhere.jsonl"])
        for event in file_observations(instance, dg.AssetKey("raw_conversations"), {"elsewhere.jsonl": other / "elsewhere.jsonl"}):
            instance.report_runless_asset_event(event)
        (own / "demo.jsonl").unlink()
        tick(instance, own)
        assert sorted(instance.get_dynamic_partitions("input_files")) == ["demo_small.jsonl", "elsewhere.jsonl"]
