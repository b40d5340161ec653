"""The embedded default: a small sample of chat conversations and a demo tokenizer.

Both were written for this project and are rebuilt by ``python scripts/build_demo.py`` from the
repository root (the builder is not part of the installed package; this folder holds only its output).
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent
DEMO_INPUT_DIR = SAMPLE_DIR / "conversations"
DEMO_TOKENIZER_DIR = SAMPLE_DIR / "tokenizer"

__all__ = ["SAMPLE_DIR", "DEMO_INPUT_DIR", "DEMO_TOKENIZER_DIR"]
