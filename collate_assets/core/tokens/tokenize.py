"""The tokenizing step: one input file → an Arrow spill of token sequences, labels and line numbers.

    tokenize_file(input, spill, tokenizer, settings) -> TokenizeStats

The reader (reader.py) yields chunks of records as read. Each chunk is parsed, rendered with the chat
template, encoded by the Rust tokenizer, labelled and fitted to max_length (the overlong policy) by
`ChunkTokenizer.process`, giving a `ChunkResult`. With more than one worker (`settings.workers`, the
processes at work) and more than one chunk, this process forks `workers - 1` worker processes and
tokenizes chunks itself whenever they are all busy (see `_results`); results are taken in input order,
so the spill, the rejects file and the counts are the same bytes whatever the number of workers. This
process also reads, appends each result to the spill and logs its rejects in line order.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
from jinja2.exceptions import SecurityError

from ..write.arrays import to_arrow
from .audit import OUTSIDE_SAMPLE, SupervisionAudit, audit_turn_ends, count_special, special_token_ids
from .chat import ChatEncoder, Rendered
from .encoder import FIRST_CHECKED, EncoderReport
from ..errors import CollateError
from ..process import RUN
from ..read.reader import RawChunk, Reject, iter_raw_chunks, parse_chunk
from .sequences import fit, pad, spill_schema, turn_windows, uncut_hash, written_labels
from ..settings import IGNORE_INDEX, CollateSettings
from ..read.shards import Shard
from ..stats import TokenizeStats, length_histogram
from .tokenizer import (
    compare_pipelines, drift_summary, forget_other_backend, give_back_memory, other_backend, rare_collections,
)
from ..fs import atomic_path, shown

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


# The counts a chunk adds to its file's TokenizeStats (the reject counts are kept by _RejectLog).
_COUNTED = ("conversations", "sequences", "truncated", "dropped", "split", "tokens_read", "tokens",
            "trained_tokens", "truncated_tokens", "turn_sequences", "reasoning_dropped", "reasoning_unshown",
            "double_encoded_arguments", "turn_split", "turns_not_fit", "padding_tokens",
            "weighted_messages")
STAGES = ("read", "parse", "render", "encode", "labels", "spill")


@dataclasses.dataclass
class ChunkResult:
    """What one chunk gives: its sequences (concatenated, with offsets), their input lines, its rejects
    in line order, its counts and the seconds of each stage; `error` ends the file after the rejects."""

    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray  # int32, one more than the sequences
    lines: np.ndarray  # int64, each sequence's position in the file
    uncut: np.ndarray  # uint64, each sequence's uncut_hash
    weights: np.ndarray | None  # float32 loss weights, token for token (None: loss_weights=off)
    rejects: list[Reject]
    counts: TokenizeStats
    seconds: dict[str, float]
    error: CollateError | None = None
    drift: object = None  # tokenizer.TokenizerDrift on the chunk's texts, for the first chunk of a file
    audit: SupervisionAudit = dataclasses.field(default_factory=SupervisionAudit)  # merged by tokenize_file
    encoder: EncoderReport = dataclasses.field(default_factory=EncoderReport)  # how its texts were encoded

    def batch(self) -> pa.RecordBatch | None:
        if len(self.lines) == 0:
            return None
        offsets = to_arrow(self.offsets, pa.int32())
        columns = [
            pa.ListArray.from_arrays(offsets, to_arrow(self.ids, pa.int32())),
            pa.ListArray.from_arrays(offsets, to_arrow(self.labels, pa.int32())),
            to_arrow(self.lines, pa.int64()),
            to_arrow(self.uncut, pa.uint64()),
        ]
        if self.weights is not None:
            columns.append(pa.ListArray.from_arrays(offsets, to_arrow(self.weights, pa.float32())))
        return pa.record_batch(columns, schema=spill_schema(self.weights is not None))


DRIFT_TEXTS = 128  # texts of a file's first chunk encoded with the other tokenizer pipeline too


class ChunkTokenizer:
    """Parses, renders, encodes and labels chunks of one file's records (in this process or a worker)."""

    def __init__(self, encoder: ChatEncoder, settings: CollateSettings, name: str):
        self.encoder = encoder
        self.settings = settings
        self.name = name  # the input file's (for rejects and errors)
        self.compare_at = None  # position of the file's first record, set by _results before any worker starts
        self.workers_running = False  # set by _results: the other pipeline is then built for the drift check only
        self.specials = special_token_ids(encoder.tokenizer)  # the supervision audit counts these when trained
        self.pad_id = pad_id(encoder.tokenizer) if settings.pad_to_multiple_of else 0
        # labels=all: a labels=assistant encoder tells, on a sample, what is trained outside assistant turns
        # (made here, before workers fork, so each worker has it). None when the template cannot be masked.
        self.assistant_encoder = None
        if settings.labels == "all":
            try:
                self.assistant_encoder = ChatEncoder.from_settings(encoder.tokenizer, settings, "assistant")
            except CollateError:
                pass

    def stop(self, encoder: str = "", render: str = "") -> None:
        """Stop using the fast encoder / the direct renderer (a difference was found, here or in a worker)."""
        if encoder and not self.encoder.text_encoder.stopped:
            self.encoder.text_encoder.stop_fast(encoder)
        renderer = self.encoder.renderer
        if render and renderer is not None and renderer.on:
            renderer.reason = render

    def stops(self) -> tuple[str, str]:
        renderer = self.encoder.renderer
        return self.encoder.text_encoder.stopped, renderer.reason if renderer is not None else ""

    def process(self, raw: RawChunk) -> ChunkResult:
        """Parse, render, encode and label one chunk. In the process that reads the file (not a worker), the
        file's first chunk (its first record at `compare_at`, always tokenized there, see _results) is also
        encoded with the tokenizer pipeline not in use, to count the texts that differ (nothing written
        changes)."""
        clock = time.perf_counter
        encoder = self.encoder
        seconds = dict.fromkeys(("parse", "render", "encode", "labels"), 0.0)
        t0 = clock()
        chunk = parse_chunk(raw)
        t1 = clock()
        # a file's first chunk (wherever it is processed): its first renders and texts are all checked when
        # the direct renderer and the fast encoder are in use
        first = bool(raw.records) and raw.records[0][0] == self.compare_at
        renderer = encoder.renderer
        report = EncoderReport(self.settings.encoder)
        if renderer is not None:
            renderer.start_chunk(first, report)
        rendered = encoder.render(chunk.conversations)
        done = [r for r in rendered if isinstance(r, Rendered)]
        texts = [t for r in done for t in r.texts]
        masked = any(m is not None for r in done for m in r.masks)
        t2 = clock()
        sample = self.assistant_encoder is not None
        if renderer is not None:
            report.render = "direct" if renderer.on else "apply_chat_template"
            report.render_reason = renderer.reason
        check = {"check_first": FIRST_CHECKED if first else 0, "report": report}
        if texts and sample and not masked:
            # the texts the audit samples are encoded with offsets, the others as fast as ever (unmasked,
            # a conversation is one text): the sample is not encoded twice
            k = min(OUTSIDE_SAMPLE, len(texts))
            encodings = encoder.encode_texts(texts[:k], **check)
            if texts[k:]:
                check["check_first"] = max(0, check["check_first"] - k)
                encodings += encoder.encode_texts(texts[k:], False, **check)
        else:
            encodings = encoder.encode_texts(texts, masked, **check) if texts else []
        # The file's first chunk, in this process (never a worker: a worker that had built the other pipeline
        # encoded 10-25 % slower for the rest of the file, 60 MB, two workers, measured; the cause was not
        # found): its first DRIFT_TEXTS texts are compared, enough to see a difference, a small share of the
        # file's encoding. With workers running, the other pipeline is built for this only (see other_backend).
        drift = None
        if first and _WORKER is None and texts:
            other = other_backend(encoder.tokenizer, keep=not self.workers_running)
            drift = compare_pipelines(encoder.tokenizer, texts[:DRIFT_TEXTS], encodings[:DRIFT_TEXTS], other=other)
        t3 = clock()
        result = self._label(chunk, rendered, encodings, has_offsets=masked)
        if sample:
            self._sample_outside_assistant(chunk.conversations, rendered, encodings, result.audit)
        seconds.update(parse=t1 - t0, render=t2 - t1, encode=t3 - t2, labels=clock() - t3)
        result.seconds = seconds
        result.encoder = report
        result.drift = drift
        return result

    def _label(self, chunk, rendered, encodings, has_offsets: bool = True) -> ChunkResult:
        """Labels and the overlong policy for one chunk; rejects merged in line order with the reader's.

        `has_offsets`: the encodings carry character offsets (a chunk encoded without, for speed, has
        none; the supervision audit then works out the few it needs).
        """
        encoder, settings = self.encoder, self.settings
        counts = TokenizeStats(file=self.name, max_length=settings.max_length)
        audit = SupervisionAudit()
        rejects: list[Reject] = []
        reader_rejects = iter(chunk.rejects)
        next_reader_reject = next(reader_rejects, None)

        def take_reader_rejects(before_line: int) -> None:
            nonlocal next_reader_reject
            while next_reader_reject is not None and next_reader_reject.line < before_line:
                rejects.append(next_reader_reject)
                next_reader_reject = next(reader_rejects, None)

        name, unit = self.name, chunk.unit
        max_length = settings.max_length
        ids_out: list[np.ndarray] = []
        labels_out: list[np.ndarray] = []
        lines_out: list[int] = []
        hashes_out: list[int] = []
        weights_out: list[np.ndarray] = []
        error = None
        enc_iter = iter(encodings)
        for k, (line, conversation, result) in enumerate(zip(chunk.line_numbers, chunk.conversations, rendered)):
            take_reader_rejects(line)
            excerpt = chunk.excerpts[k] if k < len(chunk.excerpts) else _excerpt(conversation.messages)
            if isinstance(result, SecurityError):
                # A template that breaks the sandbox's rules is hostile or broken for every line: stop.
                error = CollateError(
                    f"{shown(name)}:{line}: the chat template broke the Jinja sandbox's rules "
                    f"({_one_line(result)}); refusing to use it"
                )
                break
            if isinstance(result, ValueError):
                rejects.append(Reject(name, line, str(result), excerpt, unit))
                continue
            if isinstance(result, Exception):
                rejects.append(Reject(name, line, f"chat template error: {_one_line(result)}", excerpt, unit))
                continue
            encs = [next(enc_iter) for _ in result.masks]
            if conversation.weights is not None and settings.loss_weights == "off":
                weight = next(w for w in conversation.weights if w is not None)
                rejects.append(Reject(name, line, f"a message has loss weight {weight:g}: only 0 (not trained) and 1 "
                                      "(trained) without --loss-weights messages or conversation-mean", excerpt, unit))
                continue
            sequences = [encoder.labels_for(enc, mask) for enc, mask in zip(encs, result.masks)]
            try:
                pieces, reason = _fit(sequences, settings, counts, line, name)
            except CollateError as exc:  # overlong=error
                error = exc
                break
            if reason is not None:
                rejects.append(Reject(name, line, reason, excerpt, unit))
                continue
            trained = sum(int(np.count_nonzero(lab != IGNORE_INDEX)) for _, lab, _ in pieces)
            if trained == 0:
                reason = "no trainable token"
                n = sum(len(ids) for ids, _ in sequences)
                if any(len(ids) > max_length for ids, _ in sequences) and settings.overlong == "truncate":
                    reason += f" left after truncation to {max_length} tokens"
                    _undo_truncation(counts, sequences, max_length)
                elif any(len(ids) > max_length for ids, _ in sequences) and settings.overlong == "turns":
                    reason += f": every assistant turn is longer than max_length {max_length} (overlong=turns)"
                    counts.turn_split -= 1  # not written
                elif settings.labels == "assistant" and not any(m["role"] == "assistant" for m in conversation.messages):
                    reason += " (no assistant message)"
                rejects.append(Reject(name, line, reason, excerpt, unit))
                counts.tokens_read -= n
                audit.no_trained_token += 1
                continue
            turns = self._audit_turns(result, conversation, sequences, encs, has_offsets, audit)
            if turns is not None and turns.truncated_before_end_of_turn and settings.truncated_turns == "drop":
                longest = max(len(ids) for ids, _ in sequences)
                rejects.append(Reject(name, line, f"truncation to max_length {max_length} cuts off the end of the last "
                                      f"trained assistant turn ({longest} tokens; truncated_turns=drop)", excerpt, unit))
                _undo_truncation(counts, sequences, max_length)  # not written: neither truncated nor read
                counts.tokens_read -= sum(len(ids) for ids, _ in sequences)
                audit.truncated_before_end_of_turn += turns.truncated_before_end_of_turn
                audit.truncated_turns_dropped += 1
                continue
            if turns is not None:
                audit.add(turns)
            counts.conversations += 1
            counts.trained_tokens += trained
            counts.reasoning_dropped += result.dropped_reasoning
            counts.reasoning_unshown += result.unshown_reasoning
            counts.double_encoded_arguments += conversation.double_encoded
            counts.turn_sequences += len(result.texts) - 1
            piece_weights = None
            if settings.loss_weights != "off":
                weights = [encoder.weights_for(enc, mask, labels) for enc, mask, (_, labels) in zip(encs, result.masks, sequences)]
                piece_weights = _cut_weights(sequences, weights, pieces, settings)
                counts.weighted_messages += sum(w is not None for w in conversation.weights or ())
            if settings.pad_to_multiple_of:
                before = sum(len(ids) for ids, _, _ in pieces)
                pieces = [(*pad(ids, labels, settings.pad_to_multiple_of, self.pad_id), h) for ids, labels, h in pieces]
                counts.padding_tokens += sum(len(ids) for ids, _, _ in pieces) - before
                if piece_weights is not None:
                    piece_weights = [np.concatenate([w, np.zeros(len(ids) - len(w), np.float32)])
                                     for w, (ids, _, _) in zip(piece_weights, pieces)]
            for piece_ids, piece_labels, piece_hash in pieces:
                ids_out.append(piece_ids)
                labels_out.append(piece_labels)
                lines_out.append(line)
                hashes_out.append(piece_hash)
            if piece_weights is not None:
                weights_out.extend(piece_weights)
        if error is None:
            take_reader_rejects(1 << 62)
        lengths = np.fromiter((len(x) for x in ids_out), dtype=np.int64, count=len(ids_out))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        counts.sequences += len(ids_out)
        counts.tokens += int(offsets[-1])

        empty = np.zeros(0, dtype=np.int32)
        all_labels = np.concatenate(labels_out) if labels_out else empty
        audit.tokens, audit.trained_tokens = counts.tokens, counts.trained_tokens
        count_special(audit, all_labels, self.specials)
        return ChunkResult(
            ids=np.concatenate(ids_out) if ids_out else empty,
            labels=all_labels,
            offsets=offsets,
            lines=np.asarray(lines_out, dtype=np.int64),
            uncut=np.asarray(hashes_out, dtype=np.uint64),
            weights=(np.concatenate(weights_out) if weights_out else np.zeros(0, np.float32))
            if settings.loss_weights != "off" else None,
            rejects=rejects,
            counts=counts,
            seconds={},
            error=error,
            audit=audit,
        )

    def _audit_turns(self, result: Rendered, conversation, sequences, encs, has_offsets: bool,
                     chunk_audit: SupervisionAudit) -> SupervisionAudit | None:
        """One conversation's turn ends, trained or not as written, and its sequences cut before their end
        of turn (None: counted straight into `chunk_audit`, the fast path of a text without a mask that
        fits).

        A text without a mask that fits is trained from its second token on, so each assistant turn's end
        is trained (GLM's last turn has none); only a cut one is looked at (its turn ends found in the
        text, offsets computed when it has none).
        """
        settings = self.settings
        max_length, overlong = settings.max_length, settings.overlong
        fits = all(len(ids) <= max_length for ids, _ in sequences)
        turn_ends = result.turn_ends
        plain = not turn_ends and result.masks == [None]
        if not turn_ends and (fits or overlong != "truncate"):
            if plain:
                messages = conversation.messages
                turns = sum(m["role"] == "assistant" for m in messages)
                missing = int(self.encoder.info.ends_at_next_role and turns > 0 and messages[-1]["role"] == "assistant")
                chunk_audit.turn_ends_trained += turns - missing
                chunk_audit.turn_ends_missing += missing
            return None
        if plain:
            turn_ends = [self.encoder.plain_turn_ends(conversation.messages, result.texts[0])]
        audit = SupervisionAudit()
        for j, (ids, labels) in enumerate(sequences):
            cut_here = overlong == "truncate" and len(ids) > max_length
            if j >= len(turn_ends) or not turn_ends[j]:
                # no turn ends from the engine: a sequence counts as cut before its end of turn when the
                # truncation removed trained tokens
                cut = cut_here and bool((labels[max_length:] != IGNORE_INDEX).any())
            else:
                # a text that fits is written whole: a turn's end lies in its trained span (the mask
                # runs through it), so no offsets are needed to see it trained
                offsets = None
                if len(ids) > max_length:
                    enc = encs[j]
                    if not has_offsets:
                        enc = self.encoder.backend.encode(result.texts[j], add_special_tokens=False)
                    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
                written = written_labels(labels, max_length, overlong)
                cut = audit_turn_ends(audit, turn_ends[j], offsets, written) and cut_here
            audit.truncated_before_end_of_turn += int(cut)
        return audit

    def _sample_outside_assistant(self, conversations, rendered, encodings, audit: SupervisionAudit) -> None:
        """labels=all: on the chunk's first OUTSIDE_SAMPLE rendered conversations, the tokens trained that a
        labels=assistant rendering of the same text does not train (headers, system prompt, user turns).

        `encodings` are the chunk's, in the order of the rendered texts; those of the sample have offsets.
        """
        picked, first_text, at = [], [], 0
        for k, r in enumerate(rendered):
            if isinstance(r, Rendered):
                if len(picked) < OUTSIDE_SAMPLE:
                    picked.append(k)
                    first_text.append(at)
                at += len(r.texts)
        if not picked:
            return
        other = self.assistant_encoder.render([conversations[k] for k in picked])
        pairs = [(rendered[k], o, encodings[i]) for k, o, i in zip(picked, other, first_text)
                 if isinstance(o, Rendered) and o.texts and o.texts[0] == rendered[k].texts[0]]
        for mine, theirs, enc in pairs:
            _, trained_all = self.encoder.labels_for(enc, mine.masks[0])
            _, trained_assistant = self.assistant_encoder.labels_for(enc, theirs.masks[0])
            trained = trained_all != IGNORE_INDEX
            audit.outside_sampled_conversations += 1
            audit.outside_sampled_trained += int(np.count_nonzero(trained))
            audit.outside_sampled_outside += int(np.count_nonzero(trained & (trained_assistant == IGNORE_INDEX)))


