"""Token cost of the two ways to train reasoning that a template drops from earlier turns (Qwen3).

    python benchmarks/reasoning_cost.py [--tokenizer ../shared/tokenizers/Qwen3] [--max-length 8192]

Input: the multi-turn conversations of ../shared/data (FastChat's ShareGPT file and LLaMA-Factory's
kto demo), each assistant turn given a reasoning text of its own (one sentence built from the turn,
about 30 tokens; public chat sets with multi-turn reasoning are not in ../shared). Both settings run
through the engine with --labels assistant: `per-turn` trains every turn's reasoning (each earlier turn
in a sequence of its own), `as-rendered` trains what the template renders (earlier reasoning lost).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from collate_assets.core import CollateSettings, collate_file, load_tokenizer  # noqa: E402
from collate_assets.core.read.formats import normalize_record  # noqa: E402

DATA = [SHARED / "data/fastchat_dummy_conversation/dummy_conversation.json",
        SHARED / "data/llamafactory_kto_en_demo/kto_en_demo.json"]


def write_input(path: Path) -> int:
    """The shared conversations with a reasoning text on every assistant turn; returns the count."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for source in DATA:
            for record in json.loads(source.read_text(encoding="utf-8")):
                messages = normalize_record(record).messages
                for k, message in enumerate(messages):
                    if message["role"] == "assistant":
                        asked = messages[k - 1]["content"][:60].replace("\n", " ") if k else ""
                        message["reasoning_content"] = (
                            f"The user asked: {asked!r}. I answer in {len(message['content'].split())} words."
                        )
                out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "Qwen3"))
    parser.add_argument("--max-length", type=int, default=8192)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "reasoning.jsonl"
        conversations = write_input(source)
        print(f"{conversations} conversations, {args.tokenizer}, max_length {args.max_length}, labels assistant\n")
        print("| reasoning_turns | sequences | tokens | trained tokens | rows | turns trained alone | reasoning left out |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for mode in ("per-turn", "as-rendered"):
            settings = CollateSettings(max_length=args.max_length, labels="assistant", reasoning_turns=mode)
            stats = collate_file(source, Path(tmp) / f"{mode}.arrow", tokenizer, settings)
            t, p = stats.tokenize, stats.pack
            print(f"| {mode} | {t.sequences} | {t.tokens:,} | {t.trained_tokens:,} | {p.rows} | {t.turn_sequences} "
                  f"| {t.reasoning_dropped} |")


if __name__ == "__main__":
    main()
