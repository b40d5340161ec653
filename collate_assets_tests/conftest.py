"""Shared fixtures: the read-only material in ../shared (data sets and tokenizers) and helpers around it.

The material is referenced where it lies, never copied into the checkout. When it is missing, the tests
that need it are skipped with the reason; the others still run.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

# Tokenizers are local folders: never reach for the Hugging Face Hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZER_NAMES = ("SmolLM2-135M-Instruct", "Phi-3-mini-4k-instruct", "Qwen3")
# name of the JSONL file written by `shared_jsonl_dir` -> JSON array it is made from, under SHARED_DIR
SHARED_DATA_FILES = {
    "fastchat": "data/fastchat_dummy_conversation/dummy_conversation.json",
    "kto": "data/llamafactory_kto_en_demo/kto_en_demo.json",
}
# ShareGPT speakers found in the shared data, mapped without the engine (tests compare against it).
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (the shared folder is expected beside the checkout)")
    return path


@functools.cache
def load_shared_tokenizer(name: str):
    """The shared tokenizer `name` loaded with the engine's `load_tokenizer`, once per session."""
    from collate_assets.core import load_tokenizer

    return load_tokenizer(_require(SHARED_DIR / "tokenizers" / name, f"shared tokenizer {name}"))


@functools.cache
def _read_json_array(path: Path) -> tuple:
    return tuple(json.loads(path.read_text(encoding="utf-8")))


def as_role_content(record: dict) -> list[dict]:
    """A shared-data record's messages as [{"role", "content"}] (independent of the engine's reader)."""
    if "messages" in record:
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return [{"role": _SHAREGPT_ROLES[m["from"]], "content": m["value"]} for m in record["conversations"]]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder beside the checkout (skip when absent)."""
    return _require(SHARED_DIR, "shared folder")


@pytest.fixture(scope="session")
def shared_records(shared_dir) -> dict[str, tuple]:
    """The raw records of each shared data set, keyed like the files of `shared_jsonl_dir`."""
    return {key: _read_json_array(_require(shared_dir / rel, f"data set {rel}")) for key, rel in SHARED_DATA_FILES.items()}


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
    return {name: _require(shared_dir / "tokenizers" / name, f"shared tokenizer {name}") for name in TOKENIZER_NAMES}


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


# -- helpers for checking packed outputs (plain functions, importable from the tests) -------------------


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
