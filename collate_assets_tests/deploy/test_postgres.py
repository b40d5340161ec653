"""Dagster instance storage on a real PostgreSQL server (dagster-postgres), as a team deployment uses.

The module starts its own throwaway cluster (initdb + pg_ctl from Debian's postgresql package, which
.ci/run installs when missing), with one database a test. One test points a DAGSTER_HOME at it, runs
two `collate` commands on two files at the same time (SQLite storage would say "database is locked"
here) and reads the runs and materializations back from Postgres. The other backfills 7 partitions
(and 2 of them again) through the run queue of a real `dagster-daemon` with a limit on concurrent runs
and a limit of one run at a time per partition, and checks the limits held, nothing was lost and
nothing ran twice.
"""

import json
import os
import signal
import shutil
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg

from collate_assets.defs.run import cli_dataset_name
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR
from collate_assets_tests.deploy.conftest import database as _database
from collate_assets_tests.deploy.conftest import storage_yaml as _storage_yaml
from collate_assets_tests.e2e.conftest import COLLATE, DAGSTER, WORKSPACE_YAML, check_evaluations, make_env, run


def test_collate_runs_record_into_postgres_storage(postgres, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(_storage_yaml(postgres, "dagster"))
    inputs = []
    for name in ("demo.jsonl", "demo_small.jsonl"):
        folder = tmp_path / f"in_{name}"
        folder.mkdir()
        shutil.copyfile(DEMO_INPUT_DIR / name, folder / name)
        inputs.append(folder)
    env = dict(os.environ, DAGSTER_HOME=str(home), HF_HUB_OFFLINE="1")
    collate = [sys.executable, "-m", "collate_assets.cli"]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*collate, "-i", str(folder), "-o", str(tmp_path / "out"), "-t", str(DEMO_TOKENIZER_DIR), "-m", "1024", "-q"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for folder in inputs
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "database is locked" not in err
    print(f"two concurrent collate runs on Postgres storage: {time.perf_counter() - started:.1f} s")

    assert (tmp_path / "out" / "demo.arrow").is_file()
    assert (tmp_path / "out" / "demo_small.arrow").is_file()
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        # one output folder, one dataset: both commands' files are its partitions
        name = cli_dataset_name(tmp_path / "out")
        assert sorted(instance.get_dynamic_partitions(f"{name}_input_files")) == ["demo.jsonl", "demo_small.jsonl"]
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        for key in ("demo.jsonl", "demo_small.jsonl"):
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey([name, "packed_arrow"]), asset_partitions=[key]), limit=1
            ).records[0]
            metadata = record.asset_materialization.metadata
            assert metadata["rows"].value > 0 and 0 < metadata["fill"].value <= 1
    finally:
        instance.dispose()


# -- a backfill through the run queue ------------------------------------------------------------------

QUEUE_LIMIT = 3  # max_concurrent_runs
CHECK_NAMES = {"rows_fit_max_length", "sequence_boundaries", "labels_masked_at_starts", "tokens_conserved", "lines_accounted"}
# How many runs it takes to test the limits: the daemon starts on a queue that already holds both
# backfills, BACKFILL_PARTITIONS + AGAIN = 9 runs, three times QUEUE_LIMIT. Its launches run on threads,
# so a queue that ignored max_concurrent_runs would launch all 9 at its first tick (3x the limit, not one
# over it), and the limit is refilled twice as runs end (freed slots are accounted, not only the first
# wave). The 20 partitions this test used to have added runs, not a case the limits could fail on.
BACKFILL_PARTITIONS = 7
AGAIN = 2  # partitions the second backfill asks for again


