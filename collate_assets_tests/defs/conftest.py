"""Fixtures for the Dagster layer: a temporary input folder with the demo sample, a real test instance,
and one collated instance (both demo files materialized) shared by the tests that only read it."""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from collate_assets.defs import register_partitions
from collate_assets.defs.assets import PACKED_ASSETS, raw_conversations, tokenized_conversations
from collate_assets.defs.checks import PACKED_CHECKS
from collate_assets.defs.io_managers import io_managers
from collate_assets.defs.resources import CollatePaths, PackingSettings, TokenizerResource
from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Small enough that the demo packs into a handful of rows, large enough for its long conversations
# to exercise truncation.
TEST_MAX_LENGTH = 1024
ALL_ASSETS = [raw_conversations, tokenized_conversations, *PACKED_ASSETS.values(), *PACKED_CHECKS]


def make_resources(input_dir: Path, output_dir: str, max_length: int = TEST_MAX_LENGTH, **paths_extra) -> dict:
    return {
        "paths": CollatePaths(input_dir=str(input_dir), output_dir=output_dir, **paths_extra),
        "tokenizer": TokenizerResource(name_or_path=str(DEMO_TOKENIZER_DIR)),
        "packing": PackingSettings(max_length=max_length),
        **io_managers(),
    }


def copy_demo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("demo.jsonl", "demo_small.jsonl"):
        shutil.copyfile(DEMO_INPUT_DIR / name, folder / name)
    return folder


def materialize_partition(instance, resources: dict, key: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(ALL_ASSETS, instance=instance, partition_key=key, resources=resources)


@dataclass
class Collated:
    instance: dg.DagsterInstance
    input_dir: Path
    output_dir: Path
    resources: dict
    keys: list[str]
    results: dict[str, dg.ExecuteInProcessResult]
    seconds: dict[str, float]


@pytest.fixture(scope="session")
def collated(tmp_path_factory) -> Collated:
    """Both demo files registered and materialized (raw -> tokenized -> four packed formats + checks)."""
    import time

    root = tmp_path_factory.mktemp("collated")
    input_dir = copy_demo(root / "in")
    output_dir = root / "out"
    resources = make_resources(input_dir, str(output_dir))
    with dg.instance_for_test() as instance:
        keys = register_partitions(instance, input_dir)
        results, seconds = {}, {}
        for key in keys:
            start = time.perf_counter()
            results[key] = materialize_partition(instance, resources, key)
            seconds[key] = time.perf_counter() - start
        yield Collated(instance, input_dir, output_dir, resources, keys, results, seconds)
