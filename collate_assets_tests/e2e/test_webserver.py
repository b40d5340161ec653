"""A real `dagster dev` driven over GraphQL the way the UI drives it.

The Materialize button of a partitioned asset sends `launchPipelineExecution` for the hidden
`__ASSET_JOB` with the selected assets, their checks and the tag `dagster/partition`; a test sends
the same mutation, follows the run to SUCCESS, then reads the file and the materialization metadata
back over GraphQL.

Then what runs by itself, on the same server (the tests build on each other in this order, each
still runs alone): a file dropped into the input folder gets its partition from
`input_files_sensor` and is materialized by the `collate_automation` sensor; an edited file's
partition is rerun by that sensor within two minutes, and no other partition is.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import subprocess
import time

import pytest

from collate_assets.core.plan import key_to_file_name

from .conftest import ASSET_JOB, COLLATE, REPOSITORY_NAME, RUN_QUERY, SENSOR_SECONDS, DagsterDev, open_instance, record_timing
from .conftest import run as run_command

PARTITION = "demo_small.jsonl"
DEMO_PARTITIONS = ("demo.jsonl", "demo_small.jsonl")
CHECK_NAMES = {"rows_fit_max_length", "sequence_boundaries", "labels_masked_at_starts", "tokens_conserved", "lines_accounted"}
SELECTED = [["packed_arrow"], ["tokenized_conversations"]]
RUN_TIMEOUT = 240.0
TERMINAL_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}

# the UI's mutation (ui-core/src/runs/RunUtils.tsx, LAUNCH_PIPELINE_EXECUTION_MUTATION)
LAUNCH_MUTATION = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { id runId pipelineName } }
    ... on PipelineNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
  }
}
"""

ASSET_NODES_QUERY = """
query E2EAssetNodes($assetKeys: [AssetKeyInput!]!) {
  assetNodes(assetKeys: $assetKeys) {
    assetKey { path }
    jobNames
    partitionKeys
    assetChecksOrError {
      __typename
      ... on AssetChecks { checks { name jobNames canExecuteIndividually } }
    }
  }
}
"""


MATERIALIZATION_QUERY = """
query E2EMaterialization($assetKeys: [AssetKeyInput!]!, $partitions: [String!]) {
  assetNodes(assetKeys: $assetKeys) {
    assetMaterializations(partitions: $partitions, limit: 1) {
      runId
      partition
      metadataEntries {
        __typename
        label
        ... on IntMetadataEntry { intValue }
        ... on FloatMetadataEntry { floatValue }
        ... on PathMetadataEntry { path }
        ... on TextMetadataEntry { text }
      }
    }
  }
}
"""

ASSET_QUERY = """
query E2EAsset($assetKey: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $assetKey) {
    __typename
    ... on Asset {
      assetMaterializations(partitions: $partitions, limit: 1) {
        runId
        partition
        metadataEntries { __typename label ... on PathMetadataEntry { path } }
      }
    }
  }
}
"""

CHECK_EXECUTIONS_QUERY = """
query E2ECheckExecutions($assetKey: AssetKeyInput!, $checkName: String!, $partition: String) {
  assetCheckExecutions(assetKey: $assetKey, checkName: $checkName, partition: $partition, limit: 1) {
    runId
    status
  }
}
"""

SENSOR_QUERY = """
query E2ESensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 5) { status skipReason } } }
    ... on PythonError { message }
  }
}
"""


