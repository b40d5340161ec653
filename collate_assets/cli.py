"""The `collate` command: collate-rs's interface over the engine (and the Dagster asset graph).

    collate -i IN -o OUT -t TOKENIZER -f arrow -m 8192

With no -i / -t it runs on the embedded sample and demo tokenizer.
Exit codes: 0 done; 1 a problem with the input, tokenizer or output (one line says what and where;
with several files, every other file is still processed and each failed one is named at the end);
2 a bad argument; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).

Ctrl-C and SIGTERM are handled by the main thread, which only supervises: the work runs in a
worker thread (so neither Dagster nor a library can take the signal over). On a signal the command
removes the temporary files it is writing, marks its open Dagster run canceled, prints
`collate: interrupted` and exits at once; finished outputs stay, nothing partial is left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

# Light: the settings module imports only the standard library, so arguments parse before numpy,
# pyarrow or transformers load.
from .core.process import RUN  # noqa: E402  (what is under way, for the signal handler)
from .core.settings import CollateSettings, env_name, parse_value, settings_fields  # noqa: E402

EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _on_signal(signo, _frame) -> None:
    """Ctrl-C / SIGTERM: clean up what is being written, say so, exit now (130 / 143)."""
    # Both signals do nothing from here on: a second Ctrl-C must not interrupt the cleanup. A handler
    # that does nothing, not SIG_IGN: the work goes on in its thread meanwhile, and every program it
    # starts would keep an ignored signal ignored (exec resets only handled ones). A Dagster run
    # starting then spawned its `tail -F` log copiers deaf to SIGINT and SIGTERM: the orphan watcher
    # Dagster starts beside each could not stop them, and they held the caller's stderr for ever.
    for sig in EXIT_INTERRUPTED:
        signal.signal(sig, _hold_off)
    _refuse_new_processes()
    cleanup = threading.Thread(target=RUN.interrupt, daemon=True)
    cleanup.start()
    cleanup.join(timeout=1.5)  # bounded: a locked database must not keep the user waiting
    if cleanup.is_alive():
        RUN.stop_work()
    _end_children()  # Dagster's `tail -F` copiers and their watchers: before the last line is said
    name = "" if signo == signal.SIGINT else f" ({signal.Signals(signo).name})"
    try:
        _say(f"\ncollate: interrupted{name}\n")
    finally:
        _end_children()  # and any the work started meanwhile
        os._exit(EXIT_INTERRUPTED.get(signo, 128 + signo))


def _refuse_new_processes() -> None:
    """From the signal on, no program is started in this process (the work's thread goes on meanwhile, and
    a Dagster run starting its log capture then would start `tail -F` copiers after the last sweep of
    `_end_children`, just before the exit): `subprocess.Popen` raises OSError instead. A Popen already
    forking finishes within milliseconds, and the sweeps that follow find it."""
    import subprocess

    def refuse(self, *args, **kwargs):
        raise OSError("collate is exiting (interrupted): it starts no new process")

    subprocess.Popen._execute_child = refuse


def _hold_off(_signo, _frame) -> None:
    """Ctrl-C / SIGTERM while `_on_signal` is already ending the command: nothing more to do."""


def _children() -> list[int]:
    """The process ids of this process's children (running or not yet reaped), read from /proc;
    [] where there is no /proc (not Linux)."""
    me = os.getpid()
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    pids = []
    for name in names:
        if name.isdigit() and _parent(int(name)) == me:
            pids.append(int(name))
    return pids


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # "pid (comm) state ppid ...": the command name may hold spaces and parentheses
        return int(stat[stat.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _end_children(wait: float = 1.0) -> None:
    """Kill (SIGKILL) and reap every child process of this one, for a process about to `os._exit`.

    Leaving by `os._exit` skips the context managers that would stop them: Dagster's compute log
    capture (a `tail -F` of the run's stdout and of its stderr, each with a watcher process) stops
    its tails only when the run's capture ends, or, once this process is gone, when the watcher sees
    it (up to a second later), and a tail started without its watcher yet was never stopped at all;
    the tails hold the command's stderr open, so a caller reading it would wait for them. Only this
    process's own children are touched (the tokenizer's workers, already killed, would be too).
    """
    me = os.getpid()
    deadline = time.monotonic() + wait
    quiet = 0
    for _ in range(8):  # a Popen of the work's thread may be forking while these go (see _refuse_new_processes)
        pids = _children()
        if not pids:
            quiet += 1
            if quiet == 2:  # none twice, 10 ms apart
                return
            time.sleep(0.01)
            continue
        quiet = 0
        for pid in pids:
            _kill_child(pid, me)
        left = set(pids)
        while left and time.monotonic() < deadline:  # reaped, so no zombie outlives this process either
            for pid in list(left):
                try:
                    done, _status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:  # reaped already (the thread that started it waited for it)
                    done = pid
                if done:
                    left.discard(pid)
            if left:
                time.sleep(0.005)


def _kill_child(pid: int, me: int) -> None:
    """SIGKILL `pid` if it is still this process's child (a pid file descriptor where there is one,
    so that a pid reused by another program after the child was reaped is never signalled)."""
    pidfd = None
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(pid)
    try:
        if _parent(pid) != me:
            return
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except OSError:  # gone already
        pass
    finally:
        if pidfd is not None:
            os.close(pidfd)


# The command's own stderr, kept when it starts: during a run Dagster points the process's stderr
# at the run's compute log and copies it back with `tail -F`, which a Ctrl-C in a terminal (sent
# to the whole process group) stops too; what is written to fd 2 then never reaches the terminal.
_STDERR: dict = {}


def _say(text: str) -> None:
    """Write `text` to the stderr the command started with."""
    fd = _STDERR.get("fd")
    if fd is None:
        sys.stderr.write(text)
        sys.stderr.flush()
        return
    with contextlib.suppress(OSError):
        sys.stderr.flush()  # what is still buffered comes first
        os.write(fd, text.encode(errors="replace"))


def install_signal_handlers() -> dict:
    """Take SIGINT and SIGTERM (main thread only); returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    if "fd" not in _STDERR:
        with contextlib.suppress(OSError):  # no stderr at all: nothing to keep
            _STDERR["fd"] = os.dup(2)
    return {sig: signal.signal(sig, _on_signal) for sig in EXIT_INTERRUPTED}


