"""`CollateDataset`: a Dagster Component, so a dataset is added by writing a `defs.yaml`.

    # <datasets folder>/smollm2_chat/defs.yaml
    type: collate_assets.defs.component.CollateDataset
    attributes:
      input_dir: ../../data/chats/*.jsonl     # a folder, one file, or folder/glob
      tokenizer: ../../tokenizers/SmolLM2-135M-Instruct
      max_length: 4096
      labels: assistant
      formats: [arrow, parquet]               # or "arrow,parquet"

Every dataset gets its own definitions (`collate_assets.defs.dataset.build_dataset_defs`): asset keys
prefixed `[name, ...]`, asset group `name`, partitions `<name>_input_files`, resource
`collate_<name>`, sensors and job `<name>__...`. `name` defaults to the folder of the defs.yaml.

The attributes are the fields of `collate_assets.core.CollateSettings` (same names, same defaults,
same validation: a bad value fails the load with a message naming the field), plus `name`. The
model is generated from those fields, never copied. Differences from the `COLLATE_*` variables of
the default dataset:

- relative paths (input_dir, output_dir, spill_dir, chat_template, and a tokenizer that starts with
  `.` or names an existing folder there) are relative to the folder of the defs.yaml;
- output_dir defaults to `collate_output/<name>` in the working directory the code location starts
  in (the default dataset writes to `collate_output`), so datasets never write over each other's files;
- the `COLLATE_*` variables are not read: write `{{ env('X') }}` (fails when X is unset),
  `{{ env('X', 'default') }}` or `{{ env.X }}` (null when unset) to take a value from the environment.

`load_datasets(folder)` loads every defs.yaml under a folder with Dagster's own component loader;
`collate_assets.definitions` calls it for `$COLLATE_DATASETS_DIR`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import types
import warnings
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pydantic
import yaml
from pydantic import Field

from collate_assets.core import CollateSettings
from collate_assets.core.settings import DEFAULT_OUTPUT_DIR, MAX_LENGTH_CEILING, field_type, settings_fields

from .dataset import build_dataset_defs

TYPE_NAME = "collate_assets.defs.component.CollateDataset"
# Dagster's rule for group names (the strictest of the names a dataset's name goes into).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
# Fields holding a local path (an fsspec URL such as s3://... is left as it is).
PATH_FIELDS = ("input_dir", "output_dir", "spill_dir", "chat_template")
def _attribute(field: dataclasses.Field) -> tuple[Any, Any]:
    """The YAML attribute of a `CollateSettings` field: its type (choices stay a Literal: the YAML schema
    lists them), default and help text."""
    help_text = field.metadata["help"]
    if field.metadata["choices"] and field.name != "formats":
        help_text += f" One of: {', '.join(field.metadata['choices'])}."
    if field.name == "formats":
        return list[str] | str, Field(default=",".join(field.default), description=help_text)  # (checked by parse_formats, one clear message)
    if field.name == "output_dir":
        help_text += f" Default here: {DEFAULT_OUTPUT_DIR}/<name>."
        return str | None, Field(default=None, description=help_text)
    return field_type(field), Field(default=field.default, description=help_text)


def _valid_name(value: str | None) -> str | None:
    """A dataset's or mix's name: letters, digits and _ (it prefixes asset keys and names the group)."""
    if value is not None and not NAME_PATTERN.match(value):
        raise ValueError(f"name must be letters, digits and _ only (it prefixes asset keys and names the group), got {value!r}")
    return value


def _default_name(folder: Path) -> str:
    """The folder's name as a dataset name: every character Dagster refuses in a group name becomes `_`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", folder.name) or "dataset"


def _local_path(value: str, base: Path) -> str:
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else base / path)