def wait_for(what: str, probe, timeout: float, interval: float = 1.0):
    """Call `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def asset_nodes(server: DagsterDev, paths) -> list[dict]:
    return server.graphql(ASSET_NODES_QUERY, {"assetKeys": [{"path": p} for p in paths]})["assetNodes"]


def test_binds_loopback_only(dagster_dev):
    psutil = pytest.importorskip("psutil")
    listening = [
        c
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == dagster_dev.port
    ]
    assert listening, f"nothing listens on port {dagster_dev.port}"
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
    # and from another address of this machine the port is closed
    others = [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]
    for address in others:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            assert sock.connect_ex((address, dagster_dev.port)) != 0, f"port {dagster_dev.port} answers on {address}"


def test_first_start_builds_the_files_already_there(dagster_dev):
    """A first `dagster dev` on a folder nobody registered (a fresh DAGSTER_HOME): both sensors start
    RUNNING, input_files_sensor adds both files as partitions at its first tick, and the automation
    sensor builds each of them once, without anyone clicking anything and without the nightly tick
    (Dagster's eager() alone leaves partitions there at its first evaluation alone)."""
    server = dagster_dev
    found = []
    for name in DEMO_PARTITIONS:
        sha = hashlib.sha256((server.input_dir / name).read_bytes()).hexdigest()
        found += wait_for(f"the automation sensor's runs of {name}", automation_runs_done(server, name, sha), AUTOMATION_TIMEOUT)
    assert_launched_by_automation(server, found)
    [node] = asset_nodes(server, [["raw_conversations"]])
    assert sorted(node["partitionKeys"]) == sorted(DEMO_PARTITIONS)
    added = [r for t in sensor_state(server, INPUT_SENSOR)["sensorState"]["ticks"]
             for r in t["dynamicPartitionsRequestResults"] if r["type"] == "ADD_PARTITIONS"]
    assert sorted(k for r in added for k in r["partitionKeys"]) == sorted(DEMO_PARTITIONS), added
    sensor = sensor_state(server, AUTOMATION_SENSOR)
    assert sensor["sensorType"] in {"AUTO_MATERIALIZE", "AUTOMATION"}, sensor  # an automation condition sensor
    assert sensor["sensorState"]["status"] == "RUNNING"
    # each file once: one materialization of each asset per partition, and nothing more once idle
    wait_idle(server)
    automation_evaluations_after(server, max(latest_update(server, name) for name in DEMO_PARTITIONS))
    counts = {key: len(events) for key, events in materializations(server, list(DEMO_PARTITIONS)).items()}
    assert set(counts.values()) == {1}, counts
    for stem in ("demo", "demo_small"):
        assert (server.output_dir / f"{stem}.arrow").is_file()


def ui_check_selection(server: DagsterDev, selected=SELECTED) -> list[dict]:
    """What the UI collects before it launches: the checks of the selected assets that run with them."""
    nodes = asset_nodes(server, selected)
    assert all(ASSET_JOB in node["jobNames"] for node in nodes), nodes
    return [
        {"assetKey": {"path": node["assetKey"]["path"]}, "name": check["name"]}
        for node in nodes
        if node["assetChecksOrError"]["__typename"] == "AssetChecks"
        for check in node["assetChecksOrError"]["checks"]
        if check["canExecuteIndividually"] == "REQUIRES_MATERIALIZATION" or ASSET_JOB in check["jobNames"]
    ]


def ui_materialize(server: DagsterDev, partition: str, check_selection: list[dict], selected=SELECTED) -> dict:
    """The Materialize button's mutation for one partition, followed to the end as the run page does."""
    execution_params = {
        "mode": "default",
        "runConfigData": "{}",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        "selector": {
            "repositoryLocationName": server.location_name,
            "repositoryName": REPOSITORY_NAME,
            "pipelineName": ASSET_JOB,
            "assetSelection": [{"path": path} for path in selected],
            "assetCheckSelection": check_selection,
        },
    }
    launched = server.graphql(LAUNCH_MUTATION, {"executionParams": execution_params})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    started = time.monotonic()

    def finished():
        run = server.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        return run if run["status"] in TERMINAL_STATUSES else None

    run = wait_for(f"run {run_id}", finished, timeout=RUN_TIMEOUT)
    print(f"run {run_id}: {run['status']} {time.monotonic() - started:.1f} s after launch")
    return run


def test_materialize_a_partition_like_the_ui(dagster_dev):
    from datasets import Dataset

    # 1. the partition exists (registered before the start; the sensor would add it at its first tick)
    def partition_known():
        [node] = asset_nodes(dagster_dev, [["packed_arrow"]])
        return PARTITION in node["partitionKeys"]

    wait_for(f"partition {PARTITION}", partition_known, timeout=60)
    wait_idle(dagster_dev)  # the automation's first runs (test above) are over

    # 2. what the UI collects before it launches: the job common to the assets and their checks
    check_selection = ui_check_selection(dagster_dev)
    assert {c["name"] for c in check_selection} == CHECK_NAMES
    # the checks belong to packed_arrow (check specs evaluated in its step), not to a job of their own
    assert {tuple(c["assetKey"]["path"]) for c in check_selection} == {("packed_arrow",)}

    # 3. the Materialize button's mutation; 4. follow the run (queued -> started -> success)
    run = ui_materialize(dagster_dev, PARTITION, check_selection)
    run_id = run["runId"]
    assert run["status"] == "SUCCESS", run
    assert {"key": "dagster/partition", "value": PARTITION} in run["tags"]
    assert sorted(a["path"] for a in run["assetSelection"]) == sorted(SELECTED)

    # 5. the file (one layout: <output>/<name>.<ext>, rejects beside, spill in .collate_tokenized),
    #    and the metadata the UI shows for the partition
    output = dagster_dev.output_dir
    path = output / "demo_small.arrow"
    ds = Dataset.from_file(str(path))
    assert {"input_ids", "labels", "position_ids", "seq_lengths"} <= set(ds.column_names)
    assert "attention_mask" not in ds.column_names
    assert (output / "demo_small.rejects.jsonl").is_file()
    assert (output / ".collate_tokenized" / "demo_small.manifest.json").is_file()
    assert not (output / "arrow").exists() and not (output / "_tokenized").exists()

    variables = {"assetKeys": [{"path": ["packed_arrow"]}], "partitions": [PARTITION]}
    data = dagster_dev.graphql(MATERIALIZATION_QUERY, variables)
    [materialization] = data["assetNodes"][0]["assetMaterializations"]
    assert materialization["runId"] == run_id and materialization["partition"] == PARTITION
    entries = {e["label"]: e for e in materialization["metadataEntries"]}
    assert {"rows", "fill", "tokens"} <= set(entries), sorted(entries)
    assert entries["rows"]["intValue"] == len(ds)
    assert entries["tokens"]["intValue"] == sum(len(ids) for ids in ds["input_ids"])
    assert 0 < entries["fill"]["floatValue"] <= 1
    assert entries["path"]["path"] == str(path)

    for check in check_selection:
        variables = {"assetKey": check["assetKey"], "checkName": check["name"], "partition": PARTITION}
        [execution] = dagster_dev.graphql(CHECK_EXECUTIONS_QUERY, variables)["assetCheckExecutions"]
        assert execution["runId"] == run_id and execution["status"] == "SUCCEEDED", (check, execution)

    # the instance on disk says the same (what `collate` and the CLI read); one process, no check step
    with open_instance(dagster_dev.home) as instance:
        assert instance.get_run_by_id(run_id).is_success
        steps = {s.step_key for s in instance.get_run_step_stats(run_id)}
        assert steps == {"tokenized_conversations", "packed_arrow"}, steps


# -- what runs by itself: the input files sensor makes partitions, the automation sensor runs them ------

INPUT_SENSOR = "input_files_sensor"
AUTOMATION_SENSOR = "collate_automation"
NEW_FILE = "arrived_later.jsonl"  # dropped into the input folder while `dagster dev` runs
NEW_FILE_LINES = 24  # the first records of demo.jsonl
EDITED_SMALL_LINES = 20  # an edit of demo_small.jsonl keeps its first 20 records (of 40)
# The input sensor's tick, then the automation sensor's (every 3 s here: COLLATE_SENSOR_SECONDS), then the run.
AUTOMATION_TIMEOUT = 180.0
EDIT_RERUN_TIMEOUT = 120.0  # "an edited file reruns within two minutes"
ACTIVE_STATUSES = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}

