"""End-to-end fixtures: real `collate` / `dagster` subprocesses and a real `dagster dev` server.

Nothing here is mocked. Every command runs in a temporary working folder with a temporary
DAGSTER_HOME, COLLATE_* variables pointing at temporary copies of the demo sample, and
HF_HUB_OFFLINE=1 (tokenizers are local folders). The helpers are plain functions so that other
end-to-end tests (a browser test driving the UI, say) can reuse them:

    make_dagster_home(folder)      a DAGSTER_HOME with an empty dagster.yaml
    copy_demo(folder)              a copy of the embedded demo input files
    make_env(home, ...)            the environment of a subprocess (COLLATE_*, DAGSTER_HOME, offline)
    run(cmd, env=..., cwd=...)     a subprocess with captured output, timing and a timeout
    DagsterDev.start(...)          `dagster dev` on 127.0.0.1:<free port>, waited for until loaded
    graphql(url, query, vars)      one GraphQL POST, raising on errors (http_get: one GET)

and the fixtures `dagster_home`, `demo_input`, `env_builder`, `fastchat_jsonl_dir`,
`smollm2_tokenizer` and `dagster_dev` (module scope).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR

REPO_DIR = Path(__file__).resolve().parents[2]
SHARED_DIR = REPO_DIR.parent / "shared"
WORKSPACE_YAML = REPO_DIR / "workspace.yaml"
FASTCHAT_JSON = SHARED_DIR / "data" / "fastchat_dummy_conversation" / "dummy_conversation.json"
SMOLLM2_DIR = SHARED_DIR / "tokenizers" / "SmolLM2-135M-Instruct"
DEMO_FILES = ("demo.jsonl", "demo_small.jsonl")
LOCATION_NAME = "collate_assets.definitions"  # workspace.yaml loads `python_module: collate_assets.definitions`
REPOSITORY_NAME = "__repository__"  # the repository a `dg.Definitions` becomes
ASSET_JOB = "__ASSET_JOB"  # the implicit job the UI's Materialize button launches

DEV_START_TIMEOUT = 180.0
SENSOR_SECONDS = 3  # COLLATE_SENSOR_SECONDS of the `dagster dev` the tests start (default 30)
DEV_STOP_GRACE = 10.0  # `dagster dev` may ignore SIGTERM for ~25 s while a run is in flight
COMMAND_TIMEOUT = 300.0


# -- commands and environments ---------------------------------------------------------------------


def _console_script(name: str, module: str) -> list[str]:
    """The installed console script beside this interpreter, else `python -m module`."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


COLLATE = _console_script("collate", "collate_assets.cli")
DAGSTER = _console_script("dagster", "dagster")


def make_dagster_home(folder: Path) -> Path:
    """A DAGSTER_HOME: the folder, created, with an empty dagster.yaml (Dagster's SQLite defaults) and
    its SQLite instance already created (see helpers.seed_dagster_home)."""
    from collate_assets_tests.helpers import seed_dagster_home

    folder.mkdir(parents=True, exist_ok=True)
    return seed_dagster_home(folder)


def copy_demo(folder: Path, names: Sequence[str] = DEMO_FILES) -> Path:
    """A writable copy of the embedded demo input files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(DEMO_INPUT_DIR / name, folder / name)
    return folder


def make_env(
    dagster_home: Path,
    *,
    input_dir: Path | None = None,
    output_dir: Path | None = None,
    tokenizer: str | Path | None = None,
    max_length: int | None = None,
    **collate: str | int | Path,
) -> dict[str, str]:
    """The environment of a subprocess: this one without any DAGSTER_HOME / COLLATE_* of the caller,
    plus DAGSTER_HOME, the given COLLATE_* settings (`labels="assistant"` -> COLLATE_LABELS) and
    HF_HUB_OFFLINE=1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLATE_") and k != "DAGSTER_HOME"}
    env.update(HF_HUB_OFFLINE="1", DAGSTER_HOME=str(dagster_home), PYTHONUNBUFFERED="1")
    settings = {"input_dir": input_dir, "output_dir": output_dir, "tokenizer": tokenizer, "max_length": max_length}
    settings.update(collate)
    for name, value in settings.items():
        if value is not None:
            env[f"COLLATE_{name.upper()}"] = str(value)
    return env