if __name__ == "__main__" or Path(sys.argv[0]).name == "collate":
    # Before the heavy imports: Ctrl-C during them is handled too.
    install_signal_handlers()

def _flag_type(field):
    """The type of a setting's option: its text parsed as its environment variable is, then checked
    by `CollateSettings` itself (the one validation; the message names the field)."""

    def parse(text: str):
        try:
            value = parse_value(field, text)
            CollateSettings(**{field.name: value})
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    parse.__name__ = field.name  # argparse names the type in some messages
    return parse


def _dest(field) -> str:
    """The argparse destination of a setting's option: its long option's name (`--max-length` -> max_length)."""
    return field.metadata["flags"][-1].lstrip("-").replace("-", "_")


# option destination -> CollateSettings field, for every setting the command takes as an option
# (the others take their COLLATE_* variable, then the default)
FLAG_FIELDS = {_dest(field): field.name for field in settings_fields() if field.metadata["flags"]}


def _default(field: str) -> str:
    """The help text's default: the field's default and its environment variable."""
    value = CollateSettings.__dataclass_fields__[field].default
    shown = ",".join(value) if isinstance(value, tuple) else value
    if value is None or value is False:  # (not `in (None, False)`: 0 == False would hide a default of 0)
        return f"environment: {env_name(field)}"
    return f"default: {shown}; environment: {env_name(field)}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collate",
        description="Pack chat conversations (JSON Lines, JSON arrays, Parquet) into padding-free training rows, one output per input file. "
        "Every option left out takes its COLLATE_* environment variable, then its default.",
    )
    for field in settings_fields():
        flags = field.metadata["flags"]
        if not flags:
            continue
        help_text = f"{field.metadata['help']} ({_default(field.name)})".replace("%", "%%")
        if field.type == "bool":
            parser.add_argument(*flags, dest=_dest(field), action="store_true", default=None, help=help_text)
        elif field.metadata["choices"] and field.name != "formats":
            parser.add_argument(*flags, dest=_dest(field), choices=field.metadata["choices"], help=help_text)
        else:
            parser.add_argument(*flags, dest=_dest(field), type=_flag_type(field), metavar=field.metadata["metavar"],
                                help=help_text)
    parser.add_argument("--check-template", action="store_true", help="print what the chat template does (system, tools, reasoning, end of turn, a probe conversation's trained tokens) and exit")
    parser.add_argument("--no-dagster", action="store_true", help="run the engine directly, without recording the run in the Dagster instance")
    parser.add_argument("--dataset", metavar="NAME", help="build a dataset of the Dagster code location with its own settings, in DAGSTER_HOME, as a running `dagster dev` would: 'default' (the COLLATE_* variables) or the name of a defs.yaml dataset under COLLATE_DATASETS_DIR; without it the command is a dataset of its own, named after its output folder")
    parser.add_argument("--register-only", action="store_true", help="only register the files of a code-location dataset (--dataset, default: 'default') as its partitions in DAGSTER_HOME, observe them, and print their keys")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the per-file statistics as JSON")
    return parser