SENSOR_TICKS_QUERY = """
query E2ESensorTicks($selector: SensorSelector!, $limit: Int) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor {
      sensorType
      sensorState {
        status
        ticks(limit: $limit) {
          status timestamp endTimestamp skipReason runIds
          error { message }
          dynamicPartitionsRequestResults { partitionsDefName partitionKeys type }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

RUNS_QUERY = """
query E2ERuns($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs {
      results { runId status jobName creationTime endTime tags { key value } assetSelection { path } }
    }
    ... on PythonError { message }
  }
}
"""

MATERIALIZATIONS_QUERY = """
query E2EMaterializations($assetKeys: [AssetKeyInput!]!, $partitions: [String!]) {
  assetNodes(assetKeys: $assetKeys) {
    assetKey { path }
    assetMaterializations(partitions: $partitions) {
      runId
      partition
      timestamp
      metadataEntries {
        __typename
        label
        ... on IntMetadataEntry { intValue }
        ... on TextMetadataEntry { text }
      }
    }
  }
}
"""


def sensor_state(server: DagsterDev, name: str, limit: int = 30) -> dict:
    selector = {"repositoryLocationName": server.location_name, "repositoryName": REPOSITORY_NAME, "sensorName": name}
    sensor = server.graphql(SENSOR_TICKS_QUERY, {"selector": selector, "limit": limit})["sensorOrError"]
    assert sensor["__typename"] == "Sensor", sensor
    return sensor


def runs(server: DagsterDev, **tags: str) -> list[dict]:
    """The runs of the instance (those with these tags), newest first."""
    variables = {"filter": {"tags": [{"key": k, "value": v} for k, v in tags.items()]}} if tags else {}
    result = server.graphql(RUNS_QUERY, variables)["runsOrError"]
    assert result["__typename"] == "Runs", result
    return result["results"]


def partition_runs(server: DagsterDev, partition: str) -> list[dict]:
    return runs(server, **{"dagster/partition": partition})


def run_tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def materializations(server: DagsterDev, partitions: list[str]) -> dict[tuple[str, str], list[dict]]:
    """{(asset, partition): materializations, newest first} of tokenized_conversations and packed_arrow."""
    variables = {"assetKeys": [{"path": p} for p in SELECTED], "partitions": partitions}
    out = {(path[0], partition): [] for path in SELECTED for partition in partitions}
    for node in server.graphql(MATERIALIZATIONS_QUERY, variables)["assetNodes"]:
        for event in node["assetMaterializations"]:
            out[(node["assetKey"]["path"][0], event["partition"])].append(event)
    for events in out.values():
        events.sort(key=lambda e: float(e["timestamp"]), reverse=True)
    return out


def entries(event: dict) -> dict:
    """{label: value} of a materialization's int and text metadata."""
    return {e["label"]: e.get("intValue", e.get("text")) for e in event["metadataEntries"]}


