"""What a chat template does, for a person to read before a long run (`collate --check-template`).

The facts come from the engine's own probes (`ChatEncoder.info`), and the probe conversation is masked
by the same code as real data, so the report shows what a run would train.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .chat import ChatEncoder
from .encoder import fast_encoder_facts
from .probes import probe_record
from ..errors import CollateError
from ..read.formats import normalize_record
from ..settings import IGNORE_INDEX, CollateSettings
from .tokenizer import compare_pipelines, drift_summary

TRAINED_OPEN, TRAINED_CLOSE = "«", "»"


@dataclasses.dataclass
class TemplateReport:
    facts: dict
    probe: list[str]  # each sequence of the probe, decoded, trained text between « »
    trained_tokens: int
    tokens: int
    refusal: str | None  # labels=assistant refuses the template: a run with it fails
    # The tokenizer pipeline in use (tokenizer.json or transformers') against the other one, on the probe
    # texts of load_tokenizer and the probe conversation's texts (tokenizer.drift_summary).
    tokenizer_drift: dict = dataclasses.field(default_factory=dict)
    probe_rejected: str | None = None  # the probe record is rejected (as such records of a run would be)
    # Whether the fast encoder gives this tokenizer's ids (and offsets) on the load probes (encoder.py).
    encoder: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def text(self) -> str:
        f = self.facts
        yes = {True: "yes", False: "no", None: "unknown (the template raised on the probe; each record tells)"}
        lines = [
            f"system message:        {yes[f['system']]}",
            f"tools:                 {yes[f['tools']]} (tool calls {yes[f['tool_calls']]}, tool results "
            f"{yes[f['tool_results']]})",
            f"reasoning:             {f['reasoning_key'] or 'no'}"
            + (f" (shown for {f['reasoning_shown']}; earlier turns' reasoning {f['reasoning_history']})"
               if f["reasoning_key"] else ""),
            f"typed content parts:   {'passed as parts' if f['content_parts'] else 'joined into one string'}",
            f"prefix-preserving:     {yes[f['prefix_preserving']]}",
            f"generation prompt:     {f['generation_prompt']!r}"
            + (" (written after every turn)" if f["always_adds_generation_prompt"] else ""),
            f"end of turn:           {f['end_of_turn']!r}"
            + (f", last turn {f['end_of_last_turn']!r}" if f["end_of_last_turn"] else "")
            + (f", after tool calls {f['end_of_call']!r}" if f["end_of_call"] else "")
            + (" (then the next role token, which stops the model)" if f["ends_at_next_role"] else ""),
            f"inserted before a turn without reasoning: {f['inserted_before_content']!r}",
            f"tokenizer pipeline:    {self._pipeline_text()}",
            f"encoder:               {self._encoder_text()}",
            "",
            f"probe conversation under --labels assistant ({self.trained_tokens} of {self.tokens} tokens trained, "
            f"trained text between {TRAINED_OPEN} {TRAINED_CLOSE}):",
        ]
        for k, sequence in enumerate(self.probe):
            if len(self.probe) > 1:
                lines.append(f"--- sequence {k + 1} of {len(self.probe)}")
            lines.append(sequence)
        if self.probe_rejected:
            lines += ["", f"the probe conversation would be rejected: {self.probe_rejected}"]
        if self.refusal:
            lines += ["", f"REFUSED: {self.refusal}"]
        return "\n".join(lines)

    def _encoder_text(self) -> str:
        e = self.encoder
        if not e:
            return "unknown"
        if e["asked"] == "tokenizers":
            return "tokenizers (asked for)"
        if not e["fast"]:
            return f"tokenizers: {e['reason']}"
        if not e["offsets"]:
            return f"fastokens for ids; tokenizers where labels need offsets ({e['offsets_reason']})"
        return "fastokens (ids and offsets equal the reference's on the probe texts)"

    def _pipeline_text(self) -> str:
        d = self.tokenizer_drift
        if not d:
            return "unknown"
        used = "tokenizer.json" if d["pipeline"] == "file" else "transformers' backend"
        if d.get("compared_with") is None:
            return f"{used} (no tokenizer.json to compare with)"
        other = "transformers' backend" if d["pipeline"] == "file" else "tokenizer.json"
        text = (f"{used}; {other} differs on {d['probe_differing']} of {d['probe_texts']} probe texts and "
                f"{d['differing']} of {d['texts']} texts of the probe conversation")
        example = d.get("example")
        if example:
            text += (f", e.g. {example['text']!r}: {example['file']} (tokenizer.json) vs "
                     f"{example['transformers']} (transformers)")
        return text


def template_report(tokenizer, settings: CollateSettings | None = None) -> TemplateReport:
    """Probe the tokenizer's chat template; `refusal` says why labels=assistant cannot use it."""
    settings = settings or CollateSettings()
    facts_encoder = ChatEncoder(tokenizer, "all")
    refusal = None
    try:
        encoder = ChatEncoder(tokenizer, "assistant", train_empty_think=settings.train_empty_think,
                              reasoning_turns=settings.reasoning_turns,
                              unshown_reasoning=getattr(settings, "unshown_reasoning", "reject"))
    except CollateError as exc:
        encoder, refusal = facts_encoder, str(exc)
    [rendered] = encoder.render([normalize_record(probe_record(encoder))])
    if isinstance(rendered, Exception):
        return TemplateReport(encoder.info.to_dict(), [], 0, 0, refusal, drift_summary(tokenizer),
                              probe_rejected=str(rendered), encoder=fast_encoder_facts(tokenizer, settings.encoder))
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
    drift = drift_summary(tokenizer, compare_pipelines(tokenizer, rendered.texts))
    return TemplateReport(encoder.info.to_dict(), probe, trained, total, refusal, drift,
                          encoder=fast_encoder_facts(tokenizer, settings.encoder))
