"""Records as they are published (OpenAI, ShareGPT, LLaMA-Factory) normalised to what templates read."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from collate_assets.core.read.formats import normalize_record
from collate_assets.sample import DEMO_TOKENIZER_DIR

from collate_assets_tests.helpers import SHARED_DIR

CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
SPEC = {"name": "add", "description": "Add", "parameters": {"type": "object", "properties": {}}}


def test_openai_tool_calls_with_null_content_and_string_arguments():
    record = {
        "messages": [
            {"role": "user", "content": "1+2?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}}]},
            {"role": "tool", "tool_call_id": "c1", "name": "add", "content": "3"},
            {"role": "assistant", "content": "3."},
        ],
        "tools": [{"type": "function", "function": SPEC}],
    }
    conversation = normalize_record(record)
    assert conversation.messages[1] == {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", **CALL}]}
    assert conversation.messages[2] == {"role": "tool", "content": "3", "tool_call_id": "c1", "name": "add"}
    assert conversation.tools == [{"type": "function", "function": SPEC}]
    assert conversation.train is None


def test_legacy_function_call_and_function_role():
    conversation = normalize_record({"messages": [
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": None, "function_call": {"name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}},
        {"role": "function", "name": "add", "content": "3"},
    ]})
    assert conversation.messages[1]["tool_calls"] == [CALL]
    assert conversation.messages[2] == {"role": "tool", "content": "3", "name": "add"}


def test_llamafactory_sharegpt_function_call_observation_tools_string_and_system():
    conversation = normalize_record({
        "system": "Use tools.",
        "tools": json.dumps([SPEC]),
        "conversations": [
            {"from": "human", "value": "1+2 and 3+4?"},
            {"from": "function_call", "value": json.dumps([{"name": "add", "arguments": {"a": 1, "b": 2}},
                                                           {"name": "add", "arguments": {"a": 3, "b": 4}}])},
            {"from": "observation", "value": "[3, 7]"},
            {"from": "gpt", "value": "3 and 7."},
        ],
    })
    assert [m["role"] for m in conversation.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert conversation.messages[0]["content"] == "Use tools."
    assert [c["function"]["arguments"] for c in conversation.messages[2]["tool_calls"]] == [{"a": 1, "b": 2},
                                                                                          {"a": 3, "b": 4}]
    assert conversation.tools == [{"type": "function", "function": SPEC}]  # bare specs wrapped, OpenAI form


def test_typed_parts_reasoning_tool_call_parts_and_loss_weight():
    conversation = normalize_record({"messages": [
        {"role": "system", "content": [{"type": "text", "value": "Be brief."}], "loss_weight": 0.0},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": [{"type": "reasoning", "value": "Greet."}, {"type": "text", "value": "Hi!"}],
         "loss_weight": 1.0},
        {"role": "user", "content": "Add 1 and 2"},
        {"role": "assistant", "content": [{"type": "tool_call", "value": json.dumps({"name": "add", "arguments": {"a": 1, "b": 2}})}],
         "train": False},
    ]})
    assert conversation.messages[1]["content"] == ["Hi ", "there"]
    assert conversation.messages[2] == {"role": "assistant", "content": "Hi!", "reasoning_content": "Greet."}
    assert conversation.messages[4]["tool_calls"] == [CALL]
    assert conversation.train == [False, None, True, None, False]


def test_reasoning_field_spellings():
    for field in ("reasoning_content", "reasoning", "thinking"):
        conversation = normalize_record({"messages": [{"role": "user", "content": "q"},
                                                      {"role": "assistant", "content": "a", field: "think"}]})
        assert conversation.messages[1]["reasoning_content"] == "think"


@pytest.mark.parametrize(("record", "reason"), [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}]},
     "message 0 has a 'image_url' content part: only text parts are supported"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "message 0 has a 'input_audio' content part: only text parts are supported"),
    ({"messages": [{"role": "user", "content": "q", "loss_weight": -0.5}]},
     "message 0 has loss_weight -0.5: a loss weight is a number >= 0 (0: not trained, 1: trained)"),
    ({"messages": [{"role": "user", "content": "q", "loss_weight": float("nan")}]},
     "message 0 has loss_weight nan: a loss weight is a number >= 0"),
    ({"messages": [{"role": "user", "content": "q", "weight": 1e39}]},
     "message 0 has weight 1e+39: a loss weight is a number >= 0 (0: not trained, 1: trained) that a float32 holds"),
    ({"messages": [{"role": "user", "content": "q", "weight": "0.5"}]}, "message 0 has weight '0.5': a loss weight is a number"),
    ({"messages": [{"role": "user", "content": "q", "loss_weight": 0.5, "weight": 2}]},
     "message 0 has loss weights that disagree"),
    ({"messages": [{"role": "user", "content": "q", "loss_weight": 0.5, "train": False}]},
     "message 0 has training flags that disagree"),
    ({"messages": [{"role": "user", "content": "q", "train": "yes"}]}, "message 0 'train' is 'yes', not true or false"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
     "message 1 has no content and no tool calls"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}]},
     "message 0 tool_calls call 0 has no function name"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]},
     "message 0 tool_calls call 0 arguments is not valid JSON"),
    ({"conversations": [{"from": "function_call", "value": "[]"}]}, "message 0 (function_call) holds no tool call"),
    ({"messages": [{"role": "user", "content": "q"}], "tools": "not json"}, "'tools' is not valid JSON"),
])
def test_rejects_name_the_reason(record, reason):
    """(A weight other than 0 or 1 is read, as Conversation.weights: the tokenize step rejects it without
    the loss_weights setting, test_training_weights.py.)"""
    with pytest.raises(ValueError) as info:
        normalize_record(record)
    assert str(info.value).startswith(reason)


def test_every_record_of_the_public_tool_calling_demo_is_read():
    records = json.loads((SHARED_DIR / "data/llamafactory_glaive_toolcall_zh/glaive_toolcall_zh_demo.json").read_text())
    conversations = [normalize_record(r) for r in records]
    calls = sum(len(m.get("tool_calls", [])) for c in conversations for m in c.messages)
    function_call_turns = sum(m["from"] == "function_call" for r in records for m in r["conversations"])
    assert calls == function_call_turns > 100
    assert sum(m["role"] == "tool" for c in conversations for m in c.messages) == sum(
        m["from"] == "observation" for r in records for m in r["conversations"])


def _collate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collate_assets.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_check_template_reports_and_refuses_a_template_whose_mask_trains_everything(tmp_path):
    run = _collate("--check-template", "-t", str(SHARED_DIR / "tokenizers" / "Qwen3"), "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["facts"]["tools"] and report["facts"]["reasoning_key"] == "reasoning_content"
    assert report["facts"]["end_of_turn"] == "<|im_end|>" and report["refusal"] is None
    assert "«<tool_call>" in report["probe"][0] and 0 < report["trained_tokens"] < report["tokens"]
    # A template that prints the assistant's text outside any turn structure: every token is "assistant".
    template = tmp_path / "bare.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    run = _collate("--check-template", "-t", str(DEMO_TOKENIZER_DIR), "--chat-template", str(template))
    assert run.returncode == 1
    assert "REFUSED" in run.stdout
