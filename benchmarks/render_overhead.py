"""Time chat-template rendering with and without the bounded sandbox (core/tokens/template_limits.py).

    python benchmarks/render_overhead.py [--tokenizer DIR [DIR ...] | --all] [--size 20MB] [--rounds 5]
    python benchmarks/render_overhead.py --instructions [--tokenizer DIR [DIR ...] | --all] [--conversations 2048]

Renders the benchmark's conversations in batches of 1024 through `apply_chat_template(tokenize=False)`,
alternating transformers' own ImmutableSandboxedEnvironment and collate's BoundedSandbox round by
round (so machine load hits both alike), and prints the best and median time of each and the ratio:
wall time, and the CPU time of the process (which includes the watchdog thread, and which other
processes on a busy machine disturb less). `--all` measures every tokenizer in ../shared/tokenizers
on the same input, one after the other.

`--instructions` counts instructions instead of timing (deterministic, so it holds on a busy
machine; needs valgrind): for each tokenizer and each sandbox, one child process renders the first
--conversations conversations of the same input (batches of 1024) under
`valgrind --tool=callgrind --instr-atstart=no --toggle-collect=qsort_r`. The child loads the
tokenizer and the input uninstrumented, then waits; the parent switches instrumentation on
(`callgrind_control -i on PID`) and lets it go; the child makes its `apply_chat_template` calls from
inside libc's qsort_r (a ctypes comparator, called once), so callgrind collects exactly those calls:
the template's compilation, the watchdog's arming and every render, in the rendering thread (the
watchdog thread's own 20 ms ticks depend on wall time and are not collected). Prints per tokenizer
the instructions under each sandbox and the ratio bounded / transformers'. The child's hash seed is
fixed (PYTHONHASHSEED=0) and the collector emptied before the calls; what still varies (the
allocator state the watchdog thread's ticks leave) kept two runs within 0.07 %. One child at a time,
one core; about 3 minutes for the three shared tokenizers.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    import orjson

    import bench

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", nargs="+", default=[str(bench.SHARED / "tokenizers" / "SmolLM2-135M-Instruct")])
    parser.add_argument("--all", action="store_true", help="every tokenizer in ../shared/tokenizers")
    parser.add_argument("--size", default="20MB")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under valgrind's callgrind instead of timing")
    parser.add_argument("--conversations", type=int, default=2048,
                        help="with --instructions: render the first N conversations of the input")
    # Internal: one measured child process of --instructions (see instructions_child).
    parser.add_argument("--instructions-child", choices=SANDBOXES, help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instructions_child:
        instructions_child(args.tokenizer[0], args.instructions_child, Path(args.input), Path(args.ready), Path(args.go))
        return
    tokenizers = args.tokenizer
    if args.all:
        tokenizers = sorted(str(p) for p in (bench.SHARED / "tokenizers").iterdir() if p.is_dir())
    if args.instructions:
        count_instructions(tokenizers, bench.parse_size(args.size), args.conversations)
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        bench.build_input(path, bench.parse_size(args.size))
        conversations = [orjson.loads(line)["messages"] for line in path.read_bytes().splitlines()]
    for tokenizer in tokenizers:
        measure(tokenizer, conversations, args.rounds)


SANDBOXES = ("transformers", "bounded")


def use_sandbox(name: str) -> None:
    """Make transformers compile chat templates in `name`'s environment class from now on."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils import chat_template_utils as ctu

    from collate_assets.core.tokens import template_limits

    ctu.ImmutableSandboxedEnvironment = (
        ImmutableSandboxedEnvironment if name == "transformers" else template_limits.BoundedSandbox
    )
    ctu._compile_jinja_template.cache_clear()


def count_instructions(tokenizers: list[str], size: int, n: int) -> None:
    import shutil

    import bench

    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"--instructions needs {tool} (Debian: apt-get install valgrind)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "in.jsonl"
        lines = bench.build_input(path, size, max_lines=n)
        print(f"{lines} conversations (batches of 1024), instructions collected by callgrind around apply_chat_template",
              flush=True)
        for folder in tokenizers:
            counts, digests = {}, {}
            for sandbox in SANDBOXES:
                counts[sandbox], digests[sandbox] = callgrind_child(folder, sandbox, path, tmp)
            if digests["transformers"] != digests["bounded"]:
                sys.exit(f"{Path(folder).name}: the two sandboxes rendered different text")
            base, bounded = counts["transformers"], counts["bounded"]
            rows.append((Path(folder).name, base, bounded, bounded / base))
            print(f"  {Path(folder).name}: transformers {base:,}  bounded {bounded:,}  ratio {bounded / base:.4f}", flush=True)
    print()
    print("| tokenizer | transformers' sandbox | bounded sandbox | ratio bounded / transformers' |")
    print("|---|---:|---:|---:|")
    for name, base, bounded, ratio in rows:
        print(f"| {name} | {base / 1e6:,.1f} M | {bounded / 1e6:,.1f} M | {ratio:.3f} ({(ratio - 1) * 100:+.1f} %) |")


