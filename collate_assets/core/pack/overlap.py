"""Overlap between texts: evaluation-set contamination and near-duplicate conversations.

    index = EvalIndex.from_paths(["evals/"], n=13)        # the n-grams of every evaluation text
    index.matches(text) -> {eval file index: matching grams}
    report = index.scan(texts, min_matches=1)              # flags + per-file counts, texts streamed

    dups = near_duplicates(texts, threshold=0.8)           # MinHash-LSH, texts streamed, first kept
    dups.kept[i]       # the index of the text kept for i's cluster (i itself when i is kept)
    dups.clusters      # [[kept, duplicate, ...], ...] (clusters of 2 or more)

Both are dagster-free and hold no text: a text is turned into word hashes, then grams, as it arrives.

Words (both parts). A text is normalised with Unicode NFKC (full-width letters and digits, ligatures,
compatibility forms become their plain forms), then `str.casefold()`. Every run of characters that are
not alphanumeric (`str.isalnum()`: Unicode letters and digits; the underscore, punctuation, symbols,
whitespace and combining marks are not) is a word break; the words are what is left. Scripts written
without spaces (Han, Hiragana/Katakana, Thai, Lao, Khmer, Myanmar) make one word of every character, so
a Chinese question embedded in a longer Chinese text still shares its grams with it.

Hashing. Each word is hashed to 64 bits: a polynomial over its code points (+ 1) modulo 2^64 with an odd
base, finished with SplitMix64's mixer; an n-gram is a polynomial over its n word hashes (another odd
base), plus a constant times n, finished with SplitMix64. Everything is vectorised with numpy (one pass
over the UTF-32 code points of a batch of texts, then n shifted passes over the word hashes, which give
the k-grams of every k <= n on the way) and the same on every run and machine (no salted Python `hash`).
Collisions: the finished hashes behave as random 64-bit values, so a training gram that is in no
evaluation set equals one of G evaluation grams with probability G / 2^64: 10^7 evaluation grams against
10^10 training grams (about 60 GB of text) gives 0.005 false matches in expectation, and a flag needs
`min_matches` of them. Word hashes could collide first (V distinct words: V^2 / 2^65 expected
collisions, 3e-6 for 10 million words), as negligible. An exact 64-bit set is used rather than a Bloom
filter so that a match is a match, and per-file counts are exact.

Decontamination (`EvalIndex`). Evaluation files are JSONL, JSON (an array, an object or any value) or
Parquet; a folder stands for its files with those suffixes (sorted, hidden files skipped, not recursive).
Every string VALUE of a record, at any depth (prompts, answers, `messages` contents, ShareGPT `value`s,
typed parts' `text`; never the keys) is one evaluation text; grams never span two strings. A text of at
least `n` words (default 13, as in the GPT-3 and later contamination studies) gives its n-grams. A text
with fewer than n words gives one gram, its whole word sequence, when it has at least `min_words` words
(default 8): a training text contains it when it has those k words in a row (matching computes the
k-grams of training texts for every such k present in the index). Shorter strings (answers like "B" or
"72", ids, labels, the "text" of `{"type": "text"}`) would flag ordinary text and are skipped (counted in
`index.skipped`); `min_words=1` keeps them. A training text is checked by its distinct grams: `matches`
counts, for each evaluation file, how many distinct grams of the text are in that file; a text is
contaminated when at least `min_matches` distinct grams of it are in the index (any file).

The index is a sorted numpy uint64 array of the distinct grams (`index.grams`, 8 bytes each), for each
gram the files it came from (a CSR pair of arrays, 4 bytes per gram and file) and a bitmap of 16 bits
per gram: memory proportional to the evaluation sets (about 14 bytes per gram), never to the training
data. Matching a batch of texts (`batch_chars` characters, default 1M) looks each of its grams up in the
bitmap (one gather; at most 1 in 16 grams absent from the index passes it) and only those that pass are
binary-searched (`np.searchsorted`) in `index.grams`.

Near-duplicates (`near_duplicates`). Shingles are the `shingle`-word grams (default 5) of the same
normalisation (a text of fewer words gives its whole sequence as one shingle; a text without words is
never a duplicate). A MinHash signature of `num_perm` (default 128) values per text: permutation i of a
64-bit shingle hash x is the multiply-add-shift hash `(a_i * x + b_i) mod 2^64 >> 32` with fixed random
odd a_i (seed 0x5EED), the value its minimum over the shingles. LSH splits the signature into `bands`
bands of `rows` rows, chosen to minimise the false-positive plus false-negative area of the S-curve
`1 - (1 - J^rows)^bands` around `threshold`; texts sharing a band bucket are candidates, and a candidate
is confirmed when the signatures' estimated Jaccard (the share of equal values) is at least `threshold`.

Keep-first, not union-find: texts are taken in the caller's order (its priority); a text is a
near-duplicate of the first EARLIER KEPT text it is confirmed against, and is kept when there is none.
So every dropped text is within `threshold` (estimated) of the text kept for it, and clusters never
chain (A~B, B~C, A!~C keeps A and C and drops B only).

With 128 permutations, threshold 0.8 gives 9 bands of 13 rows, 0.7 gives 14 of 9. On the shared chat
sets (1,100 conversations) every confirmed pair had a true shingle Jaccard within 0.1 of its estimate,
and at 0.8 no text kept had an earlier kept text at true Jaccard >= 0.85 (at 0.7: 4 of about 175 pairs
at 0.75-0.77 were missed, the estimate's spread); treat `threshold` as approximate by about +-0.05.

Memory of near-duplicates: the texts are read once from any iterable (a generator is fine) and never
held. Per text the signature is kept as its low 16 bits (b-bit MinHash: two different minima agree on 16
bits with probability 2^-16, which the estimate corrects; 2 x num_perm bytes, 256 B at 128) and one
64-bit hash per band (8 x bands bytes, 72 B at 0.8), in the batches' arrays (never concatenated): about
330 B per text, plus about 80 B per text while the buckets are resolved at the end (the bucket of each
text in each band, 4 x bands bytes, and one band's hashes and sort order at a time).
Transient: about 40 bytes per character of one batch (`batch_chars`, default 1M characters) and
8 x num_perm bytes per shingle of a block of 16384 shingles (16 MB).

Speed (benchmarks/mix_overlap.py --size 100MB, one core): about 14 MB of text per second for either
check (75,724 conversations in 6.9 s each, texts made beforehand), of which NFKC and word hashing are a
third; peak RSS 125 MB for near-duplicates, 141 MB for decontamination (pyarrow, imported to read the
Parquet evaluation file, is 35 MB of it). `datasketch` 1.10 (MinHash + MinHashLSH, keep-first, the same
shingles and 128 permutations; it chose the same 9 x 13 bands) took 16.8 s CPU given 32-bit shingle
hashes and 20.1 s hashing the shingles with its SHA-1, for 20,000 conversations (22 M characters) where
this module takes 2.1 s, so it is not used (no dependency).
"""

