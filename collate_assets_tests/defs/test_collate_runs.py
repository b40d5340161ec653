"""The command's runs: only stale partitions run, several per run; an unchanged rerun launches nothing."""

import os
import shutil

import dagster as dg
import pytest

from collate_assets.defs.run import cli_dataset_name, get_instance, run_collate
from collate_assets.sample import DEMO_INPUT_DIR

from .helpers import demo_settings

EXTRA = '{"messages": [{"role": "user", "content": "one more"}, {"role": "assistant", "content": "ok"}]}\n'


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copyfile(DEMO_INPUT_DIR / "demo.jsonl", inputs / "demo.jsonl")
    lines = (DEMO_INPUT_DIR / "demo_small.jsonl").read_text().splitlines(keepends=True)
    for index in range(3):
        (inputs / f"part{index}.jsonl").write_text("".join(lines[index * 10:(index + 1) * 10]))
    return inputs


def mtimes(out):
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def materialized(out, partition, asset="tokenized_conversations") -> int:
    """Materializations of `asset` for `partition` in the dataset of the command writing to `out`."""
    with get_instance() as instance:
        key = dg.AssetKey([cli_dataset_name(out), asset])
        return len(instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=100).records)


def test_first_run_is_one_run_and_an_unchanged_rerun_launches_nothing(folder, tmp_path):
    out = tmp_path / "out"
    settings = demo_settings(folder, out, formats=("arrow",))
    first = run_collate(settings)
    assert first.runs == 1 and not first.failures  # four files, one range run
    assert sorted(s.tokenize.conversations for s in first.results) == [10, 10, 10, 300]
    before = mtimes(out)
    again = run_collate(settings)
    assert again.runs == 0 and sorted(again.up_to_date) == sorted(p.name for p in folder.iterdir())
    assert mtimes(out) == before
    assert sorted(s.tokenize.conversations for s in again.results) == [10, 10, 10, 300]  # still reported


def test_an_edited_file_reruns_alone(folder, tmp_path):
    out = tmp_path / "out"
    settings = demo_settings(folder, out, formats=("arrow",))
    run_collate(settings)
    before = mtimes(out)
    with open(folder / "part1.jsonl", "a") as handle:
        handle.write(EXTRA)
    result = run_collate(settings)
    assert result.runs == 1 and sorted(result.up_to_date) == ["demo.jsonl", "part0.jsonl", "part2.jsonl"]
    changed = {name for name, mtime in mtimes(out).items() if before.get(name) != mtime}
    assert changed == {"part1.arrow", "part1.rejects.jsonl", ".collate_tokenized/part1.arrow",
                       ".collate_tokenized/part1.manifest.json"}
    assert materialized(out, "part1.jsonl") == 2 and materialized(out, "part0.jsonl") == 1


def test_a_deleted_output_or_a_new_format_packs_again_without_tokenizing(folder, tmp_path):
    out = tmp_path / "out"
    run_collate(demo_settings(folder, out, formats=("arrow",)))
    (out / "part2.arrow").unlink()
    result = run_collate(demo_settings(folder, out, formats=("arrow",)))
    assert result.runs == 1 and (out / "part2.arrow").is_file()
    assert materialized(out, "part2.jsonl") == 1 and materialized(out, "part2.jsonl", "packed_arrow") == 2
    result = run_collate(demo_settings(folder, out, formats=("arrow", "parquet")))
    assert result.runs == 1 and all((out / f"{p.stem}.parquet").is_file() for p in folder.iterdir())
    assert all(materialized(out, p.name) == 1 for p in folder.iterdir())  # nothing tokenized again
    assert materialized(out, "demo.jsonl", "packed_arrow") == 1


def test_new_settings_rerun_everything(folder, tmp_path):
    out = tmp_path / "out"
    run_collate(demo_settings(folder, out, formats=("arrow",)))
    result = run_collate(demo_settings(folder, out, formats=("arrow",), max_length=512))
    assert result.runs == 1 and not result.up_to_date
    assert all(s.pack.max_row_tokens <= 512 for s in result.results)


