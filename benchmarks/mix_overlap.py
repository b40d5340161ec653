"""Speed and peak memory of the mixer's overlap checks (core/pack/overlap.py) against the size of the texts.

    python benchmarks/mix_overlap.py --size 100MB          # a quick look (about a minute)
    python benchmarks/mix_overlap.py --size 1GB            # the figure at scale
    python benchmarks/mix_overlap.py --size 100MB --only neardup --threshold 0.7

Texts: the conversations of ../shared/data, each one text (its string values joined by newlines, as
`overlap.record_text`), streamed (never held) until --size bytes of UTF-8. The first pass is the real
sets; in every later pass each text is, with a fixed seed, either lightly edited (a number in front and
two words replaced: a near-duplicate of its first occurrence) or its words shuffled (a new text with
the same vocabulary), half and half, so the near-duplicate pass meets large clusters and many unique
texts alike.

Evaluation sets (written to a temporary folder): the first 100 records of the KTO demo set as JSONL and
the first 100 of the Glaive tool-call set as Parquet, so that a share of the texts is contaminated.

Each measurement runs in its own process, which reports its seconds (wall and CPU) and its peak RSS
(VmHWM of /proc/self/status: `ru_maxrss` would count the parent's RSS at the fork) beside its RSS once
imports are done, so the difference is what the check itself held at its peak:

  source    only making the texts (the generator below; included in the two others' seconds)
  decontam  EvalIndex.from_paths (n=13) then EvalIndex.scan over every text (min_matches=1)
  neardup   near_duplicates over every text (threshold 0.8, 128 permutations, 5-word shingles)
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from bench import SHARED, parse_size  # noqa: E402  (the main benchmark's shared folder and size parser)

DATA = SHARED / "data"
DATA_FILES = sorted(DATA.glob("*/*.json"))


def texts(size: int, seed: int = 0) -> Iterator[str]:
    """The benchmark's texts (see the module docstring), one at a time, until `size` bytes."""
    from collate_assets.core.pack.overlap import record_text

    base = [record_text(record) for path in DATA_FILES for record in json.loads(path.read_text(encoding="utf-8"))]
    rng = random.Random(seed)
    written = 0
    repetition = 0
    while True:
        for text in base:
            if repetition:
                words = text.split()
                if rng.random() < 0.5:
                    for _ in range(2):
                        words[rng.randrange(len(words))] = f"w{rng.randrange(10**6)}"
                    words.insert(0, f"#{repetition}")
                else:
                    rng.shuffle(words)
                text = " ".join(words)
            written += len(text.encode("utf-8"))
            yield text
            if written >= size:
                return
        repetition += 1


def write_evals(folder: Path) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    kto = json.loads((DATA / "llamafactory_kto_en_demo" / "kto_en_demo.json").read_text(encoding="utf-8"))[:100]
    glaive_file = DATA / "llamafactory_glaive_toolcall_zh" / "glaive_toolcall_zh_demo.json"
    glaive = json.loads(glaive_file.read_text(encoding="utf-8"))[:100]
    with open(folder / "kto_eval.jsonl", "w", encoding="utf-8") as f:
        for record in kto:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    pq.write_table(pa.Table.from_pylist(glaive), folder / "glaive_eval.parquet")
    return [folder / "kto_eval.jsonl", folder / "glaive_eval.parquet"]


def _peak_mb() -> float:
    """This process's peak RSS: VmHWM, not ru_maxrss, which keeps the parent's peak across fork + exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux; an upper bound


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(args) -> dict:
    from collate_assets.core.pack import overlap

    overlap._char_classes()  # the character table (1.1 MB, built once per process) is part of the baseline
    baseline = _rss_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    result: dict = {"phase": args.phase}
    if args.phase == "source":
        result["texts"] = sum(1 for _ in texts(args.size))
    elif args.phase == "decontam":
        index = overlap.EvalIndex.from_paths([args.evals])
        result["index_seconds"] = round(time.perf_counter() - wall, 3)
        result["index"] = {"files": len(index.files), "grams": len(index.grams), "texts": index.texts}
        report = index.scan(texts(args.size), min_matches=1)
        result.update(texts=report.texts, contaminated=report.contaminated,
                      per_file={Path(name).name: count for name, count in report.per_file.items()})
    else:
        dups = overlap.near_duplicates(texts(args.size), threshold=args.threshold)
        summary = dups.to_dict(max_clusters=0)
        summary.pop("largest_clusters")
        result.update(summary)
        result["largest_cluster"] = max((len(c) for c in dups.clusters), default=0)
    result["seconds"] = round(time.perf_counter() - wall, 3)
    result["cpu_seconds"] = round(time.process_time() - cpu, 3)
    result["baseline_rss_mb"] = round(baseline, 1)
    result["peak_rss_mb"] = round(_peak_mb(), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100MB", help="bytes of text (UTF-8), e.g. 100MB, 1GB")
    parser.add_argument("--only", default="source,decontam,neardup", help="comma-separated: source, decontam, neardup")
    parser.add_argument("--threshold", type=float, default=0.8, help="near-duplicate Jaccard threshold")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--evals", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.size = parse_size(str(args.size))
    if args.phase:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory(prefix="mix_overlap_") as tmp:
        write_evals(Path(tmp))
        print(f"texts: {args.size / 1e6:.0f} MB of the shared chat sets (edited and shuffled repeats); "
              f"evaluation sets: {tmp}", file=sys.stderr)
        source_seconds = None
        for phase in args.only.split(","):
            command = [sys.executable, __file__, "--phase", phase, "--size", str(args.size), "--evals", tmp,
                       "--threshold", str(args.threshold)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.stderr.write(done.stderr)
                raise SystemExit(f"{phase} failed ({done.returncode})")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(result))
            mb = args.size / 1e6
            if phase == "source":
                source_seconds = result["seconds"]
            rate = ""
            if phase != "source":
                net = result["seconds"] - (source_seconds or 0.0)
                rate = f"{mb / net:.1f} MB/s{' without making the texts' if source_seconds else ''}, "
            print(f"  {phase}: {result['seconds']:.1f} s wall ({result['cpu_seconds']:.1f} s CPU), {rate}"
                  f"{result['texts']} texts; peak RSS {result['peak_rss_mb']:.0f} MB "
                  f"({result['peak_rss_mb'] - result['baseline_rss_mb']:.0f} MB above the {result['baseline_rss_mb']:.0f} MB "
                  f"after imports)", file=sys.stderr)


if __name__ == "__main__":
    main()
