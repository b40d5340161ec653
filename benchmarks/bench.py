"""Side-by-side throughput, memory and packing benchmark (not a test: timings vary by machine).

    python benchmarks/bench.py --size 60MB            # all five measurements on one input
    python benchmarks/bench.py --size 60MB --only engine,limit
    python benchmarks/bench.py --only many             # many small files (not part of the default set)
    python benchmarks/bench.py --size 60MB --only cores   # 1 core against 2 (not part of the default set)
    python benchmarks/bench.py --size 60MB --only e2e     # whole commands against TRL (not part of the default set)

Input: the conversations of ../shared/data (both data sets, as role/content `messages`), shuffled
with a fixed seed and repeated until the file reaches --size. Every measurement runs in its own
process; peak RSS is the largest sum of RSS over that process and all its children, sampled every
20 ms, and peak PSS the largest sum of their PSS (proportional set size: a page shared by k
processes counts 1/k in each), sampled likewise. Forked workers share the pages of the process they
were forked from, which an RSS sum counts once per process: PSS is the memory the tree really holds.

  limit   chat-template render of all conversations, then the fast tokenizer's encode_batch
  trl     HF datasets + TRL: load_dataset(json) -> map(apply_chat_template, num_proc=2)
          -> trl.data_utils.pack_dataset(strategy="bfd") -> save_to_disk      (needs the [bench] extra)
  engine  collate_assets.core.collate_file, arrow output
  collate the `collate` command end to end (through the Dagster asset graph)
  dagster one partition through `dagster asset materialize` (after registering it)
  parallel one partition, then two at once, through `dagster asset materialize`
  many    many small files: 40 JSONL files, ~2,300 conversations in all, max_length 4096 (ignores
          --size and --max-length). Each step is one whole process, timed by its wall seconds, every
          step once per round, --many-reps rounds, medians:
            (a) collate -i DIR --no-dagster        engine only
            (b) collate -i DIR                     through Dagster, fresh DAGSTER_HOME (first run)
            (c) collate -i DIR                     again: unchanged rerun of 40 files
            (f) collate -i DIR/one.jsonl           one file, fresh output and DAGSTER_HOME (first run)
            (d) collate -i DIR/one.jsonl           again: unchanged rerun of one file
            (e) dagster asset materialize --partition one.jsonl   after collate -i DIR --register-only
          and the ratios the Dagster layer is held to: b/a <= 2, c/d <= 1.25, e/f <= 1.5.
  cores   the engine on 1 core against 2 (not part of the default set): `collate -i FILE -o OUT -f arrow
          -m MAX --no-dagster --json` pinned with `taskset -c 0` and `taskset -c 0,1` (the first two
          CPUs this process may use), alternated, --cores-reps rounds, medians of: wall seconds, CPU
          seconds (user + sys of the command and the workers it waited for, from os.wait4), the
          ideal wall (CPU seconds / cores), the speed-up 1 -> 2 cores (target >= 1.8x) and the
          per-stage seconds the command reports in --json (`stage_seconds` of tokenize and pack,
          summed over files; absent until the engine fills them). From the 1-core stage seconds, an
          Amdahl projection for 16 and 64 cores: serial in the main process (reading lines, writing
          the spill, packing, writing the output, and start-up) against spread over workers (parse,
          render, encode, labels). Skipped with a message without taskset or with fewer than 2 CPUs.
  e2e     end to end as a user waits for it (not part of the default set): the TRL pipeline above and
          `collate -i FILE -f arrow` (through Dagster, and --no-dagster) each as one whole process from
          start to exit (imports and tokenizer load included), a fresh DAGSTER_HOME and output folder
          each time, alternated, --e2e-reps rounds; medians of wall, peak RSS and PSS, rows, and TRL /
          collate (target >= 1.5x, or --e2e-target). --e2e-encoders auto,tokenizers runs each `collate` once
          per encoder in every round (COLLATE_ENCODER), alternated.
  --encoder  the encoder of every measurement (engine: the setting; commands: COLLATE_ENCODER), default auto.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA_FILES = [
    SHARED / "data" / "fastchat_dummy_conversation" / "dummy_conversation.json",
    SHARED / "data" / "llamafactory_kto_en_demo" / "kto_en_demo.json",
]
DEFAULT_MEASUREMENTS = ("limit", "trl", "engine", "collate", "dagster", "parallel")
MEASUREMENTS = (*DEFAULT_MEASUREMENTS, "many", "cores", "e2e")
# Measurements that time whole processes themselves (no bench child, no memory sampling).
SELF_TIMED = ("many", "cores", "e2e")

# The 1-core / 2-core measurement (`--only cores`).
CORES_TARGET = 1.8  # speed-up 1 -> 2 cores the engine is held to
# Where each stage runs (the `stage_seconds` keys of `collate --json`, prefixed with their step).
# Serial: in the main process, whatever the number of workers; parallel: spread over the workers.
SERIAL_STAGES = ("tokenize.read", "tokenize.spill", "pack.read", "pack.pack", "pack.gather", "pack.write")
PARALLEL_STAGES = ("tokenize.parse", "tokenize.render", "tokenize.encode", "tokenize.labels")
STAGE_LABELS = {
    "tokenize.read": "read lines", "tokenize.parse": "parse + normalise", "tokenize.render": "render template",
    "tokenize.encode": "encode (Rust)", "tokenize.labels": "labels + overlong", "tokenize.spill": "write spill",
    "pack.read": "read spill layout", "pack.pack": "bin packing", "pack.gather": "gather rows",
    "pack.write": "write output",
}
PROJECT_CORES = (16, 64)

# The many-small-files measurement (`--only many`).
MANY_FILES = 40
MANY_CONVERSATIONS = 2300
MANY_MAX_LENGTH = 4096
# What `dagster asset materialize` selects for one partition (step e): adjust when the asset names change.
MANY_SELECT = "tokenized_conversations,packed_arrow"
# (name, numerator, denominator, target): the ratios printed under the table.
MANY_RATIOS = (
    ("b/a", "b", "a", 2.0, "collate through Dagster / engine only, 40 files"),
    ("c/d", "c", "d", 1.25, "unchanged rerun: 40 files / one file"),
    ("e/f", "e", "f", 1.5, "one partition: dagster asset materialize / collate"),
)


def parse_size(text: str) -> int:
    units = {"kb": 1e3, "mb": 1e6, "gb": 1e9, "b": 1}
    lower = text.strip().lower()
    for unit, factor in units.items():
        if lower.endswith(unit):
            return int(float(lower[: -len(unit)]) * factor)
    return int(lower)


def build_input(path: Path, size: int, seed: int = 0, max_lines: int | None = None) -> int:
    """Write shuffled repetitions of the shared conversations until `size` bytes (or `max_lines`
    conversations, whichever comes first); returns lines."""
    sys.path.insert(0, str(REPO))
    from collate_assets.core import normalize_conversation

    lines = []
    for data_file in DATA_FILES:
        for record in json.loads(data_file.read_text()):
            lines.append(json.dumps({"messages": normalize_conversation(record).messages}, ensure_ascii=False) + "\n")
    rng = random.Random(seed)
    written = count = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size and (max_lines is None or count < max_lines):
            rng.shuffle(lines)
            for line in lines:
                if written >= size or (max_lines is not None and count >= max_lines):
                    break
                f.write(line)
                written += len(line.encode())
                count += 1
    return count


# ---------------------------------------------------------------------------------------------
# Each measurement runs in a child process and prints one JSON line: tokens, rows, seconds.


def run_limit(args) -> dict:
    import orjson

    from collate_assets.core import load_tokenizer, normalize_conversation

    tok = load_tokenizer(args.tokenizer)
    start = time.perf_counter()
    with open(args.input, "rb") as f:
        conversations = [normalize_conversation(orjson.loads(line)) for line in f]
    texts = tok.apply_chat_template(conversations, tokenize=False)
    encodings = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(e.ids) for e in encodings)
    return {"tokens": tokens, "seconds": seconds}


def run_trl(args) -> dict:
    import datasets
    from trl.data_utils import pack_dataset

    from collate_assets.core import load_tokenizer

    datasets.disable_progress_bars()
    tok = load_tokenizer(args.tokenizer)
    out = Path(args.workdir) / "trl"
    start = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(args.input), split="train", cache_dir=str(Path(args.workdir) / "hf_cache"))

    def tokenize(batch):
        return {"input_ids": tok.apply_chat_template(batch["messages"], tokenize=True)["input_ids"]}

    ds = ds.map(tokenize, batched=True, num_proc=2, remove_columns=ds.column_names)
    ds = ds.map(lambda b: {"input_ids": [ids[: args.max_length] for ids in b["input_ids"]]}, batched=True)
    packed = pack_dataset(ds, seq_length=args.max_length, strategy="bfd")
    packed.save_to_disk(str(out))
    seconds = time.perf_counter() - start
    tokens = sum(len(x) for x in packed["input_ids"])  # after timing: not part of the pipeline
    return {"tokens": tokens, "rows": len(packed), "seconds": seconds}


def run_engine(args) -> dict:
    from collate_assets.core import CollateSettings, collate_file, load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    start = time.perf_counter()
    stats = collate_file(args.input, Path(args.workdir) / "engine" / "bench.arrow", tok, CollateSettings(max_length=args.max_length, encoder=args.encoder))
    seconds = time.perf_counter() - start
    return {"tokens": stats.pack.tokens, "rows": stats.pack.rows, "seconds": seconds}


def _read_output_stats(path: Path) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    tokens = pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0
    return {"tokens": int(tokens), "rows": table.num_rows}


def _link_or_copy(source: Path, dest: Path) -> None:
    """A hard link (no copy of a large input; symlinks out of the input folder are refused), else a copy."""
    if dest.exists():
        return
    try:
        os.link(source, dest)
    except OSError:
        import shutil

        shutil.copyfile(source, dest)


def run_collate(args) -> dict:
    env = dict(os.environ, DAGSTER_HOME=str(Path(args.workdir) / "dagster_home_collate"))
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    # The input in a folder of its own: its folder may not hold the outputs.
    input_dir = Path(args.workdir) / "collate_input"
    input_dir.mkdir(parents=True, exist_ok=True)
    _link_or_copy(Path(args.input), input_dir / Path(args.input).name)
    out = Path(args.workdir) / "collate_out"
    cmd = ["collate", "-i", str(input_dir / Path(args.input).name), "-o", str(out), "-t", args.tokenizer, "-f", "arrow", "-m", str(args.max_length), "-q"]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return {**_read_output_stats(out / f"{Path(args.input).stem}.arrow"), "seconds": seconds}


def _code_location_env(args, name: str) -> tuple[dict, Path]:
    """Environment for the code location: its own DAGSTER_HOME, input folder and output folder."""
    home = Path(args.workdir) / f"dagster_home_{name}"
    home.mkdir(parents=True, exist_ok=True)
    input_dir = Path(args.workdir) / f"{name}_input"
    input_dir.mkdir(exist_ok=True)
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        COLLATE_INPUT_DIR=str(input_dir),
        COLLATE_OUTPUT_DIR=str(Path(args.workdir) / f"{name}_out"),
        COLLATE_TOKENIZER=args.tokenizer,
        COLLATE_MAX_LENGTH=str(args.max_length),
    )
    return env, input_dir


def run_dagster(args) -> dict:
    env, input_dir = _code_location_env(args, "dagster")
    _link_or_copy(Path(args.input), input_dir / Path(args.input).name)
    keys = subprocess.run(
        ["collate", "-i", str(input_dir), "--register-only"], env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    cmd = [
        "dagster", "asset", "materialize", "-m", "collate_assets.definitions",
        "--select", "raw_conversations,tokenized_conversations,packed_arrow", "--partition", keys[0],
    ]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    # The same partition again, unchanged: `dagster asset materialize` recomputes what it is asked to.
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rerun = time.perf_counter() - start
    out = Path(env["COLLATE_OUTPUT_DIR"]) / f"{Path(args.input).stem}.arrow"
    return {**_read_output_stats(out), "seconds": seconds, "rerun_seconds": rerun, "rerun_share": rerun / seconds}


def run_parallel(args) -> dict:
    """One partition through `dagster asset materialize`, then two at once (two files, two processes)."""
    env, input_dir = _code_location_env(args, "parallel")
    for name in ("a.jsonl", "b.jsonl"):
        _link_or_copy(Path(args.input), input_dir / name)
    subprocess.run(["collate", "-i", str(input_dir), "--register-only"], env=env, check=True, capture_output=True)

    def materialize(keys):
        procs = [
            subprocess.Popen(
                ["dagster", "asset", "materialize", "-m", "collate_assets.definitions",
                 "--select", "tokenized_conversations,packed_arrow", "--partition", key],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for key in keys
        ]
        for proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"dagster asset materialize failed ({proc.args})")

    start = time.perf_counter()
    materialize(["a.jsonl"])
    one = time.perf_counter() - start
    start = time.perf_counter()
    materialize(["a.jsonl", "b.jsonl"])
    two = time.perf_counter() - start
    stats = _read_output_stats(Path(env["COLLATE_OUTPUT_DIR"]) / "b.arrow")
    return {"tokens": 2 * stats["tokens"], "seconds": two, "one_file_seconds": one, "two_files_seconds": two,
            "two_over_one": two / one}


RUNNERS = {
    "limit": run_limit,
    "trl": run_trl,
    "engine": run_engine,
    "collate": run_collate,
    "dagster": run_dagster,
    "parallel": run_parallel,
}


def measure(name: str, args, workdir: Path) -> dict:
    """Run one measurement in a child process, sampling the RSS of its whole process tree."""
    cmd = [
        sys.executable, __file__, "--child", name, "--input", str(args.input), "--tokenizer", args.tokenizer,
        "--max-length", str(args.max_length), "--workdir", str(workdir), "--encoder", args.encoder,
    ]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    peak_rss, peak_pss = _peak_tree_memory(child)
    out = child.stdout.read()
    if child.returncode != 0:
        return {"name": name, "error": f"exit {child.returncode}"}
    result = json.loads(out.strip().splitlines()[-1])
    result.update(name=name, peak_rss_mb=peak_rss / 1e6, peak_pss_mb=peak_pss / 1e6)
    return result


def _peak_tree_memory(child: subprocess.Popen, at_peak: list | None = None) -> tuple[int, int]:
    """Until `child` ends: the largest (sum of RSS, sum of PSS) over it and its descendants, every 20 ms.
    `at_peak`, when given, receives each process's (name, RSS, PSS, USS) bytes at the largest RSS sum.
    (Its output pipes are read after it ends: fine for the small JSON lines the measurements print.)"""
    import psutil

    proc = psutil.Process(child.pid)
    peak_rss = peak_pss = 0
    while child.poll() is None:
        rows = _tree_memory(proc)
        rss, pss = sum(r[1] for r in rows), sum(r[2] for r in rows)
        if rss > peak_rss and at_peak is not None:
            at_peak[:] = rows
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.02)
    return peak_rss, peak_pss


def _tree_memory(proc) -> list[tuple[str, int, int, int]]:
    """(name, RSS, PSS, USS) of `proc` and each of its descendants; a process that ends while it is read
    is left out (PSS and USS read /proc/PID/smaps_rollup: ~0.5 ms a process; elsewhere they are the RSS)."""
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []
    rows = []
    for p in procs:
        try:
            info = p.memory_full_info()
            name = p.name()
        except psutil.Error:
            continue
        rows.append((name, info.rss, getattr(info, "pss", info.rss), getattr(info, "uss", info.rss)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="60MB", help="input size (e.g. 100MB, 1GB)")
    parser.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "SmolLM2-135M-Instruct"))
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--encoder", default="auto", choices=("auto", "fast", "tokenizers"),
                        help="collate's encoder setting in every measurement (commands get it as COLLATE_ENCODER)")
    parser.add_argument(
        "--only", default=",".join(DEFAULT_MEASUREMENTS),
        help="comma-separated subset of " + ",".join(MEASUREMENTS) + " (default: all but many and cores)",
    )
    parser.add_argument("--input", type=Path, help="use this JSONL instead of building one")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON")
    parser.add_argument("--many-reps", type=int, default=3, help="rounds of the many-small-files measurement")
    parser.add_argument("--many-select", default=MANY_SELECT, help="assets `dagster asset materialize` selects (many, step e)")
    parser.add_argument("--cores-reps", type=int, default=3, help="rounds of the 1-core / 2-core measurement")
    parser.add_argument("--e2e-reps", type=int, default=3, help="rounds of the end-to-end measurement")
    parser.add_argument("--e2e-encoders", help="e2e: run collate with each of these encoders (comma-separated, "
                        "alternated in every round); default: --encoder")
    parser.add_argument("--e2e-target", type=float, default=E2E_TARGET, help="e2e: the TRL / collate ratio to reach")
    args = parser.parse_args()

    os.environ["COLLATE_ENCODER"] = args.encoder
    if args.child:
        sys.path.insert(0, str(REPO))
        print(json.dumps(RUNNERS[args.child](args)))
        return

    with tempfile.TemporaryDirectory(prefix="collate-bench-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        names = args.only.split(",")
        unknown = [name for name in names if name not in MEASUREMENTS]
        if unknown:
            parser.error(f"--only: unknown {','.join(unknown)} (choose from {','.join(MEASUREMENTS)})")
        if args.input is None and any(name != "many" for name in names):
            args.input = tmp / "bench.jsonl"
            lines = build_input(args.input, parse_size(args.size))
            print(f"input: {args.input.stat().st_size / 1e6:.1f} MB, {lines} conversations (seed 0)", flush=True)
        results = {}
        for name in names:
            if name == "many":  # times whole processes itself: no child, no RSS sampling
                results[name] = run_many(args, tmp / name)
                continue
            if name == "cores":  # likewise: pinned whole processes, CPU seconds from os.wait4
                results[name] = run_cores(args, tmp / name)
                continue
            if name == "e2e":  # whole processes, alternated rounds
                results[name] = run_e2e(args, tmp / name)
                continue
            results[name] = measure(name, args, tmp / name)
            print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
    if any(name not in SELF_TIMED for name in results):
        print_table({name: r for name, r in results.items() if name not in SELF_TIMED}, args.max_length)
    if "many" in results:
        print_many(results["many"])
    if "cores" in results:
        print_cores(results["cores"])
    if "e2e" in results:
        print_e2e(results["e2e"])
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


def print_table(results: dict, max_length: int) -> None:
    print("\n| measurement | wall s | tokens | tokens/s | peak RSS MB | peak PSS MB | rows | lower bound | fill |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | {r['error']} | | | | | | | |")
            continue
        rate = r["tokens"] / r["seconds"]
        r["tokens_per_s"] = rate
        rows = r.get("rows")
        bound = math.ceil(r["tokens"] / max_length)
        fill = f"{r['tokens'] / (rows * max_length):.4f}" if rows else ""
        print(
            f"| {name} | {r['seconds']:.1f} | {r['tokens']:,} | {rate:,.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['peak_pss_mb']:.0f} | {rows if rows is not None else ''} | {bound if rows else ''} | {fill} |"
        )
    print("(peak RSS: largest sum of RSS over the process tree, pages shared by forked workers counted once per "
          "process; peak PSS: the same with shared pages split between the processes sharing them)")

    def ratio(a: str, b: str) -> str:
        if a in results and b in results and "tokens_per_s" in results[a] and "tokens_per_s" in results[b]:
            return f"{results[a]['tokens_per_s'] / results[b]['tokens_per_s']:.2f}"
        return "n/a"

    print(f"\nengine/limit {ratio('engine', 'limit')}   engine/trl {ratio('engine', 'trl')}   collate/trl {ratio('collate', 'trl')}")
    if "dagster" in results and "rerun_seconds" in results["dagster"]:
        d = results["dagster"]
        print(f"dagster asset materialize of the unchanged partition again: {d['rerun_seconds']:.1f} s "
              f"({d['rerun_share']:.1%} of the first run)")
    if "parallel" in results and "two_over_one" in results["parallel"]:
        p = results["parallel"]
        print(f"dagster asset materialize: one file {p['one_file_seconds']:.1f} s, two files at once "
              f"{p['two_files_seconds']:.1f} s ({p['two_over_one']:.2f}x one file)")


# ---------------------------------------------------------------------------------------------
# Many small files: what the Dagster layer costs per file. Every step is a whole process (imports,
# instance, tokenizer load included), as a user runs it.


def build_many_input(folder: Path, files: int = MANY_FILES, conversations: int = MANY_CONVERSATIONS) -> list[Path]:
    """`files` JSONL files (part-0000.jsonl, ...) in `folder` holding `conversations` in all, cut in
    near-equal consecutive runs from `build_input`'s shuffled stream (seed 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    whole = folder.parent / "many_all.jsonl"  # outside the input folder
    written = build_input(whole, size=1 << 62, max_lines=conversations)
    lines = whole.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) == written == conversations, (len(lines), written)
    per_file, extra = divmod(len(lines), files)
    paths, start = [], 0
    for i in range(files):
        end = start + per_file + (1 if i < extra else 0)
        path = folder / f"part-{i:04d}.jsonl"
        path.write_text("".join(lines[start:end]), encoding="utf-8")
        paths.append(path)
        start = end
    whole.unlink()
    return paths


