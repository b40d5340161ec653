"""Fixtures for the Dagster layer: one collated instance (both demo files materialized in all four
formats) shared by the tests that only read it."""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from .helpers import build_dataset_defs, copy_demo, demo_settings, materialize, register

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Collated:
    instance: dg.DagsterInstance
    input_dir: Path
    output_dir: Path
    defs: dg.Definitions
    keys: list[str]
    results: dict[str, dg.ExecuteInProcessResult]
    seconds: dict[str, float]


@pytest.fixture(scope="session")
def collated(tmp_path_factory) -> Collated:
    """Both demo files registered and materialized one run each (tokenized -> four packed formats + checks)."""
    root = tmp_path_factory.mktemp("collated")
    input_dir = copy_demo(root / "in")
    output_dir = root / "out"
    defs = build_dataset_defs(demo_settings(input_dir, output_dir))
    keys = ["demo.jsonl", "demo_small.jsonl"]
    with dg.instance_for_test() as instance:
        register(instance, keys)
        results, seconds = {}, {}
        for key in keys:
            start = time.perf_counter()
            results[key] = materialize(defs, instance, key)
            seconds[key] = time.perf_counter() - start
        yield Collated(instance, input_dir, output_dir, defs, keys, results, seconds)
