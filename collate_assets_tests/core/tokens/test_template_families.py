"""Masks on the public chat templates of current model families (../shared/templates), checked by an
independent verifier.

The verifier knows nothing of how the engine learns a template: for each family it is told, from the
family's published format, which text ends an assistant turn in each position (mid-conversation, last,
after tool calls; for GLM the next role token) and which texts open other turns. On each record it
checks every run of trained tokens: it holds exactly one assistant turn (its content, tool-call names
and arguments, its reasoning when the template shows it), ends with the end text the family writes
there, and holds no user, system or tool text and no header of another turn. The main sequence must be
byte-exact with `apply_chat_template(tokenize=True)`.

Each family's special tokens are added to a tokenizer of ours whose vocabulary lacks them (as the
model's own tokenizer has them), so trained runs fall on the family's token boundaries; gpt-oss has
its own tokenizer in ../shared/tokenizers.
"""

from __future__ import annotations

import collections
import json

import pytest

from collate_assets.core import CollateError, CollateSettings, load_tokenizer, tokenize_file
from collate_assets.core.tokens.chat import ChatEncoder
from collate_assets.core.read.formats import normalize_record
from collate_assets.core.settings import IGNORE_INDEX

from collate_assets_tests.helpers import SHARED_DIR, require

TEMPLATES = SHARED_DIR / "templates"
TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}]
CALL_ID = "call12345"  # nine alphanumerics, as Mistral's templates demand


def _call(a: int, b: int) -> dict:
    return {"id": CALL_ID, "type": "function", "function": {"name": "add", "arguments": {"a": a, "b": b}}}


PLAIN = {"messages": [
    {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there!"},
    {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky."},
]}
TOOL_CALLS = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": None, "tool_calls": [_call(2, 2)]},
    {"role": "tool", "tool_call_id": CALL_ID, "content": "{\"sum\": 4}"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "Thanks a lot!"},
    {"role": "assistant", "content": "You are welcome."},
]}
REASONING = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "What is 3+4?"},
    {"role": "assistant", "content": None, "reasoning_content": "I should use the adding tool.",
     "tool_calls": [_call(3, 4)]},
    {"role": "tool", "tool_call_id": CALL_ID, "content": "{\"sum\": 7}"},
    {"role": "assistant", "content": "The sum is 7.", "reasoning_content": "The tool returned seven."},
]}
RECORDS = {"plain": PLAIN, "tool-calls": TOOL_CALLS, "reasoning": REASONING}


class Family:
    def __init__(self, template: str, tokenizer: str, specials: list[str], *, mid: str, last: str | None,
                 call: str, foreign: list[str], records: tuple[str, ...] = ("plain", "tool-calls", "reasoning"),
                 reasoning_on_answers: bool = True):
        self.template, self.tokenizer, self.specials = template, tokenizer, specials
        self.mid, self.last, self.call = mid, last, call  # the end text of a turn, by position (None: none)
        self.foreign = foreign  # texts that open other turns: never inside a trained run
        self.records = records
        self.reasoning_on_answers = reasoning_on_answers  # False: reasoning shown for tool-call turns only


