"""Crashes and concurrency: kill -9 at random moments, two runs of the same output at once, determinism.

Outputs are written under `.<name>.<host>-<pid>.<random>.tmp` and renamed when complete, so an output
that exists is always whole; the next write of a target removes the temporaries of dead writers.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import pytest

from collate_assets.core import (
    OUTPUT_FORMATS,
    CollateSettings,
    collate_file,
    normalize_conversation,
    pack_spill,
    read_packed,
    tokenize_file,
)
from collate_assets.core.read.reader import scan_input_files
from collate_assets.core.fs import atomic_path, temp_name_pattern, work_dir
from collate_assets.sample import DEMO_INPUT_DIR

from collate_assets_tests.helpers import collate_command, subprocess_env

MAX_LENGTH = 2048
FORMAT = "jsonl"  # the slowest writer: the widest window for a kill while the output is being written
TARGETS = ("big.jsonl", "big.rejects.jsonl")
SPILL_DIR = re.compile(r"collate-[0-9a-f]{8}-\d+-[a-z0-9_]{8}")
KILL_SEED = 20240611
# Runs are killed at a random moment of their work until this many were killed (a run that finishes
# first is checked too); at most twice as many runs are started.
KILLS = 4
DAGSTER_KILLS = 2


def _temp_re(name: str) -> re.Pattern:
    return re.compile(temp_name_pattern(Path(name)))


@pytest.fixture(scope="module")
def big_input(tmp_path_factory) -> Path:
    """~4 MB of chat (the demo conversations 12 times over, made distinct) with a bad line every 97.

    A run takes ~5 s on 2 cores: ~3 s to import transformers and load the tokenizer, ~2 s of work."""
    folder = tmp_path_factory.mktemp("big") / "in"
    folder.mkdir()
    conversations = [
        normalize_conversation(orjson.loads(line)).messages
        for line in (DEMO_INPUT_DIR / "demo.jsonl").read_bytes().splitlines()
        if line.strip()
    ]
    path = folder / "big.jsonl"
    with open(path, "wb") as f:
        for copy in range(12):
            for i, conversation in enumerate(conversations):
                messages = [{**m, "content": f"[{copy}] {m['content']}"} for m in conversation]
                f.write(orjson.dumps({"messages": messages}) + b"\n")
                if i % 97 == 0:
                    f.write(b'{"messages": broken}\n')
    return path


def _command(input_path: Path, out: Path, *extra: str) -> list[str]:
    return collate_command("--no-dagster", "-q", "-i", str(input_path), "-o", str(out), "-f", FORMAT,
                           "-m", str(MAX_LENGTH), *extra)


def _env(tmp: Path, **extra: str) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    return subprocess_env(TMPDIR=str(tmp), **extra)  # the engine's spill folders go here


@pytest.fixture(scope="module")
def reference(big_input, tmp_path_factory) -> dict:
    """An uninterrupted run: its output bytes, and when its work started and ended (for the kills)."""
    root = tmp_path_factory.mktemp("reference")
    tmp = root / "tmp"
    started = time.monotonic()
    # Two encoder threads here; the runs it is compared with use one (worker counts must not matter).
    proc = subprocess.Popen(_command(big_input, root / "out"), env=_env(tmp, RAYON_NUM_THREADS="2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    work_started = None
    while proc.poll() is None:
        if work_started is None and any(SPILL_DIR.fullmatch(p) for p in os.listdir(tmp)):
            work_started = time.monotonic() - started
        time.sleep(0.02)
    finished = time.monotonic() - started
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert work_started is not None
    files = {name: (root / "out" / name).read_bytes() for name in TARGETS}
    assert sorted(os.listdir(root / "out")) == sorted(TARGETS) and os.listdir(tmp) == []
    assert files["big.rejects.jsonl"].count(b"\n") == 48  # the bad lines are rejects, beside the output
    return {"files": files, "work_started": work_started, "finished": finished}


def _pid_of(temp_name: str) -> int:
    return int(re.search(r"-(\d+)[.-][a-z0-9_]{8}(\.tmp)?$", temp_name).group(1))


def _check_after_kill(out: Path, tmp: Path, reference: dict, killed: set[int]) -> dict:
    """Every output present is complete and equal to the reference; the rest are temporaries of killed
    runs, at most one per target (each run removes the dead runs' temporaries before making its own)."""
    seen = {"outputs": [], "temps": []}
    for name in sorted(os.listdir(out)) if out.exists() else []:
        if name in TARGETS:
            assert (out / name).read_bytes() == reference["files"][name], f"{name} is not the complete output"
            seen["outputs"].append(name)
            continue
        owner = [t for t in TARGETS if _temp_re(t).fullmatch(name)]
        assert owner, f"unexpected file {name} in the output folder"
        assert _pid_of(name) in killed
        seen["temps"].append(name)
    for target in TARGETS:
        assert sum(1 for name in seen["temps"] if _temp_re(target).fullmatch(name)) <= 1, seen
    # A temporary never looks like an input or output file to anything that lists the folder.
    if out.exists():
        assert {p.name for p in scan_input_files(out)[0]} <= set(TARGETS)
        assert not any(name.endswith((".jsonl", ".gz", ".arrow", ".parquet", ".msgpack")) for name in seen["temps"])
    spills = [name for name in os.listdir(tmp)]
    assert all(SPILL_DIR.fullmatch(name) and _pid_of(name) in killed for name in spills), spills
    assert len(spills) <= 1
    return seen


def _start_and_kill(cmd: list[str], env: dict, started, delay: float) -> tuple[subprocess.Popen, bool]:
    """Start `cmd`, wait until `started()` says its work began, then SIGKILL it `delay` seconds later
    (unless it finished first). Returns the reaped process and whether it was killed."""
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline and not started(proc.pid):
            time.sleep(0.01)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
        else:  # finished before the kill: it must have succeeded
            stderr.seek(0)
            assert proc.returncode == 0, stderr.read().decode(errors="replace")[-3000:]
            return proc, False
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()  # reaped: its pid is no longer alive
        return proc, True


def test_kill_9_at_random_moments_never_leaves_a_partial_output(big_input, reference, tmp_path):
    rng = random.Random(KILL_SEED)
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    env = _env(tmp)
    work = reference["finished"] - reference["work_started"]

    def working(pid: int) -> bool:  # its spill folder exists: reading, tokenizing, packing or writing
        return any(SPILL_DIR.fullmatch(n) and _pid_of(n) == pid for n in os.listdir(tmp))

    outcomes = []
    killed: set[int] = set()
    for _ in range(2 * KILLS):
        if len(killed) == KILLS:
            break
        delay = rng.uniform(0, work)
        proc, was_killed = _start_and_kill(_command(big_input, out), env, working, delay)
        if was_killed:
            killed.add(proc.pid)
        seen = _check_after_kill(out, tmp, reference, killed)
        # (killed?, delay into the work, outputs present, temporaries present)
        outcomes.append((was_killed, round(delay, 2), len(seen["outputs"]), len(seen["temps"])))
    assert len(killed) >= KILLS // 2, outcomes

    # The next run completes, equals the uninterrupted run byte for byte and cleans up after the dead ones.
    # It encodes with one thread where the reference used two: outputs do not depend on worker counts.
    done = subprocess.run(_command(big_input, out), env={**env, "RAYON_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted(TARGETS), os.listdir(out)
    for name in TARGETS:
        assert (out / name).read_bytes() == reference["files"][name]
    assert os.listdir(tmp) == []
    assert sum(1 for _ in read_packed(out / "big.jsonl", FORMAT)) > 0


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "out.arrow"
    with atomic_path(target) as mine:  # a name of this host, this pid
        pass
    tag = re.fullmatch(temp_name_pattern(target), mine.name).group("tag")
    host = tag.split("-")[0]
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".out.arrow.{host}-{dead}.abcd1234.tmp"
    live = tmp_path / f".out.arrow.{host}-{alive}.efgh5678.tmp"
    init = tmp_path / f".out.arrow.{host}-1.ijkl9012.tmp"  # pid 1 is alive
    other_host = tmp_path / f".out.arrow.{'0' * 8 if host != '0' * 8 else '1' * 8}-{dead}.mnop3456.tmp"
    other_target = tmp_path / f".other.arrow.{host}-{dead}.qrst7890.tmp"
    legacy = tmp_path / ".out.arrow.uvwx1234.tmp"  # from before temps named their writer
    for path in (stale, live, init, other_host, other_target, legacy):
        path.write_bytes(b"half")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert not stale.exists()
    assert all(p.exists() for p in (live, init, other_host, other_target, legacy))

    old_spill = tmp_path / f"collate-{host}-{dead}-abcd1234"
    (old_spill / "sub").mkdir(parents=True)
    (old_spill / "spill.arrow").write_bytes(b"x")
    live_spill = tmp_path / f"collate-{host}-{alive}-abcd1234"
    live_spill.mkdir()
    with work_dir(tmp_path) as folder:
        assert folder.parent == tmp_path and SPILL_DIR.fullmatch(folder.name)
    assert not old_spill.exists() and live_spill.exists() and not folder.exists()


def _dagster_command(input_path: Path, out: Path) -> list[str]:
    return collate_command("-q", "-i", str(input_path), "-o", str(out), "-f", FORMAT, "-m", str(MAX_LENGTH))


def _spill_folder_is_clean(out: Path) -> None:
    names = os.listdir(out / ".collate_tokenized")
    assert {"big.arrow", "big.manifest.json"} <= set(names) and not [n for n in names if n.endswith(".tmp")], names
    manifest = json.loads((out / ".collate_tokenized" / "big.manifest.json").read_text())
    assert manifest["stats"]["conversations"] == 3600 and manifest["stats"]["rejected"] == 48


def _init_instance(home: Path, monkeypatch, big_input: Path) -> None:
    """Create the instance, as a user's earlier command would have."""
    from collate_assets.defs.run import get_instance

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with get_instance() as instance:
        assert instance.get_dynamic_partitions("input_files") == []


def test_kill_9_of_collate_through_dagster_then_two_runs_at_once(big_input, reference, tmp_path, monkeypatch):
    """`collate` through Dagster (spill, manifest, packed output, run records) killed while it works; then
    two `collate` commands on the same input and output at once both complete, with the exact output.

    The instance exists first: two commands racing to create a new DAGSTER_HOME's SQLite schema can
    fail with "table alembic_version already exists" (Dagster's, not ours; see the report).
    """
    rng = random.Random(KILL_SEED + 1)
    out, tmp, home = tmp_path / "out", tmp_path / "tmp", tmp_path / "dagster_home"
    _init_instance(home, monkeypatch, big_input)
    env = _env(tmp, DAGSTER_HOME=str(home))
    spill_temp = _temp_re("big.arrow")
    work = reference["finished"] - reference["work_started"]
    killed: set[int] = set()

    def working(pid: int) -> bool:  # the tokenize step is writing its spill
        folder = out / ".collate_tokenized"
        return folder.is_dir() and any(spill_temp.fullmatch(n) and _pid_of(n) == pid for n in os.listdir(folder))

    for _ in range(2 * DAGSTER_KILLS):
        if len(killed) == DAGSTER_KILLS:
            break
        proc, was_killed = _start_and_kill(_dagster_command(big_input, out), env, working, rng.uniform(0, work))
        if was_killed:
            killed.add(proc.pid)
        for name in os.listdir(out) if out.exists() else []:
            if name in TARGETS:
                assert (out / name).read_bytes() == reference["files"][name], name
        for name in os.listdir(out / ".collate_tokenized") if (out / ".collate_tokenized").exists() else []:
            if name.endswith(".tmp"):
                assert _pid_of(name) in killed, name
    assert killed

    procs = [subprocess.Popen(_dagster_command(big_input, out), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
    assert sorted(os.listdir(out)) == sorted([*TARGETS, ".collate_tokenized"])
    for name in TARGETS:
        assert (out / name).read_bytes() == reference["files"][name]
    _spill_folder_is_clean(out)
    assert os.listdir(tmp) == []


def test_two_engine_threads_on_the_same_output(big_input, reference, tokenizer, tmp_path):
    out = tmp_path / "out" / "big.jsonl"
    settings = CollateSettings(max_length=MAX_LENGTH)
    errors = []
    barrier = threading.Barrier(2)

    def work():
        try:
            barrier.wait()
            collate_file(big_input, out, tokenizer, settings, FORMAT, work_dir=tmp_path)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert errors == []
    assert sorted(os.listdir(out.parent)) == sorted(TARGETS)
    for name in TARGETS:
        assert (out.parent / name).read_bytes() == reference["files"][name]


def test_outputs_are_byte_identical_across_chunk_sizes_and_runs(big_input, reference, tokenizer, tmp_path):
    """In-process, chunks of 37 lines and of 1024: every format byte-identical, and jsonl and rejects equal
    to the `collate` subprocess runs (the worker-count half is the kill test's last run, with one thread)."""
    settings = CollateSettings(max_length=MAX_LENGTH)
    for chunk_lines in (37, 1024):
        out = tmp_path / str(chunk_lines)
        tokenize_file(big_input, out / "spill.arrow", tokenizer, settings, rejects_path=out / "big.rejects.jsonl",
                      chunk_lines=chunk_lines)
        for fmt in OUTPUT_FORMATS:
            pack_spill(out / "spill.arrow", out / f"big.{fmt}", fmt, settings)
    for fmt in OUTPUT_FORMATS:
        assert (tmp_path / "37" / f"big.{fmt}").read_bytes() == (tmp_path / "1024" / f"big.{fmt}").read_bytes(), fmt
    for target in TARGETS:
        for chunk_lines in ("37", "1024"):
            assert (tmp_path / chunk_lines / target).read_bytes() == reference["files"][target], target
