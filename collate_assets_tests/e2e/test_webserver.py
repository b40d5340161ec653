"""A real `dagster dev` driven over GraphQL the way the UI drives it.

The Materialize button of a partitioned asset sends `launchPipelineExecution` for the hidden
`__ASSET_JOB` with the selected assets, their checks and the tag `dagster/partition`; this test
sends the same mutation, follows the run to SUCCESS, then reads the file and the materialization
metadata back over GraphQL.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from .conftest import ASSET_JOB, REPOSITORY_NAME, RUN_QUERY, DagsterDev, open_instance

PARTITION = "demo_small.jsonl"
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
    ... on Sensor { sensorState { status ticks(limit: 1) { status skipReason } } }
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


def test_sensor_runs_and_sees_the_registered_files(dagster_dev):
    """The sensor starts RUNNING; with the files registered before the start it launches nothing."""
    selector = {
        "repositoryLocationName": dagster_dev.location_name,
        "repositoryName": REPOSITORY_NAME,
        "sensorName": "input_files_sensor",
    }

    def first_tick():
        sensor = dagster_dev.graphql(SENSOR_QUERY, {"selector": selector})["sensorOrError"]
        assert sensor["__typename"] == "Sensor", sensor
        return sensor["sensorState"] if sensor["sensorState"]["ticks"] else None

    state = wait_for("the first tick of input_files_sensor", first_tick, timeout=90)
    assert state["status"] == "RUNNING"
    [tick] = state["ticks"]
    assert tick["status"] == "SKIPPED", tick
    assert tick["skipReason"] == "no new, changed or deleted input file"


def test_materialize_a_partition_like_the_ui(dagster_dev):
    from datasets import Dataset

    # 1. the partition exists (registered before the start; the sensor would add it within ~30 s)
    def partition_known():
        [node] = asset_nodes(dagster_dev, [["packed_arrow"]])
        return PARTITION in node["partitionKeys"]

    wait_for(f"partition {PARTITION}", partition_known, timeout=60)

    # 2. what the UI collects before it launches: the job common to the assets and their checks
    nodes = asset_nodes(dagster_dev, SELECTED)
    assert all(ASSET_JOB in node["jobNames"] for node in nodes), nodes
    check_selection = [
        {"assetKey": {"path": node["assetKey"]["path"]}, "name": check["name"]}
        for node in nodes
        if node["assetChecksOrError"]["__typename"] == "AssetChecks"
        for check in node["assetChecksOrError"]["checks"]
        if check["canExecuteIndividually"] == "REQUIRES_MATERIALIZATION" or ASSET_JOB in check["jobNames"]
    ]
    assert {c["name"] for c in check_selection} == {
        "rows_fit_max_length",
        "sequence_boundaries",
        "labels_masked_at_starts",
        "tokens_conserved",
    }

    # 3. the Materialize button's mutation
    execution_params = {
        "mode": "default",
        "runConfigData": "{}",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": PARTITION}]},
        "selector": {
            "repositoryLocationName": dagster_dev.location_name,
            "repositoryName": REPOSITORY_NAME,
            "pipelineName": ASSET_JOB,
            "assetSelection": [{"path": path} for path in SELECTED],
            "assetCheckSelection": check_selection,
        },
    }
    launched = dagster_dev.graphql(LAUNCH_MUTATION, {"executionParams": execution_params})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    started = time.monotonic()

    # 4. follow the run (queued -> started -> success) as the run page does
    def finished():
        run = dagster_dev.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        return run if run["status"] in TERMINAL_STATUSES else None

    run = wait_for(f"run {run_id}", finished, timeout=RUN_TIMEOUT)
    print(f"run {run_id}: {run['status']} {time.monotonic() - started:.1f} s after launch")
    assert run["status"] == "SUCCESS", run
    assert {"key": "dagster/partition", "value": PARTITION} in run["tags"]
    assert sorted(a["path"] for a in run["assetSelection"]) == sorted(SELECTED)

    # 5. the file, and the metadata the UI shows for the partition
    path = dagster_dev.output_dir / "arrow" / "demo_small.arrow"
    ds = Dataset.from_file(str(path))
    assert {"input_ids", "labels", "position_ids", "seq_lengths"} <= set(ds.column_names)
    assert "attention_mask" not in ds.column_names

    variables = {"assetKeys": [{"path": ["packed_arrow"]}], "partitions": [PARTITION]}
    data = dagster_dev.graphql(MATERIALIZATION_QUERY, variables)
    [materialization] = data["assetNodes"][0]["assetMaterializations"]
    assert materialization["runId"] == run_id and materialization["partition"] == PARTITION
    entries = {e["label"]: e for e in materialization["metadataEntries"]}
    assert {"rows", "fill", "tokens"} <= set(entries), sorted(entries)
    assert entries["rows"]["intValue"] == len(ds)
    assert entries["tokens"]["intValue"] == sum(len(ids) for ids in ds["input_ids"])
    assert 0 < entries["fill"]["floatValue"] <= 1

    for check in check_selection:
        variables = {"assetKey": check["assetKey"], "checkName": check["name"], "partition": PARTITION}
        [execution] = dagster_dev.graphql(CHECK_EXECUTIONS_QUERY, variables)["assetCheckExecutions"]
        assert execution["runId"] == run_id and execution["status"] == "SUCCEEDED", (check, execution)

    # the instance on disk says the same (what `collate` and the CLI read)
    with open_instance(dagster_dev.home) as instance:
        assert instance.get_run_by_id(run_id).is_success


RUNS_QUERY = """
query E2ERuns {
  runsOrError {
    __typename
    ... on Runs { results { runId status jobName tags { key value } } }
    ... on PythonError { message }
  }
}
"""


@pytest.mark.skipif(
    not os.environ.get("COLLATE_E2E_SLOW"), reason="set COLLATE_E2E_SLOW=1: ~80 s (two full collate_job runs)"
)
def test_sensor_registers_new_files_and_collates_them(tmp_path):
    """A user's first `dagster dev` on a folder nobody registered: input_files_sensor adds both files
    as partitions and launches one collate_job run (every format, checks included) for each."""
    server = DagsterDev.start(tmp_path, register_first=False)
    try:

        def both_runs_done():
            runs = server.graphql(RUNS_QUERY)["runsOrError"]["results"]
            done = [r for r in runs if r["status"] in TERMINAL_STATUSES]
            return runs if len(runs) >= 2 and len(done) == len(runs) else None

        runs = wait_for("the sensor's runs", both_runs_done, timeout=RUN_TIMEOUT)
    finally:
        server.stop()
    assert {r["jobName"] for r in runs} == {"collate_job"}
    assert all(r["status"] == "SUCCESS" for r in runs), runs
    partitions = sorted(t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition")
    assert partitions == ["demo.jsonl", "demo_small.jsonl"]
    for fmt, ext in (("arrow", "arrow"), ("parquet", "parquet"), ("msgpack", "msgpack"), ("jsonl", "jsonl")):
        for stem in ("demo", "demo_small"):
            assert (server.output_dir / fmt / f"{stem}.{ext}").is_file()
    with open_instance(server.home) as instance:
        assert sorted(instance.get_dynamic_partitions("input_files")) == ["demo.jsonl", "demo_small.jsonl"]
