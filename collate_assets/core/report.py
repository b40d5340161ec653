"""What a chat template does, for a person to read before a long run (`collate --check-template`).

The facts come from the engine's own probes (`ChatEncoder.info`), and the probe conversation is masked
by the same code as real data, so the report shows what a run would train.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .chat import ChatEncoder
from .errors import CollateError
from .formats import normalize_record
from .settings import IGNORE_INDEX, CollateSettings

TRAINED_OPEN, TRAINED_CLOSE = "«", "»"
_PROBE_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def probe_record(encoder: ChatEncoder) -> dict:
    """A short conversation using every feature the template shows (system, tools, reasoning)."""
    info = encoder.info
    messages = [{"role": "user", "content": "Hello, who are you?"},
                {"role": "assistant", "content": "I am a helpful assistant."}]
    if info.system:
        messages.insert(0, {"role": "system", "content": "You are a helpful assistant."})
    record: dict = {"messages": messages}
    messages.append({"role": "user", "content": "What is the weather in Paris?"})
    if info.tools and info.tool_calls and info.tool_results:
        record["tools"] = _PROBE_TOOLS
        call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "content": "{\"temperature_c\": 21}"}]
    answer = {"role": "assistant", "content": "It is 21 °C in Paris."}
    if info.reasoning_key:
        answer["reasoning_content"] = "The user asks for the weather; answer briefly."
    messages.append(answer)
    return record


@dataclasses.dataclass
class TemplateReport:
    facts: dict
    probe: list[str]  # each sequence of the probe, decoded, trained text between « »
    trained_tokens: int
    tokens: int
    refusal: str | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def text(self) -> str:
        f = self.facts
        yes = {True: "yes", False: "no"}
        lines = [
            f"system message:        {yes[f['system']]}",
            f"tools:                 {yes[f['tools']]} (tool calls {yes[f['tool_calls']]}, tool results "
            f"{yes[f['tool_results']]})",
            f"reasoning:             {f['reasoning_key'] or 'no'}"
            + (f" (earlier turns' reasoning {f['reasoning_history']})" if f["reasoning_key"] else ""),
            f"typed content parts:   {'passed as parts' if f['content_parts'] else 'joined into one string'}",
            f"prefix-preserving:     {yes[f['prefix_preserving']]}",
            f"generation prompt:     {f['generation_prompt']!r}"
            + (" (written after every turn)" if f["always_adds_generation_prompt"] else ""),
            f"end of turn:           {f['end_of_turn']!r}",
            f"inserted before a turn without reasoning: {f['inserted_before_content']!r}",
            "",
            f"probe conversation under --labels assistant ({self.trained_tokens} of {self.tokens} tokens trained, "
            f"trained text between {TRAINED_OPEN} {TRAINED_CLOSE}):",
        ]
        for k, sequence in enumerate(self.probe):
            if len(self.probe) > 1:
                lines.append(f"--- sequence {k + 1} of {len(self.probe)}")
            lines.append(sequence)
        if self.refusal:
            lines += ["", f"REFUSED: {self.refusal}"]
        return "\n".join(lines)


def template_report(tokenizer, settings: CollateSettings | None = None) -> TemplateReport:
    """Probe the tokenizer's chat template; `refusal` says why labels=assistant cannot use it."""
    settings = settings or CollateSettings()
    facts_encoder = ChatEncoder(tokenizer, "all")
    refusal = None
    try:
        encoder = ChatEncoder(tokenizer, "assistant", train_empty_think=settings.train_empty_think,
                              reasoning_turns=settings.reasoning_turns)
    except CollateError as exc:
        encoder, refusal = facts_encoder, str(exc)
    [rendered] = encoder.render([normalize_record(probe_record(encoder))])
    if isinstance(rendered, Exception):
        return TemplateReport(facts_encoder.info.to_dict(), [], 0, 0, refusal or f"probe conversation: {rendered}")
    probe, trained, total = [], 0, 0
    for text, mask, encoding in zip(rendered.texts, rendered.masks, encoder.encode_texts(rendered.texts)):
        _, labels = encoder.labels_for(encoding, mask)
        on = labels != IGNORE_INDEX
        trained += int(np.count_nonzero(on))
        total += len(labels)
        pieces, state, pos = [], False, 0
        for (start, end), flag in zip(encoding.offsets, on):
            if flag != state:
                pieces.append(text[pos:start] + (TRAINED_OPEN if flag else TRAINED_CLOSE))
                pos, state = start, flag
        pieces.append(text[pos:] + (TRAINED_CLOSE if state else ""))
        probe.append("".join(pieces))
    return TemplateReport(encoder.info.to_dict(), probe, trained, total, refusal)
