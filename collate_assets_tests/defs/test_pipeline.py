"""Materialize tokenized -> four packed formats for real, and read the outputs back."""

import json

import dagster as dg
import pyarrow as pa
import pytest

from collate_assets.core import EXTENSIONS, IGNORE_INDEX, read_packed, spill_lengths

from .helpers import ALL_FORMATS, TEST_MAX_LENGTH, build_dataset_defs, copy_demo, demo_settings, materialize, register


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetMaterialization]:
    return {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}


def meta(materialization, key):
    return materialization.metadata[key].value


def test_both_demo_files_materialize_with_passing_checks_in_one_step_each(collated):
    for key, result in collated.results.items():
        assert result.success
        mats = materializations(result)
        assert set(mats) == {"tokenized_conversations", *(f"packed_{fmt}" for fmt in ALL_FORMATS)}
        assert all(m.partition == key for m in mats.values())
        evaluations = result.get_asset_check_evaluations()
        assert len(evaluations) == 4 * 5  # four formats, five checks each
        assert all(e.passed and e.partition == key for e in evaluations), [
            (e.asset_key, e.check_name, e.metadata) for e in evaluations if not e.passed
        ]
        # One step per asset, the checks inside their asset's step: no separate check steps.
        steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
        assert steps == {"tokenized_conversations", *(f"packed_{fmt}" for fmt in ALL_FORMATS)}


def test_outputs_follow_the_documented_layout(collated):
    out = collated.output_dir
    for stem in ("demo", "demo_small"):
        for ext in EXTENSIONS.values():
            assert (out / f"{stem}{ext}").is_file()
        assert (out / f"{stem}.rejects.jsonl").is_file()
        assert (out / ".collate_tokenized" / f"{stem}.arrow").is_file()
        assert (out / ".collate_tokenized" / f"{stem}.manifest.json").is_file()
    # Nothing else: no temporary files left behind, no Dagster pickles.
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(names) == 2 * (4 + 1 + 2), names


def test_packed_metadata_is_numeric_and_consistent(collated):
    mats = materializations(collated.results["demo.jsonl"])
    tokenized = mats["tokenized_conversations"]
    spill_tokens = meta(tokenized, "tokens")
    assert spill_tokens > 0 and meta(tokenized, "conversations") > 0
    assert isinstance(tokenized.metadata["dagster/column_schema"].value, dg.TableSchema)
    histogram = meta(tokenized, "length_histogram")  # a table in the UI: tokens range, sequences
    assert sum(r.data["sequences"] for r in histogram.records) == meta(tokenized, "sequences")
    assert [c.name for c in histogram.schema.columns] == ["tokens", "sequences"]
    assert meta(tokenized, "truncated") > 0  # the demo has conversations longer than TEST_MAX_LENGTH
    assert meta(tokenized, "tokens_read") == spill_tokens + meta(tokenized, "truncated_tokens")
    for fmt in ALL_FORMATS:
        packed = mats[f"packed_{fmt}"]
        assert isinstance(packed.metadata["rows"], dg.IntMetadataValue)
        assert isinstance(packed.metadata["fill"], dg.FloatMetadataValue)
        assert meta(packed, "tokens") == spill_tokens
        assert meta(packed, "rows") >= meta(packed, "lower_bound_rows") > 0
        assert 0.5 < meta(packed, "fill") <= 1.0
        assert meta(packed, "max_row_tokens") <= TEST_MAX_LENGTH
        assert meta(packed, "input_sha256") == meta(tokenized, "input_sha256")
        assert meta(packed, "tokenizer_fingerprint") == meta(tokenized, "tokenizer_fingerprint")
        assert meta(packed, "settings")["max_length"] == TEST_MAX_LENGTH
        assert meta(packed, "dagster/uri").endswith(f"/demo{EXTENSIONS[fmt]}")
    rows = {fmt: list(read_packed(collated.output_dir / f"demo{EXTENSIONS[fmt]}", fmt)) for fmt in ALL_FORMATS}
    assert rows["arrow"] == rows["parquet"] == rows["msgpack"] == rows["jsonl"]
    assert len(rows["arrow"]) == meta(mats["packed_arrow"], "rows")


def test_packed_rows_keep_the_packing_contract(collated):
    lengths = spill_lengths(collated.output_dir / ".collate_tokenized" / "demo.arrow")
    rows = list(read_packed(collated.output_dir / "demo.arrow", "arrow"))
    assert sorted(n for row in rows for n in row["seq_lengths"]) == sorted(lengths.tolist())
    for row in rows:
        assert "attention_mask" not in row
        start = 0
        for n in row["seq_lengths"]:
            assert row["position_ids"][start : start + n] == list(range(n))
            assert row["labels"][start] == IGNORE_INDEX
            start += n
        assert start == len(row["input_ids"]) <= TEST_MAX_LENGTH