def test_a_touched_file_runs_nothing_and_a_new_pack_code_version_only_packs(folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    settings = demo_settings(folder, out, formats=("arrow",))
    run_collate(settings)
    path = folder / "part0.jsonl"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    assert run_collate(settings).runs == 0  # observed again after its materialization, with the same data version
    with get_instance() as instance:
        raw = dg.AssetKey([cli_dataset_name(out), "raw_conversations"])
        assert len(instance.fetch_observations(dg.AssetRecordsFilter(asset_key=raw, asset_partitions=["part0.jsonl"]), limit=5).records) == 2
    monkeypatch.setattr("collate_assets.defs.assets.PACK_CODE_VERSION", "2-test")  # the packed assets' code only
    result = run_collate(settings)
    assert result.runs == 1 and not result.up_to_date
    assert all(materialized(out, p.name) == 1 and materialized(out, p.name, "packed_arrow") == 2 for p in folder.iterdir())


def test_a_bad_file_in_a_range_fails_alone(folder, tmp_path):
    (folder / "part1.jsonl").write_bytes(b"\x00\x01binary\xff" * 100)
    out = tmp_path / "out"
    result = run_collate(demo_settings(folder, out, formats=("arrow",)))
    assert [path.name for path, _ in result.failures] == ["part1.jsonl"]
    assert "no usable conversation" in result.failures[0][1]
    assert sorted(s.tokenize.file.rsplit("/", 1)[-1] for s in result.results) == ["demo.jsonl", "part0.jsonl", "part2.jsonl"]
    assert {p.name for p in out.glob("*.arrow")} == {"demo.arrow", "part0.arrow", "part2.arrow"}
    # The next run retries only the failed file.
    again = run_collate(demo_settings(folder, out, formats=("arrow",)))
    assert again.runs == 1 and [path.name for path, _ in again.failures] == ["part1.jsonl"]


def test_each_output_folder_is_a_dataset_of_its_own(folder, tmp_path):
    """Two commands on one DAGSTER_HOME with other output folders: each its own partitions and asset
    keys, none in the code location's default dataset (`input_files`, unprefixed keys)."""
    first, second = tmp_path / "a" / "out", tmp_path / "b" / "out"
    one = run_collate(demo_settings(folder, first, formats=("arrow",)))
    two = run_collate(demo_settings(folder / "part0.jsonl", second, formats=("arrow",)))
    assert one.dataset == cli_dataset_name(first) != two.dataset == cli_dataset_name(second)
    assert one.dataset.startswith("cli_out_") and two.dataset.startswith("cli_out_")
    with get_instance() as instance:
        assert instance.get_dynamic_partitions("input_files") == []
        assert sorted(instance.get_dynamic_partitions(f"{one.dataset}_input_files")) == sorted(p.name for p in folder.iterdir())
        assert instance.get_dynamic_partitions(f"{two.dataset}_input_files") == ["part0.jsonl"]
        assert instance.get_latest_materialization_event(dg.AssetKey("packed_arrow")) is None
        run = instance.get_run_by_id(instance.get_latest_materialization_event(dg.AssetKey([two.dataset, "packed_arrow"])).run_id)
        assert run.tags["collate/dataset"] == two.dataset and run.tags["collate/input"] == str(folder / "part0.jsonl")
    assert materialized(second, "part0.jsonl") == 1 and materialized(first, "part0.jsonl") == 1


def test_the_default_dataset_is_built_and_registered_only_from_its_own_folder(folder, tmp_path, monkeypatch):
    from collate_assets.core import CollateError
    from collate_assets.defs.run import code_location_dataset, register_only

    monkeypatch.setenv("COLLATE_INPUT_DIR", str(folder))
    monkeypatch.setenv("COLLATE_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.delenv("COLLATE_DATASETS_DIR", raising=False)
    dataset = code_location_dataset("default")
    assert dataset.name is None and dataset.settings.input_path() == folder
    assert sorted(register_only(dataset)) == sorted(p.name for p in folder.iterdir())
    assert register_only(dataset, folder) == register_only(dataset)
    with pytest.raises(CollateError, match="reads .* not .*registers a dataset's own files"):
        register_only(dataset, tmp_path)
    with pytest.raises(CollateError, match="COLLATE_DATASETS_DIR is not set"):
        code_location_dataset("chats")
    result = run_collate(dataset.settings, dataset="default")
    assert result.dataset == "default" and result.runs == 1 and not result.failures
    with get_instance() as instance:
        assert sorted(instance.get_materialized_partitions(dg.AssetKey("packed_arrow"))) == sorted(p.name for p in folder.iterdir())


def test_a_folder_of_subfolders_says_why_it_has_no_input_files(tmp_path, monkeypatch):
    from collate_assets.core import CollateError

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "in" / "2024").mkdir(parents=True)
    (tmp_path / "in" / "2024" / "a.jsonl").write_text(EXTRA)
    with pytest.raises(CollateError, match=r"no input files .* in .*in \(1 subfolder skipped: the input folder is not read recursively\)"):
        run_collate(demo_settings(tmp_path / "in", tmp_path / "out"))


def test_a_dagster_message_over_several_lines_stays_whole():
    from collate_assets.defs.run import _one_line

    wrapped = "Partition range trunc.jsonl.gz to trunc.jsonl.gz is\n  not valid for the partitions\n\n  definition input_files"
    assert _one_line(wrapped) == "Partition range trunc.jsonl.gz to trunc.jsonl.gz is not valid for the partitions definition input_files"
    assert len(_one_line("x" * 5000)) == 2000