def sample_records(name: str) -> list[str]:
    """The lines (records) of one of the embedded demo files."""
    from collate_assets.sample import DEMO_INPUT_DIR

    return (DEMO_INPUT_DIR / name).read_text(encoding="utf-8").splitlines(keepends=True)


def put_input_file(server: DagsterDev, name: str, lines: list[str]) -> str:
    """Write an input file whole (made beside the input folder, then renamed into it, so the sensor
    never reads half of it); returns its sha256."""
    staged = server.input_dir.parent / f"{name}.staged"
    staged.write_text("".join(lines), encoding="utf-8")
    os.replace(staged, server.input_dir / name)
    return hashlib.sha256((server.input_dir / name).read_bytes()).hexdigest()


def automation_runs_done(server: DagsterDev, partition: str, want_sha: str):
    """A probe: the runs of `partition` once none is active and packed_arrow holds the file `want_sha`."""

    def probe():
        found = partition_runs(server, partition)
        if any(r["status"] in {"FAILURE", "CANCELED"} for r in found):
            return found  # reported by the caller's assertions
        if not found or any(r["status"] not in TERMINAL_STATUSES for r in found):
            return None
        latest = materializations(server, [partition])[("packed_arrow", partition)]
        return found if latest and entries(latest[0]).get("input_sha256") == want_sha else None

    return probe


