"""Encoding rendered texts: the reference pipeline, or a faster encoder checked against it.

The reference is the tokenizer's backend (`tokenizers`, the model's `tokenizer.json` or transformers'
pipeline, see tokenizer.use_pipeline). `fastokens` (optional, Apache-2.0) encodes the same
`tokenizer.json` several times faster; it is used only when it loads the reference pipeline's JSON,
gives the same ids (and, where labels need them, the same character offsets) on probe texts at load,
and keeps giving them on the texts it is checked on during the run:

- every text of a file's first FIRST_CHECKED texts, then one text in SAMPLE_EVERY of each chunk, is
  encoded with the reference too and compared;
- on any difference the chunk is encoded again with the reference, and this encoder (and every chunk
  handed out after it, see tokenize._results) stays with the reference for the rest of the run: the
  statistics say where and why (`encoder`).

fastokens gives no offsets: for a byte-level BPE (every vocabulary entry is bytes in the GPT-2 byte
alphabet) without a text-changing normaliser (NFC only for texts already in NFC), a token's bytes
are its text's bytes, so its character offsets follow from the byte lengths of the ids. Anything
else (Metaspace, stripping added tokens, offset trimming) keeps the reference for offsets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import unicodedata

import numpy as np

from ..errors import CollateError
from ..settings import ENCODER_CHOICES as ENCODERS

log = logging.getLogger(__name__)

SAMPLE_EVERY = 64  # one text in this many of each chunk is also encoded with the reference
FIRST_CHECKED = 128  # a file's first texts, all compared
# Texts beyond the tokenizer's own probes: runs of whitespace, newlines and digits, Unicode that
# normalisation changes, long runs (a pre-tokenizer's regex on long input), mixed scripts.
FAST_PROBES = (
    " " * 257, "\n" * 300, "\t \n \r\n" * 40, "0123456789" * 60, "a" * 5000, "ab " * 2000, "😀" * 300,
    "e\u0301 \u212b \ufb01 \uff26 \u2460 A\u030a \u1e9b\u0323 \u00bd", "Ελληνικά Русский עברית العربية हिन्दी ไทย",
    "def f(x):\n    return x ** 2  # comment\n\n\n", '{"a": [1, 2.5e-3, null], "b": "\\u00e9"}',
    "I'm you're they'll WE'VE it's", "https://example.com/a?b=1&c=%20", "\u200b\u200d\ufeff\u00a0x",
)


def _byte_alphabet() -> dict[str, int]:
    """The GPT-2 byte-level alphabet: the printable character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict(zip(printable, printable)), 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


_ALPHABET = frozenset(_byte_alphabet())


def _kinds(node, key: str) -> list[dict]:
    """A pipeline component and the members of a Sequence of them, as dicts."""
    if not node:
        return []
    members = node.get(key)
    return [m for member in members for m in _kinds(member, key)] if isinstance(members, list) else [node]


def _component(part) -> dict | None:
    """A pipeline component of a `tokenizers.Tokenizer` as its JSON (without serialising the vocabulary)."""
    return None if part is None else json.loads(part.__getstate__())


def byte_lengths(reference) -> tuple[np.ndarray | None, bool, str]:
    """For a byte-level BPE whose tokens' bytes are the text's bytes: each id's length in bytes, whether
    texts must be in NFC (an NFC normaliser), and "" - or None, False and why offsets cannot follow
    from the ids."""
    if type(reference.model).__name__ != "BPE":
        return None, False, "not a BPE model"
    normalizers = _kinds(_component(reference.normalizer), "normalizers")
    if any(n.get("type") != "NFC" for n in normalizers):
        return None, False, "its normaliser changes text"
    if not any(p.get("type") == "ByteLevel" for p in _kinds(_component(reference.pre_tokenizer), "pretokenizers")):
        return None, False, "not byte-level"
    if any(p.get("trim_offsets") for p in _kinds(_component(reference.post_processor), "processors")):
        return None, False, "its post-processor trims offsets"
    added = reference.get_added_tokens_decoder()
    if any(t.lstrip or t.rstrip for t in added.values()):
        return None, False, "an added token takes in whitespace around it"
    vocab = {t: i for t, i in reference.get_vocab(with_added_tokens=False).items() if i not in added}
    outside = set("".join(vocab)) - _ALPHABET
    if outside:
        return None, False, f"its vocabulary has characters outside the byte-level alphabet ({sorted(outside)[0]!r})"
    lengths = np.zeros(max([*vocab.values(), *added], default=0) + 1, dtype=np.int64)
    ids = np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))
    lengths[ids] = np.fromiter(map(len, vocab), dtype=np.int64, count=len(vocab))
    for i, token in added.items():
        lengths[i] = len(token.content.encode())
    return lengths, bool(normalizers), ""