FAMILIES = {
    "gpt-oss": Family("openai-gpt-oss-120b.jinja", "gpt-oss", [], mid="<|end|>", last="<|return|>",
                      call="<|call|>", foreign=["<|start|>user", "<|start|>functions", "<|start|>system"]),
    "command-r7b": Family(
        "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja", "Qwen3",
        ["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
         "<|SYSTEM_TOKEN|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>", "<|START_THINKING|>", "<|END_THINKING|>",
         "<|START_ACTION|>", "<|END_ACTION|>", "<|START_TOOL_RESULT|>", "<|END_TOOL_RESULT|>"],
        mid="<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", last="<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
        call="<|END_ACTION|><|END_OF_TURN_TOKEN|>", foreign=["<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>"],
        reasoning_on_answers=False),
    "hermes-3": Family(
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", "Qwen3", [], mid="<|im_end|>", last="<|im_end|>",
        call="<|im_end|>", foreign=["<|im_start|>"], records=("tool-calls",)),
    "glm-4.6": Family(
        "GLM-4.6.jinja", "Qwen3", ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"],
        mid="<|user|>", last=None, call="</tool_call><|observation|>", foreign=["<|assistant|>", "<|system|>"]),
    "gemma-4": Family(
        "google-gemma-4-31B-it.jinja", "Qwen3",
        ["<|turn>", "<turn|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>',
         "<|channel>", "<channel|>", "<|tool>", "<tool|>"],
        mid="<turn|>", last="<turn|>", call="<tool_call|>", foreign=["<|turn>", "<|tool_response>"],
        reasoning_on_answers=False),
    "mistral-nemo": Family(
        "mistralai-Mistral-Nemo-Instruct-2407.jinja", "Qwen3",
        ["[INST]", "[/INST]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[AVAILABLE_TOOLS]",
         "[/AVAILABLE_TOOLS]"],
        mid="<|im_end|>", last="<|im_end|>", call="<|im_end|>", foreign=["[INST]", "[TOOL_RESULTS]"],
        records=("plain", "tool-calls")),
    "mistral-small-3.2": Family(
        "Mistral-Small-3.2-24B-Instruct-2506.jinja", "Qwen3",
        ["[INST]", "[/INST]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[AVAILABLE_TOOLS]",
         "[/AVAILABLE_TOOLS]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[CALL_ID]", "[ARGS]"],
        mid="<|im_end|>", last="<|im_end|>", call="<|im_end|>", foreign=["[INST]", "[TOOL_RESULTS]"],
        records=("plain", "tool-calls")),
    "kimi-k2-thinking": Family(
        "Kimi-K2-Thinking.jinja", "Qwen3", ["<|im_system|>", "<|im_user|>", "<|im_assistant|>", "<|im_middle|>"],
        mid="<|im_end|>", last="<|im_end|>", call="<|im_end|>", foreign=["<|im_user|>", "<|im_system|>"],
        records=("plain",)),
    "nemotron-nano-v2": Family(
        "NVIDIA-Nemotron-Nano-v2.jinja", "Qwen3", ["<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>"],
        mid="<SPECIAL_12>", last="<SPECIAL_12>", call="<SPECIAL_12>", foreign=["<SPECIAL_11>"],
        records=("plain", "tool-calls")),
}


def family_tokenizer(name: str):
    family = FAMILIES[name]
    tokenizer = load_tokenizer(require(SHARED_DIR / "tokenizers" / family.tokenizer, f"tokenizer {family.tokenizer}"),
                               chat_template=require(TEMPLATES / family.template, f"template {family.template}"))
    if family.specials:
        tokenizer.add_special_tokens({"additional_special_tokens": family.specials})
    return tokenizer


def trained_runs(encoder: ChatEncoder, conversation) -> list[list[str]]:
    """Per sequence the engine makes of the conversation, the text of each run of trained tokens."""
    [rendered] = encoder.render([conversation])
    assert not isinstance(rendered, Exception), rendered
    out = []
    for text, mask, encoding in zip(rendered.texts, rendered.masks, encoder.encode_texts(rendered.texts)):
        _, labels = encoder.labels_for(encoding, mask)
        trained, offsets, runs, k = labels != IGNORE_INDEX, encoding.offsets, [], 0
        while k < len(trained):
            if trained[k]:
                start = k
                while k < len(trained) and trained[k]:
                    k += 1
                runs.append(text[offsets[start][0]: offsets[k - 1][1]])
            k += 1
        out.append(runs)
    return out


def verify(family: Family, record: dict, sequences: list[list[str]]) -> None:
    """The independent check of one record's trained runs (see the module's docstring)."""
    messages = record["messages"]
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    runs = [run for sequence in sequences for run in sequence]
    assert len(runs) == len(assistant), (runs, assistant)
    others = [m["content"] for m in messages if m["role"] != "assistant" and m["content"]]
    for run in runs:
        for text in others:
            assert text not in run, (text, run)
        for header in family.foreign:
            assert header not in run, (header, run)
    for i in assistant:
        message = messages[i]
        wanted = [message["content"]] if message.get("content") else []
        wanted += [f"{c['function']['name']}" for c in message.get("tool_calls", ())]
        if message.get("reasoning_content") and (family.reasoning_on_answers or message.get("tool_calls")):
            wanted.append(message["reasoning_content"])
        holding = [(k, run) for k, sequence in enumerate(sequences) for run in sequence
                   if all(w in run for w in wanted)]
        assert len(holding) == 1, (i, wanted, sequences)
        [(k, run)] = holding
        # the last turn of what is rendered: the record's last message, or a turn trained alone (per-turn)
        last_of_its_sequence = k > 0 or i == len(messages) - 1
        if message.get("tool_calls"):
            end = family.call
        elif last_of_its_sequence:
            end = family.last
        else:
            end = family.mid
        if end is None:  # GLM's last turn: nothing is written after it
            assert run.rstrip().endswith(wanted[0].rstrip()), (run, wanted)
        else:
            assert run.rstrip().endswith(end), (i, end, run)


