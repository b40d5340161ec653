"""Masks checked by a second, independent method, on every tokenizer, with tool and reasoning conversations.

For assistant message i the text the model must learn is what `render(messages[:i+1])` adds to
`render(messages[:i], add_generation_prompt=True)`, less what the template writes after the end of
the turn (a newline, the next header) and less an empty thinking block the template inserts. The
engine finds its masks another way (a skeleton rendering aligned with the real one); here every
trained run of tokens must be exactly one such text, and every such text must be trained once.
"""

from __future__ import annotations

import collections
import json

import pytest

from collate_assets.core import CollateSettings, load_tokenizer, tokenize_file
from collate_assets.core.tokens.chat import ChatEncoder
from collate_assets.core.read.formats import normalize_record
from collate_assets.core.settings import IGNORE_INDEX
from collate_assets.sample import DEMO_TOKENIZER_DIR

from collate_assets_tests.helpers import SHARED_DIR, TOKENIZER_NAMES, load_shared_tokenizer

TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers",
                                            "parameters": {"type": "object", "properties": {
                                                "a": {"type": "number"}, "b": {"type": "number"}}}}}]
PLAIN = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
]}
TOOL_CALLS = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "4"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3+4?"},
    {"role": "assistant", "content": "Let me add.", "tool_calls": [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 3, "b": 4}}}]},
    {"role": "tool", "content": "7"},
    {"role": "assistant", "content": "7."},
]}
REASONING = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "Hi?"},
    {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting; greet back."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": None, "reasoning_content": "Use the tool.",
     "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]},
    {"role": "tool", "content": "4"},
    {"role": "assistant", "content": "4.", "reasoning_content": "The tool says 4."},
]}
SHAREGPT_TOOLS = {
    "conversations": [
        {"from": "human", "value": "Add 1 and 2."},
        {"from": "function_call", "value": "{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}"},
        {"from": "observation", "value": "3"},
        {"from": "gpt", "value": "3."},
    ],
    "tools": json.dumps([TOOLS[0]["function"]]),
}
TYPED_PARTS = {"messages": [
    {"role": "user", "content": [{"type": "text", "value": "Hi "}, {"type": "text", "value": "there."}],
     "loss_weight": 0.0},
    {"role": "assistant", "content": [{"type": "text", "value": "Not this one."}], "loss_weight": 0.0},
    {"role": "user", "content": [{"type": "text", "text": "Again."}]},
    {"role": "assistant", "content": [{"type": "text", "text": "This one."}], "loss_weight": 1.0},
]}
INLINE_THINK = {"messages": [
    {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
    {"role": "user", "content": "Bye?"}, {"role": "assistant", "content": "<think>Wave.</think>Bye!"},
]}
RECORDS = {"plain": PLAIN, "inline-think": INLINE_THINK, "tool-calls": TOOL_CALLS, "reasoning": REASONING, "sharegpt-tools": SHAREGPT_TOOLS,
           "typed-parts": TYPED_PARTS}
END_OF_TURN = {"SmolLM2-135M-Instruct": "<|im_end|>", "Phi-3-mini-4k-instruct": "<|end|>", "Qwen3": "<|im_end|>",
               "demo": "<|im_end|>"}
LLAMA3_STYLE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def _tokenizer(name: str):
    if name == "demo":
        return load_tokenizer(DEMO_TOKENIZER_DIR)
    return load_shared_tokenizer(name)


def _render(tokenizer, messages, tools, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)


def expected_turns(encoder: ChatEncoder, conversation) -> list[str]:
    """The text each trained assistant turn must train, by prefix renderings (the independent method)."""
    tokenizer, info = encoder.tokenizer, encoder.info
    messages = encoder.adapt(conversation)
    out = []
    for i, message in enumerate(messages):
        flag = conversation.train[i] if conversation.train else None
        if message["role"] != "assistant" or flag is False:
            continue
        before = _render(tokenizer, messages[:i], conversation.tools, add_generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], conversation.tools)
        assert upto.startswith(before), "the template does not continue its own generation prompt"
        turn = upto[len(before):]
        turn = turn[: turn.rindex(info.end_of_turn) + len(info.end_of_turn)]  # not the next header
        if info.reasoning_key not in message and turn.startswith(info.inserted_before_content):
            turn = turn[len(info.inserted_before_content):]  # the empty thinking block is not trained
        out.append(turn.strip())
    return out