# -- worker processes ----------------------------------------------------------------------------------

_WORKER: ChunkTokenizer | None = None


def _init_worker(tokenizer: ChunkTokenizer) -> None:
    """In a new worker process: Ctrl-C and SIGTERM are the main process's to handle (it stops the workers);
    the tokenizer encodes on this worker's core only; nothing of the main process's cleanup is inherited."""
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    rare_collections()
    RUN.in_worker()  # the main process's temporary files and pools are its own to remove (on Ctrl-C)
    _WORKER = tokenizer


def _die_with_parent() -> None:
    """Linux: this worker is killed when the process that started it ends, even by kill -9 (a worker
    holds copies of the pool's pipes, so it would not see the end of its parent otherwise)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent ended before prctl took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass


def _process_in_worker(raw: RawChunk, stops: tuple[str, str]) -> ChunkResult:
    _WORKER.stop(*stops)
    return _WORKER.process(raw)


class _Pool:
    """Worker processes forked from this one (spawned where fork does not exist), stopped on any exit."""

    def __init__(self, tokenizer: ChunkTokenizer, workers: int):
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        # The tokenizer's Rust thread pool cannot be used in a forked child: the workers turn it off
        # (see _init_worker); said here, the variable keeps the library from warning about it at fork.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
        self.executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(tokenizer,))
        RUN.pools.add(self)  # an interrupt kills its workers before the process exits

    def submit(self, raw: RawChunk, stops: tuple[str, str] = ("", "")):
        with warnings.catch_warnings():
            # Python >= 3.12 warns at every fork of a process with threads (Dagster's, the template
            # watchdog's); the workers only run this module's code on inherited objects.
            warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning)
            return self.executor.submit(_process_in_worker, raw, stops)

    def kill(self) -> None:
        """Only for a process about to end (Ctrl-C, SIGTERM): a worker killed while it sends a result
        leaves the pool's manager thread waiting for the rest of it, and Python's exit waits for that thread."""
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        for process in processes:
            with contextlib.suppress(Exception):
                process.kill()
        for process in processes:  # reaped, so no zombie is left while this process goes on
            with contextlib.suppress(Exception):
                process.join(timeout=2)

    def close(self) -> None:
        """Chunks not started are cancelled; those under way (at most two a worker) end, then every worker
        exits and is reaped. A broken pool (a worker died) has already stopped the others."""
        RUN.pools.discard(self)
        self.executor.shutdown(wait=True, cancel_futures=True)


def _results(
    chunks: Iterator[RawChunk], tokenizer: ChunkTokenizer, workers: int, name: str
) -> Iterator[tuple[RawChunk, ChunkResult, int]]:
    """Each chunk with its result and the number of processes at work, in input order.

    One process (this one) for a file of one chunk or `workers` <= 1. Otherwise `workers` processes: this one
    and `workers - 1` forked from it. The forked ones are kept busy (two chunks handed to each, under way or
    waiting); this process tokenizes a chunk itself whenever they all are, between reading the file and
    writing the spill, which take it little time. So `workers` processes use `workers` cores, and the
    tokenizer's pages are mapped in `workers` processes, not one more (summed RSS: Qwen3 through Dagster,
    2 cores, 1.46 GB with a third process against 0.96 GB).

    The file's first chunk is always tokenized here, where its texts are also compared with the other
    tokenizer pipeline (ChunkTokenizer.process): before the fork when that pipeline is still live (the
    one the tokenizer was loaded with), which it then is not in the workers; after it otherwise, the
    other pipeline then built for that comparison only."""
    first = next(chunks, None)
    second = next(chunks, None) if first is not None else None
    if first is not None and first.records:
        tokenizer.compare_at = first.records[0][0]
    chunks = itertools.chain([c for c in (first, second) if c is not None], chunks)
    text_encoder = tokenizer.encoder.text_encoder
    text_encoder.prepare(worth_it=second is not None)
    if workers <= 1 or second is None:
        for raw in chunks:
            yield raw, tokenizer.process(raw), 1
        return
    # [raw, future, result] in input order: a worker's chunk has a future; this process's own has neither
    # until it tokenizes it
    pending: collections.deque = collections.deque()
    tokens = tokenizer.encoder.tokenizer
    if getattr(tokens, "collate_other_backend", None) is not None:
        next(chunks)  # the first chunk, tokenized now, before the fork
        pending.append([first, None, tokenizer.process(first)])
    forget_other_backend(tokens)  # not inherited by the workers
    give_back_memory()  # what loading the fast encoder freed is not copied into every worker's map
    pool = _Pool(tokenizer, workers - 1)
    tokenizer.workers_running = True
    depth = 2 * (workers - 1)  # chunks handed to the workers, under way or waiting
    limit = depth + 2 * workers  # results held for their turn, at most

    def busy() -> int:
        return sum(1 for entry in pending if entry[1] is not None and not entry[1].done())

    def run_own(entry=None) -> None:
        """Tokenize `entry`, or the oldest of this process's chunks not tokenized yet (if any)."""
        entry = entry or next((e for e in pending if e[1] is None and e[2] is None), None)
        if entry is not None:
            entry[2] = tokenizer.process(entry[0])

    def take() -> tuple[RawChunk, ChunkResult, int]:
        entry = pending[0]
        if entry[1] is None and entry[2] is None:
            run_own(entry)
        raw, future, result = pending.popleft()
        if result is None:
            result = future.result()
        # a difference between the fast encoder (or the direct renderer) and the reference, in a worker or
        # here: the chunks handed out from now on are encoded (rendered) with the reference everywhere
        tokenizer.stop(result.encoder.reason if result.encoder.differing else "",
                       result.encoder.render_reason if result.encoder.render_differing else "")
        return raw, result, workers

    def ready() -> bool:
        entry = pending[0]
        return entry[2] is not None or (entry[1] is not None and entry[1].done())

    try:
        for raw in chunks:
            entry = [raw, None, None]
            pending.append(entry)
            if raw is not first and busy() < depth:
                entry[1] = pool.submit(raw, tokenizer.stops())
            if busy() >= depth:
                run_own()
            while pending and (ready() or len(pending) > limit):
                yield take()
        while pending:
            yield take()
    except BrokenProcessPool as exc:
        raise CollateError(
            f"{shown(name)}: a worker process stopped while tokenizing (killed, or out of memory?): {exc}"
        ) from None
    finally:
        tokenizer.workers_running = False
        pool.close()