@pytest.mark.parametrize(("name", "record"), [(n, r) for n, f in FAMILIES.items() for r in f.records])
def test_family_masks_pass_the_independent_verifier(name, record):
    family = FAMILIES[name]
    tokenizer = family_tokenizer(name)
    encoder = ChatEncoder(tokenizer, "assistant", unshown_reasoning="drop")
    conversation = normalize_record(RECORDS[record])
    sequences = trained_runs(encoder, conversation)
    verify(family, RECORDS[record], sequences)
    [rendered] = encoder.render([conversation])
    main = tokenizer.apply_chat_template(encoder.adapt(conversation), tools=conversation.tools, tokenize=True)
    [encoding] = encoder.encode_texts(rendered.texts[:1])
    assert encoding.ids == main["input_ids"]
    # every trained assistant turn's end of turn is reported where the template writes one
    ends = [end for per_text in rendered.turn_ends for end in per_text]
    assert len(ends) == sum(m["role"] == "assistant" for m in RECORDS[record]["messages"])
    if family.last is not None:
        assert all(end is not None for end in ends), ends


@pytest.mark.parametrize("name", ["command-r7b", "gemma-4"])
def test_reasoning_a_template_shows_only_for_tool_calls(name):
    """Gemma-4 and Command-R7B show reasoning for tool-call turns only: such turns keep it; an answer's
    reasoning is rejected by default, or dropped and counted."""
    tokenizer = family_tokenizer(name)
    encoder = ChatEncoder(tokenizer, "assistant")
    assert encoder.info.reasoning_key and encoder.info.reasoning_shown == "tool-call turns"
    [rejected] = encoder.render([normalize_record(REASONING)])
    assert isinstance(rejected, ValueError) and "message 3 has reasoning that the chat template does not show" in str(rejected)
    dropping = ChatEncoder(tokenizer, "assistant", unshown_reasoning="drop")
    [rendered] = dropping.render([normalize_record(REASONING)])
    assert rendered.unshown_reasoning == 1
    runs = [r for seq in trained_runs(dropping, normalize_record(REASONING)) for r in seq]
    assert any("I should use the adding tool." in r for r in runs)
    assert not any("The tool returned seven." in r for r in runs)


def test_kimi_shows_reasoning_after_the_first_answer():
    tokenizer = family_tokenizer("kimi-k2-thinking")
    encoder = ChatEncoder(tokenizer, "assistant")
    assert encoder.info.reasoning_key == "reasoning_content"
    record = {"messages": PLAIN["messages"][:3] + [{**PLAIN["messages"][3], "reasoning_content": "Pick a colour."}]}
    runs = [r for seq in trained_runs(encoder, normalize_record(record)) for r in seq]
    assert runs[-1].startswith("<think>Pick a colour.</think>Blue, like the sky.") and runs[-1].endswith("<|im_end|>")
    # a lone answer's reasoning Kimi never shows: rejected with the reason, or dropped and counted
    lone = {"messages": [PLAIN["messages"][0], {**PLAIN["messages"][1], "reasoning_content": "Greet."}]}
    [rejected] = encoder.render([normalize_record(lone)])
    assert isinstance(rejected, ValueError) and "does not show, even as the last turn" in str(rejected)


def test_harmony_ends_turns_by_position_and_puts_reasoning_in_the_analysis_channel():
    encoder = ChatEncoder(family_tokenizer("gpt-oss"), "assistant")
    info = encoder.info
    assert (info.end_of_turn, info.end_of_last_turn, info.end_of_call) == ("<|end|>", "<|return|>", "<|call|>")
    assert info.reasoning_key == "thinking"
    sequences = trained_runs(encoder, normalize_record(TOOL_CALLS))
    assert sequences == [[' to=functions.add<|channel|>commentary json<|message|>{"a": 2, "b": 2}<|call|>',
                          "<|channel|>final<|message|>It is 4.<|end|>",
                          "<|channel|>final<|message|>You are welcome.<|return|>"]]
    runs = [r for seq in trained_runs(encoder, normalize_record(REASONING)) for r in seq]
    assert ("<|channel|>analysis<|message|>The tool returned seven.<|end|><|start|>assistant<|channel|>final"
            "<|message|>The sum is 7.<|return|>") in runs


def test_glm_trains_the_next_role_token_as_the_stop():
    encoder = ChatEncoder(family_tokenizer("glm-4.6"), "assistant")
    assert encoder.info.ends_at_next_role and not encoder.info.end_of_turn
    [runs] = trained_runs(encoder, normalize_record(TOOL_CALLS))
    assert runs[0].endswith("</tool_call><|observation|>") and runs[1] == "It is 4.<|user|>"
    assert runs[2] == "You are welcome."  # the last turn: GLM writes nothing after it
    [rendered] = encoder.render([normalize_record(TOOL_CALLS)])
    assert rendered.turn_ends[0][-1] is None