def trained_runs(encoder: ChatEncoder, conversation) -> tuple[list[str], list[list[int]]]:
    """The text of every run of trained tokens, over all the sequences the engine makes of it."""
    [rendered] = encoder.render([conversation])
    assert not isinstance(rendered, Exception), rendered
    runs, ids_out = [], []
    for text, mask, encoding in zip(rendered.texts, rendered.masks, encoder.encode_texts(rendered.texts)):
        ids, labels = encoder.labels_for(encoding, mask)
        ids_out.append(ids.tolist())
        trained = labels != IGNORE_INDEX
        offsets = encoding.offsets
        k = 0
        while k < len(ids):
            if not trained[k]:
                k += 1
                continue
            start = k
            while k < len(ids) and trained[k]:
                k += 1
            runs.append(text[offsets[start][0]: offsets[k - 1][1]].strip())
    return runs, ids_out


@pytest.mark.parametrize("name", ["demo", *TOKENIZER_NAMES])
@pytest.mark.parametrize("record", list(RECORDS))
def test_assistant_mask_equals_prefix_difference(name, record):
    tokenizer = _tokenizer(name)
    encoder = ChatEncoder(tokenizer, "assistant")
    assert encoder.info.end_of_turn == END_OF_TURN[name]
    conversation = normalize_record(RECORDS[record])
    [rendered] = encoder.render([conversation])
    if isinstance(rendered, Exception):
        # Only a template that cannot show the record's tools, calls or reasoning may refuse it.
        assert (conversation.tools or conversation.has_tool_calls or conversation.has_reasoning), rendered
        assert "the chat template does not show" in str(rendered), rendered
        assert not (encoder.info.tools and encoder.info.tool_calls and encoder.info.reasoning_key)
        return
    runs, ids = trained_runs(encoder, conversation)
    assert collections.Counter(runs) == collections.Counter(expected_turns(encoder, conversation))
    # The main sequence is byte-exact with apply_chat_template on the normalised record.
    messages = encoder.adapt(conversation)
    assert ids[0] == tokenizer.apply_chat_template(messages, tools=conversation.tools, tokenize=True)["input_ids"]


def test_qwen3_trains_tool_calls_reasoning_and_end_of_turn_but_not_results_or_empty_think():
    encoder = ChatEncoder(load_shared_tokenizer("Qwen3"), "assistant")
    runs, _ = trained_runs(encoder, normalize_record(REASONING))
    # Earlier reasoning that Qwen3 drops from the history is trained in a sequence of its own.
    assert runs[-1] == "<think>\nA greeting; greet back.\n</think>\n\nHello!<|im_end|>"
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 2}}\n</tool_call><|im_end|>' in runs[0]
    assert runs[0].startswith("<think>\nUse the tool.\n</think>")
    assert not any("<tool_response>" in r or "<|im_start|>" in r for r in runs)
    runs, _ = trained_runs(encoder, normalize_record(PLAIN))
    assert runs == ["Hello!<|im_end|>", "Blue.<|im_end|>"]  # the empty <think></think> Qwen3 adds is not trained
    trained_think = ChatEncoder(load_shared_tokenizer("Qwen3"), "assistant", train_empty_think=True)
    runs, _ = trained_runs(trained_think, normalize_record(PLAIN))
    assert runs == ["Hello!<|im_end|>", "<think>\n\n</think>\n\nBlue.<|im_end|>"]


