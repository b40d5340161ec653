"""A training set from several tokenized sources: budgeted, deduplicated, split, packed together, shuffled.

    build_mix(sources, output_dir, MixSettings(...)) -> MixStats

A source is a named list of spills (the tokenized files of one dataset) with one of: a `weight`
(default 1), a `ratio` (its share of the mix), or a `tokens` budget. The mix

1. leaves out every absent source: weight 0, ratio 0 or tokens 0. Its files are not read, so it
   changes nothing of the others (not their duplicates, not their validation split); its figures
   say `absent: true`;
2. reads every spill of the other sources once, cataloguing each conversation (the run of sequences
   of one input line): a hash of its tokens and labels (two records that render to the same training
   data are the same conversation), its tokens, its trained tokens (labels != -100), and an input
   hash from the spill's `uncut_hash` column (a cut sequence's hash before the overlong cut, 0 for
   one written whole, whose tokens are its input) when the spill has it;
3. drops exact duplicates across the sources that are in: the first occurrence is kept, in the order
   the sources are listed, then their files, then their lines. Each dropped copy is counted by cause:
   `identical_input` (its input hash is the kept copy's: the same text twice),
   `identical_after_truncation` (different inputs that the overlong cut made the same), or
   `unknown_cause` (a spill written before the `uncut_hash` column: no input hash to compare);
4. holds out a validation split by conversation: a conversation is in it when a hash of its content
   falls under `validation_share`, so the split does not depend on the seed, the budgets or which
   other files exist, and a conversation never moves between splits when files are added. The
   validation split is not weighted: each held-out conversation once;
5. selects the training conversations of each source to a budget, counted in the mix's `budget_by`
   tokens: `trained` (default: labels != -100, what the loss sees) or `all` (prompts, system text
   and template tokens included). With A the source's training tokens after deduplication:
   - `weight: w`: a budget of w x A; 2.5 is every conversation twice plus half of A more;
   - `tokens: N`: a budget of N, at most `max_repeats` x A (default max_repeats 1: no conversation
     twice). A budget over that cap is taken at the cap and reported short (asked vs got);
   - `ratio`s (every source or none; shares are ratio / sum of the ratios): the largest mix in those
     shares in which no source repeats beyond its `max_repeats` (the source that runs out first
     is taken whole, max_repeats times; the others are down-sampled, or up-sampled within their caps).
   A budget B is met by floor(B / A) whole copies of the source, then conversations in a seeded
   order (a hash of the conversation's content and the seed: the same on every run, and a stable
   prefix when the budget grows) until the next one would take the total further from B than
   stopping: every source gets its budget to within one conversation, never by independent draws.
   `tokens` and `weight` sources may be mixed; `ratio` sources may not be mixed with either (a share
   of a mix whose size the others fix is ill-defined). `max_repeats` applies to `ratio` and `tokens`
   (with a weight, the weight is the number of copies). Per source the figures show what was asked
   (weight, ratio and share, or tokens; the budget in tokens) and what it got (trained and all
   tokens, its share of the mix, short_by and budget_met: short by at most its largest conversation);
6. packs each split with best-fit decreasing across all sources (sequences of different sources
   share rows), shuffles the rows with the seed, and writes them as Arrow shards of `shard_rows` rows:
   `train-00000-of-000NN.arrow`, `validation-00000-of-000NN.arrow`, with `training_set.json` (sources,
   asked and got, counts, duplicates by cause, fingerprints, files). The same inputs and settings
   give the same bytes.

Memory: per sequence a few integers (its spill, place and length, about 40 bytes) and per
conversation a few more (first sequence, count, hashes, source, trained tokens: about 50 bytes),
never its tokens; tokens are read from the memory-mapped spills a write group at a time (see spill.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import packing
from ..write.arrays import to_numpy
from ..errors import CollateError
from ..settings import BALANCE_READERS, IGNORE_INDEX, parse_balance_ranks
from ..read.shards import shard_suffix
from .spill import _batches, _gather_tokens, _Layout, _open_spill, _read_layout, rows_batch, write_groups
from ..fs import atomic_path, shown
from ..write.writers import packed_writer

MANIFEST_NAME = "training_set.json"
SPLITS = ("train", "validation")
_MASK64 = (1 << 64) - 1
_VALIDATION_SALT = 0x9E3779B97F4A7C15  # the split depends on the content only, never on the seed


@dataclasses.dataclass(frozen=True)
class MixSource:
    """One source of a mix: its name, its weight and its tokenized files (spill paths, in order).

    Exactly one of `weight` (1 counts as not given when `ratio` or `tokens` is), `ratio` or `tokens`
    sets how much of it the mix takes; 0 in any of them leaves the source out (see the module
    docstring). `max_repeats` (ratio and tokens only; default 1) caps how many times its training
    tokens may be taken. `fingerprints` (optional) identify what the spills were made from (input
    sha256, settings, tokenizer); they are written to the manifest as they are given.
    """

    name: str
    weight: float
    spills: Sequence[str | Path]
    fingerprints: Sequence[dict] = ()
    ratio: float | None = None  # a share of the training tokens instead of a weight (all sources or none)
    # The supervision audit of the source's files as tokenized (audit.SupervisionAudit.to_dict(), merged over
    # its spills), written to the manifest per source and merged over sources: before deduplication and weighting.
    supervision: dict | None = None
    tokens: int | None = None  # a budget of training tokens (counted by the mix's budget_by) instead of a weight
    max_repeats: float | None = None  # ratio and tokens: at most this many times the source's tokens (default 1)

    @property
    def absent(self) -> bool:
        """Left out of the mix: weight, ratio or tokens 0."""
        return self.weight == 0 or self.ratio == 0 or self.tokens == 0

    @property
    def asked(self) -> str:
        """What sets the source's amount: `ratio`, `tokens` or `weight`."""
        return "ratio" if self.ratio is not None else "tokens" if self.tokens is not None else "weight"


