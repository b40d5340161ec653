"""What a sequence is, in one place: its first label is never trained, and how an overlong one is cut.

A packed row holds several sequences back to back. Training predicts each label from the tokens
before it in the same sequence, so the first token of a sequence has nothing of its own to be
predicted from: its label is IGNORE_INDEX (-100), whatever the labels mode. Every sequence the
engine writes is made by `start` (a conversation's labels, chat.ChatEncoder.labels_for) or by `fit`
(the pieces the overlong policy makes of one), so packing and mixing only place sequences and never
change a label (spill.rows_batch).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..settings import IGNORE_INDEX


# The spill (an Arrow IPC file the tokenize step writes and pack/ reads): one record per sequence.
SPILL_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("line", pa.int64()),
    ]
)


def start(labels: np.ndarray) -> np.ndarray:
    """`labels` as a sequence's: the first one ignored (in place; returned for convenience)."""
    if len(labels):
        labels[0] = IGNORE_INDEX
    return labels


def fit(ids: np.ndarray, labels: np.ndarray, max_length: int, overlong: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The sequences written for one sequence of `labels` (already started) under the overlong policy
    `truncate` (its first max_length tokens) or `split` (consecutive pieces of max_length tokens, each
    a sequence of its own, so each piece's first label is ignored)."""
    if len(ids) <= max_length:
        return [(ids, labels)]
    if overlong == "truncate":
        return [(ids[:max_length], labels[:max_length])]
    return [(ids[at:at + max_length], start(labels[at:at + max_length].copy())) for at in range(0, len(ids), max_length)]


def written_labels(labels: np.ndarray, max_length: int, overlong: str) -> np.ndarray:
    """A sequence's labels as `fit` writes them, positions kept (split: each piece's first label
    ignored; truncate: the tail gone). Only for a sequence that is written (not drop / error)."""
    pieces = fit(labels, labels, max_length, overlong)
    return pieces[0][1] if len(pieces) == 1 else np.concatenate([lab for _, lab in pieces])
