"""Load a Hugging Face fast tokenizer with a chat template, from the hub or a local folder.

Chat templates are untrusted code. transformers renders them in Jinja's ImmutableSandboxedEnvironment,
where reaching for Python internals (`x.__class__`, `f.__globals__`, a name-mangled private) gives an
undefined value that renders as nothing, or a SecurityError. So that such a template fails loudly
instead of silently rendering something else, `load_tokenizer` also reads the template's syntax tree
and refuses one that names such an attribute; a SecurityError raised while rendering fails the file
(see `collate_assets.core.tokens.tokenize`).

Which pipeline encodes text: transformers 5 rebuilds a tokenizer's normalizer and pre-tokenizer from
its Python class instead of reading them from the model's `tokenizer.json`, and for several classes the
two segment text differently (transformers #45701, #45812; open-instruct #1896): SmolLM2 loses the file's
`Digits` pre-tokenizer ("\\n\\n1." becomes `Ċ Ċ 1`, not `ĊĊ 1`), Phi-3 swaps the file's normalizer for
Metaspace ("Hello" after a special token, not "▁Hello"). The file is what the model was pretrained on,
so by default (`tokenizer_pipeline="file"`) it becomes the tokenizer's backend; the other pipeline is
kept to measure how often the two differ (`TokenizerDrift`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import logging
import os
import sys
from pathlib import Path

from ..errors import CollateError
from ..settings import TOKENIZER_PIPELINES
from .probes import PROBE_TEXT, pipeline_probes
from .template_limits import PROBE_CONVERSATIONS, RenderLimits, TemplateLimitError, forbidden_attribute, install, set_limits

log = logging.getLogger(__name__)

# Whether this process is collate's own (the `collate` command, the code location of
# `collate_assets.definitions`): then transformers loads tokenizers without importing PyTorch, which
# it does only because it is installed (its configuration module imports it), and which costs about
# 1.2 s of CPU and 2-3 s of wall time a process. A tokenizer needs no PyTorch. It stays off where
# collate_assets is a library in someone else's process: transformers modules imported while PyTorch
# is hidden stay without it, and that process may load models afterwards.
_OWN_PROCESS = False


def own_process() -> None:
    """Declare this process collate's own (see _OWN_PROCESS); it collects garbage rarely."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    rare_collections()


# Garbage collections in collate's own processes: one each this many allocations (Python: 700).
GC_ALLOCATIONS = 20_000


def rare_collections() -> None:
    """Fewer garbage collections, in a process that is collate's own (a worker, the `collate` command).

    Parsing and rendering allocate millions of short-lived containers, which reference counting
    frees; the collector's passes over them, every 700 allocations by default, found almost nothing
    and took 3 % of the CPU (0.2 s of a 7 s run on 15 MB, 0.04 s with this). What is already there
    (modules, the tokenizer) is moved out of the collector's sight (`gc.freeze`, which also keeps
    a forked worker from copying those pages only to mark them).
    """
    gc.freeze()
    gc.set_threshold(GC_ALLOCATIONS, *gc.get_threshold()[1:])


def give_back_memory() -> None:
    """Return the heap's free pages to the system (glibc's malloc_trim; nothing elsewhere).

    Loading a tokenizer frees more than it keeps (transformers' rebuilt pipeline, the JSON parsed on the
    way): for Qwen3 ~160 MB of free heap stayed mapped, in the process and in every worker forked from
    it (measured: 503 -> 329 MB RSS after load_tokenizer and the fast encoder)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        pass


@contextlib.contextmanager
def _torch_hidden(hide: bool):
    """While loading a tokenizer: `import torch` fails (so transformers takes it as absent), unless this
    process has imported PyTorch already (nothing to save then) or is not collate's own."""
    if not hide or "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # the import system's way to say a module cannot be imported
    # and transformers' "PyTorch was not found. Models won't be available" advice is not for this load
    advice = os.environ.get("TRANSFORMERS_NO_ADVISORY_WARNINGS")
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    try:
        yield
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
        if advice is None:
            os.environ.pop("TRANSFORMERS_NO_ADVISORY_WARNINGS", None)
        else:
            os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = advice


