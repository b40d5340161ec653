"""The supervision audit: what a file's (or a mix's) written sequences actually train, in figures.

Without it, a user learns what was trained only by decoding rows. `ChunkTokenizer._label`
(tokenize.py) fills one `SupervisionAudit` per chunk of records; chunks may run in worker processes,
so the audit is a small object of counts that `add` merges in the main process, and `to_dict` /
`from_dict` carry through the spill manifest, `collate --json` (`supervision` in each file's
tokenize stats) and a mix's manifest, where the audits of its sources' files are merged again.

The figures (see README, *Supervision audit*):

- trained_share: trained tokens / tokens written;
- turn ends: of the assistant turns meant to be trained, how many have their end-of-turn text (what the
  model writes to stop: `<|im_end|>`) trained in the sequence as written (after the overlong policy,
  so a truncation that cuts it makes it untrained), how many not, and how many have no end-of-turn
  text at all. They come from the engine's `Rendered.turn_ends`; a conversation for which the engine
  does not work them out counts in none of the three;
- truncated_before_end_of_turn: sequences whose truncation (overlong=truncate) cut off the end of their
  last trained assistant turn (without turn ends from the engine: whose cut removed trained tokens);
  with `truncated_turns=drop` their conversations are rejected, counted in truncated_turns_dropped;
- no_trained_token: conversations rejected because nothing in them is trained;
- special_tokens: trained occurrences of each special token (`special=True` added tokens);
- outside_assistant (labels=all only): of the tokens trained in a sample of conversations (the first
  `OUTSIDE_SAMPLE` of each chunk), the share that a labels=assistant rendering would not train:
  headers, system prompt, user turns.

`supervision_problems` turns the figures and the thresholds of the settings (`min_trained_share`,
`max_untrained_turn_ends`) into one-line messages: the command fails the file with them, the Dagster
layer's blocking checks on `tokenized_conversations` fail with them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from ..settings import IGNORE_INDEX

# Conversations of each chunk (1024 records) rendered a second time with labels=assistant to measure the
# template text trained outside assistant turns under labels=all. Each costs two renders and its labels
# (its text is encoded once, with offsets): 8 cost about 1 % of a plain chunk's time, 16 about 2 % (README).
OUTSIDE_SAMPLE = 8

Span = tuple[int, int]


@dataclasses.dataclass
class SupervisionAudit:
    """Counts of what is trained; every field adds up across chunks, files and mix sources."""

    tokens: int = 0  # tokens written
    trained_tokens: int = 0
    turn_ends_trained: int = 0
    turn_ends_untrained: int = 0
    turn_ends_missing: int = 0  # trained assistant turns whose template writes no end-of-turn text
    truncated_before_end_of_turn: int = 0  # sequences (written or dropped)
    truncated_turns_dropped: int = 0  # conversations rejected for it (truncated_turns=drop)
    no_trained_token: int = 0  # conversations rejected for it
    special_tokens: Counter = dataclasses.field(default_factory=Counter)  # token text -> trained occurrences
    outside_sampled_conversations: int = 0
    outside_sampled_trained: int = 0  # tokens trained under labels=all in the sample
    outside_sampled_outside: int = 0  # of which a labels=assistant rendering does not train

    def add(self, other: "SupervisionAudit") -> "SupervisionAudit":
        """Add `other`'s counts to this audit (in place); returns self."""
        for field in dataclasses.fields(self):
            if field.name == "special_tokens":
                self.special_tokens.update(other.special_tokens)
            else:
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        return self

    # -- derived figures ------------------------------------------------------------------------
    @property
    def trained_share(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0

    @property
    def turn_ends(self) -> int:
        """Trained assistant turns whose end of turn was looked at (with or without end-of-turn text)."""
        return self.turn_ends_trained + self.turn_ends_untrained + self.turn_ends_missing

    @property
    def untrained_turn_end_share(self) -> float | None:
        """Share of assistant turns whose end of turn is not trained (cut, masked, or not written); None: none seen."""
        seen = self.turn_ends
        return (self.turn_ends_untrained + self.turn_ends_missing) / seen if seen else None

    @property
    def outside_assistant_share(self) -> float | None:
        """Share of the sample's trained tokens outside assistant turns; None: not sampled."""
        if not self.outside_sampled_conversations:
            return None
        return self.outside_sampled_outside / self.outside_sampled_trained if self.outside_sampled_trained else 0.0

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["special_tokens"] = dict(sorted(self.special_tokens.items(), key=lambda kv: (-kv[1], kv[0])))
        out["trained_share"] = round(self.trained_share, 6)
        share = self.untrained_turn_end_share
        out["untrained_turn_end_share"] = None if share is None else round(share, 6)
        share = self.outside_assistant_share
        out["outside_assistant_share"] = None if share is None else round(share, 6)
        return out

    @classmethod
    def from_dict(cls, data: dict | None) -> "SupervisionAudit":
        """The inverse of to_dict (derived figures are recomputed); {} or None gives an empty audit."""
        names = {f.name for f in dataclasses.fields(cls)}
        out = cls(**{k: v for k, v in (data or {}).items() if k in names})
        out.special_tokens = Counter(out.special_tokens)
        return out

    @classmethod
    def merged(cls, audits: Iterable["SupervisionAudit | dict | None"]) -> "SupervisionAudit":
        total = cls()
        for audit in audits:
            total.add(audit if isinstance(audit, SupervisionAudit) else cls.from_dict(audit))
        return total

    def summary(self) -> str:
        """One line for the command's per-file summary."""
        parts = [f"supervision: {self.trained_share:.1%} of tokens trained"]
        if self.turn_ends:
            parts.append(f"turn ends trained {self.turn_ends_trained}/{self.turn_ends}"
                         + (f" ({self.turn_ends_missing} without end-of-turn text)" if self.turn_ends_missing else ""))
        else:
            parts.append("turn ends not measured")
        parts.append(f"{self.truncated_before_end_of_turn} cut before their end of turn"
                     + (f" ({self.truncated_turns_dropped} dropped)" if self.truncated_turns_dropped else ""))
        parts.append(f"{self.no_trained_token} with nothing trained")
        share = self.outside_assistant_share
        if share is not None:
            parts.append(f"{share:.1%} of trained tokens outside assistant turns "
                         f"(sampled {self.outside_sampled_conversations} conversations)")
        if self.special_tokens:
            top = sorted(self.special_tokens.items(), key=lambda kv: (-kv[1], kv[0]))[:4]
            parts.append("special tokens trained: " + ", ".join(f"{t} ×{n}" for t, n in top)
                         + (" …" if len(self.special_tokens) > 4 else ""))
        return "; ".join(parts)


def supervision_problems(audit: SupervisionAudit | dict, settings) -> list[tuple[str, bool, str]]:
    """(name, passed, message) of each threshold of `settings` (a threshold left at its default passes)."""
    if not isinstance(audit, SupervisionAudit):
        audit = SupervisionAudit.from_dict(audit)
    out = []
    floor = settings.min_trained_share
    share = audit.trained_share
    out.append(("min_trained_share", share >= floor,
                f"{share:.2%} of tokens written are trained, below min_trained_share {floor:.2%}"
                if share < floor else f"{share:.2%} of tokens trained (min_trained_share {floor:.2%})"))
    ceiling = settings.max_untrained_turn_ends
    untrained = audit.untrained_turn_end_share
    if untrained is None:
        out.append(("max_untrained_turn_ends", True, "no assistant turn end measured"))
    else:
        bad = audit.turn_ends - audit.turn_ends_trained
        passed = untrained <= ceiling
        out.append(("max_untrained_turn_ends", passed,
                    f"{untrained:.2%} of assistant turns ({bad} of {audit.turn_ends}) have their end of turn not "
                    f"trained, over max_untrained_turn_ends {ceiling:.2%}" if not passed else
                    f"{untrained:.2%} of assistant turns have their end of turn not trained "
                    f"(max_untrained_turn_ends {ceiling:.2%})"))
    return out


def thresholds_set(settings) -> bool:
    """Whether any supervision threshold is on (the Dagster checks are declared only then)."""
    return settings.min_trained_share > 0.0 or settings.max_untrained_turn_ends < 1.0


# -- what the tokenizing step calls -------------------------------------------------------------------


def special_token_ids(tokenizer) -> dict[int, str]:
    """id -> text of the tokenizer's special tokens (added tokens marked special=True)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {int(i): str(t.content) for i, t in decoder.items() if getattr(t, "special", False)}


def count_special(audit: SupervisionAudit, labels: np.ndarray, specials: dict[int, str]) -> None:
    """Add the trained occurrences of special tokens in `labels` (a chunk's labels, -100 where not trained)."""
    if not specials or not len(labels):
        return
    ids = np.fromiter(specials, dtype=np.int64, count=len(specials))
    hits = labels[np.isin(labels, ids)]  # -100 is never a token id, so untrained positions drop out
    if len(hits):
        values, counts = np.unique(hits, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            audit.special_tokens[specials[value]] += count


def turn_end_tokens(offsets: np.ndarray, spans: Sequence[Span]) -> list[tuple[int, int]]:
    """For each character span, the tokens overlapping it: [first, last) token positions.

    `offsets` (n, 2) are the encoding's character offsets, in order; a token overlaps (s, e) when it
    starts before e and ends after s.
    """
    if not len(spans):
        return []
    starts = np.asarray([s for s, _ in spans], dtype=np.int64)
    ends = np.asarray([e for _, e in spans], dtype=np.int64)
    first = np.searchsorted(offsets[:, 1], starts, side="right")  # first token ending after s
    last = np.searchsorted(offsets[:, 0], ends, side="left")  # tokens starting before e
    return list(zip(first.tolist(), last.tolist()))


def audit_turn_ends(audit: SupervisionAudit, spans: Sequence[Span | None], offsets, written: np.ndarray) -> bool:
    """Count the turn ends of one text; True when its last turn end with text is cut off (not all written).

    `offsets`: the text's token offsets (n, 2), or None for a text every token of which but the first is
    trained and nothing cut (no mask, not overlong): each turn end is trained then, no offsets needed.
    """
    present = [s for s in spans if s is not None and s[1] > s[0]]
    audit.turn_ends_missing += len(spans) - len(present)
    if not present:
        return False
    if offsets is None:
        audit.turn_ends_trained += len(present)
        return False
    cut = False
    n = len(written)
    for k, (first, last) in enumerate(turn_end_tokens(offsets, present)):
        trained = first < last <= n and bool((written[first:last] != IGNORE_INDEX).all())
        if trained:
            audit.turn_ends_trained += 1
        else:
            audit.turn_ends_untrained += 1
        if k == len(present) - 1:
            cut = last > n
    return cut
