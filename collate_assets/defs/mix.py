"""`training_set`: one training set from several datasets, as an asset (the engine: core/pack/mix.py).

A mix is defined by a `CollateMix` Component (component.py): its sources are datasets of the code
location by name (`default` is the one of the COLLATE_* variables), each with a weight, a ratio or a
tokens budget (0 leaves it out: no dependency, not read). Its asset,
`[<mix name>, training_set]`, depends on every partition of each source's `tokenized_conversations`,
reads their spills (nothing is tokenized again), and writes Arrow shards and `training_set.json` to
the mix's output folder, with blocking checks read back from the shards it wrote.

Automation: it runs when every partition of its sources is tokenized and one of them was updated
since (a file added or edited re-tokenizes that file alone, then the mix), or when the mix's own
settings change (they are its code version). A source partition that is missing (a file that
failed) holds the mix back until it is fixed or its file removed, and so does an edit the input
files sensor observed that is not tokenized yet.

The mix follows the folders, not only the registered partitions: before anything is written, each
source's input folder as it is now is compared with its partitions and what their spills were made
from (`folder_drift`); a file added, deleted or edited since fails the run with the files and what to
do (`out_of_sync_failure`), and the previous training set stays as it was.
"""


import dataclasses
import hashlib
import json
import warnings

import dagster as dg

from collate_assets.core import CollateError, read_packed
from collate_assets.core.tokens.audit import SupervisionAudit
from collate_assets.core.pack.mix import MANIFEST_NAME, MixSettings, MixSource, build_mix
from collate_assets.core.fs import shown
from collate_assets.core.plan import Plan, key_to_file_name, plan_inputs, split_shard_key
from collate_assets.core.read.reader import input_folder_and_pattern

from . import checks
from .assets import Dataset, manifest_for
from .automation import EVALUATION_SECONDS, InputChanged, automation_sensor, eager_from_the_start
from .files import DatasetFiles
from .sensors import sha256_now

DEFAULT_SOURCE = "default"  # the dataset of the COLLATE_* variables (no key prefix)
MIX_CODE_VERSION = "3"  # 2: budgets (ratio, tokens, weight met by a seeded selection), absent sources, duplicates by cause;
# 3: bfd is followed by fill_gaps (the mix packs with pack_flat; its version does not include PACK_CODE_VERSION)
MIX_CHECKS = {
    "rows_fit_max_length": "Every row of every shard has at most max_length tokens.",
    "sequence_boundaries": "position_ids restart at 0 at each sequence start and seq_lengths match them.",
    "labels_masked_at_starts": "labels are -100 at the first token of every packed sequence.",
    "tokens_conserved": "The tokens read back from the shards are those the weighted, deduplicated sources give.",
    "decontamination": "At most max_contaminated_share of the conversations share n-grams with the evaluation files "
                       "(those that do are dropped either way; above the share, something larger is wrong).",
    "budgets_met": "Every source got the tokens asked of it (its tokens budget, ratio or weight) to within its largest "
                   "conversation: a tokens budget over what the source has times max_repeats fails it.",
}


@dataclasses.dataclass(frozen=True)
class MixSourceDefinition:
    """One source of a mix: a dataset by name and how much of it (one of weight, ratio, tokens; see core/pack/mix.py)."""

    dataset: str
    weight: float = 1.0
    ratio: float | None = None
    tokens: int | None = None
    max_repeats: float | None = None

    def __iter__(self):
        """(dataset, weight, ratio), as a source was given before tokens budgets: `name, weight, ratio = source`."""
        return iter((self.dataset, self.weight, self.ratio))

    @property
    def absent(self) -> bool:
        """Left out of the mix (weight, ratio or tokens 0): not read, not a dependency."""
        return self.weight == 0 or self.ratio == 0 or self.tokens == 0

    def label(self) -> str:
        """What is asked of the source, as the asset description shows it."""
        if self.absent:
            return "absent"
        repeats = f", max_repeats {self.max_repeats:g}" if self.max_repeats is not None else ""
        if self.ratio is not None:
            return f"ratio {self.ratio:g}{repeats}"
        if self.tokens is not None:
            return f"tokens {self.tokens:,}{repeats}"
        return f"weight {self.weight:g}"


