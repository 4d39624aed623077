"""`groundforge render`: re-render existing shards for another model format from `objects`.

Images, boxes and keys are kept; only format/prompt/target and the template id in meta change, so no
detector or image decode runs again.
"""
from __future__ import annotations

import apache_beam as beam
import click

from groundforge.pipeline.shards import iter_rows, load_info, shard_paths
from groundforge.pipeline.writer import WriteDataset, grouped_outputs, start_output
from groundforge.transforms.records import reject, rendered

REJECTS = "rejects"


class RenderFn(beam.DoFn):
    def __init__(self, fmt: str, seed: int):
        self.fmt = fmt
        self.seed = seed

    def process(self, path: str):
        """One shard -> its records re-rendered, as image groups (an image's records share a shard)."""
        yield from grouped_outputs(self._rendered(path))

    def _rendered(self, path: str):
        for row in iter_rows(path):
            yield beam.pvalue.TaggedOutput("stats", ("records_read", 1))
            try:
                yield rendered(row, self.fmt, self.seed)
            except ValueError as err:  # templates.RenderError (control_tokens, bad_aspect_ratio, ...) or BoxError
                yield beam.pvalue.TaggedOutput(REJECTS, reject(f"record:{row['id']}", "render",
                                                               getattr(err, "reason", "render_error"), str(err)))


def render_dataset(*, src: str, out: str, fmt: str, seed: int, num_shards, shard_size_mb, options, args) -> None:
    info = load_info(src)
    paths = shard_paths(src, info)
    start_output(out)
    with beam.Pipeline(options=options) as p:
        done = (p | "Shards" >> beam.Create(paths) | "Spread" >> beam.Reshuffle()
                | "Render" >> beam.ParDo(RenderFn(fmt, seed)).with_outputs(REJECTS, "stats", main="groups"))
        _ = {"groups": done.groups, "rejects": done[REJECTS], "stats": done["stats"]} | WriteDataset(
            out, builder=f"render({info['builder']})", dataset=info["dataset"], args=args,
            num_shards=num_shards, shard_size_mb=shard_size_mb)


@click.command("render", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--in", "src", required=True, help="A groundforge output directory.")
@click.option("--out", required=True, help="New output directory.")
@click.option("--format", "fmt", required=True,
              type=click.Choice(("florence2", "kosmos2", "paligemma", "qwen2vl", "qwen25vl", "shikra")))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-shards", type=click.IntRange(1), default=None)
@click.option("--shard-size-mb", type=click.FloatRange(min=0.001), default=256, show_default=True)
@click.pass_context
def render_cmd(ctx, src, out, fmt, seed, num_shards, shard_size_mb):
    """Re-render the shards of --in for --format into --out, without touching images or boxes."""
    from groundforge.pipeline.cli import run_builder

    try:
        load_info(src)
    except FileNotFoundError as err:
        raise click.BadParameter(str(err), param_hint="--in") from None
    run_builder(render_dataset, out, ctx.args, src=src, fmt=fmt, seed=seed, num_shards=num_shards,
                shard_size_mb=shard_size_mb)