def assert_launched_by_automation(server: DagsterDev, found: list[dict]) -> None:
    """Each run succeeded, carries the automation sensor's tags and is among its ticks' runs (or of a
    backfill among them: a tick that requests several partitions at once launches a backfill); none
    is the input files sensor's (whose ticks request no run at all)."""
    launched = {
        run_id for tick in sensor_state(server, AUTOMATION_SENSOR, limit=100)["sensorState"]["ticks"] for run_id in tick["runIds"]
    }
    input_ticks = sensor_state(server, INPUT_SENSOR, limit=100)["sensorState"]["ticks"]
    assert all(tick["runIds"] == [] for tick in input_ticks), input_ticks
    for run in found:
        tags = run_tags(run)
        assert run["status"] == "SUCCESS", run
        assert tags.get("dagster/sensor_name") == AUTOMATION_SENSOR, tags
        assert tags.get("dagster/from_automation_condition") == "true", tags
        assert {run["runId"], tags.get("dagster/backfill")} & launched, (run["runId"], tags, launched)


def collate_new_file(server: DagsterDev) -> tuple[list[dict], float]:
    """Drop NEW_FILE into the input folder (unless a test before did) and wait until the automation
    sensor has collated it; returns its runs and the seconds waited."""
    started = time.monotonic()
    path = server.input_dir / NEW_FILE
    sha = put_input_file(server, NEW_FILE, sample_records("demo.jsonl")[:NEW_FILE_LINES]) if not path.exists() else (
        hashlib.sha256(path.read_bytes()).hexdigest()
    )
    found = wait_for(f"the automation sensor's runs of {NEW_FILE}", automation_runs_done(server, NEW_FILE, sha), AUTOMATION_TIMEOUT)
    return found, time.monotonic() - started


def test_new_file_gets_a_partition_from_the_sensor_and_automation_collates_it(dagster_dev):
    """A file dropped into the input folder while `dagster dev` runs: input_files_sensor adds its
    partition (and observes it) without requesting any run; the collate_automation sensor (running by
    default) materializes tokenized_conversations and packed_arrow for it, the format asked for, and
    for nothing else."""
    from datasets import Dataset

    server = dagster_dev
    assert not (server.input_dir / NEW_FILE).exists(), "this test drops the file itself"
    demo_runs = {r["runId"] for r in partition_runs(server, "demo.jsonl")}
    found, seconds = collate_new_file(server)

    # the partition came from the input files sensor, in a tick that requested no run
    added = [
        tick
        for tick in sensor_state(server, INPUT_SENSOR)["sensorState"]["ticks"]
        for result in tick["dynamicPartitionsRequestResults"]
        if result["type"] == "ADD_PARTITIONS" and NEW_FILE in (result["partitionKeys"] or [])
    ]
    assert len(added) == 1 and added[0]["runIds"] == [], added
    [node] = asset_nodes(server, [["packed_arrow"]])
    assert NEW_FILE in node["partitionKeys"]

    # the runs came from the automation sensor, for the asked assets of this partition only
    assert_launched_by_automation(server, found)
    selected = sorted({tuple(a["path"]) for r in found for a in r["assetSelection"]})
    assert selected == [("packed_arrow",), ("tokenized_conversations",)], found
    record_timing(f"webserver: {NEW_FILE} dropped -> partition and automation runs done in {seconds:.1f} s ({len(found)} run(s))")

    # the files, in the one layout; formats not asked for (COLLATE_FORMATS=arrow) are not written
    output = server.output_dir
    ds = Dataset.from_file(str(output / "arrived_later.arrow"))
    assert {"input_ids", "labels", "position_ids", "seq_lengths"} <= set(ds.column_names)
    assert (output / "arrived_later.rejects.jsonl").is_file()
    assert (output / ".collate_tokenized" / "arrived_later.manifest.json").is_file()
    for ext in ("parquet", "msgpack", "jsonl"):
        assert not (output / f"arrived_later.{ext}").exists(), ext
    events = materializations(server, [NEW_FILE])
    [tokenized] = events[("tokenized_conversations", NEW_FILE)]
    [packed] = events[("packed_arrow", NEW_FILE)]
    assert {tokenized["runId"], packed["runId"]} <= {r["runId"] for r in found}
    assert entries(tokenized)["lines_read"] == NEW_FILE_LINES
    assert entries(packed)["rows"] == len(ds)

    # demo.jsonl, built when the server started, was not run again
    assert {r["runId"] for r in partition_runs(server, "demo.jsonl")} == demo_runs