def callgrind_child(folder: str, sandbox: str, path: Path, tmp: Path) -> tuple[int, str]:
    """Run one instructions_child under callgrind; returns (instructions collected, digest of the text)."""
    ready, go, out = tmp / f"ready-{sandbox}", tmp / f"go-{sandbox}", tmp / f"callgrind.out.{sandbox}"
    for f in (ready, go, out):
        f.unlink(missing_ok=True)
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--toggle-collect=qsort_r",
        f"--callgrind-out-file={out}", sys.executable, str(Path(__file__).resolve()),
        "--instructions-child", sandbox, "--tokenizer", folder, "--input", str(path), "--ready", str(ready), "--go", str(go),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not ready.exists():
        if child.poll() is not None:
            sys.exit(f"child failed before rendering:\n{child.stderr.read()}")
        time.sleep(0.1)
    switch = subprocess.run(["callgrind_control", "-i", "on", str(child.pid)], capture_output=True, text=True)
    if switch.returncode != 0 or "OK" not in switch.stdout:
        child.kill()
        sys.exit(f"callgrind_control -i on {child.pid} failed:\n{switch.stdout}{switch.stderr}")
    go.touch()
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        sys.exit(f"child failed ({child.returncode}):\n{stderr}")
    total = None
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
    if not total:
        sys.exit(f"no instructions collected for {sandbox}, {folder}:\n{stderr}")
    return total, stdout.strip()


def instructions_child(folder: str, sandbox: str, path: Path, ready: Path, go: Path) -> None:
    """Under callgrind: load everything, wait for the parent to switch instrumentation on, render
    the input from inside qsort_r (the only function whose calls are collected), print a digest."""
    import ctypes
    import gc

    import orjson

    from collate_assets.core import load_tokenizer

    tokenizer = load_tokenizer(folder)
    use_sandbox(sandbox)
    conversations = [orjson.loads(line)["messages"] for line in path.read_bytes().splitlines()]
    batches = [conversations[i : i + 1024] for i in range(0, len(conversations), 1024)]
    texts: list[str] = []
    errors: list[BaseException] = []

    def render(a, b) -> int:
        if texts or errors:  # qsort_r compares two items once; never render twice
            return 0
        try:
            for batch in batches:
                texts.extend(tokenizer.apply_chat_template(batch, tokenize=False))
        except BaseException as e:  # noqa: BLE001 - re-raised below, out of the C callback
            errors.append(e)
        return 0

    libc = ctypes.CDLL(None)
    comparator = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(render)
    items = (ctypes.c_int * 2)(0, 1)
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    # The same collector state at the start whatever the wait took (its allocations count toward
    # the next collection).
    gc.collect()
    libc.qsort(items, 2, ctypes.sizeof(ctypes.c_int), comparator)
    if errors:
        raise errors[0]
    if len(texts) != len(conversations):
        raise SystemExit(f"rendered {len(texts)} of {len(conversations)} conversations")
    print(hashlib.sha256("\0".join(texts).encode()).hexdigest(), flush=True)
    os._exit(0)  # skip the interpreter's teardown, instrumented and of no interest


def measure(folder: str, conversations: list, rounds: int) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils import chat_template_utils as ctu

    from collate_assets.core import load_tokenizer
    from collate_assets.core.tokens import template_limits

    tokenizer = load_tokenizer(folder)
    batches = [conversations[i : i + 1024] for i in range(0, len(conversations), 1024)]

    def use(env_class) -> None:
        ctu.ImmutableSandboxedEnvironment = env_class
        ctu._compile_jinja_template.cache_clear()

    def timed() -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            tokenizer.apply_chat_template(batch, tokenize=False)
        return time.perf_counter() - start, time.process_time() - start_cpu

    names = ("transformers sandbox", "bounded sandbox")
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for _ in range(rounds):
        for name, env in zip(names, (ImmutableSandboxedEnvironment, template_limits.BoundedSandbox)):
            use(env)
            w, c = timed()
            wall[name].append(w)
            cpu[name].append(c)
    use(template_limits.BoundedSandbox)
    print(f"{len(conversations)} conversations, {rounds} rounds, {Path(folder).name}")
    for label, times in (("wall", wall), ("cpu", cpu)):
        for name, values in times.items():
            print(f"  {label:4s} {name:22s} best {min(values):.3f} s  median {statistics.median(values):.3f} s")
        base, bounded = times[names[0]], times[names[1]]
        print(f"  {label:4s} ratio bounded/plain: best {min(bounded) / min(base):.3f}, "
              f"median {statistics.median(bounded) / statistics.median(base):.3f}")


if __name__ == "__main__":
    main()
