"""The collation engine: read conversation files (JSONL, JSON, Parquet), render + tokenize, label, pack, write. No Dagster here."""

from .api import (
    SPILL_SCHEMA,
    collate_file,
    collate_folder,
    output_path_for,
    pack_spill,
    rejects_path_for,
    spill_lengths,
    tokenize_file,
)
from .errors import CollateError
from .packing import lower_bound, pack, pack_best_fit_decreasing, pack_greedy
from .reader import input_stem, iter_chunks, list_input_files, normalize_conversation
from .settings import (
    DEFAULT_MAX_LINE_BYTES,
    EXTENSIONS,
    IGNORE_INDEX,
    LABELS_MODES,
    OUTPUT_FORMATS,
    OVERLONG_POLICIES,
    PACKING_STRATEGIES,
    REASONING_TURNS,
    CollateSettings,
)
from .stats import FileStats, PackStats, TokenizeStats
from .tokenizer import load_tokenizer, tokenizer_fingerprint
from .writers import PACKED_SCHEMA, atomic_path, file_sha256, read_packed

__all__ = [
    "CollateError",
    "DEFAULT_MAX_LINE_BYTES",
    "CollateSettings",
    "EXTENSIONS",
    "FileStats",
    "IGNORE_INDEX",
    "LABELS_MODES",
    "OUTPUT_FORMATS",
    "OVERLONG_POLICIES",
    "PACKED_SCHEMA",
    "PACKING_STRATEGIES",
    "REASONING_TURNS",
    "PackStats",
    "SPILL_SCHEMA",
    "TokenizeStats",
    "atomic_path",
    "collate_file",
    "collate_folder",
    "file_sha256",
    "input_stem",
    "iter_chunks",
    "list_input_files",
    "load_tokenizer",
    "lower_bound",
    "normalize_conversation",
    "output_path_for",
    "pack",
    "pack_best_fit_decreasing",
    "pack_greedy",
    "pack_spill",
    "read_packed",
    "rejects_path_for",
    "spill_lengths",
    "tokenize_file",
    "tokenizer_fingerprint",
]
