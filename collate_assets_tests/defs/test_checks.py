"""The packed-row checks: each catches the fault it names, and a failing one fails the run."""

import json
import shutil

import dagster as dg

from collate_assets.defs.assets import packed_jsonl, tokenized_conversations
from collate_assets.defs.checks import PACKED_CHECKS, verify_packed_rows
from collate_assets.defs.partitions import INPUT_FILES

from .conftest import make_resources

GOOD = {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, 7, -100, 9], "position_ids": [0, 1, 2, 0, 1], "seq_lengths": [3, 2]}


def with_(**changes):
    return {**GOOD, **changes}


def test_a_good_row_passes():
    report = verify_packed_rows([GOOD, GOOD], max_length=5)
    assert (report.rows, report.sequences, report.tokens, report.max_row_tokens) == (2, 4, 10, 5)
    assert report.too_long == report.bad_boundaries == report.unmasked_starts == 0


def test_each_fault_is_caught_where_it_is():
    assert verify_packed_rows([GOOD, GOOD], max_length=4).first_too_long == 0
    bad_positions = with_(position_ids=[0, 1, 2, 3, 4])
    assert verify_packed_rows([GOOD, bad_positions], 8).first_bad_boundaries == 1
    bad_lengths = with_(seq_lengths=[3, 3])
    assert verify_packed_rows([bad_lengths], 8).bad_boundaries == 1
    unmasked = with_(labels=[-100, 6, 7, 8, 9])
    report = verify_packed_rows([GOOD, GOOD, unmasked], 8)
    assert (report.unmasked_starts, report.first_unmasked_start, report.bad_boundaries) == (1, 2, 0)


def test_a_corrupt_output_fails_its_blocking_check(collated, tmp_path):
    """Train across a boundary in one row of the jsonl output: labels_masked_at_starts fails the run."""
    out = tmp_path / "out"
    shutil.copytree(collated.output_dir / "jsonl", out / "jsonl")
    path = out / "jsonl" / "demo_small.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    index = next(i for i, row in enumerate(rows) if len(row["seq_lengths"]) > 1)
    second_start = rows[index]["seq_lengths"][0]
    rows[index]["labels"][second_start] = rows[index]["input_ids"][second_start]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    resources = make_resources(collated.input_dir, str(out), spill_dir=str(collated.output_dir / "_tokenized"))
    checks = next(c for c in PACKED_CHECKS if dg.AssetKey("packed_jsonl") in {k.asset_key for k in c.check_keys})
    # Run only the checks, against the outputs as they are on disk.
    defs = dg.Definitions(
        assets=[tokenized_conversations, packed_jsonl],
        asset_checks=[checks],
        jobs=[dg.define_asset_job("check_jsonl", selection=dg.AssetSelection.checks_for_assets(packed_jsonl))],
        resources=resources,
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(INPUT_FILES.name, ["demo_small.jsonl"])
        # execute_in_process(partition_key=...) infers the partitions from the selected *assets*, and a
        # checks-only selection has none; the partition tag is what a launched run carries anyway.
        result = defs.resolve_job_def("check_jsonl").execute_in_process(
            instance=instance, tags={"dagster/partition": "demo_small.jsonl"}, raise_on_error=False
        )
    assert not result.success
    outcome = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert outcome == {
        "rows_fit_max_length": True,
        "sequence_boundaries": True,
        "labels_masked_at_starts": False,
        "tokens_conserved": True,
    }
    failed = next(e for e in result.get_asset_check_evaluations() if not e.passed)
    assert failed.metadata["first_bad_row"].value == index
