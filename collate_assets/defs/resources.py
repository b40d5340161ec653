"""Resources: where files live, which tokenizer, which packing settings; configured from the environment.

Every setting is a field of a `dg.ConfigurableResource`, so it is a per-deployment setting (an
environment variable, shown by name in the UI) that a run can override in the launchpad:

    resources:
      packing:
        config: {max_length: 4096, labels: assistant, packing: bfd, overlong: truncate, strict: false}

Dagster replaces a resource's whole config when a run gives any of it: fields left out fall back
to the defaults below, not to the environment, so repeat them (or write `{env: COLLATE_LABELS}`).

| variable                     | resource field                | default                                   |
|------------------------------|-------------------------------|-------------------------------------------|
| `COLLATE_INPUT_DIR`          | `paths.input_dir`             | the embedded demo sample                  |
| `COLLATE_OUTPUT_DIR`         | `paths.output_dir`            | `./collate_output` (absolute, from the folder the code location starts in) |
| `COLLATE_SPILL_DIR`          | `paths.spill_dir`             | `<output>/_tokenized` (local output), a temp folder otherwise |
| `COLLATE_TOKENIZER`          | `tokenizer.name_or_path`      | the embedded demo tokenizer               |
| `COLLATE_TOKENIZER_REVISION` | `tokenizer.revision`          | none                                      |
| `COLLATE_CHAT_TEMPLATE`      | `tokenizer.chat_template`     | the tokenizer's own                       |
| `COLLATE_TRUST_REMOTE_CODE`  | `tokenizer.trust_remote_code` | false (read when the code loads: 1/true/yes) |
| `COLLATE_MAX_LENGTH`         | `packing.max_length`          | 8192                                      |
| `COLLATE_LABELS`             | `packing.labels`              | all                                       |
| `COLLATE_PACKING`            | `packing.packing`             | bfd                                       |
| `COLLATE_OVERLONG`           | `packing.overlong`            | truncate                                  |
| `COLLATE_STRICT`             | `packing.strict`              | false (read when the code loads)          |
| `COLLATE_MAX_LINE_BYTES`     | `packing.max_line_bytes`      | 8388608 (8 MiB)                           |
| `COLLATE_RENDER_TIMEOUT`     | `tokenizer.render_timeout_seconds` | 5 (seconds per conversation; read when the code loads) |
| `COLLATE_RENDER_MAX_CHARS`   | `tokenizer.render_max_chars`  | 33554432 (32 Mi characters)               |

The output folder defaults to the working folder rather than DAGSTER_HOME: `dagster dev` without
DAGSTER_HOME uses a temporary home it deletes on exit, and the `collate` CLI writes beside the user too.
"""

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr
from upath import UPath

from collate_assets.core import DEFAULT_MAX_LINE_BYTES, EXTENSIONS, CollateError, CollateSettings, load_tokenizer, tokenizer_fingerprint
from collate_assets.core.reader import INPUT_PATTERNS, INPUT_SUFFIXES, input_file_problem
from collate_assets.core.settings import DEFAULT_RENDER_MAX_CHARS, DEFAULT_RENDER_SECONDS
from collate_assets.core.template_limits import RenderLimits
from collate_assets.core.writers import fit_name, output_folder_problem

from .partitions import key_to_file_name
from .partitions import output_stem as _output_stem

DEFAULT_OUTPUT_DIR = "collate_output"
LOCAL_PROTOCOLS = ("", "file", "local")


def _input_file_name(partition_key: str) -> str:
    """The input file name of a partition key: a bare input file name (INPUT_SUFFIXES), or CollateError."""
    try:
        name = key_to_file_name(partition_key)
    except ValueError as exc:
        raise CollateError(
            f"partition key {partition_key!r} does not name a file of the input folder ({exc}); partitions "
            "are made from the files of the input folder (by input_files_sensor or register_partitions), "
            "not typed by hand"
        ) from exc
    if not name.endswith(INPUT_SUFFIXES):
        raise CollateError(f"partition key {partition_key!r} does not name an input file ({INPUT_PATTERNS})")
    return name


def output_stem(partition_key: str) -> str:
    """The stem outputs of a partition are named after; CollateError for a key no input file could have."""
    _input_file_name(partition_key)
    stem = _output_stem(partition_key)
    if "/" in stem or "\0" in stem:  # cannot happen for a bare file name; never write elsewhere
        raise CollateError(f"partition key {partition_key!r} gives an unsafe output name {stem!r}")
    return stem


def is_local(path: UPath) -> bool:
    return path.protocol in LOCAL_PROTOCOLS


def local_path(path: UPath) -> Path:
    """A local UPath (plain or file://) as a pathlib.Path."""
    return Path(path.path)


