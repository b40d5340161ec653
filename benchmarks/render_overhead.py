"""Time chat-template rendering with and without the bounded sandbox (core/template_limits.py).

    python benchmarks/render_overhead.py [--tokenizer DIR [DIR ...] | --all] [--size 20MB] [--rounds 5]

Renders the benchmark's conversations in batches of 1024 through `apply_chat_template(tokenize=False)`,
alternating transformers' own ImmutableSandboxedEnvironment and collate's BoundedSandbox round by
round (so machine load hits both alike), and prints the best and median time of each and the ratio:
wall time, and the CPU time of the process (which includes the watchdog thread, and which other
processes on a busy machine disturb less). `--all` measures every tokenizer in ../shared/tokenizers
on the same input, one after the other.
"""

from __future__ import annotations

import argparse
import statistics
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
    args = parser.parse_args()
    tokenizers = args.tokenizer
    if args.all:
        tokenizers = sorted(str(p) for p in (bench.SHARED / "tokenizers").iterdir() if p.is_dir())

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        bench.build_input(path, bench.parse_size(args.size))
        conversations = [orjson.loads(line)["messages"] for line in path.read_bytes().splitlines()]
    for tokenizer in tokenizers:
        measure(tokenizer, conversations, args.rounds)


def measure(folder: str, conversations: list, rounds: int) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils import chat_template_utils as ctu

    from collate_assets.core import load_tokenizer
    from collate_assets.core import template_limits

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
