"""A partition tokenized by the `collate` command can be packed later from the UI's asset job.

`collate` keeps its spills beside its own (flat) output folder while the code location's defaults put
them under <output>/_tokenized: the packed asset must read the manifest the tokenize run recorded.
"""

import shutil

import dagster as dg

from collate_assets.core import CollateSettings, read_packed
from collate_assets.defs.run import run_collate
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR

from .conftest import make_resources


def test_packed_asset_uses_the_spill_collate_recorded(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copyfile(DEMO_INPUT_DIR / "demo_small.jsonl", inputs / "demo_small.jsonl")
    cli_out = tmp_path / "cli_out"
    run_collate(
        input_path=inputs, output_dir=cli_out, tokenizer=str(DEMO_TOKENIZER_DIR), revision=None,
        chat_template=None, trust_remote_code=False, settings=CollateSettings(max_length=1024), fmt="arrow",
        progress=False,
    )
    ui_out = tmp_path / "ui_out"
    resources = make_resources(inputs, str(ui_out))
    assert not (ui_out / "_tokenized").exists()
    from collate_assets.definitions import defs

    job = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, resources=resources
    ).resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, partition_key="demo_small.jsonl", asset_selection=[dg.AssetKey("packed_arrow")]
        )
    assert result.success
    assert list(read_packed(ui_out / "arrow" / "demo_small.arrow", "arrow")) == list(
        read_packed(cli_out / "demo_small.arrow", "arrow")
    )
