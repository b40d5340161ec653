"""The plan every front-end runs (core/plan.py): work items, their names, and files that cannot run."""

import re
import subprocess
import sys

import pytest

from collate_assets.core import CollateError
from collate_assets.core.api import output_path_for, shard_summary_path
from collate_assets.core.plan import item_key, output_file_name, plan_inputs
from collate_assets.core.read.shards import locate_shard
from collate_assets.sample import DEMO_TOKENIZER_DIR
from collate_assets_tests.helpers import subprocess_env

LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def _folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(LINE)
    (folder / "a.jsonl.gz").write_bytes(b"")  # same outputs as a.jsonl: cannot run
    (folder / "big.jsonl").write_bytes(LINE * 40)  # two shards at the shard size below
    (folder / "big-00001-of-00002.jsonl").write_bytes(LINE)  # named like big's second shard
    (folder / "notes.txt").write_text("not an input")
    (folder / "sub").mkdir()
    return folder


def test_the_plan_names_work_items_failures_and_warnings(tmp_path):
    folder = _folder(tmp_path)
    plan = plan_inputs(folder, shard_bytes=len(LINE) * 25)
    # big-00001-of-00002.jsonl sorts first; big.jsonl's second shard would overwrite its outputs, so the
    # whole of big.jsonl is left out (no shard of it alone)
    assert list(plan.items) == ["a.jsonl", "big-00001-of-00002.jsonl"]
    assert sorted(path.name for path, _ in plan.failures) == ["a.jsonl.gz", "big.jsonl"]
    assert all(reason.startswith("not processed: its outputs would overwrite those of ") for _, reason in plan.failures)
    assert any("sub" in warning for warning in plan.warnings)
    # one layout: the engine's names (from a path and a shard) are the plan's (from a key)
    shard = locate_shard(folder / "big.jsonl", 1, 2)
    assert item_key(folder / "big.jsonl", shard) == "big.jsonl@00001-of-00002"
    assert output_path_for(folder / "big.jsonl", tmp_path, "arrow", shard).name == output_file_name(
        "big.jsonl@00001-of-00002", ".arrow") == "big-00001-of-00002.arrow"
    assert shard_summary_path(folder / "big.jsonl", tmp_path).name == "big.shards.json"
    # a glob is a folder and a pattern
    assert list(plan_inputs(folder / "a.*").items) == ["a.jsonl"]


def test_a_plan_without_input_files_says_why(tmp_path):
    (tmp_path / "only" / "sub").mkdir(parents=True)
    with pytest.raises(CollateError, match=r"no input files .*subfolder"):
        plan_inputs(tmp_path / "only")
    with pytest.raises(CollateError, match="input not found"):
        plan_inputs(tmp_path / "missing")


def test_the_command_with_and_without_dagster_runs_the_same_plan(tmp_path):
    """The same folder through Dagster and through the engine alone: the same outputs, the same failures."""
    folder = _folder(tmp_path)
    seen = {}
    for mode in ("dagster", "engine"):
        out = tmp_path / f"out-{mode}"
        cmd = [sys.executable, "-m", "collate_assets.cli", "-i", str(folder), "-o", str(out), "-t", str(DEMO_TOKENIZER_DIR),
               "-m", "256", "--shard-mb", str(len(LINE) * 25 / 1e6)]
        env = subprocess_env(DAGSTER_HOME=str(tmp_path / "home"))
        result = subprocess.run(cmd + (["--no-dagster"] if mode == "engine" else []), env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr  # two files cannot run
        failed = sorted(m[1] for m in re.finditer(r"error: \S*?([^/\s]+): not processed: its outputs would overwrite", result.stderr))
        seen[mode] = (sorted(p.name for p in out.iterdir() if not p.name.startswith(".")), failed)
    assert seen["dagster"] == seen["engine"]
    names, failed = seen["engine"]
    assert {"a.arrow", "big-00001-of-00002.arrow"} <= set(names) and "big-00000-of-00002.arrow" not in names
    assert failed == ["a.jsonl.gz", "big.jsonl"]
