"""The terminal of a CLI run: logging setup, noise filters, the progress channel and its display.

Stdlib only (no Beam, no click): the CLI sets this up before Beam is imported, and Beam workers import it.

Logging. `setup()` gives the root logger one handler that writes `warning: message` lines to stderr (the
logger name added for other libraries' records), drops known noise (`NOISE`) and keeps every other warning.
Because the root logger then has a handler, a library's `logging.warning(...)` at import time (Beam's "apitools
not found" when the gcp extra is not installed) no longer installs Python's `BASIC_FORMAT` handler.

Worker processes. Beam's multi_processing runner starts `python -m apache_beam.runners.worker.sdk_worker_main`
processes that inherit the driver's stderr. They import Beam before any of our code runs, so the apitools
warning installs a `BASIC_FORMAT` handler there, and the harness then logs `INFO:__main__:Logging handler
created.` (it raises the root level to INFO until it has read `--default_sdk_harness_log_level`). Nothing in
such a process can be configured in time, so while a local multi-process pipeline runs, `relay_stderr` points
fd 2 at a pipe and a thread copies its lines to the real stderr, dropping the noise lines (`noise_line`); worker
errors still reach the terminal, as one line each (tracebacks with --verbose, `WorkerLines`).

Progress channel. Counting happens where the pipeline already counts: run.py taps every stats (`*_read`), rejects
and image-group output of the builder with an `emit.Progress` DoFn (fused into the stage that makes them, so it
counts while the stage runs), which increments Beam Metrics counters (any runner) and calls `count()` here. `count` adds to a per-process tally that is written, at most every half second and at the
end of each bundle, as one JSON snapshot file `<pid>.json` (atomic replace) in the folder named by
$GROUNDFORGE_PROGRESS_DIR. The driver sets that variable before the pipeline starts, so in-process (in_memory,
multi_threading) and subprocess (multi_processing) workers both find it; on a remote runner it is unset and
`count` does nothing. A driver thread (`ProgressDisplay`) sums the snapshots every second and renders one status
line on stderr when it is a terminal (a plain line every 10 s otherwise, with --verbose only; never with
--quiet). A total for a read counter gives a percentage and an ETA: from the driver (a builder's optional
`expected(config, plan)`) or from a reader that learns it while running (`emit.expect(name, n)`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time

PROGRESS_ENV = "GROUNDFORGE_PROGRESS_DIR"
EVERY_ENV = "GROUNDFORGE_PROGRESS_EVERY"   # seconds between progress updates (default 1 on a terminal, else 10)
QUIET, NORMAL, VERBOSE = -1, 0, 1
VERBOSITY_KEY = "groundforge.verbosity"   # click context meta: the --quiet/--verbose of this invocation

# Known noise: (logger name or None for any, compiled message pattern). Everything else is kept.
NOISE = (
    (None, re.compile(r"^apitools not found, and bigquery client libraries are not available")),
    (None, re.compile(r"^Logging handler created\.$")),
)
# The same messages as Python's BASIC_FORMAT prints them in a worker process, plus the harness's start-up INFO
# lines (printed only before the harness applies --default_sdk_harness_log_level).
_NOISE_LINE = re.compile(r"^(?:(?:INFO|DEBUG):\S*:|WARNING:root:apitools not found, and bigquery client libraries)")


# ---------------------------------------------------------------- the console

class Console:
    """stderr with at most one status line at its bottom: `line` prints a permanent line above it."""

    def __init__(self, stream=None, verbosity: int = NORMAL):
        self.stream = stream
        self.verbosity = verbosity
        self.lock = threading.RLock()
        self.status = ""

    @property
    def out(self):
        return self.stream if self.stream is not None else sys.stderr

    @property
    def tty(self) -> bool:
        try:
            return bool(self.out.isatty())
        except (AttributeError, ValueError):
            return False

    def line(self, text: str) -> None:
        with self.lock:
            status = self.status
            if status:
                self._write("\r\x1b[K")
            self._write(text.rstrip("\n") + "\n")
            if status:
                self._write(status)
            self._flush()

    def show_status(self, text: str) -> None:
        width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        text = text[:width]
        with self.lock:
            self._write("\r" + text + "\x1b[K")
            self._flush()
            self.status = text

    def clear_status(self) -> None:
        with self.lock:
            if self.status:
                self._write("\r\x1b[K")
                self._flush()
                self.status = ""

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
        except (OSError, ValueError):  # a closed or broken stderr must not fail the build
            pass

    def _flush(self) -> None:
        try:
            self.out.flush()
        except (OSError, ValueError):
            pass


_console: Console | None = None


def current() -> Console | None:
    """The console set up by the CLI (None when groundforge runs as a library: no progress, no filters)."""
    return _console


# ---------------------------------------------------------------- logging

def is_noise(record: logging.LogRecord) -> bool:
    if os.environ.get("GROUNDFORGE_DEBUG"):
        return False
    message = record.getMessage()
    return any((name is None or record.name == name) and pattern.search(message) for name, pattern in NOISE)


def noise_line(line: str) -> bool:
    """A line a Beam worker process printed that is noise (see the module docstring)."""
    return not os.environ.get("GROUNDFORGE_DEBUG") and bool(_NOISE_LINE.match(line))


_LOG_LINE = re.compile(r"^(CRITICAL|ERROR|WARNING):([^:]*):(.*)$")  # Python's BASIC_FORMAT
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


class WorkerLines:
    """What the relay shows of a worker process's stderr: noise lines never; with --verbose everything else as
    printed; otherwise log lines as `error: name: message` and no tracebacks (the driver ends a failed run with
    one `error:` line; --verbose or GROUNDFORGE_DEBUG=1 shows them)."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose or bool(os.environ.get("GROUNDFORGE_DEBUG"))
        self.in_traceback = False

    def __call__(self, line: str) -> str | None:
        if noise_line(line):
            return None
        if self.verbose:
            return line
        if line.startswith("Traceback (most recent call last):"):
            self.in_traceback = True
            return None
        if self.in_traceback:
            if line[:1].isspace():
                return None
            self.in_traceback = False  # the exception line that ends it: its message was logged above it
            return None
        if not line.strip() or line.startswith(_CHAINED):
            return None
        match = _LOG_LINE.match(line)
        if match:
            level, name, message = match.groups()
            return f"{level.lower()}: {'' if name == 'root' else name + ': '}{message}"
        return line


