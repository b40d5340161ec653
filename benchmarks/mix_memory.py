"""Peak memory of mixing a training set, against the size of the mix (core/pack/mix.py).

    python benchmarks/mix_memory.py --size 1GB          # the README's figure (tokenizing takes ~5 min)
    python benchmarks/mix_memory.py --size 100MB        # a quick look
    python benchmarks/mix_memory.py --size 1GB --overlap   # also: all files with decontamination and near-dedup

Builds `--size` bytes of the shared chat sets (bench.build_input; each repetition made unique by a
number at the start of its first message, or deduplication would leave only the shared sets), cut
into 8 files for two sources,
tokenizes them once with SmolLM2 (spills kept in the work folder), then mixes a quarter of the files
and all of them, each in a child process whose peak RSS and PSS are sampled every 20 ms (weights 1 and
2.5, a 1 % validation split, shards of 1000 rows of 8192 tokens). Flat memory means the two peaks are
close although the second mix holds four times the tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench  # noqa: E402  (the input builder and the memory sampler of the main benchmark)

FILES = 8


def tokenize(files: list[Path], spills: Path, tokenizer: str, max_length: int) -> None:
    from collate_assets.core import CollateSettings, load_tokenizer, tokenize_file

    settings = CollateSettings(max_length=max_length, tokenizer=tokenizer)
    loaded = load_tokenizer(tokenizer)
    for path in files:
        started = time.perf_counter()
        stats = tokenize_file(path, spills / f"{path.stem}.arrow", loaded, settings)
        print(f"tokenized {path.name}: {stats.sequences} sequences, {stats.tokens} tokens, "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)


def mix_child(spills: list[str], output: str, max_length: int, evals: str = "", tokenizer: str = "") -> None:
    from collate_assets.core.pack.mix import MixSettings, MixSource, build_mix

    half = len(spills) // 2
    sources = [MixSource("a", 1.0, spills[:half] or spills), MixSource("b", 2.5, spills[half:])]
    settings = MixSettings(max_length=max_length, seed=0, validation_share=0.01, shard_rows=1000)
    loaded = None
    if evals:
        from collate_assets.core import load_tokenizer

        settings = dataclasses.replace(settings, decontaminate=(evals,), near_duplicates=0.8)
        loaded = load_tokenizer(tokenizer)
    stats = build_mix(sources, output, settings, tokenizer=loaded)
    print(json.dumps({
        **stats.stage_seconds,
        "contaminated": stats.decontamination.get("contaminated", 0),
        "near_duplicates_dropped": stats.near_duplicates.get("duplicates", 0),
        "seconds": stats.seconds,
        "train_tokens": stats.splits["train"]["tokens"],
        "train_rows": stats.splits["train"]["rows"],
        "lower_bound_rows": stats.splits["train"]["lower_bound_rows"],
        "sequences": stats.splits["train"]["sequences"],
        "duplicates_dropped": sum(s["duplicates_dropped"] for s in stats.sources.values()),
    }))


def _reversed_words(value):
    if isinstance(value, str):
        return " ".join(reversed(value.split()))
    if isinstance(value, list):
        return [_reversed_words(v) for v in value]
    if isinstance(value, dict):
        return {k: _reversed_words(v) for k, v in value.items()}
    return value


def measure(spills: list[Path], output: Path, max_length: int, evals: Path | None = None, tokenizer: str = "") -> dict:
    cmd = [sys.executable, __file__, "--child", str(output), "--max-length", str(max_length), *map(str, spills)]
    if evals is not None:
        cmd += ["--evals", str(evals), "--tokenizer", tokenizer]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    rss, pss = bench._peak_tree_memory(child)
    out = child.stdout.read()
    if child.returncode:
        raise SystemExit(f"mix failed: exit {child.returncode}")
    return {**json.loads(out.strip().splitlines()[-1]), "files": len(spills),
            "spill_mb": sum(p.stat().st_size for p in spills) / 1e6, "peak_rss_mb": rss / 1e6, "peak_pss_mb": pss / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GB")
    parser.add_argument("--tokenizer", default=str(bench.SHARED / "tokenizers" / "SmolLM2-135M-Instruct"))
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--overlap", action="store_true", help="also mix every file with decontamination (against "
                        "200 records of each shared set, 195 of them with their words reversed) and near-duplicate "
                        "removal (0.8)")
    parser.add_argument("--evals", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("spills", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mix_child(args.spills, args.child, args.max_length, args.evals or "", args.tokenizer)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mixbench-"))
    spills_dir = workdir / "spills"
    spills_dir.mkdir(parents=True, exist_ok=True)
    spills = sorted(spills_dir.glob("*.arrow"))
    if len(spills) != FILES:
        whole = workdir / "input.jsonl"
        lines = bench.build_input(whole, bench.parse_size(args.size))
        files = []
        with open(whole, "rb") as f:
            per_file = -(-lines // FILES)
            number = 0
            for index in range(FILES):
                part = workdir / f"part{index}.jsonl"
                with open(part, "wb") as out:
                    for _ in range(per_file):
                        line = f.readline()
                        if not line:
                            break
                        number += 1
                        out.write(line.replace(b'"content": "', b'"content": "%d ' % number, 1))
                files.append(part)
        whole.unlink()
        tokenize(files, spills_dir, args.tokenizer, args.max_length)
        spills = sorted(spills_dir.glob("*.arrow"))
    print(f"work folder: {workdir}")
    print("| spills mixed | spill MB | train tokens | train rows (lower bound) | seconds | peak RSS MB | peak PSS MB |")
    print("|---|---|---|---|---|---|---|")
    for subset in (spills[: FILES // 4], spills):
        r = measure(subset, workdir / f"mix{len(subset)}", args.max_length)
        print(f"| {r['files']} | {r['spill_mb']:.0f} | {r['train_tokens']:,} | {r['train_rows']:,} ({r['lower_bound_rows']:,}) | "
              f"{r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['peak_pss_mb']:.0f} |")
    if args.overlap:
        evals = workdir / "evals.jsonl"
        with open(evals, "w", encoding="utf-8") as out:
            # 200 records of each shared set, every string's words in reverse order (the sizes and words of a
            # real evaluation set, no 13-gram in common with the training data), and 5 records as they are
            for path in sorted((bench.SHARED / "data").glob("*/*.json")):
                for index, record in enumerate(json.loads(path.read_text(encoding="utf-8"))[:200]):
                    out.write(json.dumps(record if index < 5 else _reversed_words(record)) + "\n")
        r = measure(spills, workdir / "mix_overlap", args.max_length, evals, args.tokenizer)
        print(f"\nall {r['files']} files with decontaminate ({evals.name}) and near_duplicates 0.8: {r['seconds']:.1f} s "
              f"(decontamination {r['decontamination']:.1f} s, {r['contaminated']:,} conversations; near-duplicates "
              f"{r['near_duplicates']:.1f} s, {r['near_duplicates_dropped']:,} dropped), train tokens {r['train_tokens']:,}, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, PSS {r['peak_pss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
