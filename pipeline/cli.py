"""The `groundforge` command line. Options a command does not know are handed to Beam as pipeline options."""
from __future__ import annotations

import json
import logging
import os
import sys

import click

# Beam logs this on import whenever the gcp extra is absent, which is the normal local install.
logging.getLogger().addFilter(lambda record: "apitools not found" not in record.getMessage())

from groundforge.pipeline.options import check_split
from groundforge.pipeline.sample import SAMPLE_DIR

BEAM_CONTEXT = {"ignore_unknown_options": True, "allow_extra_args": True}
FORMATS = ("florence2", "kosmos2", "paligemma", "qwen2vl", "qwen25vl", "shikra")


@click.group()
@click.version_option(package_name="groundforge")
def main():
    """groundforge: grounded vision-language fine-tuning data as Parquet shards, built with Apache Beam."""


@main.group()
def build():
    """Build a dataset (extra --options go to Beam: --runner DataflowRunner --project P --region R ...)."""


def output_options(fn):
    """Options every builder shares: output, format, sharding, seed, decontamination, limits."""
    opts = [
        click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (local or gs://...)."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="florence2", show_default=True,
                     help="Target model format for prompt/target."),
        click.option("--num-shards", type=click.IntRange(1), default=None, help="Shards per split (default: from --shard-size-mb)."),
        click.option("--shard-size-mb", type=click.FloatRange(min=0.001), default=256, show_default=True,
                     help="Target shard size when --num-shards is not given."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for template choice."),
        click.option("--exclude-images", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="File of image ids (one per line) to drop, e.g. OUT/holdout_image_ids.txt of a refcoco build."),
        click.option("--max-pixels", type=click.IntRange(1), default=89_478_485, show_default=True,
                     help="Decompression-bomb limit: images with more pixels are rejected."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def read_id_file(path: str | None) -> frozenset:
    """Ids from an --exclude-images file (one per line, '#' comments; numeric ids lose leading zeros)."""
    from groundforge.pipeline.readers.refer import read_exclude_images

    return read_exclude_images(path) if path else frozenset()


def run_builder(fn, out: str, beam_args: list[str], **kwargs) -> None:
    """Run a builder with Beam options, then print the summary; exit 1 when nothing was written."""
    from groundforge.pipeline.options import pipeline_options

    options = pipeline_options(beam_args)
    args = {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool, type(None)))}
    args["beam_args"] = list(beam_args)
    fn(out=out, options=options, args=args, **kwargs)
    info = print_summary(out)
    if info is not None and info["rows"] == 0:
        click.echo("error: no records were written; see the rejects above", err=True)
        sys.exit(1)


def print_summary(out: str) -> dict | None:
    from groundforge.pipeline import fs
    from groundforge.pipeline.writer import INFO_FILE

    path = fs.join(out, INFO_FILE)
    if not fs.exists(path):  # a non-blocking remote run (e.g. Dataflow without waiting)
        click.echo(f"submitted; {path} will appear when the job finishes")
        return None
    info = json.loads(fs.read_bytes(path))
    click.echo(summary_text(info))
    return info


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


@build.command("counting", context_settings=BEAM_CONTEXT)
@click.option("--coco", type=click.Path(exists=True, dir_okay=False), default=None,
              help="COCO instances JSON or Roboflow _annotations.coco.json (default: the shipped sample).")
@click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Image directory that file_name resolves in (default: next to --coco / the sample).")
@click.option("--split", default="train", show_default=True, callback=check_split, help="Split name of the records.")
@click.option("--dataset", "dataset_name", default="counting", show_default=True)
@click.option("--image-mode", type=click.Choice(("embed", "path")), default="embed", show_default=True,
              help="Embed image bytes, or keep only file names relative to --images (very large sets).")
@output_options
@click.pass_context
def build_counting_cmd(ctx, coco, images, split, dataset_name, image_mode, out, fmt, num_shards, shard_size_mb, seed,
                       exclude_images, max_pixels):
    """Counting questions: one `counting` record (JSON of all class counts) and one `count_class` record per class
    per image, from COCO boxes."""
    from groundforge.pipeline.build_counting import build_counting

    if coco is None:
        coco, images = str(SAMPLE_DIR / "instances.json"), images or str(SAMPLE_DIR / "images")
    if images is None:
        images = os.path.dirname(os.path.abspath(coco))
    run_builder(build_counting, out, ctx.args, coco=coco, images=images, fmt=fmt, split=split, seed=seed,
                dataset=dataset_name, exclude=read_id_file(exclude_images), max_pixels=max_pixels,
                num_shards=num_shards, shard_size_mb=shard_size_mb, image_mode=image_mode)


def _register() -> None:
    """Commands defined beside their code: render/validate/preview here, train/eval in train/."""
    from groundforge.pipeline.checks import preview_cmd, validate_cmd
    from groundforge.pipeline.render import render_cmd
    from groundforge.train.cli import eval_command, train_command

    for command in (render_cmd, validate_cmd, preview_cmd, train_command, eval_command):
        main.add_command(command)
    from groundforge.pipeline.build_refcoco import refcoco_command
    build.add_command(refcoco_command())
    from groundforge.pipeline.build_grit import grit_command
    build.add_command(grit_command())


_register()

if __name__ == "__main__":
    main()
