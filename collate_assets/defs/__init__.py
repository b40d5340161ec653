"""The Dagster layer: thin definitions over `collate_assets.core`, one module per kind.

    partitions.py   one dynamic partition per input file, file name <-> key mapping, register_partitions
    resources.py    CollatePaths, TokenizerResource, PackingSettings (COLLATE_* environment variables)
    io_managers.py  the spill manifest and one packed-file writer per format (UPath locations)
    lineage.py      code versions and the hashes that decide whether outputs are current
    assets.py       raw_conversations -> tokenized_conversations -> packed_{arrow,parquet,msgpack,jsonl}
    checks.py       blocking per-partition checks on every packed output
    jobs.py         collate_job
    sensors.py      input_files_sensor
    schedules.py    nightly_collate

`collate_assets.definitions.defs` puts them together.
"""

from .partitions import INPUT_FILES, file_name_to_key, key_to_file_name, register_partitions

__all__ = ["INPUT_FILES", "file_name_to_key", "key_to_file_name", "register_partitions"]
