"""Worker processes: the same bytes whatever their number, errors and rejects as with none, no hang when one
dies, the default number of workers taken from the cores this process may use."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from collate_assets.core import CollateError, CollateSettings, pack_spill, tokenize_file
from collate_assets.core.settings import _cgroup_cpu_quota, available_cpus
from collate_assets.core.tokens import tokenize as tokenize_module
from collate_assets.core.tokens.tokenize import ChunkTokenizer
from collate_assets.sample import DEMO_INPUT_DIR
from collate_assets_tests.helpers import collate_command, demo_tokenizer, subprocess_env

CHUNK_LINES = 40  # small chunks: a few hundred demo lines make many chunks, so the workers are used


def mixed_input(path: Path) -> Path:
    """The demo conversations with bad, blank and overlong lines spread over many chunks."""
    lines = (DEMO_INPUT_DIR / "demo.jsonl").read_bytes().splitlines()
    out = []
    for k, line in enumerate(lines * 2):
        out.append(line)
        if k % 37 == 3:
            out.append(b"{not json")
        if k % 53 == 9:
            out.append(b"")
        if k % 61 == 11:
            out.append(json.dumps({"messages": [{"role": "bot", "content": "?"}]}).encode())
    path.write_bytes(b"\n".join(out) + b"\n")
    return path


def assert_the_pool_is_gone() -> None:
    """No thread of the pool is left: Python's exit waits for such a thread, and one that waits for a
    worker killed in the middle of sending its result waits forever (a run that never ends)."""
    left = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    assert left == []


def run(tmp_path: Path, source: Path, workers: int, fmt: str = "arrow", **settings) -> dict:
    """Tokenize and pack `source` with `workers`: the bytes of every file written, and the counts."""
    out = tmp_path / f"w{workers}-{fmt}"
    out.mkdir()
    config = CollateSettings(max_length=512, workers=workers, **settings)
    stats = tokenize_file(source, out / "spill.arrow", demo_tokenizer(), config,
                          rejects_path=out / "rejects.jsonl", chunk_lines=CHUNK_LINES)
    pack_spill(out / "spill.arrow", out / f"packed.{fmt}", fmt, config)
    counts = stats.to_dict()
    assert counts.pop("workers") == (workers if workers > 1 else 1)
    assert set(counts.pop("stage_seconds")) == {"read", "parse", "render", "encode", "labels", "spill"}
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}
    return {"files": files, "counts": counts}


@pytest.mark.parametrize(
    "settings",
    [{}, {"labels": "assistant", "overlong": "split"}, {"overlong": "drop", "packing": "greedy"}],
    ids=["all-truncate", "assistant-split", "drop-greedy"],
)
def test_the_same_bytes_whatever_the_number_of_workers(tmp_path, settings):
    source = mixed_input(tmp_path / "mixed.jsonl")
    one = run(tmp_path, source, 1, **settings)
    assert one["counts"]["rejected"] > 0 and one["counts"]["conversations"] > 300
    assert one["counts"]["lines_read"] == (
        one["counts"]["conversations"] + one["counts"]["rejected"] + one["counts"]["blank_lines"]
    )
    for workers in (2, 3):
        assert run(tmp_path, source, workers, **settings) == one, workers


def test_every_format_the_same_with_workers(tmp_path):
    source = mixed_input(tmp_path / "mixed.jsonl")
    for fmt in ("parquet", "msgpack", "jsonl"):
        assert run(tmp_path, source, 2, fmt)["files"] == run(tmp_path, source, 1, fmt)["files"], fmt


def test_this_process_tokenizes_beside_its_workers(tmp_path, monkeypatch):
    """workers=N: N - 1 processes are forked and the one that reads the file tokenizes chunks too, so N
    processes use N cores (and hold N copies of the tokenizer's pages, not N + 1); the file's first
    chunk is always its own (where the two tokenizer pipelines are compared)."""
    source = mixed_input(tmp_path / "mixed.jsonl")
    forked, where = [], []
    pool_init, process, results = tokenize_module._Pool.__init__, ChunkTokenizer.process, tokenize_module._results

    def counting_pool(self, chunk_tokenizer, workers):
        forked.append(workers)
        pool_init(self, chunk_tokenizer, workers)

    def tagged(self, raw):
        result = process(self, raw)
        result.pid = os.getpid()
        return result

    def collected(*args, **kwargs):
        for raw, result, at_work in results(*args, **kwargs):
            where.append((raw.records[0][0] if raw.records else None, result.pid, at_work))
            yield raw, result, at_work

    monkeypatch.setattr(tokenize_module._Pool, "__init__", counting_pool)
    monkeypatch.setattr(ChunkTokenizer, "process", tagged)
    monkeypatch.setattr(tokenize_module, "_results", collected)
    for workers in (2, 3):
        forked.clear(), where.clear()
        stats = tokenize_file(source, tmp_path / f"spill{workers}.arrow", demo_tokenizer(),
                              CollateSettings(max_length=512, workers=workers), chunk_lines=CHUNK_LINES)
        assert stats.workers == workers and forked == [workers - 1]
        pids = [pid for _, pid, _ in where]
        assert len(where) > 6 and len(set(pids)) == workers
        assert pids[0] == os.getpid() and pids.count(os.getpid()) > 1  # the first chunk, and others
        assert [line for line, _, _ in where] == sorted(line for line, _, _ in where)  # in input order
    assert (tmp_path / "spill2.arrow").read_bytes() == (tmp_path / "spill3.arrow").read_bytes()


@pytest.mark.parametrize("settings", [{"strict": True}, {"overlong": "error", "max_length": 64}], ids=["strict", "overlong-error"])
def test_a_file_ending_error_is_the_same_with_workers(tmp_path, settings):
    """The first error in line order ends the file, with the message it has without workers."""
    source = mixed_input(tmp_path / "mixed.jsonl")
    messages = []
    for workers in (1, 2):
        config = CollateSettings(workers=workers, **{"max_length": 512, **settings})
        with pytest.raises(CollateError) as caught:
            tokenize_file(source, tmp_path / f"spill{workers}.arrow", demo_tokenizer(), config, chunk_lines=CHUNK_LINES)
        messages.append(str(caught.value))
        assert not (tmp_path / f"spill{workers}.arrow").exists()
        assert_the_pool_is_gone()
    assert messages[0] == messages[1] and str(source) in messages[0]


def test_a_worker_that_dies_fails_its_file_without_hanging(tmp_path, monkeypatch):
    """A worker killed (out of memory, kill -9) ends the file with an error naming it; nothing is left."""
    source = mixed_input(tmp_path / "mixed.jsonl")
    process = ChunkTokenizer.process

    def dies_at_the_third_chunk(self, raw):
        # (forked workers inherit this; the process that reads the file tokenizes chunks too: not there)
        if tokenize_module._WORKER is not None and raw.records and raw.records[0][0] > 2 * CHUNK_LINES:
            os.kill(os.getpid(), signal.SIGKILL)
        return process(self, raw)

    monkeypatch.setattr(ChunkTokenizer, "process", dies_at_the_third_chunk)
    started = time.monotonic()
    with pytest.raises(CollateError, match="worker process stopped") as caught:
        tokenize_file(source, tmp_path / "spill.arrow", demo_tokenizer(), CollateSettings(max_length=512, workers=2),
                      rejects_path=tmp_path / "rejects.jsonl", chunk_lines=CHUNK_LINES)
    assert str(source) in str(caught.value)
    assert time.monotonic() - started < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.jsonl"]
    assert [p for p in psutil.Process().children() if p.status() != psutil.STATUS_ZOMBIE] == []
    assert psutil.Process().children() == []  # the killed workers were reaped too
    assert_the_pool_is_gone()


_ERRORS_THEN_EXIT = """
import os, signal, sys, tempfile
from pathlib import Path
from collate_assets.core import CollateError, CollateSettings, tokenize_file
from collate_assets.core.tokens import tokenize as tokenize_module
from collate_assets.core.tokens.tokenize import ChunkTokenizer
from collate_assets_tests.core.test_workers import CHUNK_LINES, mixed_input
from collate_assets_tests.helpers import demo_tokenizer

process = ChunkTokenizer.process
def dies(self, raw):
    if tokenize_module._WORKER is not None and raw.records and raw.records[0][0] > 2 * CHUNK_LINES:
        os.kill(os.getpid(), signal.SIGKILL)
    return process(self, raw)

folder = Path(sys.argv[1])
source = mixed_input(folder / "mixed.jsonl")
tokenizer = demo_tokenizer()
for _ in range(int(sys.argv[2])):
    for method, settings in ((process, {"strict": True}), (process, {"overlong": "error", "max_length": 64}), (dies, {})):
        ChunkTokenizer.process = method
        try:
            tokenize_file(source, folder / "spill.arrow", tokenizer, CollateSettings(workers=2, **{"max_length": 512, **settings}),
                          chunk_lines=CHUNK_LINES)
        except CollateError:
            pass
print("ended")
"""


def test_a_process_whose_files_failed_in_workers_still_exits(tmp_path):
    """Errors that end files under way in the workers, again and again, then a normal exit: the process
    ends (a worker stopped in the middle of sending its result once left a thread that Python's exit waited
    for forever, so a failed Dagster step's process never ended)."""
    result = subprocess.run([sys.executable, "-c", _ERRORS_THEN_EXIT, str(tmp_path), "12"], env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ended", result.stderr[-2000:]


def test_an_interrupt_stops_the_workers_too(tmp_path):
    """Ctrl-C while the workers tokenize: exit 130, and no worker process is left behind."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "big.jsonl").write_bytes((DEMO_INPUT_DIR / "demo.jsonl").read_bytes() * 40)
    # three processes at work: this one and two forked workers
    args = collate_command("-i", str(folder), "-o", str(tmp_path / "out"), "-q", "--no-dagster", "-w", "3")
    proc = subprocess.Popen(args, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while len(parent.children()) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        workers = parent.children()
        assert len(workers) == 2, "the workers never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []


# -- how many workers by default ----------------------------------------------------------------------


def test_the_default_follows_the_cpu_affinity():
    """`taskset -c 0 collate ...` gets one worker; the setting overrides it."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from collate_assets.core import CollateSettings as S; "
        "print(S().worker_count(), S(workers=3).worker_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "3"]
    assert CollateSettings().worker_count() == available_cpus() <= len(os.sched_getaffinity(0))


def test_the_default_follows_a_cgroup_cpu_quota(tmp_path):
    # cgroup v2: cpu.max "quota period" in the process's cgroup and its parents; the tightest counts
    (tmp_path / "proc").write_text("0::/app/job\n")
    (tmp_path / "app" / "job").mkdir(parents=True)
    (tmp_path / "app" / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "app" / "job" / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_quota(str(tmp_path), str(tmp_path / "proc")) == 1.5
    (tmp_path / "app" / "job" / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(str(tmp_path), str(tmp_path / "proc")) == 3.0
    # cgroup v1: cpu.cfs_quota_us / cpu.cfs_period_us (-1: no quota)
    (tmp_path / "proc").write_text("4:memory:/x\n2:cpu,cpuacct:/x\n")
    (tmp_path / "cpu,cpuacct" / "x").mkdir(parents=True)
    (tmp_path / "cpu,cpuacct" / "x" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu,cpuacct" / "x" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_quota(str(tmp_path), str(tmp_path / "proc")) is None
    (tmp_path / "cpu,cpuacct" / "x" / "cpu.cfs_quota_us").write_text("200000\n")
    assert _cgroup_cpu_quota(str(tmp_path), str(tmp_path / "proc")) == 2.0


@pytest.mark.parametrize("value", ["-1", "x", "100000"])
def test_a_bad_workers_value_is_an_argument_error(tmp_path, value):
    result = subprocess.run(collate_command("-w", value, "--no-dagster", "-o", str(tmp_path)), env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--workers" in result.stderr
    with pytest.raises(ValueError, match="COLLATE_WORKERS"):
        CollateSettings.from_env({"COLLATE_WORKERS": value})