def why_requested(server: DagsterDev, partition: str, limit: int = 40) -> str:
    """For a failure message: each automation evaluation that requested `partition`, and which of the
    condition's branches (eager, input changed, ...) held for it, read from the instance."""
    import dagster as dg

    def keys(node) -> set:
        ranges = getattr(node.true_subset.value, "key_ranges", None)  # dynamic partitions: ranges of keys
        if ranges is not None:
            return {r.start for r in ranges} | {r.end for r in ranges}
        return set(node.true_subset.value.get_partition_keys())

    lines = []
    with open_instance(server.home) as instance:
        for asset in ("tokenized_conversations", "packed_arrow"):
            records = instance.schedule_storage.get_auto_materialize_asset_evaluations(dg.AssetKey(asset), limit=limit)
            for record in reversed(records):
                evaluation = record.get_evaluation_with_run_ids().evaluation
                if partition in keys(evaluation):
                    branches = [c.condition_snapshot.label or c.condition_snapshot.name
                                for c in evaluation.child_evaluations if partition in keys(c)]
                    lines.append(f"{asset}: evaluation {record.evaluation_id} at {record.timestamp:.1f} requested it: {', '.join(branches)}")
    return "\n".join(lines)


def wait_idle(server: DagsterDev) -> None:
    wait_for("no run in progress", lambda: not any(r["status"] in ACTIVE_STATUSES for r in runs(server)), RUN_TIMEOUT)


def automation_evaluations_after(server: DagsterDev, timestamp: float, timeout: float = 90.0) -> list[dict]:
    """The finished ticks of the automation sensor that started after `timestamp` (waits for one)."""

    def finished_after():
        ticks = sensor_state(server, AUTOMATION_SENSOR)["sensorState"]["ticks"]
        return [t for t in ticks if t["timestamp"] > timestamp and t["status"] in {"SUCCESS", "SKIPPED", "FAILURE"}]

    return wait_for("an evaluation of collate_automation", finished_after, timeout=timeout)


def latest_update(server: DagsterDev, partition: str) -> float:
    """When the partition's tokenized_conversations / packed_arrow were last materialized (epoch seconds)."""
    stamps = [float(e["timestamp"]) / 1000 for events in materializations(server, [partition]).values() for e in events]
    return max(stamps, default=0.0)


def observe_now(server: DagsterDev) -> None:
    """Record the input files' observations at once, as the input files sensor would at its next tick."""
    run_command([*COLLATE, "-i", server.input_dir, "--register-only"], env=server.env, cwd=server.cwd, check=True, timeout=120)


def edit_and_wait_for_rerun(server: DagsterDev, partition: str, lines: list[str], *, observe: bool = False) -> tuple[list[dict], float]:
    """Rewrite an input file, wait until the automation sensor has rerun its partition with the new
    bytes (EDIT_RERUN_TIMEOUT); returns the runs since the edit and the seconds it took."""
    runs_before = {r["runId"] for r in runs(server)}
    sha = put_input_file(server, key_to_file_name(partition), lines)
    edited = time.monotonic()
    if observe:
        observe_now(server)
    wait_for(f"the automatic rerun of the edited {partition}", automation_runs_done(server, partition, sha), EDIT_RERUN_TIMEOUT)
    seconds = time.monotonic() - edited
    new_runs = [r for r in runs(server) if r["runId"] not in runs_before]
    assert new_runs, f"{partition} holds the edited file's outputs but no run made them"
    assert_launched_by_automation(server, new_runs)
    latest = entries(materializations(server, [partition])[("tokenized_conversations", partition)][0])
    assert latest["input_sha256"] == sha and latest["lines_read"] == len(lines), latest
    return new_runs, seconds


