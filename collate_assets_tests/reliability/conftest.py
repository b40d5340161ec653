"""Fixtures for the reliability tests: the bad-input corpus, the demo tokenizer, subprocess helpers."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS_DIR = Path(__file__).resolve().parents[1] / "data" / "bad_input"
REPO_ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def corpus() -> dict:
    return json.loads((CORPUS_DIR / "expected.json").read_text(encoding="utf-8"))


def corpus_cases() -> list[dict]:
    return corpus()["cases"]


@functools.cache
def demo_tokenizer(chat_template: str | None = None):
    """The demo tokenizer (fast to load), optionally with a template file of the corpus."""
    from collate_assets.core import load_tokenizer
    from collate_assets.sample import DEMO_TOKENIZER_DIR

    template = CORPUS_DIR / chat_template if chat_template else None
    return load_tokenizer(DEMO_TOKENIZER_DIR, chat_template=template)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a `collate` / `python -c` child: offline, no telemetry, this checkout first."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DAGSTER_DISABLE_TELEMETRY="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        TOKENIZERS_PARALLELISM="true",
    )
    env.update(extra)
    return env


def collate_command(*args: str) -> list[str]:
    """`collate ARGS` as this interpreter runs it (the console script may belong to another one)."""
    return [sys.executable, "-m", "collate_assets.cli", *args]


def run(cmd: list[str], *, env: dict | None = None, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def tokenizer():
    return demo_tokenizer()
