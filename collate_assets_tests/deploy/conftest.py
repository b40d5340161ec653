"""Fixtures of the deployment tests: a throwaway PostgreSQL server for Dagster's instance storage.

`postgres` (module scope) starts its own cluster (initdb + pg_ctl from Debian's postgresql package,
which .ci/run installs when missing) on a free loopback port and yields {"port", "log"}; it skips the
module with the reason when the server binaries are missing. `database(postgres, name)` creates an
empty database on it and `storage_yaml(postgres, name)` is the `storage:` block of a dagster.yaml
that points at it. test_postgres.py and test_celery.py import these two helpers from here.
"""

import glob
import os
import shutil
import socket
import subprocess
import textwrap

import pytest


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root, so switch to the package's system user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql; .ci/run does)")
    root = tmp_path_factory.mktemp("pg")
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        os.chmod(root.parent, 0o755)
        os.chmod(root.parent.parent, 0o755)
    port = free_port()
    subprocess.run(
        as_postgres_user([initdb, "-D", str(data), "--auth=trust", "-U", "dagster", "--no-sync"]),
        check=True, capture_output=True,
    )
    log = root / "server.log"
    subprocess.run(
        as_postgres_user([
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
        subprocess.run(as_postgres_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)


def database(postgres: dict, name: str) -> str:
    """A new, empty database on the module's server: each test's instance starts from nothing."""
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(postgres["port"]), "-U", "dagster", "-d", "postgres", "-c", f"CREATE DATABASE {name}"],
        check=True, capture_output=True,
    )
    return name


def storage_yaml(postgres: dict, db_name: str) -> str:
    return textwrap.dedent(f"""\
        storage:
          postgres:
            postgres_db:
              username: dagster
              password: ""
              hostname: 127.0.0.1
              db_name: {db_name}
              port: {postgres['port']}
        """)
