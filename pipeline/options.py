"""Beam runner setup (an offline local default, any runner's options passed through) and shared option checks."""
from __future__ import annotations

import os

import click


def pipeline_options(beam_args: list[str] | tuple[str, ...] = ()):
    """PipelineOptions from the extra CLI arguments.

    Without `--runner`, run on the in-process DirectRunner (Beam 2.77's default Prism runner downloads
    a binary and fails offline), in multi_processing mode over every core unless the user chose otherwise.
    Anything else (`--runner DataflowRunner --project ... --region ... --temp_location ...`) passes through.
    """
    from apache_beam.options.pipeline_options import (
        DirectOptions,
        PipelineOptions,
        StandardOptions,
    )

    args = list(beam_args)
    opts = PipelineOptions(args)
    std = opts.view_as(StandardOptions)
    if not std.runner:
        std.runner = "DirectRunner"
    if std.runner in ("DirectRunner", "BundleBasedDirectRunner", "FnApiRunner"):
        quiet_local_workers(opts, args)
        direct = opts.view_as(DirectOptions)
        if not _given(args, "direct_running_mode"):
            direct.direct_running_mode = "multi_processing"
            if not _given(args, "direct_num_workers"):
                direct.direct_num_workers = os.cpu_count() or 1
    return opts


def quiet_local_workers(opts, args: list[str]) -> None:
    """Local worker processes log every harness start at INFO/WARN; keep the terminal for the summary."""
    import logging

    from apache_beam.options.pipeline_options import WorkerOptions

    if not _given(args, "default_sdk_harness_log_level"):
        opts.view_as(WorkerOptions).default_sdk_harness_log_level = "ERROR"
    for name in ("apache_beam.runners.portability.local_job_service", "apache_beam.options.pipeline_options",
                 "apache_beam.runners.portability.fn_api_runner", "apache_beam.runners.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _given(args: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


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