def test_edited_file_reruns_by_itself_and_nothing_else(dagster_dev):
    """Editing an input file makes its partition stale (the sensor observes a new sha256 as the data
    version of raw_conversations): the automation sensor reruns tokenized_conversations and
    packed_arrow of that partition within two minutes, once, and no other partition.

    The file is then edited again right after that rerun (its observation recorded at once, as
    `collate --register-only` does): the second edit falls in the automation interval that follows
    the request of the first rerun, where the same evaluation sees the partition newly
    requested/updated (what "handled" means to `AutomationCondition.eager().since_last_handled()`)
    and its input newly updated. It is rerun again as well (as of 5cd67f8 the reset won, and the
    partition stayed stale until the file changed again).
    """
    server = dagster_dev
    collate_new_file(server)  # another partition, materialized by automation (done if the test above ran)
    if not materializations(server, [PARTITION])[("packed_arrow", PARTITION)]:  # the UI test's partition
        assert ui_materialize(server, PARTITION, ui_check_selection(server))["status"] == "SUCCESS"
    wait_idle(server)
    # The first edit comes after the automation interval that follows the partition's own run.
    automation_evaluations_after(server, latest_update(server, PARTITION))
    partitions = [PARTITION, NEW_FILE, "demo.jsonl"]
    before = {key: len(events) for key, events in materializations(server, partitions).items()}
    assert before[("packed_arrow", NEW_FILE)] >= 1 and before[("packed_arrow", PARTITION)] >= 1, before
    runs_before = {r["runId"] for r in runs(server)}

    records = sample_records(PARTITION)
    _, rerun_seconds = edit_and_wait_for_rerun(server, PARTITION, records[:EDITED_SMALL_LINES])
    record_timing(f"webserver: edited {PARTITION} rerun by automation {rerun_seconds:.1f} s after the edit")
    new_runs, seconds = edit_and_wait_for_rerun(server, PARTITION, records[: EDITED_SMALL_LINES + 2], observe=True)
    record_timing(f"webserver: {PARTITION} edited again right after its rerun, rerun {seconds:.1f} s after the edit")

    # one more evaluation of the automation sensor after the reruns ended: it starts nothing else
    ended = max(float(r["endTime"]) for r in new_runs)
    later_ticks = automation_evaluations_after(server, ended)
    wait_idle(server)

    # the runs since the first edit: the edited partition's, launched by automation
    since = [r for r in runs(server) if r["runId"] not in runs_before]
    assert {run_tags(r).get("dagster/partition") for r in since} == {PARTITION}, since
    assert_launched_by_automation(server, since)
    assert all(t["runIds"] == [] for t in later_ticks), (later_ticks, why_requested(server, PARTITION))

    # per partition: the edited one materialized once per edit, the others not at all
    after = {key: len(events) for key, events in materializations(server, partitions).items()}
    # once per edit, both (packed_arrow was once packed a third time, alone: its own "input changed"
    # read an observation recorded between its evaluation and tokenized_conversations'; see automation.py)
    for asset in ("tokenized_conversations", "packed_arrow"):
        assert after[(asset, PARTITION)] == before[(asset, PARTITION)] + 2, (asset, before, after, why_requested(server, PARTITION))
    for asset in ("tokenized_conversations", "packed_arrow"):
        for other in (NEW_FILE, "demo.jsonl"):
            assert after[(asset, other)] == before[(asset, other)], (asset, other, before, after)
    from datasets import Dataset

    latest_packed = entries(materializations(server, [PARTITION])[("packed_arrow", PARTITION)][0])
    assert latest_packed["rows"] == len(Dataset.from_file(str(server.output_dir / "demo_small.arrow")))


