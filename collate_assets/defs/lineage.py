"""What decides whether an output is current: code versions, lineage hashes and input observations.

A partition's outputs are current when they were made from the same input bytes, the same tokenizer
and the same settings by the same code. That identity is one sha256 over those four things:

    tokenized lineage = sha256(input sha256, tokenizer fingerprint, settings fingerprint, tokenize code version)
    packed lineage    = sha256(tokenized lineage, format, pack code version)

`tokenized_conversations` returns its lineage as its Dagster data version, so the UI marks the
packed partitions stale when it changes; every materialization also stores its lineage in the
`lineage` metadata entry, which `nightly_collate` compares with the lineage it computes from the
files, tokenizer and settings of tonight (Dagster's own stale status does not cover tokenizer or
settings changes, and is not computed for partitions when a schedule asks for stale assets).
"""

import hashlib
import json
from pathlib import Path

import dagster as dg

from collate_assets.core import CollateSettings, file_sha256

# Bump when the code that writes an asset changes what it writes (the asset becomes stale).
TOKENIZE_CODE_VERSION = "3"  # 2: line-length limit, raw-line excerpts in rejects; 3: tools, reasoning, flags
PACK_CODE_VERSION = "1"

RAW_CONVERSATIONS = dg.AssetKey("raw_conversations")
TOKENIZED_CONVERSATIONS = dg.AssetKey("tokenized_conversations")
# The tag Dagster reads a data version from (dagster._core.definitions.data_version.DATA_VERSION_TAG).
DATA_VERSION_TAG = "dagster/data_version"
LINEAGE_METADATA_KEY = "lineage"


def _digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def tokenized_lineage(input_sha256: str, tokenizer_fingerprint: str, settings: CollateSettings) -> str:
    """The identity of a spill file: what was read, how it was tokenized, by which code."""
    return _digest(
        {
            "input_sha256": input_sha256,
            "tokenizer": tokenizer_fingerprint,
            "settings": settings.fingerprint(),
            "code_version": TOKENIZE_CODE_VERSION,
        }
    )


def packed_lineage(tokenized: str, fmt: str) -> str:
    """The identity of one packed output, given the lineage of the spill it was packed from."""
    return _digest({"tokenized": tokenized, "format": fmt, "code_version": PACK_CODE_VERSION})


def raw_observation(partition_key: str, path: Path, sha256: str) -> dg.AssetObservation:
    """An observation of one input file: its sha256 is the data version of its partition."""
    return dg.AssetObservation(
        asset_key=RAW_CONVERSATIONS,
        partition=partition_key,
        tags={DATA_VERSION_TAG: sha256},
        metadata={"path": dg.MetadataValue.path(str(path)), "size_bytes": path.stat().st_size},
    )


def latest_observed_sha256(instance: dg.DagsterInstance, partition_key: str) -> str | None:
    """The data version of the latest `raw_conversations` observation of a partition, if any."""
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=RAW_CONVERSATIONS, asset_partitions=[partition_key]), limit=1
    ).records
    if not records or records[0].asset_observation is None:
        return None
    return records[0].asset_observation.tags.get(DATA_VERSION_TAG)


def observe_if_changed(instance: dg.DagsterInstance, partition_key: str, path: Path) -> str:
    """Record an observation of `path` unless its latest one has the same sha256; returns the sha256."""
    sha = file_sha256(path)
    if latest_observed_sha256(instance, partition_key) != sha:
        instance.report_runless_asset_event(raw_observation(partition_key, path, sha))
    return sha


def latest_materialization(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_key: str
) -> dg.AssetMaterialization | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition_key]), limit=1
    ).records
    return records[0].asset_materialization if records else None


def metadata_text(materialization: dg.AssetMaterialization, key: str) -> str | None:
    entry = materialization.metadata.get(key)
    return None if entry is None else str(entry.value)