def _queue_yaml(limit: int, launch_threads: int) -> str:
    """The run queue a team sets: at most `limit` runs at once, and one run at a time per partition (a
    backfill and automation, or two backfills, never write the same partition's files together).
    The daemon launches on `launch_threads` threads, as many as there are runs: launches no longer come
    one after another (each takes a few seconds, about a run's length), so only the limits keep more
    than `limit` runs from overlapping and a broken limit shows as an overlap instead of hiding behind
    slow launches."""
    return textwrap.dedent(f"""\
        run_coordinator:
          module: dagster.core.run_coordinator
          class: QueuedRunCoordinator
          config:
            max_concurrent_runs: {limit}
            dequeue_interval_seconds: 1
            dequeue_use_threads: true
            dequeue_num_workers: {launch_threads}
            tag_concurrency_limits:
              - key: dagster/partition
                value:
                  applyLimitPerUniqueValue: true
                limit: 1
        """)


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of [start, end] intervals that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_a_queued_backfill_on_postgres_keeps_the_run_limits(postgres, tmp_path):
    """`dagster job backfill` of BACKFILL_PARTITIONS partitions and at once a second, higher-priority
    backfill of 2 of them, through a real daemon's run queue on Postgres: every run succeeds, each
    backfill runs each of its partitions exactly once, never more than QUEUE_LIMIT runs at once, never two
    runs of a partition at once, and the files are the ones the engine writes alone.

    Both backfills are queued before the daemon starts, so its first tick sees the second backfill's
    runs of part-00 and part-01 first (priority) and the first backfill's runs of the same partitions
    right behind them (FIFO): only the partition limit keeps it from launching two runs of part-00 side
    by side. (With the daemon already running, the first backfill's part-00 usually ended before the
    second backfill was queued, and the partition limit went untested.)"""
    home = tmp_path / "home"
    home.mkdir()
    queue = _queue_yaml(QUEUE_LIMIT, launch_threads=BACKFILL_PARTITIONS + AGAIN)
    (home / "dagster.yaml").write_text(_storage_yaml(postgres, _database(postgres, "queued")) + queue)
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    lines = (DEMO_INPUT_DIR / "demo.jsonl").read_bytes().splitlines(keepends=True)
    names = [f"part-{k:02d}.jsonl" for k in range(BACKFILL_PARTITIONS)]
    for k, name in enumerate(names):
        (input_dir / name).write_bytes(b"".join(lines[k * 15:(k + 1) * 15]))
    output_dir = tmp_path / "output"
    # The automation sensor starts stopped (it would build the registered files at its first evaluation):
    # every run here is one of the two backfills.
    env = make_env(home, input_dir=input_dir, output_dir=output_dir, tokenizer=DEMO_TOKENIZER_DIR, max_length=1024,
                   sensor_seconds=86400, automation="false")
    alone = tmp_path / "alone"
    with ThreadPoolExecutor(2) as pool:  # the reference files (no Dagster, another folder) beside the queueing
        alone_result = pool.submit(run, [*COLLATE, "-i", str(input_dir), "-o", str(alone), "-t", str(DEMO_TOKENIZER_DIR),
                                         "-m", "1024", "-q", "--no-dagster"], env=env, cwd=tmp_path, timeout=300)
        run([*COLLATE, "-i", str(input_dir), "--register-only"], env=env, cwd=tmp_path, check=True, timeout=120)
        backfill = [*DAGSTER, "job", "backfill", "-w", str(WORKSPACE_YAML), "-j", "collate_job", "--noprompt"]
        first = pool.submit(run, [*backfill, "--partitions", ",".join(names)], env=env, cwd=tmp_path, timeout=300)
        second = run([*backfill, "--partitions", ",".join(names[:AGAIN]), "--tags", json.dumps({"dagster/priority": "10"})],
                     env=env, cwd=tmp_path, timeout=300)
        first = first.result()
        alone_result = alone_result.result()
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]

    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(WORKSPACE_YAML)],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            deadline = time.monotonic() + 400
            while True:
                records = instance.get_run_records()
                if len(records) >= BACKFILL_PARTITIONS + AGAIN and all(r.dagster_run.is_finished for r in records):
                    break
                assert daemon.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, (
                    f"{sum(r.dagster_run.is_finished for r in records)} of {len(records)} runs finished\n"
                    + log_path.read_text()[-3000:]
                )
                time.sleep(0.5)
            evaluations = {r.dagster_run.run_id: check_evaluations(instance, r.dagster_run.run_id) for r in records}
        finally:
            instance.dispose()
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(10)

    runs = [r.dagster_run for r in records]
    assert all(run_.status == dg.DagsterRunStatus.SUCCESS for run_ in runs), [(r.run_id, r.status) for r in runs]
    for run_id, evaluation in evaluations.items():  # each run evaluated its partition's blocking checks
        assert {name for _, name in evaluation} == CHECK_NAMES and all(evaluation.values()), (run_id, evaluation)
    by_backfill: dict[str, list[str]] = {}
    for run_ in runs:
        by_backfill.setdefault(run_.tags["dagster/backfill"], []).append(run_.tags["dagster/partition"])
    assert sorted(sorted(p) for p in by_backfill.values()) == sorted([sorted(names[:AGAIN]), sorted(names)])
    intervals = [(r.start_time, r.end_time) for r in records]
    most = _most_at_once(intervals)
    seconds = sorted(end - start for start, end in intervals)
    print(f"queued backfill: {len(records)} runs on Postgres, at most {most} at once (limit {QUEUE_LIMIT}), "
          f"{max(e for _, e in intervals) - min(s for s, _ in intervals):.1f} s from first start to last end, "
          f"a run {seconds[len(seconds) // 2]:.1f} s (median)")
    assert 2 <= most <= QUEUE_LIMIT
    for name in names[:AGAIN]:
        twice = [(r.start_time, r.end_time) for r in records if r.dagster_run.tags["dagster/partition"] == name]
        assert len(twice) == 2 and _most_at_once(twice) == 1, (name, twice)

    assert alone_result.returncode == 0, alone_result.stderr
    for name in names:
        stem = name.removesuffix(".jsonl")
        assert (output_dir / f"{stem}.arrow").read_bytes() == (alone / f"{stem}.arrow").read_bytes(), stem
