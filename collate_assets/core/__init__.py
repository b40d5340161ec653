"""The collation engine: read conversation files (JSONL, JSON, Parquet), render + tokenize, label, pack, write. No Dagster here.

Names are imported on first use, so `collate_assets.core.settings` stays a light import (the
command parses its arguments before numpy, pyarrow or transformers load).
"""

import importlib

_WHERE = {
    "CollateError": "errors",
    "CollateSettings": "settings",
    "DEFAULT_MAX_LINE_BYTES": "settings",
    "EXTENSIONS": "settings",
    "FileStats": "stats",
    "IGNORE_INDEX": "settings",
    "LABELS_MODES": "settings",
    "OUTPUT_FORMATS": "settings",
    "OVERLONG_POLICIES": "settings",
    "PACKED_SCHEMA": "writers",
    "PACKING_STRATEGIES": "settings",
    "PackStats": "stats",
    "REASONING_TURNS": "settings",
    "SPILL_SCHEMA": "spill",
    "TokenizeStats": "stats",
    "atomic_path": "writers",
    "collate_file": "api",
    "collate_file_formats": "api",
    "collate_folder": "api",
    "file_sha256": "writers",
    "input_stem": "reader",
    "iter_chunks": "reader",
    "list_input_files": "reader",
    "load_tokenizer": "tokenizer",
    "lower_bound": "packing",
    "normalize_conversation": "reader",
    "output_path_for": "api",
    "pack": "packing",
    "pack_best_fit_decreasing": "packing",
    "pack_greedy": "packing",
    "pack_spill": "spill",
    "read_packed": "writers",
    "rejects_path_for": "api",
    "spill_lengths": "spill",
    "tokenize_file": "tokenize",
    "tokenizer_fingerprint": "tokenizer",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
