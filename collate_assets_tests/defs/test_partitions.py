"""The file name <-> partition key mapping, and registering input files as partitions."""

import os

import dagster as dg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from collate_assets.core import CollateError
from collate_assets.defs.assets import Dataset
from collate_assets.defs.run import get_instance, register_only
from collate_assets.core.plan import file_name_to_key, key_to_file_name, output_stem
from collate_assets.defs.partitions import INPUT_FILES, scan_input_folder

TABLE = [
    ("demo.jsonl", "demo.jsonl"),
    ("demo_small-2.jsonl.gz", "demo_small-2.jsonl.gz"),
    ("a,b.jsonl", "a%2Cb.jsonl"),
    ("with space.jsonl", "with%20space.jsonl"),
    ("v1...final.jsonl", "v1.%2E%2Efinal.jsonl"),
    ("..hidden.jsonl", ".%2Ehidden.jsonl"),
    ("100%.jsonl", "100%25.jsonl"),
    ("données.jsonl", "donn%C3%A9es.jsonl"),
    ("日本語.jsonl", "%E6%97%A5%E6%9C%AC%E8%AA%9E.jsonl"),
    ("tab\there.jsonl", "tab%09here.jsonl"),
    ("q?&=#[]~+.jsonl", "q%3F%26%3D%23%5B%5D%7E%2B.jsonl"),
]


def assert_safe(key: str) -> None:
    assert "..." not in key and ".." not in key
    assert "," not in key and "/" not in key
    assert all(c.isascii() and (c.isalnum() or c in "._-%") for c in key)


@pytest.mark.parametrize(("name", "key"), TABLE)
def test_known_names_map_to_known_keys(name, key):
    assert file_name_to_key(name) == key
    assert key_to_file_name(key) == name
    assert_safe(key)


@given(st.text(min_size=1).filter(lambda s: "/" not in s and "\0" not in s and s not in (".", "..")))
def test_any_file_name_round_trips_to_a_safe_key(name):
    key = file_name_to_key(name)
    assert_safe(key)
    assert key_to_file_name(key) == name


def test_undecodable_bytes_round_trip():
    name = os.fsdecode(b"raw\xff\xfe.jsonl")  # a Linux file name that is not UTF-8
    key = file_name_to_key(name)
    assert key == "raw%FF%FE.jsonl"
    assert key_to_file_name(key) == name


@pytest.mark.parametrize("key", ["a,b.jsonl", "a..b", "a%2", "a%zz.jsonl", "a%2e.jsonl", "sp ace", "a/b"])
def test_keys_the_mapping_cannot_produce_are_rejected(key):
    with pytest.raises(ValueError):
        key_to_file_name(key)


@pytest.mark.parametrize("name", ["", ".", "..", "dir/file.jsonl"])
def test_non_file_names_are_rejected(name):
    with pytest.raises(ValueError):
        file_name_to_key(name)


def test_keys_are_accepted_by_dagster():
    # Static partitions validate keys the way the UI would read them; dynamic ones do not validate.
    keys = [file_name_to_key(name) for name, _ in TABLE]
    assert keys == [key for _, key in TABLE]
    dg.StaticPartitionsDefinition(keys)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(INPUT_FILES.name, keys)
        assert instance.get_dynamic_partitions(INPUT_FILES.name) == keys


def test_output_stem_strips_jsonl_and_gz():
    assert output_stem(file_name_to_key("a b.jsonl.gz")) == "a b"
    assert output_stem(file_name_to_key("v1...final.jsonl")) == "v1...final"
    for name in ("x.json", "x.parquet", "x.jsonl.zst"):
        assert output_stem(file_name_to_key(name)) == "x"


def test_scan_lists_only_input_files_at_top_level_and_skips_stem_clashes(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "a.jsonl.gz", "notes.txt"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.jsonl").write_text("")
    files, warnings = scan_input_folder(tmp_path)
    assert list(files) == ["a.jsonl", "b.jsonl"]
    assert len(warnings) == 2 and "a.jsonl.gz" in warnings[1]
    assert warnings[0].startswith("1 subfolder skipped")  # said, not silent


def test_scan_of_missing_or_empty_folder_gives_nothing(tmp_path):
    assert scan_input_folder(tmp_path) == ({}, [])
    files, warnings = scan_input_folder(tmp_path / "missing")
    assert files == {} and "does not exist" in warnings[0]


def test_scan_takes_a_glob_in_the_last_part(tmp_path):
    for name in ("a.jsonl", "b.jsonl", "c.parquet"):
        (tmp_path / name).write_text("")
    files, warnings = scan_input_folder(tmp_path / "*.jsonl")
    assert list(files) == ["a.jsonl", "b.jsonl"] and warnings == []
    assert list(scan_input_folder(tmp_path / "c.parquet")[0]) == ["c.parquet"]


def _settings(path):
    from collate_assets.core import CollateSettings

    return CollateSettings(input_dir=str(path))


def test_register_only_adds_only_missing_keys_and_observes_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "one.jsonl").write_text('{"messages": []}\n')
    (folder / "two, 2.jsonl").write_text('{"messages": []}\n')
    keys = register_only(Dataset(_settings(folder)))
    assert keys == ["one.jsonl", "two%2C%202.jsonl"]
    with get_instance() as instance:
        assert sorted(instance.get_dynamic_partitions(INPUT_FILES.name)) == sorted(keys)
        observed = instance.fetch_observations(dg.AssetKey("raw_conversations"), limit=10).records
        assert sorted(r.partition_key for r in observed) == sorted(keys)
    # Again with nothing changed: no new partition, no new observation.
    assert register_only(Dataset(_settings(folder))) == keys
    with get_instance() as instance:
        assert len(instance.fetch_observations(dg.AssetKey("raw_conversations"), limit=10).records) == 2
    # One file given: registered by its name.
    assert register_only(Dataset(_settings(folder / "one.jsonl"))) == ["one.jsonl"]


def test_register_only_refuses_empty_folder_and_stem_clash(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    folder = tmp_path / "in"
    folder.mkdir()
    with pytest.raises(CollateError, match="no input files \\(\\*.jsonl, .*\\*.parquet\\)"):
        register_only(Dataset(_settings(folder)))
    (folder / "a.jsonl").write_text("")
    (folder / "a.jsonl.gz").write_bytes(b"")
    with pytest.raises(CollateError, match="overwrite"):
        register_only(Dataset(_settings(folder)))


@pytest.mark.parametrize("other", ["x.json", "x.parquet", "x.jsonl.zst"])
def test_stem_clash_across_containers(tmp_path, other):
    (tmp_path / "x.jsonl").write_text("")
    (tmp_path / other).write_bytes(b"")
    files, warnings = scan_input_folder(tmp_path)
    assert len(files) == 1 and len(warnings) == 1 and "outputs would overwrite" in warnings[0]
    with pytest.raises(CollateError, match="overwrite"):
        register_only(Dataset(_settings(tmp_path)))