# -- the step ----------------------------------------------------------------------------------------


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
    shard: Shard | None = None,
) -> TokenizeStats:
    """Render, tokenize and label every conversation of one input file into an Arrow spill file.

    Overlong conversations follow `settings.overlong`. Bad lines go to `rejects_path` (JSONL) and the
    counts; `settings.strict` fails on the first one instead. Lines longer than `max_line_bytes`
    are rejected unparsed. Files appear only when complete. `settings.workers` processes do the
    work (0: one per core this process may use); the files are the same whatever their number.

    Whole-file failures (CollateError, no spill written): the file cannot be read (missing, not a
    regular file, corrupt or truncated gzip); the chat template breaks the Jinja sandbox's rules;
    overlong=error meets an overlong conversation; strict mode meets a bad line; or the file has
    lines but not one usable conversation (not JSONL, or every line bad) - the rejects file is still
    written then, to show why.

    With `shard` (see shards.py), only that part of a plain .jsonl file is read; its lines keep their
    numbers in the whole file.
    """
    input_path = Path(input_path)
    if max_line_bytes is None:
        max_line_bytes = settings.max_line_bytes
    stats = TokenizeStats(file=str(input_path), max_length=settings.max_length,
                          shard=shard.to_dict() if shard is not None else None)
    encoder = ChatEncoder.from_settings(tokenizer, settings)
    stats.template = encoder.info.to_dict()
    stats.tokenizer_drift = drift_summary(tokenizer)
    chunk_tokenizer = ChunkTokenizer(encoder, settings, str(input_path))
    stats_encoder = EncoderReport(settings.encoder)
    workers = settings.worker_count()
    seconds = dict.fromkeys(STAGES, 0.0)
    lengths_written: list[np.ndarray] = []
    audit = SupervisionAudit()
    clock = time.perf_counter

    def timed_chunks() -> Iterator[RawChunk]:
        raws = iter_raw_chunks(input_path, chunk_lines=chunk_lines, max_line_bytes=max_line_bytes, shard=shard)
        while True:
            start = clock()
            raw = next(raws, None)
            seconds["read"] += clock() - start
            if raw is None:
                return
            yield raw

    with contextlib.ExitStack() as outer:
        rejects = _RejectLog(stats, outer, rejects_path, settings.strict)
        try:
            with contextlib.ExitStack() as stack:
                spill_tmp = stack.enter_context(atomic_path(spill_path))
                sink = stack.enter_context(pa.OSFile(str(spill_tmp), "wb"))
                writer = stack.enter_context(pa.ipc.new_file(sink, spill_schema(settings.loss_weights != "off")))
                for raw, result, at_work in _results(timed_chunks(), chunk_tokenizer, workers, str(input_path)):
                    stats.workers = at_work
                    stats.lines_read += raw.lines_read
                    stats.blank_lines += raw.blank_lines
                    for reject in result.rejects:
                        rejects.add(reject)
                    if result.error is not None:
                        raise result.error
                    for field in _COUNTED:
                        setattr(stats, field, getattr(stats, field) + getattr(result.counts, field))
                    audit.add(result.audit)
                    for stage, value in result.seconds.items():
                        seconds[stage] += value
                    stats_encoder.add(result.encoder)
                    if result.drift is not None:
                        stats.tokenizer_drift = drift_summary(tokenizer, result.drift)
                    start = clock()
                    batch = result.batch()
                    if batch is not None:
                        writer.write_batch(batch)
                        lengths_written.append(np.diff(result.offsets))
                    seconds["spill"] += clock() - start
                    if progress is not None:
                        progress(raw.bytes_read, raw.lines_read)
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
    stats.stage_seconds = {stage: round(value, 4) for stage, value in seconds.items()}
    stats.supervision = audit.to_dict()
    stats.encoder = stats_encoder.to_dict()
    return stats


