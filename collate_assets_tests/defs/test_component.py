"""The dataset Component: defs.yaml files under COLLATE_DATASETS_DIR add datasets to the code location.

The two example datasets (examples/datasets: SmolLM2 and Qwen3 tokenizers from ../shared) load next
to the default dataset, each with its own key prefix, group, partitions and resource; a partition of
each is materialized end to end; a bad value fails the load naming the field; `dagster definitions
validate` passes; `dg scaffold defs CollateDataset` writes a defs.yaml that loads.
"""

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
from datasets import Dataset as HFDataset

from collate_assets.defs.component import CollateDataset, defs_yaml_template, load_datasets
from collate_assets_tests.helpers import (
    REPO_ROOT,
    SHARED_DATA_FILES,
    SHARED_DIR,
    read_json_array,
    require,
    run,
    subprocess_env,
)

EXAMPLES = REPO_ROOT / "examples" / "datasets"
DATASETS = {"smollm2_chat": "SmolLM2-135M-Instruct", "qwen3_chat": "Qwen3"}
INPUT = "chats.json"  # the partition key of the one input file
RECORDS = 24  # conversations of the FastChat sample in that file: small and fast
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
CHECKS = {"rows_fit_max_length", "sequence_boundaries", "labels_masked_at_starts", "tokens_conserved", "lines_accounted"}


