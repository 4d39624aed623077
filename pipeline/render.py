"""`groundforge render`: re-render existing shards for another model format from `objects`.

Images, boxes and keys are kept; only format/prompt/target and the template id in meta change, so no
detector or image decode runs again. It runs through the same skeleton as the builders (pipeline/run.py).
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass

import apache_beam as beam
import click
from groundforge.pipeline.builder import Builder, Outputs
from groundforge.pipeline.config import FORMATS, WriteConfig, click_params, option
from groundforge.pipeline.emit import REJECTS, STATS, render_or_reject, stat
from groundforge.pipeline.shards import iter_rows, load_info, shard_paths
from groundforge.pipeline.writer import grouped_outputs


@dataclass(frozen=True, kw_only=True)
class RenderConfig(WriteConfig):
    src: str = option(MISSING, "A groundforge output directory.", cli="--in")
    format: str = option(MISSING, "Target model format of prompt/target.", type=click.Choice(FORMATS))


class RenderFn(beam.DoFn):
    def __init__(self, fmt: str, seed: int):
        self.fmt = fmt
        self.seed = seed

    def process(self, path: str):
        """One shard -> its records re-rendered, as image groups (an image's records share a shard)."""
        yield from grouped_outputs(self._rendered(path))

    def _rendered(self, path: str):
        for row in iter_rows(path):
            yield stat("records_read")
            yield render_or_reject(row, self.fmt, self.seed)


class Renderer(Builder):
    name = "render"
    config = RenderConfig
    help = "Re-render the shards of --in for --format into --out, without touching images or boxes."

    def prepare(self, config: RenderConfig) -> dict:
        try:
            info = load_info(config.src)
        except FileNotFoundError as err:
            raise click.BadParameter(str(err), param_hint="--in") from None
        return {"info": info, "paths": shard_paths(config.src, info)}

    def builder_label(self, config, plan) -> str:
        return f"render({plan['info']['builder']})"

    def dataset(self, config, plan) -> str:
        return plan["info"]["dataset"]

    def expand(self, p, config: RenderConfig, plan) -> Outputs:
        done = (p | "Shards" >> beam.Create(plan["paths"]) | "Spread" >> beam.Reshuffle()
                | "Render" >> beam.ParDo(RenderFn(config.format, config.seed)).with_outputs(
                    REJECTS, STATS, main="groups"))
        return Outputs(done.groups, [done[REJECTS]], [done[STATS]])


RENDERER = Renderer()


@click.command("render", params=click_params(RenderConfig), help=RENDERER.help,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": ["-h", "--help"]})
@click.pass_context
def render_cmd(ctx, **values):
    from groundforge.pipeline.run import run_command

    run_command(RENDERER, RenderConfig(**values), ctx.args)