def _fit(sequences, settings, stats, line, name: str) -> tuple[list, str | None]:
    """Apply the overlong policy to a conversation's sequences: (pieces to write as (ids, labels,
    uncut_hash), reject reason or None)."""
    max_length = settings.max_length
    n = sum(len(ids) for ids, _ in sequences)
    if any(len(ids) == 0 for ids, _ in sequences):
        return [], "chat template rendered no tokens"
    stats.tokens_read += n
    longest = max(len(ids) for ids, _ in sequences)
    if longest <= max_length:
        return [(ids, labels, 0) for ids, labels in sequences], None  # written whole: uncut_hash 0
    policy = settings.overlong
    if policy == "error":
        raise CollateError(
            f"{shown(name)}:{line}: conversation has {longest} tokens > max_length {max_length} (overlong=error)"
        )
    if policy == "drop":
        stats.dropped += 1
        stats.truncated_tokens += n
        return [], f"overlong: {longest} tokens > max_length {max_length}, dropped"
    if policy == "truncate":
        stats.truncated += 1
        stats.truncated_tokens += sum(max(0, len(ids) - max_length) for ids, _ in sequences)
    elif policy == "turns":
        stats.turn_split += 1
        stats.turns_not_fit += sum(turn_windows(labels, max_length)[1] for ids, labels in sequences if len(ids) > max_length)
    else:
        stats.split += 1
    return [(*piece, uncut_hash(ids, labels) if len(ids) > max_length else 0) for ids, labels in sequences
            for piece in fit(ids, labels, max_length, policy)], None