def check_chat_template(source: str, name: str = "chat template") -> None:
    """Raise CollateError if the template names a Python internal (`__class__`, `__globals__`, ...).

    A template that does not parse is left to rendering, which reports the syntax error per line.
    """
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(Extension):  # transformers' {% generation %} block, parsed for its body only
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols", _Generation])
    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError:
        return
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            attribute = node.attr
        elif isinstance(node, nodes.Getitem):
            attribute = node.arg.value if isinstance(node.arg, nodes.Const) else None
        elif node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const):
            attribute = node.args[0].value
        else:
            continue
        if forbidden_attribute(attribute):
            raise CollateError(
                f"{name} reaches for {attribute!r} (line {node.lineno}), a Python internal that the Jinja "
                "sandbox forbids (SecurityError); refusing to use this template"
            )


def load_tokenizer(
    name_or_path: str | Path,
    revision: str | None = None,
    chat_template: str | Path | None = None,
    trust_remote_code: bool = False,
    render_limits: RenderLimits | None = None,
    tokenizer_pipeline: str = "file",
    preload_fast: bool = False,
):
    """Load `name_or_path` (hub id `org/name` or a local folder) as a fast tokenizer.

    `preload_fast`: start loading the fast encoder from the `tokenizer.json` in a thread now, while
    transformers loads (see encoder.start_preload); for a caller about to encode a lot.

    `tokenizer_pipeline`: "file" encodes with the model's own `tokenizer.json` (the one it was
    pretrained with) when there is one, "transformers" with the backend transformers builds from the
    tokenizer's class (see `use_pipeline`; the two are compared on probe texts at load).

    `chat_template` is a path to a Jinja file that replaces the tokenizer's own template.
    A tokenizer without a chat template (and no file given) is an error: we would not know
    how to render conversations. So is one that cannot encode ordinary text (a folder without its
    `tokenizer.json` loads as a vocabulary of special tokens only): a probe sentence must come back
    from encode + decode, with few unknown tokens. The chat template renders under `render_limits`
    (time and size per conversation, see `template_limits`) and is refused when it goes over them
    on probe conversations.
    """
    name = str(name_or_path)
    if preload_fast and tokenizer_pipeline == "file":
        from .encoder import start_preload

        # started before transformers is imported (most of a second): on two cores or more it is then
        # loaded by the time the tokenizer is
        start_preload(tokenizer_json_path(name, revision))
    hide_torch = _OWN_PROCESS and not trust_remote_code  # a repository's own code may want PyTorch
    with _torch_hidden(hide_torch):
        from transformers import AutoTokenizer

    install()
    limits = render_limits if render_limits is not None else RenderLimits()

    if _looks_like_path(name) and not Path(name).expanduser().exists():
        raise CollateError(f"tokenizer folder not found: {name}")
    if trust_remote_code:
        log.warning("trust_remote_code is ON for tokenizer %s: its repository code will run", name)
    try:
        with _torch_hidden(hide_torch):
            tokenizer = AutoTokenizer.from_pretrained(
                name, revision=revision, trust_remote_code=trust_remote_code, use_fast=True
            )
    except Exception as exc:  # transformers raises many types (OSError, ValueError, HF errors)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not _looks_like_path(name) and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            first_line += (
                " (HF_HUB_OFFLINE is set, so only the local Hugging Face cache is read: download the tokenizer "
                "first, give a local folder, or unset HF_HUB_OFFLINE)"
            )
        raise CollateError(f"cannot load tokenizer {name!r}: {first_line}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise CollateError(f"tokenizer {name!r} has no fast (Rust) implementation; collate needs one")
    use_pipeline(tokenizer, name, revision, tokenizer_pipeline)
    check_encodes_text(tokenizer, name)
    if chat_template is not None:
        template_path = Path(chat_template)
        try:
            tokenizer.chat_template = template_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CollateError(f"cannot read chat template {template_path}: {exc.strerror or exc}") from exc
    if not tokenizer.chat_template:
        raise CollateError(
            f"tokenizer {name!r} has no chat template; give one with --chat-template FILE "
            "(or COLLATE_CHAT_TEMPLATE)"
        )
    if not isinstance(tokenizer.chat_template, str):
        raise CollateError(
            f"tokenizer {name!r} has several named chat templates; give the one to use with --chat-template FILE"
        )
    where = f"chat template {chat_template}" if chat_template is not None else f"chat template of {name!r}"
    check_chat_template(tokenizer.chat_template, where)
    set_limits(tokenizer.chat_template, limits)
    probe_chat_template(tokenizer, where)
    give_back_memory()
    return tokenizer


MAX_UNKNOWN_SHARE = 0.1
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model")


def check_encodes_text(tokenizer, name: str) -> None:
    """Raise CollateError unless `tokenizer` encodes and decodes PROBE_TEXT with few unknown tokens."""
    backend = tokenizer.backend_tokenizer
    encoding = backend.encode(PROBE_TEXT, add_special_tokens=False)
    ids = list(encoding.ids)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    unknown = sum(1 for i in ids if i in special or i == tokenizer.unk_token_id)
    decoded = backend.decode(ids, skip_special_tokens=False) if ids else ""
    problems = []
    if not ids:
        problems.append("it encodes a probe sentence to no token at all")
    elif unknown > MAX_UNKNOWN_SHARE * len(ids):
        problems.append(f"{unknown} of the {len(ids)} tokens of a probe sentence are unknown or special")
    elif " ".join(decoded.split()).lower() != " ".join(PROBE_TEXT.split()).lower():
        problems.append(f"a probe sentence does not come back from encode + decode (got {decoded[:80]!r})")
    if not problems:
        return
    vocabulary = backend.get_vocab_size(with_added_tokens=True)
    detail = f"vocabulary of {vocabulary} tokens"
    folder = Path(name).expanduser()
    if folder.is_dir():
        present = [f for f in _TOKENIZER_FILES if (folder / f).is_file()]
        if "tokenizer.json" not in present:
            detail += f"; {folder} has no tokenizer.json" + (
                f" (only {', '.join(present)})" if present else " nor any other vocabulary file"
            )
    raise CollateError(
        f"tokenizer {name!r} cannot encode ordinary text: {problems[0]} ({detail}); refusing it, as every "
        "conversation would become unknown or special tokens"
    )


def probe_chat_template(tokenizer, where: str) -> None:
    """Render the probe conversations; a template over its limits (or breaking the sandbox) is refused.

    A template that rejects a probe for its own reasons (say, it wants a system turn) is left to
    rendering, which rejects such conversations one by one.
    """
    from jinja2.exceptions import SecurityError

    for conversation in PROBE_CONVERSATIONS:
        try:
            tokenizer.apply_chat_template(conversation, tokenize=False)
        except TemplateLimitError as exc:
            raise CollateError(f"{where} goes over its render limits on a probe conversation ({exc}); refusing to use it") from exc
        except SecurityError as exc:
            raise CollateError(
                f"{where} broke the Jinja sandbox's rules on a probe conversation ({exc}); refusing to use it"
            ) from exc
        except Exception:
            continue


def _looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (absolute, ./, ~, deeper) is a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


# -- which pipeline encodes: the model's tokenizer.json or transformers' rebuild ----------------------

# Texts on which the two pipelines are compared at load (each added token is also tried in context):
# the places where they have been seen to differ (digit runs, newline runs, text after a special token,
# Unicode that a normalizer changes) and ordinary text.
@dataclasses.dataclass
class TokenizerDrift:
    """How the pipeline in use (`pipeline`) and the other one segment the same texts.

    `example`: the first text that differs, cut to the tokens around the first difference,
    `{"text", "file": [token strings], "transformers": [token strings]}`; None when none differs.
    Without a `tokenizer.json` there is nothing to compare (`compared` 0, pipeline "transformers").
    """

    pipeline: str
    compared: int = 0
    differing: int = 0
    example: dict | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def use_pipeline(tokenizer, name: str, revision: str | None, pipeline: str = "file") -> TokenizerDrift:
    """Make `pipeline` the tokenizer's backend and compare it with the other one on probe texts.

    "file": the model's `tokenizer.json` (a local folder's, or the Hugging Face cache's for a hub id,
    never downloaded), loaded with `tokenizers.Tokenizer.from_file`, replaces the backend transformers
    built (its `_tokenizer`), so `backend_tokenizer`, `apply_chat_template(tokenize=True)` and the engine
    all encode with it. Without such a file (or for a tokenizer class that keeps no `_tokenizer`),
    transformers' backend stays. "transformers": transformers' backend stays.

    The pipeline not used is kept as its JSON (`tokenizer.collate_other_json`; `other_backend` builds it
    when real texts are compared, see `compare_pipelines`), not as a live tokenizer: a second one held
    in every worker process made the one in use encode about 10 % slower (60 MB, 2 workers, measured),
    and the comparison on probe texts as `tokenizer.collate_drift`.
    """
    if pipeline not in TOKENIZER_PIPELINES:
        raise CollateError(f"tokenizer_pipeline must be one of {', '.join(TOKENIZER_PIPELINES)}, got {pipeline!r}")
    built = tokenizer.backend_tokenizer
    from_file, unchanged_file = _file_backend(tokenizer, name, revision)
    # the fast encoder may be loaded from the file itself (see encoder.start_preload) when it is the reference
    tokenizer.collate_file_reference = (unchanged_file, from_file) if unchanged_file and pipeline == "file" else None
    other = None
    if from_file is None:
        if pipeline == "file":
            log.info("tokenizer %s: no tokenizer.json to encode with; using the pipeline transformers builds", name)
        pipeline = "transformers"
    elif pipeline == "file":
        tokenizer._tokenizer = from_file
        other = built
    else:
        other = from_file
    tokenizer.collate_pipeline = pipeline
    tokenizer.collate_other_json = other.to_str() if other is not None else None
    tokenizer.collate_other_backend = other  # live until workers are forked (other_backend, forget_other_backend)
    drift = compare_pipelines(tokenizer, pipeline_probes(tokenizer), other=other) or TokenizerDrift(pipeline)
    tokenizer.collate_drift = drift
    if drift.differing:
        log.info("tokenizer %s: the two pipelines differ on %d of %d probe texts (using %s), e.g. %s",
                 name, drift.differing, drift.compared, pipeline, drift.example)
    return drift


def tokenizer_json_path(name: str, revision: str | None = None) -> Path | None:
    """The tokenizer's `tokenizer.json`: in its local folder, or in the Hugging Face cache for a hub id
    (never downloaded: `from_pretrained` has put it there if the repository has one)."""
    path = Path(name).expanduser()
    if _looks_like_path(name) or path.is_dir():
        return path / "tokenizer.json" if (path / "tokenizer.json").is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "tokenizer.json", revision=revision)
    except Exception:  # an id the hub library cannot parse
        return None
    return Path(cached) if isinstance(cached, str) else None