def settings_from_args(args: argparse.Namespace) -> CollateSettings:
    """The settings: each flag given, else its COLLATE_* variable, else the default (ValueError if invalid)."""
    given = {field: getattr(args, flag) for flag, field in FLAG_FIELDS.items() if getattr(args, flag) is not None}
    return CollateSettings.from_env(**given)


def _shown(value) -> str:
    from .core.fs import shown

    return shown(value)


def balance_line(report: dict) -> str:
    """One line of a balance_ranks report (core/pack/balance.py)."""
    before, after = report["before"], report["after"]
    return (f"rank balance {report['world_size']}x{report['micro_batch']} ({report['layout']}, read unshuffled): "
            f"max/mean Σlen² per step {before['mean']:.3f} -> {after['mean']:.3f} "
            f"(worst {before['worst']:.2f} -> {after['worst']:.2f}; {after['steps']} steps)")


def format_stats(stats) -> str:
    t, p = stats.tokenize, stats.pack
    lines = [
        f"{_shown(t.file)} -> {_shown(p.output)}",
        f"  conversations {t.conversations} written, {t.rejected} rejected"
        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(t.reject_reasons.items()))})" if t.rejected else "")
        + f", {t.blank_lines} blank lines; truncated {t.truncated}, dropped {t.dropped}, split {t.split}"
        + (f", cut at turns {t.turn_split} ({t.turns_not_fit} assistant turns longer than max_length not trained)"
           if getattr(t, "turn_split", 0) or getattr(t, "turns_not_fit", 0) else ""),
        f"  tokens {t.tokens} ({t.trained_tokens} trained, {t.truncated_tokens} cut"
        + (f", {t.padding_tokens} padding" if getattr(t, "padding_tokens", 0) else "") + f"); rows {p.rows} "
        f"(lower bound {p.lower_bound}), fill {p.fill:.2%}, {p.sequences_per_row:.1f} sequences/row, {stats.seconds:.1f} s",
    ]
    balance = getattr(p, "balance", None)
    if balance:
        lines.append(f"  {balance_line(balance)}")
    supervision = getattr(t, "supervision", None)
    if supervision:
        from .core.tokens.audit import SupervisionAudit

        lines.append(f"  {SupervisionAudit.from_dict(supervision).summary()}")
    from .core.tokens.tokenizer import drift_line

    drift = drift_line(getattr(t, "tokenizer_drift", None))
    if drift:
        lines.append(f"  {drift}")
    from .core.tokens.encoder import encoder_line

    encoder = encoder_line(getattr(t, "encoder", None))
    if encoder:
        lines.append(f"  {encoder}")
    return "\n".join(lines)


class PlainProgress:
    """Progress for a stderr that is not a terminal: one plain line every `every` seconds (no bar)."""

    def __init__(self, total: int, every: float | None = None, stream=None):
        if every is None:
            from .core.settings import LocationSettings

            every = LocationSettings.from_env().progress_seconds
        self.total, self.every, self.stream = total, every, stream or sys.stderr
        self.done = 0
        self.name = ""
        self.last = time.monotonic()

    def update(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            share = f" ({self.done / self.total:.0%})" if self.total else ""
            self.stream.write(f"collate: {self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB read{share} {self.name}\n")
            self.stream.flush()

    def set_postfix_str(self, text: str) -> None:
        self.name = text

    def close(self) -> None:
        pass


def make_progress(total: int, enabled: bool):
    """A tqdm bar on a terminal, plain lines every few seconds otherwise, or None when disabled."""
    if not enabled:
        return None
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, unit="B", unit_scale=True, desc="collate", leave=False, file=sys.stderr)
    return PlainProgress(total)


