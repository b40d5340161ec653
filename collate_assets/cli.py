"""The `collate` command: collate-rs's interface over the engine (and the Dagster asset graph).

    collate -i IN -o OUT -t TOKENIZER -f arrow -m 8192

With no -i / -t it runs on the embedded sample and demo tokenizer.
Exit codes: 0 done, 1 a problem with the input, tokenizer or output (one line says what and where),
2 a bad argument.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .core import (
    DEFAULT_MAX_LINE_BYTES,
    LABELS_MODES,
    OUTPUT_FORMATS,
    OVERLONG_POLICIES,
    PACKING_STRATEGIES,
    REASONING_TURNS,
    CollateError,
    CollateSettings,
    FileStats,
)

DEFAULT_OUTPUT = "collate_output"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collate",
        description="Pack chat conversations (JSON Lines, JSON arrays, Parquet) into padding-free training rows, one output per input file.",
    )
    parser.add_argument(
        "-i", "--input",
        help="an input file (.jsonl, .jsonl.gz, .jsonl.zst, .json array, .parquet) or a folder of them (default: the embedded sample)",
    )
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT, help=f"output folder (default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("-t", "--tokenizer", help="Hugging Face hub id (org/name) or local folder (default: the demo tokenizer)")
    parser.add_argument("-f", "--format", default="arrow", choices=OUTPUT_FORMATS, help="output format (default: arrow)")
    parser.add_argument("-m", "--max-length", type=_positive_int, default=8192, help="tokens per packed row (default: 8192)")
    parser.add_argument("--labels", default="all", choices=LABELS_MODES, help="train on all tokens or only assistant turns")
    parser.add_argument("--packing", default="bfd", choices=PACKING_STRATEGIES, help="best-fit decreasing or the legacy greedy")
    parser.add_argument("--overlong", default="truncate", choices=OVERLONG_POLICIES, help="what to do with conversations longer than max length")
    parser.add_argument("--reasoning-turns", default="per-turn", choices=REASONING_TURNS, help="reasoning the template drops from earlier turns: train each such turn alone with its history (per-turn) or train what the template renders (as-rendered)")
    parser.add_argument("--train-empty-think", action="store_true", help="labels=assistant: also train the empty thinking block a template inserts (Qwen3)")
    parser.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template file that replaces the tokenizer's")
    parser.add_argument("--check-template", action="store_true", help="print what the chat template does (system, tools, reasoning, end of turn, a probe conversation's trained tokens) and exit")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit) of the tokenizer")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the tokenizer's repository code to run (off by default)")
    parser.add_argument("--max-line-bytes", type=_positive_int, default=DEFAULT_MAX_LINE_BYTES, metavar="N", help="reject input lines longer than N bytes unparsed (default: 8 MiB)")
    parser.add_argument("--strict", action="store_true", help="fail on the first bad line instead of writing it to the rejects file")
    parser.add_argument("--no-dagster", action="store_true", help="run the engine directly, without recording the run in the Dagster instance")
    parser.add_argument("--register-only", action="store_true", help="only register the input files as partitions in DAGSTER_HOME and print their keys")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the per-file statistics as JSON")
    return parser


def resolve_defaults(args: argparse.Namespace) -> tuple[Path, str]:
    from .sample import DEMO_INPUT_DIR, DEMO_TOKENIZER_DIR

    return Path(args.input) if args.input else DEMO_INPUT_DIR, args.tokenizer or str(DEMO_TOKENIZER_DIR)


def format_stats(stats: FileStats) -> str:
    t, p = stats.tokenize, stats.pack
    lines = [
        f"{t.file} -> {p.output}",
        f"  conversations {t.conversations} written, {t.rejected} rejected"
        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(t.reject_reasons.items()))})" if t.rejected else "")
        + f", {t.blank_lines} blank lines; truncated {t.truncated}, dropped {t.dropped}, split {t.split}",
        f"  tokens {t.tokens} ({t.trained_tokens} trained, {t.truncated_tokens} cut); rows {p.rows} "
        f"(lower bound {p.lower_bound}), fill {p.fill:.2%}, {p.sequences_per_row:.1f} sequences/row, {stats.seconds:.1f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = CollateSettings(
            max_length=args.max_length,
            labels=args.labels,
            packing=args.packing,
            overlong=args.overlong,
            strict=args.strict,
            max_line_bytes=args.max_line_bytes,
            reasoning_turns=args.reasoning_turns,
            train_empty_think=args.train_empty_think,
        )
        input_path, tokenizer_name = resolve_defaults(args)
        if args.check_template:
            from .core import load_tokenizer
            from .core.report import template_report

            tokenizer = load_tokenizer(
                tokenizer_name, revision=args.revision, chat_template=args.chat_template,
                trust_remote_code=args.trust_remote_code,
            )
            report = template_report(tokenizer, settings)
            print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if args.json else report.text())
            return 1 if report.refusal else 0
        if args.register_only:
            from .defs.run import register_only

            print("\n".join(register_only(input_path)))
            return 0
        if args.no_dagster:
            results = _run_engine(args, input_path, tokenizer_name, settings)
        else:
            from .defs.run import run_collate

            results = run_collate(
                input_path=input_path,
                output_dir=Path(args.output),
                tokenizer=tokenizer_name,
                revision=args.revision,
                chat_template=args.chat_template,
                trust_remote_code=args.trust_remote_code,
                settings=settings,
                fmt=args.format,
                progress=not args.quiet,
            )
    except CollateError as exc:
        print(f"collate: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("collate: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure still ends with one readable line
        if os.environ.get("COLLATE_DEBUG"):
            raise
        print(f"collate: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for result in results:
            print(format_stats(result))
    return 0


def _run_engine(args, input_path: Path, tokenizer_name: str, settings: CollateSettings) -> list[FileStats]:
    from tqdm import tqdm

    from .core import collate_file, list_input_files, load_tokenizer, output_path_for
    from .core.reader import progress_total

    files = list_input_files(input_path)
    tokenizer = load_tokenizer(
        tokenizer_name, revision=args.revision, chat_template=args.chat_template, trust_remote_code=args.trust_remote_code
    )
    total = sum(progress_total(f) for f in files)
    results = []
    with tqdm(total=total, unit="B", unit_scale=True, desc="collate", disable=args.quiet, file=sys.stderr) as bar:
        for path in files:
            bar.set_postfix_str(path.name)
            results.append(
                collate_file(
                    path,
                    output_path_for(path, Path(args.output), args.format),
                    tokenizer,
                    settings,
                    args.format,
                    progress=lambda nbytes, _lines: bar.update(nbytes),
                )
            )
    return results


if __name__ == "__main__":
    sys.exit(main())