@pytest.fixture
def example(tmp_path, monkeypatch) -> Path:
    """The example datasets on a small copy of the FastChat sample; the working directory is tmp_path.

    The defs.yaml files set no output_dir, so outputs go to tmp_path/collate_output/<name>; no
    COLLATE_* variable of the outer environment reaches the default dataset.
    """
    for name in DATASETS.values():
        require(SHARED_DIR / "tokenizers" / name, f"shared tokenizer {name}")
    records = read_json_array(require(SHARED_DIR / SHARED_DATA_FILES["fastchat"], "FastChat sample"))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / INPUT).write_text(json.dumps(list(records[:RECORDS])), encoding="utf-8")
    for key in list(os.environ):
        if key.startswith("COLLATE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("COLLATE_EXAMPLE_INPUT", str(inputs))
    monkeypatch.setenv("COLLATE_DATASETS_DIR", str(EXAMPLES))
    monkeypatch.setenv("COLLATE_OUTPUT_DIR", str(tmp_path / "default_output"))
    monkeypatch.chdir(tmp_path)
    return inputs


def write_dataset(folder: Path, attributes: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "defs.yaml").write_text(f"type: collate_assets.defs.component.CollateDataset\nattributes:\n{attributes}",
                                      encoding="utf-8")
    return folder


def test_two_datasets_and_the_default_in_one_code_location(example, tmp_path):
    from collate_assets.definitions import build_definitions

    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    stages = ["raw_conversations", "tokenized_conversations", "packed_arrow", "packed_parquet", "packed_msgpack", "packed_jsonl"]
    assert keys == {*stages, *(f"{name}/{stage}" for name in DATASETS for stage in stages)}

    assert {graph.get(dg.AssetKey(stages[1])).group_name} == {"collate"}
    for name, tokenizer in DATASETS.items():
        for stage in stages:
            node = graph.get(dg.AssetKey([name, stage]))
            assert node.group_name == name
            assert node.partitions_def.name == f"{name}_input_files"
        settings = defs.resources[f"collate_{name}"].settings()
        assert settings.tokenizer == str((SHARED_DIR / "tokenizers" / tokenizer).resolve())
        assert settings.input_dir == str(example if name == "smollm2_chat" else example / "*.json*")  # COLLATE_EXAMPLE_INPUT
        assert settings.output_dir == str(tmp_path / "collate_output" / name)
        assert (settings.max_length, settings.labels) == (2048, "assistant")
        assert defs.resolve_job_def(f"{name}__collate_job")
        assert defs.resolve_sensor_def(f"{name}__input_files_sensor")
        assert defs.resolve_sensor_def(f"{name}__collate_automation")
    assert defs.resources["collate"].settings().output_dir == str(tmp_path / "default_output")
    assert defs.resources["collate_smollm2_chat"].settings().formats == ("arrow", "parquet")
    assert defs.resources["collate_qwen3_chat"].settings().packing == "greedy"


def test_one_partition_of_each_dataset_end_to_end(example, tmp_path):
    from tokenizers import Tokenizer

    from collate_assets.definitions import build_definitions

    defs = build_definitions()
    rows = {}
    with dg.instance_for_test() as instance:
        for name in DATASETS:
            instance.add_dynamic_partitions(f"{name}_input_files", [INPUT])
            selection = {dg.AssetKey([name, "tokenized_conversations"]), dg.AssetKey([name, "packed_arrow"])}
            job = defs.resolve_implicit_job_def_def_for_assets(list(selection)).get_subset(asset_selection=selection)
            result = job.execute_in_process(instance=instance, partition_key=INPUT, run_config=QUIET)
            assert result.success
            materialized = {event.asset_key for event in result.get_asset_materialization_events()}
            assert materialized == selection
            checks = result.get_asset_check_evaluations()
            assert {c.check_name for c in checks} == CHECKS and all(c.passed for c in checks), checks
            output = tmp_path / "collate_output" / name / "chats.arrow"
            rows[name] = HFDataset.from_file(str(output))
            assert len(rows[name]) > 0
    assert not (tmp_path / "default_output").exists()  # the default dataset did nothing

    ids = {name: [token for row in data["input_ids"] for token in row] for name, data in rows.items()}
    assert ids["smollm2_chat"] != ids["qwen3_chat"]
    tokenizers = {name: Tokenizer.from_file(str(SHARED_DIR / "tokenizers" / tok / "tokenizer.json")) for name, tok in DATASETS.items()}
    first_reply = read_json_array(SHARED_DIR / SHARED_DATA_FILES["fastchat"])[0]["conversations"][1]["value"]
    for name, other in (("smollm2_chat", "qwen3_chat"), ("qwen3_chat", "smollm2_chat")):
        texts = [tokenizers[name].decode(row) for row in rows[name]["input_ids"]]
        assert any(first_reply.strip() in text for text in texts), name  # its own tokenizer reads it back
        misread = [tokenizers[other].decode(row) for row in rows[name]["input_ids"]]
        assert not any(first_reply.strip() in text for text in misread), name  # the other does not


@pytest.mark.parametrize(
    ("attributes", "named"),
    [
        ("  labels: sometimes\n", "labels: Input should be 'all' or 'assistant'"),  # a Literal in the YAML schema
        ("  max_length: 1\n", "max_length must be an integer >= 2"),
        ("  formats: [arrow, xml]\n", "formats must be among"),
        ("  strict: maybe\n", "strict: Input should be a valid boolean"),
        ("  max_lenght: 2048\n", "max_lenght"),
        ("  name: my-chats\n", "name must be letters, digits and _"),
    ],
)
def test_a_bad_value_fails_the_load_naming_the_field(tmp_path, monkeypatch, attributes, named):
    write_dataset(tmp_path / "datasets" / "bad", attributes)
    with pytest.raises(dg.DagsterInvalidDefinitionError) as raised:
        load_datasets(tmp_path / "datasets")
    assert named in str(raised.value)
    assert "bad" in str(raised.value)  # and where: the component tree with the failing defs.yaml

    from collate_assets.definitions import build_definitions

    monkeypatch.setenv("COLLATE_DATASETS_DIR", str(tmp_path / "datasets"))
    with pytest.raises(dg.DagsterInvalidDefinitionError, match=named.split(":")[0]):
        build_definitions()


def test_paths_relative_to_the_defs_yaml_and_names_from_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "datasets"
    write_dataset(root / "team-a" / "chats.v2", "  input_dir: ../in/*.jsonl\n  output_dir: out\n  formats: arrow,jsonl\n")
    write_dataset(root / "b", "  name: second\n  spill_dir: ~/spill\n  output_dir: memory://second\n")
    defs = load_datasets(root)
    first = defs.resources["collate_chats_v2"].settings()  # `.` is not allowed in a group name: `_`
    assert first.input_dir == str(root / "team-a" / "in" / "*.jsonl")
    assert first.output_dir == str(root / "team-a" / "chats.v2" / "out")
    assert first.formats == ("arrow", "jsonl")
    second = defs.resources["collate_second"].settings()
    assert second.input_dir is None and second.output_dir == "memory://second"
    assert second.spill_dir == str(Path("~/spill").expanduser())
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey(["chats_v2", "packed_arrow"])).group_name == "chats_v2"
    assert graph.get(dg.AssetKey(["second", "packed_arrow"])).group_name == "second"


def test_two_datasets_may_not_share_an_output_folder(tmp_path):
    root = tmp_path / "datasets"
    write_dataset(root / "a", f"  output_dir: {tmp_path / 'out'}\n")
    write_dataset(root / "b", "  output_dir: ../../out\n")
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="write to the same folder"):
        load_datasets(root)


