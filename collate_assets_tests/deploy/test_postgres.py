"""Dagster instance storage on a real PostgreSQL server (dagster-postgres), as a team deployment uses.

The test starts its own throwaway cluster (initdb + pg_ctl from Debian's postgresql package, which
.ci/run installs when missing), points a DAGSTER_HOME at it, runs two `collate` commands on two
files at the same time (SQLite storage would say "database is locked" here) and reads the runs and
materializations back from Postgres.
"""

import glob
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import dagster as dg
import pytest

from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root, so switch to the package's system user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql; .ci/run does)")
    root = tmp_path_factory.mktemp("pg")
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        os.chmod(root.parent, 0o755)
        os.chmod(root.parent.parent, 0o755)
    port = _free_port()
    subprocess.run(
        _as_postgres_user([initdb, "-D", str(data), "--auth=trust", "-U", "dagster", "--no-sync"]),
        check=True, capture_output=True,
    )
    log = root / "server.log"
    subprocess.run(
        _as_postgres_user([
            pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60",
            "-o", f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off",
            "start",
        ]),
        check=True, capture_output=True,
    )
    try:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "-d", "postgres", "-c", "CREATE DATABASE dagster"],
            check=True, capture_output=True,
        )
        yield {"port": port, "log": log}
    finally:
        subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)


def test_collate_runs_record_into_postgres_storage(postgres, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(textwrap.dedent(f"""\
        storage:
          postgres:
            postgres_db:
              username: dagster
              password: ""
              hostname: 127.0.0.1
              db_name: dagster
              port: {postgres['port']}
        """))
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
        assert sorted(instance.get_dynamic_partitions("input_files")) == ["demo.jsonl", "demo_small.jsonl"]
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        for key in ("demo.jsonl", "demo_small.jsonl"):
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("packed_arrow"), asset_partitions=[key]), limit=1
            ).records[0]
            metadata = record.asset_materialization.metadata
            assert metadata["rows"].value > 0 and 0 < metadata["fill"].value <= 1
    finally:
        instance.dispose()
