"""What a sequence is, in one place: its first label is never trained, and how an overlong one is cut.

A packed row holds several sequences back to back. Training predicts each label from the tokens
before it in the same sequence, so the first token of a sequence has nothing of its own to be
predicted from: its label is IGNORE_INDEX (-100), whatever the labels mode. Every sequence the
engine writes is made by `start` (a conversation's labels, chat.ChatEncoder.labels_for) or by `fit`
(the pieces the overlong policy makes of one), so packing and mixing only place sequences and never
change a label (spill.rows_batch).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from ..settings import IGNORE_INDEX


# The spill (an Arrow IPC file the tokenize step writes and pack/ reads): one record per sequence.
SPILL_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("line", pa.int64()),
        # A sequence the overlong policy cut: a 64-bit hash of it as it was before the cut (its ids and
        # labels), shared by the pieces of a split sequence; 0 for a sequence written whole (its tokens
        # are its input). A mix tells duplicates by input from duplicates by truncation with it. Spills
        # written before it have only the three columns above.
        ("uncut_hash", pa.uint64()),
    ]
)
SPILL_SCHEMA_V1 = pa.schema(list(SPILL_SCHEMA)[:3])  # spills written before `uncut_hash`: still read
# With the loss_weights setting: each token's loss weight (float32), token for token with labels.
SPILL_SCHEMA_WEIGHTED = SPILL_SCHEMA.append(pa.field("loss_weights", pa.list_(pa.float32())))


def spill_schema(weighted: bool) -> pa.Schema:
    return SPILL_SCHEMA_WEIGHTED if weighted else SPILL_SCHEMA


def uncut_hash(ids: np.ndarray, labels: np.ndarray) -> int:
    """The `uncut_hash` of a sequence that is cut (computed before the cut; never 0)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(len(ids).to_bytes(4, "little"))
    digest.update(np.ascontiguousarray(ids, dtype=np.int32).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int32).tobytes())
    return int.from_bytes(digest.digest(), "little") or 1


def start(labels: np.ndarray) -> np.ndarray:
    """`labels` as a sequence's: the first one ignored (in place; returned for convenience)."""
    if len(labels):
        labels[0] = IGNORE_INDEX
    return labels


def fit(ids: np.ndarray, labels: np.ndarray, max_length: int, overlong: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The sequences written for one sequence of `labels` (already started) under the overlong policy
    `truncate` (its first max_length tokens), `split` (consecutive pieces of max_length tokens, each
    a sequence of its own, so each piece's first label is ignored) or `turns` (windows that end at the
    end of an assistant turn: see turn_windows)."""
    if len(ids) <= max_length:
        return [(ids, labels)]
    if overlong == "truncate":
        return [(ids[:max_length], labels[:max_length])]
    if overlong == "turns":
        windows, _ = turn_windows(labels, max_length)
        out = []
        for begin, first, end in windows:
            window_labels = labels[begin:end].copy()
            window_labels[:first - begin] = IGNORE_INDEX  # earlier turns: context here, trained in their own window
            out.append((ids[begin:end], window_labels))
        return out
    return [(ids[at:at + max_length], start(labels[at:at + max_length].copy())) for at in range(0, len(ids), max_length)]


def pad(ids: np.ndarray, labels: np.ndarray, multiple: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A sequence padded at its end to a multiple of `multiple` tokens with `pad_id`, untrained: it stays one
    sequence (its positions run on through the padding), and causal attention keeps the padding from every
    real token, so nothing trained changes."""
    extra = -len(ids) % multiple
    if not extra:
        return ids, labels
    return (np.concatenate([ids, np.full(extra, pad_id, dtype=ids.dtype)]),
            np.concatenate([labels, np.full(extra, IGNORE_INDEX, dtype=labels.dtype)]))


def trained_spans(labels: np.ndarray) -> np.ndarray:
    """The runs of trained labels, (start, end) per row: with labels=assistant, one per assistant turn,
    from its first trained token through its end of turn."""
    trained = np.concatenate(([False], labels != IGNORE_INDEX, [False]))
    edges = np.flatnonzero(trained[1:] != trained[:-1])
    return edges.reshape(-1, 2)


def turn_windows(labels: np.ndarray, max_length: int) -> tuple[list[tuple[int, int, int]], int]:
    """overlong=turns: the windows (start, first trained position, end) of one overlong sequence, and how
    many of its assistant turns cannot be trained in any window.

    Every window ends where an assistant turn's trained span ends (its end of turn), so no written
    sequence stops mid-turn. Each turn is trained in exactly one window: a window trains the turns not
    trained yet that fit in it, as many as fit, and takes as much earlier context as there is room for
    (start = end - max_length, or 0), untrained. A turn trains from the window's second token on, so a
    turn fits when its span plus the one token before it has at most max_length tokens; a longer turn
    is counted and not trained (its tokens may still be context of a later window).
    """
    spans = trained_spans(labels)
    windows: list[tuple[int, int, int]] = []
    unfit = 0
    i = 0
    while i < len(spans):
        first = int(spans[i, 0])
        # the last turn whose end leaves room for everything from the token before `first`
        j = i - 1 + int(np.searchsorted(spans[i:, 1], max(first, 1) - 1 + max_length, side="right"))
        if j < i:
            unfit += 1
            i += 1
            continue
        end = int(spans[j, 1])
        windows.append((max(0, end - max_length), first, end))
        i = j + 1
    return windows, unfit


def written_labels(labels: np.ndarray, max_length: int, overlong: str) -> np.ndarray:
    """A sequence's labels as `fit` writes them, positions kept (split: each piece's first label
    ignored; truncate: the tail gone; turns: the turns that fit no window untrained). Only for a
    sequence that is written (not drop / error)."""
    if overlong == "turns" and len(labels) > max_length:
        out = np.full_like(labels, IGNORE_INDEX)
        for _, first, end in turn_windows(labels, max_length)[0]:
            out[first:end] = labels[first:end]
        return out
    pieces = fit(labels, labels, max_length, overlong)
    return pieces[0][1] if len(pieces) == 1 else np.concatenate([lab for _, lab in pieces])
