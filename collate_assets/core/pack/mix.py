"""A training set from several tokenized sources: weighted, deduplicated, split, packed together, shuffled.

    build_mix(sources, output_dir, MixSettings(...)) -> MixStats

A source is a named list of spills (the tokenized files of one dataset) with a weight. The mix

1. reads every spill once, hashing each conversation (the tokens and labels of all its sequences:
   two records that render to the same training data are the same conversation);
2. drops exact duplicates across all sources: the first occurrence is kept, in the order the sources
   are listed, then their files, then their lines;
3. holds out a validation split by conversation: a conversation is in it when a hash of its content
   falls under `validation_share`, so the split does not depend on the seed, the weights or which
   other files exist, and a conversation never moves between splits when files are added;
4. weights the training conversations of each source: weight 2.5 keeps every conversation twice and
   a third time with probability 0.5; 0.3 keeps each with probability 0.3. The draws are hashes of
   the conversation and the seed, so they are the same on every run. The validation split is not
   weighted: each held-out conversation once. Instead of weights, sources may give `ratio`s: their
   shares of the training tokens. The weights are then the largest that give those shares without
   repeating a conversation (the source that runs out first is taken whole, the others down-sampled);
5. packs each split with best-fit decreasing across all sources (sequences of different sources
   share rows), shuffles the rows with the seed, and writes them as Arrow shards of `shard_rows` rows:
   `train-00000-of-000NN.arrow`, `validation-00000-of-000NN.arrow`, with `training_set.json` (sources,
   weights, counts, fingerprints, files).

Memory: per sequence a few integers (its spill, place and length, about 40 bytes), never its tokens;
tokens are read from the memory-mapped spills a write group at a time (see spill.py).
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
from ..settings import IGNORE_INDEX
from ..read.shards import shard_suffix
from .spill import _batches, _gather_tokens, _Layout, _open_spill, _read_layout, rows_batch, write_groups
from ..fs import atomic_path
from ..write.writers import packed_writer

MANIFEST_NAME = "training_set.json"
SPLITS = ("train", "validation")
_MASK64 = (1 << 64) - 1
_VALIDATION_SALT = 0x9E3779B97F4A7C15  # the split depends on the content only, never on the seed


@dataclasses.dataclass(frozen=True)
class MixSource:
    """One source of a mix: its name, its weight and its tokenized files (spill paths, in order).

    `fingerprints` (optional) identify what the spills were made from (input sha256, settings,
    tokenizer); they are written to the manifest as they are given.
    """

    name: str
    weight: float
    spills: Sequence[str | Path]
    fingerprints: Sequence[dict] = ()
    ratio: float | None = None  # a share of the training tokens instead of a weight (all sources or none)
    # The supervision audit of the source's files as tokenized (audit.SupervisionAudit.to_dict(), merged over
    # its spills), written to the manifest per source and merged over sources: before deduplication and weighting.
    supervision: dict | None = None


@dataclasses.dataclass(frozen=True)
class MixSettings:
    max_length: int
    seed: int = 0
    validation_share: float = 0.0
    shard_rows: int = 1000
    packing: str = "bfd"

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_share < 1.0:
            raise ValueError(f"validation_share must be at least 0 and below 1, got {self.validation_share!r}")
        if self.shard_rows < 1:
            raise ValueError(f"shard_rows must be at least 1, got {self.shard_rows!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length!r}")


@dataclasses.dataclass
class MixStats:
    sources: dict[str, dict[str, Any]]
    splits: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    files: list[str]
    seconds: float = 0.0
    supervision: dict = dataclasses.field(default_factory=dict)  # the sources' audits merged ({}: none given)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    """Every sequence and conversation of the sources (a few integers each)."""

    layouts: list[_Layout]
    spill_paths: list[str]
    seq_spill: np.ndarray  # int32: the spill of each sequence
    seq_index: np.ndarray  # int64: its index in that spill
    seq_length: np.ndarray  # int64
    conv_first: np.ndarray  # int64: the first sequence of each conversation (sequences of one are consecutive)
    conv_count: np.ndarray  # int64: how many sequences it has
    conv_hash: np.ndarray  # uint64
    conv_source: np.ndarray  # int32


def _catalog(sources: Sequence[MixSource]) -> _Catalog:
    layouts, paths = [], []
    seq_spill, seq_index, seq_length = [], [], []
    conv_first, conv_count, conv_hash, conv_source = [], [], [], []
    sequences = 0
    for source_index, source in enumerate(sources):
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
            firsts, counts, hashes = _hash_conversations(spill)
            conv_first.append(firsts + sequences)
            conv_count.append(counts)
            conv_hash.append(hashes)
            conv_source.append(np.full(len(firsts), source_index, dtype=np.int32))
            sequences += n

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)

    return _Catalog(
        layouts, paths, cat(seq_spill, np.int32), cat(seq_index, np.int64), cat(seq_length, np.int64),
        cat(conv_first, np.int64), cat(conv_count, np.int64), cat(conv_hash, np.uint64), cat(conv_source, np.int32),
    )


def _hash_conversations(spill: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first sequence, sequences, content hash) of each conversation of a spill, reading it once.

    A conversation is the run of consecutive sequences from one input line (a record trained as
    several sequences: per-turn reasoning, or split chunks).
    """
    with _open_spill(spill) as reader:
        count = reader.num_record_batches
    firsts, counts, hashes = [], [], []
    previous_line = None
    digest = None
    seq = 0
    for _, batch in _batches(spill, range(count)):
        offsets = to_numpy(batch.column(0).offsets).tolist()
        ids = to_numpy(batch.column(0).values)
        labels = to_numpy(batch.column(1).values)
        lines = to_numpy(batch.column(2)).tolist()
        for i, line in enumerate(lines):
            if line != previous_line:
                if digest is not None:
                    hashes.append(int.from_bytes(digest.digest(), "little"))
                digest = hashlib.blake2b(digest_size=8)
                firsts.append(seq)
                counts.append(0)
                previous_line = line
            start, end = offsets[i], offsets[i + 1]
            digest.update((end - start).to_bytes(4, "little"))
            digest.update(ids[start:end].tobytes())
            digest.update(labels[start:end].tobytes())
            counts[-1] += 1
            seq += 1
        del batch, offsets, ids, labels, lines
    if digest is not None:
        hashes.append(int.from_bytes(digest.digest(), "little"))
    return (np.asarray(firsts, dtype=np.int64), np.asarray(counts, dtype=np.int64),
            np.asarray(hashes, dtype=np.uint64))


