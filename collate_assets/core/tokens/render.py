"""Rendering a chat template without `apply_chat_template`'s per-call work, checked against it.

`tokenizer.apply_chat_template(messages, tokenize=False)` picks the template (a named `tool_use` one
when there are tools), drops `None` values from the messages, copies every input into plain JSON types,
aliases the reasoning fields (`reasoning_content`, `thinking`), and renders the compiled template with
the tokenizer's special tokens as variables. The engine's messages are already plain JSON made for
this render, so the copies are pure cost: for a small template (SmolLM2's) they are ~40 % of the render.

`DirectRenderer` renders the same compiled template (transformers' cache of it, built in collate's
bounded sandbox, so every render limit holds) with the same inputs made once per conversation. It is
trusted only as far as it is checked:

- at load, on probe conversations (plain, system, tools when the template takes them, reasoning);
- during a run, one render in CHECK_EVERY of each chunk (and the first CHECK_FIRST of a file's first
  chunk) is also rendered with `apply_chat_template` and compared: the same renders whatever the
  number of workers;
- a render that raises is rendered again with `apply_chat_template` (whose error is the one reported).

On any difference the renderer turns itself off: this and every later render go through
`apply_chat_template`, and the statistics say so (`encoder.render`).
"""

from __future__ import annotations

import logging

from .encoder import EncoderReport

log = logging.getLogger(__name__)

CHECK_EVERY = 64
CHECK_FIRST = 16


class DirectRenderer:
    """Renders (messages, tools) with the tokenizer's compiled chat template, checked as the module says."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.reason = ""  # why it is off ("" while on)
        self.position, self.first_chunk = 0, True  # renders so far in the chunk at work
        # the chunk's report: its renders checked and differing are counted there (renders outside a chunk,
        # such as a file's drift comparison, into one of their own)
        self.report = EncoderReport()
        try:
            from transformers.utils import chat_template_utils as ctu

            self._compile = ctu._compile_jinja_template
            self._alias = getattr(ctu, "_alias_reasoning_fields", None)
            self._plain = ctu._plain_template_data
            self._variables = self._plain(dict(tokenizer.special_tokens_map))
        except Exception as exc:  # a transformers without these parts: apply_chat_template only
            self.reason = f"this transformers has no compiled-template cache to render with ({type(exc).__name__})"

    def start_chunk(self, first: bool, report: EncoderReport) -> None:
        self.position, self.first_chunk, self.report = 0, first, report

    def due(self) -> bool:
        """Whether the next render is one to check (see the module's text)."""
        n, self.position = self.position, self.position + 1
        return (self.first_chunk and n < CHECK_FIRST) or n % CHECK_EVERY == 0

    @property
    def on(self) -> bool:
        return not self.reason

    def _template(self, tools):
        return self._compile(self.tokenizer.get_chat_template(None, tools))

    def render(self, messages: list[dict], tools: list | None) -> str:
        """The template's text for `messages` (and `tools`), as apply_chat_template makes it."""
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        if self._alias is not None:
            chat = self._alias(chat)
        return self._template(tools).render(messages=chat, tools=tools or None, documents=None,
                                            add_generation_prompt=False, **self._variables)

    def reference(self, messages: list[dict], tools: list | None) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, **({"tools": tools} if tools else {}))

    def check(self, probes: list[tuple[list[dict], list | None]]) -> None:
        """Turn off unless every probe renders the same both ways (or raises both ways)."""
        for messages, tools in probes:
            if not self.on:
                return
            try:
                theirs = self.reference(messages, tools)
            except Exception:
                theirs = None
            try:
                mine = self.render(messages, tools)
            except Exception:
                mine = None
            if mine != theirs:
                self.reason = "differs from apply_chat_template on a probe conversation"

    def render_one(self, messages: list[dict], tools: list | None, check: bool) -> str:
        """One render, direct (compared with apply_chat_template when `check`), or apply_chat_template's
        when the renderer is off or the direct render raised. Raises the template's own error."""
        if not self.on:
            return self.reference(messages, tools)
        try:
            mine = self.render(messages, tools)
        except Exception:
            mine = None  # apply_chat_template below gives the error to report, or shows a difference
            check = True
        if not check:
            return mine
        self.report.render_checked += 1
        theirs = self.reference(messages, tools)  # its exception propagates: the template's own error
        if mine != theirs:
            self.report.render_differing += 1
            self.reason = ("rendered other text than apply_chat_template on a conversation"
                           f" of {len(messages)} messages; from there on the run used apply_chat_template")
            log.warning("render: %s", self.reason)
        return theirs
