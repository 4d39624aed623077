"""The console of a CLI run (pipeline/console.py): only groundforge's own lines on a fresh install, live progress
from the pipeline's own counters, --quiet/--verbose, the `done in` line; and option names that mean one thing in
every command."""
from __future__ import annotations

import io
import logging
import os
import pty
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import apache_beam as beam
import click
import pytest
from groundforge.pipeline.builders.counting import CountingBuilder
from helpers import FAST_BEAM, run_cli, write_coco

ROOT = Path(__file__).resolve().parents[1]
DONE = re.compile(r"^done in \d+\.\d s: (\d+) records, (\d+) rejected -> (.+)$")
# What a core install (no [gcp] extra) printed on every build, from the driver and from each Beam worker process.
NOISE = ("WARNING:root", "INFO:__main__", "apitools", "Logging handler created", "Warning:")


def _no_apitools(tmp_path: Path) -> str:
    """A folder to put first on PYTHONPATH in which `import apitools` fails, as on an install without apache-beam[gcp]:
    Beam's bigquery client module then logs `apitools not found` through the root logger at import time (in the
    driver and in every worker process), the noise this console removes."""
    pkg = tmp_path / "no_apitools" / "apitools"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("raise ImportError('apitools is not installed (simulated)')\n")
    return str(pkg.parent)


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDFORGE_")}
    env["PYTHONPATH"] = os.pathsep.join([_no_apitools(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def _groundforge(args, env, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groundforge.pipeline.cli", *map(str, args)], env=env, check=False,
                          capture_output=True, text=True, cwd=ROOT, timeout=300, **kw)


def _noise_is_reproduced(tmp_path: Path) -> bool:
    """The simulated install really makes Beam print the apitools warning (else the tests below prove nothing)."""
    out = subprocess.run([sys.executable, "-c", "import apache_beam"], env=_env(tmp_path), capture_output=True,
                         text=True, timeout=120, check=False)
    return "WARNING:root:apitools not found" in out.stderr


# ---------------------------------------------------------------- task 2: only our lines

@pytest.mark.parametrize("mode", ["multi_processing", "in_memory"])
def test_a_build_prints_only_groundforge_lines(tmp_path, mode):
    """A fresh-install build on the local runner (multi_processing worker processes) and in memory: stderr is
    empty (no `WARNING:root:apitools ...` from the driver or the workers, no `INFO:__main__:Logging handler created.`,
    no Python warnings), stdout is the summary ending with the done line."""
    assert _noise_is_reproduced(tmp_path)
    out = tmp_path / "out"
    args = ["build", "counting", "--out", out]
    if mode == "multi_processing":
        # the default runner's mode for a large input (the sample is small: chosen explicitly); two workers keep
        # the test light
        args += ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    else:
        args += FAST_BEAM
    result = _groundforge(args, _env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert not any(n in result.stdout for n in NOISE)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("read: images 50")
    match = DONE.match(lines[-1])
    assert match and match.group(3) == str(out), lines[-1]
    info = (out / "dataset_info.json").read_text()
    assert f'"rows": {match.group(1)}' in info


WORKER_STDERR = """\
WARNING:root:apitools not found, and bigquery client libraries are not available despite the import not raising an ImportError.
INFO:__main__:Logging handler created.
ERROR:apache_beam.runners.common:boom in worker [while running 'Count']
Traceback (most recent call last):
  File "apache_beam/runners/common.py", line 1512, in apache_beam.runners.common.DoFnRunner.process
  File "/site-packages/groundforge/pipeline/builders/counting.py", line 99, in process
    raise ValueError("boom in worker")
ValueError: boom in worker

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/site-packages/apache_beam/runners/worker/sdk_worker.py", line 310, in _execute
ValueError: boom in worker [while running 'Count']
a line some library printed
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_worker_stderr_relay_drops_noise_and_shows_errors_as_lines(verbose):
    """What worker processes write to fd 2 while the relay is on (a worker that failed, as Beam's harness prints
    it): the harness's noise lines are dropped; an error is one `error:` line, its traceback only with --verbose;
    anything else reaches the terminal as printed."""
    from groundforge.pipeline import console

    term = console.Console(io.StringIO(), console.VERBOSE if verbose else console.NORMAL)
    script = f"import sys\nsys.stderr.write({WORKER_STDERR!r})\n"
    with console.relay_stderr(term):
        subprocess.run([sys.executable, "-c", script], check=True)  # inherits fd 2, as Beam's workers do
    if verbose:
        assert term.stream.getvalue() == "".join(WORKER_STDERR.splitlines(keepends=True)[2:])
    else:
        assert term.stream.getvalue() == ("error: apache_beam.runners.common: boom in worker [while running 'Count']\n"
                                          "a line some library printed\n")


@pytest.fixture
def term():
    """The console installed in this process on a fake stream; logging put back afterwards."""
    from groundforge.pipeline import console

    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("groundforge").level,
             logging.getLogger("py.warnings").level)
    stream = io.StringIO()
    try:
        yield console.setup(stream=stream)
    finally:
        for handler in list(root.handlers):
            if isinstance(handler, console.ConsoleHandler):
                root.removeHandler(handler)
        root.setLevel(saved[0])
        logging.getLogger("groundforge").setLevel(saved[2])
        logging.getLogger("py.warnings").setLevel(saved[3])
        logging.captureWarnings(False)
        console._console = None


def test_logging_keeps_real_warnings_and_drops_the_noise(term):
    from groundforge.pipeline import console

    logging.getLogger("apache_beam.io.gcp").warning("apitools not found, and bigquery client libraries are not "
                                                    "available despite the import not raising an ImportError.")
    logging.getLogger("__main__").info("Logging handler created.")
    # Beam's local job service echoes every worker log record; the worker printed it already (see the relay)
    logging.getLogger("apache_beam.runners.portability.local_job_service").error(
        "Worker: %s", 'severity: ERROR timestamp {   seconds: 1796286955 } message: "boom in worker"')
    logging.getLogger("some_library").warning("the job's staging bucket is in another region")
    logging.getLogger("groundforge.train.loop").warning("--resume: no checkpoint in out, starting from scratch")
    logging.getLogger("groundforge.train.evaluate").info("evaluated 4 records in 1.0s")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("some library's deprecation", DeprecationWarning)
        warnings.warn("some library's change of default", FutureWarning)
        warnings.warn("None of the inputs have requires_grad=True", UserWarning)
    lines = term.stream.getvalue().splitlines()
    assert lines[:3] == [
        "warning: some_library: the job's staging bucket is in another region",
        "warning: --resume: no checkpoint in out, starting from scratch",
        "evaluated 4 records in 1.0s"]
    (user_warning,) = lines[3:]  # one line: "warning: <file>:<line>: UserWarning: ..."
    assert re.match(r"^warning: .*test_console\.py:\d+: UserWarning: None of the inputs", user_warning)
    console.set_verbosity(console.QUIET)
    logging.getLogger("groundforge.train.evaluate").info("evaluated 4 records in 1.0s")
    logging.getLogger("some_library").warning("a library warning")
    logging.getLogger("groundforge.train.loop").warning("a groundforge warning")
    assert term.stream.getvalue().splitlines()[4:] == ["warning: a groundforge warning"]


# ---------------------------------------------------------------- task 1: progress, --quiet, --verbose, done line

def test_quiet_prints_only_the_done_line(tmp_path):
    out = tmp_path / "out"
    result = _groundforge(["build", "counting", "--out", out, "--quiet", *FAST_BEAM], _env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    (line,) = result.stdout.splitlines()
    assert DONE.match(line)
    # --quiet and --verbose change the terminal, not the output: the card's command line does not list them
    assert '"command": "groundforge build counting --out OUT --direct_running_mode=in_memory"' in \
        (out / "dataset_info.json").read_text()


def test_a_build_that_writes_nothing_still_ends_with_the_done_line(tmp_path):
    """Every image missing: the done line counts the rejects, then the one-line error; exit 1."""
    coco = write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48, "skip_file": True},
                                 {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48, "skip_file": True}],
                      [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0}])
    out = tmp_path / "out"
    result = _groundforge(["build", "counting", "--coco", coco, "--out", out, *FAST_BEAM], _env(tmp_path))
    assert result.returncode == 1
    match = DONE.match(result.stdout.splitlines()[-1])
    assert match and match.groups() == ("0", "2", str(out)), result.stdout
    assert result.stderr == "error: no records were written; see the rejects above\n"


def test_quiet_and_verbose_together_are_a_usage_error(tmp_path):
    result = _groundforge(["-q", "build", "counting", "--out", tmp_path / "out", "-v"], _env(tmp_path))
    assert result.returncode == 2
    assert "give --quiet or --verbose, not both" in result.stderr
    assert not (tmp_path / "out").exists()


def test_verbose_prints_plain_progress_lines_when_not_a_terminal(tmp_path):
    env = _env(tmp_path, GROUNDFORGE_PROGRESS_EVERY="0.1")
    plain = _groundforge(["build", "counting", "--out", tmp_path / "a", *FAST_BEAM], env)
    assert plain.stderr == ""  # not a terminal, not --verbose: no progress
    result = _groundforge(["-v", "build", "counting", "--out", tmp_path / "b", *FAST_BEAM], env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(re.match(r"^counting: .*\d+ records, \d+ rejected, .*\d:\d\d elapsed$", x) for x in lines), lines
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    assert DONE.match(result.stdout.splitlines()[-1])


def test_a_terminal_gets_one_status_line_rewritten_in_place(tmp_path):
    """stderr a pseudo-terminal: `\\r` status lines with the pipeline's counts, cleared before the summary."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "groundforge.pipeline.cli", "build", "counting", "--out",
                             str(tmp_path / "out"), *FAST_BEAM], stderr=slave, stdout=subprocess.PIPE, cwd=ROOT,
                            env=_env(tmp_path, GROUNDFORGE_PROGRESS_EVERY="0.05"))
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout, _ = proc.communicate(timeout=300)
    os.close(master)
    assert proc.returncode == 0
    shown = b"".join(chunks).decode()
    statuses = [s.removesuffix("\x1b[K") for s in shown.split("\r") if s.strip("\x1b[K")]
    assert statuses and all(s.startswith("counting: ") for s in statuses), shown
    assert shown.endswith("\r\x1b[K")  # the status line is cleared when the pipeline ends
    assert DONE.match(stdout.decode().splitlines()[-1])


class _FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_counts_reads_records_rejects_with_rate_and_eta(tmp_path, term, monkeypatch):
    """A run whose reader announces its total (`emit.expect`) and reads slowly: the status lines show k/total,
    a percentage and an ETA while it runs, with records and rejects, all from the pipeline's own taps."""
    from groundforge.pipeline.run import run

    term.stream = _FakeTerminal()
    monkeypatch.setenv("GROUNDFORGE_PROGRESS_EVERY", "0.1")
    monkeypatch.setenv("COLUMNS", "200")  # the status line is cut at the terminal's width
    builder = _SlowBuilder()
    info = run(builder, builder.config(out=str(tmp_path / "out")), FAST_BEAM)
    assert info["stats"]["ticks_read"] == 12
    statuses = [s.removesuffix("\x1b[K") for s in term.stream.getvalue().split("\r") if s.strip("\x1b[K")]
    assert any(re.search(r"\b([1-9]|1[01])/12 ticks \(\d+%\),.* ticks/s, ETA \d:\d\d, \d:\d\d elapsed$", s)
               for s in statuses), statuses
    assert any(re.match(r"counting: \d+/50 images \(\d+%\), ", s) for s in statuses), statuses  # ExpandCoco's total
    assert statuses[-1].startswith("counting: 50/50 images (100%), 12/12 ticks (100%), 255 records, 0 rejected, ")


class _SlowTicks(beam.DoFn):
    """A reader of n slow items that announces n first."""

    def process(self, n):
        from groundforge.pipeline.emit import expect

        expect("ticks_read", n)
        for _ in range(n):
            time.sleep(0.12)
            yield ("ticks_read", 1)


class _SlowBuilder(CountingBuilder):
    """The counting builder (whose COCO reader announces its image count) with an extra reader of 12 slow `ticks`."""

    def expand(self, p, config, plan):
        outs = super().expand(p, config, plan)
        ticks = p | "Ticks" >> beam.Create([12]) | "SlowRead" >> beam.ParDo(_SlowTicks())
        return outs._replace(stats=[*outs.stats, ticks])


def test_a_total_the_driver_knows_shows_before_any_read(tmp_path, term, monkeypatch):
    """`builder.expected(config, plan)`: render knows its input's row count before the pipeline starts."""
    from groundforge.pipeline.render import RENDERER, RenderConfig
    from groundforge.pipeline.run import run

    src = tmp_path / "src"
    run_cli(["build", "counting", "--out", src, *FAST_BEAM])
    term.stream = _FakeTerminal()
    monkeypatch.setenv("GROUNDFORGE_PROGRESS_EVERY", "0.05")
    monkeypatch.setenv("COLUMNS", "200")
    run(RENDERER, RenderConfig(src=str(src), out=str(tmp_path / "out"), format="kosmos2"), FAST_BEAM)
    statuses = [s.removesuffix("\x1b[K") for s in term.stream.getvalue().split("\r") if s.strip("\x1b[K")]
    assert statuses and statuses[-1].startswith("render: 255/255 records (100%)"), statuses


def test_status_text_and_durations():
    from groundforge.pipeline.console import duration, status_text

    counts = {"read/images_read": 250, "total/images_read": 1000, "records": 2200, "rejected": 3}
    assert status_text(counts, 10.0, "counting") == ("counting: 250/1,000 images (25%), 2,200 records, 3 rejected, "
                                                     "25.0 images/s, ETA 0:30, 0:10 elapsed")
    assert status_text(counts, 10.0, rate=50.0).endswith("50.0 images/s, ETA 0:15, 0:10 elapsed")
    assert status_text({"read/captions_read": 7, "read/images_read": 3}, 2.0) == (
        "7 captions, 3 images, 0 records, 0 rejected, 3.5 captions/s, 0:02 elapsed")
    assert status_text({}, 0.5, "grit") == "grit: 0 records, 0 rejected, 0:00 elapsed"
    assert [duration(s) for s in (12.34, 245, 3725)] == ["12.3 s", "4 min 05 s", "1 h 02 min"]


def test_the_progress_channel_sums_every_process_snapshot(tmp_path, monkeypatch):
    """Each process writes its own cumulative snapshot; the driver sums them; a half-written file is skipped."""
    from groundforge.pipeline import console

    monkeypatch.setenv(console.PROGRESS_ENV, str(tmp_path))
    console.count("records", 5)
    console.count("read/images_read", 2)
    console.flush()
    (tmp_path / "99999.json").write_text('{"records": 10, "rejected": 1}')
    (tmp_path / "99998.json").write_text('{"records": 1')  # being replaced
    assert console.read_counts(str(tmp_path)) == {"records": 15, "read/images_read": 2, "rejected": 1}
    monkeypatch.delenv(console.PROGRESS_ENV)
    console.count("records", 100)  # nobody watching: nothing written
    assert console.read_counts(str(tmp_path))["records"] == 15


# ---------------------------------------------------------------- task 3: one meaning per option name

def _commands() -> dict:
    from groundforge.pipeline.cli import main
    from groundforge.pipeline.registry import builder_names

    ctx = main.make_context("groundforge", ["--help"], resilient_parsing=True)
    build = main.get_command(ctx, "build")
    cmds = {f"build {b}": build.get_command(ctx, b) for b in builder_names()}
    cmds.update({name: main.get_command(ctx, name) for name in ("render", "train", "eval")})
    return cmds


def _signature(param: click.Parameter):
    t = param.type
    return (type(t).__name__, tuple(getattr(t, "choices", ()) or ()))


@pytest.mark.parametrize("name", ["--device", "--dtype", "--images", "--split", "--seed", "--format",
                                  "--batch-size", "--trust-remote-code", "--image-root"])
def test_a_shared_option_name_has_one_type_everywhere(name):
    """--dataset is the one exception by design: a free label everywhere, a Choice in refcoco, where it also picks
    the source to read (its help says so)."""
    found = {}
    for cmd_name, cmd in _commands().items():
        for p in cmd.params:
            if isinstance(p, click.Option) and name in p.opts:
                found[cmd_name] = _signature(p)
    assert found, name
    assert len(set(found.values())) == 1, found


def test_every_command_help_runs_and_documents_split_and_dataset():
    for cmd_name, cmd in _commands().items():
        assert "--help" in run_cli([*cmd_name.split(), "--help"]).output
        for p in cmd.params:
            if isinstance(p, click.Option) and p.name == "split":
                assert ("written into" in p.help) if cmd_name.startswith("build") else ("to read" in p.help), cmd_name
            if isinstance(p, click.Option) and p.name == "dataset":
                assert "written into every record" in p.help, cmd_name


def test_dtype_and_device_accept_the_same_spellings_in_grit_train_and_eval():
    from groundforge.pipeline.builders.grit import GritConfig
    from groundforge.pipeline.config import make_config

    def grit(dtype):
        return make_config(GritConfig, {"out": "o", "dtype": dtype}).dtype

    assert [grit(d) for d in ("fp16", "bf16", "fp32", "float16", "bfloat16", "float32", "auto")] == \
        ["float16", "bfloat16", "float32", "float16", "bfloat16", "float32", "float16"]
    from groundforge.train.cli import eval_command, train_command

    for cmd in (train_command, eval_command):
        dtype = next(p for p in cmd.params if p.name == "dtype")
        ctx = click.Context(cmd)
        got = [dtype.process_value(ctx, v) for v in ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16", "auto")]
        assert got == ["fp32", "bf16", "fp16", "fp32", "bf16", "fp16", "auto"]  # what train.model reads
    with pytest.raises(click.BadParameter):
        make_config(GritConfig, {"out": "o", "device": "tpu"})


def test_image_folders_accept_urls_and_refuse_missing_local_ones(tmp_path):
    """counting's --images was a click.Path(exists=True), which refused gs:// roots that refcoco and grit take."""
    from groundforge.pipeline.builders.counting import CountingConfig
    from groundforge.pipeline.builders.grit import GritConfig
    from groundforge.pipeline.builders.refcoco import RefcocoConfig
    from groundforge.pipeline.config import make_config

    for cls in (CountingConfig, RefcocoConfig, GritConfig):
        assert make_config(cls, {"out": "o", "images": "gs://bucket/train2014"}).images == "gs://bucket/train2014"
        assert make_config(cls, {"out": "o", "images": str(tmp_path)}).images == str(tmp_path)
        with pytest.raises(click.BadParameter, match="directory not found"):
            make_config(cls, {"out": "o", "images": str(tmp_path / "missing")})
    result = _groundforge(["build", "counting", "--images", "gs://bucket/x", "--coco", tmp_path / "nope.json",
                           "--out", tmp_path / "o"], dict(os.environ))
    assert result.returncode == 2 and "--coco" in result.stderr and "--images" not in result.stderr