def _timed(cmd: list[str], env: dict) -> float:
    """Wall seconds of `cmd` as one process; exits with its stderr tail when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"bench many: exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return seconds


def _packed_tokens(folder: Path, stems: list[str]) -> int | None:
    """Tokens in the packed outputs `<stem>.arrow` of `folder` (`collate -o folder`) or of `folder/arrow`
    (the code location's COLLATE_OUTPUT_DIR); None when one is missing."""
    total = 0
    for stem in stems:
        path = next((p for p in (folder / f"{stem}.arrow", folder / "arrow" / f"{stem}.arrow") if p.is_file()), None)
        if path is None:
            return None
        total += _read_output_stats(path)["tokens"]
    return total


def run_many(args, workdir: Path) -> dict:
    """Steps a-f of the many-small-files measurement, --many-reps alternated rounds (see the module doc)."""
    workdir.mkdir(parents=True, exist_ok=True)
    input_dir = workdir / "in"
    files = build_many_input(input_dir)
    one = files[0]
    size = sum(p.stat().st_size for p in files)
    print(f"many: {len(files)} files in {input_dir}, {MANY_CONVERSATIONS} conversations, {size / 1e6:.2f} MB; "
          f"one file: {one.name}; max_length {MANY_MAX_LENGTH}; {args.many_reps} rounds", flush=True)
    base_env = dict(os.environ, HF_HUB_OFFLINE="1")
    options = ["-t", args.tokenizer, "-m", str(MANY_MAX_LENGTH), "-q"]
    times: dict[str, list[float]] = {step: [] for step in "abcdef"}
    tokens: dict[str, int | None] = {}

    for round_ in range(args.many_reps):
        here = workdir / f"round{round_}"
        here.mkdir()

        def env(name: str, **extra: str) -> dict:
            home = here / f"dagster_home_{name}"
            home.mkdir()
            return {**base_env, "DAGSTER_HOME": str(home), **extra}

        # (a) engine only, 40 files
        times["a"].append(_timed(["collate", "-i", str(input_dir), "-o", str(here / "out_a"), *options, "--no-dagster"], env("a")))
        # (b) through Dagster, first run; (c) the same command again, nothing changed
        env_b = env("b")
        cmd_b = ["collate", "-i", str(input_dir), "-o", str(here / "out_b"), *options]
        times["b"].append(_timed(cmd_b, env_b))
        times["c"].append(_timed(cmd_b, env_b))
        # (f) one file through collate, first run; (d) the same command again, nothing changed
        env_d = env("d")
        cmd_d = ["collate", "-i", str(one), "-o", str(here / "out_d"), *options]
        times["f"].append(_timed(cmd_d, env_d))
        times["d"].append(_timed(cmd_d, env_d))
        # (e) the same file as one partition through `dagster asset materialize`, after registering the folder
        env_e = env(
            "e", COLLATE_INPUT_DIR=str(input_dir), COLLATE_OUTPUT_DIR=str(here / "out_e"),
            COLLATE_TOKENIZER=args.tokenizer, COLLATE_MAX_LENGTH=str(MANY_MAX_LENGTH),
        )
        keys = subprocess.run(
            ["collate", "-i", str(input_dir), "--register-only"], env=env_e, check=True, capture_output=True, text=True
        ).stdout.split()
        if one.name not in keys:
            raise SystemExit(f"bench many: {one.name} is not among the registered partition keys {keys[:5]} ...")
        times["e"].append(_timed(
            ["dagster", "asset", "materialize", "-m", "collate_assets.definitions",
             "--select", args.many_select, "--partition", one.name],
            env_e,
        ))
        print(f"  many round {round_ + 1}: " + "  ".join(f"{k} {v[-1]:.1f}s" for k, v in sorted(times.items())),
              file=sys.stderr, flush=True)
        if round_ == 0:  # the same work in every round: count it once
            stems = [p.stem for p in files]
            tokens = {
                "a": _packed_tokens(here / "out_a", stems),
                "b": _packed_tokens(here / "out_b", stems),
                "e": _packed_tokens(here / "out_e", [one.stem]),
                "f": _packed_tokens(here / "out_d", [one.stem]),
            }
            tokens["c"], tokens["d"] = tokens["b"], tokens["f"]

    return {
        "files": len(files), "conversations": MANY_CONVERSATIONS, "bytes": size, "max_length": MANY_MAX_LENGTH,
        "rounds": args.many_reps, "select": args.many_select, "times": times, "tokens": tokens,
        "median": {step: statistics.median(values) for step, values in times.items()},
    }


def print_many(r: dict) -> None:
    labels = {
        "a": "`collate -i DIR --no-dagster` (engine only)",
        "b": "`collate -i DIR` through Dagster, first run",
        "c": "`collate -i DIR` again, unchanged",
        "d": "`collate -i DIR/one` again, unchanged",
        "e": f"`dagster asset materialize --select {r['select']}` one partition",
        "f": "`collate -i DIR/one`, first run",
    }
    print(f"\nMany small files: {r['files']} files, {r['conversations']} conversations, {r['bytes'] / 1e6:.2f} MB, "
          f"max_length {r['max_length']}; wall seconds of whole processes, median of {r['rounds']} alternated rounds")
    print("\n| step | command | median s | runs s | tokens out |")
    print("|---|---|---:|---|---:|")
    for step in "abcdef":
        runs = ", ".join(f"{t:.1f}" for t in r["times"][step])
        count = r["tokens"].get(step)
        print(f"| ({step}) | {labels[step]} | {r['median'][step]:.2f} | {runs} | {f'{count:,}' if count is not None else ''} |")
    print()
    for name, num, den, target, what in MANY_RATIOS:
        value = r["median"][num] / r["median"][den]
        verdict = "ok" if value <= target else "over"
        print(f"{name} = {value:.2f}  (target <= {target:g}: {verdict})  {what}")



# ---------------------------------------------------------------------------------------------
# End to end: whole commands, from the shell prompt back to it (`--only e2e`).

E2E_TARGET = 1.5  # TRL pipeline wall / `collate` wall


def _timed_tree(cmd: list[str], env: dict) -> dict:
    """Wall seconds, peak RSS and PSS (summed over the process tree, sampled every 20 ms) and stdout of
    `cmd` as one process; exits with its stderr tail when it fails."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    at_peak: list = []
    peak_rss, peak_pss = _peak_tree_memory(child, at_peak)
    seconds = time.perf_counter() - start
    out, err = child.communicate()
    if child.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise SystemExit(f"bench e2e: exit {child.returncode}: {' '.join(cmd)}\n{tail}")
    processes = [f"{name} {rss / 1e6:.0f}/{pss / 1e6:.0f}/{uss / 1e6:.0f}" for name, rss, pss, uss in at_peak if rss > 50e6]
    return {"seconds": seconds, "peak_rss_mb": peak_rss / 1e6, "peak_pss_mb": peak_pss / 1e6, "stdout": out,
            "processes_at_peak": processes}


def run_e2e(args, workdir: Path) -> dict:
    """The TRL pipeline and `collate` (through Dagster, and --no-dagster) as whole processes, imports and
    tokenizer load included, alternated, --e2e-reps rounds, medians; a fresh DAGSTER_HOME and output
    folder for every `collate` (an unchanged rerun would skip the file)."""
    workdir.mkdir(parents=True, exist_ok=True)
    input_dir = workdir / "in"
    input_dir.mkdir()
    source = input_dir / Path(args.input).name
    _link_or_copy(Path(args.input), source)
    base_env = dict(os.environ, HF_HUB_OFFLINE="1")
    encoders = args.e2e_encoders.split(",") if args.e2e_encoders else [args.encoder]
    commands = [(_e2e_name(kind, encoder, encoders), extra, encoder) for encoder in encoders
                for kind, extra in (("collate", []), ("no-dagster", ["--no-dagster"]))]
    runs: dict[str, list[dict]] = {"trl": [], **{name: [] for name, _, _ in commands}}
    for round_ in range(args.e2e_reps):
        here = workdir / f"round{round_}"
        here.mkdir()
        trl = _timed_tree([sys.executable, __file__, "--child", "trl", "--input", str(source), "--tokenizer", args.tokenizer,
                           "--max-length", str(args.max_length), "--workdir", str(here / "trl")], base_env)
        trl["rows"] = json.loads(trl.pop("stdout").strip().splitlines()[-1])["rows"]
        runs["trl"].append(trl)
        for k, (name, extra, encoder) in enumerate(commands):
            home = here / f"home-{k}"
            home.mkdir()
            out = here / f"out-{k}"
            cmd = ["collate", "-i", str(source), "-o", str(out), "-t", args.tokenizer, "-f", "arrow",
                   "-m", str(args.max_length), "-q", *extra]
            run = _timed_tree(cmd, dict(base_env, DAGSTER_HOME=str(home), COLLATE_ENCODER=encoder))
            run.pop("stdout")
            run["rows"] = _read_output_stats(out / f"{source.stem}.arrow")["rows"]
            runs[name].append(run)
        print(f"  e2e round {round_ + 1}: " + ", ".join(f"{k} {v[-1]['seconds']:.1f} s" for k, v in runs.items()),
              file=sys.stderr, flush=True)
    tokens = _read_output_stats(workdir / "round0" / "out-0" / f"{source.stem}.arrow")["tokens"]
    median = {name: {key: statistics.median(r[key] for r in rs) for key in ("seconds", "peak_rss_mb", "peak_pss_mb")}
              for name, rs in runs.items()}
    return {"rounds": args.e2e_reps, "bytes": source.stat().st_size, "tokens": tokens, "target": args.e2e_target,
            "lower_bound": -(-tokens // args.max_length), "runs": runs, "median": median}


def _e2e_name(kind: str, encoder: str, encoders: list[str]) -> str:
    return kind if len(encoders) == 1 else f"{kind} [{encoder}]"


def print_e2e(r: dict) -> None:
    m = r["median"]
    print(f"\nEnd to end: whole processes (imports, tokenizer load, Dagster included) on {r['bytes'] / 1e6:.1f} MB, "
          f"{r['tokens']:,} tokens, median of {r['rounds']} alternated rounds")
    print("\n| command | median wall s | runs s | median peak RSS MB | median peak PSS MB | rows (lower bound " f"{r['lower_bound']}) |")
    print("|---|---:|---|---:|---:|---:|")
    def label(name: str) -> str:
        kind, _, encoder = name.partition(" ")
        text = {"trl": "HF datasets + TRL (bench.py --child trl)", "collate": "`collate` (through Dagster)",
                "no-dagster": "`collate --no-dagster`"}[kind]
        return f"{text} {encoder}".rstrip()

    for name, runs in r["runs"].items():
        cells = ", ".join(f"{x['seconds']:.1f}" for x in runs)
        rows = sorted({x["rows"] for x in runs})
        print(f"| {label(name)} | {m[name]['seconds']:.2f} | {cells} | {m[name]['peak_rss_mb']:.0f} | "
              f"{m[name]['peak_pss_mb']:.0f} | {', '.join(map(str, rows))} |")
    print("\nProcesses of over 50 MB at the peak of summed RSS, last round (name RSS/PSS/USS MB):")
    for name, runs in r["runs"].items():
        print(f"- {label(name)}: {', '.join(runs[-1].get('processes_at_peak', []))}")
    for name in r["runs"]:
        if name == "trl":
            continue
        ratio = m["trl"]["seconds"] / m[name]["seconds"]
        target = r.get("target", E2E_TARGET)
        print(f"TRL / {label(name)}: {ratio:.2f}x (target >= {target:g}x: {'ok' if ratio >= target else 'under'})")


# ---------------------------------------------------------------------------------------------
# One core against two: how the engine scales, and where its time goes (`--only cores`).


def _allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity), sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _cgroup_cpu_quota() -> float | None:
    """CPUs the cgroup's quota allows (cgroup v2 cpu.max or v1 cfs quota), None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _run_pinned(cpus: list[int], cmd: list[str], env: dict, logs: Path) -> dict:
    """Run `cmd` under `taskset -c CPUS`; wall seconds, CPU seconds (user + sys of it and of every
    descendant it waited for, from os.wait4), its largest single-process RSS, and its stdout."""
    stdout_path, stderr_path = logs.with_suffix(".out"), logs.with_suffix(".err")
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        start = time.perf_counter()
        child = subprocess.Popen(["taskset", "-c", ",".join(map(str, cpus)), *cmd], env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # taskset execs the command: same process
        wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = "\n".join(stderr_path.read_text(errors="replace").strip().splitlines()[-15:])
        raise SystemExit(f"bench cores: exit {child.returncode}: taskset -c {','.join(map(str, cpus))} {' '.join(cmd)}\n{tail}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "user": usage.ru_utime,
        "sys": usage.ru_stime,
        "max_rss_mb": usage.ru_maxrss * 1024 / 1e6,  # kB on Linux: the largest one process, not a sum
        "stdout": stdout_path.read_text(),
    }


def _stage_sums(files: list[dict]) -> dict[str, float]:
    """`stage_seconds` of every file's tokenize and pack steps (`collate --json`), summed, as `step.stage`."""
    out: dict[str, float] = {}
    for stats in files:
        for step in ("tokenize", "pack"):
            for stage, seconds in ((stats.get(step) or {}).get("stage_seconds") or {}).items():
                key = f"{step}.{stage}"
                out[key] = out.get(key, 0.0) + float(seconds)
    return out


def run_cores(args, workdir: Path) -> dict:
    """The engine pinned to 1 core and to 2, --cores-reps alternated rounds (see the module doc)."""
    from collate_assets.core import file_sha256

    if shutil.which("taskset") is None:
        print("cores: skipped: taskset is not installed (util-linux)", flush=True)
        return {"skipped": "taskset is not installed"}
    allowed = _allowed_cpus()
    if len(allowed) < 2:
        print(f"cores: skipped: this process may use {len(allowed)} CPU ({allowed}); 2 are needed", flush=True)
        return {"skipped": f"{len(allowed)} CPU allowed"}
    configs = {1: allowed[:1], 2: allowed[:2]}
    quota = _cgroup_cpu_quota()
    if quota is not None and quota < 2:
        print(f"cores: warning: the cgroup CPU quota allows {quota:g} CPUs: the 2-core figures are capped by it", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    input_dir = workdir / "input"  # the input in a folder of its own: its folder may not hold the outputs
    input_dir.mkdir(exist_ok=True)
    source = input_dir / Path(args.input).name
    _link_or_copy(Path(args.input), source)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("COLLATE_WORKERS", None)  # the default: as many workers as the pinned cores
    print(f"cores: {source.stat().st_size / 1e6:.1f} MB; `collate --no-dagster --json` pinned with taskset -c "
          f"{','.join(map(str, configs[1]))} and -c {','.join(map(str, configs[2]))}; {args.cores_reps} alternated "
          f"rounds; the machine's load average now {os.getloadavg()[0]:.2f}", flush=True)
    runs: dict[int, list[dict]] = {n: [] for n in configs}
    digests: dict[int, set] = {n: set() for n in configs}
    for round_ in range(args.cores_reps):
        order = (1, 2) if round_ % 2 == 0 else (2, 1)
        for n in order:
            out = workdir / f"out_r{round_}_{n}cpu"
            cmd = ["collate", "-i", str(source), "-o", str(out), "-t", args.tokenizer, "-f", "arrow",
                   "-m", str(args.max_length), "--no-dagster", "--json"]
            run = _run_pinned(configs[n], cmd, env, workdir / f"r{round_}_{n}cpu")
            files = json.loads(run.pop("stdout"))
            run["stages"] = _stage_sums(files)
            run["workers"] = sorted({f["tokenize"].get("workers") for f in files if "tokenize" in f}, key=str)
            run["tokens"] = sum(f["pack"]["tokens"] for f in files)
            run["load_after"] = os.getloadavg()[0]
            digests[n].add(file_sha256(out / f"{source.stem}.arrow"))
            shutil.rmtree(out, ignore_errors=True)
            runs[n].append(run)
            print(f"  cores round {round_ + 1}: {n} core{'s' if n > 1 else ''}: wall {run['wall']:.1f} s, "
                  f"CPU {run['cpu']:.1f} s, workers {run['workers']}, load {run['load_after']:.2f}",
                  file=sys.stderr, flush=True)

    median = {}
    for n, values in runs.items():
        keys = sorted({k for r in values for k in r["stages"]})
        median[n] = {
            "wall": statistics.median(r["wall"] for r in values),
            "cpu": statistics.median(r["cpu"] for r in values),
            "max_rss_mb": statistics.median(r["max_rss_mb"] for r in values),
            "stages": {k: statistics.median(r["stages"].get(k, 0.0) for r in values) for k in keys},
        }
        median[n]["ideal"] = median[n]["cpu"] / n
    all_digests = digests[1] | digests[2]
    return {
        "input": str(args.input), "bytes": source.stat().st_size, "rounds": args.cores_reps,
        "cpus": {str(n): cpus for n, cpus in configs.items()}, "cgroup_quota": quota,
        "runs": {str(n): r for n, r in runs.items()},
        "median": {str(n): m for n, m in median.items()},
        "speedup": median[1]["wall"] / median[2]["wall"],
        "identical": len(all_digests) == 1,
        "projection": _project(median[1]),
    }


def _project(one_core: dict) -> dict | None:
    """Amdahl from the 1-core stage seconds: T(N) = S + P / N, where S is what stays in the main
    process (SERIAL_STAGES, stages not known here, and start-up: wall minus the stages) and P what
    the workers share (PARALLEL_STAGES). None without stage seconds."""
    stages = one_core["stages"]
    if not stages:
        return None
    serial = {k: v for k, v in stages.items() if k not in PARALLEL_STAGES}
    parallel = {k: v for k, v in stages.items() if k in PARALLEL_STAGES}
    # With one core nothing overlaps, so the wall the stages do not account for is start-up
    # (imports, tokenizer load, template probes) and the glue between stages: serial too.
    serial["start-up + unmeasured"] = max(0.0, one_core["wall"] - sum(stages.values()))
    p = sum(parallel.values())

    def amdahl(serial_parts: dict) -> dict:
        s = sum(serial_parts.values())
        rows = {}
        for n in (1, 2, *PROJECT_CORES):
            t = s + p / n
            rows[str(n)] = {"wall": t, "speedup": (s + p) / t, "efficiency": (s + p) / t / n, "serial_share": s / t}
        top = sorted(serial_parts.items(), key=lambda kv: -kv[1])
        return {"S": s, "rows": rows, "limit": (s + p) / s if s else math.inf,
                "limited_by": [k for k, v in top if v > 0][:3]}

    whole = amdahl(serial)
    # A large input dilutes the start-up: the stages alone are what scales with the data.
    stages_only = amdahl({k: v for k, v in serial.items() if k != "start-up + unmeasured"})
    return {"serial": serial, "parallel": parallel, "S": whole["S"], "P": p, "rows": whole["rows"],
            "limit": whole["limit"], "limited_by": whole["limited_by"], "stages_only": stages_only}


def print_cores(r: dict) -> None:
    if "skipped" in r:
        print(f"\nCores: skipped ({r['skipped']})")
        return
    m = {int(n): v for n, v in r["median"].items()}
    runs = {int(n): v for n, v in r["runs"].items()}
    print(f"\nCores: `collate -i FILE -f arrow --no-dagster --json` on {r['bytes'] / 1e6:.1f} MB, pinned with taskset; "
          f"median of {r['rounds']} alternated rounds (CPU = user + sys of the command and its waited-for workers)")
    print("\n| cores | taskset -c | workers | wall s | CPU s | ideal wall s (CPU / cores) | wall / ideal | runs wall s | max RSS of one process MB |")
    print("|---:|---|---|---:|---:|---:|---:|---|---:|")
    for n in sorted(m):
        workers = sorted({w for run in runs[n] for w in run["workers"]}, key=str)
        walls = ", ".join(f"{run['wall']:.1f}" for run in runs[n])
        print(f"| {n} | {','.join(map(str, r['cpus'][str(n)]))} | {','.join(map(str, workers))} | {m[n]['wall']:.2f} | "
              f"{m[n]['cpu']:.2f} | {m[n]['ideal']:.2f} | {m[n]['wall'] / m[n]['ideal']:.2f} | "
              f"{walls} | {m[n]['max_rss_mb']:.0f} |")
    got = m[1]["cpu"] / m[1]["wall"]
    if got < 0.9:
        print(f"\nthe machine was busy: on 1 core the command got {got:.0%} of its core (CPU / wall); every figure "
              "below is inflated by the other work, the 2-core one most")
    verdict = "ok" if r["speedup"] >= CORES_TARGET else "under"
    print(f"\nspeed-up 1 -> 2 cores: {r['speedup']:.2f}x  (target >= {CORES_TARGET:g}x: {verdict}); "
          f"CPU seconds 2 cores / 1 core: {m[2]['cpu'] / m[1]['cpu']:.2f}")
    print(f"outputs identical on 1 and 2 cores: {'yes' if r['identical'] else 'NO (bytes differ)'}")
    if r.get("cgroup_quota"):
        print(f"cgroup CPU quota: {r['cgroup_quota']:g} CPUs")

    keys = [k for k in (*SERIAL_STAGES[:1], *PARALLEL_STAGES, *SERIAL_STAGES[1:]) if k in m[1]["stages"] or k in m[2]["stages"]]
    keys += sorted(k for k in {*m[1]["stages"], *m[2]["stages"]} if k not in keys)
    if not keys:
        print("\nstage_seconds: empty in `collate --json` (the engine does not report them yet): no split, no projection")
        return
    total1 = sum(m[1]["stages"].values())
    print("\nPer stage (`stage_seconds` of --json, summed over files; parallel stages summed over workers):\n")
    print("| stage | runs in | 1 core s | share of 1-core stages | 2 cores s |")
    print("|---|---|---:|---:|---:|")
    for k in keys:
        where = "workers" if k in PARALLEL_STAGES else "main process"
        a, b = m[1]["stages"].get(k, 0.0), m[2]["stages"].get(k, 0.0)
        print(f"| {k} ({STAGE_LABELS.get(k, '?')}) | {where} | {a:.2f} | {a / total1:.1%} | {b:.2f} |" if total1 else
              f"| {k} | {where} | {a:.2f} | | {b:.2f} |")
    print(f"| all stages | | {total1:.2f} | | {sum(m[2]['stages'].values()):.2f} |")
    proj = r["projection"]
    if proj is None:
        return
    print(f"\nProjection (Amdahl from the 1-core stage seconds: T(N) = S + P/N): serial S = {proj['S']:.2f} s "
          f"(main process: {', '.join(f'{k} {v:.2f}' for k, v in sorted(proj['serial'].items(), key=lambda kv: -kv[1]))}), "
          f"parallel P = {proj['P']:.2f} s (workers: {', '.join(f'{k} {v:.2f}' for k, v in proj['parallel'].items())})\n")
    print("| cores | projected wall s | speed-up | efficiency | serial share of the wall |")
    print("|---:|---:|---:|---:|---:|")
    for n, row in proj["rows"].items():
        measured = f" (measured {m[2]['wall']:.2f})" if n == "2" else ""
        print(f"| {n} | {row['wall']:.2f}{measured} | {row['speedup']:.2f}x | {row['efficiency']:.0%} | {row['serial_share']:.0%} |")
    print(f"\nlimit with unlimited cores: {proj['limit']:.1f}x; limited by what stays in the main process: "
          f"{', '.join(proj['limited_by'])}"
          + (" (start-up is paid once per command: a larger input dilutes it)" if "start-up + unmeasured" in proj["limited_by"] else ""))
    only = proj.get("stages_only")
    if only and only["S"] > 0:
        cells = ", ".join(f"{n} cores {row['speedup']:.1f}x" for n, row in only["rows"].items() if n in ("16", "64"))
        print(f"the stages alone (a large input, start-up diluted): serial {only['S']:.2f} s against parallel "
              f"{proj['P']:.2f} s: {cells}, at most {only['limit']:.1f}x; limited by {', '.join(only['limited_by'])}")
    print("(stage seconds are wall seconds of each stage; on 1 core with nothing else running they are its CPU seconds)")


if __name__ == "__main__":
    main()
