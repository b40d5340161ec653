"""The packed-row checks: each catches the fault it names (a failing one failing its step: test_pipeline)."""

from collate_assets.defs.checks import verify_packed_rows

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


def test_results_of_several_partitions_combine_and_name_the_failed_ones():
    from collate_assets.defs.checks import CHECK_DESCRIPTIONS, combined_results

    good = [(name, True, {}) for name in CHECK_DESCRIPTIONS]
    bad = [(name, name != "tokens_conserved", {}) for name in CHECK_DESCRIPTIONS]
    [single] = [r for r in combined_results({"a.jsonl": bad}) if not r.passed]
    assert single.check_name == "tokens_conserved"
    results = {r.check_name: r for r in combined_results({"a.jsonl": good, "b.jsonl": bad, "c.jsonl": good})}
    assert not results["tokens_conserved"].passed and "b.jsonl" in results["tokens_conserved"].description
    assert results["tokens_conserved"].metadata["failed_partitions"].value == ["b.jsonl"]
    assert all(results[name].passed for name in CHECK_DESCRIPTIONS if name != "tokens_conserved")