@dataclasses.dataclass
class Result:
    """A finished command: its arguments, exit code, output and wall time."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode} after {self.seconds:.1f} s\n"
            f"--- stdout (tail)\n{self.stdout[-3000:]}\n--- stderr (tail)\n{self.stderr[-3000:]}"
        )


def run(
    args: Sequence[str | Path],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float = COMMAND_TIMEOUT,
    check: bool = False,
) -> Result:
    """Run a command to completion (stdin closed) and capture its output; `check` asserts exit 0."""
    argv = [str(a) for a in args]
    started = time.perf_counter()
    proc = subprocess.run(
        argv, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    result = Result(argv, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started)
    if check:
        assert result.returncode == 0, result.describe()
    return result


def assert_no_traceback(text: str) -> None:
    assert "Traceback (most recent call last)" not in text, text
    assert "Stack Trace:" not in text, text


# -- the Dagster instance of a DAGSTER_HOME -----------------------------------------------------------


@contextlib.contextmanager
def open_instance(home: Path) -> Iterator:
    """The DagsterInstance stored in `home` (read in this process, without touching DAGSTER_HOME)."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def latest_materialization(instance, asset: str, partition: str):
    """The latest materialization EventLogRecord of `asset` (a name, or a key path as a list) for `partition`, or None."""
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    return records[0] if records else None


def metadata_values(record) -> dict:
    """{key: plain value} of a materialization record's metadata."""
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def check_evaluations(instance, run_id: str) -> dict[tuple[str, str], bool]:
    """{(asset, check name): passed} of the asset check evaluations a run recorded."""
    import dagster as dg

    out = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.event_specific_data
        out[(evaluation.asset_key.to_user_string(), evaluation.check_name)] = evaluation.passed
    return out


# -- timings shown at the end of the session -------------------------------------------------------------

TIMINGS: list[str] = []


def record_timing(line: str) -> None:
    """Print a measured figure and repeat it in the session's terminal summary."""
    print(line)
    TIMINGS.append(line)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("e2e timings")
        for line in TIMINGS:
            terminalreporter.write_line(line)


# -- GraphQL ------------------------------------------------------------------------------------------


class GraphQLError(RuntimeError):
    pass


# Local servers only: never route 127.0.0.1 through an http_proxy of the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, *, timeout: float = 10.0) -> bytes:
    with _OPENER.open(url, timeout=timeout) as response:
        return response.read()


# A run's status, tags and asset selection, as the UI's run page asks for them.
RUN_QUERY = """
query E2ERun($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status tags { key value } assetSelection { path } }
    ... on PythonError { message }
  }
}
"""


def graphql(url: str, query: str, variables: Mapping | None = None, *, timeout: float = 30.0) -> dict:
    """POST one query to `<url>/graphql` as the UI does; returns `data`, raises GraphQLError on errors."""
    body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json", "Accept": "application/json"}
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise GraphQLError(f"HTTP {exc.code}: {exc.read()[:2000]!r}") from exc
    if payload.get("errors"):
        raise GraphQLError(json.dumps(payload["errors"])[:4000])
    return payload["data"]