from __future__ import annotations

import bisect
import dataclasses
import contextlib
import functools
import json
import zlib
import math
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import CollateError
from ..read.containers import open_units
from ..read.reader import INPUT_SUFFIXES
from ..settings import DEFAULT_MAX_LINE_BYTES

EVAL_SUFFIXES = INPUT_SUFFIXES  # the containers of input files: JSON Lines (plain, .gz, .zst), .json, Parquet

_MASK64 = (1 << 64) - 1
_WORD_BASE = 0x100000001B3  # odd (FNV-1's 64-bit prime), so its powers mod 2^64 never become 0
_GRAM_BASE = 0xD6E8FEB86659FD93  # odd
_LENGTH_SALT = 0x9E3779B97F4A7C15
_SPACELESS = (  # scripts without spaces between words: every character is a word
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3134F),  # CJK extensions B-G
)
_DEFAULT_BATCH_CHARS = 1 << 20
_SHINGLE_BLOCK = 16384
_HIGH_HALF = 1 if sys.byteorder == "little" else 0  # the uint32 holding the high half of a uint64


# ---------------------------------------------------------------------------------------------
# Words and grams


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in place on a uint64 array (returned)."""
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


@functools.cache
def _char_classes() -> np.ndarray:
    """0 = word break, 1 = alphanumeric, 2 = a word by itself (spaceless scripts), for every code point."""
    table = np.fromiter((c.isalnum() for c in map(chr, range(0x110000))), dtype=np.uint8, count=0x110000)
    for low, high in _SPACELESS:
        part = table[low:high + 1]
        part[part == 1] = 2
    return table


def _powers(base: int, count: int) -> np.ndarray:
    """base ** i mod 2^64 for i < count."""
    out = np.full(count, base, dtype=np.uint64)
    out[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(out, dtype=np.uint64)


_LOW_POWERS = _powers(_WORD_BASE, 1024)
_HIGH_BASE = pow(_WORD_BASE, 1024, 1 << 64)


def _word_powers(rank: np.ndarray, longest: int) -> np.ndarray:
    """_WORD_BASE ** rank mod 2^64, from a table of 1024 powers (and a second one for words of more
    than 1024 characters: B^r = B^(r mod 1024) * (B^1024)^(r div 1024))."""
    powers = _LOW_POWERS[rank & 1023]
    if longest > 1024:
        with np.errstate(over="ignore"):
            powers *= _powers(_HIGH_BASE, (longest >> 10) + 1)[rank >> 10]
    return powers


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit hashes of the words of `texts` (see the module docstring), all texts one after the other,
    and the int64 offsets (len(texts) + 1) of each text's words in them."""
    normalised = [_normalise(t) for t in texts]
    lengths = np.fromiter((len(t) for t in normalised), dtype=np.int64, count=len(normalised))
    char_starts = np.zeros(len(normalised) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=char_starts[1:])  # + 1: a "\n" between texts, a word break
    joined = "\n".join(normalised)
    del normalised
    cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    del joined
    cls = _char_classes()[cps]
    previous = np.empty_like(cls)
    previous[:1] = 0
    previous[1:] = cls[:-1]
    starts = (cls == 2) | ((cls == 1) & (previous != 1))
    del previous
    chars = np.flatnonzero(cls)  # positions of the characters of words
    del cls
    starts = starts[chars]
    first = np.flatnonzero(starts)  # each word's first character, as an index into `chars`
    if not len(first):
        return np.zeros(0, dtype=np.uint64), np.zeros(len(texts) + 1, dtype=np.int64)
    word_of = np.cumsum(starts, dtype=np.int64) - 1
    del starts
    rank = np.arange(len(chars), dtype=np.int64) - first[word_of]
    del word_of
    longest = int(rank.max()) + 1
    values = cps[chars].astype(np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        values *= _word_powers(rank, longest)
        del rank
        hashes = np.add.reduceat(values, first)
    hashes = _mix64(hashes)
    text_of_word = np.searchsorted(char_starts, chars[first], side="right") - 1
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.bincount(text_of_word, minlength=len(texts)), out=offsets[1:])
    return hashes, offsets


