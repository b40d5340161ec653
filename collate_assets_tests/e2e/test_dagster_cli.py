"""Dagster's own command line against the code location, with a persistent DAGSTER_HOME.

The path a Dagster user takes without the UI: validate the definitions, register the input files
as partitions (`collate --register-only`; a dynamic partition must exist before anything runs it),
then `dagster asset materialize --partition K`. Also measures one partition through
`dagster asset materialize` against the engine alone (`collate --no-dagster`) on the shared data.
"""

from __future__ import annotations

import json

import pytest

from .conftest import (
    COLLATE,
    DAGSTER,
    assert_no_traceback,
    check_evaluations,
    copy_demo,
    latest_materialization,
    make_dagster_home,
    make_env,
    metadata_values,
    open_instance,
    record_timing,
    run,
)

MODULE = ["-m", "collate_assets.definitions"]
CHECK_NAMES = {"rows_fit_max_length", "sequence_boundaries", "labels_masked_at_starts", "tokens_conserved", "lines_accounted"}


def materialize(partition: str, select: str = "tokenized_conversations,packed_arrow") -> list[str]:
    return [*DAGSTER, "asset", "materialize", *MODULE, "--select", select, "--partition", partition]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One DAGSTER_HOME, input copy and output folder that the tests of this module build on in order."""
    root = tmp_path_factory.mktemp("dagster_cli")
    home = make_dagster_home(root / "home")
    input_dir = copy_demo(root / "input")
    output_dir = root / "output"
    cwd = root / "cwd"
    cwd.mkdir()
    env = make_env(home, input_dir=input_dir, output_dir=output_dir, max_length=1024)
    return {"root": root, "home": home, "input": input_dir, "output": output_dir, "cwd": cwd, "env": env}


def test_definitions_validate(deployment):
    result = run([*DAGSTER, "definitions", "validate", *MODULE], env=deployment["env"], cwd=deployment["cwd"])
    assert result.returncode == 0, result.describe()
    assert "Validation successful for code location collate_assets.definitions" in result.stdout + result.stderr


def test_unregistered_partition_cannot_be_materialized(tmp_path):
    """Observed with dagster 1.13.27 and 1.13.28: exit 1 and a DagsterInvalidSubsetError traceback from
    Dagster's CLI: "All selected assets must have a PartitionsDefinition containing the passed partition key
    `demo_small.jsonl` or have no PartitionsDefinition." Nothing is written."""
    home = make_dagster_home(tmp_path / "home")
    env = make_env(home, input_dir=copy_demo(tmp_path / "input"), output_dir=tmp_path / "output")
    result = run(materialize("demo_small.jsonl"), env=env, cwd=tmp_path)
    print(result.describe())
    assert result.returncode != 0, result.describe()
    assert "containing the passed partition key `demo_small.jsonl`" in result.stderr, result.describe()
    assert not (tmp_path / "output").exists()
    with open_instance(home) as instance:
        assert instance.get_dynamic_partitions("input_files") == []


def test_register_only_prints_the_keys(deployment):
    result = run([*COLLATE, "-i", deployment["input"], "--register-only"], env=deployment["env"], cwd=deployment["cwd"])
    assert result.returncode == 0, result.describe()
    assert result.stdout.split() == ["demo.jsonl", "demo_small.jsonl"]
    with open_instance(deployment["home"]) as instance:
        assert instance.get_dynamic_partitions("input_files") == ["demo.jsonl", "demo_small.jsonl"]
    # registering again is harmless: same keys, no duplicates
    again = run([*COLLATE, "-i", deployment["input"], "--register-only"], env=deployment["env"], cwd=deployment["cwd"])
    assert again.returncode == 0 and again.stdout.split() == ["demo.jsonl", "demo_small.jsonl"], again.describe()