def _expand(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The sequences `first[i] .. first[i] + count[i] - 1` of every i, in order."""
    if not len(first):
        return np.zeros(0, dtype=np.int64)
    total = int(count.sum())
    starts = np.repeat(first, count)
    group_start = np.repeat(np.cumsum(count) - count, count)
    return starts + (np.arange(total, dtype=np.int64) - group_start)


def _gather(catalog: _Catalog, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tokens and labels of catalog sequences `seqs`, one after the other, from their spills."""
    lengths = catalog.seq_length[seqs]
    dest = np.zeros(len(seqs), dtype=np.int64)
    np.cumsum(lengths[:-1], out=dest[1:])
    ids = np.empty(int(lengths.sum()), dtype=np.int32)
    labels = np.empty_like(ids)
    spills = catalog.seq_spill[seqs]
    for spill in np.unique(spills).tolist():
        mine = np.flatnonzero(spills == spill)
        got_ids, got_labels = _gather_tokens(catalog.spill_paths[spill], catalog.layouts[spill], catalog.seq_index[seqs[mine]])
        where = _expand(dest[mine], lengths[mine])
        ids[where] = got_ids
        labels[where] = got_labels
    return ids, labels


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
    shard_count = max(1, math.ceil(rows / settings.shard_rows))
    files, tokens, trained, longest = [], 0, 0, 0
    for shard in range(shard_count):
        shard_rows = order[shard * settings.shard_rows:(shard + 1) * settings.shard_rows]
        file_name = f"{name}{shard_suffix(shard, shard_count)}.arrow"
        with packed_writer(folder / file_name, "arrow") as writer:
            for first, end in write_groups(lengths, items, offsets, shard_rows):
                group = shard_rows[first:end]
                picked = seqs[items[_expand(offsets[group], counts[group])]]
                ids, labels = _gather(catalog, picked)
                batch, row_tokens = rows_batch(ids, labels, catalog.seq_length[picked], counts[group])
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
    }, files