def _cut_weights(sequences, weights, pieces, settings) -> list[np.ndarray]:
    """The loss weights of the pieces `_fit` made of `sequences`, cut the same way; 0 wherever a piece's label
    is ignored (a piece's first token, earlier turns as context); under conversation-mean divided by their sum
    over the conversation, so that they sum to 1 over it."""
    max_length, policy = settings.max_length, settings.overlong
    if max(len(ids) for ids, _ in sequences) <= max_length:
        cut = weights
    else:
        cut = [w for (_, labels), wt in zip(sequences, weights) for w, _ in fit(wt, labels, max_length, policy)]
    out = [np.where(labels == IGNORE_INDEX, np.float32(0), w).astype(np.float32) for w, (_, labels, _) in zip(cut, pieces)]
    if settings.loss_weights == "conversation-mean":
        total = float(sum(w.sum(dtype=np.float64) for w in out))
        if total > 0:
            out = [(w / np.float32(total)).astype(np.float32) for w in out]
    return out


def pad_id(tokenizer) -> int:
    """The id that pads sequences (pad_to_multiple_of): the tokenizer's pad token, else its end-of-sequence
    token, else 0. Padding is never trained nor attended to by a real token, so which id matters little."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def _undo_truncation(counts: TokenizeStats, sequences, max_length: int) -> None:
    """A truncated conversation that is rejected after all: _fit's truncation counts taken back."""
    counts.truncated -= 1
    counts.truncated_tokens -= sum(max(0, len(ids) - max_length) for ids, _ in sequences)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _excerpt(conversation: list[dict]) -> str:
    return orjson.dumps(conversation).decode()[:200]