class CollatePaths(dg.ConfigurableResource):
    """Where input files are read and outputs written.

    Layout of one partition (input file `<name>.jsonl`, `.jsonl.gz`, `.jsonl.zst`, `.json` or `.parquet`):

        <output_dir>/<format>/<name>.<ext>      packed rows (arrow, parquet, msgpack, jsonl)
        <spill_dir>/<name>.arrow                tokenized sequences (Arrow IPC file)
        <spill_dir>/<name>.rejects.jsonl        records that could not be used, with the reason
        <spill_dir>/<name>.manifest.json        how the spill was made (input hash, tokenizer, settings, stats)
        <spill_dir>/<name>.<format>.packed.json what each packed file was written from (size, lineage, stats)

    With `layout="flat"` (what the `collate` command uses, collate-rs's layout) packed files are
    `<output_dir>/<name>.<ext>` and the rejects file sits beside them as `<name>.rejects.jsonl`.
    """

    input_dir: str = Field(
        description="Folder of input files: *.jsonl, *.jsonl.gz, *.jsonl.zst, *.json, *.parquet (subfolders are not scanned)."
    )
    output_dir: str = Field(
        description="Folder or URL for packed outputs: a local path, file://, or any fsspec URL (s3://, gs://, memory://)."
    )
    spill_dir: str | None = Field(
        default=None,
        description="Local folder for tokenized spill files; default <output_dir>/_tokenized when the output is local.",
    )

    layout: str = Field(
        default="by_format",
        description="by_format: <output_dir>/<format>/<name>.<ext>; flat: <output_dir>/<name>.<ext> with rejects beside.",
    )

    def input_path(self, partition_key: str) -> Path:
        """The input file of a partition: always directly inside `input_dir`.

        A symlink there that resolves outside `input_dir` is refused (CollateError); a missing file
        or a folder is left for the caller to report.
        """
        path = Path(self.input_dir) / _input_file_name(partition_key)
        if path.is_symlink():
            problem = input_file_problem(path, Path(self.input_dir))
            if problem is not None and "outside the input folder" in problem:
                raise CollateError(f"input {path} for partition {partition_key!r} {problem}: refused")
        return path

    def output_root(self) -> UPath:
        return UPath(self.output_dir)

    def check_folders(self) -> None:
        """CollateError when an output or spill folder is the input folder or inside it."""
        folders = [self.spill_root()]
        if is_local(self.output_root()):
            folders.insert(0, local_path(self.output_root()))
        for folder in folders:
            problem = output_folder_problem(Path(self.input_dir), folder)
            if problem is not None:
                raise CollateError(f"paths: {problem}; set another output_dir / spill_dir")

    def file_name(self, partition_key: str, suffix: str) -> str:
        """`<stem><suffix>` of a partition, shortened if too long for a file name."""
        return fit_name(output_stem(partition_key), suffix)

    def output_path(self, partition_key: str, fmt: str) -> UPath:
        """`<output_dir>[/<fmt>]/<stem><ext>`: the stem of a bare file name, so never outside output_dir."""
        name = self.file_name(partition_key, EXTENSIONS[fmt])
        if self.layout == "flat":
            return self.output_root() / name
        if self.layout != "by_format":
            raise CollateError(f"paths.layout must be by_format or flat; got {self.layout!r}")
        return self.output_root() / fmt / name

    def spill_root(self) -> Path:
        if self.spill_dir:
            return Path(self.spill_dir)
        root = self.output_root()
        if is_local(root):
            return local_path(root) / "_tokenized"
        # The engine memory-maps spills, so they stay on local disk next to a remote output.
        tag = hashlib.sha256(self.output_dir.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / "collate_spill" / tag

    def spill_path(self, partition_key: str) -> Path:
        return self.spill_root() / self.file_name(partition_key, ".arrow")

    def rejects_path(self, partition_key: str) -> Path:
        name = self.file_name(partition_key, ".rejects.jsonl")
        if self.layout == "flat" and is_local(self.output_root()):
            return local_path(self.output_root()) / name
        return self.spill_root() / name

    def manifest_path(self, partition_key: str) -> Path:
        return self.spill_root() / self.file_name(partition_key, ".manifest.json")


class TokenizerResource(dg.ConfigurableResource):
    """The Hugging Face fast tokenizer and chat template that turn conversations into tokens.

    Loaded on first use and kept on this resource instance, so a step loads it once.
    """

    name_or_path: str = Field(description="Hub id (org/name, read from the local HF cache) or a local tokenizer folder.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    chat_template: str | None = Field(default=None, description="Path to a Jinja chat template replacing the tokenizer's.")
    trust_remote_code: bool = Field(default=False, description="Run the tokenizer repository's own code (only if you trust it).")
    render_timeout_seconds: float = Field(
        default=DEFAULT_RENDER_SECONDS,
        description="Longest time the chat template may take to render one conversation; longer ones are rejected.",
    )
    render_max_chars: int = Field(
        default=DEFAULT_RENDER_MAX_CHARS,
        description="Most characters (or items) anything the chat template makes for one conversation may have.",
    )

    _tokenizer: Any = PrivateAttr(default=None)
    _fingerprint: str | None = PrivateAttr(default=None)

    def load(self):
        """The tokenizer (raises CollateError with a message fit for a user)."""
        if self._tokenizer is None:
            if self.trust_remote_code:
                dg.get_dagster_logger().warning(
                    f"trust_remote_code is ON for tokenizer {self.name_or_path!r}: its repository code will run"
                )
            self._tokenizer = load_tokenizer(
                self.name_or_path,
                revision=self.revision,
                chat_template=self.chat_template,
                trust_remote_code=self.trust_remote_code,
                render_limits=self.render_limits(),
            )
        return self._tokenizer

    def render_limits(self) -> RenderLimits:
        try:
            return RenderLimits(seconds=float(self.render_timeout_seconds), max_chars=int(self.render_max_chars))
        except ValueError as exc:
            raise CollateError(f"tokenizer settings: {exc}") from exc

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = tokenizer_fingerprint(self.load())
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """Identity for metadata; never credentials (the hub token is transformers' business)."""
        return {
            "name": self.name_or_path,
            "revision": self.revision,
            "chat_template": self.chat_template,
            "trust_remote_code": self.trust_remote_code,
            "fingerprint": self.fingerprint(),
        }


class PackingSettings(dg.ConfigurableResource):
    """How conversations become training rows: row length, label mask, packing and overlong policy."""

    max_length: int = Field(default=8192, description="Tokens per packed row (and per conversation).")
    labels: str = Field(default="all", description="all: train on every token; assistant: only assistant turns.")
    packing: str = Field(default="bfd", description="bfd: best-fit decreasing; greedy: next-fit decreasing.")
    overlong: str = Field(
        default="truncate", description="Conversations longer than max_length: truncate, drop, split or error."
    )
    strict: bool = Field(default=False, description="Fail on the first bad input line instead of rejecting it.")
    max_line_bytes: int = Field(
        default=DEFAULT_MAX_LINE_BYTES, description="Input lines longer than this are rejected unparsed."
    )
    reasoning_turns: str = Field(
        default="per-turn",
        description="Reasoning the template drops from earlier turns: per-turn trains each such turn in a sequence "
        "of its own; as-rendered trains what the template renders.",
    )
    train_empty_think: bool = Field(
        default=False, description="labels=assistant: also train the empty thinking block a template inserts."
    )

    def to_settings(self) -> CollateSettings:
        """The engine's settings; a bad value raises CollateError naming the allowed ones."""
        try:
            return CollateSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(CollateSettings)})
        except ValueError as exc:
            raise CollateError(f"packing settings: {exc}") from exc


