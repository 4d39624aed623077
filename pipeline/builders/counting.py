"""`groundforge build counting`: counting and count_class records from COCO detection annotations."""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import click
from apache_beam.metrics import Metrics
from groundforge.pipeline import fs
from groundforge.pipeline.builder import Builder, Outputs
from groundforge.pipeline.config import INPUT_FILE, BuildConfig, check_split, option
from groundforge.pipeline.emit import (
    REJECTS,
    STATS,
    expect,
    read_outputs,
    rejected,
    render_or_reject,
    size_mismatch,
    stat,
)
from groundforge.pipeline.image_files import load_image
from groundforge.pipeline.options import check_dir
from groundforge.pipeline.readers.coco import image_items, read_coco
from groundforge.pipeline.readers.common import (
    canonical_image_id,
    public_source,
    read_exclude_images,
)
from groundforge.pipeline.sample import SAMPLE_DIR
from groundforge.pipeline.writer import image_groups
from groundforge.transforms.counting import (
    Categories,
    count_image,
    image_records,
    load_class_names,
)
from groundforge.transforms.images import ImageError
from groundforge.transforms.paths import PathError

IMAGE_MODES = ("embed", "path")


@dataclass(frozen=True, kw_only=True)
class CountingConfig(BuildConfig):
    coco: str | None = option(None, "COCO instances JSON or Roboflow _annotations.coco.json (default: the shipped "
                              "sample).", type=INPUT_FILE, show_default=False)
    images: str | None = option(None, "Image directory that file_name resolves in, local or a URL (gs://...) "
                                "(default: next to --coco / the sample).",
                                check=lambda v: check_dir(v, "--images") or v, show_default=False)
    split: str = option("train", "Split name written into every record.", check=check_split)
    dataset: str = option("counting", "Dataset name written into every record.")
    image_mode: str = option("embed", "Embed image bytes, or keep only file names relative to --images (very "
                             "large sets).", type=click.Choice(IMAGE_MODES))
    class_names: str | None = option(None, "JSON file mapping source class names to display names, e.g. "
                                     "{\"8\": \"eight ball\", \"minus\": {\"name\": \"minus sign\", \"plural\": "
                                     "\"minus signs\"}}.", type=INPUT_FILE,
                                     show_default=False)
    max_zero_ratio: float = option(0.5, "Per image, at most this share of count_class questions may have the answer "
                                   "0 (seeded choice; the rest are counted as count_class_zero_dropped); 1 keeps all.",
                                   type=click.FloatRange(0, 1))


class Plan(NamedTuple):
    coco: str
    images: str
    exclude: frozenset
    class_names: dict


class ExpandCoco(beam.DoFn):
    """COCO file path -> one element per image; malformed files and entries go to rejects."""

    def process(self, path: str):
        coco, bad = read_coco(path)
        if bad:
            yield beam.pvalue.TaggedOutput(REJECTS, bad)
            return
        expect("images_read", len(coco["images"]))
        yield from read_outputs(image_items(coco, path))


class CountingFn(beam.DoFn):
    """One COCO image element -> image groups of rendered counting/count_class records, rejects and stats."""

    def __init__(self, config: CountingConfig, plan: Plan):
        self.c = config
        self.plan = plan
        self.options = config.format_options()
        self.images_read = Metrics.counter("groundforge", "images_read")
        self.rejected = Metrics.counter("groundforge", "rejected")

    def process(self, item):
        c = self.c
        entry = item["image"]
        image_id = str(entry["id"])
        yield stat("images_read")
        self.images_read.inc()
        if canonical_image_id(entry["id"]) in self.plan.exclude:
            yield stat("excluded_holdout_images")
            return
        source = f"image:{image_id}:{entry['file_name']}"
        try:
            data, info = load_image(self.plan.images, entry["file_name"], c.max_pixels, c.max_image_bytes)
        except (ImageError, PathError) as err:
            yield self._count(rejected(source, "image", err))
            return
        claimed = (int(entry["width"]), int(entry["height"]))
        if claimed != (info.width, info.height):
            yield self._count(size_mismatch(source, claimed, (info.width, info.height)))
            return
        cats = Categories(item["classes"], item["category_names"])
        counts = count_image(item["annotations"], cats, info.width, info.height)
        for row in counts.rejects:
            yield self._count(beam.pvalue.TaggedOutput(REJECTS, row))
        image = {"bytes": None if c.image_mode == "path" else data, "path": entry["file_name"]}
        base = {"split": c.split, "image_id": image_id, "width": info.width, "height": info.height,
                "image_sha256": info.sha256, "image": image}
        meta = {"source": public_source(item["source"]), "file_name": entry["file_name"], "builder": "counting",
                "license": entry.get("license")}
        out = image_records(base, counts, cats.classes, c.dataset, meta, class_names=self.plan.class_names,
                            max_zero_ratio=c.max_zero_ratio, seed=c.seed)
        for name, n in sorted(out.stats.items()):
            yield stat(name, n)
        done = []
        for record in out.records:
            out = render_or_reject(record, c.format, c.seed, options=self.options)
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield self._count(out)
            else:
                done.append(out)
        yield from image_groups(done)

    def _count(self, tagged):
        self.rejected.inc()
        return tagged


class CountingBuilder(Builder):
    name = "counting"
    config = CountingConfig
    help = ("Counting questions: one `counting` record (JSON of all class counts) and one `count_class` record "
            "per class per image, from COCO boxes.")

    def card(self, config, plan):
        from groundforge.pipeline.card import counting_card

        return counting_card()

    def prepare(self, config: CountingConfig) -> Plan:
        coco, images = config.coco, config.images
        if coco is None:
            coco, images = str(SAMPLE_DIR / "instances.json"), images or str(SAMPLE_DIR / "images")
        if images is None:
            images = posixpath.dirname(coco) if "://" in coco else os.path.dirname(os.path.abspath(coco))
        class_names = {}
        if config.class_names:
            try:
                class_names = load_class_names(fs.read_bytes(config.class_names).decode("utf-8"), config.class_names)
            except (ValueError, UnicodeDecodeError) as err:
                raise click.BadParameter(str(err), param_hint="--class-names") from None
        return Plan(coco, images, read_exclude_images(config.exclude_images), class_names)

    def input_paths(self, config, plan: Plan) -> list[str]:
        return [plan.coco]

    def size_hint(self, config, plan: Plan) -> int | None:
        from groundforge.pipeline.options import input_bytes

        return input_bytes([plan.coco, plan.images])  # images: --images or the folder of the COCO file

    def expand(self, p, config: CountingConfig, plan: Plan) -> Outputs:
        expanded = (p | "CocoFile" >> beam.Create([plan.coco])
                    | "ExpandCoco" >> beam.ParDo(ExpandCoco()).with_outputs(REJECTS, main="images"))
        built = (expanded.images
                 | "Spread" >> beam.Reshuffle()
                 | "Count" >> beam.ParDo(CountingFn(config, plan)).with_outputs(REJECTS, STATS, main="groups"))
        return Outputs(built.groups, [expanded[REJECTS], built[REJECTS]], [built[STATS]])


BUILDER = CountingBuilder()
