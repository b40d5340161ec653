"""Steps on Celery workers (dagster-celery's executor, COLLATE_EXECUTOR=celery), tested for real.

The module starts, once for its tests: Debian's `redis-server` on a free loopback port as the Celery
broker and result backend (skipped with the reason when it is not installed; .ci/run installs it),
Dagster's instance storage on the PostgreSQL server of the `postgres` fixture (conftest.py), two
workers as separate process groups (`dagster-celery worker start -A dagster_celery.app -y
celery.yaml -n w1|w2 -- --concurrency=1`, the command docs/cluster.md gives) and a `dagster-daemon`
whose run queue launches the runs of `dagster job backfill`.

- a backfill of 4 partitions: every run succeeds, every step ran exactly once, both workers ran steps
  (the Celery hostname Dagster records for each step, and each worker's own log), and the files are
  byte-identical to those of `collate --no-dagster`;
- kill -9 of the process running a step (what the OOM killer does): the worker's main process sends the
  task again at once, a new process runs the step, the run succeeds;
- kill -9 of a whole worker (its process group: the CLI, Celery's main process, the process running the
  step and the step's tokenize processes) in the middle of a step: after the visibility timeout the
  other worker runs the step, the run succeeds with the step finished there, and the files are
  byte-identical with no temporary file of the killed attempt left in the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from collate_assets.defs.checks import CHECK_DESCRIPTIONS
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR
from collate_assets_tests.deploy.conftest import database, free_port, storage_yaml
from collate_assets_tests.e2e.conftest import COLLATE, DAGSTER, WORKSPACE_YAML, _tail, check_evaluations, make_env, run

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
BIN = Path(sys.executable).parent
WORKERS = ("w1", "w2")
# 4 runs at once put 4 tokenize tasks on the queue together for 2 workers of one process each: each
# worker must take some (a worker that did not consume would leave all 8 steps to the other), and 8
# steps show "each step once, never handed out twice". 8 partitions (16 steps) proved no more.
BACKFILL_PARTITIONS = 4
PARTS = "part-*.jsonl"  # the backfill's input files
SLOW = "slow-*.jsonl"  # the kill tests' input files
LINES_PER_PARTITION = 15
# demo.jsonl 10 times: 3,000 conversations, three chunks (so the step starts its tokenize processes
# inside the Celery worker), a tokenize step of ~2-4 s on 2 cores: long enough to be killed in the middle.
SLOW_COPIES = 10
# Short for the test (production: 3600 s): the wait before a dead worker's task goes to another worker.
# It must stay above the longest step here, or a live worker's step would be handed out twice.
VISIBILITY_TIMEOUT = 10
QUEUE_LIMIT = BACKFILL_PARTITIONS  # every run of the backfill at once; their steps queue for the two workers
SERIAL_TAG = "collate-test/one-at-a-time"  # the runs of the kill tests: one after the other
STEPS = ("tokenized_conversations", "packed_arrow")
CHECK_NAMES = set(CHECK_DESCRIPTIONS)  # the blocking checks of every packed asset
CELERY_WORKER = "Celery worker"  # metadata of dagster-celery's engine event when a worker starts a step: its hostname


def _stop_group(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group `process` leads, SIGKILL whatever is left of it after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            pass


@dataclasses.dataclass
class Worker:
    name: str
    process: subprocess.Popen
    log: Path

    @property
    def hostname(self) -> str | None:
        """`w1@<host>`, as Celery prints it when the worker is ready (and as Dagster records it)."""
        match = re.search(rf"\] ({self.name}@\S+) ready\.", self.log.read_text(errors="replace"))
        return match.group(1) if match else None

    def succeeded(self) -> int:
        """Tasks this worker has finished, from its own log."""
        return len(re.findall(r"Task execute_plan\[[0-9a-f-]+\] succeeded", self.log.read_text(errors="replace")))


@dataclasses.dataclass
class Cluster:
    root: Path
    home: Path
    input_dir: Path
    output_dir: Path
    env: dict
    celery_yaml: Path
    parts: list[str]
    slow: dict[str, str]  # how the test kills -> the partition it uses
    workers: dict[str, Worker] = dataclasses.field(default_factory=dict)
    daemon: subprocess.Popen | None = None
    alone_runs: dict[str, tuple[Path, subprocess.Popen]] = dataclasses.field(default_factory=dict)

    def start_worker(self, name: str) -> Worker:
        log = self.root / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(self.celery_yaml),
                 "-n", name, "--", "--concurrency=1"],
                cwd=self.root, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = self.workers[name] = Worker(name, process, log)
        return worker

    def ensure_workers(self, timeout: float = 90) -> None:
        """Both workers running and ready (a test before may have killed one)."""
        for name in WORKERS:
            worker = self.workers.get(name)
            if worker is None or worker.process.poll() is not None:
                if worker is not None:
                    worker.log.rename(worker.log.with_suffix(f".{int(time.time())}.log"))
                self.start_worker(name)
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            while worker.hostname is None:
                assert worker.process.poll() is None, f"{worker.name} exited\n{_tail(worker.log)}"
                assert time.monotonic() < deadline, f"{worker.name} not ready\n{_tail(worker.log)}"
                time.sleep(0.2)

    def backfill(self, partitions: list[str], tags: dict | None = None) -> str:
        """`dagster job backfill` of these partitions (one run each, through the daemon's queue); its id."""
        extra = ["--tags", json.dumps(tags)] if tags else []
        result = run([*DAGSTER, "job", "backfill", "-w", str(WORKSPACE_YAML), "-j", "collate_job", "--noprompt",
                      "--partitions", ",".join(partitions), *extra], env=self.env, cwd=self.root, timeout=300)
        assert result.returncode == 0, result.describe()
        match = re.search(r"Launched backfill job `([^`]+)`", result.stdout + result.stderr)
        assert match, result.describe()
        return match.group(1)

    def wait_for_runs(self, instance, tags: dict, count: int, timeout: float) -> list:
        """The runs with these tags, once there are `count` of them and all have ended."""
        deadline = time.monotonic() + timeout
        while True:
            runs = instance.get_runs(filters=dg.RunsFilter(tags=tags))
            if len(runs) >= count and all(r.is_finished for r in runs):
                return runs
            assert self.daemon.poll() is None, _tail(self.root / "daemon.log")
            assert time.monotonic() < deadline, (
                f"{sum(r.is_finished for r in runs)} of {len(runs)} runs finished, {count} expected\n"
                + "\n".join(f"--- {w.name}\n{_tail(w.log, 15)}" for w in self.workers.values())
                + f"\n--- daemon\n{_tail(self.root / 'daemon.log', 15)}"
            )
            time.sleep(0.5)

    def start_alone(self, pattern: str) -> None:
        """Start `collate --no-dagster` on the input files matching `pattern` (the engine alone), in the
        background: the tests compare with its files once their runs are done."""
        if pattern not in self.alone_runs:
            out = self.root / f"alone-{len(self.alone_runs)}"
            self.alone_runs[pattern] = (out, subprocess.Popen(
                [*COLLATE, "-i", str(self.input_dir / pattern), "-o", str(out), "-t", str(DEMO_TOKENIZER_DIR), "-m", "1024",
                 "-q", "--no-dagster"],
                env=self.env, cwd=self.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            ))

    def assert_same_files(self, pattern: str, partitions: list[str]) -> None:
        """The packed file and rejects file of each partition are the bytes `collate --no-dagster` wrote."""
        self.start_alone(pattern)
        alone, process = self.alone_runs[pattern]
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 0, output
        for name in partitions:
            stem = name.removesuffix(".jsonl")
            for suffix in (".arrow", ".rejects.jsonl"):
                mine = self.output_dir / f"{stem}{suffix}"
                assert mine.read_bytes() == (alone / f"{stem}{suffix}").read_bytes(), mine


@pytest.fixture(scope="module")
def celery_cluster(postgres, tmp_path_factory):
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip("redis-server not installed (apt-get install redis-server; .ci/run does)")
    import redis

    root = tmp_path_factory.mktemp("celery")
    home = root / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(storage_yaml(postgres, database(postgres, "celery")) + textwrap.dedent(f"""\
        run_coordinator:
          module: dagster.core.run_coordinator
          class: QueuedRunCoordinator
          config:
            max_concurrent_runs: {QUEUE_LIMIT}
            dequeue_interval_seconds: 1
            dequeue_use_threads: true
            dequeue_num_workers: {QUEUE_LIMIT}
            tag_concurrency_limits:
              - key: {SERIAL_TAG}
                limit: 1
        """))
    input_dir = root / "input"
    input_dir.mkdir()
    demo = (DEMO_INPUT_DIR / "demo.jsonl").read_bytes()
    lines = demo.splitlines(keepends=True)
    parts = [PARTS.replace("*", f"{k:02d}") for k in range(BACKFILL_PARTITIONS)]
    for k, name in enumerate(parts):
        (input_dir / name).write_bytes(b"".join(lines[k * LINES_PER_PARTITION:(k + 1) * LINES_PER_PARTITION]))
    slow = {"process": "slow-process.jsonl", "worker": "slow-worker.jsonl"}
    for name in slow.values():
        (input_dir / name).write_bytes(demo * SLOW_COPIES)

    redis_port = free_port()
    redis_log = root / "redis.log"
    with open(redis_log, "wb") as out:
        redis_server = subprocess.Popen(
            [REDIS_SERVER, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(root)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    cluster = None
    try:
        client = redis.Redis(host="127.0.0.1", port=redis_port)
        deadline = time.monotonic() + 30
        while True:
            assert redis_server.poll() is None, _tail(redis_log)
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, _tail(redis_log)
                time.sleep(0.1)
        client.close()

        # The automation sensor starts stopped (it would build the registered files at its first
        # evaluation): every run here is a test's backfill.
        env = make_env(home, input_dir=input_dir, output_dir=root / "output", tokenizer=DEMO_TOKENIZER_DIR,
                       max_length=1024, sensor_seconds=86400, automation="false", executor="celery",
                       celery_broker=f"redis://127.0.0.1:{redis_port}/0", celery_visibility_timeout=VISIBILITY_TIMEOUT)
        env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])  # `dagster-celery worker start` runs `celery`
        # The workers' Celery settings, from the same variables as the executor's (docs/cluster.md).
        yaml = run([sys.executable, "-m", "collate_assets.executors", "celery-yaml"], env=env, cwd=root, check=True)
        celery_yaml = root / "celery.yaml"
        celery_yaml.write_text(yaml.stdout)
        cluster = Cluster(root, home, input_dir, root / "output", env, celery_yaml, parts, slow)
        for name in WORKERS:
            cluster.start_worker(name)
        # while the workers start: register the files as partitions, then start the daemon
        run([*COLLATE, "-i", str(input_dir), "--register-only"], env=env, cwd=root, check=True, timeout=120)
        with open(root / "daemon.log", "wb") as out:
            cluster.daemon = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-w", str(WORKSPACE_YAML)],
                cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        cluster.ensure_workers()
        yield cluster
    finally:
        if cluster is not None:
            for _, process in cluster.alone_runs.values():
                if process.poll() is None:
                    process.kill()
                process.communicate()
            if cluster.daemon is not None:
                _stop_group(cluster.daemon, grace=5)
            for worker in cluster.workers.values():
                _stop_group(worker.process, grace=0.5)
        _stop_group(redis_server, grace=5)


def _step_events(instance, run_id: str) -> list[tuple[str, str | None, int | None, float, str]]:
    """(kind, step key, pid, timestamp, detail) of a run's step events, in order; kind `executing` is
    dagster-celery's engine event naming the worker (detail: its hostname)."""
    kinds = {dg.DagsterEventType.ENGINE_EVENT, dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS,
             dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.STEP_UP_FOR_RETRY}
    out = []
    for entry in instance.all_logs(run_id, of_type=kinds):
        event = entry.dagster_event
        if event.event_type == dg.DagsterEventType.ENGINE_EVENT:
            host = event.event_specific_data.metadata.get(CELERY_WORKER)
            if host is None:
                continue
            host = host.value
            out.append(("executing", event.step_key, event.pid, entry.timestamp, host))
        else:
            detail = ""
            if event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                detail = f"{event.event_specific_data.duration_ms / 1000:.2f}"
            out.append((event.event_type_value, event.step_key, event.pid, entry.timestamp, detail))
    return out


def _temporaries(folder: Path) -> list[Path]:
    """Temporary files of atomic writes (`.<name>.<host>-<pid>.<random>.tmp`) anywhere under `folder`."""
    return sorted(p for p in folder.rglob(".*.tmp")) if folder.exists() else []


def test_celery_executor_is_chosen_by_the_environment(monkeypatch, tmp_path):
    """COLLATE_EXECUTOR picks the executor (in-process unless it says celery); the workers' `-y` file
    is valid config of dagster-celery's executor and holds the same settings, broker and visibility
    timeout from the environment, and the redelivery settings of a lost worker."""
    import yaml
    from dagster_celery.cli import get_validated_config

    from collate_assets import executors

    monkeypatch.delenv("COLLATE_EXECUTOR", raising=False)
    assert executors.executor() is dg.in_process_executor
    monkeypatch.setenv("COLLATE_EXECUTOR", "threads")
    with pytest.raises(ValueError, match="COLLATE_EXECUTOR: executor must be one of in_process, celery"):
        executors.executor()
    monkeypatch.setenv("COLLATE_EXECUTOR", "celery")
    monkeypatch.setenv("COLLATE_CELERY_BROKER", "redis://broker.example:6380/2")
    monkeypatch.setenv("COLLATE_CELERY_VISIBILITY_TIMEOUT", "7200")
    chosen = executors.executor()
    assert chosen.name == "celery"
    path = tmp_path / "celery.yaml"
    path.write_text(executors.celery_yaml())
    config = get_validated_config(str(path))  # what `dagster-celery worker start -y` does with it
    assert config["broker"] == config["backend"] == "redis://broker.example:6380/2"
    source = config["config_source"]
    assert source["task_acks_late"] and source["task_retry_on_worker_lost"] and source["task_reject_on_worker_lost"]
    assert source["broker_transport_options"]["visibility_timeout"] == 7200
    assert source["include"] == ["collate_assets.executors"]
    assert yaml.safe_load(path.read_text())["execution"]["config"] == executors.celery_config()
    monkeypatch.setenv("COLLATE_CELERY_VISIBILITY_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="COLLATE_CELERY_VISIBILITY_TIMEOUT"):
        executors.celery_config()


def test_celery_backfill_spreads_over_both_workers(celery_cluster, tmp_path):
    """`dagster job backfill` of BACKFILL_PARTITIONS partitions through the daemon's queue, steps on two Celery workers:
    every run succeeds with its blocking checks, every step ran once, on one worker or the other and
    both took some, and the files are the bytes `collate --no-dagster` writes."""
    cluster = celery_cluster
    cluster.ensure_workers()
    before = {name: worker.succeeded() for name, worker in cluster.workers.items()}
    cluster.start_alone(PARTS)  # the engine alone (another folder, no Dagster) while the backfill command loads
    started = time.perf_counter()
    backfill_id = cluster.backfill(cluster.parts)
    with dg.DagsterInstance.from_config(str(cluster.home)) as instance:
        runs = cluster.wait_for_runs(instance, {"dagster/backfill": backfill_id}, BACKFILL_PARTITIONS, timeout=240)
        seconds = time.perf_counter() - started
        events = {r.run_id: _step_events(instance, r.run_id) for r in runs}
        evaluations = {r.run_id: check_evaluations(instance, r.run_id) for r in runs}
        records = instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))

    intervals = sorted((r.start_time, r.end_time) for r in records)
    assert len(runs) == BACKFILL_PARTITIONS
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [(r.run_id, r.status) for r in runs]
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(cluster.parts)
    for run_id, evaluation in evaluations.items():
        assert {name for _, name in evaluation} == CHECK_NAMES and all(evaluation.values()), (run_id, evaluation)
    hosts = {name: worker.hostname for name, worker in cluster.workers.items()}
    by_host: dict[str, int] = {}
    durations: dict[str, list[float]] = {}
    for run_id, run_events in events.items():
        executing = [(step, host) for kind, step, _, _, host in run_events if kind == "executing"]
        # each step once: on one worker, never handed out twice, never retried
        assert sorted(step for step, _ in executing) == sorted(STEPS), (run_id, run_events)
        assert [kind for kind, *_ in run_events if kind in ("STEP_FAILURE", "STEP_UP_FOR_RETRY")] == [], run_events
        for step, host in executing:
            assert host in hosts.values(), (host, hosts)
            by_host[host] = by_host.get(host, 0) + 1
        for kind, step, _, _, detail in run_events:
            if kind == "STEP_SUCCESS":
                durations.setdefault(step, []).append(float(detail))
    # both workers ran steps, as Dagster recorded it and as each worker's own log says
    assert set(by_host) == set(hosts.values()), by_host
    done = {name: worker.succeeded() - before[name] for name, worker in cluster.workers.items()}
    assert all(done.values()) and sum(done.values()) == BACKFILL_PARTITIONS * len(STEPS), done
    assert {hosts[name]: count for name, count in done.items()} == by_host

    cluster.assert_same_files(PARTS, cluster.parts)
    medians = {step: sorted(d)[len(d) // 2] for step, d in durations.items()}
    print(f"\ncelery backfill: {BACKFILL_PARTITIONS} runs in {seconds:.1f} s from `dagster job backfill` to the last end "
          f"({max(e for _, e in intervals) - min(s for s, _ in intervals):.1f} s first start to last end), steps per worker "
          f"{done}, median step s {medians}, runs (start, end) s after the first start "
          f"{[(round(a - intervals[0][0], 1), round(b - intervals[0][0], 1)) for a, b in intervals]}")


@pytest.fixture(scope="module")
def kill_backfill(celery_cluster) -> str:
    """One backfill of the two kill tests' partitions (one `dagster job backfill` for both); the queue
    runs them one at a time (SERIAL_TAG), in the partitions' order: slow-process's run first, then
    slow-worker's, which waits in the queue while the first test runs."""
    celery_cluster.ensure_workers()
    celery_cluster.start_alone(SLOW)
    return celery_cluster.backfill(sorted(celery_cluster.slow.values()), tags={SERIAL_TAG: "1"})


def _kill_in_the_middle_of_a_step(cluster: Cluster, backfill_id: str, how: str) -> dict:
    """Kill -9 (`process`: the process running the tokenize step of the partition of `how`; `worker`:
    that worker's whole process group) in the middle of the step, then wait for the run to end."""
    cluster.ensure_workers()
    partition = cluster.slow[how]
    stem = partition.removesuffix(".jsonl")
    mine = {"dagster/backfill": backfill_id, "dagster/partition": partition}
    with dg.DagsterInstance.from_config(str(cluster.home)) as instance:
        deadline = time.monotonic() + 120
        started = None
        while started is None:
            assert time.monotonic() < deadline, "the tokenize step never started"
            runs = instance.get_runs(filters=dg.RunsFilter(tags=mine))
            if runs:
                events = _step_events(instance, runs[0].run_id)
                host = next((e[4] for e in events if e[0] == "executing" and e[1] == STEPS[0]), None)
                pid = next((e[2] for e in events if e[0] == "STEP_START" and e[1] == STEPS[0]), None)
                if host and pid:
                    started = (runs[0].run_id, host, pid)
                assert not runs[0].is_finished, events
            time.sleep(0.05)
        run_id, host, pid = started
        victim = next(w for w in cluster.workers.values() if w.hostname == host)
        # Kill once the step is writing its spill (its temporary file is there): in the middle of it.
        writing = f".{stem}.arrow."
        while not any(p.name.startswith(writing) for p in _temporaries(cluster.output_dir)):
            assert time.monotonic() < deadline, "the tokenize step never wrote its spill"
            assert not any(e[0] == "STEP_SUCCESS" for e in _step_events(instance, run_id)), "the step ended before the kill"
            time.sleep(0.02)
        if how == "process":
            assert os.getpgid(pid) == victim.process.pid  # the step runs in the worker's process group
            os.kill(pid, signal.SIGKILL)
        else:
            os.killpg(victim.process.pid, signal.SIGKILL)
            victim.process.wait(10)
        killed_at = time.time()
        left = _temporaries(cluster.output_dir)
        assert not (cluster.output_dir / f"{stem}.arrow").exists()
        runs = cluster.wait_for_runs(instance, mine, 1, timeout=120)
        events = _step_events(instance, run_id)
        tokenized = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(STEPS[0]), asset_partitions=[partition]), limit=1
        ).records
        evaluation = check_evaluations(instance, run_id)
        ended_at = instance.get_run_record_by_id(run_id).end_time
    return {"ended_at": ended_at, "run": runs[0], "events": events, "host": host, "pid": pid, "killed_at": killed_at, "left": left,
            "victim": victim, "partition": partition, "stem": stem, "evaluation": evaluation,
            "workers": tokenized[0].asset_materialization.metadata["workers"].value if tokenized else None}


