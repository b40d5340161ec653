"""Blocking checks on every packed output: bad rows must not reach a trainer.

They are check specs of each packed asset, evaluated in the same step from one read of the file just
written (with the engine's `read_packed`, independently of the writer):

- rows_fit_max_length: no row is longer than max_length;
- sequence_boundaries: position_ids count 0, 1, ... within each sequence and seq_lengths add up to
  the row, so a trainer finds exactly the boundaries the packer made;
- labels_masked_at_starts: labels are -100 at every sequence start, so the last token of one
  conversation is never trained to predict the first of the next;
- tokens_conserved: the packed tokens and sequences are those of the spill, and every token read
  is either packed or reported as cut away by the overlong policy;
- lines_accounted: every line read is written, rejected or blank; for a shard of a split file, once
  every shard is tokenized, the shards cover the file exactly: contiguous, line numbers following
  on, and the lines read adding up to the file's own line count.

A failed check fails the step (the checks are blocking), so nothing downstream uses the output.
"""

import dataclasses
import warnings
from collections.abc import Iterable, Iterator

import dagster as dg
import numpy as np

from collate_assets.core import IGNORE_INDEX

from .files import SpillManifest

CHECK_DESCRIPTIONS = {
    "rows_fit_max_length": "Every packed row has at most max_length tokens.",
    "sequence_boundaries": "position_ids restart at 0 at each sequence start and seq_lengths match them.",
    "labels_masked_at_starts": "labels are -100 at the first token of every packed sequence.",
    "tokens_conserved": "Tokens and sequences in the spill equal those packed; tokens read = packed + cut away.",
    "lines_accounted": "Lines read = written + rejected + blank; a split file's shards cover it line for line.",
}


@dataclasses.dataclass
class RowReport:
    """What reading the packed rows back found; `first_*` is the index of the first bad row."""

    rows: int = 0
    sequences: int = 0
    tokens: int = 0
    max_row_tokens: int = 0
    too_long: int = 0
    first_too_long: int | None = None
    bad_boundaries: int = 0
    first_bad_boundaries: int | None = None
    unmasked_starts: int = 0
    first_unmasked_start: int | None = None


def verify_packed_rows(rows: Iterable[dict], max_length: int) -> RowReport:
    """Check each row's length, sequence boundaries and start labels."""
    report = RowReport()
    for index, row in enumerate(rows):
        ids = np.asarray(row["input_ids"])
        labels = np.asarray(row["labels"])
        positions = np.asarray(row["position_ids"])
        seq_lengths = np.asarray(row["seq_lengths"], dtype=np.int64)
        n = len(ids)
        report.rows += 1
        report.sequences += len(seq_lengths)
        report.tokens += n
        report.max_row_tokens = max(report.max_row_tokens, n)
        if n > max_length:
            report.too_long += 1
            report.first_too_long = index if report.first_too_long is None else report.first_too_long
        starts = np.zeros(len(seq_lengths), dtype=np.int64)
        np.cumsum(seq_lengths[:-1], out=starts[1:])
        boundaries_ok = (
            len(labels) == n
            and len(positions) == n
            and len(seq_lengths) > 0
            and bool((seq_lengths > 0).all())
            and int(seq_lengths.sum()) == n
        )
        if boundaries_ok:
            expected = np.arange(n, dtype=np.int64) - np.repeat(starts, seq_lengths)
            boundaries_ok = bool(np.array_equal(positions, expected))
        if not boundaries_ok:
            report.bad_boundaries += 1
            report.first_bad_boundaries = index if report.first_bad_boundaries is None else report.first_bad_boundaries
        valid_starts = starts[starts < len(labels)]
        if len(valid_starts) != len(starts) or bool((labels[valid_starts] != IGNORE_INDEX).any()):
            report.unmasked_starts += 1
            report.first_unmasked_start = index if report.first_unmasked_start is None else report.first_unmasked_start
    return report


def _first(value: int | None) -> dict:
    return {} if value is None else {"first_bad_row": value}


