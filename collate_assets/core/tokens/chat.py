"""Render conversations with the tokenizer's chat template, tokenize them and find what to train.

Tokens equal `tokenizer.apply_chat_template(messages, tools=tools, tokenize=True)` for the normalised
record (`collate_assets.core.read.formats`): transformers renders the template to text and encodes it without
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
from jinja2.exceptions import SecurityError

from ..errors import CollateError
from .encoder import TextEncoder
from . import sequences
from .probes import PROBE_CALL_ID, probe_record
from ..read.formats import Conversation, TextParts, normalize_record
from ..settings import IGNORE_INDEX

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
    # the turns of messages with a loss weight other than 1, and that weight (their tokens that are trained)
    weights: list[tuple[Span, float]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Rendered:
    """A conversation as one or more texts to tokenize, each with its mask (None: train every token)."""

    texts: list[str]
    masks: list[Mask | None]
    dropped_reasoning: int = 0
    unshown_reasoning: int = 0  # reasoning the template cannot show, dropped (unshown_reasoning=drop)
    # Per text: for each assistant turn in it, the characters of its end-of-turn text (what the model
    # writes to stop: `<|im_end|>`, `<|return|>`, GLM's next role token), or None when the template
    # writes none there (the last turn of GLM). Turns meant to be trained only; [] when not worked out.
    turn_ends: list[list[Span | None]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TemplateInfo:
    """What a chat template does, learned from probe conversations.

    A feature is True (shown), False (the probe rendered without it: records using it are rejected
    up front) or None (the template raised on the probe, e.g. Mistral's checks on tool-call ids: each
    record is rendered and the template's own error, or a rendering that leaves the feature out, is
    the reason it is rejected).
    """

    system: bool | None = False
    tools: bool | None = False
    tool_calls: bool | None = False
    tool_results: bool | None = False
    needs_tools: bool = False  # the template renders only with a tools list (Hermes-3 tool use)
    arguments: str = "object"  # tool-call arguments as the template reads them: "object" or "string" (JSON text)
    reasoning_key: str | None = None  # the message field the template reads reasoning from
    # Where it can show reasoning: "every turn", "tool-call turns" (Gemma-4) or "turns after the first
    # answer" (Kimi-K2-Thinking); a turn whose reasoning it cannot show follows unshown_reasoning.
    reasoning_shown: str = "n/a"
    reasoning_history: str = "n/a"  # "kept" or "dropped": earlier turns' reasoning
    content_parts: bool = False  # the template iterates typed content parts
    generation_prompt: str = ""
    inserted_before_content: str = ""  # e.g. Qwen3's empty "<think>\n\n</think>\n\n" in the last turn
    end_of_turn: str = ""  # after an assistant turn another turn follows
    end_of_last_turn: str = ""  # after the last turn, when it differs (harmony's <|return|>)
    end_of_call: str = ""  # after a turn of tool calls, when it differs (harmony's <|call|>, Gemma-4's <tool_call|>)
    ends_at_next_role: bool = False  # no end text: the next turn's role token stops the model (GLM)
    prefix_preserving: bool = False
    always_adds_generation_prompt: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def end_markers(self) -> list[str]:
        """Every text that ends an assistant turn, by position (mid, last, after tool calls)."""
        return [m for m in dict.fromkeys((self.end_of_turn, self.end_of_last_turn, self.end_of_call)) if m]


def _probe_text(tag: str) -> str:
    return f"\ue000{tag}\ue001"


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _common_suffix(a: str, b: str) -> str:
    n = _common_prefix(a[::-1], b[::-1])
    return a[len(a) - n:] if n else ""


def _drop_next_header(text: str, headers: list[str]) -> str:
    """`text` less a tail that starts one of `headers` (the next turn's opening, written right after)."""
    for end in range(len(text)):
        tail = text[end:]
        if tail.strip() and any(h.startswith(tail) for h in headers):
            return text[:end]
    return text


def _opener_at(gap: str, openers: list[str]) -> int:
    """Where the next turn opens in `gap`: the position whose text begins most like a turn opening
    (the generation prompt, another role's header), the first such position on a tie."""
    best, at = 0, 0
    for k in range(len(gap)):
        score = max((_common_prefix(gap[k:], o) for o in openers if o), default=0)
        if score > best:
            best, at = score, k
    return at


# What a tool call's arguments end with before the template's own closing text (`{"a": 1}}\n]`).
_ARGUMENT_CLOSERS = "}]) \n\t\"'"

# A role token written as a bracketed marker (`<|user|>`, `<|observation|>`, `[INST]`).
_MARKER_RE = re.compile(r"<\|?[\w.:-]{1,40}\|?>|\[[A-Z_]{1,40}\]")


class _Unshown(ValueError):
    """A turn's reasoning that the template does not show even as the last turn."""


class ChatEncoder:
    """Turns normalised conversations into texts, tokens and labels."""

    def __init__(self, tokenizer, labels: str = "all", *, train_empty_think: bool = False,
                 reasoning_turns: str = "per-turn", unshown_reasoning: str = "reject", encoder: str = "tokenizers"):
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        self.text_encoder = TextEncoder(tokenizer, encoder)
        self.renderer = None  # a DirectRenderer once use_direct_render() is called (runs do)
        self.labels = labels
        self.train_empty_think = train_empty_think
        self.reasoning_turns = reasoning_turns
        self.unshown_reasoning = unshown_reasoning
        self._probe_kwargs: dict = {}
        self._next_header = self._history_header = self._call_header = ""
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
            self.info = TemplateInfo(system=None, tools=None, tool_calls=None, tool_results=None)
        if labels == "assistant" and not self.info.end_markers and not self.info.ends_at_next_role:
            raise CollateError(
                "labels=assistant: this chat template writes no end-of-turn text after an assistant "
                "turn, so the model could not learn to stop; use labels=all or another template"
            )
        if labels == "assistant":
            self._check_probe_mask()

    @classmethod
    def from_settings(cls, tokenizer, settings, labels: str | None = None) -> "ChatEncoder":
        """The encoder a run with `settings` uses (`labels` to override theirs)."""
        encoder = cls(tokenizer, labels or settings.labels, train_empty_think=settings.train_empty_think,
                      reasoning_turns=settings.reasoning_turns, unshown_reasoning=settings.unshown_reasoning,
                      encoder=settings.encoder)
        encoder.use_direct_render()
        return encoder

    def use_direct_render(self) -> None:
        """Render through a DirectRenderer (render.py) from now on, once it renders the probe conversations
        as apply_chat_template does."""
        from .render import DirectRenderer
        from .template_limits import PROBE_CONVERSATIONS

        renderer = DirectRenderer(self.tokenizer)
        probes = []
        for record in [*({"messages": [dict(m) for m in c]} for c in PROBE_CONVERSATIONS), probe_record(self)]:
            try:
                conversation = normalize_record(record)
                probes.append((self.adapt(conversation), conversation.tools))
            except (ValueError, CollateError):
                continue
        renderer.check(probes)
        self.renderer = renderer

    # -- probing ------------------------------------------------------------------------------------
    def _apply(self, messages, **kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    def _try(self, messages, **kwargs) -> str | None:
        """The probe's rendering, or None when the template raises on it."""
        try:
            return self._apply(messages, **{**self._probe_kwargs, **kwargs})
        except Exception:
            return None

    def _renders(self, messages, text: str, **kwargs) -> bool | None:
        """Whether the rendering shows `text`; None when the template raises on the probe."""
        rendered = self._try(messages, **kwargs)
        return None if rendered is None else text in rendered

    def _probe(self) -> TemplateInfo:
        info = TemplateInfo()
        u1, a1, u2, a2 = (_probe_text(t) for t in ("U1", "A1", "U2", "A2"))
        name = _probe_text("TOOL")
        tools = [{"type": "function", "function": {"name": name, "description": "probe",
                                                   "parameters": {"type": "object", "properties": {}}}}]
        if self._try([{"role": "user", "content": u1}]) is None and self._try(
                [{"role": "user", "content": [{"type": "text", "text": u1}]}]) is None:
            # Some tool-use templates raise without a tools list: probe them with one.
            if self._try([{"role": "user", "content": u1}], tools=tools) is not None:
                info.needs_tools = True
                self._probe_kwargs = {"tools": tools}
        info.content_parts = not self._renders([{"role": "user", "content": u1}], u1) and bool(self._renders(
            [{"role": "user", "content": [{"type": "text", "text": u1}]}], u1))

        def msg(role: str, text: str, **extra) -> dict:
            return {"role": role, "content": [{"type": "text", "text": text}] if info.content_parts else text, **extra}

        first = [msg("user", u1), msg("assistant", a1)]
        more = first + [msg("user", u2), msg("assistant", a2)]
        kw = self._probe_kwargs
        last = self._apply(first, **kw)
        full = self._apply(more, **kw)
        with_prompt = self._apply(first[:1], add_generation_prompt=True, **kw)
        without = self._apply(first[:1], **kw)
        eos = getattr(self.tokenizer, "eos_token", None) or ""
        closed = last[: -len(eos)] if eos and last.endswith(eos) else last  # Phi-3 ends a rendering with eos
        info.prefix_preserving = full.startswith(closed)
        prompt = with_prompt[len(without):] if with_prompt.startswith(without) else ""
        bos = getattr(self.tokenizer, "bos_token", None) or ""
        user_header = without[: without.index(u1)]
        user_header = user_header[len(bos):] if bos and user_header.startswith(bos) else user_header
        self._probe_end_of_turn(info, last, full, a1, u2, [h for h in (user_header, prompt) if h], prompt)
        eot = info.end_of_turn
        if prompt:
            info.generation_prompt = prompt
        else:  # the template writes the assistant header after every turn: take it from a rendering
            between = last[last.index(u1) + len(u1): last.index(a1)]
            if eot and eot in between:
                header = between[between.index(eot) + len(eot):]
            else:  # from where it opens like the next user turn does (Command-R: after the user's end)
                header = between[_opener_at(between, [self._next_header]):] if self._next_header.strip() else between
            # Without a generation prompt the whitespace around the header is the answer's own (" Hello"
            # after "[/INST]" is one token the model writes).
            info.generation_prompt = header.strip()
            # Some Llama-3 builds write it after every turn; others (Mistral) have no generation prompt.
            info.always_adds_generation_prompt = bool(header.strip()) and closed.rstrip().endswith(header.strip())
        between = last[last.index(u1) + len(u1): last.index(a1)]
        self._history_header = between[_opener_at(between, [self._next_header, prompt]):]
        header_at = last.rfind(info.generation_prompt, 0, last.index(a1)) if info.generation_prompt else -1
        if header_at >= 0:
            inserted = last[header_at + len(info.generation_prompt): last.index(a1)]
            info.inserted_before_content = inserted if inserted.strip() else ""  # a space is the answer's own
        info.system = self._renders([msg("system", _probe_text("S"))] + first, _probe_text("S"))
        info.tools = self._renders(first, name, tools=tools)
        call = _probe_text("CALL")

        def calling(arguments: dict, call_name: str = call, **extra) -> list[dict]:
            return [first[0], msg("assistant", "", tool_calls=[
                {"id": PROBE_CALL_ID, "type": "function", "function": {"name": call_name, "arguments": arguments}}],
                **extra)]

        info.tool_calls = self._renders(calling({}), call, tools=tools)
        if info.tool_calls:
            shown = self._try(calling({}), tools=tools) or ""
            before_call = shown[shown.index(u1) + len(u1): shown.index(call)]
            before_call = before_call[_opener_at(before_call, [self._next_header, prompt]):]
            common = before_call[: _common_prefix(before_call, self._history_header)]
            # to the end of the last marker both share (Command-R: "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")
            cut = max(common.rfind(c) for c in ">]\n") + 1
            self._call_header = common[:cut]
        result = _probe_text("RESULT")
        answered = [msg("tool", result, tool_call_id=PROBE_CALL_ID), msg("assistant", a2)]
        info.tool_results = self._renders(calling({}) + answered, result, tools=tools)
        if info.tool_calls:
            shown = self._try(calling({"key": "value"}, "probe_call"), tools=tools) or ""
            if "{'key': 'value'}" in shown and '"key"' not in shown:
                info.arguments = "string"  # the template prints arguments as they are: it wants JSON text
            if info.tool_results:
                self._probe_end_of_call(info, calling, answered, call, tools)
        source = self.tokenizer.chat_template or ""
        thought = _probe_text("THINK")
        for key in ("reasoning_content", "thinking", "reasoning"):
            if key not in source:
                continue
            if self._renders([first[0], msg("assistant", a1, **{key: thought})], thought):
                info.reasoning_key, info.reasoning_shown = key, "every turn"
            elif info.tool_calls and self._renders(calling({}, **{key: thought}), thought, tools=tools):
                info.reasoning_key, info.reasoning_shown = key, "tool-call turns"  # Gemma-4
            elif self._renders(first + [msg("user", u2), msg("assistant", a2, **{key: thought})], thought):
                info.reasoning_key, info.reasoning_shown = key, "turns after the first answer"  # Kimi-K2-Thinking
            if info.reasoning_key:
                break
        if info.reasoning_key:
            key = info.reasoning_key
            history = [first[0], msg("assistant", a1, **{key: thought}), msg("user", u2), msg("assistant", a2)]
            info.reasoning_history = "kept" if self._renders(history, thought) else "dropped"
            if info.inserted_before_content and info.reasoning_shown == "every turn":
                # Text written before the content whether or not there is reasoning (harmony's
                # "<|channel|>final<|message|>") is the turn's own, not an empty thinking block.
                shown = self._try([first[0], msg("assistant", a1, **{key: thought})]) or ""
                if info.inserted_before_content + a1 in shown:
                    info.inserted_before_content = ""
        return info

    def _probe_end_of_turn(self, info: TemplateInfo, last: str, more: str, a1: str, u2: str,
                           headers: list[str], prompt: str) -> None:
        """What the template writes to end an assistant turn, mid-conversation and as the last turn.

        Mostly the common start of what follows an assistant message when it is the last one and when
        another turn follows ('<|im_end|>'), less a tail that starts the next turn's header (Phi-3's
        "<|end|>\n<|", Llama-3 builds that write `<|start_header_id|>` after every turn). When the two
        have nothing in common the turn ends by position (harmony: `<|end|>` mid-conversation,
        `<|return|>` last): the end mid-conversation is what comes before the next turn's opening.
        When nothing comes before it (GLM), the next role token is the stop the model must learn.
        """
        after_last = last[last.index(a1) + len(a1):]
        after_more = more[more.index(a1) + len(a1): more.index(u2)]
        common = after_last[: _common_prefix(after_last, after_more)]
        mid = _drop_next_header(common, headers).rstrip()
        if not mid.strip():
            mid = after_more[: _opener_at(after_more, [prompt, *headers])].rstrip()
            info.ends_at_next_role = not mid.strip() and self._role_marker(after_more.lstrip()) > 0
        info.end_of_turn = mid
        self._next_header = after_more[len(mid):] if after_more.startswith(mid) else after_more
        if not after_last.startswith(mid) or not mid:
            info.end_of_last_turn = _drop_next_header(after_last, headers).strip()

    def _probe_end_of_call(self, info: TemplateInfo, calling, answered, call: str, tools) -> None:
        """What ends a turn of tool calls when it is not the usual end of turn (harmony's `<|call|>`,
        Command-R's `<|END_ACTION|><|END_OF_TURN_TOKEN|>`, GLM's `</tool_call>`): the text common to
        two calls with different arguments, up to where the tool's turn opens."""
        gaps = []
        for arguments in ({}, {"key": "value", "n": 1}):
            text = self._try(calling(arguments) + answered, tools=tools)
            if text is None or call not in text:
                return
            after = text[text.index(call) + len(call):]
            gaps.append(after[: after.index("\ue000")] if "\ue000" in after else after)
        tail = _common_suffix(*gaps)
        if any(m in tail for m in info.end_markers):
            return
        openers = [info.generation_prompt, self._next_header]
        end = tail[: _opener_at(tail, openers)].lstrip(_ARGUMENT_CLOSERS).rstrip()
        if end:
            info.end_of_call = end

    def _check_probe_mask(self) -> None:
        """Refuse a template whose assistant mask would train everything or nothing."""
        tools = self._probe_kwargs.get("tools")
        probe = Conversation([{"role": "user", "content": "What is two plus two?"},
                              {"role": "assistant", "content": "Two plus two is four."}], tools=tools)
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
        # A feature the probe showed missing (False) rejects the record; one the template raised on
        # (None) is left to the record's own rendering (see TemplateInfo).
        if conversation.tools and info.tools is False:
            raise ValueError("the record has tools but the chat template does not show tools")
        out = []
        for i, message in enumerate(conversation.messages):
            role = message["role"]
            if "tool_calls" in message and info.tool_calls is False:
                raise ValueError(f"message {i} has tool calls but the chat template does not show tool calls")
            if role == "tool" and info.tool_results is False:
                raise ValueError(f"message {i} is a tool result but the chat template does not show tool results")
            if role == "system" and info.system is False:
                raise ValueError("the record has a system message but the chat template leaves it out")
            content = message["content"]
            if info.content_parts:  # the template iterates typed parts and cannot print a plain string
                parts = content if isinstance(content, TextParts) else [content]
                content = [{"type": "text", "text": t} for t in parts]
            elif isinstance(content, TextParts):
                content = "".join(content)
            adapted = {**message, "content": content}
            if "tool_calls" in message and info.arguments == "string":
                adapted["tool_calls"] = [
                    {**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False)}}
                    for c in message["tool_calls"]]
            if "reasoning_content" in message:
                if info.reasoning_key is None:
                    if self.unshown_reasoning == "drop":
                        del adapted["reasoning_content"]  # counted by render()
                        out.append(adapted)
                        continue
                    raise ValueError(f"message {i} has reasoning but the chat template does not show reasoning "
                                     "(--unshown-reasoning drop trains the turn without it)")
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
        """Render (messages, tools) pairs: through the direct renderer when it is on (each render checked
        as render.py says), else tool-less ones in one apply_chat_template call, the others one by one."""
        renderer = self.renderer
        if renderer is not None and renderer.on:
            out: list[str | Exception] = []
            for messages, tools in items:
                try:
                    out.append(renderer.render_one(messages, tools or None, renderer.due()))
                except Exception as exc:  # the template's own error (raise_exception, TypeError...)
                    out.append(exc)
            return out
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
            conversation = conversations[k]
            if isinstance(text, Exception):
                out[k] = self._template_error(conversation, text)
                continue
            unshown = self._unshown_features(conversation, adapted[k], text)
            if unshown is not None:
                out[k] = unshown
                continue
            if self._needs_mask(conversation):
                need_mask.append((k, text))
            else:
                out[k] = Rendered([text], [None])
                if conversation.has_reasoning:
                    self._count_dropped_reasoning(adapted[k], text, out[k])
            if conversation.has_reasoning and self.info.reasoning_key is None and isinstance(out[k], Rendered):
                out[k].unshown_reasoning = sum("reasoning_content" in m for m in conversation.messages)
        if need_mask:
            skeletons = [self._skeleton(adapted[k]) for k, _ in need_mask]
            rendered_skeletons = self._render_many(
                [(s, conversations[k].tools) for (k, _), (s, _) in zip(need_mask, skeletons)]
            )
            for (k, text), (_, values), skeleton in zip(need_mask, skeletons, rendered_skeletons):
                try:
                    if isinstance(skeleton, Exception):
                        raise ValueError(f"chat template error: {skeleton}")
                    try:
                        out[k] = self._masked(conversations[k], adapted[k], text, skeleton, values)
                    except ValueError:
                        if not any(m["content"] == "" for m in adapted[k]):
                            raise
                        # An empty answer the template leaves out: align again with it left empty.
                        kept, kept_values = self._skeleton(adapted[k], keep_empty=True)
                        [kept_text] = self._render_many([(kept, conversations[k].tools)])
                        if isinstance(kept_text, Exception):
                            raise
                        out[k] = self._masked(conversations[k], adapted[k], text, kept_text, kept_values)
                except ValueError as exc:
                    out[k] = exc
                if (conversations[k].has_reasoning and self.info.reasoning_key is None
                        and isinstance(out[k], Rendered)):
                    out[k].unshown_reasoning = sum("reasoning_content" in m for m in conversations[k].messages)
        return out

    def plain_turn_ends(self, messages: list[dict], text: str) -> list[Span | None]:
        """For a text rendered without a mask (labels=all), which has no `turn_ends`: each assistant
        turn's end-of-turn text, found after its content (the messages' strings looked up in order); []
        when a string is not found as it is (a template that rewrites it). The supervision audit asks
        for it only for a text that is cut (the others are trained whole)."""
        found: list[tuple[int, int, dict]] = []
        pos = 0
        for message in messages:
            content = message["content"]
            if not isinstance(content, str) or not content.strip():
                if message["role"] == "assistant":
                    return []
                continue
            piece = content.strip()
            at = text.find(piece, pos)
            if at < 0:
                return []
            pos = at + len(piece)
            found.append((at, pos, message))
        ends = []
        for n, (_, last, message) in enumerate(found):
            if message["role"] == "assistant":
                ceiling = found[n + 1][0] if n + 1 < len(found) else len(text)
                ends.append(self._turn_end(text, last, ceiling, True))
        return ends

    def _template_error(self, conversation: Conversation, exc: Exception) -> Exception:
        """The template's own error for a record, with what it needed when the probe knows it."""
        if self.info.needs_tools and not conversation.tools and not isinstance(exc, SecurityError):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return ValueError(f"chat template error: {type(exc).__name__}: {first} (this template renders only "
                              "with a tools list, and the record has none)")
        return exc

    def _unshown_features(self, conversation: Conversation, messages: list[dict], text: str) -> ValueError | None:
        """Tools or tool calls that a template which raised on the probe left out of this rendering."""
        info = self.info
        if conversation.tools and info.tools is None:
            for tool in conversation.tools:
                name = tool.get("function", tool).get("name")
                if isinstance(name, str) and name not in text:
                    return ValueError("the record has tools but the chat template does not show them")
        if info.tool_calls is None:
            for i, message in enumerate(messages):
                for call in message.get("tool_calls") or ():
                    if call["function"]["name"] not in text:
                        return ValueError(f"message {i} has tool calls but the chat template does not show them")
        return None

    def _needs_mask(self, conversation: Conversation) -> bool:
        if self.labels == "assistant":
            return True
        if conversation.train is not None and any(flag is False for flag in conversation.train):
            return True
        if conversation.weights is not None:
            return True
        return conversation.has_reasoning and self.reasoning_turns == "per-turn"

    def _count_dropped_reasoning(self, adapted, text, rendered) -> None:
        """Without a mask (reasoning_turns=as-rendered, labels=all): count reasoning the template left out."""
        key = self.info.reasoning_key
        for message in adapted:
            if key in message and message[key].strip() not in text:
                rendered.dropped_reasoning += 1

    @staticmethod
    def _skeleton(messages: list[dict], keep_empty: bool = False) -> tuple[list[dict], dict]:
        """The messages with each printed string replaced by a placeholder, and the real values.

        An empty content gets a placeholder too (so an empty answer's end of turn is found), unless
        `keep_empty` (a template that leaves an empty answer out, Nemotron's).
        """
        values: dict[tuple[int, str, str], str] = {}
        out = []
        for i, message in enumerate(messages):
            s = dict(message)
            content = message["content"]
            if isinstance(content, str):
                # An empty content beside tool calls stays empty: templates branch on it (Qwen3).
                if content or ("tool_calls" not in message and not keep_empty):
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
            where.setdefault(key, (pos, pos + len(candidate)))  # a name printed again (harmony's tool header)
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
        alone: dict[int, tuple[str, Mask, list]] = {}
        unshown = 0
        if self.reasoning_turns == "per-turn":
            for i in dropped:
                try:
                    alone[i] = self._turn_alone(conversation, adapted, i)
                except _Unshown as exc:
                    if self.unshown_reasoning != "drop":
                        raise ValueError(f"{exc} (--unshown-reasoning drop trains the turn without it)") from None
                    unshown += 1  # trained as rendered, without its reasoning
        assistant_only = self.labels == "assistant"
        spans, ends, weighted = [], [], []
        for i, message in enumerate(adapted):
            flag = conversation.train[i] if conversation.train is not None else None
            weight = conversation.weights[i] if conversation.weights is not None else None
            role = message["role"]
            if role == "tool":
                wanted = False  # tool results are never trained
            elif flag is not None:
                wanted = flag
            else:
                wanted = not assistant_only or role == "assistant"
            if assistant_only and i in alone:
                wanted = False  # trained in a sequence of its own, with its reasoning
            if i not in anchors:
                if wanted and role == "assistant" and assistant_only:
                    empty = not any(values.get((i, f, "")) for f in ("c", "r")) and "tool_calls" not in message
                    raise ValueError(f"cannot locate message {i} (assistant) in the rendering: the chat template "
                                     + ("leaves out an empty answer" if empty else "leaves it out"))
                continue
            weight = weight if wanted else None
            if wanted == assistant_only or (wanted and role == "assistant") or weight is not None:
                span, end = self._turn_span(text, i, role, anchors[i], bounds, neighbours, wanted)
                if wanted == assistant_only:
                    spans.append(span)  # assistant: the turns to train; all: the turns not to train
                if wanted and role == "assistant":
                    ends.append(end)
                if weight is not None:
                    weighted.append((span, weight))
        texts = [text]
        masks: list[Mask | None] = [Mask(spans, assistant_only, weighted) if spans or assistant_only or weighted else None]
        turn_ends = [ends]
        for sub_text, mask, sub_ends in alone.values():
            texts.append(sub_text)
            masks.append(mask)
            turn_ends.append(sub_ends)
        return Rendered(texts, masks, dropped_reasoning=0 if self.reasoning_turns == "per-turn" else len(dropped),
                        unshown_reasoning=unshown, turn_ends=turn_ends)

    def _turn_alone(self, conversation: Conversation, adapted, i: int) -> tuple[str, Mask, list]:
        """Assistant turn i as the last turn of its history, where the template keeps its reasoning."""
        sub = adapted[: i + 1]
        skeleton, values = self._skeleton(sub)
        text, rendered = self._render_many([(sub, conversation.tools), (skeleton, conversation.tools)])
        if isinstance(text, Exception) or isinstance(rendered, Exception):
            raise ValueError(f"chat template error on the history of message {i}")
        where = self._align(text, rendered, values)
        if (i, "r", "") not in where:
            shown = self.info.reasoning_shown
            raise _Unshown(f"message {i} has reasoning that the chat template does not show, even as the last turn"
                           + (" (it shows reasoning only for turns with tool calls)" if shown == "tool-call turns" else ""))
        anchors, bounds, neighbours = self._layout(where)
        span, end = self._turn_span(text, i, "assistant", anchors[i], bounds, neighbours, True)
        weight = conversation.weights[i] if conversation.weights is not None else None
        return text, Mask([span], weights=[(span, weight)] if weight is not None else []), [end]

    def _turn_span(self, text, i, role, anchors, bounds, neighbours, trained: bool) -> tuple[Span, Span | None]:
        """Characters of message i's turn, from the end of its header through its end-of-turn text, and
        the end-of-turn text's own characters (None: there is none).

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
        end = self._turn_end(text, last, ceiling, role == "assistant")
        if end is None:
            nothing_after = not text[last:ceiling].strip()
            if (role == "assistant" and self.labels == "assistant"
                    and not (self.info.ends_at_next_role and nothing_after)):
                markers = " or ".join(repr(m) for m in self.info.end_markers) or "(none)"
                raise ValueError(f"no end-of-turn text {markers} after assistant message {i}")
            return (start, last), None
        return (start, end[1]), end

    def _turn_end(self, text: str, last: int, ceiling: int, assistant: bool) -> Span | None:
        """The end-of-turn text after a turn's last piece and before the next message's first: the first
        of the template's end markers to end there (harmony: <|end|>, <|return|> or <|call|> by position),
        then, for a template whose next role token ends an assistant turn (GLM), that token."""
        best = None
        for marker in self.info.end_markers:
            at = text.find(marker, last, ceiling)
            if at >= 0 and (best is None or at + len(marker) < best[1]):
                best = (at, at + len(marker))
        if assistant and self.info.ends_at_next_role:
            pos = best[1] if best else last
            rest = text[pos:ceiling]
            lead = len(rest) - len(rest.lstrip())
            size = self._role_marker(rest[lead:])
            if size:
                return (best[0] if best else pos + lead, pos + lead + size)
        return best

    def _role_marker(self, text: str) -> int:
        """The length of the role token `text` starts with (GLM's `<|user|>`): one of the tokenizer's
        added tokens, else a bracketed marker such as `<|observation|>` or `[INST]`; 0 for plain text
        ("user: "), which no model is trained to emit as its stop."""
        added = self._added_tokens
        for size in sorted({len(t) for t in added}, reverse=True):
            if text[:size] in added:
                return size
        match = _MARKER_RE.match(text)
        return match.end() if match else 0

    @functools.cached_property
    def _added_tokens(self) -> frozenset[str]:
        decoder = getattr(self.tokenizer, "added_tokens_decoder", None) or {}
        return frozenset(t.content for t in decoder.values() if getattr(t, "content", "").strip())

    @functools.cached_property
    def _headers(self) -> list[str]:
        """The generation prompt, the assistant header as history turns and tool-call turns show it,
        then shorter forms of the prompt (a history turn may not repeat all of it), never shorter than
        those headers (`<|` alone would match inside any text)."""
        prompt = self.info.generation_prompt
        seen = [h.strip() for h in (self._history_header, self._call_header) if h.strip()]
        shortest = min((len(h) for h in seen), default=0)
        out = [prompt, prompt.rstrip(), self._history_header, self._call_header]
        if prompt:
            encoding = self.backend.encode(prompt, add_special_tokens=False)
            out += [prompt[:stop] for _, stop in encoding.offsets[-2::-1] if stop >= shortest]
        return [h for h in dict.fromkeys(out) if h.strip()]

    # -- tokenizing -----------------------------------------------------------------------------------
    def encode_texts(self, texts: list[str], offsets: bool = True, *, check_first: int = 0, report=None):
        """Tokenize rendered texts in one call (the reference or the checked fast encoder, see encoder.py);
        offsets only when masking."""
        return self.text_encoder.encode(texts, offsets, check_first=check_first, report=report)

    def labels_for(self, encoding, mask: Mask | None) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(encoding.ids, dtype=np.int32)
        if mask is None:
            labels = ids.copy()
        else:
            inside = _tokens_in(encoding, mask.spans)
            trained = inside if mask.only else ~inside
            labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
            labels[trained] = ids[trained]
        return ids, sequences.start(labels)

    @staticmethod
    def weights_for(encoding, mask: Mask | None, labels: np.ndarray) -> np.ndarray:
        """The loss weight of each token of a sequence: 0 where its label is ignored, the message's weight
        in the turn of a message with one, else 1 (float32)."""
        weights = (labels != IGNORE_INDEX).astype(np.float32)
        if mask is not None:
            for span, weight in mask.weights:
                weights[_tokens_in(encoding, [span]) & (labels != IGNORE_INDEX)] = weight
        return weights


def _tokens_in(encoding, spans) -> np.ndarray:
    """Which tokens of an encoding start inside one of the character `spans` (and are not empty).

    A header token that swallows the content's leading whitespace (Phi-3's `<|assistant|>` has rstrip;
    newlines merge) starts in the header, so it stays out; `<|end|>` owning the "\n" after it is in.
    """
    n = len(encoding.ids)
    inside = np.zeros(n, dtype=bool)
    spans = sorted(s for s in spans if s[1] > s[0])
    if spans and n:
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
        ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))
        k = np.searchsorted(ends, offsets[:, 0], side="right")
        within = k < len(spans)
        inside[within] = starts[k[within]] <= offsets[within, 0]
        inside &= offsets[:, 1] > offsets[:, 0]
    return inside
