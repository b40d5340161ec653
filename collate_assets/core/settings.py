"""Settings shared by every step of the engine.

One frozen dataclass, so the Dagster layer can hash it into data versions and the
CLI can build it from flags without either knowing the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Literal

LabelsMode = Literal["all", "assistant"]
PackingStrategy = Literal["bfd", "greedy"]
OverlongPolicy = Literal["truncate", "drop", "split", "error"]
OutputFormat = Literal["arrow", "parquet", "msgpack", "jsonl"]
ReasoningTurns = Literal["per-turn", "as-rendered"]

LABELS_MODES: tuple[str, ...] = ("all", "assistant")
PACKING_STRATEGIES: tuple[str, ...] = ("bfd", "greedy")
OVERLONG_POLICIES: tuple[str, ...] = ("truncate", "drop", "split", "error")
OUTPUT_FORMATS: tuple[str, ...] = ("arrow", "parquet", "msgpack", "jsonl")
REASONING_TURNS: tuple[str, ...] = ("per-turn", "as-rendered")
EXTENSIONS: dict[str, str] = {
    "arrow": ".arrow",
    "parquet": ".parquet",
    "msgpack": ".msgpack",
    "jsonl": ".jsonl",
}

IGNORE_INDEX = -100
DEFAULT_MAX_LENGTH = 8192
# Lines longer than this are rejected unparsed: tokenizing a 16 MB line takes ~2.5 GB of memory, and
# no conversation that fits a training context comes near 8 MiB of text (128k tokens are ~0.5 MB).
DEFAULT_MAX_LINE_BYTES = 8 << 20
# The largest max_length accepted: 16 Mi tokens, far above any model's context today. Larger values
# are a typo (or an attempt to exhaust memory), refused with an argument error.
MAX_LENGTH_CEILING = 1 << 24
# Chat-template rendering bounds, per conversation (see core/template_limits.py). A normal render
# takes well under a millisecond per conversation, a 8 MiB one a fraction of a second.
DEFAULT_RENDER_SECONDS = 5.0
DEFAULT_RENDER_MAX_CHARS = 32 << 20


@dataclasses.dataclass(frozen=True)
class CollateSettings:
    """What decides the tokens and rows written for one input file."""

    max_length: int = DEFAULT_MAX_LENGTH
    labels: LabelsMode = "all"
    packing: PackingStrategy = "bfd"
    overlong: OverlongPolicy = "truncate"
    strict: bool = False
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    # Reasoning of earlier turns that the template leaves out (Qwen3): "per-turn" trains each such turn
    # in a sequence of its own (its history, then the turn with its reasoning); "as-rendered" trains
    # what the template renders and counts the reasoning left out.
    reasoning_turns: ReasoningTurns = "per-turn"
    # Train the text a template inserts before an assistant turn that has no reasoning (an empty
    # <think></think> block) under labels=assistant.
    train_empty_think: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if self.max_length > MAX_LENGTH_CEILING:
            raise ValueError(f"max_length must be at most {MAX_LENGTH_CEILING} (16 Mi tokens), got {self.max_length!r}")
        if not isinstance(self.max_line_bytes, int) or self.max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be a positive integer, got {self.max_line_bytes!r}")
        for name, allowed in (
            ("labels", LABELS_MODES),
            ("packing", PACKING_STRATEGIES),
            ("overlong", OVERLONG_POLICIES),
            ("reasoning_turns", REASONING_TURNS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A stable hash of the settings (never Python's salted ``hash()``)."""
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def check_format(fmt: str) -> str:
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(OUTPUT_FORMATS)}; got {fmt!r}")
    return fmt