BUDGET_BY = ("trained", "all")


@dataclasses.dataclass(frozen=True)
class MixSettings:
    max_length: int
    seed: int = 0
    validation_share: float = 0.0
    shard_rows: int = 1000
    packing: str = "bfd"
    budget_by: str = "trained"  # what ratios, tokens budgets and fractional weights count: trained or all tokens
    # "WxB": the train split's rows ordered so that each step of W ranks x B rows, read without shuffling as
    # balance_reader says, has near-equal attention cost (balance.py); None: shuffled rows as they come
    balance_ranks: str | None = None
    balance_reader: str = "sampler"
    # Evaluation files or folders (JSONL, JSON, Parquet): a conversation whose text shares at least
    # `decontaminate_min_matches` distinct `decontaminate_n`-word grams with them is dropped (overlap.py)
    decontaminate: tuple[str, ...] = ()
    decontaminate_n: int = 13
    decontaminate_min_matches: int = 1
    # Jaccard threshold of near-duplicate conversations (MinHash-LSH over 5-word shingles; the first kept)
    near_duplicates: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_share < 1.0:
            raise ValueError(f"validation_share must be at least 0 and below 1, got {self.validation_share!r}")
        if self.shard_rows < 1:
            raise ValueError(f"shard_rows must be at least 1, got {self.shard_rows!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length!r}")
        if self.budget_by not in BUDGET_BY:
            raise ValueError(f"budget_by must be one of {', '.join(BUDGET_BY)}, got {self.budget_by!r}")
        if self.balance_ranks is not None:
            world, micro = parse_balance_ranks(str(self.balance_ranks))
            object.__setattr__(self, "balance_ranks", f"{world}x{micro}")
        if self.balance_reader not in BALANCE_READERS:
            raise ValueError(f"balance_reader must be one of {', '.join(BALANCE_READERS)}, got {self.balance_reader!r}")
        object.__setattr__(self, "decontaminate", tuple(str(p) for p in self.decontaminate))
        if not (isinstance(self.decontaminate_n, int) and self.decontaminate_n >= 1):
            raise ValueError(f"decontaminate_n must be a whole number >= 1, got {self.decontaminate_n!r}")
        if not (isinstance(self.decontaminate_min_matches, int) and self.decontaminate_min_matches >= 1):
            raise ValueError(f"decontaminate_min_matches must be a whole number >= 1, got {self.decontaminate_min_matches!r}")
        if self.near_duplicates is not None and not 0 < self.near_duplicates <= 1:
            raise ValueError(f"near_duplicates must be a Jaccard threshold in (0, 1], got {self.near_duplicates!r}")

    def to_dict(self) -> dict:
        """The settings as the manifest keeps them (the rank balance only when asked for)."""
        out = dataclasses.asdict(self)
        if self.balance_ranks is None:
            del out["balance_ranks"], out["balance_reader"]
        if not self.decontaminate:
            del out["decontaminate"], out["decontaminate_n"], out["decontaminate_min_matches"]
        else:
            out["decontaminate"] = list(self.decontaminate)
        if self.near_duplicates is None:
            del out["near_duplicates"]
        return out