def main(argv: list[str] | None = None) -> int:
    from .core.tokens.tokenizer import own_process

    own_process()  # tokenizers load without PyTorch here (see core.tokens.tokenizer)
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = install_signal_handlers()
    try:
        return _main(parser, args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .core.fs import output_folder_problem

    if args.dataset is not None or args.register_only:
        given = sorted(f"--{flag.replace('_', '-')}" for flag in FLAG_FIELDS if getattr(args, flag) is not None and flag != "input")
        if args.dataset is not None and args.input and not args.register_only:  # (--register-only checks -i)
            given.insert(0, "-i/--input")
        if given:
            what = f"--dataset {args.dataset}" if args.dataset is not None else "--register-only"
            parser.error(f"{what} uses the dataset's own settings (its defs.yaml, or the COLLATE_* variables for "
                         f"'default'): leave out {', '.join(given)}")
        if args.no_dagster:
            parser.error("--dataset and --register-only are Dagster's: leave out --no-dagster")
        if args.check_template:
            parser.error("--check-template takes the tokenizer's settings: leave out --dataset and --register-only")
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.input and not args.register_only:
        problem = output_folder_problem(settings.input_path(), Path(settings.output_dir))
        if problem is not None:
            parser.error(f"{problem}; give an output folder outside the input folder")
    from .core import CollateError

    box: dict = {}

    def work() -> None:
        try:
            box["value"] = _work(args, settings)
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc

    # The main thread only waits (and so takes Ctrl-C at once); the work runs in this thread.
    worker = threading.Thread(target=work, name="collate-work", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=0.2)
    error = box.get("error")
    if error is not None:
        if isinstance(error, CollateError):
            print(f"collate: error: {_shown(error)}", file=sys.stderr)
            return 1
        if isinstance(error, KeyboardInterrupt):
            print("collate: interrupted", file=sys.stderr)
            return 130
        if os.environ.get("COLLATE_DEBUG"):
            raise error
        print(f"collate: error: {type(error).__name__}: {_shown(error)}", file=sys.stderr)
        return 1
    kind, value = box["value"]
    if kind == "report":
        print(json.dumps(value.to_dict(), indent=2, ensure_ascii=False) if args.json else value.text())
        return 1 if value.refusal else 0
    if kind == "keys":
        print("\n".join(value))
        return 0
    results, failures, note = value
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, default=_shown))
    else:
        for result in results:
            print(format_stats(result))
        if note:
            print(note, file=sys.stderr)
    files = len({r.tokenize.file for r in results}) + len(failures)
    if failures and files > 1:
        print(f"collate: {len(failures)} of {files} files failed:", file=sys.stderr)
    for path, message in failures:
        text = _shown(message)
        name = _shown(path)
        print(f"collate: error: {text if name in text else f'{name}: {text}'}", file=sys.stderr)
    return 1 if failures else 0


def _work(args, settings):
    from .core import CollateError

    if args.check_template:
        from .core import load_tokenizer
        from .core.tokens.report import template_report

        tokenizer = load_tokenizer(
            settings.tokenizer_name(), revision=settings.tokenizer_revision, chat_template=settings.chat_template,
            trust_remote_code=settings.trust_remote_code, render_limits=settings.render_limits(),
            tokenizer_pipeline=settings.tokenizer_pipeline, preload_fast=settings.encoder != "tokenizers",
        )  # the report probes the fast encoder too: it loads while transformers does
        return "report", template_report(tokenizer, settings)
    dataset = None
    if args.dataset is not None or args.register_only:
        from .defs.dataset import DEFAULT_DATASET
        from .defs.run import code_location_dataset, register_only

        dataset = args.dataset or DEFAULT_DATASET
        chosen = code_location_dataset(dataset)
        if args.register_only:
            return "keys", register_only(chosen, Path(args.input) if args.input else None)
        settings = chosen.settings
    show_progress = not (args.quiet or args.json)
    if args.no_dagster:
        results, failures = _run_engine(settings, show_progress)
        return "stats", (results, failures, None)
    from .core.read.reader import progress_total
    from .defs.run import run_collate

    total = sum(progress_total(f) for f in _input_files_quietly(settings.input_path()))
    progress = make_progress(total, show_progress)
    try:
        outcome = run_collate(settings, dataset=dataset, progress=progress)
    except ValueError as exc:
        raise CollateError(str(exc)) from exc
    finally:
        if progress is not None:
            progress.close()
    note = None
    if outcome.up_to_date:
        files = len({r.tokenize.file for r in outcome.results}) + len(outcome.failures)
        if any("@" in key for key in outcome.keys):  # files split into shards: one partition a shard ("@" is escaped in file keys)
            note = (f"collate: {len(outcome.up_to_date)} of {len(outcome.keys)} partitions (shards count one each) "
                    "unchanged since their last run: outputs kept")
        else:
            note = f"collate: {len(outcome.up_to_date)} of {files} files unchanged since their last run: outputs kept"
    recorded = f"collate: recorded as dataset {outcome.dataset} in DAGSTER_HOME={os.environ.get('DAGSTER_HOME', '')}"
    note = f"{note}\n{recorded}" if note else recorded
    return "stats", (outcome.results, outcome.failures, note)