# Beam's local job service logs every worker log record again as one "Worker: severity: ... message: ..." line:
# the worker process has printed it already (see WorkerLines). Shown with --verbose only.
_WORKER_ECHO = "apache_beam.runners.portability.local_job_service"


# Python warnings meant for a library's developers, not for a user of the CLI (shown with --verbose); a
# UserWarning or RuntimeWarning is kept.
_DEVELOPER_WARNING = re.compile(r":\d+: (Deprecation|PendingDeprecation|Future|Import|Resource)Warning: ")


class NoiseFilter(logging.Filter):
    def __init__(self, console: Console | None = None):
        super().__init__()
        self.console = console

    def filter(self, record: logging.LogRecord) -> bool:
        if is_noise(record):
            return False
        if self.console is not None and self.console.verbosity >= VERBOSE:
            return True
        if record.name == "py.warnings":
            return not _DEVELOPER_WARNING.search(str(record.msg))
        return not (record.name == _WORKER_ECHO and str(record.msg).startswith("Worker: "))


class ConsoleHandler(logging.Handler):
    """Log records as `level: message` lines through the console (above the status line)."""

    def __init__(self, console: Console):
        super().__init__()
        self.console = console
        self.addFilter(NoiseFilter(console))

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and self.console.verbosity >= VERBOSE:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        if record.name == "py.warnings":  # "path:line: Category: text\n  source" -> its first line
            message = message.strip().splitlines()[0] if message.strip() else message
            return f"warning: {message}"
        ours = record.name == "root" or record.name.startswith("groundforge")
        if ours and record.levelno < logging.WARNING:
            return message
        return f"{record.levelname.lower()}: {'' if ours else record.name + ': '}{message}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.line(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise into the build
            self.handleError(record)


def setup(verbosity: int = NORMAL, stream=None) -> Console:
    """Install the console: one root handler (noise filtered), Python warnings through logging, levels for
    `verbosity` (QUIET: warnings and errors, no Python warnings; NORMAL: groundforge's info lines too, Python
    warnings but developer ones (DeprecationWarning, FutureWarning, ...); VERBOSE: everything but the known noise,
    debug lines too). Idempotent."""
    global _console
    if _console is None:
        _console = Console(stream, verbosity)
    else:
        _console.stream = stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, ConsoleHandler):
            root.removeHandler(handler)
    root.addHandler(ConsoleHandler(_console))
    logging.captureWarnings(True)
    set_verbosity(verbosity)
    return _console