def _tokenizer_path(value: str, base: Path) -> str:
    """A local tokenizer folder relative to `base`, or a hub id (`org/name`) left as it is."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if value.startswith(".") or (base / path).exists():
        return os.path.normpath(base / path)
    return value


class _CollateDatasetBase(dg.Component, dg.Model, dg.Resolvable):
    """A collate dataset: chat files tokenized with one tokenizer and chat template, packed for training."""

    name: str | None = Field(
        default=None,
        description="The dataset's asset key prefix and asset group (letters, digits, _). "
        "Default: the name of the folder of the defs.yaml.",
    )

    _check_name = pydantic.field_validator("name")(classmethod(lambda cls, value: _valid_name(value)))

    @pydantic.model_validator(mode="after")
    def _check_settings(self):
        # The one validation of every setting: CollateSettings' own (paths are not looked at yet).
        self.collate_settings(Path.cwd(), self.name)
        return self

    def dataset_name(self, folder: Path) -> str:
        return self.name or _default_name(folder)

    def collate_settings(self, folder: Path, name: str | None = None) -> CollateSettings:
        """The settings of this dataset, relative paths resolved against `folder` (the defs.yaml's).

        ValueError naming the field when a value is not valid (CollateSettings' own validation).
        """
        name = name or self.dataset_name(folder)
        values = {f.name: getattr(self, f.name) for f in settings_fields()}
        for key in PATH_FIELDS:
            if values[key]:
                values[key] = _local_path(values[key], folder)
        if values["tokenizer"]:
            values["tokenizer"] = _tokenizer_path(values["tokenizer"], folder)
        if values["output_dir"] is None:
            values["output_dir"] = os.path.abspath(Path(DEFAULT_OUTPUT_DIR) / name)
        return CollateSettings(**values)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        folder = context.path
        name = self.dataset_name(folder)
        return build_dataset_defs(self.collate_settings(folder, name), name)

    @classmethod
    def get_spec(cls) -> dg.ComponentTypeSpec:
        return dg.ComponentTypeSpec(
            description="A chat dataset tokenized with one tokenizer and chat template and packed for "
            "padding-free training: its own asset group, key prefix, partitions and sensors.",
            tags=["collate", "tokenization", "packing"],
            produces=["asset", "asset_check", "sensor", "job", "resource"],
        )


class DatasetScaffoldParams(pydantic.BaseModel):
    """What `dg scaffold defs ... CollateDataset <path>` may fill in (`--input-dir`, `--tokenizer`, ...)."""

    name: str | None = None
    input_dir: str | None = None
    output_dir: str | None = None
    tokenizer: str | None = None


class CollateDatasetScaffolder(dg.Scaffolder[DatasetScaffoldParams]):
    """Writes a defs.yaml: the values given, then every other field commented out with its help."""

    @classmethod
    def get_scaffold_params(cls) -> type[DatasetScaffoldParams]:
        return DatasetScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[DatasetScaffoldParams]) -> None:
        if request.scaffold_format != "yaml":
            raise ValueError("CollateDataset is scaffolded as a defs.yaml only (--format yaml)")
        (request.target_path / "defs.yaml").write_text(
            defs_yaml_template(request.type_name, request.params.model_dump(exclude_none=True)), encoding="utf-8")


def defs_yaml_template(type_name: str = TYPE_NAME, values: dict[str, Any] | None = None) -> str:
    """A defs.yaml of a dataset: `values` set, every other attribute commented out at its default."""
    values = dict(values or {})
    lines = [
        "# A collate dataset (see collate_assets/defs/component.py). Relative paths are relative to this folder;",
        "# {{ env('X') }} reads the environment variable X (an error when unset).",
        f"type: {type_name}",
        "attributes:",
    ]
    for key, info in CollateDataset.model_fields.items():
        lines.append(f"  # {info.description}")
        if key in values:
            lines.append(f"  {_yaml_line(key, values[key])}")
        else:
            lines.append(f"  # {_yaml_line(key, info.default)}")
    return "\n".join(lines) + "\n"


def _yaml_line(key: str, value: Any) -> str:
    return yaml.safe_dump({key: value}, default_flow_style=True, width=1_000_000).strip()[1:-1]


CollateDataset: type[dg.Component] = dg.scaffold_with(CollateDatasetScaffolder)(  # type: ignore[assignment]
    pydantic.create_model(
        "CollateDataset",
        __base__=_CollateDatasetBase,
        __module__=__name__,
        __doc__=_CollateDatasetBase.__doc__,
        **{field.name: _attribute(field) for field in settings_fields()},
    )
)
# Only the generated class is a component type: `dg list components` lists every non-abstract
# Component of this module, and the base alone has no settings.
del _CollateDatasetBase


class MixSourceModel(dg.Model, dg.Resolvable):
    """One source of a mix: a dataset of the code location and how much of it: one of weight (default 1),
    ratio or tokens, counted in the mix's budget_by tokens; 0 in any of them leaves the source out."""

    dataset: str = Field(description="The name of a dataset of the code location (its key prefix); "
                         "`default` for the dataset of the COLLATE_* variables.")
    weight: float | None = Field(default=None, description="Default 1. 2.5: every training conversation twice, then "
                                 "conversations in a seeded order until half the source's tokens more are taken (to within "
                                 "one conversation); 0.3: 30 % of its tokens the same way; 0: the source is left out "
                                 "(not read: it removes nothing from the others). One of weight, ratio, tokens.")
    ratio: float | None = Field(default=None, description="Instead of a weight: this source's share of the training "
                                "tokens (shares are ratio / sum of ratios; give every source a ratio, no weight or tokens). "
                                "The mix is the largest in those shares with no source repeated over its max_repeats; "
                                "each share is met to within one conversation. 0: the source is left out.")
    tokens: int | None = Field(default=None, description="Instead of a weight: this many training tokens of the source "
                               "(to within one conversation; may be combined with weight sources). More than the source "
                               "has times max_repeats: that much, reported short (the budgets_met check fails). "
                               "0: the source is left out.")
    max_repeats: float | None = Field(default=None, description="With ratio or tokens: at most this many times the "
                                      "source's training tokens (default 1: no conversation twice).")


class CollateMix(dg.Component, dg.Model, dg.Resolvable):
    """A training set from several datasets: weighted, deduplicated, split, packed together and shuffled."""

    name: str | None = Field(default=None, description="The mix's asset key prefix and group ([name, training_set]). "
                             "Default: the name of the folder of the defs.yaml.")
    sources: list[MixSourceModel] = Field(description="The datasets mixed, each with its weight, ratio or tokens budget.")
    output_dir: str | None = Field(default=None, description="Local folder of the shards and training_set.json. "
                                   f"Default: {DEFAULT_OUTPUT_DIR}/<name>.")
    seed: int = Field(default=0, description="Seed of the weighted sampling and of the row order.")
    validation_share: float = Field(default=0.0, description="Share of the conversations held out for "
                                    "validation, chosen by a hash of their content (stable when files are added).")
    shard_rows: int = Field(default=1000, description="Rows per Arrow shard.")
    max_length: int | None = Field(default=None, description="Tokens per row. Default: the sources' max_length "
                                   "(the largest; none may exceed the mix's).")
    budget_by: Literal["trained", "all"] = Field(default="trained", description="What ratios, tokens budgets and "
                                                 "fractional weights count: trained tokens (labels != -100) or all "
                                                 "tokens (prompts, system text and template included).")
    balance_ranks: str | None = Field(default=None, description="WxB (e.g. 8x2): order the train rows so that each "
                                      "step of W data-parallel ranks x B rows, read without shuffling, has near-equal "
                                      "attention cost (sum of seq_lengths squared). Default: rows shuffled as they come.")
    balance_reader: Literal["sampler", "trainer"] = Field(default="sampler", description="With balance_ranks, how the "
                                                          "trainer deals rows to ranks: sampler (DistributedSampler, "
                                                          "shuffle=False) or trainer (Trainer, sequential sampling).")
    decontaminate: list[str] = Field(default_factory=list, description="Evaluation files or folders (JSONL, JSON, "
                                     "Parquet; relative to this defs.yaml): conversations sharing an n-gram of words "
                                     "with any of their strings (prompts and answers) are dropped, counted per source "
                                     "and per file.")
    decontaminate_n: int = Field(default=13, description="Words per n-gram of the decontamination.")
    decontaminate_min_matches: int = Field(default=1, description="Distinct n-grams a conversation must share to be dropped.")
    max_contaminated_share: float = Field(default=0.01, description="The blocking check `decontamination` fails when "
                                          "more than this share of the conversations was contaminated.")
    near_duplicates: float | None = Field(default=None, description="Jaccard threshold (e.g. 0.8) of near-duplicate "
                                          "conversations (MinHash-LSH over 5-word shingles): of each cluster the first "
                                          "(by source order, file, line) is kept. Default: off.")

    _check_name = pydantic.field_validator("name")(classmethod(lambda cls, value: _valid_name(value)))

    @pydantic.model_validator(mode="after")
    def _check_sources(self):
        names = [source.dataset for source in self.sources]
        if not names:
            raise ValueError("sources: a mix needs at least one dataset")
        if len(set(names)) != len(names):
            raise ValueError(f"sources: a dataset is listed twice ({names})")
        for source in self.sources:
            given = [key for key in ("weight", "ratio", "tokens") if getattr(source, key) is not None]
            if len(given) > 1:
                raise ValueError(f"sources: {source.dataset!r} gives {' and '.join(given)}: give one of weight, ratio or tokens")
            for key in ("weight", "ratio", "tokens"):
                value = getattr(source, key)
                if value is not None and (not value >= 0 or value == float("inf")):
                    raise ValueError(f"sources: the {key} of {source.dataset!r} must be a number >= 0, got {value!r}")
            if source.max_repeats is not None:
                if source.ratio is None and source.tokens is None:
                    raise ValueError(f"sources: {source.dataset!r} gives max_repeats without ratio or tokens "
                                     "(with a weight, the weight is the number of copies)")
                if not 1 <= source.max_repeats < float("inf"):
                    raise ValueError(f"sources: the max_repeats of {source.dataset!r} must be a number >= 1, "
                                     f"got {source.max_repeats!r}")
        ratios = [source.ratio for source in self.sources]
        if any(r is not None for r in ratios) and (None in ratios or not sum(ratios) > 0):
            raise ValueError("sources: give every source a ratio (not all 0), or none (ratios are shares of the "
                             "training tokens: they do not mix with weights or tokens budgets)")
        if all(0 in (source.weight, source.ratio, source.tokens) for source in self.sources):
            raise ValueError("sources: every source is left out (weight, ratio or tokens 0)")
        if not 0 <= self.validation_share < 1:
            raise ValueError(f"validation_share must be at least 0 and below 1, got {self.validation_share!r}")
        if self.shard_rows < 1:
            raise ValueError(f"shard_rows must be at least 1, got {self.shard_rows!r}")
        if self.max_length is not None and not 2 <= self.max_length <= MAX_LENGTH_CEILING:
            raise ValueError(f"max_length must be from 2 to {MAX_LENGTH_CEILING}, got {self.max_length!r}")
        if self.balance_ranks is not None:
            from collate_assets.core.settings import parse_balance_ranks

            parse_balance_ranks(self.balance_ranks)
        if self.decontaminate_n < 1 or self.decontaminate_min_matches < 1:
            raise ValueError("decontaminate_n and decontaminate_min_matches must be at least 1")
        if not 0 <= self.max_contaminated_share <= 1:
            raise ValueError(f"max_contaminated_share must be a share from 0 to 1, got {self.max_contaminated_share!r}")
        if self.near_duplicates is not None and not 0 < self.near_duplicates <= 1:
            raise ValueError(f"near_duplicates must be a Jaccard threshold in (0, 1], got {self.near_duplicates!r}")
        return self

    def mix_definition(self, folder: Path):
        from .mix import MixDefinition, MixSourceDefinition

        name = self.name or _default_name(folder)
        output = _local_path(self.output_dir, folder) if self.output_dir else os.path.abspath(Path(DEFAULT_OUTPUT_DIR) / name)
        return MixDefinition(
            name=name, output_dir=output, sources=tuple(
                MixSourceDefinition(s.dataset, 1.0 if s.weight is None else s.weight, s.ratio, s.tokens, s.max_repeats)
                for s in self.sources),
            seed=self.seed, validation_share=self.validation_share, shard_rows=self.shard_rows, max_length=self.max_length,
            budget_by=self.budget_by, balance_ranks=self.balance_ranks, balance_reader=self.balance_reader,
            decontaminate=tuple(_local_path(p, folder) for p in self.decontaminate), decontaminate_n=self.decontaminate_n,
            decontaminate_min_matches=self.decontaminate_min_matches, max_contaminated_share=self.max_contaminated_share,
            near_duplicates=self.near_duplicates,
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from .mix import build_mix_defs

        return build_mix_defs(self.mix_definition(context.path))

    @classmethod
    def get_spec(cls) -> dg.ComponentTypeSpec:
        return dg.ComponentTypeSpec(
            description="One shuffled training set from several collate datasets, with weights, ratios or token "
            "budgets, deduplication and a validation split.",
            tags=["collate", "mixing"],
            produces=["asset", "asset_check", "sensor"],
        )


def _defs_module(folder: Path) -> types.ModuleType:
    """A namespace package over `folder`, so Dagster's loader can walk it (and import any .py in it)."""
    name = "_collate_datasets_" + hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
    return module


def _root_cause(exc: BaseException) -> str:
    """What went wrong under Dagster's ComponentTreeException wrappers, one line per problem."""
    cause: BaseException | None = exc
    while cause is not None and type(cause).__name__ == "ComponentTreeException":
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return str(exc)
    if isinstance(cause, pydantic.ValidationError):
        problems = []
        for error in cause.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where and not message.startswith(f"{where} ") else message)
        return "; ".join(problems)
    return f"{type(cause).__name__}: {cause}"


def load_datasets(folder: Path) -> dg.Definitions:
    """The definitions of every dataset Component under `folder` (each `defs.yaml`, at any depth).

    `folder` need not be a Python package: Dagster's component tree is built over a namespace
    module for it (`{{ context.project_root }}` in a defs.yaml is `folder`). Two datasets writing
    to the same output folder are refused (their files would overwrite each other).
    """
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise dg.DagsterInvalidDefinitionError(f"COLLATE_DATASETS_DIR {folder} is not a folder")
    tree = dg.ComponentTree.from_module(defs_module=_defs_module(folder), project_root=folder)
    # Dagster's component loader attaches code references and owners with classes still in beta in
    # 1.13 (LocalFileCodeReference, CodeReferencesMetadataValue): its own business, not the user's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        try:
            defs = tree.build_defs()
        except Exception as exc:
            # Dagster's message shows where (the component tree); the cause says what (the field).
            raise dg.DagsterInvalidDefinitionError(f"{_root_cause(exc)}\n{exc}") from exc
    _check_mix_sources(defs)
    writers: dict[str, str] = {}  # output or spill folder -> the resource of the dataset writing there
    for resource_key, resource in (defs.resources or {}).items():
        if not resource_key.startswith("collate_") or not hasattr(resource, "files"):
            continue
        files = resource.files()
        for where in {str(files.output_root()), str(files.spill_root())}:
            other = writers.setdefault(where, resource_key)
            if other != resource_key:
                raise dg.DagsterInvalidDefinitionError(
                    f"datasets {other!r} and {resource_key!r} write to the same folder {where}: give each its own output_dir"
                )
    return defs


def _check_mix_sources(defs: dg.Definitions) -> None:
    """Every source a mix names is a dataset of the code location (or `default`)."""
    known = {key.removeprefix("collate_") for key in (defs.resources or {}) if key.startswith("collate_")}
    for asset in defs.assets or []:
        if not isinstance(asset, dg.AssetsDefinition) or list(asset.keys)[0].path[-1] != "training_set":
            continue
        for needed in asset.required_resource_keys:
            if needed.startswith("collate_") and needed.removeprefix("collate_") not in known:
                raise dg.DagsterInvalidDefinitionError(
                    f"mix {list(asset.keys)[0].path[0]!r}: no dataset named {needed.removeprefix('collate_')!r} "
                    f"(datasets: default, {', '.join(sorted(known)) or 'none other'})"
                )


__all__ = ["CollateDataset", "CollateMix", "load_datasets", "defs_yaml_template"]
