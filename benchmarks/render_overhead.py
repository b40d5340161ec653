"""Time chat-template rendering with and without the bounded sandbox (core/template_limits.py).

    python benchmarks/render_overhead.py [--tokenizer DIR] [--size 20MB] [--rounds 5]

Renders the benchmark's conversations in batches of 1024 through `apply_chat_template(tokenize=False)`,
alternating transformers' own ImmutableSandboxedEnvironment and collate's BoundedSandbox round by
round (so machine load hits both alike), and prints the best and median time of each and the ratio.
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
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils import chat_template_utils as ctu

    import bench
    from collate_assets.core import load_tokenizer
    from collate_assets.core import template_limits

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", default=str(bench.SHARED / "tokenizers" / "SmolLM2-135M-Instruct"))
    parser.add_argument("--size", default="20MB")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        bench.build_input(path, bench.parse_size(args.size))
        conversations = [orjson.loads(line)["messages"] for line in path.read_bytes().splitlines()]
    tokenizer = load_tokenizer(args.tokenizer)
    batches = [conversations[i : i + 1024] for i in range(0, len(conversations), 1024)]

    def use(env_class) -> None:
        ctu.ImmutableSandboxedEnvironment = env_class
        ctu._compile_jinja_template.cache_clear()

    def timed() -> float:
        start = time.perf_counter()
        for batch in batches:
            tokenizer.apply_chat_template(batch, tokenize=False)
        return time.perf_counter() - start

    times = {"transformers sandbox": [], "bounded sandbox": []}
    for _ in range(args.rounds):
        for name, env in (("transformers sandbox", ImmutableSandboxedEnvironment),
                          ("bounded sandbox", template_limits.BoundedSandbox)):
            use(env)
            times[name].append(timed())
    use(template_limits.BoundedSandbox)
    print(f"{len(conversations)} conversations, {args.rounds} rounds, {Path(args.tokenizer).name}")
    for name, values in times.items():
        print(f"  {name:22s} best {min(values):.3f} s  median {statistics.median(values):.3f} s")
    base, bounded = times["transformers sandbox"], times["bounded sandbox"]
    print(f"  ratio bounded/plain: best {min(bounded) / min(base):.3f}, "
          f"median {statistics.median(bounded) / statistics.median(base):.3f}")


if __name__ == "__main__":
    main()
