"""The embedded demo sample: the demo tokenizer loads and round-trips, the conversations are
well-formed in all three input shapes, and the build script reproduces the committed files."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR, SAMPLE_DIR  # noqa: E402

# The builder is a script outside the package (scripts/ is not a package): load it by its path.
BUILD_DEMO_PATH = Path(__file__).resolve().parent.parent / "scripts" / "build_demo.py"


def _load_build_demo():
    spec = importlib.util.spec_from_file_location("build_demo", BUILD_DEMO_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_demo = _load_build_demo()

SAMPLE_FILES = ("demo.jsonl", "demo_small.jsonl")
FIELDS = ("conversation", "messages", "conversations")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


@functools.cache
def demo_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_TOKENIZER_DIR)


def read_records(name: str) -> list[dict]:
    lines = (DEMO_INPUT_DIR / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def as_messages(record: dict) -> list[dict]:
    """Role/content messages of a record, mapped here rather than by the engine's reader."""
    if "conversations" in record:
        return [{"role": SHAREGPT_ROLES[m["from"]], "content": m["value"]} for m in record["conversations"]]
    return record.get("conversation") or record["messages"]


def all_conversations() -> list[list[dict]]:
    return [as_messages(r) for name in SAMPLE_FILES for r in read_records(name)]


def test_paths_point_into_the_package():
    assert DEMO_INPUT_DIR == SAMPLE_DIR / "conversations"
    assert DEMO_TOKENIZER_DIR == SAMPLE_DIR / "tokenizer"
    assert sorted(p.name for p in DEMO_INPUT_DIR.glob("*.jsonl")) == sorted(SAMPLE_FILES)


def test_demo_tokenizer_loads_as_fast_tokenizer_with_chat_template():
    tok = demo_tokenizer()
    assert tok.is_fast
    assert tok.chat_template
    assert len(tok) == build_demo.VOCAB_SIZE
    assert tok.bos_token is None
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|pad|>"
    assert tok.model_max_length == 8192
    for special in build_demo.SPECIAL_TOKENS:
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [special]
    # No BOS/EOS added around plain text.
    assert tok.decode(tok("hello world")["input_ids"]) == "hello world"


def test_chat_template_renders_chatml():
    tok = demo_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_apply_chat_template_round_trips_on_the_sample():
    tok = demo_tokenizer()
    conversations = all_conversations()
    # A system prompt, non-ASCII text, code, and the longest conversation.
    chosen = [
        next(c for c in conversations if c[0]["role"] == "system"),
        next(c for c in conversations if any(ord(ch) > 0x3000 for m in c for ch in m["content"])),
        next(c for c in conversations if any("```" in m["content"] for m in c)),
        max(conversations, key=lambda c: sum(len(m["content"]) for m in c)),
    ]
    for messages in chosen:
        text = tok.apply_chat_template(messages, tokenize=False)
        assert text == build_demo.render_chatml(messages)
        ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
        assert tok.decode(ids) == text
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert ids.count(tok.convert_tokens_to_ids("<|im_end|>")) == len(messages)


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_sample_lines_are_well_formed(name):
    raw = (DEMO_INPUT_DIR / name).read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.decode("utf-8").split("\n")[:-1]
    assert len(lines) == {"demo.jsonl": build_demo.MAIN_COUNT, "demo_small.jsonl": build_demo.SMALL_COUNT}[name]
    for number, line in enumerate(lines, 1):
        record = json.loads(line)
        present = [f for f in FIELDS if f in record]
        assert len(present) == 1, f"{name}:{number} has fields {present}"
        field = present[0]
        messages = record[field]
        assert isinstance(messages, list) and messages, f"{name}:{number}"
        if field == "conversations":
            assert all(set(m) == {"from", "value"} and m["from"] in SHAREGPT_ROLES for m in messages)
        else:
            assert all(set(m) == {"role", "content"} for m in messages)
        messages = as_messages(record)
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages), f"{name}:{number}"
        roles = [m["role"] for m in messages]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles, f"{name}:{number} has only a system message"
        assert roles == ["user", "assistant"] * (len(roles) // 2), f"{name}:{number} roles {roles}"


def test_sample_covers_every_shape_and_length():
    records = [r for name in SAMPLE_FILES for r in read_records(name)]
    for name in SAMPLE_FILES:
        shapes = {f for r in read_records(name) for f in FIELDS if f in r}
        assert shapes == set(FIELDS), name
    conversations = [as_messages(r) for r in records]
    assert 0.1 < sum(c[0]["role"] == "system" for c in conversations) / len(conversations) < 0.3
    turns = [len([m for m in c if m["role"] != "system"]) for c in conversations]
    assert sum(t == 2 for t in turns) > len(turns) / 2
    assert sum(4 <= t <= 12 for t in turns) > len(turns) / 5
    tok = demo_tokenizer()
    lengths = [len(ids) for ids in tok([build_demo.render_chatml(c) for c in conversations])["input_ids"]]
    assert sum(n > 1500 for n in lengths) >= 3
    assert max(lengths) < tok.model_max_length


def test_build_reproduces_the_committed_files(tmp_path):
    written = build_demo.build(tmp_path)
    committed = {
        p.relative_to(SAMPLE_DIR).as_posix()
        for folder in (DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR)
        for p in folder.iterdir()
        if p.is_file()
    }
    assert set(written) == committed
    for name, path in written.items():
        assert path.read_bytes() == (SAMPLE_DIR / name).read_bytes(), f"{name} differs from a fresh build"
