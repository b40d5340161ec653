"""What this process has under way, in one object (`RUN`), for an interrupt to stop and undo.

The `collate` command's signal handler (cli.py) calls `RUN.interrupt()`: the worker pools are killed,
the temporary files and folders being written are removed (no new one is started from then on), the
Dagster runs under way are marked canceled, and the first two again for what was started meanwhile.
The parts of the engine and of the Dagster layer say here what they start (`pools`, `temps`,
`temp_dirs`, `cancelling`) and where an in-process run's progress goes (`reporting`).

Only the standard library is imported, so the command takes its signals before any heavy import.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path


def owner_tag() -> str:
    """`<host>-<pid>`: who writes a temporary file (host as a short hash, so any name is safe)."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f"{host}-{os.getpid()}"


def host_tag() -> str:
    return owner_tag().split("-", 1)[0]


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


class RunContext:
    """This process's work in progress: what to stop, remove and cancel when it is interrupted."""

    def __init__(self) -> None:
        self.pools: set = set()  # worker pools (tokenize._Pool), killed first: a worker holds the output's pipes
        self.temps: set[Path] = set()  # temporary files and folders being written (writers.atomic_path, work_dir)
        self.temp_dirs: set[Path] = set()  # the folders they are written in
        self.stopping = threading.Event()  # set on interrupt: no new temporary is started
        self._cancels: list[Callable[[], object]] = []  # cancel the Dagster runs under way
        self._progress: list[Callable[[int, int], object]] = []  # (bytes_read, lines_read) of an in-process run

    def check_not_stopping(self) -> None:
        if self.stopping.is_set():
            raise KeyboardInterrupt("collate is being interrupted: no new file is started")

    def stop_work(self) -> None:
        """Kill the worker pools and remove the temporaries being written; no new temporary is made
        from then on. Besides the registered ones, every entry named with this process's owner tag in
        the folders it writes to is removed, so one made a moment before registration goes too."""
        for pool in list(self.pools):
            pool.kill()
        self.stopping.set()
        tag = owner_tag()
        doomed = set(self.temps)
        for folder in list(self.temp_dirs):
            with contextlib.suppress(OSError):
                for entry in os.scandir(folder):
                    if f".{tag}." in entry.name or entry.name.startswith(f"collate-{tag}-"):
                        doomed.add(Path(entry.path))
        for path in doomed:
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
            self.temps.discard(path)

    def interrupt(self) -> None:
        """Ctrl-C / SIGTERM: stop the work, cancel its runs (a failure is left to the next run, which
        cancels runs whose process is gone), and stop what was started meanwhile."""
        self.stop_work()
        for cancel in list(self._cancels):
            with contextlib.suppress(Exception):
                cancel()
        self.stop_work()

    def in_worker(self) -> None:
        """In a forked worker: the parent's work is the parent's to stop and remove, not this one's."""
        self.pools.clear()
        self.temps.clear()
        self.temp_dirs.clear()
        self._cancels.clear()
        self._progress.clear()

    @contextlib.contextmanager
    def cancelling(self, cancel: Callable[[], object]):
        """While the block runs, an interrupt calls `cancel` (to mark its Dagster runs canceled)."""
        self._cancels.append(cancel)
        try:
            yield
        finally:
            self._cancels.remove(cancel)

    @contextlib.contextmanager
    def reporting(self, sink: Callable[[int, int], object]):
        """While the block runs, the progress of in-process tokenizing also goes to `sink(bytes, lines)`
        (the command's progress bar; steps in other processes never see it)."""
        self._progress.append(sink)
        try:
            yield
        finally:
            self._progress.remove(sink)

    def report_progress(self, bytes_read: int, lines_read: int) -> None:
        for sink in list(self._progress):
            sink(bytes_read, lines_read)


RUN = RunContext()
