"""Every setting of collate, defined once.

`CollateSettings` is the one definition of each field: its default, its validation rule, its help
text and its environment variable (`COLLATE_<FIELD>`, e.g. `COLLATE_MAX_LENGTH`). The `collate`
command builds it from its flags (the environment gives the defaults), the Dagster resource
`CollateConfig` is generated from these fields and hands the same object to the engine, and a
dataset Component's YAML uses the same field names.

Only the standard library is imported here, so the command can parse its arguments before any
heavy import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

LabelsMode = Literal["all", "assistant"]
PackingStrategy = Literal["bfd", "greedy"]
OverlongPolicy = Literal["truncate", "drop", "split", "turns", "error"]
OutputFormat = Literal["arrow", "parquet", "msgpack", "jsonl"]
ReasoningTurns = Literal["per-turn", "as-rendered"]
UnshownReasoning = Literal["reject", "drop"]
TokenizerPipeline = Literal["file", "transformers"]
TruncatedTurns = Literal["keep", "drop"]
EncoderChoice = Literal["auto", "fast", "tokenizers"]
LossWeights = Literal["off", "messages", "conversation-mean"]
BalanceReader = Literal["sampler", "trainer"]

LABELS_MODES: tuple[str, ...] = ("all", "assistant")
PACKING_STRATEGIES: tuple[str, ...] = ("bfd", "greedy")
OVERLONG_POLICIES: tuple[str, ...] = ("truncate", "drop", "split", "turns", "error")
OUTPUT_FORMATS: tuple[str, ...] = ("arrow", "parquet", "msgpack", "jsonl")
LOSS_WEIGHTS: tuple[str, ...] = ("off", "messages", "conversation-mean")
REASONING_TURNS: tuple[str, ...] = ("per-turn", "as-rendered")
UNSHOWN_REASONING: tuple[str, ...] = ("reject", "drop")
TOKENIZER_PIPELINES: tuple[str, ...] = ("file", "transformers")
TRUNCATED_TURNS: tuple[str, ...] = ("keep", "drop")
ENCODER_CHOICES: tuple[str, ...] = ("auto", "fast", "tokenizers")
BALANCE_READERS: tuple[str, ...] = ("sampler", "trainer")
EXTENSIONS: dict[str, str] = {
    "arrow": ".arrow",
    "parquet": ".parquet",
    "msgpack": ".msgpack",
    "jsonl": ".jsonl",
}

IGNORE_INDEX = -100
DEFAULT_MAX_LENGTH = 8192
# Lines longer than this are rejected unparsed: tokenizing a 16 MB line takes ~2.5 GB of memory, and
# no conversation that fits a training context comes near 8 MiB of text (128k tokens are ~0.5 MB).
DEFAULT_MAX_LINE_BYTES = 8 << 20
# The largest max_length accepted: 16 Mi tokens, far above any model's context today. Larger values
# are a typo (or an attempt to exhaust memory), refused with an argument error.
MAX_LENGTH_CEILING = 1 << 24
# Chat-template rendering bounds, per conversation (see core/tokens/template_limits.py). A normal render
# takes well under a millisecond per conversation, a 8 MiB one a fraction of a second.
DEFAULT_RENDER_SECONDS = 5.0
DEFAULT_RENDER_MAX_CHARS = 32 << 20
MIN_RENDER_MAX_CHARS = 1024
MAX_WORKERS = 1024
DEFAULT_OUTPUT_DIR = "collate_output"
ENV_PREFIX = "COLLATE_"


def _field(default: Any, help: str, *, output: bool = True, choices: tuple[str, ...] | None = None,
           flags: tuple[str, ...] = (), metavar: str | None = None, pack: bool = False, since: bool = False):
    """A settings field. `output`: the field changes what is written (it is in `fingerprint()`; with
    `since`, a field added later, only when not at its default, so the fingerprint of settings that
    leave it alone is what it was before it existed and nothing already written goes stale);
    `pack`: it changes the packed outputs only, not the tokenized spills (output=False; it is in
    `pack_dict()` when not at its default, which the packed assets' code version carries);
    `flags`: the `collate` command's options for it (none: not an option of the command)."""
    return dataclasses.field(default=default, metadata={"help": help, "output": output, "choices": choices,
                                                        "flags": flags, "metavar": metavar, "pack": pack,
                                                        "since": since})


@dataclasses.dataclass(frozen=True)
class CollateSettings:
    """What to read, how to tokenize and pack it, and where to write it."""

    # Where files are.
    input_dir: str | None = _field(
        None, "Input file or folder of input files (*.jsonl, *.jsonl.gz, *.jsonl.zst, *.json, *.parquet; "
        "subfolders are not read). Default: the embedded demo sample.", output=False, flags=("-i", "--input"))
    output_dir: str = _field(
        DEFAULT_OUTPUT_DIR, "Folder (or fsspec URL: s3://, gs://, memory://) for packed outputs: "
        "<output_dir>/<name>.<ext>, never the input folder or inside it.", output=False, flags=("-o", "--output"))
    spill_dir: str | None = _field(
        None, "Local folder for tokenized spills and their manifests. Default: <output_dir>/.collate_tokenized "
        "(a temporary folder when the output is remote).", output=False)
    formats: tuple[str, ...] = _field(
        ("arrow",), "Output formats written by `collate` and kept up to date by automation "
        "(comma-separated: arrow, parquet, msgpack, jsonl); the others stay available in the UI.",
        output=False, choices=OUTPUT_FORMATS, flags=("-f", "--format"), metavar="FORMAT[,FORMAT]")
    sensor_seconds: int = _field(
        30, "How often (seconds) the Dagster input files sensor looks at the input folder and the automation "
        "sensor evaluates what to run.", output=False)
    automation: bool = _field(
        True, "Dagster: the automation sensor starts running, so new and edited input files are built by "
        "themselves; false: it starts stopped (turn it on in the UI) and partitions run when you materialize them.",
        output=False)
    # Which tokenizer. Its content (vocabulary, chat template) is fingerprinted separately, so the
    # name is not part of `fingerprint()`.
    tokenizer: str | None = _field(
        None, "Hugging Face hub id (org/name, read from the local cache) or local tokenizer folder. "
        "Default: the embedded demo tokenizer.", output=False, flags=("-t", "--tokenizer"))
    tokenizer_revision: str | None = _field(None, "Hub revision (branch, tag or commit) of the tokenizer.", output=False, flags=("--revision",))
    chat_template: str | None = _field(None, "A Jinja chat template file that replaces the tokenizer's.", output=False, flags=("--chat-template",), metavar="FILE")
    trust_remote_code: bool = _field(False, "Let the tokenizer repository's own code run (only if you trust it).", output=False, flags=("--trust-remote-code",))
    # transformers 5 rebuilds the normalizer and pre-tokenizer from the tokenizer's class, and for some
    # (SmolLM2, Phi-3) they segment text unlike the model's tokenizer.json: the file is the default.
    tokenizer_pipeline: TokenizerPipeline = _field(
        "file", "file: encode with the model's own tokenizer.json (what it was pretrained with); "
        "transformers: with the pipeline transformers builds from the tokenizer's class.", choices=TOKENIZER_PIPELINES, flags=("--tokenizer-pipeline",))
    # Which encoder turns rendered text into ids (core/tokens/encoder.py). Both give the same ids: the fast one is
    # checked against the reference at load and on a sample of every file, so it is not in fingerprint().
    encoder: EncoderChoice = _field(
        "auto", "auto: the fast encoder (fastokens) for files of more than one chunk when it loads this "
        "tokenizer and gives the reference's ids on probe texts, else tokenizers; fast: it or fail; tokenizers: "
        "the reference (the tokenizers library) only. Checked on a sample of every file; outputs are the same bytes.",
        output=False, choices=ENCODER_CHOICES, flags=("--encoder",))
    render_timeout: float = _field(
        DEFAULT_RENDER_SECONDS, "Longest the chat template may take to render one conversation, in seconds; "
        "a conversation over it is rejected.", flags=("--render-timeout",), metavar="SECONDS")
    render_max_chars: int = _field(
        DEFAULT_RENDER_MAX_CHARS, "Most characters (or items) anything the chat template makes for one "
        "conversation may have.", flags=("--render-max-chars",), metavar="N")
    # How conversations become rows.
    max_length: int = _field(DEFAULT_MAX_LENGTH, f"Tokens per packed row, 2 to {MAX_LENGTH_CEILING} (16 Mi).", flags=("-m", "--max-length"), metavar="N")
    labels: LabelsMode = _field(
        "all", "all: every token but each sequence's first, tool results and turns flagged not to train; "
        "assistant: only what the assistant says.", choices=LABELS_MODES, flags=("--labels",))
    packing: PackingStrategy = _field(
        "bfd", "bfd: best-fit decreasing; greedy: next-fit decreasing (the legacy strategy).", choices=PACKING_STRATEGIES, flags=("--packing",))
    # Rows ordered for data-parallel ranks of equal attention cost (core/pack/balance.py). Only the packed
    # outputs change (pack=True): the tokenized spills stay fresh.
    balance_ranks: str | None = _field(
        None, "WORLDxMICRO (e.g. 8x2): shuffle each output's rows (seed 0) and order them so that every step of "
        "WORLD ranks x MICRO rows, read without shuffling, gives the ranks near-equal attention cost "
        "(sum of seq_lengths squared); the before/after imbalance is in the pack statistics. "
        "Default: rows in packing order.", output=False, pack=True, flags=("--balance-ranks",), metavar="WxB")
    balance_reader: BalanceReader = _field(
        "sampler", "balance_ranks: how the trainer deals rows to ranks. sampler: DistributedSampler(shuffle=False) "
        "or rank_rows(shuffle=False), rank r reads rows r, r+W, ...; trainer: transformers' Trainer with "
        "train_sampling_strategy=sequential, micro-batches of consecutive rows dealt round-robin.",
        output=False, pack=True, choices=BALANCE_READERS, flags=("--balance-reader",))
    overlong: OverlongPolicy = _field(
        "truncate", "Conversations longer than max_length: truncate, drop, split (chunks), turns (windows that end "
        "at an assistant end of turn, earlier turns as untrained context, each turn trained once; needs "
        "labels=assistant) or error.",
        choices=OVERLONG_POLICIES, flags=("--overlong",))
    loss_weights: LossWeights = _field(
        "off", "Per-token loss weights, a float32 `loss_weights` column: messages = each trained token weighs its "
        "message's weight (`weight` / `loss_weight`, 1 when not given); conversation-mean = those weights divided by "
        "their sum in the conversation, so a loss summed with them and divided by their sum is the mean over "
        "conversations of each one's mean. off: no column; a weight other than 0 or 1 is rejected.",
        since=True, choices=LOSS_WEIGHTS, flags=("--loss-weights",))
    pad_to_multiple_of: int = _field(
        0, "Pad every sequence with untrained tokens to a multiple of N tokens (context parallelism wants "
        "multiples of 2 x its degree), so rows are multiples of N too; N must divide max_length. 0 = off.",
        since=True, flags=("--pad-to-multiple-of",), metavar="N")
    strict: bool = _field(False, "Fail on the first bad record instead of rejecting it.", flags=("--strict",))
    max_line_bytes: int = _field(
        DEFAULT_MAX_LINE_BYTES, "Records longer than this many bytes (as compact JSON) are rejected unparsed.", flags=("--max-line-bytes",), metavar="N")
    # Reasoning of earlier turns that the template leaves out (Qwen3): "per-turn" trains each such turn
    # in a sequence of its own (its history, then the turn with its reasoning); "as-rendered" trains
    # what the template renders and counts the reasoning left out.
    reasoning_turns: ReasoningTurns = _field(
        "per-turn", "Reasoning the template drops from earlier turns: per-turn trains each such turn in a "
        "sequence of its own; as-rendered trains what the template renders.", choices=REASONING_TURNS, flags=("--reasoning-turns",))
    train_empty_think: bool = _field(
        False, "labels=assistant: also train the empty thinking block a template inserts (Qwen3).", flags=("--train-empty-think",))
    # Reasoning a template cannot show at all, or not for that turn even as the last one (Gemma-4 shows
    # it only for turns with tool calls): reject the record, or train the turn without it (counted).
    unshown_reasoning: UnshownReasoning = _field(
        "reject", "Reasoning the chat template cannot show (even as the last turn): reject the record, or drop "
        "the reasoning and train the turn without it (counted as reasoning_unshown).", choices=UNSHOWN_REASONING, flags=("--unshown-reasoning",))
    # The supervision audit (core/tokens/audit.py). truncated_turns changes what is written; the thresholds
    # only decide whether a file passes (the command fails it, the Dagster checks block it).
    truncated_turns: TruncatedTurns = _field(
        "keep", "overlong=truncate: keep or drop (reject) conversations whose truncation cuts off the end of "
        "their last trained assistant turn.", choices=TRUNCATED_TURNS, flags=("--truncated-turns",))
    min_trained_share: float = _field(
        0.0, "Fail a file whose trained tokens are less than this share of the tokens written (0 = off).", output=False, flags=("--min-trained-share",), metavar="SHARE")
    max_untrained_turn_ends: float = _field(
        1.0, "Fail a file where more than this share of trained assistant turns have their end of turn not "
        "trained (cut by truncation, masked, or not written); 1 = off.", output=False, flags=("--max-untrained-turn-ends",), metavar="SHARE")
    # How the work is spread. The outputs are the same bytes whatever the number of workers.
    workers: int = _field(
        0, "Processes that parse, render, tokenize and label a file (this one and N - 1 forked from it): 0 = "
        "the cores this process may use (CPU affinity and cgroup quota); 1 = all in this process.", output=False,
        flags=("-w", "--workers"), metavar="N")
    shard_mb: float = _field(
        0.0, "Plain .jsonl input files over this many MiB are split into line-aligned shards of about this "
        "size, each its own partition and output <name>-00000-of-000NN.<ext>; 0 = never split.", output=False, flags=("--shard-mb",), metavar="MB")

    def __post_init__(self) -> None:
        if isinstance(self.formats, str):
            object.__setattr__(self, "formats", parse_formats(self.formats))
        else:
            object.__setattr__(self, "formats", parse_formats(",".join(self.formats)))
        if isinstance(self.render_timeout, int) and not isinstance(self.render_timeout, bool):
            object.__setattr__(self, "render_timeout", float(self.render_timeout))
        if not _is_int(self.max_length) or self.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if self.max_length > MAX_LENGTH_CEILING:
            raise ValueError(f"max_length must be at most {MAX_LENGTH_CEILING} (16 Mi tokens), got {self.max_length!r}")
        if not _is_int(self.max_line_bytes) or self.max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be a positive integer, got {self.max_line_bytes!r}")
        if not isinstance(self.render_timeout, float) or not 0 < self.render_timeout < 1e6:
            raise ValueError(f"render_timeout must be a positive number of seconds, got {self.render_timeout!r}")
        if not _is_int(self.render_max_chars) or self.render_max_chars < MIN_RENDER_MAX_CHARS:
            raise ValueError(f"render_max_chars must be an integer >= {MIN_RENDER_MAX_CHARS}, got {self.render_max_chars!r}")
        for field in dataclasses.fields(self):
            choices = field.metadata["choices"]
            value = getattr(self, field.name)
            if choices and field.name != "formats" and value not in choices:
                raise ValueError(f"{field.name} must be one of {', '.join(choices)}; got {value!r}")
            if field.type in ("bool",) and not isinstance(value, bool):
                raise ValueError(f"{field.name} must be true or false, got {value!r}")
        if not _is_int(self.sensor_seconds) or not 1 <= self.sensor_seconds <= 86400:
            raise ValueError(f"sensor_seconds must be an integer from 1 to 86400, got {self.sensor_seconds!r}")
        if not self.output_dir:
            raise ValueError("output_dir must not be empty")
        if not _is_int(self.pad_to_multiple_of) or self.pad_to_multiple_of < 0:
            raise ValueError(f"pad_to_multiple_of must be an integer >= 0 (0: off), got {self.pad_to_multiple_of!r}")
        if self.pad_to_multiple_of and self.max_length % self.pad_to_multiple_of:
            raise ValueError(f"pad_to_multiple_of {self.pad_to_multiple_of} must divide max_length {self.max_length} "
                             "(a padded sequence must still fit in a row)")
        if self.overlong == "turns" and self.labels != "assistant":
            raise ValueError("overlong=turns cuts at assistant turns: it needs labels=assistant "
                             "(with labels=all every token is trained and there are no turns to cut at)")
        if isinstance(self.shard_mb, int) and not isinstance(self.shard_mb, bool):
            object.__setattr__(self, "shard_mb", float(self.shard_mb))
        if not isinstance(self.shard_mb, float) or not 0 <= self.shard_mb < 1e9 or math.isnan(self.shard_mb):
            raise ValueError(f"shard_mb must be a number of MiB, 0 (never split) or more, got {self.shard_mb!r}")
        for name in ("min_trained_share", "max_untrained_turn_ends"):
            value = getattr(self, name)
            if _is_int(value):
                object.__setattr__(self, name, value := float(value))
            if not isinstance(value, float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a share from 0 to 1, got {value!r}")
        if not _is_int(self.workers) or not 0 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be an integer from 0 (one per core) to {MAX_WORKERS}, got {self.workers!r}")
        if self.balance_ranks is not None:
            text = str(self.balance_ranks).strip()
            if text.lower() in ("", "0", "off", "none"):
                object.__setattr__(self, "balance_ranks", None)
            else:  # normalized: "8X2" and " 8x2" are the same setting (and the same code version)
                world, micro = parse_balance_ranks(text)
                object.__setattr__(self, "balance_ranks", f"{world}x{micro}")

    # -- building --------------------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "CollateSettings":
        """Settings from `COLLATE_<FIELD>` variables (unset or empty: the default), then `overrides`.

        Raises ValueError naming the variable when one does not parse or validate.
        """
        return _from_env(cls, environ, overrides)

    def replace(self, **changes: Any) -> "CollateSettings":
        return dataclasses.replace(self, **changes)

    # -- reading ---------------------------------------------------------------------------------

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["formats"] = list(self.formats)
        return out

    def output_dict(self) -> dict:
        """The fields that change what is written (the tokenizer's content is fingerprinted apart)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["output"]
                and not (f.metadata["since"] and getattr(self, f.name) == f.default)}

    def fingerprint(self) -> str:
        """A stable hash of the fields that change the outputs (never Python's salted ``hash()``)."""
        blob = json.dumps(self.output_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def pack_dict(self) -> dict:
        """The fields that change the packed outputs only (not the spills), those not at their default:
        {} with the defaults, so the packed assets' code version is then what it always was."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.metadata.get("pack") and getattr(self, f.name) != f.default}
        if "balance_ranks" not in values:  # the reader matters only to balanced rows
            values.pop("balance_reader", None)
        return values

    def pack_fingerprint(self) -> str:
        """A stable hash of `pack_dict()`; "" when it is empty."""
        values = self.pack_dict()
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16] if values else ""

    def balance_shape(self) -> tuple[int, int] | None:
        """(world_size, micro_batch) of `balance_ranks`, or None when rows are not balanced."""
        return parse_balance_ranks(self.balance_ranks) if self.balance_ranks else None

    def tokenizer_name(self) -> str:
        """The tokenizer to load: the setting, or the embedded demo tokenizer."""
        if self.tokenizer:
            return self.tokenizer
        from collate_assets.sample import DEMO_TOKENIZER_DIR

        return str(DEMO_TOKENIZER_DIR)

    def input_path(self) -> Path:
        """The input file or folder: the setting, or the embedded demo sample."""
        if self.input_dir:
            return Path(self.input_dir).expanduser()
        from collate_assets.sample import DEMO_INPUT_DIR

        return DEMO_INPUT_DIR

    def shard_bytes(self) -> int:
        """Files over this many bytes are split into shards (0: never)."""
        return int(self.shard_mb * (1 << 20))

    def worker_count(self) -> int:
        """The number of processes at work on a file (this one included): the setting, or (0) the cores this
        process may use."""
        return self.workers or available_cpus()

    def render_limits(self) -> "RenderLimits":
        return RenderLimits(seconds=self.render_timeout, max_chars=self.render_max_chars)


@dataclasses.dataclass(frozen=True)
class RenderLimits:
    """Per conversation: wall time of one render, and characters (or items) of anything it makes."""

    seconds: float = DEFAULT_RENDER_SECONDS
    max_chars: int = DEFAULT_RENDER_MAX_CHARS

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, (int, float)) or not self.seconds > 0:
            raise ValueError(f"render time limit must be a positive number of seconds, got {self.seconds!r}")
        if not isinstance(self.max_chars, int) or self.max_chars < 1024:
            raise ValueError(f"render size limit must be an integer >= 1024 characters, got {self.max_chars!r}")


def available_cpus() -> int:
    """The cores this process may use: its CPU affinity (taskset, cpusets), capped by a cgroup v2
    CPU quota (`cpu.max`, as containers get from `--cpus` or a Kubernetes CPU limit), rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """CPUs allowed by this process's cgroup CPU quota (quota / period), or None when unlimited.

    cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`); the tightest limit on
    the way up from the process's cgroup to the root.
    """
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        _, controllers, relative = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            folder, read = Path(root + relative), _cpu_max_v2
        elif "cpu" in controllers.split(","):
            folder, read = Path(f"{root}/{controllers}{relative}"), _cpu_quota_v1
        else:
            continue
        for path in (folder, *folder.parents):
            if not str(path).startswith(root):
                break
            value = read(path)
            if value is not None:
                best = value if best is None else min(best, value)
    return best


def _cpu_max_v2(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return float(quota) / float(period) if quota != "max" and float(period) > 0 else None
    except (OSError, ValueError):
        return None


def _cpu_quota_v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


ExecutorName = Literal["in_process", "celery"]
EXECUTORS: tuple[str, ...] = ("in_process", "celery")
DEFAULT_BROKER = "redis://localhost:6379/0"


@dataclasses.dataclass(frozen=True)
class LocationSettings:
    """The settings of the code location and the command that are no dataset's: where the other datasets
    are, which executor runs a run's steps, and how often the command prints plain progress lines.
    Read from the same `COLLATE_<FIELD>` variables, parsed and validated the same way."""

    datasets_dir: str | None = _field(
        None, "A folder of dataset (and mix) defs.yaml files, each adding a dataset to the code location.", output=False)
    executor: ExecutorName = _field(
        "in_process", "in_process: each run's steps in the run's own process; celery: each step a task of "
        "dagster-celery's executor, run by a `dagster-celery worker`.", output=False, choices=EXECUTORS)
    celery_broker: str = _field(DEFAULT_BROKER, "executor=celery: the broker's URL.", output=False)
    celery_backend: str | None = _field(None, "executor=celery: the result backend's URL. Default: the broker's.",
                                        output=False)
    celery_visibility_timeout: int = _field(
        3600, "executor=celery: seconds after which a step taken by a worker that vanished is given to another "
        "(keep it above the longest step).", output=False)
    progress_seconds: float = _field(
        5.0, "The command's plain progress line (stderr not a terminal): every this many seconds; 0 = at every update.",
        output=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "executor", str(self.executor).strip().lower().replace("-", "_") or "in_process")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}; got {self.executor!r}")
        if not _is_int(self.celery_visibility_timeout) or self.celery_visibility_timeout < 1:
            raise ValueError(f"celery_visibility_timeout must be a whole number of seconds >= 1; got {self.celery_visibility_timeout!r}")
        if _is_int(self.progress_seconds):
            object.__setattr__(self, "progress_seconds", float(self.progress_seconds))
        if not isinstance(self.progress_seconds, float) or not 0 <= self.progress_seconds < 1e6:
            raise ValueError(f"progress_seconds must be a number of seconds, 0 or more; got {self.progress_seconds!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "LocationSettings":
        return _from_env(cls, environ, overrides)

    def broker_backend(self) -> tuple[str, str]:
        return self.celery_broker, self.celery_backend or self.celery_broker


def _from_env(cls, environ: Mapping[str, str] | None, overrides: dict[str, Any]):
    """`cls` (a settings dataclass) from `COLLATE_<FIELD>` variables (unset or empty: the default),
    then `overrides`; ValueError naming the variable when one does not parse or validate."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        raw = environ.get(env_name(field.name), "")
        if raw.strip() == "" or field.name in overrides:
            continue
        try:
            values[field.name] = parse_value(field, raw)
        except ValueError as exc:
            raise ValueError(f"{env_name(field.name)}={raw!r}: {exc}") from None
    values.update(overrides)
    try:
        return cls(**values)
    except ValueError as exc:
        bad = next((n for n in values if n in str(exc).split(" ", 1)[0]), None)
        if bad is not None and bad not in overrides:
            raise ValueError(f"{env_name(bad)}: {exc}") from None
        raise


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def settings_fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(CollateSettings)


def field_type(field: dataclasses.Field) -> Any:
    """A field's type as an object (`Literal["all", "assistant"]`, `str | None`, ...), for the models
    derived from the settings (the resource's config, the Component's YAML): choices stay choices."""
    import typing

    return typing.get_type_hints(CollateSettings)[field.name]


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_value(field: dataclasses.Field, raw: str) -> Any:
    """A field's value from text (an environment variable); ValueError when it does not parse."""
    text = raw.strip()
    kind = str(field.type)
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}")
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"not an integer: {text!r}") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"not a number: {text!r}") from None
    if field.name == "formats":
        return parse_formats(text)
    return text


def parse_balance_ranks(text: str) -> tuple[int, int]:
    """"8x2" (also "8X2", "8×2"; "8" is 8x1) -> (world_size 8, micro_batch 2); ValueError otherwise."""
    parts = str(text).strip().lower().replace("×", "x").split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        numbers.append(1)
    if len(numbers) != 2 or not all(1 <= n <= 1 << 20 for n in numbers):
        raise ValueError(f"balance_ranks must be WORLD_SIZExMICRO_BATCH, two positive integers such as 8x2; got {text!r}")
    return numbers[0], numbers[1]


def parse_formats(text: str) -> tuple[str, ...]:
    """`arrow,parquet` -> ("arrow", "parquet"): known formats, no repeats, in the order given."""
    formats: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        if name not in OUTPUT_FORMATS:
            raise ValueError(f"formats must be among {', '.join(OUTPUT_FORMATS)}; got {name!r}")
        if name not in formats:
            formats.append(name)
    if not formats:
        raise ValueError(f"formats must name at least one of {', '.join(OUTPUT_FORMATS)}")
    return tuple(formats)


def check_format(fmt: str) -> str:
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(OUTPUT_FORMATS)}; got {fmt!r}")
    return fmt
