"""The collation engine, laid out as the flow it is. No Dagster here.

    plan.py      inputs + settings -> work items (files, shards), their names, what cannot run
    read/        conversation files -> normalised records, in chunks (containers, formats, reader, shards)
    tokens/      records -> token sequences and labels (tokenizer, template_limits, render, encoder, chat,
                 sequences, audit, report; tokenize: the tokenizing step, writing the spill)
    pack/        sequences -> rows (packing; spill: a spill packed into an output; mix: several sources)
    write/       rows -> files in each output format, and back (writers, arrays)
    fs.py        file-system safety: atomic writes, never replacing what this tool did not write
    process.py   what this process has under way (worker pools, temporaries, runs), for an interrupt
    api.py       the steps together for the CLI and scripts; settings.py, stats.py, errors.py

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
    "PACKED_SCHEMA": "write.writers",
    "PACKING_STRATEGIES": "settings",
    "PackStats": "stats",
    "REASONING_TURNS": "settings",
    "SPILL_SCHEMA": "tokens.sequences",
    "TokenizeStats": "stats",
    "atomic_path": "fs",
    "collate_file": "api",
    "collate_file_formats": "api",
    "collate_folder": "api",
    "file_sha256": "fs",
    "input_stem": "read.reader",
    "iter_chunks": "read.reader",
    "list_input_files": "read.reader",
    "load_tokenizer": "tokens.tokenizer",
    "lower_bound": "pack.packing",
    "normalize_conversation": "read.reader",
    "output_path_for": "api",
    "pack": "pack.packing",
    "pack_best_fit_decreasing": "pack.packing",
    "pack_greedy": "pack.packing",
    "pack_spill": "pack.spill",
    "read_packed": "write.writers",
    "rejects_path_for": "api",
    "spill_lengths": "pack.spill",
    "tokenize_file": "tokens.tokenize",
    "tokenizer_fingerprint": "tokens.tokenizer",
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