def _file_backend(tokenizer, name: str, revision: str | None):
    """The `tokenizer.json` pipeline, ready to stand in for transformers' backend, and the file's path when
    the pipeline is the file as it is (no token added, special tokens not split; else None); (None, None)
    when there is no file, the tokenizer keeps its backend elsewhere, or the file cannot give the same
    token ids."""
    from tokenizers import AddedToken, Tokenizer

    path = tokenizer_json_path(name, revision)
    built = getattr(tokenizer, "_tokenizer", None)
    if path is None or not isinstance(built, Tokenizer) or built is not tokenizer.backend_tokenizer:
        return None, None
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as exc:  # a file transformers could read but tokenizers cannot: keep transformers'
        log.warning("tokenizer %s: cannot load %s (%s); using the pipeline transformers builds", name, path, exc)
        return None, None
    # A tokenizer.json may carry truncation or padding (for a model's own batches): never on our texts.
    backend.no_truncation()
    backend.no_padding()
    backend.encode_special_tokens = built.encode_special_tokens
    # Tokens transformers adds from tokenizer_config.json that the file lacks must keep their ids.
    known = backend.get_added_tokens_decoder()
    missing = [t for i, t in sorted(built.get_added_tokens_decoder().items()) if getattr(known.get(i), "content", None) != t.content]
    if missing:
        backend.add_special_tokens([AddedToken(t.content, single_word=t.single_word, lstrip=t.lstrip, rstrip=t.rstrip,
                                               normalized=t.normalized, special=True) for t in missing if t.special])
        backend.add_tokens([t for t in missing if not t.special])
        wrong = [t.content for i, t in built.get_added_tokens_decoder().items() if backend.token_to_id(t.content) != i]
        if wrong:
            log.warning("tokenizer %s: %s gives other ids than transformers for %s; using the pipeline transformers builds",
                        name, path, wrong[:3])
            return None, None
    return backend, str(path) if not missing and not built.encode_special_tokens else None


