"""Render conversations with the tokenizer's chat template, tokenize them and find what to train.

Tokens equal `tokenizer.apply_chat_template(messages, tools=tools, tokenize=True)` for the normalised
record (`collate_assets.core.formats`): transformers renders the template to text and encodes it without
adding special tokens, which is what we do here in batches through the Rust tokenizer (it releases the
GIL, so the next chunk can render meanwhile).

What to train is found for any template, with or without `{% generation %}`, by rendering each
conversation a second time as a *skeleton*: every string the template prints from a message (content,
reasoning, tool-call names) replaced by a unique placeholder. Aligning the skeleton with the real
rendering tells where each of them sits; the alignment must reproduce the real rendering exactly, or
the conversation is rejected (never trained on a guessed mask). A trained assistant turn then runs from
the end of the assistant header (the template's generation prompt) through the first end-of-turn text
after its last piece: its reasoning block, content and tool calls and the end-of-turn, never the header
of the next turn. Text the template inserts before the content of a turn that has no reasoning (Qwen3's
empty `<think>\n\n</think>\n\n`) is not trained unless `train_empty_think` is set.

The template's facts (system, tools, tool calls, reasoning, typed parts, generation prompt, end-of-turn,
prefix preservation) are learned once by rendering probe conversations (`TemplateInfo`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re

import numpy as np

from .errors import CollateError
from .formats import Conversation, TextParts
from .settings import IGNORE_INDEX

_PH = "\ue000{}.{}{}\ue001"
_PH_RE = re.compile("\ue000(\\d+)\\.([crn])(\\d*)\ue001")
# How templates print a message's string: as it is, trimmed, or as a JSON string (`| tojson`, as
# transformers' tojson writes it: ensure_ascii off) - the quotes are template text, the inside is the value.
_STRIPS = (
    lambda v: v, str.strip, lambda v: v.strip("\n"), lambda v: v.lstrip("\n"), lambda v: v.rstrip("\n"),
    str.lstrip, str.rstrip, lambda v: json.dumps(v, ensure_ascii=False)[1:-1], lambda v: json.dumps(v)[1:-1],
    lambda v: json.dumps(v.strip(), ensure_ascii=False)[1:-1],
)

Span = tuple[int, int]


@dataclasses.dataclass
class Mask:
    """Which characters of a rendered text are trained: only `spans`, or everything but `spans`."""

    spans: list[Span]
    only: bool = True


@dataclasses.dataclass
class Rendered:
    """A conversation as one or more texts to tokenize, each with its mask (None: train every token)."""

    texts: list[str]
    masks: list[Mask | None]
    dropped_reasoning: int = 0


@dataclasses.dataclass
class TemplateInfo:
    """What a chat template does, learned from probe conversations."""

    system: bool = False
    tools: bool = False
    tool_calls: bool = False
    tool_results: bool = False
    reasoning_key: str | None = None  # the message field the template reads reasoning from
    reasoning_history: str = "n/a"  # "kept" or "dropped": earlier turns' reasoning
    content_parts: bool = False  # the template iterates typed content parts
    generation_prompt: str = ""
    inserted_before_content: str = ""  # e.g. Qwen3's empty "<think>\n\n</think>\n\n" in the last turn
    end_of_turn: str = ""
    prefix_preserving: bool = False
    always_adds_generation_prompt: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _probe_text(tag: str) -> str:
    return f"\ue000{tag}\ue001"


class ChatEncoder:
    """Turns normalised conversations into texts, tokens and labels."""

    def __init__(self, tokenizer, labels: str = "all", *, train_empty_think: bool = False,
                 reasoning_turns: str = "per-turn"):
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        self.labels = labels
        self.train_empty_think = train_empty_think
        self.reasoning_turns = reasoning_turns
        try:
            self.info = self._probe()
        except Exception as exc:
            if labels == "assistant":
                raise CollateError(
                    f"labels=assistant: cannot find what this chat template writes after an assistant turn "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            # labels=all needs no fact about the template: each conversation's own rendering reports
            # the template's error (or the sandbox's) as it does for any template.
            self.info = TemplateInfo()
        if labels == "assistant" and not self.info.end_of_turn:
            raise CollateError(
                "labels=assistant: this chat template writes no end-of-turn text after an assistant "
                "turn, so the model could not learn to stop; use labels=all or another template"
            )
        if labels == "assistant":
            self._check_probe_mask()

    # -- probing ------------------------------------------------------------------------------------
    def _apply(self, messages, **kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    def _renders(self, messages, text: str, **kwargs) -> bool:
        try:
            return text in self._apply(messages, **kwargs)
        except Exception:
            return False

    def _probe(self) -> TemplateInfo:
        info = TemplateInfo()
        u1, a1, u2, a2 = (_probe_text(t) for t in ("U1", "A1", "U2", "A2"))
        info.content_parts = not self._renders([{"role": "user", "content": u1}], u1) and self._renders(
            [{"role": "user", "content": [{"type": "text", "text": u1}]}], u1)

        def msg(role: str, text: str, **extra) -> dict:
            return {"role": role, "content": [{"type": "text", "text": text}] if info.content_parts else text, **extra}

        first = [msg("user", u1), msg("assistant", a1)]
        more = first + [msg("user", u2), msg("assistant", a2)]
        last = self._apply(first)
        full = self._apply(more)
        with_prompt = self._apply(first[:1], add_generation_prompt=True)
        without = self._apply(first[:1])
        eos = getattr(self.tokenizer, "eos_token", None) or ""
        closed = last[: -len(eos)] if eos and last.endswith(eos) else last  # Phi-3 ends a rendering with eos
        info.prefix_preserving = full.startswith(closed)
        prompt = with_prompt[len(without):] if with_prompt.startswith(without) else ""
        info.end_of_turn = self._probe_end_of_turn(last, full, a1, u2, [without[: without.index(u1)], prompt])
        if prompt:
            info.generation_prompt = prompt
        else:  # the template writes the assistant header after every turn: take it from a rendering
            between = last[last.index(u1) + len(u1): last.index(a1)]
            eot = info.end_of_turn
            header = between[between.index(eot) + len(eot):] if eot and eot in between else between
            # Without a generation prompt the whitespace around the header is the answer's own (" Hello"
            # after "[/INST]" is one token the model writes).
            info.generation_prompt = header.strip()
            # Some Llama-3 builds write it after every turn; others (Mistral) have no generation prompt.
            info.always_adds_generation_prompt = bool(header.strip()) and closed.rstrip().endswith(header.strip())
        header_at = last.rfind(info.generation_prompt, 0, last.index(a1)) if info.generation_prompt else -1
        if header_at >= 0:
            inserted = last[header_at + len(info.generation_prompt): last.index(a1)]
            info.inserted_before_content = inserted if inserted.strip() else ""  # a space is the answer's own
        info.system = self._renders([msg("system", _probe_text("S"))] + first, _probe_text("S"))
        name = _probe_text("TOOL")
        tools = [{"type": "function", "function": {"name": name, "description": "probe",
                                                   "parameters": {"type": "object", "properties": {}}}}]
        info.tools = self._renders(first, name, tools=tools)
        call = _probe_text("CALL")
        calling = [first[0], msg("assistant", "", tool_calls=[
            {"type": "function", "function": {"name": call, "arguments": {}}}])]
        info.tool_calls = self._renders(calling, call, tools=tools)
        result = _probe_text("RESULT")
        info.tool_results = self._renders(calling + [msg("tool", result), msg("assistant", a2)], result, tools=tools)
        source = self.tokenizer.chat_template or ""
        thought = _probe_text("THINK")
        for key in ("reasoning_content", "thinking", "reasoning"):
            if key in source and self._renders([first[0], msg("assistant", a1, **{key: thought})], thought):
                info.reasoning_key = key
                break
        if info.reasoning_key:
            history = [first[0], msg("assistant", a1, **{info.reasoning_key: thought}), msg("user", u2),
                       msg("assistant", a2)]
            info.reasoning_history = "kept" if self._renders(history, thought) else "dropped"
        return info

    def _probe_end_of_turn(self, last: str, more: str, a1: str, u2: str, next_headers: list[str]) -> str:
        """The text the template writes after every assistant turn (e.g. '<|im_end|>').

        It is the common start of what follows an assistant message when it is the last one and when
        another turn follows, compared token by token (a character-wise common prefix could end inside
        the next header: "<|end|>\n<|" for Phi-3). A tail that starts the next turn's header (Llama-3
        builds that write `<|start_header_id|>` after every turn) is not part of it.
        """
        after_last = last[last.index(a1) + len(a1):]
        after_more = more[more.index(a1) + len(a1): more.index(u2)]
        last_enc = self.backend.encode(after_last, add_special_tokens=False)
        more_enc = self.backend.encode(after_more, add_special_tokens=False)
        ends = []
        for x, y, (_, stop) in zip(last_enc.ids, more_enc.ids, last_enc.offsets):
            if x != y:
                break
            ends.append(stop)
        bos = getattr(self.tokenizer, "bos_token", None) or ""
        headers = [h[len(bos):] if bos and h.startswith(bos) else h for h in next_headers]
        headers = [h for h in headers if h]  # the user header (text before the first user content), the prompt
        common = after_last[: ends[-1]] if ends else ""
        for end in [0] + ends:
            tail = common[end:]
            if tail.strip() and any(h.startswith(tail) for h in headers):
                common = common[:end]
                break
        return common.rstrip()

    def _check_probe_mask(self) -> None:
        """Refuse a template whose assistant mask would train everything or nothing."""
        probe = Conversation([{"role": "user", "content": "What is two plus two?"},
                              {"role": "assistant", "content": "Two plus two is four."}])
        [rendered] = self.render([probe])
        if isinstance(rendered, Exception):
            raise CollateError(f"labels=assistant: the probe conversation cannot be masked ({rendered})")
        [encoding] = self.encode_texts(rendered.texts)
        _, labels = self.labels_for(encoding, rendered.masks[0])
        trained = int(np.count_nonzero(labels != IGNORE_INDEX))
        if trained == 0 or trained >= len(labels) - 1:
            raise CollateError(
                f"labels=assistant: the mask of a probe conversation trains {'nothing' if trained == 0 else 'everything'}"
                " with this chat template; refusing it"
            )

    # -- rendering ------------------------------------------------------------------------------------
    def adapt(self, conversation: Conversation) -> list[dict]:
        """The messages as this template reads them; ValueError when it cannot show what they hold."""
        info = self.info
        if conversation.plain and not info.content_parts:
            return conversation.messages
        if conversation.tools and not info.tools:
            raise ValueError("the record has tools but the chat template does not show tools")
        out = []
        for i, message in enumerate(conversation.messages):
            role = message["role"]
            if "tool_calls" in message and not info.tool_calls:
                raise ValueError(f"message {i} has tool calls but the chat template does not show tool calls")
            if role == "tool" and not info.tool_results:
                raise ValueError(f"message {i} is a tool result but the chat template does not show tool results")
            if role == "system" and not info.system:
                raise ValueError("the record has a system message but the chat template leaves it out")
            content = message["content"]
            if info.content_parts:  # the template iterates typed parts and cannot print a plain string
                parts = content if isinstance(content, TextParts) else [content]
                content = [{"type": "text", "text": t} for t in parts]
            elif isinstance(content, TextParts):
                content = "".join(content)
            adapted = {**message, "content": content}
            if "reasoning_content" in message:
                if info.reasoning_key is None:
                    raise ValueError(f"message {i} has reasoning but the chat template does not show reasoning")
                if info.reasoning_key != "reasoning_content":
                    adapted[info.reasoning_key] = adapted.pop("reasoning_content")
            elif info.reasoning_key and role == "assistant" and isinstance(content, str) and "</think>" in content:
                # Inline <think>...</think> read as the turn's reasoning, as Qwen3's own template reads it.
                head, _, rest = content.partition("</think>")
                thought = head.rstrip("\n").split("<think>")[-1].lstrip("\n")
                adapted["content"] = rest.lstrip("\n")
                if thought.strip("\n"):
                    adapted[info.reasoning_key] = thought
            out.append(adapted)
        return out

    def _render_many(self, items: list[tuple[list[dict], list | None]]) -> list[str | Exception]:
        """Render (messages, tools) pairs: tool-less ones in one batch call, the others one by one."""
        out: list[str | Exception | None] = [None] * len(items)
        plain = [k for k, (_, tools) in enumerate(items) if not tools]
        if plain:
            try:
                texts = self.tokenizer.apply_chat_template([items[k][0] for k in plain], tokenize=False)
                for k, text in zip(plain, texts):
                    out[k] = text
            except Exception:  # one bad conversation fails the batch call: render one by one to isolate it
                pass
        for k, (messages, tools) in enumerate(items):
            if out[k] is None:
                try:
                    out[k] = self._apply(messages, **({"tools": tools} if tools else {}))
                except Exception as exc:  # the template's own error (raise_exception, TypeError...)
                    out[k] = exc
        return out

    def render(self, conversations: list[Conversation]) -> list[Rendered | Exception]:
        """Each conversation's texts and masks; a conversation that cannot be used gives its exception."""
        adapted: list[list[dict] | Exception] = []
        for conversation in conversations:
            try:
                adapted.append(self.adapt(conversation))
            except ValueError as exc:
                adapted.append(exc)
        good = [k for k, a in enumerate(adapted) if not isinstance(a, Exception)]
        texts = self._render_many([(adapted[k], conversations[k].tools) for k in good])
        out: list[Rendered | Exception] = list(adapted)
        need_mask = []
        for k, text in zip(good, texts):
            if isinstance(text, Exception):
                out[k] = text
                continue
            conversation = conversations[k]
            if self._needs_mask(conversation):
                need_mask.append((k, text))
            else:
                out[k] = Rendered([text], [None])
                if conversation.has_reasoning:
                    self._count_dropped_reasoning(adapted[k], text, out[k])
        if need_mask:
            skeletons = [self._skeleton(adapted[k]) for k, _ in need_mask]
            rendered_skeletons = self._render_many(
                [(s, conversations[k].tools) for (k, _), (s, _) in zip(need_mask, skeletons)]
            )
            for (k, text), (_, values), skeleton in zip(need_mask, skeletons, rendered_skeletons):
                try:
                    if isinstance(skeleton, Exception):
                        raise ValueError(f"chat template error: {skeleton}")
                    out[k] = self._masked(conversations[k], adapted[k], text, skeleton, values)
                except ValueError as exc:
                    out[k] = exc
        return out

    def _needs_mask(self, conversation: Conversation) -> bool:
        if self.labels == "assistant":
            return True
        if conversation.train is not None and any(flag is False for flag in conversation.train):
            return True
        return conversation.has_reasoning and self.reasoning_turns == "per-turn"

    def _count_dropped_reasoning(self, adapted, text, rendered) -> None:
        """Without a mask (reasoning_turns=as-rendered, labels=all): count reasoning the template left out."""
        key = self.info.reasoning_key
        for message in adapted:
            if key in message and message[key].strip() not in text:
                rendered.dropped_reasoning += 1

    @staticmethod
    def _skeleton(messages: list[dict]) -> tuple[list[dict], dict]:
        """The messages with each printed string replaced by a placeholder, and the real values."""
        values: dict[tuple[int, str, str], str] = {}
        out = []
        for i, message in enumerate(messages):
            s = dict(message)
            content = message["content"]
            if isinstance(content, str):
                # An empty content beside tool calls stays empty: templates branch on it (Qwen3).
                if content or "tool_calls" not in message:
                    s["content"] = _PH.format(i, "c", "")
                    values[(i, "c", "")] = content
            else:
                s["content"] = [{"type": "text", "text": _PH.format(i, "c", j)} for j in range(len(content))]
                values.update({(i, "c", str(j)): part["text"] for j, part in enumerate(content)})
            for key in ("reasoning_content", "thinking", "reasoning"):
                if key in message and message["role"] == "assistant":
                    s[key] = _PH.format(i, "r", "")
                    values[(i, "r", "")] = message[key]
            if "tool_calls" in message:
                calls = []
                for j, call in enumerate(message["tool_calls"]):
                    calls.append({**call, "function": {**call["function"], "name": _PH.format(i, "n", j)}})
                    values[(i, "n", str(j))] = call["function"]["name"]
                s["tool_calls"] = calls
            out.append(s)
        return out, values

    @staticmethod
    def _align(text: str, skeleton: str, values: dict) -> dict[tuple[int, str, str], Span]:
        """Where each placeholder's real value sits in `text`; ValueError when they do not line up."""
        pieces = _PH_RE.split(skeleton)
        # pieces: literal, (index, field, part), literal, ..., literal
        where: dict[tuple[int, str, str], Span] = {}
        pos = 0
        literals = pieces[0::4]
        for n, literal in enumerate(literals):
            if not text.startswith(literal, pos):
                raise ValueError("cannot locate the messages in the rendering: the chat template rewrites them")
            pos += len(literal)
            if n == len(literals) - 1:
                break
            key = (int(pieces[4 * n + 1]), pieces[4 * n + 2], pieces[4 * n + 3])
            value = values[key]
            following = literals[n + 1]
            for strip in _STRIPS:
                candidate = strip(value)
                if text.startswith(candidate, pos) and text.startswith(following, pos + len(candidate)):
                    break
            else:
                raise ValueError(
                    f"cannot locate message {key[0]} in the rendering: the chat template rewrites its text"
                )
            where[key] = (pos, pos + len(candidate))
            pos += len(candidate)
        if pos != len(text):
            raise ValueError("cannot locate the messages in the rendering: the chat template rewrites them")
        return where

    @staticmethod
    def _layout(where: dict) -> tuple[dict, dict, dict]:
        """Per message: its pieces (span, field), its extent, and the messages rendered before and after it."""
        anchors: dict[int, list[tuple[Span, str]]] = {}
        bounds: dict[int, Span] = {}
        for (i, field, _), span in where.items():  # in the order of the rendering
            anchors.setdefault(i, []).append((span, field))
            start, end = bounds.get(i, span)
            bounds[i] = (min(start, span[0]), max(end, span[1]))
        order = sorted(bounds, key=lambda i: bounds[i][0])
        neighbours = {i: (order[n - 1] if n else None, order[n + 1] if n + 1 < len(order) else None)
                      for n, i in enumerate(order)}
        return anchors, bounds, neighbours

    def _masked(self, conversation: Conversation, adapted, text: str, skeleton: str, values: dict) -> Rendered:
        where = self._align(text, skeleton, values)
        anchors, bounds, neighbours = self._layout(where)
        dropped = [i for i, m in enumerate(adapted) if m["role"] == "assistant"
                   and (i, "r", "") in values and (i, "r", "") not in where]
        split_turns = dropped if self.reasoning_turns == "per-turn" else []
        assistant_only = self.labels == "assistant"
        spans = []
        for i, message in enumerate(adapted):
            flag = conversation.train[i] if conversation.train is not None else None
            role = message["role"]
            if role == "tool":
                wanted = False  # tool results are never trained
            elif flag is not None:
                wanted = flag
            else:
                wanted = not assistant_only or role == "assistant"
            if assistant_only and i in split_turns:
                wanted = False  # trained in a sequence of its own, with its reasoning
            if wanted != assistant_only:
                continue  # assistant: mark the turns to train; all: mark the turns not to train
            if i not in anchors:
                if wanted and role == "assistant":
                    raise ValueError(f"cannot locate message {i} ({role}) in the rendering")
                continue
            spans.append(self._turn_span(text, i, role, anchors[i], bounds, neighbours, wanted))
        texts = [text]
        masks: list[Mask | None] = [Mask(spans, assistant_only) if spans or assistant_only else None]
        for i in split_turns:
            sub_text, mask = self._turn_alone(conversation, adapted, i)
            texts.append(sub_text)
            masks.append(mask)
        return Rendered(texts, masks, dropped_reasoning=0 if split_turns else len(dropped))

    def _turn_alone(self, conversation: Conversation, adapted, i: int) -> tuple[str, Mask]:
        """Assistant turn i as the last turn of its history, where the template keeps its reasoning."""
        sub = adapted[: i + 1]
        skeleton, values = self._skeleton(sub)
        text, rendered = self._render_many([(sub, conversation.tools), (skeleton, conversation.tools)])
        if isinstance(text, Exception) or isinstance(rendered, Exception):
            raise ValueError(f"chat template error on the history of message {i}")
        where = self._align(text, rendered, values)
        if (i, "r", "") not in where:
            raise ValueError(f"the chat template leaves out the reasoning of message {i} even as the last turn")
        anchors, bounds, neighbours = self._layout(where)
        return text, Mask([self._turn_span(text, i, "assistant", anchors[i], bounds, neighbours, True)])

    def _turn_span(self, text, i, role, anchors, bounds, neighbours, trained: bool) -> Span:
        """Characters of message i's turn: from the end of its header through its end-of-turn text.

        A trained assistant turn without reasoning leaves out the text the template inserts before its
        content (an empty thinking block), unless train_empty_think is set.
        """
        first, last = bounds[i]
        before, after = neighbours.get(i, (None, None))
        floor = bounds[before][1] if before is not None else 0
        ceiling = bounds[after][0] if after is not None else len(text)
        start = first
        if role == "assistant":
            for header in self._headers:
                header_at = text.rfind(header, floor, first)
                if header_at >= 0:
                    start = header_at + len(header)
                    break
            inserted = self.info.inserted_before_content
            has_reasoning = any(field == "r" for _, field in anchors)
            if (trained and inserted and not has_reasoning and not self.train_empty_think
                    and text.startswith(inserted, start)):
                start += len(inserted)
        eot = self.info.end_of_turn
        end_at = text.find(eot, last, ceiling) if eot else -1
        if end_at < 0:
            if role == "assistant" and self.labels == "assistant":
                raise ValueError(f"no end-of-turn text {eot!r} after assistant message {i}")
            return (start, last)
        return (start, end_at + len(eot))

    @functools.cached_property
    def _headers(self) -> list[str]:
        """The generation prompt, then shorter forms of it (a history turn may not repeat all of it)."""
        prompt = self.info.generation_prompt
        out = [prompt, prompt.rstrip()]
        if prompt:
            encoding = self.backend.encode(prompt, add_special_tokens=False)
            out += [prompt[:stop] for _, stop in encoding.offsets[-2::-1]]
        return [h for h in dict.fromkeys(out) if h]

    # -- tokenizing -----------------------------------------------------------------------------------
    def encode_texts(self, texts: list[str], offsets: bool = True):
        """Tokenize rendered texts in one Rust call (both cores, GIL released); offsets only when masking."""
        if offsets:
            return self.backend.encode_batch(texts, add_special_tokens=False)
        return self.backend.encode_batch_fast(texts, add_special_tokens=False)

    def labels_for(self, encoding, mask: Mask | None) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(encoding.ids, dtype=np.int32)
        if mask is None:
            labels = ids.copy()
        else:
            spans = sorted(s for s in mask.spans if s[1] > s[0])
            inside = np.zeros(len(ids), dtype=bool)
            if spans and len(ids):
                offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
                starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
                ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))
                # A token is in a span when it starts inside it. A header token that swallows the content's
                # leading whitespace (Phi-3's `<|assistant|>` has rstrip; newlines merge) starts in the
                # header, so it stays out; `<|end|>` owning the "\n" after it is in.
                k = np.searchsorted(ends, offsets[:, 0], side="right")
                within = k < len(spans)
                inside[within] = starts[k[within]] <= offsets[within, 0]
                inside &= offsets[:, 1] > offsets[:, 0]

            trained = inside if mask.only else ~inside
            labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
            labels[trained] = ids[trained]
        if len(labels):
            labels[0] = IGNORE_INDEX
        return ids, labels