def build_mix(sources: Sequence[MixSource], output_dir: str | Path, settings: MixSettings) -> MixStats:
    """Write the training set of `sources` into `output_dir` (see the module docstring).

    The files of the previous mix there (those its manifest lists) are replaced; nothing else in the
    folder is touched. The new files are written beside them first, so a failure leaves the old set.
    """
    started = time.perf_counter()
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise CollateError(f"a mix lists a source twice: {names}")
    for source in sources:
        if not (source.weight >= 0 and math.isfinite(source.weight)):
            raise CollateError(f"source {source.name!r}: weight must be a finite number >= 0, got {source.weight!r}")
        if source.ratio is not None and not (source.ratio >= 0 and math.isfinite(source.ratio)):
            raise CollateError(f"source {source.name!r}: ratio must be a finite number >= 0, got {source.ratio!r}")
    ratios = [s.ratio for s in sources]
    if any(r is not None for r in ratios) and (any(r is None for r in ratios) or not sum(ratios) > 0):
        raise CollateError("give every source a ratio (not all 0), or none: ratios are shares of the training tokens")
    catalog = _catalog(sources)
    n_conv = len(catalog.conv_hash)
    _, first_seen = np.unique(catalog.conv_hash, return_index=True)
    kept = np.zeros(n_conv, dtype=bool)
    kept[first_seen] = True
    validation = _unit(_splitmix64(catalog.conv_hash ^ np.uint64(_VALIDATION_SALT))) < settings.validation_share
    seed_key = np.uint64(int.from_bytes(hashlib.blake2b(str(settings.seed).encode(), digest_size=8).digest(), "little"))
    draw = _unit(_splitmix64(catalog.conv_hash ^ seed_key))
    conv_tokens = np.add.reduceat(catalog.seq_length, catalog.conv_first) if n_conv else np.zeros(0, np.int64)
    source_weights = _weights(sources, catalog, conv_tokens, kept & ~validation)
    weights = np.asarray(source_weights, dtype=np.float64)[catalog.conv_source]
    copies = np.floor(weights).astype(np.int64) + (draw < weights - np.floor(weights))
    train_copies = np.where(kept & ~validation, copies, 0)
    held_out = kept & validation & (weights > 0)  # a source of weight 0 gives nothing, not even validation

    per_source = {}
    for index, source in enumerate(sources):
        mine = catalog.conv_source == index
        per_source[source.name] = {
            "weight": source_weights[index],
            **({"ratio": source.ratio} if source.ratio is not None else {}),
            "files": len(source.spills),
            "conversations": int(mine.sum()),
            "tokens": int(conv_tokens[mine].sum()),
            "duplicates_dropped": int((mine & ~kept).sum()),
            "validation_conversations": int((mine & held_out).sum()),
            "validation_tokens": int(conv_tokens[mine & held_out].sum()),
            "train_conversations_before_weighting": int((mine & kept & ~validation).sum()),
            "train_tokens_before_weighting": int(conv_tokens[mine & kept & ~validation].sum()),
            "train_conversations": int(train_copies[mine].sum()),
            "train_tokens": int((conv_tokens * train_copies)[mine].sum()),
            "fingerprints": list(source.fingerprints),
            **({"supervision": source.supervision} if source.supervision is not None else {}),
        }

    if not train_copies.any():
        raise CollateError(
            "the mix has no training conversation: "
            + ", ".join(f"{name}: {figures['conversations']} conversations, {figures['duplicates_dropped']} duplicates, "
                        f"weight {figures['weight']:g}" for name, figures in per_source.items())
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
        stats = MixStats(sources=per_source, splits=splits, settings=dataclasses.asdict(settings), files=files)
        given = [s.supervision for s in sources if s.supervision is not None]
        if given:
            from ..tokens.audit import SupervisionAudit

            stats.supervision = SupervisionAudit.merged(given).to_dict()
        _publish(folder, staging, files)
        stats.seconds = round(time.perf_counter() - started, 3)
        manifest = stats.to_dict()
        manifest.pop("seconds")  # the manifest is the same bytes for the same inputs and settings
        with atomic_path(folder / MANIFEST_NAME) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stats


def _weights(sources: Sequence[MixSource], catalog: _Catalog, conv_tokens: np.ndarray, train: np.ndarray) -> list[float]:
    """Each source's weight: its own, or from the ratios the largest that repeats no conversation."""
    if sources and sources[0].ratio is None:
        return [s.weight for s in sources]
    total = sum(s.ratio for s in sources)
    available = [int(conv_tokens[train & (catalog.conv_source == i)].sum()) for i in range(len(sources))]
    wanted = [(s.ratio / total, tokens) for s, tokens in zip(sources, available) if s.ratio > 0]
    if any(tokens == 0 for _, tokens in wanted):
        empty = [s.name for s, tokens in zip(sources, available) if s.ratio > 0 and tokens == 0]
        raise CollateError(f"sources with a ratio but no training conversation: {', '.join(empty)}")
    mix_tokens = min(tokens / share for share, tokens in wanted)
    return [round(s.ratio / total * mix_tokens / tokens, 6) if s.ratio > 0 else 0.0 for s, tokens in zip(sources, available)]


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