@dataclasses.dataclass
class MixStats:
    sources: dict[str, dict[str, Any]]
    splits: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    files: list[str]
    seconds: float = 0.0
    supervision: dict = dataclasses.field(default_factory=dict)  # the sources' audits merged ({}: none given)
    decontamination: dict = dataclasses.field(default_factory=dict)  # what `decontaminate` found ({}: not asked)
    near_duplicates: dict = dataclasses.field(default_factory=dict)  # what `near_duplicates` found ({}: not asked)
    stage_seconds: dict = dataclasses.field(default_factory=dict)  # of the overlap filters (not in the manifest)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for name in ("decontamination", "near_duplicates"):
            if not out[name]:
                del out[name]
        return out


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each value (SplitMix64's finaliser)."""
    z = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _unit(values: np.ndarray) -> np.ndarray:
    """Hashes as floats in [0, 1)."""
    return (values >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclasses.dataclass
class _Catalog:
    """Every sequence and conversation of the sources that are in (a few integers each)."""

    layouts: list[_Layout]
    spill_paths: list[str]
    seq_spill: np.ndarray  # int32: the spill of each sequence
    seq_index: np.ndarray  # int64: its index in that spill
    seq_length: np.ndarray  # int64
    conv_first: np.ndarray  # int64: the first sequence of each conversation (sequences of one are consecutive)
    conv_count: np.ndarray  # int64: how many sequences it has
    conv_hash: np.ndarray  # uint64: of its tokens and labels
    conv_source: np.ndarray  # int32
    conv_trained: np.ndarray  # int64: its labels != -100
    conv_input: np.ndarray  # uint64: a hash of its sequences' uncut_hash (0 when the spill has none)
    conv_has_input: np.ndarray  # bool: its spill has the uncut_hash column
    conv_line: np.ndarray  # int64: its line in its input file (as the spill says)


def _catalog(sources: Sequence[MixSource]) -> _Catalog:
    """The catalog of every source that is not absent (an absent source's files are not read)."""
    layouts, paths = [], []
    seq_spill, seq_index, seq_length = [], [], []
    conv_first, conv_count, conv_hash, conv_source, conv_trained, conv_input, conv_has_input = [], [], [], [], [], [], []
    conv_line = []
    sequences = 0
    for source_index, source in enumerate(sources):
        if source.absent:
            continue
        for spill in source.spills:
            spill = str(spill)
            layout = _read_layout(spill)
            spill_index = len(layouts)
            layouts.append(layout)
            paths.append(spill)
            n = len(layout.lengths)
            seq_spill.append(np.full(n, spill_index, dtype=np.int32))
            seq_index.append(np.arange(n, dtype=np.int64))
            seq_length.append(layout.lengths)
            conversations = _hash_conversations(spill)
            conv_first.append(conversations.firsts + sequences)
            conv_count.append(conversations.counts)
            conv_hash.append(conversations.hashes)
            conv_source.append(np.full(len(conversations.firsts), source_index, dtype=np.int32))
            conv_trained.append(conversations.trained)
            conv_input.append(conversations.inputs)
            conv_has_input.append(np.full(len(conversations.firsts), conversations.has_input, dtype=bool))
            conv_line.append(conversations.lines)
            sequences += n

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)

    return _Catalog(
        layouts, paths, cat(seq_spill, np.int32), cat(seq_index, np.int64), cat(seq_length, np.int64),
        cat(conv_first, np.int64), cat(conv_count, np.int64), cat(conv_hash, np.uint64), cat(conv_source, np.int32),
        cat(conv_trained, np.int64), cat(conv_input, np.uint64), cat(conv_has_input, bool), cat(conv_line, np.int64),
    )


UNCUT_HASH = "uncut_hash"  # the spill column of each cut sequence's hash before the overlong cut, 0 if whole (newer spills)


@dataclasses.dataclass
class _Conversations:
    firsts: np.ndarray  # int64: first sequence of each conversation in the spill
    counts: np.ndarray  # int64: its sequences
    hashes: np.ndarray  # uint64: of its tokens and labels
    trained: np.ndarray  # int64: its labels != -100
    inputs: np.ndarray  # uint64: of its sequences' uncut hashes (0 without the column)
    has_input: bool  # the spill has the uncut_hash column
    lines: np.ndarray  # int64: its line in the input file


def _hash_conversations(spill: str) -> _Conversations:
    """Each conversation of a spill (first sequence, sequences, hashes, trained tokens), reading it once.

    A conversation is the run of consecutive sequences from one input line (a record trained as
    several sequences: per-turn reasoning, or split chunks).
    """
    with _open_spill(spill) as reader:
        count = reader.num_record_batches
        has_input = reader.schema.get_field_index(UNCUT_HASH) >= 0
    firsts, counts, hashes, trained, inputs, conv_lines = [], [], [], [], [], []
    previous_line = None
    digest = input_digest = None

    def finish():
        hashes.append(int.from_bytes(digest.digest(), "little"))
        inputs.append(int.from_bytes(input_digest.digest(), "little") if has_input else 0)

    seq = 0
    for _, batch in _batches(spill, range(count)):
        raw_offsets = to_numpy(batch.column(0).offsets)
        offsets = raw_offsets.tolist()
        ids = to_numpy(batch.column(0).values)
        labels = to_numpy(batch.column(1).values)
        lines = to_numpy(batch.column(2)).tolist()
        counted = np.zeros(len(labels) + 1, dtype=np.int64)
        np.cumsum(labels != IGNORE_INDEX, out=counted[1:])
        seq_trained = (counted[raw_offsets[1:]] - counted[raw_offsets[:-1]]).tolist()
        uncut = to_numpy(batch.column(batch.schema.get_field_index(UNCUT_HASH))).tolist() if has_input else None
        for i, line in enumerate(lines):
            if line != previous_line:
                if digest is not None:
                    finish()
                digest = hashlib.blake2b(digest_size=8)
                input_digest = hashlib.blake2b(digest_size=8)
                firsts.append(seq)
                conv_lines.append(line)
                counts.append(0)
                trained.append(0)
                previous_line = line
            start, end = offsets[i], offsets[i + 1]
            digest.update((end - start).to_bytes(4, "little"))
            digest.update(ids[start:end].tobytes())
            digest.update(labels[start:end].tobytes())
            if uncut is not None:
                input_digest.update(uncut[i].to_bytes(8, "little"))
            counts[-1] += 1
            trained[-1] += seq_trained[i]
            seq += 1
        del batch, raw_offsets, offsets, ids, labels, lines, counted, uncut
    if digest is not None:
        finish()
    return _Conversations(
        np.asarray(firsts, dtype=np.int64), np.asarray(counts, dtype=np.int64), np.asarray(hashes, dtype=np.uint64),
        np.asarray(trained, dtype=np.int64), np.asarray(inputs, dtype=np.uint64), has_input,
        np.asarray(conv_lines, dtype=np.int64),
    )


def _expand(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The sequences `first[i] .. first[i] + count[i] - 1` of every i, in order."""
    if not len(first):
        return np.zeros(0, dtype=np.int64)
    total = int(count.sum())
    starts = np.repeat(first, count)
    group_start = np.repeat(np.cumsum(count) - count, count)
    return starts + (np.arange(total, dtype=np.int64) - group_start)


def _gather(catalog: _Catalog, seqs: np.ndarray, weighted: bool = False):
    """The tokens, labels and (`weighted`: spills with loss_weights, else None) loss weights of catalog
    sequences `seqs`, one after the other, from their spills."""
    lengths = catalog.seq_length[seqs]
    dest = np.zeros(len(seqs), dtype=np.int64)
    np.cumsum(lengths[:-1], out=dest[1:])
    ids = np.empty(int(lengths.sum()), dtype=np.int32)
    labels = np.empty_like(ids)
    weights = np.empty(len(ids), dtype=np.float32) if weighted else None
    spills = catalog.seq_spill[seqs]
    for spill in np.unique(spills).tolist():
        mine = np.flatnonzero(spills == spill)
        got_ids, got_labels, got_weights = _gather_tokens(catalog.spill_paths[spill], catalog.layouts[spill],
                                                          catalog.seq_index[seqs[mine]], weights=True)
        where = _expand(dest[mine], lengths[mine])
        ids[where] = got_ids
        labels[where] = got_labels
        if weights is not None:
            weights[where] = got_weights
    return ids, labels, weights


def _weighted(catalog: _Catalog) -> bool:
    """Whether the spills carry loss weights: all of them or none (a mix cannot weigh some tokens only)."""
    used = [(path, layout.weighted) for path, layout in zip(catalog.spill_paths, catalog.layouts) if len(layout.lengths)]
    flags = {weighted for _, weighted in used}
    if len(flags) > 1:
        first = {weighted: path for path, weighted in reversed(used)}
        raise CollateError(f"some sources were tokenized with loss_weights ({shown(first[True])}) and some without "
                           f"({shown(first[False])}): tokenize them all with the same loss_weights setting")
    return flags == {True}


def _write_split(catalog: _Catalog, seqs: np.ndarray, name: str, folder: Path, settings: MixSettings,
                 rng: np.random.Generator) -> tuple[dict, list[str]]:
    """Pack `seqs` (catalog sequence ids, copies included) into shuffled rows written as shards."""
    lengths = catalog.seq_length[seqs]
    if len(lengths) and int(lengths.max()) > settings.max_length:
        raise CollateError(
            f"a tokenized sequence has {int(lengths.max())} tokens > the mix's max_length {settings.max_length}: "
            "tokenize the sources with a max_length no larger than the mix's"
        )
    items, offsets = packing.pack_flat(lengths, settings.max_length, settings.packing)
    counts = np.diff(offsets)
    rows = len(counts)
    order = rng.permutation(rows)
    balance = None
    if settings.balance_ranks is not None and name == "train":
        # its own generator: the rows of the validation split (drawn from `rng` after) do not change
        from .balance import balance_rows, row_costs

        world, micro = parse_balance_ranks(settings.balance_ranks)
        within, balance = balance_rows(row_costs(lengths, items, offsets)[order], world, micro,
                                       layout=settings.balance_reader, seed=settings.seed)
        order = order[within]
    weighted = _weighted(catalog)
    shard_count = max(1, math.ceil(rows / settings.shard_rows))
    files, tokens, trained, longest = [], 0, 0, 0
    for shard in range(shard_count):
        shard_rows = order[shard * settings.shard_rows:(shard + 1) * settings.shard_rows]
        file_name = f"{name}{shard_suffix(shard, shard_count)}.arrow"
        with packed_writer(folder / file_name, "arrow", weighted=weighted) as writer:
            for first, end in write_groups(lengths, items, offsets, shard_rows):
                group = shard_rows[first:end]
                picked = seqs[items[_expand(offsets[group], counts[group])]]
                ids, labels, weights = _gather(catalog, picked, weighted)
                batch, row_tokens = rows_batch(ids, labels, catalog.seq_length[picked], counts[group], weights)
                tokens += len(ids)
                trained += int(np.count_nonzero(labels != IGNORE_INDEX))
                longest = max(longest, int(row_tokens.max()))
                writer.write_batch(batch)
                del batch, ids, labels
        files.append(file_name)
    bound = packing.lower_bound(tokens, settings.max_length)
    return {
        "rows": rows, "sequences": len(seqs), "tokens": tokens, "trained_tokens": trained,
        "trained_share": trained / tokens if tokens else 0.0, "lower_bound_rows": bound,
        "fill": tokens / (rows * settings.max_length) if rows else 0.0, "max_row_tokens": longest, "files": files,
        **({"balance": balance} if balance is not None else {}),
        **({"loss_weights": True} if weighted else {}),
    }, files


def build_mix(sources: Sequence[MixSource], output_dir: str | Path, settings: MixSettings, tokenizer=None) -> MixStats:
    """Write the training set of `sources` into `output_dir` (see the module docstring).

    The files of the previous mix there (those its manifest lists) are replaced; nothing else in the
    folder is touched. The new files are written beside them first, so a failure leaves the old set.
    `tokenizer` (the sources' own) turns conversations back into text for `decontaminate` and
    `near_duplicates`; it is needed only with them.
    """
    started = time.perf_counter()
    _validate(sources)
    catalog = _catalog(sources)
    n_conv = len(catalog.conv_hash)
    everything = np.arange(n_conv, dtype=np.int64)
    _, first_seen, inverse = np.unique(catalog.conv_hash, return_index=True, return_inverse=True)
    keeper = first_seen[inverse.reshape(-1)].astype(np.int64)  # the kept copy of each conversation (itself when kept)
    kept = keeper == everything
    contaminated, near, overlap_reports, filter_seconds = _overlap_filters(catalog, kept, settings, tokenizer, sources)
    unique = kept  # exact duplicates dropped; the filters below drop more
    kept = kept & ~contaminated & ~near
    known = catalog.conv_has_input & catalog.conv_has_input[keeper]
    same_input = catalog.conv_input == catalog.conv_input[keeper]
    validation = _unit(_splitmix64(catalog.conv_hash ^ np.uint64(_VALIDATION_SALT))) < settings.validation_share
    seed_key = np.uint64(int.from_bytes(hashlib.blake2b(str(settings.seed).encode(), digest_size=8).digest(), "little"))
    priority = _splitmix64(catalog.conv_hash ^ seed_key)  # the seeded order in which a source's conversations are taken
    conv_tokens = np.add.reduceat(catalog.seq_length, catalog.conv_first) if n_conv else np.zeros(0, np.int64)
    cost = catalog.conv_trained if settings.budget_by == "trained" else conv_tokens
    train = kept & ~validation
    mine = [np.flatnonzero(train & (catalog.conv_source == index)) for index in range(len(sources))]
    available = [int(cost[convs].sum()) for convs in mine]
    budgets = _budgets(sources, available)
    train_copies = np.zeros(n_conv, dtype=np.int64)
    for index, convs in enumerate(mine):
        if budgets[index] is None:
            continue
        order = convs[np.lexsort((convs, priority[convs]))]
        costs, budget = cost[order], budgets[index][1]
        if sources[index].asked == "weight" and available[index] == 0:  # nothing to count (no trained token):
            costs, budget = np.ones(len(order), dtype=np.int64), sources[index].weight * len(order)  # by conversations
        whole, part = _take(costs, budget)
        train_copies[convs] = whole
        train_copies[order[:part]] += 1
    held_out = kept & validation  # absent sources are not in the catalog: nothing of theirs, not even validation

    got = {index: int((cost * train_copies)[convs].sum()) for index, convs in enumerate(mine)}
    got_total = sum(got.values())
    per_source = {}
    for index, source in enumerate(sources):
        convs = catalog.conv_source == index
        dropped = convs & ~unique
        asked_tokens = budgets[index][0] if budgets[index] is not None else 0.0
        tolerance = int(cost[mine[index]].max()) if len(mine[index]) else 0
        short_by = max(0, math.ceil(asked_tokens - got[index] - 1e-6))
        per_source[source.name] = {
            "absent": source.absent,
            "asked": source.asked,
            "weight": (source.weight if source.asked == "weight"
                       else round(got[index] / available[index], 6) if available[index] else 0.0),
            **({"ratio": source.ratio} if source.ratio is not None else {}),
            **({"tokens_asked": source.tokens} if source.tokens is not None else {}),
            **({"max_repeats": _max_repeats(source)} if source.asked != "weight" else {}),
            **({"share_asked": round(source.ratio / sum(s.ratio for s in sources), 6)} if source.ratio is not None else {}),
            "budget_tokens_asked": round(asked_tokens),
            "budget_tokens_got": got[index],
            "budget_short_by": short_by,
            "budget_met": short_by <= tolerance,
            "share_got": round(got[index] / got_total, 6) if got_total else 0.0,
            "files": len(source.spills),
            "conversations": int(convs.sum()),
            "tokens": int(conv_tokens[convs].sum()),
            "trained_tokens": int(catalog.conv_trained[convs].sum()),
            "duplicates_dropped": int(dropped.sum()),
            "duplicates_identical_input": int((dropped & known & same_input).sum()),
            "duplicates_identical_after_truncation": int((dropped & known & ~same_input).sum()),
            "duplicates_unknown_cause": int((dropped & ~known).sum()),
            **({"contaminated": int((convs & contaminated).sum())} if settings.decontaminate else {}),
            **({"near_duplicates_dropped": int((convs & near).sum())} if settings.near_duplicates is not None else {}),
            "validation_conversations": int((convs & held_out).sum()),
            "validation_tokens": int(conv_tokens[convs & held_out].sum()),
            "train_conversations_before_weighting": len(mine[index]),
            "train_tokens_before_weighting": int(conv_tokens[mine[index]].sum()),
            "train_trained_tokens_before_weighting": int(catalog.conv_trained[mine[index]].sum()),
            "train_conversations": int(train_copies[convs].sum()),
            "train_tokens": int((conv_tokens * train_copies)[convs].sum()),
            "train_trained_tokens": int((catalog.conv_trained * train_copies)[convs].sum()),
            "fingerprints": list(source.fingerprints),
            **({"supervision": source.supervision} if source.supervision is not None else {}),
        }

    if not train_copies.any():
        raise CollateError(
            "the mix has no training conversation: "
            + ", ".join(f"{name}: absent ({figures['asked']} 0)" if figures["absent"] else
                        f"{name}: {figures['conversations']} conversations, {figures['duplicates_dropped']} duplicates, "
                        f"{figures['asked']} {_asked_value(source):g}"
                        for source, (name, figures) in zip(sources, per_source.items()))
        )
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        rng = np.random.default_rng(settings.seed)
        splits, files = {}, []
        train_convs = np.repeat(np.arange(n_conv, dtype=np.int64), train_copies)
        train_seqs = _expand(catalog.conv_first[train_convs], catalog.conv_count[train_convs])
        splits["train"], written = _write_split(catalog, train_seqs, "train", staging, settings, rng)
        files += written
        if settings.validation_share > 0:
            val_convs = np.flatnonzero(held_out)
            val_seqs = _expand(catalog.conv_first[val_convs], catalog.conv_count[val_convs])
            splits["validation"], written = _write_split(catalog, val_seqs, "validation", staging, settings, rng)
            files += written
        stats = MixStats(sources=per_source, splits=splits, settings=settings.to_dict(), files=files, **overlap_reports)
        given = [s.supervision for s in sources if s.supervision is not None]
        if given:
            from ..tokens.audit import SupervisionAudit

            stats.supervision = SupervisionAudit.merged(given).to_dict()
        _publish(folder, staging, files)
        stats.seconds = round(time.perf_counter() - started, 3)
        stats.stage_seconds = filter_seconds
        manifest = stats.to_dict()
        manifest.pop("seconds")  # the manifest is the same bytes for the same inputs and settings
        manifest.pop("stage_seconds")
        with atomic_path(folder / MANIFEST_NAME) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stats


TEXT_BATCH = 512  # conversations decoded at a time for the overlap filters


def _texts(catalog: _Catalog, convs: np.ndarray, tokenizer) -> Iterator[str]:
    """The text of each conversation `convs` (in that order), decoded from its tokens a batch at a time
    (special tokens left out; a conversation of several sequences is their texts one after the other)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or tokenizer
    for at in range(0, len(convs), TEXT_BATCH):
        batch = convs[at:at + TEXT_BATCH]
        counts = catalog.conv_count[batch]
        seqs = _expand(catalog.conv_first[batch], counts)
        ids, _, _ = _gather(catalog, seqs)
        sizes = np.add.reduceat(catalog.seq_length[seqs], np.cumsum(counts) - counts)  # tokens of each conversation
        pieces = np.split(ids, np.cumsum(sizes)[:-1])
        yield from backend.decode_batch([p.tolist() for p in pieces], skip_special_tokens=True)


def _overlap_filters(catalog: _Catalog, kept: np.ndarray, settings: MixSettings, tokenizer,
                     sources: Sequence[MixSource]) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """(contaminated, near-duplicate, reports, seconds): the conversations `decontaminate` and
    `near_duplicates` drop among those `kept` (after exact deduplication), in catalog order (sources,
    files, lines: the first of a near-duplicate cluster is kept), what they found and how long it took."""
    n = len(kept)
    contaminated, near, reports, seconds = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), {}, {}
    if not settings.decontaminate and settings.near_duplicates is None:
        return contaminated, near, reports, seconds
    if tokenizer is None:
        raise CollateError("decontaminate and near_duplicates read the conversations' text: give build_mix the "
                           "sources' tokenizer")
    from . import overlap

    def where(conv: int) -> dict:
        return {"source": sources[int(catalog.conv_source[conv])].name,
                "spill": catalog.spill_paths[int(catalog.seq_spill[catalog.conv_first[conv]])],
                "line": int(catalog.conv_line[conv])}

    if settings.decontaminate:
        started = time.perf_counter()
        index = overlap.EvalIndex.from_paths(settings.decontaminate, n=settings.decontaminate_n)
        candidates = np.flatnonzero(kept)
        found = index.scan(_texts(catalog, candidates, tokenizer), min_matches=settings.decontaminate_min_matches)
        contaminated[candidates[found.flags]] = True
        report = found.to_dict()
        report["conversations_checked"] = report.pop("texts")
        report["eval_grams"] = int(len(index.grams))
        report["examples"] = [{**where(int(candidates[e["index"]])), "grams": e["grams"], "per_file": e["per_file"]}
                              for e in report["examples"]]
        report["per_source"] = {s.name: int((contaminated & (catalog.conv_source == i)).sum()) for i, s in enumerate(sources)}
        reports["decontamination"] = report
        seconds["decontamination"] = round(time.perf_counter() - started, 3)
    if settings.near_duplicates is not None:
        started = time.perf_counter()
        candidates = np.flatnonzero(kept & ~contaminated)
        found = overlap.near_duplicates(_texts(catalog, candidates, tokenizer), threshold=settings.near_duplicates)
        near[candidates[found.duplicates]] = True
        report = found.to_dict()
        report["conversations_checked"] = report.pop("texts")
        report["largest_clusters"] = [[where(int(candidates[i])) for i in cluster] for cluster in report["largest_clusters"]]
        report["per_source"] = {s.name: int((near & (catalog.conv_source == i)).sum()) for i, s in enumerate(sources)}
        reports["near_duplicates"] = report
        seconds["near_duplicates"] = round(time.perf_counter() - started, 3)
    return contaminated, near, reports, seconds


def _validate(sources: Sequence[MixSource]) -> None:
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise CollateError(f"a mix lists a source twice: {names}")
    for source in sources:
        where = f"source {source.name!r}"
        if not (source.weight >= 0 and math.isfinite(source.weight)):
            raise CollateError(f"{where}: weight must be a finite number >= 0, got {source.weight!r}")
        if source.ratio is not None and not (source.ratio >= 0 and math.isfinite(source.ratio)):
            raise CollateError(f"{where}: ratio must be a finite number >= 0, got {source.ratio!r}")
        if source.tokens is not None and (isinstance(source.tokens, bool) or not isinstance(source.tokens, int)
                                          or source.tokens < 0):
            raise CollateError(f"{where}: tokens must be a whole number >= 0, got {source.tokens!r}")
        if (source.ratio is not None and source.tokens is not None) or (
                source.asked != "weight" and source.weight != 1):
            raise CollateError(f"{where}: give one of weight, ratio or tokens (ratio {source.ratio!r}, "
                               f"tokens {source.tokens!r}, weight {source.weight!r})")
        if source.max_repeats is not None:
            if source.asked == "weight":
                raise CollateError(f"{where}: max_repeats caps a ratio or a tokens budget; with a weight, "
                                   "the weight is the number of copies")
            if not (source.max_repeats >= 1 and math.isfinite(source.max_repeats)):
                raise CollateError(f"{where}: max_repeats must be a finite number >= 1, got {source.max_repeats!r}")
    ratios = [s.ratio for s in sources]
    if any(r is not None for r in ratios) and (any(r is None for r in ratios) or not sum(ratios) > 0):
        raise CollateError("give every source a ratio (not all 0), or none: ratios are shares of the training "
                           "tokens, not to be mixed with weights or tokens budgets")


def _max_repeats(source: MixSource) -> float:
    return 1.0 if source.max_repeats is None else float(source.max_repeats)


def _asked_value(source: MixSource) -> float:
    return {"ratio": source.ratio, "tokens": source.tokens, "weight": source.weight}[source.asked]


def _budgets(sources: Sequence[MixSource], available: list[int]) -> list[tuple[float, float] | None]:
    """Each source's (budget asked, budget taken) in budget tokens; None for an absent source.

    Taken is asked capped at max_repeats x available (tokens); for ratios, the largest mix in the
    shares that no cap is exceeded in. `available`: the source's training tokens after deduplication.
    """
    out: list[tuple[float, float] | None] = [None] * len(sources)
    if sources and sources[0].asked == "ratio":
        total = sum(s.ratio for s in sources)
        wanted = [i for i, s in enumerate(sources) if not s.absent]
        empty = [sources[i].name for i in wanted if available[i] == 0]
        if empty:
            raise CollateError(f"sources with a ratio but no training conversation: {', '.join(empty)}")
        caps = {i: _max_repeats(sources[i]) * available[i] for i in wanted}
        mix_tokens = min(caps[i] / (sources[i].ratio / total) for i in wanted)
        for i in wanted:
            budget = min(sources[i].ratio / total * mix_tokens, caps[i])
            out[i] = (budget, budget)
        return out
    for i, source in enumerate(sources):
        if source.absent:
            continue
        if source.asked == "tokens":
            out[i] = (float(source.tokens), min(float(source.tokens), _max_repeats(source) * available[i]))
        else:
            out[i] = (source.weight * available[i], source.weight * available[i])
    return out


def _take(costs: np.ndarray, budget: float) -> tuple[int, int]:
    """(whole copies, then the first `part` conversations once more) meeting `budget` within one conversation.

    `costs`: the conversations' tokens in the seeded order. The part is the prefix whose total is
    nearest the remainder (the shorter one on a tie).
    """
    total = int(costs.sum())
    if total == 0 or budget <= 0:
        return 0, 0
    whole = int(budget // total)
    rest = budget - whole * total
    cumulative = np.cumsum(costs)
    reach = int(np.searchsorted(cumulative, rest, side="left"))  # the shortest prefix reaching rest: reach + 1
    if reach >= len(costs):
        return whole + 1, 0
    below = int(cumulative[reach - 1]) if reach else 0
    part = reach if rest - below <= int(cumulative[reach]) - rest else reach + 1
    if part == len(costs):
        return whole + 1, 0
    return whole, part


def _publish(folder: Path, staging: Path, files: list[str]) -> None:
    """Replace the previous mix's files (those its manifest lists) by the staged ones."""
    manifest = folder / MANIFEST_NAME
    old: list[str] = []
    try:
        old = [name for name in json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
               if isinstance(name, str) and "/" not in name and name.endswith(".arrow")]
    except (OSError, ValueError, AttributeError):
        pass
    for name in files:
        if name not in old and (folder / name).exists():
            raise CollateError(f"{folder / name} exists and is not from the previous mix written there: not replaced")
    manifest.unlink(missing_ok=True)  # no manifest while the set is being replaced
    for name in old:
        if name not in files:
            (folder / name).unlink(missing_ok=True)
    for name in files:
        os.replace(staging / name, folder / name)


def read_manifest(output_dir: str | Path) -> dict:
    return json.loads((Path(output_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