def test_the_component_from_python_and_its_template():
    component = CollateDataset(name="py", max_length=2048, formats="arrow,parquet")
    defs = dg.build_defs_for_component(component)
    assert defs.resources["collate_py"].settings().formats == ("arrow", "parquet")
    template = defs_yaml_template(values={"input_dir": "/data/chats"})
    assert "type: collate_assets.defs.component.CollateDataset" in template
    assert "\n  input_dir: /data/chats\n" in template
    for field in CollateDataset.model_fields:
        assert f"  # {field}: " in template or f"  {field}: " in template


def test_dagster_definitions_validate_cli(example, tmp_path):
    result = run(["dagster", "definitions", "validate", "-m", "collate_assets.definitions"],
                 env=subprocess_env(**{k: v for k, v in os.environ.items() if k.startswith("COLLATE_")}), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("dg") is None, reason="dagster-dg-cli is not installed (pip install -e '.[test]')")
def test_dg_scaffold_writes_a_dataset_that_loads(tmp_path):
    tokenizer = require(SHARED_DIR / "tokenizers" / "SmolLM2-135M-Instruct", "shared tokenizer SmolLM2-135M-Instruct")
    (tmp_path / "dg.toml").write_text(
        'directory_type = "project"\n\n[project]\nroot_module = "datasets"\ndefs_module = "datasets"\n\n'
        "[cli.telemetry]\nenabled = false\n", encoding="utf-8")
    (tmp_path / "datasets").mkdir()
    env = subprocess_env()
    env.pop("PYTHONPATH", None)  # the installed package, as a user has it
    result = run(["dg", "scaffold", "defs", "CollateDataset", "smol_chats", "--input-dir", "../../inputs",
                  "--tokenizer", str(tokenizer)], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    written = (tmp_path / "datasets" / "smol_chats" / "defs.yaml").read_text(encoding="utf-8")
    assert written.startswith("# A collate dataset") and "\n  input_dir: ../../inputs\n" in written
    assert "\n  # max_length: 8192\n" in written

    checked = run(["dg", "check", "yaml"], env=env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    defs = load_datasets(tmp_path / "datasets")
    settings = defs.resources["collate_smol_chats"].settings()
    assert settings.tokenizer == str(tokenizer) and settings.input_dir == str(tmp_path / "inputs")
    assert defs.resolve_asset_graph().get(dg.AssetKey(["smol_chats", "packed_arrow"])).group_name == "smol_chats"


def test_the_command_registers_and_builds_a_defs_yaml_dataset(example, tmp_path):
    """`collate --dataset NAME --register-only` registers a defs.yaml dataset's own files (into its own
    partitions, never the default dataset's), and `collate --dataset NAME` builds them with its
    settings, in one command, under its asset keys; a name that is not a dataset is an error."""
    from .. import helpers

    home = helpers.seed_dagster_home(tmp_path / "home")
    env = helpers.subprocess_env(**{k: v for k, v in os.environ.items() if k.startswith("COLLATE_")}, DAGSTER_HOME=str(home))
    registered = helpers.run(helpers.collate_command("--dataset", "smollm2_chat", "--register-only"), env=env, cwd=tmp_path)
    assert registered.returncode == 0 and registered.stdout.split() == [INPUT], registered.stderr
    refused = helpers.run(helpers.collate_command("--dataset", "smollm2_chat", "-m", "512"), env=env, cwd=tmp_path)
    assert refused.returncode == 2 and "leave out --max-length" in refused.stderr, refused.stderr
    unknown = helpers.run(helpers.collate_command("--dataset", "nope", "-q"), env=env, cwd=tmp_path)
    assert unknown.returncode == 1 and "no dataset 'nope'" in unknown.stderr and "smollm2_chat" in unknown.stderr, unknown.stderr
    built = helpers.run(helpers.collate_command("--dataset", "qwen3_chat", "--json"), env=env, cwd=tmp_path, timeout=300)
    assert built.returncode == 0, built.stderr
    [stats] = json.loads(built.stdout)
    assert stats["pack"]["output"] == str(tmp_path / "collate_output" / "qwen3_chat" / "chats.arrow")
    assert stats["pack"]["max_length"] == 2048 and stats["tokenize"]["conversations"] > 0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_dynamic_partitions("smollm2_chat_input_files") == [INPUT]
        assert instance.get_dynamic_partitions("qwen3_chat_input_files") == [INPUT]
        assert instance.get_dynamic_partitions("input_files") == []
        assert instance.get_materialized_partitions(dg.AssetKey(["qwen3_chat", "packed_arrow"])) == {INPUT}