def check_results(
    report: RowReport, spill: SpillManifest, spill_token_lengths: np.ndarray, file_account: dict | None = None
) -> Iterator[tuple[str, bool, dict]]:
    """(check name, passed, metadata) of the checks for one packed file.

    `file_account`, for a shard: the summary of its file's shards (`core.read.shards.summarize`) once every
    shard is tokenized, or `{"shards_done": k, "shard_count": n}` before.
    """
    max_length = spill.settings["max_length"]
    spill_tokens = int(spill_token_lengths.sum())
    spill_sequences = int(len(spill_token_lengths))
    tokens_read = int(spill.stats["tokens_read"])
    cut_away = int(spill.stats["truncated_tokens"])
    yield "rows_fit_max_length", report.too_long == 0, {
        "rows": report.rows, "rows_too_long": report.too_long, "max_row_tokens": report.max_row_tokens,
        "max_length": max_length, **_first(report.first_too_long)}
    yield "sequence_boundaries", report.bad_boundaries == 0, {
        "rows": report.rows, "rows_with_bad_boundaries": report.bad_boundaries, **_first(report.first_bad_boundaries)}
    yield "labels_masked_at_starts", report.unmasked_starts == 0, {
        "rows": report.rows, "rows_with_unmasked_starts": report.unmasked_starts, **_first(report.first_unmasked_start)}
    conserved = (
        report.tokens == spill_tokens == int(spill.stats["tokens"])
        and report.sequences == spill_sequences
        and tokens_read == report.tokens + cut_away
    )
    yield "tokens_conserved", conserved, {
        "packed_tokens": report.tokens, "spill_tokens": spill_tokens, "tokens_read": tokens_read,
        "tokens_cut_away": cut_away, "packed_sequences": report.sequences, "spill_sequences": spill_sequences}
    stats = spill.stats
    accounted = stats["lines_read"] == stats["blank_lines"] + stats["conversations"] + stats["rejected"]
    meta = {name: stats[name] for name in ("lines_read", "conversations", "rejected", "blank_lines")}
    if stats.get("shard"):
        meta.update(first_line=stats["shard"]["first_line"], start_byte=stats["shard"]["start"], end_byte=stats["shard"]["end"])
    if file_account is not None:
        problems = file_account.get("problems", [])
        accounted = accounted and not problems
        meta.update(shards_tokenized=f"{file_account['shards_done']} of {file_account['shard_count']}")
        if "file_lines" in file_account:
            meta.update(file_lines=file_account["file_lines"], file_lines_read=file_account["lines_read"])
        if problems:
            meta.update(problems=dg.MetadataValue.json(problems))
    yield "lines_accounted", accounted, meta


def check_specs(asset_key: dg.AssetKey, partitions_def: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
    """The blocking check specs of one packed asset."""
    return _blocking_specs(asset_key, partitions_def, CHECK_DESCRIPTIONS.items())


def _blocking_specs(asset_key, partitions_def, checks) -> list[dg.AssetCheckSpec]:
    """Blocking, partitioned check specs for (name, description) pairs."""
    # A partitions_def on a check spec is a preview feature in 1.13; without it the results of all
    # partitions would overwrite each other in the UI. Keep the warning out of every load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(name, asset=asset_key, blocking=True, partitions_def=partitions_def, description=text)
            for name, text in checks
        ]


def combined_results(per_partition: dict[str, list[tuple[str, bool, dict]]]) -> list[dg.AssetCheckResult]:
    """One AssetCheckResult per check for the partitions of a step.

    A step of one partition reports that partition's figures. A step of several partitions (the
    `collate` command runs a range of partitions at once) reports whether the check passed for
    every partition, and which did not: Dagster records check results per partition only for
    single-partition steps.
    """
    if len(per_partition) == 1:
        [results] = per_partition.values()
        return [dg.AssetCheckResult(check_name=name, passed=passed, metadata=meta) for name, passed, meta in results]
    combined = []
    for name in CHECK_DESCRIPTIONS:
        failed = sorted(key for key, results in per_partition.items() for n, passed, _ in results if n == name and not passed)
        combined.append(dg.AssetCheckResult(
            check_name=name,
            passed=not failed,
            metadata={"partitions": len(per_partition), "failed_partitions": dg.MetadataValue.json(failed)},
            description=f"failed for {', '.join(failed)}" if failed else None,
        ))
    return combined


# -- the supervision audit's checks, on tokenized_conversations ---------------------------------------
# Declared only when the dataset's settings set a threshold (min_trained_share > 0 or
# max_untrained_turn_ends < 1): a check that cannot fail would only add noise to every run.

