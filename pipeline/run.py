"""Run a builder: the one pipeline skeleton every builder and `render` share.

prepare (driver-side checks) -> Beam options -> mark OUT incomplete -> Pipeline(builder.expand) -> flatten
rejects and stats -> WriteDataset (shards, rejects, extra tables, dataset_info.json, card). The config is
recorded field by field in dataset_info.json's `args`. The flattened stats, rejects and image groups are also
tapped by `emit.Progress` for the live progress line of a CLI run (pipeline/console.py).
"""
from __future__ import annotations

import json
import time

import apache_beam as beam
from groundforge.pipeline import console, fs
from groundforge.pipeline.config import recorded
from groundforge.pipeline.emit import Progress, expect
from groundforge.pipeline.options import pipeline_options
from groundforge.pipeline.outdir import check_output, clear_previous, is_local, output_lock
from groundforge.pipeline.writer import INFO_FILE, WriteDataset, start_output


def run(builder, config, beam_args=(), command: str | None = None) -> dict | None:
    """Build `config.out` with `builder`; returns dataset_info (None when a remote runner did not wait).
    `command`: the command line as typed, for the dataset card (local absolute paths are cut there)."""
    config.format_options()  # refuse a bad combination before anything runs
    plan = builder.prepare(config)
    options = pipeline_options(beam_args, size_hint=builder.size_hint(config, plan))
    check_output(config.out, builder.input_paths(config, plan))
    args = {**recorded(config), **builder.inputs(config, plan), "beam_args": list(beam_args)}
    if command:
        args["command"] = command
    with output_lock(config.out):
        clear_previous(config.out)
        start_output(config.out)
        _run_pipeline(builder, config, plan, options, args)
    return read_info(config.out)


def _run_pipeline(builder, config, plan, options, args) -> None:
    local, processes = _local_runner(options)
    with console.live(builder.name, local=local, worker_processes=processes), beam.Pipeline(options=options) as p:
        _announce_totals(builder, config, plan)
        outs = builder.expand(p, config, plan)
        pcolls = {"groups": outs.groups,
                  "rejects": _flatten(p, outs.rejects, "Rejects"),
                  "stats": _flatten(p, outs.stats, "Stats"),
                  **{name: pcoll for name, (pcoll, _) in outs.tables.items()}}
        _tap(outs.groups, "records", "ProgressRecords")
        for kind, members in (("rejects", outs.rejects), ("stats", outs.stats)):
            for i, pcoll in enumerate(members):
                _tap(pcoll, kind, f"Progress_{kind}_{i}")
        _ = pcolls | WriteDataset(
            config.out, builder=builder.builder_label(config, plan), dataset=builder.dataset(config, plan),
            args=args, num_shards=config.num_shards, shard_size_mb=config.shard_size_mb,
            card=builder.card(config, plan), tables={name: table for name, (_, table) in outs.tables.items()},
            spill_groups=local and is_local(config.out))


def _announce_totals(builder, config, plan) -> None:
    """Totals the driver knows before the pipeline runs (a builder's optional `expected(config, plan)` ->
    {stat name: n}, e.g. render's {"records_read": rows of --in}) give the progress line its ETA. Readers that
    learn a total while running call `emit.expect` themselves."""
    for name, n in builder.expected(config, plan).items():
        expect(name, n)
    console.flush()


def _tap(pcoll, kind: str, label: str) -> None:
    """A side branch that counts `pcoll` for progress; the data path to the writer is untouched. It taps each
    output where the builder's DoFn makes it (not the flattened collection), so it is fused into that DoFn's stage
    and counts while the stage runs, not after it."""
    _ = pcoll | label >> beam.ParDo(Progress(kind))


def _local_runner(options) -> tuple[bool, bool]:
    """(a local runner, whose workers can report progress; with worker processes of their own)."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
    from groundforge.pipeline.options import LOCAL_RUNNERS

    runner = options.view_as(StandardOptions).runner
    local = isinstance(runner, str) and runner in LOCAL_RUNNERS
    return local, local and options.view_as(DirectOptions).direct_running_mode == "multi_processing"


def _flatten(p, pcolls: list, label: str):
    return tuple(pcolls) | label >> beam.Flatten(pipeline=p)


def read_info(out: str) -> dict | None:
    path = fs.join(out, INFO_FILE)
    if not fs.exists(path):  # a non-blocking remote run (e.g. Dataflow without waiting)
        return None
    return json.loads(fs.read_bytes(path))


def run_command(builder, config, beam_args) -> dict | None:
    """The CLI's run: build, print the summary (not with --quiet) and the `done in ...` line; exit 1 when
    nothing was written."""
    import sys

    import click
    from groundforge.pipeline.card import command_line, display_command
    from groundforge.pipeline.options import check_beam_args

    start = time.monotonic()
    ctx = click.get_current_context()
    check_beam_args(beam_args, [opt for p in ctx.command.params for opt in p.opts if opt.startswith("--")])
    info = run(builder, config, beam_args, command=display_command(command_line(ctx)))
    if info is None:
        click.echo(f"submitted; {fs.join(config.out, INFO_FILE)} will appear when the job finishes")
        return None
    if ctx.meta.get(console.VERBOSITY_KEY, console.NORMAL) > console.QUIET:
        click.echo(summary_text(info))
    click.echo(done_line(time.monotonic() - start, info, config.out))
    if info["rows"] == 0:
        click.echo("error: no records were written; see the rejects above", err=True)
        sys.exit(1)
    return info


def done_line(seconds: float, info: dict, out: str) -> str:
    """The last line of every build: `done in 12.3 s: 448 records, 1 rejected -> OUT`."""
    return f"done in {console.duration(seconds)}: {info['rows']} records, {info['rejects']['rows']} rejected -> {out}"


def summary_text(info: dict) -> str:
    stats = info["stats"]
    read = ", ".join(f"{k.removesuffix('_read').replace('_', ' ')} {v}" for k, v in stats.items() if k.endswith("_read"))
    lines = [f"read: {read or 'nothing'}",
             f"written: {info['rows']} records in {len(info['shards'])} shards"]
    for split, entry in sorted(info["splits"].items()):
        tasks = ", ".join(f"{t} {n}" for t, n in sorted(entry["tasks"].items()))
        lines.append(f"  {split}: {entry['rows']} ({tasks})")
    dropped = {k: v for k, v in stats.items() if not k.endswith("_read")}
    for name, n in dropped.items():
        lines.append(f"  {name.replace('_', ' ')}: {n}")
    lines.append(f"rejected: {info['rejects']['rows']}")
    for reason, n in info["rejects"]["by_reason"].items():
        lines.append(f"  {reason}: {n}")
    return "\n".join(lines)