@dataclasses.dataclass
class FastBackend:
    """A loaded fast encoder for one reference pipeline, or why there is none."""

    encoder: object | None
    reason: str  # why it is not used ("" when it is)
    byte_lengths: np.ndarray | None = None  # per id; None: offsets come from the reference
    needs_nfc: bool = False
    offsets_reason: str = ""


def load_fast(tokenizer) -> FastBackend:
    """The fast encoder for `tokenizer`'s reference pipeline, checked on probe texts (ids, and offsets
    where they follow from the ids). Loaded once per tokenizer object (from the file a preload started,
    when the reference is that file as it is), and shared by tokenizer objects with the same pipeline and
    added tokens (the chat template does not matter to it)."""
    cached = getattr(tokenizer, "collate_fast", None)
    if cached is not None:
        return cached
    preload = _preload_of(tokenizer)
    if preload is not None:
        backend = _load_fast(tokenizer, preload.wait)
    else:
        source = tokenizer.backend_tokenizer.to_str()
        key = hashlib.sha256(source.encode()).hexdigest()
        backend = _LOADED.pop(key, None)
        if backend is None:
            backend = _load_fast(tokenizer, lambda: _fastokens().Tokenizer.from_json_str(source))
        _LOADED[key] = backend  # the most recent last
        while len(_LOADED) > KEPT_LOADED:  # a loaded encoder holds tens of MB
            del _LOADED[next(iter(_LOADED))]
    tokenizer.collate_fast = backend
    return backend


_LOADED: dict[str, FastBackend] = {}
KEPT_LOADED = 3  # encoders of different pipelines kept loaded in a process (a test session, a code location)


def _fastokens():
    import fastokens

    return fastokens


