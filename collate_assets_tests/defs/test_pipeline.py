"""Materialize raw -> tokenized -> four packed formats for real, and read the outputs back."""

import hashlib
import json

import dagster as dg
import pyarrow as pa
import pytest

from collate_assets.core import EXTENSIONS, IGNORE_INDEX, read_packed, spill_lengths
from collate_assets.defs import lineage
from collate_assets.defs.lineage import packed_lineage

from .conftest import TEST_MAX_LENGTH, make_resources, materialize_partition

FORMATS = list(EXTENSIONS)


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetMaterialization]:
    return {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}


def meta(materialization, key):
    return materialization.metadata[key].value


def test_both_demo_files_materialize_with_passing_checks(collated):
    assert collated.keys == ["demo.jsonl", "demo_small.jsonl"]
    for key, result in collated.results.items():
        assert result.success
        mats = materializations(result)
        assert set(mats) == {"tokenized_conversations", *(f"packed_{fmt}" for fmt in FORMATS)}
        assert all(m.partition == key for m in mats.values())
        evaluations = result.get_asset_check_evaluations()
        assert len(evaluations) == 16
        assert all(e.passed and e.partition == key for e in evaluations), [
            (e.asset_key, e.check_name, e.metadata) for e in evaluations if not e.passed
        ]


def test_outputs_follow_the_documented_layout(collated):
    out = collated.output_dir
    for stem in ("demo", "demo_small"):
        for fmt, ext in EXTENSIONS.items():
            assert (out / fmt / f"{stem}{ext}").is_file()
        assert (out / "_tokenized" / f"{stem}.arrow").is_file()
        assert (out / "_tokenized" / f"{stem}.rejects.jsonl").is_file()
        assert (out / "_tokenized" / f"{stem}.manifest.json").is_file()
        for fmt in EXTENSIONS:  # what each packed file was written from (lets unchanged reruns skip it)
            assert (out / "_tokenized" / f"{stem}.{fmt}.packed.json").is_file()
    # Nothing else: no temporary files left behind, no Dagster pickles.
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(names) == 2 * (4 + 3 + 4), names


def test_packed_metadata_is_numeric_and_consistent(collated):
    result = collated.results["demo.jsonl"]
    mats = materializations(result)
    tokenized = mats["tokenized_conversations"]
    spill_tokens = meta(tokenized, "tokens")
    assert spill_tokens > 0 and meta(tokenized, "conversations") > 0
    assert isinstance(tokenized.metadata["dagster/column_schema"].value, dg.TableSchema)
    assert "| tokens | sequences |" in meta(tokenized, "length_histogram")
    assert meta(tokenized, "truncated") > 0  # the demo has conversations longer than TEST_MAX_LENGTH
    assert meta(tokenized, "tokens_read") == spill_tokens + meta(tokenized, "truncated_tokens")
    for fmt in FORMATS:
        packed = mats[f"packed_{fmt}"]
        assert isinstance(packed.metadata["rows"], dg.IntMetadataValue)
        assert isinstance(packed.metadata["fill"], dg.FloatMetadataValue)
        assert isinstance(packed.metadata["tokens"], dg.IntMetadataValue)
        assert meta(packed, "tokens") == spill_tokens
        assert meta(packed, "rows") >= meta(packed, "lower_bound_rows") > 0
        assert 0.5 < meta(packed, "fill") <= 1.0
        assert meta(packed, "max_row_tokens") <= TEST_MAX_LENGTH
        assert meta(packed, "input_sha256") == meta(tokenized, "input_sha256")
        assert meta(packed, "tokenizer_fingerprint") == meta(tokenized, "tokenizer_fingerprint")
        assert meta(packed, "settings")["max_length"] == TEST_MAX_LENGTH
        assert meta(packed, "lineage") == packed_lineage(meta(tokenized, "lineage"), fmt)
        assert meta(packed, "dagster/uri").endswith(f"/{fmt}/demo{EXTENSIONS[fmt]}")
    # Same rows in every format.
    rows = {fmt: list(read_packed(collated.output_dir / fmt / f"demo{EXTENSIONS[fmt]}", fmt)) for fmt in FORMATS}
    assert rows["arrow"] == rows["parquet"] == rows["msgpack"] == rows["jsonl"]
    assert len(rows["arrow"]) == meta(mats["packed_arrow"], "rows")


def test_packed_rows_keep_the_packing_contract(collated):
    spill = collated.output_dir / "_tokenized" / "demo.arrow"
    lengths = spill_lengths(spill)
    rows = list(read_packed(collated.output_dir / "arrow" / "demo.arrow", "arrow"))
    assert sorted(n for row in rows for n in row["seq_lengths"]) == sorted(lengths.tolist())
    for row in rows:
        assert "attention_mask" not in row
        start = 0
        for n in row["seq_lengths"]:
            assert row["position_ids"][start : start + n] == list(range(n))
            assert row["labels"][start] == IGNORE_INDEX
            start += n
        assert start == len(row["input_ids"]) <= TEST_MAX_LENGTH


def test_tokenized_data_version_is_the_lineage_and_packed_records_it(collated):
    result = collated.results["demo_small.jsonl"]
    mats = materializations(result)
    tokenized = mats["tokenized_conversations"]
    assert tokenized.tags["dagster/data_version"] == meta(tokenized, "lineage")
    assert tokenized.tags["dagster/code_version"] == lineage.TOKENIZE_CODE_VERSION
    # For a partitioned input Dagster records the sha256 of the upstream partitions' data versions.
    seen_by_packed = hashlib.sha256(meta(tokenized, "lineage").encode()).hexdigest()
    for fmt in FORMATS:
        assert mats[f"packed_{fmt}"].tags["dagster/input_data_version/tokenized_conversations"] == seen_by_packed
    manifest = json.loads((collated.output_dir / "_tokenized" / "demo_small.manifest.json").read_text())
    assert manifest["lineage"] == meta(tokenized, "lineage")
    assert manifest["stats"]["conversations"] == meta(tokenized, "conversations")


def test_spill_is_an_arrow_file(collated):
    with pa.memory_map(str(collated.output_dir / "_tokenized" / "demo.arrow")) as source:
        table = pa.ipc.open_file(source).read_all()
    assert table.column_names == ["input_ids", "labels", "line"]


def test_unregistered_partition_is_refused(collated, tmp_path):
    with pytest.raises(Exception, match="partition"):
        with dg.instance_for_test() as instance:
            materialize_partition(instance, make_resources(collated.input_dir, str(tmp_path)), "demo.jsonl")


def test_packing_with_settings_other_than_the_spill_fails_clearly(collated):
    from collate_assets.defs.assets import packed_arrow, tokenized_conversations

    resources = make_resources(collated.input_dir, str(collated.output_dir), max_length=512)
    result = dg.materialize(
        [tokenized_conversations.to_source_assets()[0], packed_arrow],
        instance=collated.instance,
        partition_key="demo_small.jsonl",
        resources=resources,
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "differ from the ones tokenized_conversations used" in failure.step_failure_data.error.message
