"""The `collate` command as a user runs it: a real subprocess, a temporary DAGSTER_HOME, real files.

Checks what the command promises: outputs that `datasets` loads, a summary on stdout, the run
recorded in the Dagster instance, `--no-dagster` writing the same bytes, and for every kind of
mistake an exit code (2 bad argument, 1 bad input/tokenizer/data) with one `collate: error:` line
that names the culprit and no Python traceback.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from collate_assets.defs.run import cli_dataset_name
from collate_assets.sample import DEMO_TOKENIZER_DIR

from .conftest import (
    COLLATE,
    assert_no_traceback,
    check_evaluations,
    latest_materialization,
    make_dagster_home,
    make_env,
    metadata_values,
    open_instance,
    run,
)

PACKED_COLUMNS = {"input_ids", "labels", "position_ids", "seq_lengths"}
CHECK_NAMES = {"rows_fit_max_length", "sequence_boundaries", "labels_masked_at_starts", "tokens_conserved", "lines_accounted"}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("collate: error:")]


def assert_packed_dataset(ds, max_length: int) -> None:
    """A padding-free packed dataset: the four columns, no attention_mask, rows within max_length."""
    assert PACKED_COLUMNS <= set(ds.column_names), ds.column_names
    assert "attention_mask" not in ds.column_names
    for row in ds:
        assert 0 < len(row["input_ids"]) <= max_length
        assert sum(row["seq_lengths"]) == len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"])


# -- the default run ----------------------------------------------------------------------------------


def test_no_arguments_packs_the_demo_and_records_it(tmp_path, dagster_home):
    from datasets import Dataset

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run(COLLATE, env=make_env(dagster_home), cwd=cwd)
    assert result.returncode == 0, result.describe()
    assert_no_traceback(result.stderr)
    assert "Warning" not in result.stderr, result.stderr  # Dagster's beta and preview warnings are ours to keep

    out = cwd / "collate_output"
    summaries = {}
    for stem in ("demo", "demo_small"):
        ds = Dataset.from_file(str(out / f"{stem}.arrow"))
        assert_packed_dataset(ds, 8192)
        assert (out / f"{stem}.rejects.jsonl").exists()
        # the summary names the input and output and gives the rows it wrote
        block = re.search(rf"{re.escape(stem)}\.jsonl -> (\S+)\n(.*\n.*)", result.stdout)
        assert block, result.stdout
        assert Path(block.group(1)) == (out / f"{stem}.arrow").resolve()
        rows = int(re.search(r"rows (\d+) \(lower bound \d+\), fill [\d.]+%", block.group(2)).group(1))
        assert rows == len(ds)
        summaries[stem] = rows

    # recorded as a dataset of its own, named after its output folder (never the code location's default)
    name = cli_dataset_name(out)
    assert f"collate: recorded as dataset {name} in DAGSTER_HOME={dagster_home}" in result.stderr, result.stderr
    with open_instance(dagster_home) as instance:
        assert instance.get_dynamic_partitions(f"{name}_input_files") == ["demo.jsonl", "demo_small.jsonl"]
        assert instance.get_dynamic_partitions("input_files") == []
        for stem, rows in summaries.items():
            record = latest_materialization(instance, [name, "packed_arrow"], f"{stem}.jsonl")
            assert record is not None, stem
            assert metadata_values(record)["rows"] == rows


# -- a shared data set, through Dagster and without it ------------------------------------------------


@pytest.fixture(scope="module")
def fastchat_runs(tmp_path_factory, fastchat_jsonl_dir, smollm2_tokenizer):
    """The shared FastChat set packed to parquet with SmolLM2, once through Dagster and once without."""
    root = tmp_path_factory.mktemp("fastchat_cli")
    home = make_dagster_home(root / "home")
    env = make_env(home)
    common = ["-i", fastchat_jsonl_dir, "-t", smollm2_tokenizer, "-f", "parquet", "-m", "2048", "-q", "--json"]
    dagster = run([*COLLATE, *common, "-o", root / "out"], env=env, cwd=root)
    engine = run([*COLLATE, *common, "-o", root / "out_engine", "--no-dagster"], env=env, cwd=root)
    return {"root": root, "home": home, "dagster": dagster, "engine": engine}


def test_shared_fastchat_to_parquet(fastchat_runs):
    from datasets import Dataset

    result = fastchat_runs["dagster"]
    assert result.returncode == 0, result.describe()
    assert_no_traceback(result.stderr)
    [stats] = json.loads(result.stdout)
    out = fastchat_runs["root"] / "out"
    assert Path(stats["pack"]["output"]) == (out / "fastchat.parquet").resolve()
    assert stats["tokenize"]["conversations"] == 500 and stats["tokenize"]["rejected"] == 0
    assert stats["pack"]["format"] == "parquet" and stats["pack"]["max_length"] == 2048
    assert stats["pack"]["rows"] >= stats["pack"]["lower_bound"] > 0

    ds = Dataset.from_parquet(str(out / "fastchat.parquet"))
    assert len(ds) == stats["pack"]["rows"]
    assert_packed_dataset(ds, 2048)
    assert sum(len(ids) for ids in ds["input_ids"]) == stats["pack"]["tokens"]
    assert (out / "fastchat.rejects.jsonl").read_text() == ""


def test_shared_fastchat_run_is_recorded_in_the_instance(fastchat_runs):
    [stats] = json.loads(fastchat_runs["dagster"].stdout)
    name = cli_dataset_name(fastchat_runs["root"] / "out")
    with open_instance(fastchat_runs["home"]) as instance:
        assert instance.get_dynamic_partitions(f"{name}_input_files") == ["fastchat.jsonl"]
        record = latest_materialization(instance, [name, "packed_parquet"], "fastchat.jsonl")
        assert record is not None
        meta = metadata_values(record)
        assert meta["rows"] == stats["pack"]["rows"]
        assert meta["fill"] == pytest.approx(stats["pack"]["fill"])
        assert meta["tokens"] == stats["pack"]["tokens"]
        tokenized = latest_materialization(instance, [name, "tokenized_conversations"], "fastchat.jsonl")
        assert tokenized is not None and tokenized.run_id == record.run_id
        run_record = instance.get_run_by_id(record.run_id)
        assert run_record.is_success
        assert run_record.tags["dagster/partition"] == "fastchat.jsonl"
        evaluations = check_evaluations(instance, record.run_id)
        assert {name for _, name in evaluations} == CHECK_NAMES
        assert all(evaluations.values()), evaluations


def test_no_dagster_writes_the_same_bytes(fastchat_runs):
    engine = fastchat_runs["engine"]
    assert engine.returncode == 0, engine.describe()
    [dagster_stats] = json.loads(fastchat_runs["dagster"].stdout)
    [engine_stats] = json.loads(engine.stdout)
    root = fastchat_runs["root"]
    for name in ("fastchat.parquet", "fastchat.rejects.jsonl"):
        assert (root / "out" / name).read_bytes() == (root / "out_engine" / name).read_bytes(), name
    for stats in (dagster_stats, engine_stats):
        stats.pop("seconds")
        stats["pack"].pop("output")
        stats["tokenize"].pop("file")
        for step in ("tokenize", "pack"):
            stats[step].pop("stage_seconds", None)  # timings: measured, never the same twice
    assert dagster_stats == engine_stats


def test_no_dagster_writes_the_same_bytes_on_the_demo(tmp_path, dagster_home, demo_input):
    env = make_env(dagster_home)
    run([*COLLATE, "-i", demo_input, "-o", tmp_path / "a", "-q"], env=env, cwd=tmp_path, check=True)
    run([*COLLATE, "-i", demo_input, "-o", tmp_path / "b", "-q", "--no-dagster"], env=env, cwd=tmp_path, check=True)
    for name in ("demo.arrow", "demo_small.arrow", "demo.rejects.jsonl", "demo_small.rejects.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# -- mistakes: exit code and one line ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        # -f takes a comma-separated list (FORMAT[,FORMAT]) now, checked by the settings' own parser
        (["-f", "xml"], "argument -f/--format: formats must be among arrow, parquet, msgpack, jsonl; got 'xml'"),
        (["-m", "abc"], "argument -m/--max-length: not an integer: 'abc'"),
    ],
    ids=["format-xml", "max-length-abc"],
)
def test_bad_argument_exits_2(tmp_path, dagster_home, args, expected):
    result = run([*COLLATE, *args], env=make_env(dagster_home), cwd=tmp_path)
    assert result.returncode == 2, result.describe()
    assert_no_traceback(result.stderr)
    [line] = error_lines(result.stderr)
    assert expected in line
    assert not (tmp_path / "collate_output").exists()


def _missing_input(tmp_path: Path) -> tuple[list, str]:
    path = tmp_path / "no_such_folder"
    return ["-i", path], str(path)


def _missing_tokenizer(tmp_path: Path) -> tuple[list, str]:
    path = tmp_path / "no_such_tokenizer"
    return ["-t", path], str(path)


def _tokenizer_without_template(tmp_path: Path) -> tuple[list, str]:
    folder = tmp_path / "tokenizer_without_template"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the demo tokenizer minus chat_template.jinja
        shutil.copyfile(DEMO_TOKENIZER_DIR / name, folder / name)
    return ["-t", folder], "chat template"


@pytest.mark.parametrize("route", [[], ["--no-dagster"]], ids=["dagster", "no-dagster"])
@pytest.mark.parametrize(
    "make_case",
    [_missing_input, _missing_tokenizer, _tokenizer_without_template],
    ids=["missing-input", "missing-tokenizer", "no-chat-template"],
)
def test_bad_input_or_tokenizer_exits_1_with_one_line(tmp_path, dagster_home, make_case, route):
    args, named = make_case(tmp_path)
    result = run([*COLLATE, "-q", *args, *route, "-o", tmp_path / "out"], env=make_env(dagster_home), cwd=tmp_path)
    assert result.returncode == 1, result.describe()
    assert_no_traceback(result.stderr)
    [line] = error_lines(result.stderr)
    assert named in line, line


@pytest.mark.parametrize("route", [[], ["--no-dagster"]], ids=["dagster", "no-dagster"])
def test_overlong_error_names_file_and_line(tmp_path, dagster_home, demo_input, route):
    result = run(
        [*COLLATE, "-q", "-i", demo_input / "demo_small.jsonl", "--overlong", "error", "-m", "64", *route],
        env=make_env(dagster_home),
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.describe()
    assert_no_traceback(result.stderr)
    [line] = error_lines(result.stderr)
    assert re.search(rf"{re.escape(str(demo_input / 'demo_small.jsonl'))}:\d+: ", line), line
    assert "max_length 64" in line and "overlong=error" in line
    # the user's one line, not the exception class Dagster wrapped it in
    assert "dagster._core" not in line and "Failure" not in line, line
    assert not (tmp_path / "collate_output" / "demo_small.arrow").exists()



# -- only what is stale runs ------------------------------------------------------------------------------


def test_rerun_keeps_unchanged_outputs_and_reruns_an_edited_file(tmp_path, dagster_home, demo_input):
    """A second `collate` on unchanged files launches no Dagster run and says so; after one file is
    edited, only that file runs again (its outputs rewritten, the other's left as they were)."""
    env = make_env(dagster_home)
    out = tmp_path / "out"
    command = [*COLLATE, "-i", demo_input, "-o", out, "-q"]
    run(command, env=env, cwd=tmp_path, check=True)
    outputs = {stem: out / f"{stem}.arrow" for stem in ("demo", "demo_small")}
    written = {stem: path.stat().st_mtime_ns for stem, path in outputs.items()}
    with open_instance(dagster_home) as instance:
        runs_first = {r.run_id for r in instance.get_runs()}
    assert runs_first

    again = run(command, env=env, cwd=tmp_path, check=True)
    assert_no_traceback(again.stderr)
    assert "collate: 2 of 2 files unchanged since their last run: outputs kept" in again.stderr, again.describe()
    assert {stem: path.stat().st_mtime_ns for stem, path in outputs.items()} == written
    with open_instance(dagster_home) as instance:
        assert {r.run_id for r in instance.get_runs()} == runs_first  # no run launched

    lines = (demo_input / "demo_small.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (demo_input / "demo_small.jsonl").write_text("".join(lines[: len(lines) // 2]), encoding="utf-8")
    edited = run(command, env=env, cwd=tmp_path, check=True)
    assert "collate: 1 of 2 files unchanged since their last run: outputs kept" in edited.stderr, edited.describe()
    assert outputs["demo"].stat().st_mtime_ns == written["demo"]
    assert outputs["demo_small"].stat().st_mtime_ns != written["demo_small"]
    with open_instance(dagster_home) as instance:
        new_runs = [r for r in instance.get_runs() if r.run_id not in runs_first]
        assert [r.tags.get("dagster/partition") for r in new_runs] == ["demo_small.jsonl"], [r.tags for r in new_runs]
        record = latest_materialization(instance, [cli_dataset_name(out), "tokenized_conversations"], "demo_small.jsonl")
        assert metadata_values(record)["lines_read"] == len(lines) // 2


_QUICK_EXIT = """
import atexit, sys, threading, time
from collate_assets import cli
print("printed before the exit", end="")  # no newline: left in the buffer
atexit.register(lambda: sys.stderr.write("exit handler ran\\n"))
if sys.argv[1] == "thread":
    def late():
        time.sleep(0.3)
        sys.stderr.write("thread finished\\n")
    threading.Thread(target=late).start()
cli._exit_quickly(int(sys.argv[2]))
"""


@pytest.mark.parametrize("case, code", [("plain", 0), ("plain", 1), ("thread", 3)])
def test_the_quick_exit_keeps_the_code_the_output_the_exit_handlers_and_threads(case, code):
    """The command skips the interpreter's teardown at exit, but not what an exit must do: flush
    what was printed, run the exit handlers, return the code, and let a running thread finish."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _QUICK_EXIT, case, str(code)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == code
    assert proc.stdout == "printed before the exit"
    assert "exit handler ran" in proc.stderr
    assert ("thread finished" in proc.stderr) == (case == "thread")
