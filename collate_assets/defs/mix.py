"""`training_set`: one training set from several datasets, as an asset (the engine: core/pack/mix.py).

A mix is defined by a `CollateMix` Component (component.py): its sources are datasets of the code
location by name (`default` is the one of the COLLATE_* variables), each with a weight. Its asset,
`[<mix name>, training_set]`, depends on every partition of each source's `tokenized_conversations`,
reads their spills (nothing is tokenized again), and writes Arrow shards and `training_set.json` to
the mix's output folder, with blocking checks read back from the shards it wrote.

Automation: it runs when every partition of its sources is tokenized and one of them was updated
since (a file added or edited re-tokenizes that file alone, then the mix), or when the mix's own
settings change (they are its code version). A source partition that is missing (a file that
failed) holds the mix back until it is fixed or its file removed.
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

from . import checks
from .assets import Dataset, manifest_for
from .automation import EVALUATION_SECONDS, automation_sensor, eager_from_the_start
from .files import DatasetFiles

DEFAULT_SOURCE = "default"  # the dataset of the COLLATE_* variables (no key prefix)
MIX_CODE_VERSION = "1"
MIX_CHECKS = {
    "rows_fit_max_length": "Every row of every shard has at most max_length tokens.",
    "sequence_boundaries": "position_ids restart at 0 at each sequence start and seq_lengths match them.",
    "labels_masked_at_starts": "labels are -100 at the first token of every packed sequence.",
    "tokens_conserved": "The tokens read back from the shards are those the weighted, deduplicated sources give.",
}


@dataclasses.dataclass(frozen=True)
class MixDefinition:
    name: str
    output_dir: str
    sources: tuple[tuple[str, float, float | None], ...]  # (dataset name, weight, ratio or None)
    seed: int = 0
    validation_share: float = 0.0
    shard_rows: int = 1000
    max_length: int | None = None  # None: the sources' own (they must agree)

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
    return (
        eager_from_the_start()  # a mix added where its sources are already built is built too
        | (dg.AutomationCondition.code_version_changed() & ~busy & ~dg.AutomationCondition.any_deps_missing())
        .with_label("mix settings changed")
    )


def build_mix_defs(mix: MixDefinition) -> dg.Definitions:
    sources = [mix.source_dataset(name) for name, *_ in mix.sources]
    key = mix.key()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        specs = [dg.AssetCheckSpec(name, asset=key, blocking=True, description=text) for name, text in MIX_CHECKS.items()]

    @dg.asset(
        key=key,
        deps=[dataset.key("tokenized_conversations") for dataset in sources],
        group_name=mix.name,
        kinds={"arrow", "huggingface"},
        code_version=mix.code_version(),
        automation_condition=mix_condition(),
        required_resource_keys={dataset.resource_key for dataset in sources},
        check_specs=specs,
        description=(
            "One training set from " + ", ".join(
                f"{name} ({'ratio' if ratio is not None else 'weight'} {ratio if ratio is not None else weight:g})"
                for name, weight, ratio in mix.sources)
            + ": exact duplicate conversations dropped across sources, a validation split chosen by content hash, "
            "weighted by source, packed together with best-fit decreasing, rows shuffled with the seed, and "
            f"written as Arrow shards of {mix.shard_rows} rows (`train-*.arrow`, `validation-*.arrow`) with `{MANIFEST_NAME}`."
        ),
    )
    def training_set(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        try:
            mix_sources, max_length = _sources(context, mix, sources)
            settings = MixSettings(max_length=max_length, seed=mix.seed, validation_share=mix.validation_share,
                                   shard_rows=mix.shard_rows)
            stats = build_mix(mix_sources, mix.output_dir, settings)
        except (CollateError, ValueError) as exc:
            raise dg.Failure(description=shown(str(exc)), allow_retries=False) from exc
        results = _check_results(mix, stats, max_length)
        return dg.MaterializeResult(metadata=_metadata(mix, stats), check_results=results)

    return dg.Definitions(
        assets=[training_set],
        sensors=[automation_sensor(f"{mix.name}__mix_automation", dg.AssetSelection.assets(key), EVALUATION_SECONDS)],
    )


def _sources(context, mix: MixDefinition, datasets: list[Dataset]) -> tuple[list[MixSource], int]:
    """Each source's spills (every partition, tokenized with the current settings), and the row length."""
    out, tokenizers, lengths = [], {}, {}
    for (name, weight, ratio), dataset in zip(mix.sources, datasets):
        settings = getattr(context.resources, dataset.resource_key).settings()
        files = DatasetFiles(settings)
        for folder in {str(files.output_root()), str(files.spill_root())}:
            if folder.rstrip("/") == str(mix.output_dir).rstrip("/"):
                raise CollateError(f"the mix's output_dir {mix.output_dir} is where dataset {name!r} writes: give the mix its own")
        keys = context.instance.get_dynamic_partitions(dataset.partitions.name)
        spills, fingerprints, missing, audits = [], [], [], []
        for key in keys:
            manifest = manifest_for(files, key)
            if manifest is None or manifest.collate_settings().fingerprint() != settings.fingerprint():
                missing.append(key)
                continue
            tokenizers.setdefault(manifest.tokenizer["fingerprint"], name)
            spills.append(manifest.spill_path)
            audits.append(manifest.stats.get("supervision"))
            fingerprints.append({"partition": key, "input_sha256": manifest.input_sha256,
                                 "settings": settings.fingerprint(), "tokenizer": manifest.tokenizer["fingerprint"]})
        if missing:
            raise CollateError(
                f"source {name!r}: {len(missing)} of {len(keys)} input files are not tokenized with the current settings "
                f"({', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}): materialize its tokenized_conversations first"
            )
        lengths[name] = settings.max_length
        out.append(MixSource(name=name, weight=weight, spills=spills, fingerprints=fingerprints, ratio=ratio,
                             supervision=SupervisionAudit.merged(audits).to_dict()))
    if len(tokenizers) > 1:
        raise CollateError(f"the sources were tokenized with different tokenizers ({', '.join(tokenizers.values())}): "
                           "a mix packs token ids of one vocabulary")
    max_length = mix.max_length or max(lengths.values())
    too_long = {name: length for name, length in lengths.items() if length > max_length}
    if too_long:
        raise CollateError(f"sources with a max_length over the mix's {max_length}: {too_long}")
    return out, max_length


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
    ]


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
        meta[f"duplicates_dropped__{name}"] = figures["duplicates_dropped"]
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
    meta["dagster/row_count"] = stats.splits["train"]["rows"]
    meta["sources_table"] = checks.table(
        [("source", "string"), ("weight", "float"), ("conversations", "int"), ("duplicates_dropped", "int"),
         ("validation", "int"), ("train_tokens_before_weighting", "int"), ("train_tokens", "int")],
        [{"source": name, "weight": float(s["weight"]), "conversations": s["conversations"],
          "duplicates_dropped": s["duplicates_dropped"], "validation": s["validation_conversations"],
          "train_tokens_before_weighting": s["train_tokens_before_weighting"], "train_tokens": s["train_tokens"]}
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