def other_backend(tokenizer, keep: bool = True):
    """The pipeline not in use, built from its JSON (None when there is no other pipeline), once: it is kept
    on the tokenizer until `forget_other_backend` (building it is 0.4 s for Qwen3, and every file's first
    chunk is compared: 20 small files took 10.8 s, 8.8 s of it rebuilding this). `keep=False`: built for
    this use only when it is not kept (while workers run: the next pool would drop it anyway, and the
    command's process would hold it, ~30 MB for Qwen3, for the rest of the file)."""
    source = getattr(tokenizer, "collate_other_json", None)
    if source is None:
        return None
    built = getattr(tokenizer, "collate_other_backend", None)
    if built is None:
        from tokenizers import Tokenizer

        built = Tokenizer.from_str(source)
        if keep:
            tokenizer.collate_other_backend = built
    return built


def forget_other_backend(tokenizer) -> None:
    """Drop the pipeline `other_backend` keeps, before worker processes are forked: a worker holding a
    second live tokenizer encoded about 10 % slower (see use_pipeline)."""
    if getattr(tokenizer, "collate_other_backend", None) is not None:
        tokenizer.collate_other_backend = None


def compare_pipelines(tokenizer, texts: list[str], encodings=None, other=None) -> TokenizerDrift | None:
    """Encode `texts` with the pipeline not in use and count those whose ids differ from the one in use
    (`encodings`: the texts already encoded with it). None when there is no other pipeline. Costs one
    encode of the texts (two without `encodings`)."""
    other = other if other is not None else other_backend(tokenizer)
    if other is None:
        return None
    used = tokenizer.backend_tokenizer
    pipeline = tokenizer.collate_pipeline
    if encodings is None:
        encodings = used.encode_batch_fast(texts, add_special_tokens=False)
    theirs = other.encode_batch_fast(texts, add_special_tokens=False)
    differing = [k for k, (a, b) in enumerate(zip(encodings, theirs)) if a.ids != b.ids]
    example = _drift_example(texts[differing[0]], used, other, pipeline) if differing else None
    return TokenizerDrift(pipeline, len(texts), len(differing), example)


