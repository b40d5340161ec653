"""The tokenizing step: one input file → an Arrow spill of token sequences, labels and line numbers.

    tokenize_file(input, spill, tokenizer, settings) -> TokenizeStats

Reading (reader.py) yields chunks of records; each chunk is rendered with the chat template,
encoded by the Rust tokenizer, labelled and fitted to max_length (the overlong policy), then
appended to the spill in input order; rejects go to a JSONL file in line order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
from jinja2.exceptions import SecurityError

from .chat import ChatEncoder, Rendered
from .errors import CollateError
from .reader import Reject, iter_chunks
from .settings import IGNORE_INDEX, CollateSettings
from .spill import SPILL_SCHEMA
from .stats import TokenizeStats, length_histogram
from .writers import atomic_path, shown

Progress = Callable[[int, int], None]  # (bytes_read, lines_read) since the last call


def _reason_key(reason: str) -> str:
    """Group reasons that differ only in numbers or in the value named ('message 3 has unknown role 'bot'').

    Field names stay readable: "no 'conversation', 'conversations' or 'messages' field".
    """
    reason = re.sub(r"(role|JSON) ('[^']*'|\S+)", r"\1 …", reason) if "unknown role" in reason else reason
    return re.sub(r"(?<!UTF-)\d+", "…", reason)


class _NothingUsable(Exception):
    """Raised inside tokenize_file to drop the spill but keep the rejects file."""


class _RejectLog:
    """Counts rejects and streams them to a JSONL file (file, line, reason, start of the line)."""

    def __init__(self, stats: TokenizeStats, stack: contextlib.ExitStack, path: str | Path | None, strict: bool):
        self.stats = stats
        self.strict = strict
        self.file = None
        if path is not None:
            tmp = stack.enter_context(atomic_path(path))
            self.file = stack.enter_context(open(tmp, "wb"))

    def add(self, reject: Reject) -> None:
        if self.strict:
            raise CollateError(f"{reject.where}: {reject.reason} (strict mode)")
        self.stats.rejected += 1
        self.stats.reject_reasons[_reason_key(reject.reason)] += 1
        if self.file is not None:
            record = reject.to_dict()
            record["file"] = shown(record["file"])  # a file name with non-UTF-8 bytes, escaped
            self.file.write(orjson.dumps(record) + b"\n")


def tokenize_file(
    input_path: str | Path,
    spill_path: str | Path,
    tokenizer,
    settings: CollateSettings,
    *,
    rejects_path: str | Path | None = None,
    progress: Progress | None = None,
    chunk_lines: int = 1024,
    max_line_bytes: int | None = None,
) -> TokenizeStats:
    """Render, tokenize and label every conversation of one JSONL file into an Arrow spill file.

    Overlong conversations follow `settings.overlong`. Bad lines go to `rejects_path` (JSONL) and the
    counts; `settings.strict` fails on the first one instead. Lines longer than `max_line_bytes`
    are rejected unparsed. Files appear only when complete.

    Whole-file failures (CollateError, no spill written): the file cannot be read (missing, not a
    regular file, corrupt or truncated gzip); the chat template breaks the Jinja sandbox's rules;
    overlong=error meets an overlong conversation; strict mode meets a bad line; or the file has
    lines but not one usable conversation (not JSONL, or every line bad) - the rejects file is still
    written then, to show why.
    """
    input_path = Path(input_path)
    if max_line_bytes is None:
        max_line_bytes = settings.max_line_bytes
    stats = TokenizeStats(file=str(input_path), max_length=settings.max_length)
    encoder = ChatEncoder(
        tokenizer, settings.labels, train_empty_think=settings.train_empty_think,
        reasoning_turns=settings.reasoning_turns,
    )
    stats.template = encoder.info.to_dict()
    lengths_written: list[np.ndarray] = []

    with contextlib.ExitStack() as outer:
        rejects = _RejectLog(stats, outer, rejects_path, settings.strict)
        try:
            with contextlib.ExitStack() as stack:
                spill_tmp = stack.enter_context(atomic_path(spill_path))
                sink = stack.enter_context(pa.OSFile(str(spill_tmp), "wb"))
                writer = stack.enter_context(pa.ipc.new_file(sink, SPILL_SCHEMA))
                pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max_workers=1))

                def finish(chunk, rendered, encodings):
                    batch, lengths = _chunk_to_batch(chunk, rendered, encodings, encoder, settings, stats, rejects)
                    if batch is not None:
                        writer.write_batch(batch)
                        lengths_written.append(lengths)
                    if progress is not None:
                        progress(chunk.bytes_read, chunk.lines_read)

                # Pipeline: the Rust tokenizer encodes chunk k on both cores (GIL released) while this
                # thread reads and renders chunk k+1, then labels and writes chunk k.
                pending = None
                for chunk in iter_chunks(input_path, chunk_lines=chunk_lines, max_line_bytes=max_line_bytes):
                    stats.lines_read += chunk.lines_read
                    stats.blank_lines += chunk.blank_lines
                    rendered = encoder.render(chunk.conversations)
                    done = [r for r in rendered if isinstance(r, Rendered)]
                    texts = [t for r in done for t in r.texts]
                    masked = any(m is not None for r in done for m in r.masks)
                    future = pool.submit(encoder.encode_texts, texts, masked)
                    if pending is not None:
                        finish(*pending[0], pending[1].result())
                    pending = ((chunk, rendered), future)
                if pending is not None:
                    finish(*pending[0], pending[1].result())
                if stats.rejected and not stats.conversations:
                    raise _NothingUsable
        except _NothingUsable:
            nothing_usable = True
        else:
            nothing_usable = False
    if nothing_usable:
        top = "; ".join(f"{reason} ×{count}" for reason, count in stats.reject_reasons.most_common(3))
        where = f"; every line and its reason are in {rejects_path}" if rejects_path is not None else ""
        raise CollateError(
            f"{input_path}: no usable conversation: all {stats.rejected} non-blank lines were rejected "
            f"({top}). Expected JSONL: one JSON object with a conversation a line{where}"
        )

    all_lengths = np.concatenate(lengths_written) if lengths_written else np.zeros(0, dtype=np.int64)
    stats.histogram = length_histogram(all_lengths, settings.max_length)
    return stats


def _chunk_to_batch(chunk, rendered, encodings, encoder: ChatEncoder, settings, stats, rejects):
    """Labels and overlong policy for one chunk; returns the spill record batch and lengths."""
    # Rejects are logged in line order: the reader's are merged with the ones found here.
    reader_rejects = iter(chunk.rejects)
    next_reader_reject = next(reader_rejects, None)

    def log_reader_rejects(before_line: int) -> None:
        nonlocal next_reader_reject
        while next_reader_reject is not None and next_reader_reject.line < before_line:
            rejects.add(next_reader_reject)
            next_reader_reject = next(reader_rejects, None)

    max_length = settings.max_length
    ids_out: list[np.ndarray] = []
    labels_out: list[np.ndarray] = []
    lines_out: list[int] = []
    enc_iter = iter(encodings)
    for k, (line, conversation, result) in enumerate(zip(chunk.line_numbers, chunk.conversations, rendered)):
        log_reader_rejects(line)
        excerpt = chunk.excerpts[k] if k < len(chunk.excerpts) else _excerpt(conversation.messages)
        if isinstance(result, SecurityError):
            # A template that breaks the sandbox's rules is hostile or broken for every line: stop.
            raise CollateError(
                f"{stats.file}:{line}: the chat template broke the Jinja sandbox's rules "
                f"({_one_line(result)}); refusing to use it"
            )
        if isinstance(result, ValueError):
            rejects.add(Reject(stats.file, line, str(result), excerpt, chunk.unit))
            continue
        if isinstance(result, Exception):
            rejects.add(Reject(stats.file, line, f"chat template error: {_one_line(result)}", excerpt, chunk.unit))
            continue
        sequences = [encoder.labels_for(next(enc_iter), mask) for mask in result.masks]
        pieces, reason = _fit(sequences, settings, stats, line)
        if reason is not None:
            rejects.add(Reject(stats.file, line, reason, excerpt, chunk.unit))
            continue
        trained = sum(int(np.count_nonzero(lab != IGNORE_INDEX)) for _, lab in pieces)
        if trained == 0:
            reason = "no trainable token"
            n = sum(len(ids) for ids, _ in sequences)
            if any(len(ids) > max_length for ids, _ in sequences) and settings.overlong == "truncate":
                reason += f" left after truncation to {max_length} tokens"
                stats.truncated -= 1
                stats.truncated_tokens -= sum(max(0, len(ids) - max_length) for ids, _ in sequences)
            elif settings.labels == "assistant" and not any(m["role"] == "assistant" for m in conversation.messages):
                reason += " (no assistant message)"
            rejects.add(Reject(stats.file, line, reason, excerpt, chunk.unit))
            stats.tokens_read -= n
            continue
        stats.conversations += 1
        stats.trained_tokens += trained
        stats.reasoning_dropped += result.dropped_reasoning
        stats.turn_sequences += len(result.texts) - 1
        for piece_ids, piece_labels in pieces:
            ids_out.append(piece_ids)
            labels_out.append(piece_labels)
            lines_out.append(line)
    log_reader_rejects(1 << 62)
    if not ids_out:
        return None, None
    lengths = np.fromiter((len(x) for x in ids_out), dtype=np.int64, count=len(ids_out))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    stats.sequences += len(ids_out)
    stats.tokens += int(offsets[-1])
    batch = pa.record_batch(
        [
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(ids_out))),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(labels_out))),
            pa.array(lines_out, type=pa.int64()),
        ],
        schema=SPILL_SCHEMA,
    )
    return batch, lengths


def _fit(sequences, settings, stats, line) -> tuple[list, str | None]:
    """Apply the overlong policy to a conversation's sequences: (pieces to write, reject reason or None)."""
    max_length = settings.max_length
    n = sum(len(ids) for ids, _ in sequences)
    if any(len(ids) == 0 for ids, _ in sequences):
        return [], "chat template rendered no tokens"
    stats.tokens_read += n
    longest = max(len(ids) for ids, _ in sequences)
    if longest <= max_length:
        return sequences, None
    policy = settings.overlong
    if policy == "error":
        raise CollateError(
            f"{stats.file}:{line}: conversation has {longest} tokens > max_length {max_length} (overlong=error)"
        )
    if policy == "drop":
        stats.dropped += 1
        stats.truncated_tokens += n
        return [], f"overlong: {longest} tokens > max_length {max_length}, dropped"
    pieces = []
    if policy == "truncate":
        stats.truncated += 1
        for ids, labels in sequences:
            stats.truncated_tokens += max(0, len(ids) - max_length)
            pieces.append((ids[:max_length], labels[:max_length]))
        return pieces, None
    stats.split += 1  # split: every chunk is its own sequence, so its first label is ignored
    for ids, labels in sequences:
        for start in range(0, len(ids), max_length):
            piece_labels = labels[start : start + max_length].copy()
            piece_labels[0] = IGNORE_INDEX
            pieces.append((ids[start : start + max_length], piece_labels))
    return pieces, None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _excerpt(conversation: list[dict]) -> str:
    return orjson.dumps(conversation).decode()[:200]
