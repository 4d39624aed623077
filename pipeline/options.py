"""Beam runner setup (an offline local default, any runner's options passed through) and shared option checks."""
from __future__ import annotations

import logging
import os

import click

LOCAL_RUNNERS = ("DirectRunner", "BundleBasedDirectRunner", "FnApiRunner", "SwitchingDirectRunner")


def unknown_beam_args(args: list[str]) -> list[str]:
    """The arguments that no Beam PipelineOptions class knows (Beam itself only logs and drops them)."""
    from apache_beam.options.pipeline_options import (
        PipelineOptions,
        _BeamArgumentParser,
    )

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in _subclasses(PipelineOptions)}.values():
        cls._add_argparse_args(parser)  # as PipelineOptions.get_all_options builds its parser
    _, unknown = parser.parse_known_args(list(args))
    return [a for a in unknown if a.startswith("-")]


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def check_beam_args(args: list[str], own_options: list[str]) -> None:
    """A mistyped option (`--num-shardz 3`) must not be dropped silently: an argument that neither the command
    nor Beam knows is a usage error, with the closest known name."""
    import difflib

    unknown = unknown_beam_args(args)
    if not unknown:
        return
    name = unknown[0].split("=", 1)[0]
    close = difflib.get_close_matches(name, own_options, n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise click.UsageError(f"no such option: {name}{hint}; options that groundforge does not know go to Beam, and "
                           "Beam does not know it either")


def check_runner(name: str) -> None:
    from apache_beam.runners.runner import create_runner

    try:
        create_runner(name)
    except (ValueError, ImportError) as err:
        raise click.BadParameter(f"unknown Beam runner {name!r} ({err})".split("\n")[0], param_hint="--runner") from None


SMALL_INPUT_BYTES = 8 * 1024 * 1024   # at most this much input: the in-process runner (see pipeline_options)

_log = logging.getLogger(__name__)


def pipeline_options(beam_args: list[str] | tuple[str, ...] = (), size_hint: int | None = None, echo=None):
    """PipelineOptions from the extra CLI arguments.

    Without `--runner`, run on the in-process DirectRunner (Beam 2.77's default Prism runner downloads
    a binary and fails offline). Its mode, unless the user chose one with --direct_running_mode: `in_memory` (one
    process, no worker start-up) when the input is known to be small (`size_hint` <= SMALL_INPUT_BYTES of input
    files), else `multi_processing` over every core. An automatic choice of in_memory is said in one line through
    `echo` (default: the groundforge logger, which the CLI's console prints and --quiet silences).
    Anything else (`--runner DataflowRunner --project ... --region ... --temp_location ...`) passes through.
    """
    from apache_beam.options.pipeline_options import (
        DirectOptions,
        PipelineOptions,
        StandardOptions,
        TypeOptions,
    )

    args = list(beam_args)
    opts = PipelineOptions(args)
    std = opts.view_as(StandardOptions)
    if not std.runner:
        std.runner = "DirectRunner"
    elif isinstance(std.runner, str):
        check_runner(std.runner)
    if std.runner in LOCAL_RUNNERS:
        quiet_local_workers(opts, args)
        direct = opts.view_as(DirectOptions)
        if not _given(args, "direct_running_mode"):
            direct.direct_running_mode = local_mode(size_hint)
            if direct.direct_running_mode == "in_memory":
                (echo or _log.info)(f"small input{_size_text(size_hint)}: running in this process "
                                    "(--direct_running_mode=multi_processing to use worker processes)")
            elif not _given(args, "direct_num_workers"):
                direct.direct_num_workers = os.cpu_count() or 1
        if direct.direct_running_mode == "in_memory" and not _given(args, "pipeline_type_check",
                                                                       "no_pipeline_type_check"):
            # Type inference over every lambda is ~0.4 s of graph construction, a tenth of a small build; the
            # DoFns declare no type hints, and in one process no coder needs an inferred type.
            opts.view_as(TypeOptions).pipeline_type_check = False
    return opts


def local_mode(size_hint: int | None) -> str:
    """The local runner's mode for an input of `size_hint` bytes (None: unknown, e.g. a remote input)."""
    return "in_memory" if size_hint is not None and size_hint <= SMALL_INPUT_BYTES else "multi_processing"


def input_bytes(paths) -> int | None:
    """Total size of the local input files and folders (a folder: the files under it, counted until the total
    passes SMALL_INPUT_BYTES); None when any path is remote or missing, so the size is unknown."""
    total = 0
    for path in paths:
        if not path:
            continue
        if "://" in path or not os.path.exists(path):
            return None
        if os.path.isdir(path):
            for root, _, files in os.walk(path):
                for name in files:
                    total += _size(os.path.join(root, name))
                    if total > SMALL_INPUT_BYTES:
                        return total
        else:
            total += _size(path)
    return total


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _size_text(n: int | None) -> str:
    """` (348 KB)`, ` (3.2 MB)`; nothing when no input file is known (the shipped sample)."""
    if not n:
        return ""
    return f" ({n / (1024 * 1024):.1f} MB)" if n >= 1024 * 1024 else f" ({max(1, round(n / 1024))} KB)"


def quiet_local_workers(opts, args: list[str]) -> None:
    """Local worker processes log every harness start at INFO/WARN; keep the terminal for the summary."""
    import logging

    from apache_beam.options.pipeline_options import WorkerOptions

    if not _given(args, "default_sdk_harness_log_level"):
        opts.view_as(WorkerOptions).default_sdk_harness_log_level = "ERROR"
    for name in ("apache_beam.runners.portability.local_job_service", "apache_beam.options.pipeline_options",
                 "apache_beam.runners.portability.fn_api_runner", "apache_beam.runners.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _given(args: list[str], *names: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args for name in names)


def parse_tasks(value: str, allowed: tuple) -> tuple:
    """--tasks: a comma list of `allowed` task names, order kept, duplicates dropped."""
    tasks = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    if not tasks or any(t not in allowed for t in tasks):
        raise click.BadParameter(f"{value!r}: expected a comma list of {', '.join(allowed)}", param_hint="--tasks")
    return tasks


def check_dir(path: str | None, option: str) -> None:
    """A local directory option must exist (remote URLs are checked by the pipeline when it reads them)."""
    if path and "://" not in path and not os.path.isdir(path):
        raise click.BadParameter(f"directory not found: {path}", param_hint=option)