def _drift_example(text: str, used, other, pipeline: str) -> dict:
    """The tokens of both pipelines around their first difference in `text` (one token of context before)."""
    a = used.encode(text, add_special_tokens=False)
    b = other.encode(text, add_special_tokens=False)
    first = next((k for k, (x, y) in enumerate(zip(a.ids, b.ids)) if x != y), min(len(a.ids), len(b.ids)))

    def span(encoding, k: int) -> tuple[int, int]:
        offsets = encoding.offsets
        return offsets[min(max(k, 0), len(offsets) - 1)] if offsets else (0, len(text))

    start = min(span(a, first - 1)[0], span(b, first - 1)[0])
    end = max(span(a, first + 1)[1], span(b, first + 1)[1])

    def window(encoding) -> list[str]:
        return [t for t, (s, e) in zip(encoding.tokens, encoding.offsets) if s < end and e > start or s == e == start]

    tokens = {pipeline: window(a), _other_pipeline(pipeline): window(b)}
    return {"text": text[start:end], "file": tokens["file"], "transformers": tokens["transformers"]}


def _other_pipeline(pipeline: str) -> str:
    return "transformers" if pipeline == "file" else "file"


def drift_summary(tokenizer, texts: TokenizerDrift | None = None) -> dict:
    """The drift of a tokenizer as a JSON-ready dict for statistics and reports: the pipeline in use, the
    probe texts compared at load and how many differ, the real `texts` compared (a file's first chunk,
    the probe conversation) and how many differ, and the first example (from the real texts, if any)."""
    probe = getattr(tokenizer, "collate_drift", None) or TokenizerDrift("transformers")
    texts = texts or TokenizerDrift(probe.pipeline)
    return {
        "pipeline": probe.pipeline,
        "compared_with": _other_pipeline(probe.pipeline) if getattr(tokenizer, "collate_other_json", None) is not None else None,
        "probe_texts": probe.compared,
        "probe_differing": probe.differing,
        "texts": texts.compared,
        "differing": texts.differing,
        "example": texts.example or probe.example,
    }