def _gram_hashes(words: np.ndarray, offsets: np.ndarray,
                 lengths: Iterable[int]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(k, hashes, text of each gram) of the k-grams inside single texts, for every k of `lengths`.

    The k-gram at word i is sum_j words[i + j] * BASE^j (mod 2^64), mixed with k and finished; all
    lengths come from one rolling pass (the k-gram extends the (k - 1)-gram by one word).
    """
    wanted = sorted(set(int(k) for k in lengths if k >= 1))
    if not wanted or not len(words):
        return
    text_of_word = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    acc = words.copy()
    factor = 1
    for k in range(1, wanted[-1] + 1):
        if k > len(words):
            return
        if k > 1:
            factor = (factor * _GRAM_BASE) & _MASK64
            with np.errstate(over="ignore"):
                acc = acc[:-1] + words[k - 1:] * np.uint64(factor)
        if k in wanted:
            valid = np.flatnonzero(text_of_word[:len(acc)] == text_of_word[k - 1:])
            with np.errstate(over="ignore"):
                grams = acc[valid] + np.uint64((k * _LENGTH_SALT) & _MASK64)
            yield k, _mix64(grams), text_of_word[valid]


def _text_grams(words: np.ndarray, offsets: np.ndarray, n: int, min_words: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(gram hashes, text of each) of texts as sets of grams: the n-grams of texts of at least n words,
    the whole sequence of texts of min_words..n-1 words, nothing for shorter ones."""
    counts = np.diff(offsets)
    short = sorted(set(counts[(counts >= min_words) & (counts < n)].tolist()))
    grams, texts = [], []
    for k, hashes, text in _gram_hashes(words, offsets, [n, *short]):
        if k == n:
            grams.append(hashes)
            texts.append(text)
        else:  # the one k-gram of each text of exactly k words
            whole = counts[text] == k
            grams.append(hashes[whole])
            texts.append(text[whole])
    if not grams:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    return np.concatenate(grams), np.concatenate(texts)


def _batches(texts: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    """Consecutive lists of texts of about `batch_chars` characters (at least one text each)."""
    batch, size = [], 0
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")
        batch.append(text)
        size += len(text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def strings_of(value: Any) -> list[str]:
    """Every string value in `value` (dicts' values, lists' items, at any depth), in document order; no keys."""
    out, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
    return out


def record_text(record: Any) -> str:
    """One text for a whole record (a conversation): its string values joined by newlines."""
    return "\n".join(strings_of(record))


# ---------------------------------------------------------------------------------------------
# Evaluation files


def eval_files(paths: Iterable[str | Path]) -> list[Path]:
    """The evaluation files of `paths`: files as given, folders as their files with EVAL_SUFFIXES (sorted,
    hidden files skipped). Errors name the path."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and not p.name.startswith(".") and p.name.endswith(EVAL_SUFFIXES))
            if not found:
                raise CollateError(f"{path}: no evaluation files ({', '.join(EVAL_SUFFIXES)}) in this folder")
            files.extend(found)
        elif path.is_file():
            if not path.name.endswith(EVAL_SUFFIXES):
                raise CollateError(f"{path}: not an evaluation file (expected {', '.join(EVAL_SUFFIXES)})")
            files.append(path)
        else:
            raise CollateError(f"{path}: no such evaluation file or folder")
    return files


def _read_records(path: Path) -> Iterator[Any]:
    """The records of an evaluation file; CollateError with the file and line for what cannot be read."""
    name = path.name
    if name.endswith(".parquet"):  # any columns (an input file's reader wants a conversation column)
        yield from _read_parquet(path)
        return
    if not name.endswith(".json"):  # JSON Lines, read line by line as input files are
        yield from _read_lines(path)
        return
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CollateError(f"{path}: cannot read this evaluation file ({error})") from error
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise CollateError(f"{path}:{line}: not UTF-8 text ({error.reason})") from error
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CollateError(f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})") from error
    yield from (value if isinstance(value, list) else [value])


def _read_lines(path: Path) -> Iterator[Any]:
    """The records of a JSON Lines evaluation file (plain, .gz or .zst), through the input files' reader."""
    number = 0
    try:
        _, units = open_units(path, DEFAULT_MAX_LINE_BYTES)
        with contextlib.closing(units):
            for number, payload, _, _ in units:
                if payload is None:  # a blank line
                    continue
                if not isinstance(payload, bytes):  # the reader's own reject (a line over the limit)
                    raise CollateError(f"{path}:{number}: {payload.reason}")
                try:
                    yield orjson.loads(payload)
                except orjson.JSONDecodeError as error:
                    raise CollateError(f"{path}:{number}:{error.colno}: not valid JSON ({error.msg})") from error
    except (OSError, EOFError, zlib.error) as error:
        raise CollateError(f"{path}: cannot read this evaluation file after line {number} ({error})") from error


def _read_parquet(path: Path) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=4096):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as error:
        raise CollateError(f"{path}: not a readable Parquet file ({error})") from error


# ---------------------------------------------------------------------------------------------
# Decontamination


@dataclasses.dataclass(frozen=True)
class TextMatches:
    """The grams of one text found in the index: `total` distinct grams, and per evaluation file index."""

    total: int
    per_file: dict[int, int]


_NO_MATCH = TextMatches(0, {})  # a placeholder, never returned (each text gets its own dict)


@dataclasses.dataclass
class DecontaminationReport:
    """What `EvalIndex.scan` found: `flags[i]` is True for contaminated text i."""

    files: list[str]
    n: int
    min_words: int
    min_matches: int
    texts: int
    contaminated: int
    per_file: dict[str, int]  # contaminated texts with at least one gram of that file
    examples: list[dict]  # the first contaminated texts: {"index", "grams", "per_file": {file: grams}}
    flags: np.ndarray = dataclasses.field(repr=False)

    def to_dict(self) -> dict:
        """The report without `flags` (JSON-ready)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "flags"}


class EvalIndex:
    """The grams of evaluation sets, to find training texts that contain them (see the module docstring).

    `files`: the evaluation files, in order (indices in `matches`); `grams`: the distinct gram hashes,
    sorted (uint64); `texts`, `skipped`, `file_grams`: per file, the evaluation texts indexed, those too
    short to index, and the distinct grams.
    """

    def __init__(self, files: Sequence[str], n: int, min_words: int, grams: np.ndarray, gram_files: np.ndarray,
                 texts: Sequence[int], skipped: Sequence[int], short_lengths: Iterable[int] = ()):
        """`grams` and `gram_files`: one pair per (gram, file), any order, repeats allowed; `short_lengths`:
        the word counts (below n) of the short texts indexed whole."""
        self.files = [str(f) for f in files]
        self.n = n
        self.min_words = min_words
        key = np.lexsort((gram_files, grams))
        grams, gram_files = grams[key], gram_files[key]
        fresh = np.ones(len(grams), dtype=bool)
        fresh[1:] = (grams[1:] != grams[:-1]) | (gram_files[1:] != gram_files[:-1])
        grams, gram_files = grams[fresh], gram_files[fresh]
        first = np.ones(len(grams), dtype=bool)
        first[1:] = grams[1:] != grams[:-1]
        self.grams = grams[first]
        self._offsets = np.append(np.flatnonzero(first), len(grams)).astype(np.int64)
        self._gram_files = gram_files.astype(np.int32)
        self.texts = list(texts)
        self.skipped = list(skipped)
        self.file_grams = np.bincount(self._gram_files, minlength=len(self.files)).tolist()
        # A bitmap of 16 bits per gram (at least 2^16), set at each gram's top bits: most training grams miss
        # it (false hits 1/16 at most) and skip the binary search, a cache miss per step in a large index.
        self._filter_shift = np.uint64(64 - max(16, (16 * len(self.grams) - 1).bit_length()))
        self._filter = np.zeros(1 << (64 - int(self._filter_shift) - 3), dtype=np.uint8)
        slots = self.grams >> self._filter_shift
        np.bitwise_or.at(self._filter, slots >> np.uint64(3), np.left_shift(1, slots & np.uint64(7)).astype(np.uint8))
        # Lengths below n of the short texts' grams, which matching must also compute (see the docstring).
        self.short_lengths = sorted(set(int(k) for k in short_lengths))

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path], n: int = 13, min_words: int = 8) -> EvalIndex:
        """The index of the evaluation files of `paths` (files or folders; see the module docstring)."""
        files = eval_files(paths)
        return cls.from_texts({str(path): (s for record in _read_records(path) for s in strings_of(record))
                               for path in files}, n=n, min_words=min_words)

    @classmethod
    def from_texts(cls, texts_by_file: dict[str, Iterable[str]], n: int = 13, min_words: int = 8) -> EvalIndex:
        """The index of evaluation texts given directly: {file name: its texts}."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n!r}")
        if not 1 <= min_words <= n:
            raise ValueError(f"min_words must be between 1 and n ({n}), got {min_words!r}")
        all_grams, all_files, texts, skipped, short = [], [], [], [], set()
        for file_index, file_texts in enumerate(texts_by_file.values()):
            indexed = too_short = 0
            for batch in _batches(file_texts, _DEFAULT_BATCH_CHARS):
                words, offsets = word_hashes(batch)
                counts = np.diff(offsets)
                too_short += int(np.count_nonzero(counts < min_words))
                indexed += int(np.count_nonzero(counts >= min_words))
                short.update(counts[(counts >= min_words) & (counts < n)].tolist())
                grams, _ = _text_grams(words, offsets, n, min_words)
                all_grams.append(grams)
                all_files.append(np.full(len(grams), file_index, dtype=np.int32))
            texts.append(indexed)
            skipped.append(too_short)
        grams = np.concatenate(all_grams) if all_grams else np.zeros(0, dtype=np.uint64)
        gram_files = np.concatenate(all_files) if all_files else np.zeros(0, dtype=np.int32)
        return cls(list(texts_by_file), n, min_words, grams, gram_files, texts, skipped, short)

    def __repr__(self) -> str:
        return f"EvalIndex({len(self.files)} files, {len(self.grams)} grams, n={self.n}, min_words={self.min_words})"

    def matches(self, text: str) -> dict[int, int]:
        """{evaluation file index: distinct grams of `text` in that file}; {} when none."""
        return next(self.match_many([text])).per_file

    def match_many(self, texts: Iterable[str], batch_chars: int = _DEFAULT_BATCH_CHARS) -> Iterator[TextMatches]:
        """A TextMatches for every text of `texts` (any iterable, read once), in order, a batch at a time."""
        for batch in _batches(texts, batch_chars):
            yield from self._match_batch(batch)

    def _match_batch(self, batch: list[str]) -> list[TextMatches]:
        if not len(self.grams):
            return [TextMatches(0, {}) for _ in batch]
        words, offsets = word_hashes(batch)
        found_grams, found_texts = [], []
        for _, grams, text in _gram_hashes(words, offsets, [self.n, *self.short_lengths]):
            slots = grams >> self._filter_shift
            maybe = np.flatnonzero((self._filter[slots >> np.uint64(3)] >> (slots & np.uint64(7)).astype(np.uint8)) & 1)
            grams, text = grams[maybe], text[maybe]
            where = np.searchsorted(self.grams, grams)
            where[where == len(self.grams)] = 0
            hit = np.flatnonzero(self.grams[where] == grams)
            found_grams.append(where[hit])
            found_texts.append(text[hit])
        out = [_NO_MATCH] * len(batch)
        gram_index = np.concatenate(found_grams) if found_grams else np.zeros(0, dtype=np.int64)
        text_index = np.concatenate(found_texts) if found_grams else np.zeros(0, dtype=np.int64)
        if not len(gram_index):
            return [TextMatches(0, {}) for _ in batch]
        pairs = np.unique(text_index * len(self.grams) + gram_index)  # distinct grams of each text
        text_index, gram_index = pairs // len(self.grams), pairs % len(self.grams)
        totals = np.bincount(text_index, minlength=len(batch))
        starts, ends = self._offsets[gram_index], self._offsets[gram_index + 1]
        per_gram = ends - starts
        expanded = np.repeat(starts - np.cumsum(per_gram) + per_gram, per_gram) + np.arange(int(per_gram.sum()))
        files = self._gram_files[expanded].astype(np.int64)
        texts = np.repeat(text_index, per_gram)
        keys, counts = np.unique(texts * len(self.files) + files, return_counts=True)
        per_text: dict[int, dict[int, int]] = {}
        for key, count in zip(keys.tolist(), counts.tolist()):
            per_text.setdefault(key // len(self.files), {})[key % len(self.files)] = count
        for text, per_file in per_text.items():
            out[text] = TextMatches(int(totals[text]), per_file)
        return [TextMatches(0, {}) if found is _NO_MATCH else found for found in out]

    def scan(self, texts: Iterable[str], min_matches: int = 1, examples: int = 20,
             batch_chars: int = _DEFAULT_BATCH_CHARS) -> DecontaminationReport:
        """Check every text (any iterable, read once): contaminated when at least `min_matches` of its
        distinct grams are in the index."""
        if min_matches < 1:
            raise ValueError(f"min_matches must be at least 1, got {min_matches!r}")
        flags = []
        per_file = [0] * len(self.files)
        shown: list[dict] = []
        for i, found in enumerate(self.match_many(texts, batch_chars)):
            bad = found.total >= min_matches
            flags.append(bad)
            if bad:
                for file_index in found.per_file:
                    per_file[file_index] += 1
                if len(shown) < examples:
                    shown.append({"index": i, "grams": found.total,
                                  "per_file": {self.files[f]: c for f, c in sorted(found.per_file.items())}})
        flag_array = np.asarray(flags, dtype=bool)
        return DecontaminationReport(
            files=list(self.files), n=self.n, min_words=self.min_words, min_matches=min_matches,
            texts=len(flag_array), contaminated=int(flag_array.sum()),
            per_file={self.files[i]: count for i, count in enumerate(per_file)}, examples=shown, flags=flag_array,
        )


# ---------------------------------------------------------------------------------------------
# Near-duplicates


@functools.cache
def lsh_parameters(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows), bands * rows <= num_perm, minimising the area of false positives (pairs below
    `threshold` made candidates) plus false negatives (pairs above it missed) of the LSH S-curve."""
    x = np.linspace(0.0, 1.0, 2001)
    below, above = x <= threshold, x >= threshold
    best, best_error = (1, num_perm), math.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            candidate = 1.0 - (1.0 - x ** rows) ** bands
            error = np.trapezoid(candidate[below], x[below]) + np.trapezoid(1.0 - candidate[above], x[above])
            if error < best_error - 1e-12:
                best, best_error = (bands, rows), error
    return best


@dataclasses.dataclass
class NearDuplicates:
    """The near-duplicates of a sequence of texts (see the module docstring).

    `kept[i]`: the index of the text kept for text i's cluster (i when text i is kept);
    `similarity[i]`: the estimated Jaccard of text i and `kept[i]` (1.0 for kept texts);
    `clusters`: lists of the indices of clusters of 2 or more texts, the kept one first, in order.
    """

    kept: np.ndarray
    similarity: np.ndarray
    clusters: list[list[int]]
    threshold: float
    num_perm: int
    bands: int
    rows: int
    shingle: int
    candidates: int  # pairs compared (estimated Jaccard computed)

    @property
    def duplicates(self) -> np.ndarray:
        """True for every text that is a near-duplicate of an earlier kept text."""
        return self.kept != np.arange(len(self.kept))

    def to_dict(self, max_clusters: int = 20) -> dict:
        return {
            "texts": len(self.kept), "duplicates": int(self.duplicates.sum()), "clusters": len(self.clusters),
            "threshold": self.threshold, "num_perm": self.num_perm, "bands": self.bands, "rows": self.rows,
            "shingle": self.shingle, "candidates": self.candidates,
            "largest_clusters": sorted(self.clusters, key=lambda c: (-len(c), c[0]))[:max_clusters],
        }


class _MinHasher:
    def __init__(self, num_perm: int, bands: int, rows: int, seed: int = 0x5EED):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
        self.num_perm, self.bands, self.rows = num_perm, bands, rows

    def signatures(self, shingles: np.ndarray, text_of: np.ndarray, count: int) -> np.ndarray:
        """uint32 (count, num_perm) minima over each text's shingles (0xFFFFFFFF for a text with none)."""
        out = np.full((count, self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        order = np.argsort(text_of, kind="stable")
        shingles, text_of = shingles[order], text_of[order]
        for start in range(0, len(shingles), _SHINGLE_BLOCK):
            block = shingles[start:start + _SHINGLE_BLOCK]
            texts = text_of[start:start + _SHINGLE_BLOCK]
            with np.errstate(over="ignore"):
                values = np.multiply.outer(self.a, block)  # (num_perm, shingles): reduced along rows, contiguous
                values += self.b[:, None]
            high = values.view(np.uint32)[:, _HIGH_HALF::2]  # (a * x + b) >> 32, without a copy
            firsts = np.flatnonzero(np.r_[True, texts[1:] != texts[:-1]])
            minima = np.minimum.reduceat(high, firsts, axis=1).T
            rows = texts[firsts]
            out[rows] = np.minimum(out[rows], minima)
        return out

    def band_hashes(self, signatures: np.ndarray) -> np.ndarray:
        """uint64 (count, bands): a hash of each band's rows."""
        out = np.empty((len(signatures), self.bands), dtype=np.uint64)
        for band in range(self.bands):
            acc = np.full(len(signatures), band + 1, dtype=np.uint64)
            with np.errstate(over="ignore"):
                for column in range(band * self.rows, (band + 1) * self.rows):
                    acc = acc * np.uint64(_GRAM_BASE) + signatures[:, column]
            out[:, band] = _mix64(acc)
        return out


def near_duplicates(texts: Iterable[str], threshold: float = 0.8, *, num_perm: int = 128, shingle: int = 5,
                    batch_chars: int = _DEFAULT_BATCH_CHARS) -> NearDuplicates:
    """The near-duplicate clusters of `texts` (any iterable, read once, in priority order); keep-first."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    if num_perm < 2 or shingle < 1:
        raise ValueError(f"num_perm must be at least 2 and shingle at least 1, got {num_perm!r}, {shingle!r}")
    bands, rows = lsh_parameters(threshold, num_perm)
    hasher = _MinHasher(num_perm, bands, rows)
    signatures, band_parts, empty_parts = _Rows(), [], []
    for batch in _batches(texts, batch_chars):
        words, offsets = word_hashes(batch)
        shingles, text_of = _text_grams(words, offsets, shingle)
        batch_signatures = hasher.signatures(shingles, text_of, len(batch))
        band_parts.append(hasher.band_hashes(batch_signatures))
        signatures.append(batch_signatures.astype(np.uint16))  # b-bit MinHash: the low 16 bits
        empty_parts.append(np.diff(offsets) == 0)
    if not band_parts:
        return NearDuplicates(np.zeros(0, np.int64), np.zeros(0), [], threshold, num_perm, bands, rows, shingle, 0)
    empty = np.concatenate(empty_parts)
    kept, similarity, compared = _resolve(signatures, band_parts, empty, threshold)
    return NearDuplicates(kept, similarity, _clusters(kept), threshold, num_perm, bands, rows, shingle, compared)


class _Rows:
    """The rows of arrays appended batch by batch, read by global row number without ever concatenating
    them (which would hold every signature twice for a moment)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.starts = [0]

    def append(self, rows: np.ndarray) -> None:
        self.parts.append(rows)
        self.starts.append(self.starts[-1] + len(rows))

    def __getitem__(self, index: int) -> np.ndarray:
        part = bisect.bisect_right(self.starts, index) - 1
        return self.parts[part][index - self.starts[part]]

    def take(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self[i] for i in indices])


def _resolve(signatures: _Rows, band_parts: list[np.ndarray], empty: np.ndarray,
             threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep-first over the LSH buckets: (kept index of each text, its estimated Jaccard, pairs compared)."""
    count, bands = len(empty), band_parts[0].shape[1]
    # Each text's bucket in each band, as a global bucket number; -1 for buckets of one text (or empty texts).
    buckets = np.full((count, bands), -1, dtype=np.int32 if count * bands < 2**31 else np.int64)
    next_bucket = 0
    usable = np.flatnonzero(~empty)
    for band in range(bands):
        values = np.concatenate([part[:, band] for part in band_parts])[usable]
        order = np.argsort(values, kind="stable")
        ordered = values[order]
        new = np.r_[True, ordered[1:] != ordered[:-1]]
        group = np.cumsum(new) - 1
        size = np.bincount(group)
        shared = size[group] > 1
        buckets[usable[order[shared]], band] = next_bucket + group[shared]
        next_bucket += len(size)
    kept = np.arange(count, dtype=np.int64)
    similarity = np.ones(count, dtype=np.float64)
    chance = 2.0 ** -16  # two different minima agree on their low 16 bits with this probability
    members: dict[int, list[int]] = {}  # bucket -> its kept texts, in order
    compared = 0
    candidates_of = np.flatnonzero((buckets >= 0).any(axis=1))
    for start in range(0, len(candidates_of), 8192):
        block = candidates_of[start:start + 8192]
        for text, row in zip(block.tolist(), buckets[block].tolist()):
            row = [bucket for bucket in row if bucket >= 0]
            found: set[int] = set()
            for bucket in row:
                earlier = members.get(bucket)
                if earlier:
                    found.update(earlier)
            if found:
                others = sorted(found)
                compared += len(others)
                equal = (signatures.take(others) == signatures[text]).mean(axis=1)
                estimate = (equal - chance) / (1.0 - chance)
                good = np.flatnonzero(estimate >= threshold - 1e-9)
                if len(good):
                    kept[text] = others[good[0]]
                    similarity[text] = min(1.0, float(estimate[good[0]]))
                    continue
            for bucket in row:
                members.setdefault(bucket, []).append(text)
    return kept, similarity, compared


def _clusters(kept: np.ndarray) -> list[list[int]]:
    duplicates = np.flatnonzero(kept != np.arange(len(kept)))
    if not len(duplicates):
        return []
    order = duplicates[np.argsort(kept[duplicates], kind="stable")]
    heads = kept[order]
    cuts = np.flatnonzero(np.r_[True, heads[1:] != heads[:-1]])
    return [[int(heads[cut]), *group.tolist()] for cut, group in zip(cuts, np.split(order, cuts[1:]))]
