"""Where the engine's time goes, stage by stage, on a corpus built like bench.py's (not a test).

    python benchmarks/profile_stages.py                          # 20,000 conversations, SmolLM2
    python benchmarks/profile_stages.py --conversations 2000 --reps 1 --no-e2e   # a quick look

Each stage is timed alone in this process on the whole corpus, in chunks of --chunk conversations
(the engine's 1,024), best of --reps (wall seconds, and the CPU seconds of that run: every thread of
this process, so a multi-threaded Rust call counts all its cores):

  (a) read + parse + normalise: reading the lines, orjson.loads, formats.normalize_record
  (b) render: the engine's ChatEncoder.render; `tokenizer.apply_chat_template(batch, tokenize=False)`;
      transformers' compiled template (`chat_template_utils._compile_jinja_template`) rendered
      directly; each in collate_assets' bounded sandbox (template_limits.BoundedSandbox, what collate
      uses), in transformers' stock ImmutableSandboxedEnvironment, and (reference only: unsafe for
      untrusted templates) a plain jinja2.Environment. Every variant's strings are checked equal.
  (c) encode: backend encode_batch (with offsets) against encode_batch_fast, on the Rust thread pool
      (TOKENIZERS_PARALLELISM=true) and on one thread (what a forked worker does); ids checked equal
  (d) labels: ChatEncoder.labels_for per conversation (labels=all), and labels=assistant's extra
      (skeleton render + alignment, offsets, masks)
  (e) spill: building the Arrow record batches of a chunk, and writing them (IPC file)
  (g) pack: spill.pack_spill of that spill to Arrow; (h) the pickling a worker pool adds per chunk
      (raw lines to a worker, token arrays back)
  (f) start-up: `python -c "import X"` against `python -c pass` and `-X importtime` for dagster,
      transformers (and torch, which it imports when installed), pyarrow, ...; the `collate` command's
      start-up on a 20-conversation file (--no-dagster, and through Dagster)
  end-to-end: `collate -i CORPUS --no-dagster --json` (its wall, CPU from os.wait4 and stage_seconds)

Figures are per 10,000 conversations, and each stage's share of the sum of the stages the engine
runs (start-up is per process: its share is for this corpus).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402  (the corpus, the shared paths)

PER = 10_000  # figures are per this many conversations
IMPORTS = ("dagster", "transformers", "torch", "pyarrow", "pandas", "tokenizers", "jinja2", "numpy", "orjson",
           "psutil", "collate_assets")


def timed(fn, reps: int) -> tuple[float, float, object]:
    """(wall, CPU) seconds of the fastest of `reps` calls of fn(), and its result."""
    best = None
    for _ in range(reps):
        gc.collect()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        if best is None or wall < best[0]:
            best = (wall, cpu, result)
    return best


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Report:
    def __init__(self, conversations: int):
        self.n = conversations
        self.rows: dict[str, dict] = {}

    def add(self, key: str, what: str, wall: float, cpu: float, in_engine: bool = False, note: str = "") -> None:
        self.rows[key] = {"what": what, "wall": wall, "cpu": cpu, "in_engine": in_engine, "note": note}
        scale = PER / self.n
        print(f"  {key:<22} {what:<70} wall {wall * scale:7.3f} s  CPU {cpu * scale:7.3f} s  per 10k{('  ' + note) if note else ''}",
              file=sys.stderr, flush=True)


def with_env(name: str, value: str | None):
    class _Env:
        def __enter__(self):
            self.old = os.environ.get(name)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

        def __exit__(self, *exc):
            if self.old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = self.old

    return _Env()


# ----------------------------------------------------------------------------------------------------


def profile_engine_stages(args, corpus: Path, work: Path, report: Report) -> dict:
    import jinja2
    import numpy as np
    import orjson
    import pyarrow as pa
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils import chat_template_utils as ctu

    from collate_assets.core import CollateSettings, load_tokenizer, pack_spill
    from collate_assets.core.tokens.chat import ChatEncoder, Rendered
    from collate_assets.core.read.formats import normalize_record
    from collate_assets.core.settings import IGNORE_INDEX
    from collate_assets.core.pack.spill import SPILL_SCHEMA
    from collate_assets.core.tokens.template_limits import BoundedSandbox

    extra: dict = {}
    wall0 = time.perf_counter()
    importlib.import_module("transformers.models.auto.tokenization_auto")  # what AutoTokenizer imports (torch too)

    wall1 = time.perf_counter()
    tok = load_tokenizer(args.tokenizer)
    extra["transformers_import_seconds"] = wall1 - wall0
    extra["tokenizer_load_seconds"] = time.perf_counter() - wall1

    # (a) read, parse, normalise -------------------------------------------------------------------
    def read_lines():
        with open(corpus, "rb") as f:
            return [line for line in f if line.strip()]

    wall, cpu, lines = timed(read_lines, args.reps)
    report.add("a.read", "read the lines (bytes)", wall, cpu, True)
    wall, cpu, records = timed(lambda: [orjson.loads(line) for line in lines], args.reps)
    report.add("a.parse", "orjson.loads", wall, cpu, True)
    wall, cpu, conversations = timed(lambda: [normalize_record(r) for r in records], args.reps)
    report.add("a.normalize", "formats.normalize_record", wall, cpu, True)
    try:  # the reader as the engine calls it (its API may move: skipped then)
        from collate_assets.core.read.reader import iter_raw_chunks, parse_chunk

        def reader():
            return sum(len(parse_chunk(raw).conversations) for raw in iter_raw_chunks(corpus, chunk_lines=args.chunk))

        wall, cpu, count = timed(reader, args.reps)
        report.add("a.reader", "reader.iter_raw_chunks + parse_chunk (= read + parse + normalise)", wall, cpu,
                   note=f"{count} conversations")
    except ImportError:
        pass

    # (b) render -----------------------------------------------------------------------------------
    encoder = ChatEncoder(tok, "all")
    batches = chunks(conversations, args.chunk)
    wall, cpu, rendered = timed(lambda: [r for batch in batches for r in encoder.render(batch)], args.reps)
    report.add("b.render", "ChatEncoder.render (adapt + apply_chat_template, bounded sandbox)", wall, cpu, True)
    reference = [r.texts[0] for r in rendered if isinstance(r, Rendered)]
    if len(reference) != len(conversations):
        print(f"  note: {len(conversations) - len(reference)} conversations did not render", file=sys.stderr)
    adapted = [encoder.adapt(c) for c in conversations if c.tools is None]
    if len(adapted) != len(conversations):
        raise SystemExit("profile_stages: the corpus has records with tools; build one without")
    adapted_batches = chunks(adapted, args.chunk)
    special = dict(tok.special_tokens_map)

    def apply_all():
        return [t for batch in adapted_batches for t in tok.apply_chat_template(batch, tokenize=False)]

    def direct_all():
        compiled = ctu._compile_jinja_template(tok.chat_template)
        render = compiled.render
        return [render(messages=m, tools=None, documents=None, add_generation_prompt=False, **special) for m in adapted]

    def copies_all():  # what apply_chat_template does to the messages before rendering them
        for batch in adapted_batches:
            for chat in [ctu._normalize_chat_messages(c) for c in batch]:
                ctu._alias_reasoning_fields(ctu._plain_template_data(chat))

    mismatches: dict[str, int] = {}
    sandboxes = (("bounded", BoundedSandbox), ("stock", ImmutableSandboxedEnvironment), ("plain", jinja2.Environment))
    installed = ctu.ImmutableSandboxedEnvironment
    try:
        for name, env_class in sandboxes:
            ctu.ImmutableSandboxedEnvironment = env_class
            ctu._compile_jinja_template.cache_clear()
            label = {"bounded": "collate's BoundedSandbox", "stock": "transformers' stock sandbox",
                     "plain": "plain jinja2.Environment (reference: unsafe)"}[name]
            if name != "plain":
                wall, cpu, texts = timed(apply_all, args.reps)
                mismatches[f"apply/{name}"] = sum(a != b for a, b in zip(texts, reference)) + abs(len(texts) - len(reference))
                report.add(f"b.apply.{name}", f"apply_chat_template(batch, tokenize=False), {label}", wall, cpu)
            wall, cpu, texts = timed(direct_all, args.reps)
            mismatches[f"direct/{name}"] = sum(a != b for a, b in zip(texts, reference)) + abs(len(texts) - len(reference))
            report.add(f"b.direct.{name}", f"compiled template .render() directly, {label}", wall, cpu)
    finally:
        ctu.ImmutableSandboxedEnvironment = installed
        ctu._compile_jinja_template.cache_clear()
    wall, cpu, _ = timed(copies_all, args.reps)
    report.add("b.copies", "of which: apply_chat_template's copies of the messages", wall, cpu)
    wall, cpu, _ = timed(lambda: [encoder.adapt(c) for c in conversations], args.reps)
    report.add("b.adapt", "of which: ChatEncoder.adapt", wall, cpu)
    extra["render_mismatches"] = mismatches

    # (c) encode -----------------------------------------------------------------------------------
    text_batches = chunks(reference, args.chunk)
    backend = tok.backend_tokenizer
    ids_seen: dict[str, int] = {}
    encodings = None
    for parallel in ("true", "false"):
        with with_env("TOKENIZERS_PARALLELISM", parallel):
            threads = "Rust thread pool" if parallel == "true" else "one thread, as in a worker"
            for method in ("encode_batch", "encode_batch_fast"):
                call = getattr(backend, method)
                wall, cpu, out = timed(
                    lambda: [e for batch in text_batches for e in call(batch, add_special_tokens=False)], args.reps)
                ids_seen[f"{method}/{parallel}"] = hash(tuple(tuple(e.ids) for e in out))
                in_engine = method == "encode_batch_fast" and parallel == "false"
                report.add(f"c.{method}.{'pool' if parallel == 'true' else 'one'}", f"{method} ({threads})", wall, cpu,
                           in_engine)
                if method == "encode_batch" and parallel == "false":
                    encodings = out  # with offsets: labels=assistant needs them
    extra["encode_ids_identical"] = len(set(ids_seen.values())) == 1
    tokens = sum(len(e.ids) for e in encodings)
    extra["tokens"] = tokens

    # (d) labels -----------------------------------------------------------------------------------
    wall, cpu, sequences = timed(lambda: [encoder.labels_for(e, None) for e in encodings], args.reps)
    report.add("d.labels", "ChatEncoder.labels_for, labels=all (per conversation)", wall, cpu, True)
    assistant = ChatEncoder(tok, "assistant")
    wall, cpu, rendered_a = timed(lambda: [r for batch in batches for r in assistant.render(batch)], args.reps)
    report.add("d.assistant.render", "labels=assistant: ChatEncoder.render (+ skeleton render, alignment)", wall, cpu)
    good = [r for r in rendered_a if isinstance(r, Rendered)]
    texts_a = [t for r in good for t in r.texts]
    masks_a = [m for r in good for m in r.masks]
    with with_env("TOKENIZERS_PARALLELISM", "false"):
        enc_a = [e for batch in chunks(texts_a, args.chunk) for e in backend.encode_batch(batch, add_special_tokens=False)]
    wall, cpu, _ = timed(lambda: [assistant.labels_for(e, m) for e, m in zip(enc_a, masks_a)], args.reps)
    report.add("d.assistant.labels", "labels=assistant: ChatEncoder.labels_for with masks", wall, cpu)
    extra["assistant_rejected"] = len(rendered_a) - len(good)

    # (e) spill ------------------------------------------------------------------------------------
    seq_batches = chunks(sequences, args.chunk)

    def build():
        out = []
        for k, batch in enumerate(seq_batches):
            lengths = np.fromiter((len(ids) for ids, _ in batch), dtype=np.int64, count=len(batch))
            offsets = np.zeros(len(batch) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            ids = np.concatenate([ids for ids, _ in batch])
            labels = np.concatenate([lab for _, lab in batch])
            labels[offsets[:-1]] = IGNORE_INDEX
            first = k * args.chunk + 1
            lines_ = np.arange(first, first + len(batch), dtype=np.int64)
            out.append((offsets, ids, labels, lines_))
        return out

    wall, cpu, arrays = timed(build, args.reps)
    report.add("e.arrays", "spill: concatenate a chunk's token arrays (the labels stage's tail)", wall, cpu, True)

    def to_batches():
        return [
            pa.record_batch(
                [pa.ListArray.from_arrays(pa.array(o), pa.array(i)), pa.ListArray.from_arrays(pa.array(o), pa.array(lab)),
                 pa.array(ln)], schema=SPILL_SCHEMA)
            for o, i, lab, ln in arrays
        ]

    pa.array(np.zeros(1, dtype=np.int32))  # pyarrow's one-time first call (it imports pandas): see start-up
    wall, cpu, record_batches = timed(to_batches, args.reps)
    report.add("e.batch", "spill: pa.record_batch of each chunk", wall, cpu, True,
               note="(pyarrow's one-time first call: see start-up)")
    spill = work / "profile.spill.arrow"

    def write():
        with pa.OSFile(str(spill), "wb") as sink, pa.ipc.new_file(sink, SPILL_SCHEMA) as writer:
            for b in record_batches:
                writer.write_batch(b)

    wall, cpu, _ = timed(write, args.reps)
    report.add("e.write", f"spill: Arrow IPC file writes ({spill.stat().st_size / 1e6:.0f} MB)", wall, cpu, True)

    # (g) pack, (h) worker pickling ----------------------------------------------------------------
    out = work / "profile.arrow"
    wall, cpu, pack_stats = timed(lambda: pack_spill(spill, out, "arrow", CollateSettings(max_length=args.max_length)), args.reps)
    report.add("g.pack", f"spill.pack_spill to Arrow, max_length {args.max_length} ({pack_stats.rows} rows)", wall, cpu, True)
    line_batches = chunks(lines, args.chunk)

    def ship():
        for raw, (o, i, lab, ln) in zip(line_batches, arrays):
            pickle.loads(pickle.dumps(raw, protocol=pickle.HIGHEST_PROTOCOL))
            pickle.loads(pickle.dumps((o, i, lab, ln), protocol=pickle.HIGHEST_PROTOCOL))

    wall, cpu, _ = timed(ship, args.reps)
    report.add("h.pickle", "worker pool: pickle + unpickle raw lines out, token arrays back", wall, cpu,
               note="(pipe transfer not included)")
    return extra


# ----------------------------------------------------------------------------------------------------


def _importtime(stderr: str) -> dict[str, float]:
    """Cumulative import seconds of the packages in IMPORTS, from `-X importtime` output."""
    out = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)", line)
        if m and m.group(4) in IMPORTS and m.group(4) not in out:
            out[m.group(4)] = int(m.group(2)) / 1e6
    return out


def _wall(cmd: list[str], env: dict, reps: int) -> tuple[float, subprocess.CompletedProcess]:
    best, proc = None, None
    for _ in range(reps):
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"profile_stages: exit {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
        best = seconds if best is None else min(best, seconds)
    return best, proc


def profile_startup(args, work: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    py = sys.executable
    reps = max(2, args.reps)
    base, _ = _wall([py, "-c", "pass"], env, reps)
    imports = {}
    for stmt, name in (("import dagster", "dagster"), ("from transformers import AutoTokenizer", "transformers"),
                       ("import torch", "torch"), ("import pyarrow", "pyarrow"), ("import tokenizers", "tokenizers"),
                       ("import jinja2", "jinja2"), ("import collate_assets.definitions", "collate_assets.definitions")):
        seconds, _ = _wall([py, "-c", stmt], env, reps)
        _, timed_proc = _wall([py, "-X", "importtime", "-c", stmt], env, 1)
        imports[name] = {"process": seconds - base, "importtime": _importtime(timed_proc.stderr)}
        print(f"  f.import {name:<28} {seconds - base:6.2f} s over `python -c pass` ({base:.2f} s)", file=sys.stderr, flush=True)
    # pyarrow imports pandas (when installed) at its first pa.array of a numpy array: once per process,
    # in the engine's first spill batch. Array.from_buffers does not.
    first = ("import time, sys, numpy as np, pyarrow as pa; a = np.zeros(8, np.int32); t = time.perf_counter(); "
             "{call}; print(time.perf_counter() - t, 'pandas' in sys.modules)")
    first_call = {}
    for name, call in (("pa.array", "pa.array(a)"),
                       ("pa.Array.from_buffers", "pa.Array.from_buffers(pa.int32(), len(a), [None, pa.py_buffer(a)])")):
        _, proc = _wall([py, "-c", first.format(call=call)], env, 1)
        seconds, pandas = proc.stdout.split()
        first_call[name] = {"seconds": float(seconds), "imports_pandas": pandas == "True"}
        print(f"  f.first {name} of a numpy array: {float(seconds):.3f} s, imports pandas: {pandas}", file=sys.stderr, flush=True)
    tiny = work / "tiny" / "tiny.jsonl"
    tiny.parent.mkdir()
    bench.build_input(tiny, size=1 << 62, max_lines=20)
    common = ["-i", str(tiny), "-t", args.tokenizer, "-f", "arrow", "-m", str(args.max_length), "-q"]
    commands = {}
    help_seconds, _ = _wall([py, "-m", "collate_assets.cli", "--help"], env, reps)
    commands["collate --help"] = help_seconds
    for label, extra_args, dagster in (("collate --no-dagster, 20 conversations", ["--no-dagster"], False),
                                       ("collate through Dagster, 20 conversations", [], True)):
        walls, timed_imports = [], {}
        for k in range(reps + 1):
            home = work / f"dagster_home_{int(dagster)}_{k}"
            home.mkdir()
            run_env = dict(env, DAGSTER_HOME=str(home))
            cmd = [py, *(["-X", "importtime"] if k == reps else []), "-m", "collate_assets.cli", *common,
                   "-o", str(work / f"tiny_out_{int(dagster)}_{k}"), *extra_args]
            seconds, proc = _wall(cmd, run_env, 1)
            if k == reps:
                timed_imports = _importtime(proc.stderr)
            else:
                walls.append(seconds)
        commands[label] = min(walls)
        commands[label + ": imports"] = timed_imports
        print(f"  f.{label:<45} {min(walls):6.2f} s; imports {json.dumps({k: round(v, 2) for k, v in timed_imports.items()})}",
              file=sys.stderr, flush=True)
    return {"python": base, "imports": imports, "commands": commands, "first_call": first_call}


def run_e2e(args, corpus: Path, work: Path) -> dict:
    out = work / "e2e_out"
    input_dir = work / "e2e_in"
    input_dir.mkdir()
    os.link(corpus, input_dir / corpus.name)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = ["collate", "-i", str(input_dir / corpus.name), "-o", str(out), "-t", args.tokenizer, "-f", "arrow",
           "-m", str(args.max_length), "--no-dagster", "--json"]
    with open(work / "e2e.out", "wb") as stdout, open(work / "e2e.err", "wb") as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"profile_stages: collate failed: {(work / 'e2e.err').read_text()[-2000:]}")
    files = json.loads((work / "e2e.out").read_text())
    stages = bench._stage_sums(files)
    result = {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "stages": stages,
              "workers": [f["tokenize"].get("workers") for f in files], "tokens": sum(f["pack"]["tokens"] for f in files)}
    print(f"  e2e: wall {wall:.1f} s, CPU {result['cpu']:.1f} s, workers {result['workers']}, stages "
          f"{json.dumps({k: round(v, 2) for k, v in stages.items()})}", file=sys.stderr, flush=True)
    return result


# ----------------------------------------------------------------------------------------------------


def print_report(args, report: Report, extra: dict, startup: dict | None, e2e: dict | None) -> None:
    scale = PER / report.n
    rows = report.rows
    engine_cpu = sum(r["cpu"] for r in rows.values() if r["in_engine"])
    startup_s = startup["commands"]["collate --no-dagster, 20 conversations"] if startup else 0.0
    whole = engine_cpu + startup_s  # this corpus, one process
    print(f"\n{report.n:,} conversations, {extra['tokens']:,} tokens, SmolLM2 tokenizer ({args.tokenizer}); chunks of "
          f"{args.chunk}; best of {args.reps}; load average at the end {os.getloadavg()[0]:.2f} (2 cores)")
    print(f"\n| stage | what | wall s / 10k | CPU s / 10k | share of the whole (CPU, {report.n:,} conversations + one start-up) |")
    print("|---|---|---:|---:|---:|")
    for key, r in rows.items():
        share = f"{r['cpu'] / whole:.1%}" if r["in_engine"] else ""
        mark = "" if r["in_engine"] else " *"
        print(f"| {key}{mark} | {r['what']}{(' ' + r['note']) if r['note'] else ''} | {r['wall'] * scale:.3f} | "
              f"{r['cpu'] * scale:.3f} | {share} |")
    if startup:
        print(f"| f.start-up | `collate --no-dagster` on 20 conversations (per process, not per 10k) | "
              f"{startup_s:.2f} | | {startup_s / whole:.1%} |")
    print(f"| whole | the stages the engine runs (unstarred): per 10k; + one start-up: {whole:.2f} s for this corpus | | "
          f"{engine_cpu * scale:.3f} | 100% |")
    print("(* an alternative or a part of a row above: not in the whole)")
    print("\nrender: strings identical to the engine's: "
          + ", ".join(f"{k} {'yes' if v == 0 else f'NO ({v} differ)'}" for k, v in extra["render_mismatches"].items()))
    apply_b, direct_b = rows.get("b.apply.bounded"), rows.get("b.direct.bounded")
    if apply_b and direct_b:
        per_call = (apply_b["wall"] - direct_b["wall"]) / report.n * 1e6
        print(f"apply_chat_template over the compiled template's render (bounded sandbox): {per_call:.0f} µs per "
              f"conversation ({apply_b['wall'] / direct_b['wall']:.2f}x); its message copies alone: "
              f"{rows['b.copies']['wall'] / report.n * 1e6:.0f} µs")
    for a, b, what in (("b.apply.stock", "b.apply.bounded", "bounded sandbox over stock (apply_chat_template)"),
                       ("b.direct.stock", "b.direct.bounded", "bounded sandbox over stock (direct render)"),
                       ("b.direct.plain", "b.direct.stock", "stock sandbox over plain jinja2 (direct render)")):
        if a in rows and b in rows:
            print(f"{what}: {rows[b]['wall'] / rows[a]['wall']:.2f}x")
    print(f"encode: ids identical across the four variants: {'yes' if extra['encode_ids_identical'] else 'NO'}")
    if startup:
        print("\nstart-up (seconds; imports measured as `python -c \"import X\"` minus `python -c pass` "
              f"= {startup['python']:.2f} s):")
        for name, v in startup["imports"].items():
            inner = ", ".join(f"{k} {s:.2f}" for k, s in v["importtime"].items() if k != name.split(".")[0])
            print(f"  import {name}: {v['process']:.2f}" + (f"  (of which, by -X importtime: {inner})" if inner else ""))
        for label, v in startup["commands"].items():
            if isinstance(v, dict):
                print(f"  {label}: " + ", ".join(f"{k} {s:.2f}" for k, s in v.items()))
            else:
                print(f"  {label}: {v:.2f}")
        for name, v in startup.get("first_call", {}).items():
            print(f"  first {name} of a numpy array in a process: {v['seconds']:.3f} (imports pandas: "
                  f"{'yes' if v['imports_pandas'] else 'no'})")
        print(f"  in process: `from transformers import AutoTokenizer` {extra['transformers_import_seconds']:.2f}, then "
              f"load_tokenizer (files, checks, template probes) {extra['tokenizer_load_seconds']:.2f}")
    if e2e:
        print(f"\nend to end, `collate --no-dagster --json` on this corpus: wall {e2e['wall']:.1f} s, CPU {e2e['cpu']:.1f} s "
              f"({e2e['cpu'] * scale:.2f} CPU s / 10k), workers {e2e['workers']}; sum of the stages above "
              f"{whole:.1f} CPU s; its stage_seconds: "
              + ", ".join(f"{k} {v:.2f}" for k, v in e2e["stages"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--tokenizer", default=str(bench.SHARED / "tokenizers" / "SmolLM2-135M-Instruct"))
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=1024, help="conversations per batch (the engine's chunk)")
    parser.add_argument("--reps", type=int, default=3, help="runs of each stage; the fastest is kept")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up measurements")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end collate run")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="collate-profile-", dir=args.workdir) as tmp:
        work = Path(tmp)
        corpus = work / "corpus.jsonl"
        count = bench.build_input(corpus, size=1 << 62, max_lines=args.conversations)
        print(f"corpus: {count} conversations, {corpus.stat().st_size / 1e6:.1f} MB (seed 0); load average "
              f"{os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
        report = Report(count)
        extra = profile_engine_stages(args, corpus, work, report)
        startup = None if args.no_startup else profile_startup(args, work)
        e2e = None if args.no_e2e else run_e2e(args, corpus, work)
    print_report(args, report, extra, startup, e2e)
    if args.json_out:
        args.json_out.write_text(json.dumps(
            {"conversations": report.n, "rows": report.rows, "extra": extra, "startup": startup, "e2e": e2e},
            indent=2, default=str))


if __name__ == "__main__":
    main()