def _assert_recovered(cluster: Cluster, outcome: dict) -> tuple[str, float, float]:
    """The run succeeded, the step ran twice (the killed attempt never finished), nothing failed, the
    files are the engine's bytes, no temporary file is left. Returns the host of the second attempt
    and the seconds from the kill to its start and to the run's end."""
    run, events = outcome["run"], outcome["events"]
    assert run.status == dg.DagsterRunStatus.SUCCESS, (run.status, events)
    assert {name for _, name in outcome["evaluation"]} == CHECK_NAMES and all(outcome["evaluation"].values())
    tokenize = [e for e in events if e[1] == STEPS[0]]
    executing = [e for e in tokenize if e[0] == "executing"]
    starts = [e for e in tokenize if e[0] == "STEP_START"]
    successes = [e for e in tokenize if e[0] == "STEP_SUCCESS"]
    assert len(executing) == 2 and len(starts) == 2 and len(successes) == 1, events
    assert executing[0][4] == outcome["host"] and starts[0][2] == outcome["pid"], events
    assert starts[1][2] != outcome["pid"] and successes[0][2] == starts[1][2], events  # finished by another process
    assert [e for e in events if e[0] in ("STEP_FAILURE", "STEP_UP_FOR_RETRY")] == [], events
    assert sorted(e[1] for e in events if e[0] == "STEP_SUCCESS") == sorted(STEPS), events
    # the killed attempt was writing (its temporaries were there), and none is left; the outputs are whole
    assert outcome["left"], "no temporary file of the killed attempt: was it killed before writing?"
    assert _temporaries(cluster.output_dir) == []
    cluster.assert_same_files(SLOW, [outcome["partition"]])
    if (os.cpu_count() or 1) > 1 and len(os.sched_getaffinity(0)) > 1:
        # the step tokenized with worker processes of its own, started from inside the Celery worker
        assert outcome["workers"] and outcome["workers"] > 1, outcome["workers"]
    to_rerun = executing[1][3] - outcome["killed_at"]
    to_end = outcome["ended_at"] - outcome["killed_at"]
    return executing[1][4], to_rerun, to_end