@pytest.mark.parametrize("name", ["mistral-nemo", "mistral-small-3.2"])
def test_mistral_tool_calls_are_written_and_bad_ids_rejected_with_the_templates_own_message(name):
    encoder = ChatEncoder(family_tokenizer(name), "assistant")
    assert encoder.info.tool_calls is True
    bad = json.loads(json.dumps(TOOL_CALLS).replace(CALL_ID, "c1"))
    [rejected] = encoder.render([normalize_record(bad)])
    assert "Tool call IDs should be alphanumeric strings with length 9" in str(rejected)


def test_hermes_tool_use_template_is_probed_with_tools_and_rejects_records_without_them():
    encoder = ChatEncoder(family_tokenizer("hermes-3"), "assistant")
    assert encoder.info.needs_tools and encoder.info.end_of_turn == "<|im_end|>"
    [rejected] = encoder.render([normalize_record(PLAIN)])
    assert "renders only with a tools list" in str(rejected)


def test_an_empty_last_answer_the_template_leaves_out_is_rejected_naming_it():
    encoder = ChatEncoder(family_tokenizer("nemotron-nano-v2"), "assistant")
    record = {"messages": PLAIN["messages"][:3] + [{"role": "assistant", "content": ""}]}
    [rejected] = encoder.render([normalize_record(record)])
    assert str(rejected) == ("cannot locate message 3 (assistant) in the rendering: the chat template leaves out "
                             "an empty answer")


@pytest.mark.parametrize("name", ["command-r7b", "gemma-4", "glm-4.6", "hermes-3"])
def test_check_template_does_not_refuse_a_template_that_renders_records(name, tmp_path):
    """`--check-template`'s verdict is the run's: no template family above is refused, and a run with
    labels=assistant writes their tool records."""
    from collate_assets.core.tokens.report import template_report

    tokenizer = family_tokenizer(name)
    # encoder=tokenizers: the report leaves the fast encoder alone (each family's vocabulary would load it)
    report = template_report(tokenizer, CollateSettings(labels="assistant", unshown_reasoning="drop", encoder="tokenizers"))
    assert report.refusal is None and report.probe_rejected is None, report.text()
    assert report.trained_tokens > 0
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(TOOL_CALLS) + "\n")
    stats = tokenize_file(source, tmp_path / "spill.arrow", tokenizer,
                          CollateSettings(labels="assistant", workers=1))
    assert stats.conversations == 1 and stats.rejected == 0, stats.reject_reasons


def test_double_encoded_arguments_are_decoded_and_counted(tmp_path):
    record = json.loads(json.dumps(TOOL_CALLS))
    record["messages"][1]["tool_calls"][0]["function"]["arguments"] = json.dumps(json.dumps({"a": 2, "b": 2}))
    conversation = normalize_record(record)
    assert conversation.double_encoded == 1
    assert conversation.messages[1]["tool_calls"][0]["function"]["arguments"] == {"a": 2, "b": 2}
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(record) + "\n" + json.dumps(TOOL_CALLS) + "\n")
    stats = tokenize_file(source, tmp_path / "spill.arrow", family_tokenizer("hermes-3"),
                          CollateSettings(labels="assistant", workers=1))
    assert stats.conversations == 2 and stats.double_encoded_arguments == 1


STRING_ARGUMENTS = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "CALL {{ c.function.name }} {{ c.function.arguments }}{% endfor %}{% else %}{{ m.content }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_arguments_go_as_json_text_to_a_template_that_prints_them_as_they_are(tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text(STRING_ARGUMENTS)
    tokenizer = load_tokenizer(SHARED_DIR / "tokenizers" / "Qwen3", chat_template=template)
    encoder = ChatEncoder(tokenizer, "assistant")
    assert encoder.info.arguments == "string"
    [rendered] = encoder.render([normalize_record({"messages": TOOL_CALLS["messages"]})])
    assert 'CALL add {"a": 2, "b": 2}' in rendered.texts[0] and "{'a'" not in rendered.texts[0]


def test_reasoning_no_template_shows_is_dropped_and_counted_on_request(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(REASONING) + "\n")
    tokenizer = family_tokenizer("hermes-3")
    rejects = tmp_path / "rejects.jsonl"
    with pytest.raises(CollateError, match="no usable conversation"):
        tokenize_file(source, tmp_path / "a.arrow", tokenizer, CollateSettings(labels="assistant", workers=1),
                      rejects_path=rejects)
    reasons = collections.Counter(json.loads(line)["reason"] for line in rejects.read_text().splitlines())
    assert all("does not show reasoning" in r for r in reasons), reasons
    stats = tokenize_file(source, tmp_path / "b.arrow", tokenizer,
                          CollateSettings(labels="assistant", workers=1, unshown_reasoning="drop"))
    assert stats.conversations == 1 and stats.reasoning_unshown == 2