def test_versions_are_dagsters_own(collated):
    """The code versions carry the settings and the tokenizer; Dagster records the provenance."""
    mats = materializations(collated.results["demo_small.jsonl"])
    tokenized = mats["tokenized_conversations"]
    code_version = collated.defs.resolve_assets_def("tokenized_conversations").code_versions_by_key[
        dg.AssetKey("tokenized_conversations")]
    assert tokenized.tags["dagster/code_version"] == code_version
    assert f".s{meta(tokenized, 'settings_fingerprint')[:10]}." in code_version
    assert "dagster/input_event_pointer/raw_conversations" in tokenized.tags
    for fmt in ALL_FORMATS:
        assert "dagster/input_data_version/tokenized_conversations" in mats[f"packed_{fmt}"].tags
    manifest = json.loads((collated.output_dir / ".collate_tokenized" / "demo_small.manifest.json").read_text())
    assert manifest["stats"]["conversations"] == meta(tokenized, "conversations")
    assert manifest["input_sha256"] == meta(tokenized, "input_sha256")


def test_spill_is_an_arrow_file(collated):
    with pa.memory_map(str(collated.output_dir / ".collate_tokenized" / "demo.arrow")) as source:
        table = pa.ipc.open_file(source).read_all()
    assert table.column_names == ["input_ids", "labels", "line", "uncut_hash"]


def test_unregistered_partition_is_refused(collated, tmp_path):
    defs = build_dataset_defs(demo_settings(collated.input_dir, tmp_path))
    with pytest.raises(Exception, match="partition"):
        with dg.instance_for_test() as instance:
            materialize(defs, instance, "demo.jsonl")


def test_packing_with_settings_other_than_the_spill_fails_clearly(collated):
    other = build_dataset_defs(demo_settings(collated.input_dir, collated.output_dir, max_length=512))
    result = materialize(other, collated.instance, "demo_small.jsonl", assets=["packed_arrow"], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "differ from the ones tokenized_conversations used" in failure.step_failure_data.error.message


def test_a_range_of_partitions_runs_in_one_run_with_metadata_per_partition(tmp_path):
    inputs = copy_demo(tmp_path / "in")
    defs = build_dataset_defs(demo_settings(inputs, tmp_path / "out", formats=("arrow",)))
    with dg.instance_for_test() as instance:
        register(instance, ["demo.jsonl", "demo_small.jsonl"])
        result = materialize(defs, instance, ["demo.jsonl", "demo_small.jsonl"],
                             assets=["tokenized_conversations", "packed_arrow"])
        assert result.success
        by_partition = {}
        for event in result.get_asset_materialization_events():
            m = event.materialization
            by_partition.setdefault(m.asset_key.to_user_string(), {})[m.partition] = m
        assert set(by_partition["packed_arrow"]) == {"demo.jsonl", "demo_small.jsonl"}
        conversations = {k: meta(m, "conversations") for k, m in by_partition["tokenized_conversations"].items()}
        assert conversations == {"demo.jsonl": 300, "demo_small.jsonl": 40}
        rows = {k: meta(m, "rows") for k, m in by_partition["packed_arrow"].items()}
        assert rows["demo.jsonl"] > rows["demo_small.jsonl"] > 0
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 5 and all(c.passed for c in checks)
        assert all(c.metadata["partitions"].value == 2 for c in checks)


def test_a_corrupt_output_fails_its_blocking_check_in_the_same_step(tmp_path, monkeypatch):
    """Fault injection: the writer's file is changed before it is read back; the check must see it."""
    from collate_assets.defs import assets

    inputs = copy_demo(tmp_path / "in")
    defs = build_dataset_defs(demo_settings(inputs, tmp_path / "out", formats=("jsonl",)))
    real = assets.write_packed

    def corrupting(spill, dest, fmt, settings):
        stats = real(spill, dest, fmt, settings)
        rows = [json.loads(line) for line in open(dest.path)]
        index = next(i for i, row in enumerate(rows) if len(row["seq_lengths"]) > 1)
        second = rows[index]["seq_lengths"][0]
        rows[index]["labels"][second] = rows[index]["input_ids"][second]
        with open(dest.path, "w") as handle:
            handle.write("".join(json.dumps(row) + "\n" for row in rows))
        return stats

    monkeypatch.setattr(assets, "write_packed", corrupting)
    with dg.instance_for_test() as instance:
        register(instance, ["demo_small.jsonl"])
        result = materialize(defs, instance, "demo_small.jsonl", assets=["tokenized_conversations", "packed_jsonl"],
                             raise_on_error=False)
    assert not result.success
    outcome = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert outcome == {"rows_fit_max_length": True, "sequence_boundaries": True,
                       "labels_masked_at_starts": False, "tokens_conserved": True, "lines_accounted": True}
    failed = next(e for e in result.get_asset_check_evaluations() if not e.passed)
    assert failed.metadata["first_bad_row"].value >= 0
    assert any(e.is_step_failure and e.step_key == "packed_jsonl" for e in result.all_events)