def set_verbosity(verbosity: int) -> None:
    """The console's verbosity, and the logging levels that go with it once `setup` has installed the console
    (without a console, e.g. the CLI invoked in-process by click's CliRunner, nothing changes)."""
    if _console is None:
        return
    _console.verbosity = verbosity
    logging.getLogger().setLevel(logging.ERROR if verbosity <= QUIET else logging.WARNING)
    # groundforge's own lines: its info lines (train's "training ...", eval's "evaluated ...") unless --quiet
    # (warnings and errors only), debug lines with --verbose.
    logging.getLogger("groundforge").setLevel(
        logging.WARNING if verbosity <= QUIET else logging.DEBUG if verbosity >= VERBOSE else logging.INFO)
    # Python warnings: with --quiet none; otherwise all but those for developers (NoiseFilter), all with --verbose.
    logging.getLogger("py.warnings").setLevel(logging.CRITICAL if verbosity <= QUIET else logging.WARNING)


# ---------------------------------------------------------------- the progress channel (worker side)

class Tally:
    """This process's counts, written as one JSON snapshot into the progress folder (see the module docstring)."""

    FLUSH_EVERY = 0.5

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.folder: str | None = None
        self.pid = 0
        self.written = 0.0

    def add(self, folder: str, key: str, n: int) -> None:
        with self.lock:
            if folder != self.folder or os.getpid() != self.pid:  # a new run, or a forked child: start over
                self.counts, self.folder, self.pid, self.written = {}, folder, os.getpid(), 0.0
            self.counts[key] = self.counts.get(key, 0) + n
            if time.monotonic() - self.written >= self.FLUSH_EVERY:
                self._write()

    def flush(self) -> None:
        with self.lock:
            if self.folder and self.pid == os.getpid() and self.counts:
                self._write()

    def _write(self) -> None:
        self.written = time.monotonic()
        path = os.path.join(self.folder, f"{self.pid}.json")
        try:
            with open(path + ".tmp", "w") as f:
                json.dump(self.counts, f)
            os.replace(path + ".tmp", path)
        except OSError:  # the driver is gone or the folder removed: progress is best effort
            pass


_tally = Tally()


def count(key: str, n: int = 1) -> None:
    """Add `n` to progress counter `key` (`records`, `rejected`, `read/<stat>`, `total/<stat>`); a no-op unless
    a CLI run on a local runner is watching."""
    folder = os.environ.get(PROGRESS_ENV)
    if folder and n:
        _tally.add(folder, key, n)


def flush() -> None:
    if os.environ.get(PROGRESS_ENV):
        _tally.flush()


# ---------------------------------------------------------------- the progress channel (driver side)

def read_counts(folder: str) -> dict[str, int]:
    """The sum of every process's latest snapshot (a file being replaced is skipped until the next poll)."""
    total: dict[str, int] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return total
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name)) as f:
                counts = json.load(f)
        except (OSError, ValueError):
            continue
        for key, n in counts.items():
            if isinstance(n, int):
                total[key] = total.get(key, 0) + n
    return total


def duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def main_counter(counts: dict[str, int]) -> str | None:
    """The read counter that rate and ETA are about: the one in flight (with a total, begun, not done), else one
    with a total not done, else one with a total, else the first."""
    names = sorted({k.split("/", 1)[1] for k in counts if k.startswith(("read/", "total/"))})

    def n(name):
        return counts.get(f"read/{name}", 0)

    with_total = [name for name in names if counts.get(f"total/{name}")]
    open_ = [name for name in with_total if n(name) < counts[f"total/{name}"]]
    return next(iter([name for name in open_ if n(name)] + open_ + with_total + names), None)


def status_text(counts: dict[str, int], elapsed: float, label: str = "", rate: float | None = None) -> str:
    """One progress line, most useful first (a narrow terminal cuts the end): items read per read counter (of its
    total, with a percentage, when known), records, rejects, the rate of `main_counter` (given, or its count over
    `elapsed`), the ETA when its total is known, and the elapsed time.

        counting: 250/1,000 images (25%), 2,200 records, 3 rejected, 25.0 images/s, ETA 0:30, 0:10 elapsed
    """
    totals = {k[6:]: v for k, v in counts.items() if k.startswith("total/")}
    reads = {name: 0 for name in totals}  # a total announced before anything was read shows as 0/n
    reads.update({k[5:]: v for k, v in counts.items() if k.startswith("read/")})
    reads = dict(sorted(reads.items()))
    parts = []
    for name, n in reads.items():
        noun = name.removesuffix("_read").replace("_", " ")
        total = totals.get(name)
        parts.append(f"{n:,}/{total:,} {noun} ({min(100, 100 * n // total)}%)" if total else f"{n:,} {noun}")
    parts.append(f"{counts.get('records', 0):,} records")
    parts.append(f"{counts.get('rejected', 0):,} rejected")
    main = main_counter(counts)
    if main and elapsed > 0:
        rate = reads[main] / elapsed if rate is None else rate
        parts.append(f"{rate:,.1f} {main.removesuffix('_read').replace('_', ' ')}/s")
        total = totals.get(main)
        if total and rate > 0:
            parts.append(f"ETA {_clock(max(0, total - reads[main]) / rate)}")
    parts.append(f"{_clock(elapsed)} elapsed")
    return (f"{label}: " if label else "") + ", ".join(parts)


