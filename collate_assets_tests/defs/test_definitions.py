"""The code location loads, and every definition says what it is."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from collate_assets.definitions import defs
from collate_assets.defs import resources as resources_module
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR

REPO = Path(__file__).resolve().parents[2]
PACKED = ["packed_arrow", "packed_parquet", "packed_msgpack", "packed_jsonl"]


def test_definitions_are_loadable():
    dg.Definitions.validate_loadable(defs)


def test_graph_is_raw_tokenized_then_four_packed_formats():
    graph = defs.resolve_asset_graph()
    tokenized = dg.AssetKey("tokenized_conversations")
    assert graph.get(tokenized).parent_keys == {dg.AssetKey("raw_conversations")}
    for name in PACKED:
        assert graph.get(dg.AssetKey(name)).parent_keys == {tokenized}


def test_every_asset_is_documented_grouped_kinded_and_versioned():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, key
        assert node.group_name == "collate", key
        assert node.kinds, key
        assert node.partitions_def is not None and node.partitions_def.name == "input_files", key
        if node.is_materializable:
            assert node.code_version, key
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == {
        "raw_conversations", "tokenized_conversations", *PACKED
    }


def test_every_packed_format_has_its_io_manager_and_blocking_checks():
    graph = defs.resolve_asset_graph()
    check_keys = graph.asset_check_keys
    for name in PACKED:
        fmt = name.removeprefix("packed_")
        assert defs.resolve_assets_def(name).get_io_manager_key_for_asset_key(dg.AssetKey(name)) == f"{fmt}_io_manager"
        names = {k.name for k in check_keys if k.asset_key == dg.AssetKey(name)}
        assert names == {"rows_fit_max_length", "sequence_boundaries", "labels_masked_at_starts", "tokens_conserved"}
        for key in check_keys:
            if key.asset_key == dg.AssetKey(name):
                assert graph.get_check_spec(key).blocking


def test_sensor_schedule_and_job():
    sensor = defs.resolve_sensor_def("input_files_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30
    schedule = defs.resolve_schedule_def("nightly_collate")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    job = defs.resolve_job_def("collate_job")
    assert job.partitions_def is not None and job.partitions_def.name == "input_files"
    assert sensor.job_name == schedule.job_name == "collate_job"


def test_defaults_point_at_the_demo_sample(monkeypatch):
    for name in [n for n in list(__import__("os").environ) if n.startswith("COLLATE_")]:
        monkeypatch.delenv(name)
    res = resources_module.resources_from_env()
    assert res["paths"].input_dir == str(DEMO_INPUT_DIR)
    assert Path(res["paths"].output_dir).is_absolute() and res["paths"].output_dir.endswith("collate_output")
    assert res["tokenizer"].name_or_path == str(DEMO_TOKENIZER_DIR)
    assert res["packing"].to_settings().max_length == 8192


def test_environment_variables_become_env_vars_resolved_at_run_time(monkeypatch):
    monkeypatch.setenv("COLLATE_MAX_LENGTH", "4096")
    monkeypatch.setenv("COLLATE_LABELS", "assistant")
    monkeypatch.setenv("COLLATE_OUTPUT_DIR", "memory://bucket/out")
    monkeypatch.setenv("COLLATE_TRUST_REMOTE_CODE", "true")
    res = resources_module.resources_from_env()
    with dg.build_resources({"packing": res["packing"], "paths": res["paths"]}) as built:
        assert built.packing.to_settings().max_length == 4096
        assert built.packing.to_settings().labels == "assistant"
        assert built.paths.output_dir == "memory://bucket/out"
    assert res["tokenizer"].trust_remote_code is True


def test_bad_setting_names_the_allowed_values():
    from collate_assets.core import CollateError

    with pytest.raises(CollateError, match="overlong must be one of"):
        resources_module.PackingSettings(overlong="wrap").to_settings()


def test_dagster_cli_validates_the_module_and_workspace():
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "collate_assets.definitions"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Validation successful" in out.stderr + out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