WORKSPACE_QUERY = """
query E2EWorkspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { name repositories { name } }
          ... on PythonError { message }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


# -- dagster dev --------------------------------------------------------------------------------------


@dataclasses.dataclass
class DagsterDev:
    """A running `dagster dev -w workspace.yaml` in its own process group."""

    process: subprocess.Popen
    host: str
    port: int
    env: dict[str, str]
    home: Path
    input_dir: Path
    output_dir: Path
    cwd: Path
    log_path: Path
    location_name: str = LOCATION_NAME
    startup_seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def graphql(self, query: str, variables: Mapping | None = None, *, timeout: float = 30.0) -> dict:
        return graphql(self.url, query, variables, timeout=timeout)

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    @classmethod
    def start(
        cls,
        root: Path,
        *,
        register_first: bool = True,
        host: str = "127.0.0.1",
        timeout: float = DEV_START_TIMEOUT,
        **collate_env: str | int | Path,
    ) -> DagsterDev:
        """Start `dagster dev` with everything under `root` and wait until its code location is loaded.

        `root/home` is DAGSTER_HOME, `root/input` a copy of the demo files, `root/output` the output
        folder and `root/cwd` the working folder. With `register_first` the demo files are registered
        as partitions and observed (`collate --register-only`, same DAGSTER_HOME) before the server
        starts, so the first tick of `input_files_sensor` finds no new or changed file; the
        automation sensor builds them at its first evaluation unless `automation=False` is passed
        (COLLATE_AUTOMATION: the sensor starts stopped and tests control every run themselves).
        Without `register_first` the input files sensor registers both files at its first tick.
        """
        home = make_dagster_home(root / "home")
        input_dir = copy_demo(root / "input")
        output_dir = root / "output"
        cwd = root / "cwd"
        cwd.mkdir(parents=True, exist_ok=True)
        # Sensors every 5 s instead of 30: the automation tests wait for ticks, not for work.
        collate_env.setdefault("sensor_seconds", SENSOR_SECONDS)
        env = make_env(home, input_dir=input_dir, output_dir=output_dir, **collate_env)
        if register_first:
            run([*COLLATE, "-i", input_dir, "--register-only"], env=env, cwd=cwd, check=True, timeout=120)
        port = free_port(host)
        log_path = root / "dagster_dev.log"
        started = time.perf_counter()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*DAGSTER, "dev", "-w", str(WORKSPACE_YAML), "-h", host, "-p", str(port)],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(process, host, port, env, home, input_dir, output_dir, cwd, log_path)
        try:
            server._wait_until_loaded(timeout)
        except BaseException:
            server.stop()
            raise
        server.startup_seconds = time.perf_counter() - started
        return server

    def _wait_until_loaded(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"dagster dev exited with {self.process.returncode} before it was ready\n{self.log_tail()}"
                )
            try:
                http_get(f"{self.url}/server_info", timeout=5)
                entries = self.graphql(WORKSPACE_QUERY, timeout=10)["workspaceOrError"].get("locationEntries", [])
            except (OSError, GraphQLError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.5)
                continue
            entry = next((e for e in entries if e["name"] == self.location_name), None)
            if entry is not None and entry["loadStatus"] == "LOADED":
                loaded = entry["locationOrLoadError"] or {}
                if loaded.get("__typename") == "PythonError":
                    raise RuntimeError(f"code location failed to load: {loaded['message']}\n{self.log_tail()}")
                if loaded.get("__typename") == "RepositoryLocation":
                    return
            last = f"location entries: {entries}"
            time.sleep(0.5)
        raise TimeoutError(f"dagster dev not ready after {timeout:.0f} s ({last})\n{self.log_tail()}")

    def stop(self, grace: float = DEV_STOP_GRACE) -> float:
        """SIGTERM the whole process group, SIGKILL it after `grace` seconds; returns the seconds taken."""
        started = time.perf_counter()
        pgid = self.process.pid  # start_new_session: the group is the one this process leads
        if self.process.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (the server, the daemon, code servers, run workers) goes now.
        _signal_group(pgid, signal.SIGKILL)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        return time.perf_counter() - started


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture
def dagster_home(tmp_path) -> Path:
    """A fresh DAGSTER_HOME with an empty dagster.yaml."""
    return make_dagster_home(tmp_path / "dagster_home")


@pytest.fixture
def demo_input(tmp_path) -> Path:
    """A temporary copy of the embedded demo input files (demo.jsonl, demo_small.jsonl)."""
    return copy_demo(tmp_path / "demo_input")


@pytest.fixture(scope="session")
def env_builder():
    """`make_env(dagster_home, input_dir=..., output_dir=..., tokenizer=..., max_length=..., **COLLATE_*)`."""
    return make_env


@pytest.fixture(scope="session")
def demo_tokenizer() -> Path:
    return DEMO_TOKENIZER_DIR


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Path:
    if not (SMOLLM2_DIR / "tokenizer.json").exists():
        pytest.skip(f"shared tokenizer not found at {SMOLLM2_DIR}")
    return SMOLLM2_DIR


@pytest.fixture(scope="session")
def fastchat_jsonl_dir(tmp_path_factory) -> Path:
    """A folder holding only fastchat.jsonl: the shared FastChat JSON array, one record a line."""
    if not FASTCHAT_JSON.exists():
        pytest.skip(f"shared data set not found at {FASTCHAT_JSON}")
    folder = tmp_path_factory.mktemp("fastchat_jsonl")
    records = json.loads(FASTCHAT_JSON.read_text(encoding="utf-8"))
    with open(folder / "fastchat.jsonl", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return folder


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory) -> Iterator[DagsterDev]:
    """`dagster dev` on 127.0.0.1 on a fresh DAGSTER_HOME whose input folder holds the demo files, not
    registered: its sensors register and build them; stopped (process group) at teardown."""
    server = DagsterDev.start(tmp_path_factory.mktemp("dagster_dev"), register_first=False)
    print(f"\ndagster dev ready at {server.url} after {server.startup_seconds:.1f} s (log: {server.log_path})")
    try:
        yield server
    finally:
        seconds = server.stop()
        print(f"\ndagster dev stopped in {seconds:.1f} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failing test that used `dagster_dev`, attach the tail of the server's log to the report."""
    outcome = yield
    report = outcome.get_result()
    server = getattr(item, "funcargs", {}).get("dagster_dev")
    if report.failed and isinstance(server, DagsterDev):
        report.sections.append(("dagster dev log (tail)", server.log_tail(80)))