def drift_line(drift: dict | None) -> str | None:
    """One line for a person when the pipelines differ on the real texts (None when they do not), e.g.
    "tokenizer: tokenizer.json pipeline (transformers' backend differs on 3 of 1024 texts: '\\n\\n1.' ...)"."""
    if not drift or not drift.get("differing"):
        return None
    used = "tokenizer.json pipeline" if drift["pipeline"] == "file" else "transformers' pipeline"
    other = "transformers' backend" if drift["pipeline"] == "file" else "the tokenizer.json pipeline"
    example = drift.get("example") or {}
    shown_example = ""
    if example:
        shown_example = (f": {example['text']!r} is {example['file']} in tokenizer.json, "
                         f"{example['transformers']} in transformers")
    return f"tokenizer: {used} ({other} differs on {drift['differing']} of {drift['texts']} texts{shown_example})"


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of what decides the tokens: the tokenizer's JSON and its chat template."""
    digest = hashlib.sha256()
    digest.update(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    digest.update(b"\0")
    digest.update((tokenizer.chat_template or "").encode("utf-8"))
    return digest.hexdigest()[:16]


# The files of a tokenizer folder that decide its tokens and chat template.
_FINGERPRINT_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", *_TOKENIZER_FILES,
)


def tokenizer_files_fingerprint(
    name_or_path: str | Path, revision: str | None = None, chat_template: str | Path | None = None
) -> str:
    """A stable hash of a tokenizer's files and chat template, without loading it (cheap: no transformers).

    For a local folder: the bytes of the files that decide tokens and template. For a hub id: the
    same files in the local Hugging Face cache (never downloaded); when they are not cached, the id
    and revision. A chat template file that replaces the tokenizer's is hashed too. Same files, same
    fingerprint: the Dagster layer puts it into the code version of the tokenized asset, so a new
    tokenizer or template makes every partition stale.
    """
    digest = hashlib.sha256()
    folder = _local_folder(str(name_or_path), revision)
    if folder is None:
        digest.update(f"hub:{name_or_path}@{revision or ''}".encode())
    else:
        for file_name in sorted(set(_FINGERPRINT_FILES)):
            path = folder / file_name
            if path.is_file():
                digest.update(file_name.encode() + b"\0")
                digest.update(_file_digest(path))
    if chat_template is not None:
        path = Path(chat_template).expanduser()
        digest.update(b"template\0")
        digest.update(_file_digest(path) if path.is_file() else str(path).encode())
    return digest.hexdigest()[:16]


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def _local_folder(name: str, revision: str | None) -> Path | None:
    path = Path(name).expanduser()
    if _looks_like_path(name) or path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "tokenizer_config.json", revision=revision)
    except Exception:  # an id the hub library cannot even parse: hashed by name
        return None
    return Path(cached).parent if isinstance(cached, str) else None