class ProgressDisplay:
    """A driver thread that renders the progress channel while the pipeline runs."""

    def __init__(self, console: Console, folder: str, label: str = "", every: float | None = None):
        self.console = console
        self.folder = folder
        self.label = label
        self.tty = console.tty
        self.every = every or float(os.environ.get(EVERY_ENV) or (1 if self.tty else 10))
        self.start = time.monotonic()
        self.main: str | None = None
        self.history: list[tuple[float, int]] = []   # (time, main counter) of the last WINDOW seconds
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="groundforge-progress", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(timeout=5)
        self.console.clear_status()

    WINDOW = 10.0

    def text(self) -> str:
        """The status line; the rate is taken over the last WINDOW seconds (start-up time left out)."""
        counts, now = read_counts(self.folder), time.monotonic()
        main = main_counter(counts)
        rate = None
        if main:
            if main != self.main:  # another stage is in flight: its own rate
                self.main, self.history = main, []
            self.history = [(t, n) for t, n in self.history if now - t <= self.WINDOW] + [
                (now, counts.get(f"read/{main}", 0))]
            (t0, n0), (t1, n1) = self.history[0], self.history[-1]
            if t1 - t0 >= 1.0:
                rate = (n1 - n0) / (t1 - t0)
        return status_text(counts, now - self.start, self.label, rate)

    def _loop(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                text = self.text()
                if self.tty:
                    self.console.show_status(text)
                else:
                    self.console.line(text)
            except Exception:  # noqa: BLE001, S110 - a display error must never fail the build
                pass


def shows_progress(console: Console | None) -> bool:
    """Progress on a terminal unless --quiet; when stderr is not a terminal, with --verbose only."""
    if console is None or console.verbosity <= QUIET:
        return False
    return console.tty or console.verbosity >= VERBOSE


@contextlib.contextmanager
def live(label: str = "", local: bool = True, worker_processes: bool = False):
    """Around a pipeline run: the progress folder ($GROUNDFORGE_PROGRESS_DIR) and its display, and the relay of
    worker-process stderr. Without a console (library use) or on a remote runner, nothing happens."""
    console = current()
    if console is None or not local:
        yield
        return
    with contextlib.ExitStack() as stack:
        if worker_processes:
            stack.enter_context(relay_stderr(console))
        if shows_progress(console):
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="groundforge-progress-"))
            stack.enter_context(_env(PROGRESS_ENV, folder))
            stack.enter_context(ProgressDisplay(console, folder, label))
        yield


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


# ---------------------------------------------------------------- worker stderr relay

@contextlib.contextmanager
def relay_stderr(console: Console):
    """Point fd 2 at a pipe whose lines are copied to the real stderr, less `noise_line`s, while local worker
    processes (which inherit fd 2) run. This process's own Python writes (sys.stderr: the console, click, an
    interrupt message) go straight to the real stderr meanwhile; only what reaches fd 2 itself is relayed."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_fd, write_fd = os.pipe()
    except (OSError, AttributeError, ValueError):  # no real fd 2 (an embedded interpreter): relay nothing
        yield
        return
    real = os.fdopen(saved, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    old_stderr = sys.stderr
    sys.stderr = real
    os.dup2(write_fd, 2)
    os.close(write_fd)

    shown = WorkerLines(console.verbosity >= VERBOSE)

    def pump():
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                line = shown(raw.decode("utf-8", "replace").rstrip("\n"))
                if line is not None:
                    console.line(line)

    thread = threading.Thread(target=pump, name="groundforge-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        os.dup2(saved, 2)  # our end of the pipe closes; the pump ends once the worker processes have exited
        thread.join(timeout=5)
        sys.stderr = old_stderr
        real.close()
        os.close(saved)