def test_reasoning_as_rendered_trains_one_sequence_and_counts_what_was_left_out():
    encoder = ChatEncoder(load_shared_tokenizer("Qwen3"), "assistant", reasoning_turns="as-rendered")
    [rendered] = encoder.render([normalize_record(REASONING)])
    assert len(rendered.texts) == 1 and rendered.dropped_reasoning == 1
    per_turn = ChatEncoder(load_shared_tokenizer("Qwen3"), "all")
    [rendered] = per_turn.render([normalize_record(REASONING)])
    # labels=all trains everything but the tool result; the turn whose reasoning was dropped is trained
    # again alone, with its reasoning.
    assert len(rendered.texts) == 2 and not rendered.masks[0].only and rendered.masks[1].only
    [(start, end)] = rendered.masks[0].spans
    assert rendered.texts[0][start:end].startswith("4\n</tool_response>")


def test_flags_under_labels_all_leave_out_the_flagged_turns():
    encoder = ChatEncoder(_tokenizer("demo"), "all")
    conversation = normalize_record(TYPED_PARTS)
    [rendered] = encoder.render([conversation])
    [encoding] = encoder.encode_texts(rendered.texts)
    ids, labels = encoder.labels_for(encoding, rendered.masks[0])
    text = rendered.texts[0]
    untrained = "".join(text[s:e] for (s, e), label in zip(encoding.offsets, labels) if label == IGNORE_INDEX)
    assert "Hi there." in untrained and "Not this one." in untrained
    trained = "".join(text[s:e] for (s, e), label in zip(encoding.offsets, labels) if label != IGNORE_INDEX)
    assert "Again." in trained and "This one." in trained


def test_a_header_written_after_every_turn_is_never_trained():
    tokenizer = load_tokenizer(SHARED_DIR / "tokenizers" / "SmolLM2-135M-Instruct")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tokenizer.chat_template = LLAMA3_STYLE
    encoder = ChatEncoder(tokenizer, "assistant")
    assert encoder.info.end_of_turn == "<|eot_id|>" and encoder.info.always_adds_generation_prompt
    runs, _ = trained_runs(encoder, normalize_record(PLAIN))
    assert runs == ["Hello!<|eot_id|>", "Blue.<|eot_id|>"]


# Written for these tests, each showing a behaviour of a stock template family: tools in the first user
# turn, a call printed as JSON instead of the content, results through `tojson` and an "ipython" header
# (Llama-3.1); no generation prompt, the system text folded into the first [INST] and eos after answers
# (Mistral).
JSON_CALLS = (
    "{{ bos_token }}{% set msgs = messages %}{% set sys = '' %}"
    "{% if msgs[0].role == 'system' %}{% set sys = msgs[0].content | trim %}{% set msgs = msgs[1:] %}{% endif %}"
    "<|start_header_id|>system<|end_header_id|>\n\n{% if tools %}Tools on.\n{% endif %}{{ sys }}<|eot_id|>"
    "{% if tools %}<|start_header_id|>user<|end_header_id|>\n\nFunctions:\n"
    "{% for t in tools %}{{ t | tojson(indent=2) }}\n{% endfor %}{{ msgs[0].content | trim }}<|eot_id|>"
    "{% set msgs = msgs[1:] %}{% endif %}"
    "{% for m in msgs %}"
    "{% if m.tool_calls %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% for c in m.tool_calls %}{\"name\": \"{{ c.function.name }}\", \"parameters\": {{ c.function.arguments | tojson }}}"
    "{% endfor %}<|eot_id|>"
    "{% elif m.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>\n\n{{ m.content | tojson }}<|eot_id|>"
    "{% else %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
INST = (
    "{% set msgs = messages %}{% if msgs[0].role == 'system' %}{% set sys = msgs[0].content %}"
    "{% set msgs = msgs[1:] %}{% endif %}{{ bos_token }}{% for m in msgs %}"
    "{% if m.role == 'user' %}{% if loop.first and sys is defined %} [INST] {{ sys }}\n\n{{ m.content }} [/INST]"
    "{% else %} [INST] {{ m.content }} [/INST]{% endif %}"
    "{% elif m.role == 'assistant' %} {{ m.content }}{{ eos_token }}"
    "{% else %}{{ raise_exception('only user and assistant turns') }}{% endif %}{% endfor %}"
)
SPECIAL = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "[INST]", "[/INST]"]