def test_materialize_one_registered_partition(deployment):
    from datasets import Dataset

    result = run(materialize("demo_small.jsonl"), env=deployment["env"], cwd=deployment["cwd"])
    assert result.returncode == 0, result.describe()
    assert_no_traceback(result.stderr)
    record_timing(f"dagster asset materialize demo_small.jsonl (demo tokenizer, -m 1024): {result.seconds:.1f} s")

    # one layout for `collate` and the graph: <output>/<name>.<ext>, rejects beside, spill in .collate_tokenized
    output = deployment["output"]
    ds = Dataset.from_file(str(output / "demo_small.arrow"))
    assert {"input_ids", "labels", "position_ids", "seq_lengths"} <= set(ds.column_names)
    assert max(len(ids) for ids in ds["input_ids"]) <= 1024
    assert (output / "demo_small.rejects.jsonl").is_file()
    assert (output / ".collate_tokenized" / "demo_small.arrow").is_file()
    assert (output / ".collate_tokenized" / "demo_small.manifest.json").is_file()
    assert not (output / "demo.arrow").exists()  # only the partition asked for
    assert not (output / "demo_small.parquet").exists()  # only the assets selected
    assert not (output / "arrow").exists() and not (output / "_tokenized").exists()  # no old layout

    with open_instance(deployment["home"]) as instance:
        packed = latest_materialization(instance, "packed_arrow", "demo_small.jsonl")
        tokenized = latest_materialization(instance, "tokenized_conversations", "demo_small.jsonl")
        assert packed is not None and tokenized is not None
        assert packed.run_id == tokenized.run_id
        meta = metadata_values(packed)
        assert meta["rows"] == len(ds)
        assert meta["tokens"] == sum(len(ids) for ids in ds["input_ids"])
        assert 0 < meta["fill"] <= 1
        assert meta["max_length"] == 1024  # COLLATE_MAX_LENGTH reached the run
        run_record = instance.get_run_by_id(packed.run_id)
        assert run_record.is_success and run_record.tags["dagster/partition"] == "demo_small.jsonl"
        evaluations = check_evaluations(instance, packed.run_id)
        assert {name for _, name in evaluations} == CHECK_NAMES
        assert all(evaluations.values()), evaluations
        # the checks are evaluated in packed_arrow's own step: no step of their own
        steps = {s.step_key for s in instance.get_run_step_stats(packed.run_id)}
        assert steps == {"tokenized_conversations", "packed_arrow"}, steps
        assert latest_materialization(instance, "packed_arrow", "demo.jsonl") is None


def test_materialize_vs_engine_on_shared_data(tmp_path, fastchat_jsonl_dir, smollm2_tokenizer):
    """Wall time of one partition (500 FastChat conversations, SmolLM2, -m 2048, arrow) three ways.

    Printed, not asserted; the outputs must be the same bytes all three ways.
    """
    home = make_dagster_home(tmp_path / "home")
    output = tmp_path / "output"
    env = make_env(home, input_dir=fastchat_jsonl_dir, output_dir=output, tokenizer=smollm2_tokenizer, max_length=2048)
    source = fastchat_jsonl_dir / "fastchat.jsonl"

    register = run([*COLLATE, "-i", fastchat_jsonl_dir, "--register-only"], env=env, cwd=tmp_path, check=True)
    dagster = run(materialize("fastchat.jsonl"), env=env, cwd=tmp_path, check=True)
    with open_instance(home) as instance:  # before `collate` below records its own run in this home
        run_id = latest_materialization(instance, "packed_arrow", "fastchat.jsonl").run_id
        run_stats = instance.get_run_stats(run_id)
        steps = {s.step_key: s.end_time - s.start_time for s in instance.get_run_step_stats(run_id)}
    steps_text = ", ".join(f"{key} {seconds:.1f} s" for key, seconds in steps.items())

    def collate(out: str, *extra: str) -> list:
        common = ["-t", smollm2_tokenizer, "-m", "2048", "-q", "--json"]
        return [*COLLATE, "-i", source, "-o", tmp_path / out, *common, *extra]

    engine = run(collate("engine", "--no-dagster"), env=env, cwd=tmp_path, check=True)
    in_process = run(collate("in_process"), env=env, cwd=tmp_path, check=True)

    [engine_stats] = json.loads(engine.stdout)
    [in_process_stats] = json.loads(in_process.stdout)
    run_seconds = run_stats.end_time - run_stats.start_time
    record_timing(
        "one partition, fastchat.jsonl (500 conversations, 41.6 k tokens), SmolLM2, -m 2048, arrow "
        "(wall time of the command; in brackets the time the command reports for the file):\n"
        f"  collate --register-only (once)                 {register.seconds:6.1f} s\n"
        f"  dagster asset materialize (in-process run)     {dagster.seconds:6.1f} s  "
        f"[run {run_seconds:.1f} s; steps {steps_text}]\n"
        f"  collate (in-process dagster run)               {in_process.seconds:6.1f} s  "
        f"[{in_process_stats['seconds']:.2f} s]\n"
        f"  collate --no-dagster (engine alone)            {engine.seconds:6.1f} s  [{engine_stats['seconds']:.2f} s]"
    )
    expected = (tmp_path / "engine" / "fastchat.arrow").read_bytes()
    assert (output / "fastchat.arrow").read_bytes() == expected
    assert (tmp_path / "in_process" / "fastchat.arrow").read_bytes() == expected