def _env(name: str, default):
    """`dg.EnvVar(name)` when the variable is set (resolved in each run), else the default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def _env_flag(name: str) -> bool:
    # Dagster has no boolean EnvVar, so flags are read when the code location loads.
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """The `paths`, `tokenizer` and `packing` resources, from COLLATE_* variables or the demo defaults."""
    from collate_assets.sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR

    return {
        "paths": CollatePaths(
            input_dir=_env("COLLATE_INPUT_DIR", str(DEMO_INPUT_DIR)),
            output_dir=_env("COLLATE_OUTPUT_DIR", os.path.abspath(DEFAULT_OUTPUT_DIR)),
            spill_dir=_env("COLLATE_SPILL_DIR", None),
        ),
        "tokenizer": TokenizerResource(
            name_or_path=_env("COLLATE_TOKENIZER", str(DEMO_TOKENIZER_DIR)),
            revision=_env("COLLATE_TOKENIZER_REVISION", None),
            chat_template=_env("COLLATE_CHAT_TEMPLATE", None),
            trust_remote_code=_env_flag("COLLATE_TRUST_REMOTE_CODE"),
            render_timeout_seconds=(
                float(os.environ["COLLATE_RENDER_TIMEOUT"]) if os.environ.get("COLLATE_RENDER_TIMEOUT") else DEFAULT_RENDER_SECONDS
            ),
            render_max_chars=(
                dg.EnvVar.int("COLLATE_RENDER_MAX_CHARS") if os.environ.get("COLLATE_RENDER_MAX_CHARS") else DEFAULT_RENDER_MAX_CHARS
            ),
        ),
        "packing": PackingSettings(
            max_length=dg.EnvVar.int("COLLATE_MAX_LENGTH") if os.environ.get("COLLATE_MAX_LENGTH") else 8192,
            labels=_env("COLLATE_LABELS", "all"),
            packing=_env("COLLATE_PACKING", "bfd"),
            overlong=_env("COLLATE_OVERLONG", "truncate"),
            max_line_bytes=(
                dg.EnvVar.int("COLLATE_MAX_LINE_BYTES")
                if os.environ.get("COLLATE_MAX_LINE_BYTES")
                else DEFAULT_MAX_LINE_BYTES
            ),
            strict=_env_flag("COLLATE_STRICT"),
            reasoning_turns=_env("COLLATE_REASONING_TURNS", "per-turn"),
            train_empty_think=_env_flag("COLLATE_TRAIN_EMPTY_THINK"),
        ),
    }