@pytest.mark.parametrize("template", ["json-calls", "inst"])
@pytest.mark.parametrize("record", list(RECORDS))
def test_masks_of_other_template_families(template, record):
    tokenizer = load_tokenizer(SHARED_DIR / "tokenizers" / "SmolLM2-135M-Instruct")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    tokenizer.chat_template = {"json-calls": JSON_CALLS, "inst": INST}[template]
    encoder = ChatEncoder(tokenizer, "assistant")
    assert encoder.info.end_of_turn == {"json-calls": "<|eot_id|>", "inst": tokenizer.eos_token}[template]
    conversation = normalize_record(RECORDS[record])
    [rendered] = encoder.render([conversation])
    if isinstance(rendered, Exception):
        assert template == "inst" or conversation.has_reasoning, rendered
        return
    runs, ids = trained_runs(encoder, conversation)
    assert collections.Counter(runs) == collections.Counter(expected_turns(encoder, conversation))
    assert not any("<|start_header_id|>" in r or "[INST]" in r for r in runs)
    assert ids[0] == tokenizer.apply_chat_template(encoder.adapt(conversation), tools=conversation.tools,
                                                   tokenize=True)["input_ids"]
    if template == "json-calls" and conversation.has_tool_calls:
        assert any(r.startswith('{"name": "add", "parameters": {"a": ') for r in runs), runs


PARTS_ONLY = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% for part in m['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.mark.parametrize("record", ["plain", "typed-parts"])
def test_a_template_that_iterates_parts_gets_parts(record, tmp_path):
    template = tmp_path / "parts.jinja"
    template.write_text(PARTS_ONLY)
    encoder = ChatEncoder(load_tokenizer(DEMO_TOKENIZER_DIR, chat_template=template), "assistant")
    assert encoder.info.content_parts and encoder.info.end_of_turn == "<end_of_turn>"
    conversation = normalize_record(RECORDS[record])
    assert all(isinstance(m["content"], list) for m in encoder.adapt(conversation))
    runs, _ = trained_runs(encoder, conversation)
    assert runs == expected_turns(encoder, conversation)
    assert runs[-1] in ("Blue.<end_of_turn>", "This one.<end_of_turn>")


def test_templates_without_tools_reject_tool_records_with_a_reason(tmp_path):
    records = json.loads((SHARED_DIR / "data/llamafactory_glaive_toolcall_zh/glaive_toolcall_zh_demo.json").read_text())
    source = tmp_path / "glaive.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    for name, expect_rejects in (("Qwen3", False), ("SmolLM2-135M-Instruct", True)):
        rejects = tmp_path / f"{name}.rejects.jsonl"
        stats = tokenize_file(source, tmp_path / f"{name}.arrow", load_shared_tokenizer(name),
                              CollateSettings(labels="assistant", max_length=4096), rejects_path=rejects)
        assert stats.accounted() and stats.lines_read == len(records)
        reasons = collections.Counter(json.loads(line)["reason"] for line in rejects.read_text().splitlines())
        with_calls = sum(any(m["from"] == "function_call" for m in r["conversations"]) for r in records)
        if expect_rejects:
            with_tools = sum(bool(json.loads(r["tools"] or "[]")) for r in records)
            assert stats.rejected == with_tools > 100  # SmolLM2's template shows no tools
            assert set(reasons) == {"the record has tools but the chat template does not show tools"}
        else:
            assert stats.rejected == 0 and stats.conversations == len(records), reasons
            assert with_calls > 100
