"""Beam runner setup: an offline local default, and any runner's options passed through untouched."""
from __future__ import annotations

import os


def pipeline_options(beam_args: list[str] | tuple[str, ...] = ()):
    """PipelineOptions from the extra CLI arguments.

    Without `--runner`, run on the in-process DirectRunner (Beam 2.77's default Prism runner downloads
    a binary and fails offline), in multi_processing mode over every core unless the user chose otherwise.
    Anything else (`--runner DataflowRunner --project ... --region ... --temp_location ...`) passes through.
    """
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    args = list(beam_args)
    opts = PipelineOptions(args)
    std = opts.view_as(StandardOptions)
    if not std.runner:
        std.runner = "DirectRunner"
    if std.runner in ("DirectRunner", "BundleBasedDirectRunner", "FnApiRunner"):
        direct = opts.view_as(DirectOptions)
        if not _given(args, "direct_running_mode"):
            direct.direct_running_mode = "multi_processing"
            if not _given(args, "direct_num_workers"):
                direct.direct_num_workers = os.cpu_count() or 1
    return opts


def _given(args: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def runner_name(opts) -> str:
    from apache_beam.options.pipeline_options import StandardOptions

    return str(opts.view_as(StandardOptions).runner)