def _input_files_quietly(input_path: Path) -> list[Path]:
    """The input files, for the progress total (warnings are printed once, by the run)."""
    from .core.read.reader import scan_inputs

    if input_path.is_file():
        return [input_path]
    return scan_inputs(input_path)[0]


def _run_engine(settings, show_progress: bool):
    """--no-dagster: the engine directly, work item after work item (the same plan as through Dagster,
    `core.plan`); a failed file does not stop the others."""
    from .core import CollateError, collate_file_formats, load_tokenizer
    from .core.api import write_shard_summary
    from .core.tokens.encoder import worth_preloading
    from .core.plan import account_file_name, output_file_name, plan_inputs, split_shard_key
    from .core.read.reader import progress_total
    from .core.settings import EXTENSIONS
    from .core.read.shards import locate_shard, summarize
    from .core.fs import file_sha256, output_folder_problem

    input_path = settings.input_path()
    output_dir = Path(settings.output_dir)
    problem = output_folder_problem(input_path, output_dir)
    if problem is not None:
        raise CollateError(problem)
    plan = plan_inputs(input_path, settings.shard_bytes())
    for warning in plan.warnings:
        print(f"collate: warning: {_shown(input_path)}: {warning}", file=sys.stderr)
    by_file: dict[Path, list[str]] = {}  # each file's work items (its shards), in the plan's order
    for key, path in plan.items.items():
        by_file.setdefault(path, []).append(key)
    tokenizer = load_tokenizer(
        settings.tokenizer_name(), revision=settings.tokenizer_revision, chat_template=settings.chat_template,
        trust_remote_code=settings.trust_remote_code, render_limits=settings.render_limits(),
        tokenizer_pipeline=settings.tokenizer_pipeline, preload_fast=worth_preloading(settings.encoder, list(by_file)),
    )
    progress = make_progress(sum(_readable_size(progress_total, f) for f in by_file), show_progress)
    results, failures = [], list(plan.failures)

    def one(key: str, path: Path) -> dict | None:
        """Tokenize one work item once and pack it into each format; its tokenize stats, or None."""
        outputs = {fmt: output_dir / output_file_name(key, EXTENSIONS[fmt]) for fmt in settings.formats}
        if progress is not None:
            progress.set_postfix_str(_shown(path.name) + (f"@{key.split('@', 1)[1]}" if "@" in key else ""))
        try:
            shard = split_shard_key(key)[1]
            stats = collate_file_formats(
                path, outputs, tokenizer, settings, shard=locate_shard(path, *shard) if shard else None,
                progress=(lambda nbytes, _lines: progress.update(nbytes)) if progress is not None else None,
            )
        except CollateError as exc:
            failures.append((path, str(exc)))
            return None
        except OSError as exc:
            failures.append((path, f"cannot read: {exc.strerror or exc}"))
            return None
        except Exception as exc:  # unexpected, but still only this file's failure
            if os.environ.get("COLLATE_DEBUG"):
                raise
            failures.append((path, f"{type(exc).__name__}: {exc}"))
            return None
        results.extend(stats)
        return stats[0].tokenize.to_dict()

    try:
        for path, keys in by_file.items():
            done = [one(key, path) for key in keys]  # a failed shard does not stop the others
            if len(keys) > 1 and all(done):
                summary = summarize(path, done, len(keys), input_sha256=file_sha256(path),
                                    settings_fingerprint=settings.fingerprint())
                write_shard_summary(output_dir / account_file_name(keys[0]), summary)
                if summary["problems"]:
                    failures.append((path, "its shards do not add up to the file: " + "; ".join(summary["problems"])))
    finally:
        if progress is not None:
            progress.close()
    return results, failures


def _readable_size(size_of, path: Path) -> int:
    try:
        return size_of(path)
    except OSError:  # gone since the plan: its run says why
        return 0


def run() -> None:
    """The console script (and `python -m collate_assets.cli`): `main()`, then a quick exit."""
    _exit_quickly(main())


def _exit_quickly(code: int) -> None:
    """Exit with `code` without tearing the interpreter down.

    The exit handlers still run (multiprocessing's, logging's, the executors'), and the output
    streams are flushed; only the final freeing of every object and module is skipped. After a run
    through Dagster (some 250,000 objects) that teardown alone took 0.6-0.8 s of a 16 s command.
    A thread that is not a daemon would be cut short, so with one still alive this is a plain exit.
    """
    import atexit

    main_thread = threading.main_thread()
    if any(t.is_alive() and not t.daemon and t is not main_thread for t in threading.enumerate()):
        sys.exit(code)
    _flush()
    atexit._run_exitfuncs()
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`collate --json | head`), a closed stream
            pass


if __name__ == "__main__":
    run()
