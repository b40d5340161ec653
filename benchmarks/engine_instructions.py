"""Instructions the tokenizing step costs, counted by valgrind's callgrind: a figure that does not move
with the machine's load (wall times here swing by ±20 % between rounds of the same command).

    python benchmarks/engine_instructions.py --lines 2000 --labels all
    python benchmarks/engine_instructions.py --lines 2000 --labels all --checkout /tmp/base   # another tree
    python benchmarks/engine_instructions.py --labels all --tokenizer-pipeline transformers

The input is the first --lines conversations of the benchmark corpus (bench.build_input: ../shared/data,
shuffled with a fixed seed). A child process, under `valgrind --tool=callgrind --instr-atstart=no
--toggle-collect=qsort_r`, loads the tokenizer, tokenizes the file once to warm up, then tokenizes it again
(one worker process: this process; the Rust encoder on one thread) from inside libc's qsort (which calls qsort_r; a ctypes
comparator called once), so callgrind collects that call only. `--checkout` runs the child with another
source tree first on PYTHONPATH (a `git worktree` of an earlier commit) to compare two versions. About a
minute per count for 2,000 conversations.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"


def child(args) -> None:
    import ctypes
    import gc

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from collate_assets.core import CollateSettings, load_tokenizer, tokenize_file

    extra = {"tokenizer_pipeline": args.tokenizer_pipeline} if args.tokenizer_pipeline else {}
    tokenizer = load_tokenizer(args.tokenizer, **extra)
    settings = CollateSettings(workers=1, labels=args.labels, max_length=args.max_length)
    spill = Path(args.input).with_suffix(".spill.arrow")
    tokenize_file(args.input, spill, tokenizer, settings)  # warm: first-use costs are not the step's
    done: list = []

    def step(a, b) -> int:
        if not done:
            done.append(tokenize_file(args.input, spill, tokenizer, settings))
        return 0

    comparator = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(step)
    items = (ctypes.c_int * 2)(0, 1)
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.05)
    gc.collect()
    ctypes.CDLL(None).qsort(items, 2, ctypes.sizeof(ctypes.c_int), comparator)
    print(done[0].tokens, done[0].conversations)


def count(args, checkout: str | None, path: Path, tmp: Path) -> tuple[int, str]:
    ready, go, out = tmp / "ready", tmp / "go", tmp / "callgrind.out"
    for f in (ready, go, out):
        f.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if checkout:
        env["PYTHONPATH"] = str(Path(checkout).resolve())
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--toggle-collect=qsort_r",
               f"--callgrind-out-file={out}", sys.executable, str(Path(__file__).resolve()), "--child",
               "--input", str(path), "--ready", str(ready), "--go", str(go), "--labels", args.labels,
               "--tokenizer", args.tokenizer, "--max-length", str(args.max_length)]
    if args.tokenizer_pipeline:
        command += ["--tokenizer-pipeline", args.tokenizer_pipeline]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not ready.exists():
        if process.poll() is not None:
            sys.exit(f"child failed:\n{process.stderr.read()[-3000:]}")
        time.sleep(0.2)
    subprocess.run(["callgrind_control", "-i", "on", str(process.pid)], capture_output=True, check=True)
    go.touch()
    stdout, stderr = process.communicate()
    if process.returncode:
        sys.exit(f"child failed:\n{stderr[-3000:]}")
    text = out.read_text()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    return int(found.group(1)), stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--labels", default="all", choices=("all", "assistant"))
    parser.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "SmolLM2-135M-Instruct"))
    parser.add_argument("--tokenizer-pipeline", default=None, choices=("file", "transformers"))
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--checkout", action="append", default=[],
                        help="also count with this source tree first on PYTHONPATH (repeatable)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sys.path.insert(0, str(HERE))
    import bench

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "in.jsonl"
        lines = bench.build_input(path, 1 << 40, max_lines=args.lines)
        print(f"{lines} conversations, labels={args.labels}, {Path(args.tokenizer).name}", flush=True)
        for checkout in [None, *args.checkout]:
            instructions, shown = count(args, checkout, path, tmp)
            print(f"  {checkout or 'this checkout'}: {instructions / 1e6:,.1f} M instructions "
                  f"(tokens, conversations: {shown})", flush=True)


if __name__ == "__main__":
    main()