@dataclasses.dataclass(frozen=True)
class MixDefinition:
    name: str
    output_dir: str
    # MixSourceDefinition each; a tuple (dataset, weight, ratio) is taken as one
    sources: tuple[MixSourceDefinition, ...]
    seed: int = 0
    validation_share: float = 0.0
    shard_rows: int = 1000
    max_length: int | None = None  # None: the sources' own (they must agree)
    budget_by: str = "trained"  # ratios, tokens budgets and fractional weights count trained tokens, or all
    balance_ranks: str | None = None  # "WxB": train rows ordered for W ranks x B rows of equal attention cost
    balance_reader: str = "sampler"
    decontaminate: tuple[str, ...] = ()  # evaluation files or folders (core/pack/overlap.py)
    decontaminate_n: int = 13
    decontaminate_min_matches: int = 1
    max_contaminated_share: float = 0.01  # the blocking check decontamination fails above this share
    near_duplicates: float | None = None  # Jaccard threshold; None: off

    def mix_settings(self, max_length: int) -> MixSettings:
        return MixSettings(max_length=max_length, seed=self.seed, validation_share=self.validation_share,
                           shard_rows=self.shard_rows, budget_by=self.budget_by, balance_ranks=self.balance_ranks,
                           balance_reader=self.balance_reader, decontaminate=self.decontaminate,
                           decontaminate_n=self.decontaminate_n, decontaminate_min_matches=self.decontaminate_min_matches,
                           near_duplicates=self.near_duplicates)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(
            s if isinstance(s, MixSourceDefinition) else MixSourceDefinition(*s) for s in self.sources))

    def budget_of(self, dataset: str) -> dict:
        """The tokens budget and max_repeats of a source, as MixSource takes them."""
        source = next(s for s in self.sources if s.dataset == dataset)
        return {"tokens": source.tokens, "max_repeats": source.max_repeats}

    def key(self) -> dg.AssetKey:
        return dg.AssetKey([self.name, "training_set"])

    def source_dataset(self, source: str) -> Dataset:
        """A placeholder Dataset of a source: only its names (keys, resource, partitions) are used."""
        from collate_assets.core import CollateSettings

        return Dataset(CollateSettings(), None if source == DEFAULT_SOURCE else source)

    def code_version(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return f"{MIX_CODE_VERSION}.{hashlib.sha256(blob).hexdigest()[:12]}"


def mix_condition() -> dg.AutomationCondition:
    busy = dg.AutomationCondition.in_progress() | dg.AutomationCondition.any_deps_in_progress()
    # A source file whose latest observation (the input files sensor's) is not what it was tokenized from
    # holds the mix back, as a missing partition (a new file) does: the run would fail (`folder_drift`).
    # Evaluated last, so only when the mix would otherwise be requested (one query per source partition).
    in_sync = (~dg.AutomationCondition.any_deps_match(InputChanged())).with_label("no source file edited since it was tokenized")
    return (
        eager_from_the_start()  # a mix added where its sources are already built is built too
        | (dg.AutomationCondition.code_version_changed() & ~busy & ~dg.AutomationCondition.any_deps_missing())
        .with_label("mix settings changed")
    ) & in_sync


def build_mix_defs(mix: MixDefinition) -> dg.Definitions:
    sources = [mix.source_dataset(name) for name, *_ in mix.sources]
    # An absent source (weight, ratio or tokens 0) is no dependency: its files are not read, and its
    # partitions neither hold the mix back nor run it. Its resource is still required (its name is checked).
    present = [dataset for dataset, source in zip(sources, mix.sources) if not source.absent]
    key = mix.key()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        specs = [dg.AssetCheckSpec(name, asset=key, blocking=True, description=text) for name, text in MIX_CHECKS.items()
                 if name != "decontamination" or mix.decontaminate]

    @dg.asset(
        key=key,
        deps=[dataset.key("tokenized_conversations") for dataset in present],
        group_name=mix.name,
        kinds={"arrow", "huggingface"},
        code_version=mix.code_version(),
        automation_condition=mix_condition(),
        required_resource_keys={dataset.resource_key for dataset in sources},
        check_specs=specs,
        description=(
            "One training set from " + ", ".join(f"{source.dataset} ({source.label()})" for source in mix.sources)
            + ": absent sources (0) left out, exact duplicate conversations dropped across the others (counted by "
            "cause: identical input or identical after truncation), a validation split chosen by content hash, "
            f"each source's training conversations selected to its budget in {mix.budget_by} tokens (within one "
            "conversation, in a seeded order), packed together with best-fit decreasing, rows shuffled with the seed, and "
            f"written as Arrow shards of {mix.shard_rows} rows (`train-*.arrow`, `validation-*.arrow`) with `{MANIFEST_NAME}`."
        ),
    )
    def training_set(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        try:
            in_mix = dataclasses.replace(mix, sources=tuple(source for source in mix.sources if not source.absent))
            mix_sources, max_length = _sources(context, in_mix, present)
            read = {source.name: source for source in mix_sources}
            mix_sources = [read.get(s.dataset) or MixSource(name=s.dataset, weight=s.weight, spills=[], ratio=s.ratio,
                                                           **mix.budget_of(s.dataset)) for s in mix.sources]
            settings = mix.mix_settings(max_length)
            tokenizer = None
            if settings.decontaminate or settings.near_duplicates is not None:  # they read the text back
                tokenizer = getattr(context.resources, present[0].resource_key).load_tokenizer()
            stats = build_mix(mix_sources, mix.output_dir, settings, tokenizer=tokenizer)
        except (CollateError, ValueError) as exc:
            raise dg.Failure(description=shown(str(exc)), allow_retries=False) from exc
        results = _check_results(mix, stats, max_length)
        return dg.MaterializeResult(metadata=_metadata(mix, stats), check_results=results)

    return dg.Definitions(
        assets=[training_set],
        sensors=[automation_sensor(f"{mix.name}__mix_automation", dg.AssetSelection.assets(key), EVALUATION_SECONDS)],
    )


def _sources(context, mix: MixDefinition, datasets: list[Dataset]) -> tuple[list[MixSource], int]:
    """Each source's spills (every partition, tokenized with the current settings), and the row length.

    The mix follows the folders: each source's input folder as it is now must be what its partitions
    were tokenized from (`folder_drift`), else a `dg.Failure` says what differs, before anything is written.
    """
    out, tokenizers, lengths, drifts = [], {}, {}, {}
    for (name, weight, ratio), dataset in zip(mix.sources, datasets):
        settings = getattr(context.resources, dataset.resource_key).settings()
        files = DatasetFiles(settings)
        for folder in {str(files.output_root()), str(files.spill_root())}:
            if folder.rstrip("/") == str(mix.output_dir).rstrip("/"):
                raise CollateError(f"the mix's output_dir {mix.output_dir} is where dataset {name!r} writes: give the mix its own")
        keys = context.instance.get_dynamic_partitions(dataset.partitions.name)
        manifests = {key: manifest_for(files, key) for key in keys}
        drifts[name] = folder_drift(context.instance, dataset, settings, keys, manifests, name=name, log=context.log)
        if drifts[name]:
            continue  # every source is compared before the mix fails, so one failure names them all
        spills, fingerprints, audits = [], [], []
        for key in keys:
            manifest = manifests[key]  # tokenized from the file as it is now, with the current settings
            tokenizers.setdefault(manifest.tokenizer["fingerprint"], name)
            spills.append(manifest.spill_path)
            audits.append(manifest.stats.get("supervision"))
            fingerprints.append({"partition": key, "input_sha256": manifest.input_sha256,
                                 "settings": settings.fingerprint(), "tokenizer": manifest.tokenizer["fingerprint"]})
        lengths[name] = settings.max_length
        out.append(MixSource(name=name, weight=weight, spills=spills, fingerprints=fingerprints, ratio=ratio,
                             **mix.budget_of(name),
                             supervision=SupervisionAudit.merged(audits).to_dict()))
    if any(drifts.values()):
        raise out_of_sync_failure(mix, datasets, drifts)
    if len(tokenizers) > 1:
        raise CollateError(f"the sources were tokenized with different tokenizers ({', '.join(tokenizers.values())}): "
                           "a mix packs token ids of one vocabulary")
    max_length = mix.max_length or max(lengths.values())
    too_long = {name: length for name, length in lengths.items() if length > max_length}
    if too_long:
        raise CollateError(f"sources with a max_length over the mix's {max_length}: {too_long}")
    return out, max_length


@dataclasses.dataclass
class FolderDrift:
    """How a source's partitions, as the mix would read them, differ from its input folder now (partition keys)."""

    added: list[str] = dataclasses.field(default_factory=list)  # work items of the folder that are no partition yet
    deleted: list[str] = dataclasses.field(default_factory=list)  # partitions whose file is gone (or left out, see left_out)
    untokenized: list[str] = dataclasses.field(default_factory=list)  # no spill made with the current settings
    changed: list[str] = dataclasses.field(default_factory=list)  # tokenized from other bytes than the file's now
    left_out: dict[str, str] = dataclasses.field(default_factory=dict)  # file name -> why the plan leaves it out

    def __bool__(self) -> bool:
        return bool(self.added or self.deleted or self.untokenized or self.changed)


def folder_drift(instance: dg.DagsterInstance, dataset: Dataset, settings, keys: list[str], manifests: dict,
                 *, name: str, log=None) -> FolderDrift:
    """Compare a source's input folder as it is now with its registered partitions and their spills.

    The folder is scanned with `core.plan.plan_inputs` and the dataset's settings, the keys the input
    files sensor registers (a shard each for a file over shard_mb). A partition in both is current when its
    manifest was made with the current settings from the file's bytes as they are now: the sha256 of the
    file now is its latest `raw_conversations` observation's data version when that observation saw the
    file's size and mtime (as the sensor judges a change), else the file is read (`sensors.sha256_now`).

    Files the plan leaves out are treated as the dataset treats them: entries that are not input files,
    and the second of two files whose outputs would clash, are no partitions (the sensor warns and
    drops a partition it had), so they are logged and, when still registered, counted with `deleted`.
    A missing input folder fails (CollateError): nothing says which files the source has; an empty one
    has none.
    """
    source = settings.input_path()
    try:
        plan = plan_inputs(source, settings.shard_bytes())
    except CollateError as exc:
        if not input_folder_and_pattern(source)[0].is_dir():
            raise CollateError(f"source {name!r}: {exc}") from exc
        plan = Plan({}, [], [])  # a folder with no input file: every partition's file is gone
    drift = FolderDrift(left_out={path.name: reason for path, reason in plan.failures})
    registered = set(keys)
    if log is not None:
        for warning in plan.warnings:
            log.warning(f"source {name!r}: {warning}")
        for file_name, reason in drift.left_out.items():
            log.warning(f"source {name!r}: {shown(file_name)} {reason}")
    drift.added = [key for key in plan.items if key not in registered]
    raw_key = dataset.key("raw_conversations")
    fingerprint = settings.fingerprint()
    hashes: dict = {}  # the shards of a file share its sha256: read it at most once
    for key in keys:
        path = plan.items.get(key)
        if path is None:
            drift.deleted.append(key)
            continue
        manifest = manifests.get(key)
        if manifest is None or manifest.collate_settings().fingerprint() != fingerprint:
            drift.untokenized.append(key)
            continue
        try:
            now = sha256_now(instance, raw_key, key, path, hashes)
        except FileNotFoundError:  # deleted since the scan
            drift.deleted.append(key)
            continue
        if now != manifest.input_sha256:
            drift.changed.append(key)
    return drift


def _file_names(keys: list[str], limit: int = 5) -> str:
    """The input files of `keys` (a split file once for all its shards), at most `limit` of them."""
    names: dict[str, None] = {}
    for key in keys:
        try:
            names[shown(key_to_file_name(split_shard_key(key)[0]))] = None
        except ValueError:
            names[key] = None
    listed = list(names)
    more = len(listed) - limit
    return ", ".join(listed[:limit]) + (f" and {more} more" if more > 0 else "")


def out_of_sync_failure(mix: MixDefinition, datasets: list[Dataset], drifts: dict[str, FolderDrift]) -> dg.Failure:
    """The mix's failure when a source's partitions are not its folder as it is now: per source and cause,
    the files (a few) and what to do; every partition key in the metadata."""
    by_name = {name: dataset for (name, *_), dataset in zip(mix.sources, datasets)}
    reasons, keys = [], {}
    for name, drift in drifts.items():
        if not drift:
            continue
        dataset = by_name[name]
        sensor = dataset.op_name("input_files_sensor")
        tokenized = dataset.key("tokenized_conversations").to_user_string()
        both = f"`collate --dataset {name}` does both"
        causes = []
        if drift.added:
            causes.append(f"new, not partitions yet: {_file_names(drift.added)} (the input files sensor {sensor} "
                          f"registers them, then the automation tokenizes them; {both})")
        if drift.deleted:
            gone = {_file_names([key]) for key in drift.deleted}
            why = [f"{shown(file)} {reason}" for file, reason in drift.left_out.items() if shown(file) in gone]
            causes.append(f"gone from the folder{' or left out' if why else ''}: {_file_names(drift.deleted)}"
                          + (f" ({'; '.join(why)})" if why else "")
                          + f" (the input files sensor {sensor} drops their partitions)")
        if drift.changed:
            causes.append(f"edited since they were tokenized: {_file_names(drift.changed)} (materialize {tokenized} "
                          f"for them; the automation does once the input files sensor {sensor} has observed the edit; {both})")
        if drift.untokenized:
            causes.append(f"not tokenized with the current settings: {_file_names(drift.untokenized)} "
                          f"(materialize {tokenized} for them)")
        reasons.append(f"source {name!r}: " + "; ".join(causes))
        keys[name] = {cause: getattr(drift, cause)[:1000] for cause in ("added", "deleted", "changed", "untokenized")
                      if getattr(drift, cause)}
    description = ("the sources' partitions are not what their input folders hold now, so the training set was not "
                   "built (the previous one is left as it was). " + ". ".join(reasons))
    return dg.Failure(description=shown(description), allow_retries=False,
                      metadata={"out_of_sync": dg.MetadataValue.json(keys)})


def _check_results(mix: MixDefinition, stats, max_length: int) -> list[dg.AssetCheckResult]:
    folder = mix.output_dir
    tokens = sequences = 0
    reports = []
    for name in stats.files:
        report = checks.verify_packed_rows(read_packed(f"{folder}/{name}", "arrow", numpy=True), max_length)
        reports.append(report)
        tokens += report.tokens
        sequences += report.sequences
    expected_tokens = sum(s["train_tokens"] + s["validation_tokens"] for s in stats.sources.values())
    expected_sequences = sum(split["sequences"] for split in stats.splits.values())

    def total(field):
        return sum(getattr(r, field) for r in reports)

    return [
        dg.AssetCheckResult(check_name="rows_fit_max_length", passed=total("too_long") == 0,
                            metadata={"rows_too_long": total("too_long"), "max_length": max_length}),
        dg.AssetCheckResult(check_name="sequence_boundaries", passed=total("bad_boundaries") == 0,
                            metadata={"rows_with_bad_boundaries": total("bad_boundaries")}),
        dg.AssetCheckResult(check_name="labels_masked_at_starts", passed=total("unmasked_starts") == 0,
                            metadata={"rows_with_unmasked_starts": total("unmasked_starts")}),
        dg.AssetCheckResult(check_name="tokens_conserved",
                            passed=tokens == expected_tokens and sequences == expected_sequences,
                            metadata={"tokens_read_back": tokens, "tokens_expected": expected_tokens,
                                      "sequences_read_back": sequences, "sequences_expected": expected_sequences}),
        _budgets_met(stats),
        *([_decontamination(mix, stats)] if mix.decontaminate else []),
    ]


def _decontamination(mix: MixDefinition, stats) -> dg.AssetCheckResult:
    report = stats.decontamination
    share = report["contaminated"] / report["conversations_checked"] if report["conversations_checked"] else 0.0
    return dg.AssetCheckResult(
        check_name="decontamination", passed=share <= mix.max_contaminated_share,
        description=f"{report['contaminated']} of {report['conversations_checked']} conversations ({share:.2%}) share "
                    f"{report['n']}-grams with the evaluation files and were dropped (at most "
                    f"{mix.max_contaminated_share:.2%} may)",
        metadata={"contaminated": report["contaminated"], "contaminated_share": float(share),
                  "max_contaminated_share": float(mix.max_contaminated_share),
                  "per_file": dg.MetadataValue.json(report["per_file"]),
                  "per_source": dg.MetadataValue.json(report["per_source"])})


def _budgets_met(stats) -> dg.AssetCheckResult:
    """Every source got its budget to within its largest conversation (core/pack/mix.py reports, never raises)."""
    short = {name: {"asked": s["budget_tokens_asked"], "got": s["budget_tokens_got"], "short_by": s["budget_short_by"]}
             for name, s in stats.sources.items() if not s["budget_met"]}
    by = stats.settings.get("budget_by", "trained")
    return dg.AssetCheckResult(
        check_name="budgets_met", passed=not short,
        description=(f"short of their budgets ({by} tokens asked, got): " + ", ".join(
            f"{name}: {s['asked']:,} asked, {s['got']:,} got (max_repeats {stats.sources[name].get('max_repeats', 1):g})"
            for name, s in short.items())) if short else f"every source got its budget ({by} tokens)",
        metadata={"budget_by": by, "sources_short": len(short), "short": dg.MetadataValue.json(short)})


def _metadata(mix: MixDefinition, stats) -> dict:
    meta: dict = {}
    for split, figures in stats.splits.items():
        meta[f"{split}_rows"] = figures["rows"]
        meta[f"{split}_tokens"] = figures["tokens"]
        meta[f"{split}_fill"] = float(figures["fill"])
        meta[f"{split}_rows_over_lower_bound"] = figures["rows"] - figures["lower_bound_rows"]
        meta[f"{split}_shards"] = len(figures["files"])
        meta[f"{split}_trained_share"] = float(figures["trained_share"])  # after deduplication and weighting
    for name, figures in stats.sources.items():
        meta[f"tokens_before_weighting__{name}"] = figures["train_tokens_before_weighting"]
        meta[f"tokens_after_weighting__{name}"] = figures["train_tokens"]
        meta[f"trained_tokens_after_weighting__{name}"] = figures["train_trained_tokens"]
        meta[f"budget_tokens_asked__{name}"] = figures["budget_tokens_asked"]  # in budget_by tokens
        meta[f"budget_tokens_got__{name}"] = figures["budget_tokens_got"]
        meta[f"share_got__{name}"] = float(figures["share_got"])
        if "share_asked" in figures:
            meta[f"share_asked__{name}"] = float(figures["share_asked"])
        meta[f"duplicates_dropped__{name}"] = figures["duplicates_dropped"]
        for cause in ("identical_input", "identical_after_truncation", "unknown_cause"):
            meta[f"duplicates_{cause}__{name}"] = figures[f"duplicates_{cause}"]
        meta[f"validation_conversations__{name}"] = figures["validation_conversations"]
        if "supervision" in figures:  # the source's files as tokenized (before deduplication and weighting)
            audit = SupervisionAudit.from_dict(figures["supervision"])
            meta[f"trained_share__{name}"] = float(audit.trained_share)
            meta[f"turn_ends_trained__{name}"] = audit.turn_ends_trained
            meta[f"turn_ends_untrained__{name}"] = audit.turn_ends_untrained + audit.turn_ends_missing
    if stats.supervision:
        audit = SupervisionAudit.from_dict(stats.supervision)
        meta["sources_trained_share"] = float(audit.trained_share)
        meta["turn_ends_trained"] = audit.turn_ends_trained
        meta["turn_ends_untrained"] = audit.turn_ends_untrained + audit.turn_ends_missing
        meta["supervision"] = dg.MetadataValue.json(stats.supervision)
    if stats.decontamination:
        meta["contaminated"] = stats.decontamination["contaminated"]
        meta["decontamination"] = dg.MetadataValue.json(stats.decontamination)
    if stats.near_duplicates:
        meta["near_duplicates_dropped"] = stats.near_duplicates["duplicates"]
        meta["near_duplicates"] = dg.MetadataValue.json(stats.near_duplicates)
    for stage, seconds in stats.stage_seconds.items():
        meta[f"{stage}_seconds"] = seconds
    balance = stats.splits["train"].get("balance")
    if balance:  # per step of W ranks x B rows: max / mean of the ranks' sum of seq_len^2, mean over steps
        meta["rank_imbalance_before"] = float(balance["before"]["mean"])
        meta["rank_imbalance_after"] = float(balance["after"]["mean"])
        meta["rank_balance"] = dg.MetadataValue.json(balance)
    meta["dagster/row_count"] = stats.splits["train"]["rows"]
    meta["sources_table"] = checks.table(
        [("source", "string"), ("asked", "string"), ("weight", "float"), ("budget_tokens_asked", "int"),
         ("budget_tokens_got", "int"), ("share_got", "float"), ("budget_met", "bool"), ("conversations", "int"),
         ("duplicates_dropped", "int"), ("duplicates_identical_input", "int"), ("duplicates_identical_after_truncation", "int"),
         ("duplicates_unknown_cause", "int"), ("validation", "int"), ("train_tokens_before_weighting", "int"),
         ("train_tokens", "int"), ("train_trained_tokens", "int")],
        [{"source": name, "asked": _asked(s), "weight": float(s["weight"]),
          "budget_tokens_asked": s["budget_tokens_asked"], "budget_tokens_got": s["budget_tokens_got"],
          "share_got": float(s["share_got"]), "budget_met": bool(s["budget_met"]), "conversations": s["conversations"],
          "duplicates_dropped": s["duplicates_dropped"], "duplicates_identical_input": s["duplicates_identical_input"],
          "duplicates_identical_after_truncation": s["duplicates_identical_after_truncation"],
          "duplicates_unknown_cause": s["duplicates_unknown_cause"], "validation": s["validation_conversations"],
          "train_tokens_before_weighting": s["train_tokens_before_weighting"], "train_tokens": s["train_tokens"],
          "train_trained_tokens": s["train_trained_tokens"]}
         for name, s in stats.sources.items()])
    meta["splits_table"] = checks.table(
        [("split", "string"), ("rows", "int"), ("lower_bound_rows", "int"), ("sequences", "int"), ("tokens", "int"),
         ("fill", "float"), ("shards", "int")],
        [{"split": split, "rows": f["rows"], "lower_bound_rows": f["lower_bound_rows"], "sequences": f["sequences"],
          "tokens": f["tokens"], "fill": float(f["fill"]), "shards": len(f["files"])} for split, f in stats.splits.items()])
    meta["sources"] = dg.MetadataValue.json({k: {f: v for f, v in s.items() if f not in ("fingerprints", "supervision")}
                                             for k, s in stats.sources.items()})
    location = str(mix.output_dir)
    meta["path"] = dg.MetadataValue.path(location) if "://" not in location else dg.MetadataValue.url(location)
    meta["manifest"] = dg.MetadataValue.path(f"{location}/{MANIFEST_NAME}")
    meta["seconds"] = stats.seconds
    return meta



def _asked(figures: dict) -> str:
    """What a source was asked for, as the sources table shows it: `ratio 0.7 (share 0.7)`, `tokens 1,000,000`, ..."""
    if figures["absent"]:
        return "absent"
    repeats = f", max_repeats {figures['max_repeats']:g}" if "max_repeats" in figures else ""
    if figures["asked"] == "ratio":
        return f"ratio {figures['ratio']:g} (share {figures['share_asked']:g}){repeats}"
    if figures["asked"] == "tokens":
        return f"tokens {figures['tokens_asked']:,}{repeats}"
    return f"weight {figures['weight']:g}"
