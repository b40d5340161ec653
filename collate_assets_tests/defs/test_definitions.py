"""The code location loads, every definition says what it is, and every setting is defined once."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from collate_assets import cli
from collate_assets.core import CollateSettings
from collate_assets.definitions import build_definitions, defs, default_settings
from collate_assets.defs.resources import CollateConfig
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR

REPO = Path(__file__).resolve().parents[2]
PACKED = ["packed_arrow", "packed_parquet", "packed_msgpack", "packed_jsonl"]
CHECKS = {"rows_fit_max_length", "sequence_boundaries", "labels_masked_at_starts", "tokens_conserved", "lines_accounted"}


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


def test_every_packed_asset_has_its_blocking_checks_and_no_io_manager():
    graph = defs.resolve_asset_graph()
    for name in PACKED:
        assets_def = defs.resolve_assets_def(name)
        assert {k.name for k in assets_def.check_keys} == CHECKS  # checks of the asset itself: same step
        assert all(graph.get_check_spec(k).blocking for k in assets_def.check_keys)
        assert assets_def.get_io_manager_key_for_asset_key(dg.AssetKey(name)) == "io_manager"
    assert not any(key.endswith("io_manager") and key != "io_manager" for key in defs.resources or {})


def test_sensors_job_and_executor():
    sensor = defs.resolve_sensor_def("input_files_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30
    automation = defs.resolve_sensor_def("collate_automation")
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING
    assert not defs.schedules  # the nightly safety net is an automation condition
    job = defs.resolve_job_def("collate_job")
    assert job.partitions_def is not None and job.partitions_def.name == "input_files"
    assert defs.executor is dg.in_process_executor


def test_defaults_point_at_the_demo_sample(monkeypatch):
    for name in [n for n in list(__import__("os").environ) if n.startswith("COLLATE_")]:
        monkeypatch.delenv(name)
    settings = default_settings()
    assert settings.input_path() == DEMO_INPUT_DIR
    assert settings.tokenizer_name() == str(DEMO_TOKENIZER_DIR)
    assert Path(settings.output_dir).is_absolute() and settings.output_dir.endswith("collate_output")
    assert settings.max_length == 8192 and settings.formats == ("arrow",)


def test_environment_variables_become_the_default_dataset(monkeypatch):
    monkeypatch.setenv("COLLATE_MAX_LENGTH", "4096")
    monkeypatch.setenv("COLLATE_LABELS", "assistant")
    monkeypatch.setenv("COLLATE_OUTPUT_DIR", "memory://bucket/out")
    monkeypatch.setenv("COLLATE_TRUST_REMOTE_CODE", "true")
    monkeypatch.setenv("COLLATE_FORMATS", "parquet, arrow")
    loaded = build_definitions()
    with dg.build_resources({"collate": loaded.resources["collate"]}) as built:
        settings = built.collate.settings()
    assert (settings.max_length, settings.labels, settings.output_dir) == (4096, "assistant", "memory://bucket/out")
    assert settings.trust_remote_code is True and settings.formats == ("parquet", "arrow")
    graph = loaded.resolve_asset_graph()
    automated = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    assert automated == {"tokenized_conversations", "packed_parquet", "packed_arrow"}


def test_bad_settings_name_the_variable_and_the_allowed_values(monkeypatch):
    monkeypatch.setenv("COLLATE_OVERLONG", "wrap")
    with pytest.raises(ValueError, match="COLLATE_OVERLONG.*overlong must be one of truncate"):
        CollateSettings.from_env()
    monkeypatch.setenv("COLLATE_OVERLONG", "drop")
    monkeypatch.setenv("COLLATE_STRICT", "maybe")
    with pytest.raises(ValueError, match="COLLATE_STRICT"):
        CollateSettings.from_env()
    import pydantic

    from collate_assets.core import CollateError

    # a choice is a Literal in the resource's config (an enum in the launchpad): refused at once
    with pytest.raises(pydantic.ValidationError, match="labels\n.*Input should be 'all' or 'assistant'"):
        CollateConfig(labels="some")
    with pytest.raises(CollateError, match="max_length must be an integer >= 2"):
        CollateConfig(max_length=1).settings()


def test_every_setting_is_defined_once():
    """The resource, the environment and the command all take their fields from CollateSettings."""
    fields = {f.name: f for f in dataclasses.fields(CollateSettings)}
    resource_fields = CollateConfig.model_fields
    assert set(resource_fields) == set(fields)
    for name, field in fields.items():
        default = list(field.default) if isinstance(field.default, tuple) else field.default
        assert resource_fields[name].default == default, name
        assert field.metadata["help"].split(" (")[0] in resource_fields[name].description, name
    # Every field is a flag of the command but the spill folder and the sensors' interval.
    assert set(cli.FLAG_FIELDS.values()) == set(fields) - {"spill_dir", "sensor_seconds", "automation"}
    args = cli.build_parser().parse_args(["-m", "512", "--labels", "assistant", "-f", "arrow,jsonl"])
    settings = cli.settings_from_args(args)
    assert (settings.max_length, settings.labels, settings.formats) == (512, "assistant", ("arrow", "jsonl"))


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


def test_the_reference_names_every_option_and_variable():
    """docs/cli.md names every option of the command (they are generated from the settings), and the
    configuration table of docs/dagster.md every COLLATE_* variable of a setting."""
    from collate_assets.core.settings import env_name

    cli_doc = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    options = {flag for action in cli.build_parser()._actions for flag in action.option_strings} - {"-h", "--help"}
    assert {flag for flag in options if f"`{flag}" not in cli_doc and f", {flag}" not in cli_doc} == set()
    dagster_doc = (REPO / "docs" / "dagster.md").read_text(encoding="utf-8")
    from collate_assets.core.settings import LocationSettings

    every = [*dataclasses.fields(CollateSettings), *dataclasses.fields(LocationSettings)]
    missing = {env_name(f.name) for f in every} - set(re.findall(r"`(COLLATE_[A-Z_]+)`", dagster_doc))
    assert missing == set()


def test_the_location_settings_are_read_like_a_datasets():
    """COLLATE_DATASETS_DIR, COLLATE_EXECUTOR, COLLATE_CELERY_* and COLLATE_PROGRESS_SECONDS: one model
    (LocationSettings), parsed and validated as CollateSettings is, errors naming the variable."""
    from collate_assets.core.settings import LocationSettings

    default = LocationSettings.from_env({})
    assert (default.executor, default.broker_backend(), default.progress_seconds) == (
        "in_process", ("redis://localhost:6379/0",) * 2, 5.0)
    read = LocationSettings.from_env({"COLLATE_EXECUTOR": "Celery", "COLLATE_CELERY_BROKER": "redis://h:1/0",
                                      "COLLATE_PROGRESS_SECONDS": "0", "COLLATE_DATASETS_DIR": "/d"})
    assert (read.executor, read.broker_backend(), read.progress_seconds, read.datasets_dir) == (
        "celery", ("redis://h:1/0", "redis://h:1/0"), 0.0, "/d")
    for env, named in [({"COLLATE_EXECUTOR": "threads"}, "COLLATE_EXECUTOR: executor must be one of"),
                       ({"COLLATE_CELERY_VISIBILITY_TIMEOUT": "0"}, "COLLATE_CELERY_VISIBILITY_TIMEOUT: "),
                       ({"COLLATE_PROGRESS_SECONDS": "soon"}, "COLLATE_PROGRESS_SECONDS='soon': not a number")]:
        with pytest.raises(ValueError, match=re.escape(named)):
            LocationSettings.from_env(env)
