"""Per-file statistics of the two engine steps, as plain dataclasses (JSON-ready)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np


def length_histogram(lengths: np.ndarray, max_length: int) -> list[tuple[int, int, int]]:
    """Counts of sequence lengths in power-of-two buckets [lo, hi) up to max_length."""
    edges = [0]
    edge = 64
    while edge < max_length:
        edges.append(edge)
        edge *= 2
    edges.append(max_length + 1)
    counts, _ = np.histogram(np.asarray(lengths), bins=edges)
    return [(int(lo), int(hi), int(c)) for lo, hi, c in zip(edges[:-1], edges[1:], counts)]


@dataclasses.dataclass
class TokenizeStats:
    """What happened to the lines of one input file on the way to token sequences."""

    file: str
    max_length: int
    lines_read: int = 0
    blank_lines: int = 0
    conversations: int = 0  # conversations written (a split conversation counts once)
    sequences: int = 0  # sequences written (split chunks each count)
    rejected: int = 0
    reject_reasons: Counter = dataclasses.field(default_factory=Counter)
    truncated: int = 0
    dropped: int = 0
    split: int = 0
    turn_split: int = 0  # overlong=turns: conversations written as windows ending at assistant turn ends
    turns_not_fit: int = 0  # overlong=turns: assistant turns longer than max_length, trained in no window
    padding_tokens: int = 0  # pad_to_multiple_of: untrained tokens added at sequence ends (in `tokens`)
    weighted_messages: int = 0  # loss_weights: messages written with a loss weight other than 0 or 1
    tokens_read: int = 0  # tokens of every conversation that was tokenized, before overlong handling
    tokens: int = 0  # tokens written
    trained_tokens: int = 0
    truncated_tokens: int = 0  # tokens removed by truncate or drop
    turn_sequences: int = 0  # extra sequences: assistant turns trained alone with their reasoning (per-turn)
    reasoning_dropped: int = 0  # assistant turns whose reasoning the template left out (as-rendered)
    reasoning_unshown: int = 0  # reasoning the template cannot show, dropped (unshown_reasoning=drop)
    double_encoded_arguments: int = 0  # tool-call arguments given as JSON text of JSON text, decoded twice
    histogram: list = dataclasses.field(default_factory=list)
    template: dict = dataclasses.field(default_factory=dict)  # what the chat template shows (TemplateInfo)
    # Seconds spent in each stage, summed over worker processes: read, parse, render, encode, labels, spill.
    stage_seconds: dict = dataclasses.field(default_factory=dict)
    workers: int = 1  # processes that parsed, rendered, encoded and labelled (1: this one)
    shard: dict | None = None  # the part of the file read (shards.Shard.to_dict()); None: all of it
    # What the written sequences train (audit.SupervisionAudit.to_dict()): trained share, turn ends, special tokens.
    supervision: dict = dataclasses.field(default_factory=dict)
    # How the tokenizer pipeline in use and the other one (tokenizer.json vs transformers' rebuild) segment
    # the probe texts and the rendered texts of the file's first chunk (tokenizer.drift_summary).
    tokenizer_drift: dict = dataclasses.field(default_factory=dict)
    # which encoder turned the texts into ids, and its checks against the reference (encoder.EncoderReport)
    encoder: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["reject_reasons"] = dict(sorted(self.reject_reasons.items()))
        out["histogram"] = [list(b) for b in self.histogram]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TokenizeStats":
        """The inverse of to_dict (e.g. stats kept in a manifest)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        out = cls(**{k: v for k, v in data.items() if k in fields})
        out.reject_reasons = Counter(out.reject_reasons)
        out.histogram = [tuple(b) for b in out.histogram]
        return out

    def accounted(self) -> bool:
        """Every non-blank line is either written or rejected."""
        return self.lines_read == self.blank_lines + self.conversations + self.rejected


@dataclasses.dataclass
class PackStats:
    """The packed rows written for one file."""

    output: str
    format: str
    max_length: int
    packing: str
    rows: int = 0
    sequences: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    lower_bound: int = 0
    fill: float = 0.0
    sequences_per_row: float = 0.0
    max_row_tokens: int = 0
    # Seconds spent in each stage: read (the spill's layout), pack (bins), gather, write.
    stage_seconds: dict = dataclasses.field(default_factory=dict)
    # balance_ranks: the rows' order for data-parallel ranks (pack/balance.py's report: world_size,
    # micro_batch, layout, the imbalance `before` (shuffled) and `after`); None: rows in packing order.
    balance: dict | None = None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if out["balance"] is None:  # without balance_ranks, the same dict as before it existed
            del out["balance"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PackStats":
        """The inverse of to_dict (e.g. stats kept in a materialization's metadata)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclasses.dataclass
class FileStats:
    """Both steps for one input file."""

    tokenize: TokenizeStats
    pack: PackStats
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"tokenize": self.tokenize.to_dict(), "pack": self.pack.to_dict(), "seconds": self.seconds}
