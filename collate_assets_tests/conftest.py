"""Shared fixtures: the read-only material in ../shared (data sets and tokenizers).

Fixtures only: the plain helpers and constants they use live in `collate_assets_tests.helpers`, and test
modules import them from there. The material is referenced where it lies, never copied into the
checkout. When it is missing, the tests that need it are skipped with the reason; the others still run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collate_assets_tests.helpers import (
    SHARED_DATA_FILES,
    SHARED_DIR,
    TOKENIZER_NAMES,
    as_role_content,
    load_shared_tokenizer,
    read_json_array,
    require,
)

# Transitional: these names (and the ones above) used to be defined here and test modules of defs/ and
# e2e/ may still import them from this conftest; they stay re-exported until every module imports them
# from `collate_assets_tests.helpers`.
from collate_assets_tests.helpers import slice_matches, split_sequences, trained_regions  # noqa: F401


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder beside the checkout (skip when absent)."""
    return require(SHARED_DIR, "shared folder")


@pytest.fixture(scope="session")
def shared_records(shared_dir) -> dict[str, tuple]:
    """The raw records of each shared data set, keyed like the files of `shared_jsonl_dir`."""
    return {key: read_json_array(require(shared_dir / rel, f"data set {rel}")) for key, rel in SHARED_DATA_FILES.items()}


@pytest.fixture(scope="session")
def shared_conversations(shared_records) -> dict[str, list[list[dict]]]:
    """Each data set's conversations as role/content message lists, in file order."""
    return {key: [as_role_content(r) for r in records] for key, records in shared_records.items()}


@pytest.fixture(scope="session")
def shared_jsonl_dir(tmp_path_factory, shared_records) -> Path:
    """A temporary folder with fastchat.jsonl and kto.jsonl: the shared JSON arrays, one record a line."""
    folder = tmp_path_factory.mktemp("shared_jsonl")
    for key, records in shared_records.items():
        with open(folder / f"{key}.jsonl", "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return folder


@pytest.fixture(scope="session")
def tokenizer_paths(shared_dir) -> dict[str, Path]:
    """Name -> folder of each shared tokenizer (skip when one is missing)."""
    return {name: require(shared_dir / "tokenizers" / name, f"shared tokenizer {name}") for name in TOKENIZER_NAMES}


@pytest.fixture(scope="session", name="load_shared_tokenizer")
def load_shared_tokenizer_fixture(shared_dir):
    """`load_shared_tokenizer(name)`: a cached loader of the shared tokenizers."""
    return load_shared_tokenizer


@pytest.fixture(scope="session", params=TOKENIZER_NAMES)
def shared_tokenizer_name(request) -> str:
    """Parametrizes a test over every shared tokenizer."""
    return request.param


@pytest.fixture(scope="session")
def shared_tokenizer(shared_tokenizer_name, load_shared_tokenizer):
    """The shared tokenizer named by `shared_tokenizer_name` (so the test runs once per tokenizer)."""
    return load_shared_tokenizer(shared_tokenizer_name)


@pytest.fixture(autouse=True)
def _no_worker_pool_left_behind():
    """After every test: no worker pool's thread is still running. Python's exit waits for such a thread,
    so one left behind would make the whole suite hang after its last test, with no test to blame."""
    yield
    import threading

    left = [t for t in threading.enumerate() if type(t).__name__ == "_ExecutorManagerThread" and t.is_alive()]
    assert left == [], f"a worker pool was left running: {left}"


def pytest_sessionfinish(session, exitstatus):
    """With COLLATE_TESTS_NO_SKIP=1 (CI sets it: it installs everything the tests use and has ../shared)
    a skipped test fails the session: a suite that passes while skipping part of itself is not green."""
    import os

    if not os.environ.get("COLLATE_TESTS_NO_SKIP") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        for report in skipped:
            reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
            reporter.write_line(f"COLLATE_TESTS_NO_SKIP: {report.nodeid} skipped: {reason}", red=True)
        session.exitstatus = 1