SUPERVISION_CHECKS = {
    "min_trained_share": ("supervision_trained_share", "Trained tokens are at least min_trained_share of the tokens written."),
    "max_untrained_turn_ends": ("supervision_turn_ends",
                                "At most max_untrained_turn_ends of the trained assistant turns have their end of turn "
                                "not trained (cut by truncation, masked, or not written)."),
}


def supervision_check_specs(asset_key: dg.AssetKey, partitions_def: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
    """The blocking supervision checks of a tokenized asset (see supervision_check_results)."""
    return _blocking_specs(asset_key, partitions_def, SUPERVISION_CHECKS.values())


def supervision_check_results(per_partition: dict[str, dict], settings) -> list[dg.AssetCheckResult]:
    """One result per supervision check from each partition's audit (`TokenizeStats.supervision`).

    The description says the figure and the threshold (the `collate` command prints it when one fails);
    a step of several partitions reports whether every partition passed, and which did not, with why.
    """
    from collate_assets.core.tokens.audit import SupervisionAudit, supervision_problems

    outcomes: dict[str, dict[str, tuple[bool, str, dict]]] = {name: {} for name, _ in SUPERVISION_CHECKS.values()}
    for key, supervision in per_partition.items():
        audit = SupervisionAudit.from_dict(supervision)
        for setting, passed, message in supervision_problems(audit, settings):
            name = SUPERVISION_CHECKS[setting][0]
            figure = audit.trained_share if setting == "min_trained_share" else audit.untrained_turn_end_share
            meta = {"threshold": float(getattr(settings, setting))}
            if figure is not None:
                meta["figure"] = float(figure)
            if setting == "max_untrained_turn_ends":
                meta.update(turn_ends=audit.turn_ends, turn_ends_trained=audit.turn_ends_trained)
            outcomes[name][key] = (passed, message, meta)
    results = []
    for name, by_key in outcomes.items():
        if len(by_key) == 1:
            [(passed, message, meta)] = by_key.values()
            results.append(dg.AssetCheckResult(check_name=name, passed=passed, metadata=meta, description=message))
            continue
        failed = {key: message for key, (passed, message, _) in sorted(by_key.items()) if not passed}
        results.append(dg.AssetCheckResult(
            check_name=name, passed=not failed,
            metadata={"partitions": len(by_key), "failed_partitions": dg.MetadataValue.json(sorted(failed))},
            description="; ".join(f"{key}: {message}" for key, message in failed.items()) or None,
        ))
    return results


def table(columns: list[tuple[str, str]], rows: list[dict]) -> dg.TableMetadataValue:
    """Rows as a Dagster table (the UI shows, sorts and copies it): `columns` is [(name, type)], type
    one of Dagster's column types (string, int, float, ...), each row a dict of them."""
    return dg.MetadataValue.table(
        records=[dg.TableRecord({name: row[name] for name, _ in columns}) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns]),
    )


def supervision_metadata(supervision: dict) -> dict:
    """The audit's figures as tokenized_conversations metadata: numbers as int/float (plotted per partition),
    the trained special tokens as a table, the whole audit as JSON."""
    from collate_assets.core.tokens.audit import SupervisionAudit

    audit = SupervisionAudit.from_dict(supervision)
    meta: dict = {
        "trained_share": float(audit.trained_share),
        "turn_ends_trained": audit.turn_ends_trained,
        "turn_ends_untrained": audit.turn_ends_untrained,
        "turn_ends_missing": audit.turn_ends_missing,
        "truncated_before_end_of_turn": audit.truncated_before_end_of_turn,
        "truncated_turns_dropped": audit.truncated_turns_dropped,
        "no_trained_token": audit.no_trained_token,
    }
    if audit.untrained_turn_end_share is not None:
        meta["untrained_turn_end_share"] = float(audit.untrained_turn_end_share)
    if audit.outside_assistant_share is not None:
        meta["outside_assistant_share"] = float(audit.outside_assistant_share)
        meta["outside_assistant_sampled_conversations"] = audit.outside_sampled_conversations
    meta["special_tokens_trained"] = table(
        [("token", "string"), ("trained", "int")],
        [{"token": token, "trained": count} for token, count in sorted(audit.special_tokens.items(), key=lambda kv: (-kv[1], kv[0]))],
    )
    meta["supervision"] = dg.MetadataValue.json(audit.to_dict())
    return meta
