"""A big input file as shard partitions: registered by the sensor, packed one by one as a backfill runs
them, accounted for as a whole, rerun whole when the file is edited and registered anew when its shard
count changes."""

import json
import shutil

import dagster as dg
import pytest

from collate_assets.core import CollateError, collate_file_formats, file_sha256, load_tokenizer
from collate_assets.core.read.shards import locate_shard
from collate_assets.defs.assets import Dataset
from collate_assets.defs.dataset import build_dataset_defs
from collate_assets.defs.files import DatasetFiles
from collate_assets.defs.run import is_fresh
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR

from .helpers import demo_settings, materialize, sensor_tick

MIB = 1 << 20


def _checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_a_big_file_becomes_shard_partitions_that_add_up_to_it(tmp_path):
    lines = (DEMO_INPUT_DIR / "demo.jsonl").read_bytes().splitlines(keepends=True)
    lines[150] = b'{"messages": "not a list"}\n'
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    big = input_dir / "big.jsonl"
    big.write_bytes(b"".join(lines))
    shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", input_dir / "demo_small.jsonl")
    settings = demo_settings(input_dir, tmp_path / "out", formats=("arrow",), shard_mb=big.stat().st_size / 3.5 / MIB)
    defs = build_dataset_defs(settings)
    shard_keys = [f"big.jsonl@{i:05d}-of-00004" for i in range(4)]
    with dg.instance_for_test() as instance:
        sensor_tick(instance, Dataset(settings))
        assert instance.get_dynamic_partitions("input_files") == [*shard_keys, "demo_small.jsonl"]
        versions = {r.partition_key: r.asset_observation.tags["dagster/data_version"]
                    for r in instance.fetch_observations(dg.AssetKey("raw_conversations"), limit=10).records}
        assert versions == {**dict.fromkeys(shard_keys, file_sha256(big)), "demo_small.jsonl": file_sha256(input_dir / "demo_small.jsonl")}

        # a backfill: one run per partition, in any order
        results = {}
        for key in [shard_keys[2], shard_keys[0], shard_keys[3], shard_keys[1]]:
            results[key] = materialize(defs, instance, key, assets=["tokenized_conversations", "packed_arrow"])
            assert results[key].success
        first = _checks(results[shard_keys[2]])["lines_accounted"]
        assert first.passed and first.metadata["shards_tokenized"].value == "1 of 4"
        last = _checks(results[shard_keys[1]])["lines_accounted"]
        assert last.passed and last.metadata["file_lines"].value == last.metadata["file_lines_read"].value == len(lines)
        assert all(_checks(r)[name].passed for r in results.values() for name in _checks(r))

        out = tmp_path / "out"
        assert sorted(p.name for p in out.glob("big*.arrow")) == [f"big-{i:05d}-of-00004.arrow" for i in range(4)]
        summary = json.loads((out / "big.shards.json").read_text())
        assert summary["problems"] == [] and summary["input_sha256"] == file_sha256(big)
        assert summary["lines_read"] == len(lines) and summary["rejected"] == 1
        rejects = [json.loads(line) for p in out.glob("big-*.rejects.jsonl") for line in p.read_text().splitlines()]
        assert [r["line"] for r in rejects] == [151]

        # the files are those the engine writes for each shard on its own
        tokenizer = load_tokenizer(str(DEMO_TOKENIZER_DIR))
        for i in range(4):
            alone = tmp_path / "alone" / f"{i}.arrow"
            alone.parent.mkdir(exist_ok=True)
            collate_file_formats(big, {"arrow": alone}, tokenizer, settings, shard=locate_shard(big, i, 4))
            assert alone.read_bytes() == (out / f"big-{i:05d}-of-00004.arrow").read_bytes()

        # editing the file makes every shard stale (the whole file's sha256 is each shard's data version)
        materialize(defs, instance, "demo_small.jsonl", assets=["tokenized_conversations", "packed_arrow"])
        lines[10] = lines[11]
        big.write_bytes(b"".join(lines))
        sensor_tick(instance, Dataset(settings))
        specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
        stale = {key: not is_fresh(instance, specs[dg.AssetKey("tokenized_conversations")], key, {dg.AssetKey("raw_conversations")})
                 for key in instance.get_dynamic_partitions("input_files")}
        assert stale == {**dict.fromkeys(shard_keys, True), "demo_small.jsonl": False}

        # grown to twice its size: the four partitions go, eight come; the old keys are refused
        big.write_bytes(b"".join(lines) * 2)
        sensor_tick(instance, Dataset(settings))
        keys = instance.get_dynamic_partitions("input_files")
        assert [k for k in keys if k.startswith("big")] == [f"big.jsonl@{i:05d}-of-00008" for i in range(8)]
        with pytest.raises(CollateError, match="now split into 8 shards"):
            DatasetFiles(settings).shard(shard_keys[0], big)