def test_collate_beside_dagster_dev_is_a_dataset_of_its_own(dagster_dev, tmp_path):
    """`collate -i OTHER -o OUT` on the DAGSTER_HOME of a running `dagster dev` (its daemon ticking
    every 5 s) is a dataset of its own: its partitions and materializations are under its own keys,
    the UI dataset's sensor neither sees nor drops them, its automation runs nothing of them, and no
    run fails. `collate --dataset default` then builds the UI's dataset itself: everything is up to date.
    """
    from datasets import Dataset

    server = dagster_dev
    wait_idle(server)
    [node] = asset_nodes(server, [["raw_conversations"]])
    partitions_before = sorted(node["partitionKeys"])
    runs_before = {r["runId"] for r in runs(server)}
    other, out = tmp_path / "other", tmp_path / "cli out"
    other.mkdir()
    (other / "ok.jsonl").write_text("".join(sample_records("demo_small.jsonl")[:10]), encoding="utf-8")
    (other / "trunc.jsonl.gz").write_bytes(gzip.compress("".join(sample_records("demo.jsonl")[:5]).encode()))

    # while the daemon ticks: two commands at once on the same instance, each its own dataset
    commands = [[*COLLATE, "-i", other, "-o", out, "-q"], [*COLLATE, "-i", other / "*.jsonl", "-o", tmp_path / "glob", "-q"]]
    procs = [subprocess.Popen([str(a) for a in c], env=server.env, cwd=server.cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL) for c in commands]
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, (proc.args, stdout, stderr)
    ended = time.time()
    names = [line.split("recorded as dataset ", 1)[1].split()[0] for _, stderr in outputs for line in stderr.splitlines()
             if "recorded as dataset" in line]
    assert len(names) == 2 and names[0] != names[1] and all(n.startswith("cli_") for n in names), outputs
    assert Dataset.from_file(str(out / "ok.arrow")).num_rows >= 1 and (out / "trunc.arrow").is_file()
    assert (tmp_path / "glob" / "ok.arrow").is_file() and not (tmp_path / "glob" / "trunc.arrow").exists()

    # two evaluations of each sensor later: the UI's partitions are the same, nothing ran, nothing failed
    automation_evaluations_after(server, ended + SENSOR_SECONDS)
    [node] = asset_nodes(server, [["raw_conversations"]])
    assert sorted(node["partitionKeys"]) == partitions_before
    ticks = sensor_state(server, INPUT_SENSOR)["sensorState"]["ticks"]
    assert not any(r["type"] == "DELETE_PARTITIONS" for t in ticks for r in t["dynamicPartitionsRequestResults"]), ticks
    new_runs = [r for r in runs(server) if r["runId"] not in runs_before]
    assert all(r["status"] == "SUCCESS" for r in new_runs), new_runs
    assert {run_tags(r).get("collate/dataset") for r in new_runs} == set(names), new_runs
    assert {run_tags(r).get("collate/input") for r in new_runs} == {str(other), str(other / "*.jsonl")}, new_runs
    # the UI shows the command's outputs under its own asset keys (assets of the instance, in no code
    # location), with the file it wrote
    for name, folder in zip(names, (out, tmp_path / "glob")):
        asset = server.graphql(ASSET_QUERY, {"assetKey": {"path": [name, "packed_arrow"]}, "partitions": ["ok.jsonl"]})["assetOrError"]
        assert asset["__typename"] == "Asset", asset
        [event] = asset["assetMaterializations"]
        assert {e["label"]: e.get("path") for e in event["metadataEntries"]}["path"] == str(folder / "ok.arrow")
    assert materializations(server, ["ok.jsonl"])[("packed_arrow", "ok.jsonl")] == []

    # the UI's own dataset from the command line: up to date, nothing launched
    result = run_command([*COLLATE, "--dataset", "default", "-q"], env=server.env, cwd=server.cwd, timeout=240)
    assert result.returncode == 0, result.describe()
    assert "unchanged since their last run" in result.stderr and "recorded as dataset default" in result.stderr, result.describe()