class _Preload:
    """fastokens loading a tokenizer.json in a thread (its Rust code releases the GIL while it builds)."""

    def __init__(self, path: str):
        self.path, self.result, self.error = path, None, None
        self.thread = threading.Thread(target=self._run, name="collate-fast-encoder-load", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            fast = _fastokens().Tokenizer.from_file(self.path)
            fast.no_truncation()  # as the reference (tokenizer._file_backend)
            fast.no_padding()
            self.result = fast
        except Exception as exc:
            self.error = exc

    def wait(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result


_PRELOADS: dict[str, _Preload] = {}


def start_preload(path) -> None:
    """Start loading the fast encoder from `path` (a tokenizer.json) in a thread, if fastokens is here: it
    then loads while transformers does (about a second for Qwen3's vocabulary). load_fast uses it only
    for a tokenizer whose reference is that file unchanged, and checks it like any other."""
    if path is None or str(path) in _PRELOADS:
        return
    try:
        _fastokens()
    except ImportError:
        return
    _PRELOADS.clear()  # one at a time: a run preloads the tokenizer it is about to use
    _PRELOADS[str(path)] = _Preload(str(path))


PRELOAD_MIN_BYTES = 2 << 20  # inputs smaller than this (in all) do not preload the fast encoder


def worth_preloading(mode: str, paths) -> bool:
    """Whether a run over `paths` should start loading the fast encoder with the tokenizer: encoder=fast,
    or auto with at least PRELOAD_MIN_BYTES of input (a file under one chunk does not use it)."""
    if mode == "fast":
        return True
    if mode != "auto":
        return False
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_size
        except (OSError, TypeError, ValueError):
            continue
        if total >= PRELOAD_MIN_BYTES:
            return True
    return False


def _preload_of(tokenizer) -> _Preload | None:
    reference = getattr(tokenizer, "collate_file_reference", None)
    if reference is None or tokenizer.backend_tokenizer is not reference[1]:
        return None
    return _PRELOADS.get(reference[0])


def _load_fast(tokenizer, make) -> FastBackend:
    reference = tokenizer.backend_tokenizer
    try:
        _fastokens()
    except ImportError:
        return FastBackend(None, "fastokens is not installed")
    if reference.truncation or reference.padding:
        return FastBackend(None, "the reference pipeline truncates or pads")
    try:
        fast = make()
    except Exception as exc:  # a pipeline part fastokens does not have (Metaspace, Unigram, ...)
        return FastBackend(None, f"fastokens cannot load this tokenizer: {_one_line(exc)}")
    lengths, nfc, why = byte_lengths(reference)
    backend = FastBackend(fast, "", lengths, nfc, why)
    from .probes import pipeline_probes

    texts = [*pipeline_probes(tokenizer), *FAST_PROBES]
    texts += [f"{a}{b}" for a, b in zip(texts, texts[1:])]
    differs = _first_difference(backend, reference, texts, offsets=lengths is not None)
    if differs is not None:
        return FastBackend(None, f"fastokens differs from the reference on a probe text: {differs}")
    return backend


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class FastEncoding:
    """What the engine reads of an encoding: `ids`, and `offsets` (characters) computed when asked."""

    __slots__ = ("ids", "_text", "_backend", "_offsets")

    def __init__(self, ids: np.ndarray, text: str, backend: FastBackend):
        self.ids, self._text, self._backend, self._offsets = ids, text, backend, None

    @property
    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            self._offsets = char_offsets(self._text, self.ids, self._backend.byte_lengths)
        return self._offsets


def char_offsets(text: str, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(start, end) in characters of each token of `text`, from the byte length of each id. A token that
    holds only part of a character's bytes spans that whole character (as `tokenizers` reports it)."""
    ends = np.cumsum(lengths[ids])
    starts = ends - lengths[ids]
    if text.isascii():
        return np.stack([starts, ends], axis=1)
    raw = np.frombuffer(text.encode(), dtype=np.uint8)
    char_of_byte = np.cumsum((raw & 0xC0) != 0x80) - 1
    char_of_byte = np.append(char_of_byte, len(text))
    last = np.maximum(ends - 1, 0)
    return np.stack([char_of_byte[starts], np.where(ends > starts, char_of_byte[last] + 1, char_of_byte[starts])], axis=1)


def _flat(fast, texts: list[str]) -> list[np.ndarray]:
    ids, bounds = fast.encode_batch_flat(texts, add_special_tokens=False)
    ids = np.frombuffer(ids, dtype=np.uint32).astype(np.int32)
    bounds = np.frombuffer(bounds, dtype=np.uint64).astype(np.int64)
    return [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _first_difference(backend: FastBackend, reference, texts: list[str], offsets: bool) -> str | None:
    """None when the fast encoder gives the reference's ids (and offsets) on every text; else the first
    text that differs, and how."""
    encodings = (reference.encode_batch if offsets else reference.encode_batch_fast)(texts, add_special_tokens=False)
    for text, ids, theirs in zip(texts, _flat(backend.encoder, texts), encodings):
        if not np.array_equal(ids, theirs.ids):
            return f"{_excerpt(text, ids, theirs)}: ids differ"
        if offsets and not (backend.needs_nfc and not unicodedata.is_normalized("NFC", text)):
            mine = char_offsets(text, ids, backend.byte_lengths)
            if not np.array_equal(mine, np.asarray(theirs.offsets, dtype=np.int64).reshape(-1, 2)):
                return f"{_excerpt(text)}: character offsets differ"
    return None


def _excerpt(text: str, mine=None, theirs=None) -> str:
    """`text`, cut to about 60 characters around the first token where `mine` (ids) and `theirs` (an
    encoding with offsets) differ when they are given."""
    start = 0
    if mine is not None and theirs is not None and len(theirs.offsets):
        n = min(len(mine), len(theirs.ids))
        first = next((k for k in range(n) if mine[k] != theirs.ids[k]), n)
        start = max(0, theirs.offsets[min(first, len(theirs.offsets) - 1)][0] - 20)
    piece = text[start:start + 60]
    return ("..." if start else "") + repr(piece) + ("..." if start + 60 < len(text) else "")


@dataclasses.dataclass
class EncoderReport:
    """How a file's texts were encoded: the encoder asked for and the one used ("fast" only when every
    text was), why not the fast one, and the texts checked against the reference and how many differed
    (then the rest of the run went back to the reference)."""

    asked: str = "tokenizers"
    used: str = ""
    reason: str = ""  # why the fast encoder was not used, or stopped being used
    checked: int = 0
    differing: int = 0
    # how the chat template was rendered: "direct" (render.DirectRenderer, checked against
    # apply_chat_template) or "apply_chat_template" (with the reason), and the renders compared
    render: str = ""
    render_reason: str = ""
    render_checked: int = 0
    render_differing: int = 0

    def note(self, used: str, reason: str = "") -> None:
        """One encoding call's encoder: "tokenizers" wins over "fast" (with its reason)."""
        if not self.used or (self.used == "fast" and used != "fast"):
            self.used, self.reason = used, reason

    def add(self, other: "EncoderReport") -> None:
        self.checked += other.checked
        self.differing += other.differing
        if other.used:
            self.note(other.used, other.reason)
        self.render_checked += other.render_checked
        self.render_differing += other.render_differing
        if other.render and (not self.render or other.render != "direct"):
            self.render, self.render_reason = other.render, other.render_reason

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class TextEncoder:
    """Encodes a run's rendered texts: with the reference pipeline, or with the fast encoder checked as
    the module says. `encode(texts, offsets)` gives objects with `ids` (and `offsets` when asked)."""

    def __init__(self, tokenizer, mode: str = "tokenizers"):
        if mode not in ENCODERS:
            raise CollateError(f"encoder must be one of {', '.join(ENCODERS)}, got {mode!r}")
        self.tokenizer = tokenizer
        self.mode = mode
        self.fast: FastBackend | None = None
        self.stopped = ""  # why this encoder went back to the reference during the run

    @property
    def reference(self):
        return self.tokenizer.backend_tokenizer

    def prepare(self, worth_it: bool = True) -> None:
        """Load the fast encoder (mode auto: only when `worth_it`, a file of more than one chunk; its load
        costs about what it saves on a thousand conversations). mode fast: refuse the run if it cannot."""
        # a preload under way is always waited for (no thread may be loading when workers fork)
        worth_it = worth_it or _preload_of(self.tokenizer) is not None
        if self.mode == "tokenizers" or self.fast is not None or not (worth_it or self.mode == "fast"):
            return
        self.fast = load_fast(self.tokenizer)
        if self.fast.encoder is None and self.mode == "fast":
            raise CollateError(f"encoder=fast: {self.fast.reason}; use encoder=auto or tokenizers")

    def stop_fast(self, reason: str) -> None:
        self.stopped = reason

    def why_not_fast(self, offsets: bool) -> str:
        """Why the next encoding is not done by the fast encoder ("" when it is)."""
        if self.mode == "tokenizers":
            return "asked for"
        if self.stopped:
            return self.stopped
        if self.fast is None:
            return "a file of one chunk: loading the fast encoder costs about what it would save"
        if self.fast.encoder is None:
            return self.fast.reason
        if offsets and self.fast.byte_lengths is None:
            return f"labels need character offsets, which fastokens does not give and which cannot follow from the ids here ({self.fast.offsets_reason})"
        return ""

    def encode(self, texts: list[str], offsets: bool = True, *, check_first: int = 0,
               report: EncoderReport | None = None) -> list:
        """Encode `texts` (offsets only when asked). With the fast encoder, the first `check_first` texts
        and one in SAMPLE_EVERY are compared with the reference (counted in `report`); on a difference
        all are encoded with the reference and the fast encoder is not used again."""
        report = report if report is not None else EncoderReport(self.mode)
        if not texts:
            return []
        why = self.why_not_fast(offsets)
        if why:
            report.note("tokenizers", "" if self.mode == "tokenizers" else why)
            return self._reference(texts, offsets)
        backend = self.fast
        ids = _flat(backend.encoder, texts)
        checked = sorted(set(range(min(check_first, len(texts)))) | set(range(0, len(texts), SAMPLE_EVERY)))
        derivable = backend.byte_lengths is not None
        theirs = (self.reference.encode_batch if derivable else self.reference.encode_batch_fast)(
            [texts[k] for k in checked], add_special_tokens=False)
        out = [FastEncoding(i, t, backend) for i, t in zip(ids, texts)]
        for k, their in zip(checked, theirs):
            report.checked += 1
            mine = out[k]
            same = np.array_equal(mine.ids, their.ids)
            if same and derivable and not (backend.needs_nfc and not unicodedata.is_normalized("NFC", texts[k])):
                same = np.array_equal(mine.offsets, np.asarray(their.offsets, dtype=np.int64).reshape(-1, 2))
            if not same:
                what = "ids" if not np.array_equal(mine.ids, their.ids) else "character offsets"
                self.stop_fast(f"fastokens gave other {what} than the reference on {_excerpt(texts[k], mine.ids, their)}; "
                               f"from there on the run used tokenizers")
                log.warning("encoder: %s", self.stopped)
                report.differing += 1
                report.note("tokenizers", self.stopped)
                return self._reference(texts, offsets)
            out[k] = their  # the reference's own encoding, already made
        if backend.needs_nfc and offsets:
            # offsets follow from the ids only for texts NFC leaves alone
            for k, text in enumerate(texts):
                if not unicodedata.is_normalized("NFC", text):
                    out[k] = self.reference.encode(text, add_special_tokens=False)
        report.note("fast")
        return out

    def _reference(self, texts: list[str], offsets: bool) -> list:
        if offsets:
            return self.reference.encode_batch(texts, add_special_tokens=False)
        return self.reference.encode_batch_fast(texts, add_special_tokens=False)

    def __getstate__(self):
        # a process started by spawn (not fork) loads the fast encoder again from the reference
        state = dict(self.__dict__)
        state["fast"] = None if self.fast is None else "load"
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.fast == "load":
            os.environ.setdefault("FASTOKENS_BPE_THREADS", "1")
            self.fast = load_fast(self.tokenizer)


def encoder_line(report: dict | None) -> str | None:
    """One line for a person: the fast encoder used (with its checks), or why a run went back to the
    reference after a difference; None otherwise (the reference, as asked or for a reason of load)."""
    if not report:
        return None
    if report.get("differing"):
        return f"encoder: tokenizers after a difference: {report['reason']}"
    if report.get("used") == "fast":
        return f"encoder: fastokens ({report['checked']} texts checked against tokenizers, none differed)"
    if report.get("asked") == "fast" or (report.get("reason") and "one chunk" not in report["reason"]
                                          and report.get("asked") != "tokenizers"):
        return f"encoder: tokenizers ({report['reason']})"
    return None


def fast_encoder_facts(tokenizer, asked: str) -> dict:
    """For `collate --check-template`: whether the fast encoder would be used for this tokenizer (it is
    loaded and probed here), and whether offsets follow from its ids."""
    if asked == "tokenizers":
        return {"asked": asked, "fast": False, "reason": "asked for", "offsets": False, "offsets_reason": ""}
    backend = load_fast(tokenizer)
    return {"asked": asked, "fast": backend.encoder is not None, "reason": backend.reason,
            "offsets": backend.encoder is not None and backend.byte_lengths is not None,
            "offsets_reason": backend.offsets_reason}
