"""Plain helpers and constants the tests import: paths to the shared material, cached loaders, checks
of packed outputs, the bad-input corpus and subprocess helpers.

Test modules import these from here (``from collate_assets_tests.helpers import ...``), never from a
conftest: a conftest holds fixtures only, which pytest injects by name. The conftest files import what
their fixtures need from this module.

The shared material in ``../shared`` beside the checkout (data sets and tokenizers) is referenced where
it lies, never copied into the checkout; when it is missing, ``require`` skips the test with the reason.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Tokenizers are local folders: never reach for the Hugging Face Hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]

# -- the shared material beside the checkout ---------------------------------------------------------

SHARED_DIR = REPO_ROOT.parent / "shared"
TOKENIZER_NAMES = ("SmolLM2-135M-Instruct", "Phi-3-mini-4k-instruct", "Qwen3")
# name of the JSONL file written by the `shared_jsonl_dir` fixture -> JSON array it is made from, under SHARED_DIR
SHARED_DATA_FILES = {
    "fastchat": "data/fastchat_dummy_conversation/dummy_conversation.json",
    "kto": "data/llamafactory_kto_en_demo/kto_en_demo.json",
}
# ShareGPT speakers found in the shared data, mapped without the engine (tests compare against it).
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def require(path: Path, what: str) -> Path:
    """`path`, or skip the calling test when it does not exist (the shared folder may be absent)."""
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (the shared folder is expected beside the checkout)")
    return path


@functools.cache
def load_shared_tokenizer(name: str):
    """The shared tokenizer `name` loaded with the engine's `load_tokenizer`, once per session."""
    from collate_assets.core import load_tokenizer

    return load_tokenizer(require(SHARED_DIR / "tokenizers" / name, f"shared tokenizer {name}"))


@functools.cache
def read_json_array(path: Path) -> tuple:
    """The records of a JSON array file, read once per session."""
    return tuple(json.loads(path.read_text(encoding="utf-8")))


def as_role_content(record: dict) -> list[dict]:
    """A shared-data record's messages as [{"role", "content"}] (independent of the engine's reader)."""
    if "messages" in record:
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return [{"role": _SHAREGPT_ROLES[m["from"]], "content": m["value"]} for m in record["conversations"]]


# -- checking packed outputs --------------------------------------------------------------------------


def split_sequences(row: dict) -> list[tuple[list[int], list[int], list[int]]]:
    """Cut a packed row into its sequences with `seq_lengths`: [(input_ids, labels, position_ids), ...]."""
    out, start = [], 0
    for length in row["seq_lengths"]:
        end = start + length
        out.append((row["input_ids"][start:end], row["labels"][start:end], row["position_ids"][start:end]))
        start = end
    return out


def trained_regions(offsets, labels, ignore_index: int = -100) -> list[tuple[int, int]]:
    """Character ranges of the rendered text covered by runs of consecutive trained tokens."""
    regions: list[tuple[int, int]] = []
    previous = False
    for (start, end), label in zip(offsets, labels):
        trained = label != ignore_index
        if trained and previous:
            regions[-1] = (regions[-1][0], max(regions[-1][1], end))
        elif trained:
            regions.append((start, end))
        previous = trained
    return regions


def slice_matches(trained_text: str, expected: str) -> bool:
    """Whether a trained text slice is `expected` up to whitespace that a neighbouring token owns.

    A special token with rstrip (Phi-3's `<|end|>`, `<|assistant|>`) owns the whitespace after it, and a
    newline token may merge across a boundary, so a slice can start after leading whitespace of
    `expected` (kept by the header) or end with whitespace after it (owned by the end-of-turn token).
    Any other difference, in particular any non-whitespace character, is a mismatch.
    """
    lead = len(expected) - len(expected.lstrip())
    for k in range(lead + 1):
        body = expected[k:]
        if trained_text.startswith(body) and not trained_text[len(body) :].strip():
            return True
    return False


# -- the bad-input corpus and the demo tokenizer (reliability tests) ----------------------------------

CORPUS_DIR = Path(__file__).resolve().parent / "reliability" / "bad_input"  # beside its test, test_bad_input.py


@functools.cache
def corpus() -> dict:
    """The bad-input corpus's `expected.json`: its cases and their expected outcomes."""
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


# -- child processes ----------------------------------------------------------------------------------


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
    """Run `cmd` with `subprocess_env()` (unless `env` is given), capturing its text output."""
    return subprocess.run(cmd, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout, **kwargs)


# -- DAGSTER_HOMEs ------------------------------------------------------------------------------------

_TEMPLATE_HOME: list[Path] = []


def seed_dagster_home(folder: Path) -> Path:
    """`folder` as a DAGSTER_HOME whose SQLite instance (Dagster's default storage) already exists: a copy
    of one created once per session. Creating the schema costs ~1.5-2 s a process; every copy is the same
    empty instance a first command would create. Tests of a first start on a bare home do not use this."""
    if not _TEMPLATE_HOME:
        import dagster as dg

        base = Path(tempfile.mkdtemp(prefix="collate-test-dagster-home-"))
        atexit.register(shutil.rmtree, base, True)
        template = base / "home"
        template.mkdir()
        (template / "dagster.yaml").touch()
        instance = dg.DagsterInstance.from_config(str(template))
        try:
            instance.get_runs(limit=1)
            instance.get_dynamic_partitions("input_files")
        finally:
            instance.dispose()
        _TEMPLATE_HOME.append(template)
    shutil.copytree(_TEMPLATE_HOME[0], folder, dirs_exist_ok=True)
    return folder