def test_celery_step_resent_when_the_process_running_it_is_killed(celery_cluster, kill_backfill):
    """kill -9 of the process running a tokenize step (the worker's main process lives on, as after the
    OOM killer): Celery sends the task again at once (task_retry_on_worker_lost), a new process runs
    the step and the run succeeds with the engine's bytes."""
    outcome = _kill_in_the_middle_of_a_step(celery_cluster, kill_backfill, "process")
    host, to_rerun, to_end = _assert_recovered(celery_cluster, outcome)
    print(f"\ncelery, step process killed on {outcome['host']}: rerun on {host} {to_rerun:.2f} s after the kill, "
          f"run ended {to_end:.1f} s after it")
    assert to_rerun < VISIBILITY_TIMEOUT  # sent again by the worker, not found again by the broker


def test_celery_step_finishes_on_the_other_worker_when_a_worker_is_killed(celery_cluster, kill_backfill):
    """kill -9 of a whole worker (its process group) in the middle of a tokenize step: its task stays
    unacknowledged in Redis (task_acks_late) and goes to the other worker after the visibility timeout;
    the run succeeds with the step finished there, and the files are the engine's bytes."""
    outcome = _kill_in_the_middle_of_a_step(celery_cluster, kill_backfill, "worker")
    host, to_rerun, to_end = _assert_recovered(celery_cluster, outcome)
    print(f"\ncelery, worker {outcome['host']} killed: rerun on {host} {to_rerun:.2f} s after the kill "
          f"(visibility timeout {VISIBILITY_TIMEOUT} s), run ended {to_end:.1f} s after it")
    assert host != outcome["host"] and host == next(w.hostname for w in celery_cluster.workers.values()
                                                      if w is not outcome["victim"])
    assert outcome["victim"].process.poll() is not None
