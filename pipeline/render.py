"""`groundforge render`: re-render existing shards for another model format from `objects`.

Images, boxes and keys are kept; only format/prompt/target and the template id in meta change, so no
detector or image decode runs again. It runs through the same skeleton as the builders (pipeline/run.py). What
does not depend on the format is carried over as it is: the dataset card's facts (licenses, citations), extra
tables such as grit's annotations/, and holdout_image_ids.txt.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass

import apache_beam as beam
import click
from groundforge.pipeline import fs
from groundforge.pipeline.builder import Builder, Outputs
from groundforge.pipeline.command import PipelineCommand, dataset_argument, one_dataset
from groundforge.pipeline.config import FORMATS, WriteConfig, click_params, option
from groundforge.pipeline.emit import REJECTS, STATS, render_or_reject, stat
from groundforge.pipeline.shards import InfoError, iter_rows, load_info, shard_paths
from groundforge.pipeline.writer import HOLDOUT_FILE, Table, grouped_outputs
from groundforge.transforms.paths import PathError


@dataclass(frozen=True, kw_only=True)
class RenderConfig(WriteConfig):
    src: str = option(MISSING, "The groundforge output to read: another spelling of DATASET.", cli="--in")
    format: str = option(MISSING, "Target model format of prompt/target.", type=click.Choice(FORMATS))


class RenderFn(beam.DoFn):
    def __init__(self, fmt: str, seed: int, options=None):
        self.fmt = fmt
        self.seed = seed
        self.options = options

    def process(self, path: str):
        """One shard -> its records re-rendered, as image groups (an image's records share a shard)."""
        yield from grouped_outputs(self._rendered(path))

    def _rendered(self, path: str):
        for row in iter_rows(path):
            yield stat("records_read")
            yield render_or_reject(row, self.fmt, self.seed, options=self.options)


class Renderer(Builder):
    name = "render"
    config = RenderConfig
    help = "Re-render the shards of DATASET for --format into --out, without touching images or boxes."

    def prepare(self, config: RenderConfig) -> dict:
        import pyarrow.parquet as pq

        try:
            info = load_info(config.src)
            paths = shard_paths(config.src, info)
        except (FileNotFoundError, InfoError, PathError) as err:
            raise click.BadParameter(str(err), param_hint="DATASET") from None
        tables = {}
        for name, table in sorted((info.get("tables") or {}).items()):
            files = [fs.join(config.src, *f["file"].split("/")) for f in table["files"]]
            if files:
                with fs.open_read(files[0]) as f:
                    schema = pq.read_schema(f)
                split = table["files"][0]["file"].split("/", 1)[1].split("-", 1)[0]
                tables[name] = (schema, split, files)
        holdout = fs.join(config.src, HOLDOUT_FILE)
        return {"info": info, "paths": paths, "tables": tables,
                "holdout": fs.read_bytes(holdout) if fs.exists(holdout) else None}

    def card(self, config, plan):
        from groundforge.pipeline.card import card_info_from

        return card_info_from(config.src)

    def expected(self, config, plan) -> dict:
        return {"records_read": plan["info"]["rows"]}

    def input_paths(self, config, plan) -> list[str]:
        return [config.src]

    def builder_label(self, config, plan) -> str:
        return f"render({plan['info']['builder']})"

    def dataset(self, config, plan) -> str:
        return plan["info"]["dataset"]

    def expand(self, p, config: RenderConfig, plan) -> Outputs:
        done = (p | "Shards" >> beam.Create(plan["paths"]) | "Spread" >> beam.Reshuffle()
                | "Render" >> beam.ParDo(RenderFn(config.format, config.seed, config.format_options())).with_outputs(
                    REJECTS, STATS, main="groups"))
        tables = {}
        for name, (schema, split, files) in plan["tables"].items():
            rows = (p | f"Table_{name}_Files" >> beam.Create(files)
                    | f"Table_{name}_Rows" >> beam.FlatMap(iter_rows))
            tables[name] = (rows, Table(schema, _row_id, split))
        if plan["holdout"] is not None:
            _ = (p | "Holdout" >> beam.Create([plan["holdout"]])
                 | "WriteHoldout" >> beam.Map(_write, fs.join(config.out, HOLDOUT_FILE)))
        return Outputs(done.groups, [done[REJECTS]], [done[STATS]], tables)


def _row_id(row: dict) -> str:
    return row["id"]


def _write(data: bytes, path: str) -> None:
    fs.write_bytes(path, data)


RENDERER = Renderer()


def _render_params() -> list[click.Parameter]:
    params = [dataset_argument(), *click_params(RenderConfig)]
    for param in params:
        if param.name == "src":
            param.required = False  # DATASET or --in: checked by one_dataset
    return params


@click.command("render", cls=PipelineCommand, params=_render_params(), help=RENDERER.help)
@click.pass_context
def render_cmd(ctx, dataset, **values):
    from groundforge.pipeline.run import run_command

    values["src"] = one_dataset(dataset, values["src"], ctx)
    run_command(RENDERER, RenderConfig(**values), ctx.args)
