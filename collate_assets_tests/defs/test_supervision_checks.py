"""The supervision audit in the Dagster layer: metadata of tokenized_conversations, and its blocking checks,
declared when the dataset's settings set a threshold, failing with the figure and the threshold."""

import dagster as dg

from collate_assets.core import CollateSettings
from collate_assets.defs.checks import SUPERVISION_CHECKS, supervision_check_results

from .helpers import arrow_defs, copy_demo, materialize, register, run_arrow

NAMES = {name for name, _ in SUPERVISION_CHECKS.values()}


def _materializations(result) -> dict:
    return {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}


def test_without_thresholds_no_check_is_declared_and_the_audit_is_metadata(tmp_path):
    defs = arrow_defs(copy_demo(tmp_path / "in"), tmp_path / "out")
    assert not defs.resolve_assets_def("tokenized_conversations").check_keys
    with dg.instance_for_test() as instance:
        register(instance, ["demo_small.jsonl"])
        result = run_arrow(instance, defs, "demo_small.jsonl")
    assert result.success
    meta = _materializations(result)["tokenized_conversations"].metadata
    assert isinstance(meta["trained_share"], dg.FloatMetadataValue) and 0.5 < meta["trained_share"].value < 1
    assert isinstance(meta["no_trained_token"], dg.IntMetadataValue)
    assert meta["outside_assistant_sampled_conversations"].value == 8  # labels=all: sampled
    tokens = {record.data["token"]: record.data["trained"] for record in meta["special_tokens_trained"].value.records}
    assert tokens == meta["supervision"].value["special_tokens"] and tokens
    assert meta["supervision"].value["trained_tokens"] == meta["trained_tokens"].value


def test_a_file_under_min_trained_share_fails_its_blocking_check_and_is_not_packed(tmp_path):
    # labels=all never trains a sequence's first token: a share of 1 cannot be met
    defs = arrow_defs(copy_demo(tmp_path / "in"), tmp_path / "out", min_trained_share=1.0)
    assert {k.name for k in defs.resolve_assets_def("tokenized_conversations").check_keys} == NAMES
    with dg.instance_for_test() as instance:
        register(instance, ["demo_small.jsonl"])
        result = run_arrow(instance, defs, "demo_small.jsonl")
    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    failed = evaluations["supervision_trained_share"]
    assert not failed.passed and "below min_trained_share 100.00%" in failed.description
    assert failed.metadata["threshold"].value == 1.0 and failed.metadata["figure"].value < 1.0
    assert evaluations["supervision_turn_ends"].passed  # max_untrained_turn_ends left at 1: off
    assert set(_materializations(result)) == {"tokenized_conversations"}  # packed_arrow blocked
    # a later run of packed_arrow alone (tokenized_conversations is fresh) does not pack it either
    with dg.instance_for_test() as instance:
        register(instance, ["demo_small.jsonl"])
        again = materialize(defs, instance, "demo_small.jsonl", assets=["packed_arrow"], raise_on_error=False)
    assert not again.success and not (tmp_path / "out" / "demo_small.arrow").exists()
    [failure] = [e for e in again.all_events if e.is_step_failure]
    assert "is not packed: " in failure.step_failure_data.error.message


def test_the_results_of_several_partitions_name_the_failed_ones():
    settings = CollateSettings(min_trained_share=0.5, max_untrained_turn_ends=0.1)
    good = {"tokens": 10, "trained_tokens": 8, "turn_ends_trained": 4}
    bad = {"tokens": 10, "trained_tokens": 2, "turn_ends_trained": 4}
    results = {r.check_name: r for r in supervision_check_results({"a.jsonl": good, "b.jsonl": bad}, settings)}
    share = results["supervision_trained_share"]
    assert not share.passed and share.metadata["failed_partitions"].value == ["b.jsonl"]
    assert share.description == "b.jsonl: 20.00% of tokens written are trained, below min_trained_share 50.00%"
    assert results["supervision_turn_ends"].passed
    [single] = [r for r in supervision_check_results({"a.jsonl": bad}, settings) if not r.passed]
    assert single.metadata["figure"].value == 0.2 and "20.00%" in single.description
