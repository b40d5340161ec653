"""Render conversations with the tokenizer's chat template, tokenize them and build labels.

Tokens equal `tokenizer.apply_chat_template(messages, tokenize=True)`: transformers renders the
template to text and encodes it without adding special tokens, which is what we do here in batches
through the Rust tokenizer (it releases the GIL, so the next chunk can render meanwhile).

Assistant-only labels work for any template, with or without `{% generation %}`: each conversation is
rendered a second time with every message's content replaced by a unique placeholder. That skeleton
tells where each message's content sits; putting the real contents back into the skeleton must give
the real rendering exactly, or the conversation is rejected (never trained on a guessed mask).
An assistant turn is trained over its content plus the end-of-turn text the template writes after
every assistant turn (learned once per template by rendering probe conversations).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from .errors import CollateError
from .settings import IGNORE_INDEX

_PLACEHOLDER = "\ue000{}\ue001"
_PLACEHOLDER_RE = re.compile("\ue000(\\d+)\ue001")


@dataclasses.dataclass
class Encoded:
    """One conversation as tokens and labels (int32 arrays of equal length)."""

    input_ids: np.ndarray
    labels: np.ndarray


class ChatEncoder:
    """Turns lists of normalised conversations into tokens and labels."""

    def __init__(self, tokenizer, labels: str = "all"):
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        self.labels = labels
        self.end_of_turn = ""
        if labels == "assistant":
            try:
                self.end_of_turn = self._probe_end_of_turn()
            except Exception as exc:
                raise CollateError(
                    f"labels=assistant: cannot find what this chat template writes after an assistant "
                    f"turn ({type(exc).__name__}: {exc})"
                ) from exc
            if not self.end_of_turn:
                raise CollateError(
                    "labels=assistant: this chat template writes no end-of-turn text after an assistant "
                    "turn, so the model could not learn to stop; use labels=all or another template"
                )

    # -- rendering -----------------------------------------------------------------------------
    def render(self, conversations: list[list[dict]]) -> list[str | Exception]:
        """Render each conversation; a conversation the template rejects gives its exception."""
        if not conversations:
            return []
        try:
            return list(self.tokenizer.apply_chat_template(conversations, tokenize=False))
        except Exception:
            # One bad conversation fails the whole batch call: render one by one to isolate it.
            out: list[str | Exception] = []
            for conversation in conversations:
                try:
                    out.append(self.tokenizer.apply_chat_template(conversation, tokenize=False))
                except Exception as exc:  # the template's own error (raise_exception, TypeError...)
                    out.append(exc)
            return out

    def render_skeletons(self, conversations: list[list[dict]]) -> list[str | Exception]:
        skeletons = [
            [{"role": m["role"], "content": _PLACEHOLDER.format(i)} for i, m in enumerate(conversation)]
            for conversation in conversations
        ]
        return self.render(skeletons)

    def _probe_end_of_turn(self) -> str:
        """The text the template writes after every assistant turn (e.g. '<|im_end|>').

        It is the common start of what follows an assistant message when it is the last one and
        when another turn follows.
        """
        a1, u2, a2 = "\ue000A1\ue001", "\ue000U2\ue001", "\ue000A2\ue001"
        last = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "\ue000U1\ue001"}, {"role": "assistant", "content": a1}],
            tokenize=False,
        )
        more = self.tokenizer.apply_chat_template(
            [
                {"role": "user", "content": "\ue000U1\ue001"},
                {"role": "assistant", "content": a1},
                {"role": "user", "content": u2},
                {"role": "assistant", "content": a2},
            ],
            tokenize=False,
        )
        after_last = last[last.index(a1) + len(a1) :]
        after_more = more[more.index(a1) + len(a1) : more.index(u2)]
        # Compare token by token: a character-wise common prefix could end inside the next
        # header ("<|end|>\n<|" for Phi-3, whose next turn starts with "<|user|>" or "<|endoftext|>").
        last_enc = self.backend.encode(after_last, add_special_tokens=False)
        more_enc = self.backend.encode(after_more, add_special_tokens=False)
        end = 0
        for x, y, (_, stop) in zip(last_enc.ids, more_enc.ids, last_enc.offsets):
            if x != y:
                break
            end = stop
        common = after_last[:end]
        return common.rstrip()

    # -- tokenizing ----------------------------------------------------------------------------
    def encode_texts(self, texts: list[str]):
        """Tokenize rendered texts in one Rust call (both cores, GIL released)."""
        if self.labels == "assistant":
            return self.backend.encode_batch(texts, add_special_tokens=False)
        return self.backend.encode_batch_fast(texts, add_special_tokens=False)

    def assistant_spans(self, conversation: list[dict], text: str, skeleton: str) -> list[tuple[int, int]]:
        """Character spans of `text` to train on; raise ValueError when they cannot be trusted."""
        pieces = _PLACEHOLDER_RE.split(skeleton)
        # pieces alternates literal template text and message indices: lit, i, lit, i, ..., lit
        for candidate in (lambda c: c, str.strip):
            spans: list[tuple[int, int]] = []
            rebuilt: list[str] = []
            pos = 0
            ok = True
            for k, piece in enumerate(pieces):
                if k % 2 == 0:
                    if spans and spans[-1][1] == -1:
                        # The previous piece was assistant content: its end-of-turn follows here.
                        if not piece.startswith(self.end_of_turn):
                            ok = False
                            break
                        spans[-1] = (spans[-1][0], pos + len(self.end_of_turn))
                    rebuilt.append(piece)
                    pos += len(piece)
                    continue
                message = conversation[int(piece)]
                content = candidate(message["content"])
                if message["role"] == "assistant":
                    spans.append((pos, -1))
                rebuilt.append(content)
                pos += len(content)
            if ok and "".join(rebuilt) == text:
                return [s for s in spans if s[1] > s[0]]
        raise ValueError(
            "cannot locate assistant tokens: the chat template rewrites message content or "
            "writes no fixed end-of-turn after assistant turns"
        )

    def labels_for(self, encoding, spans: list[tuple[int, int]] | None) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(encoding.ids, dtype=np.int32)
        if spans is None:
            labels = ids.copy()
        else:
            labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
            if spans and len(ids):
                offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
                starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
                ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))
                # A token is trained when it starts inside a trained span. A header token that swallows
                # the content's leading whitespace (Phi-3's `<|assistant|>` has rstrip; newlines merge)
                # starts in the header, so it stays untrained; `<|end|>` owning the "\n" after it is trained.
                k = np.searchsorted(ends, offsets[:, 0], side="right")
                inside = k < len(spans)
                trained = np.zeros(len(ids), dtype=bool)
                trained[inside] = starts[k[inside]] <= offsets[inside, 0]
                trained &= offsets[:, 1] > offsets[:, 0]
                labels[trained] = ids[trained]
        if len(labels):
            labels[0] = IGNORE_INDEX
        return ids, labels
