"""`groundforge build refcoco`: RefCOCO / RefCOCO+ / RefCOCOg referring expressions as `rec` and `reg` records.

Three inputs (see pipeline/readers): the refer layout (refs(<split_by>).p + instances.json + COCO images),
lmms-lab/RefCOCO parquet (embedded image bytes) and jxu124/refcoco rows (Parquet/JSON/JSONL + an image dir).

Pipeline: read ref items (refer: one DoFn loads the pickle from its path; parquet: one element per file,
then its rows) -> key by image id -> GroupByKey, so each image is read and checked once however many refs
and sentences it has -> per ref: size check, box check, sentence dedupe, one record per (ref, unique
sentence, task) -> WriteDataset. Image ids of every non-train ref are combined into
OUT/holdout_image_ids.txt for `--exclude-images` of other builders.

The configuration (paths, dataset/split_by, layout, and the refs pickle itself) is checked in the driver
before any pipeline runs: a hostile pickle is refused by the restricted unpickler there, with one line.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import click
from groundforge.pipeline import fs
from groundforge.pipeline.builder import Builder, Outputs
from groundforge.pipeline.config import BuildConfig, check_split, option
from groundforge.pipeline.emit import (
    REJECTS,
    STATS,
    read_outputs,
    reject,
    rejected,
    render_or_reject,
    size_mismatch,
    stat,
)
from groundforge.pipeline.image_files import load_image
from groundforge.pipeline.options import check_dir, parse_tasks
from groundforge.pipeline.readers.common import (
    ReaderError,
    holdout_text,
    public_source,
    read_exclude_images,
    sort_image_ids,
)
from groundforge.pipeline.readers.refcoco_parquet import (
    LAYOUTS,
    read_refcoco_file,
    resolve_inputs,
)
from groundforge.pipeline.readers.refer import (
    DATASETS,
    dedupe_sentences,
    is_holdout,
    load_refs,
    normalize_sentence,
    read_refer_files,
    refer_paths,
)
from groundforge.pipeline.sample import SAMPLE_DIR
from groundforge.pipeline.writer import HOLDOUT_FILE, grouped_outputs
from groundforge.transforms.boxes import BoxError, checked_box
from groundforge.transforms.images import ImageError, prepare_image
from groundforge.transforms.paths import PathError
from groundforge.transforms.records import make_object, make_record, record_id

NAME = "refcoco"
TASKS = ("rec", "reg")
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
LICENSE_NOTE = "annotations Apache-2.0 (lichengunc/refer); images COCO, under their Flickr licenses"


class Source(NamedTuple):
    """A checked input configuration."""
    layout: str                 # "refer", "lmms" or "jxu124"
    dataset: str
    images: str | None          # image root for file images
    refs_path: str | None = None
    instances_path: str | None = None
    files: tuple = ()
    split: str | None = None
    bbox_format: str | None = None


# ---------------------------------------------------------------- reading

class ReadReferFn(beam.DoFn):
    """(refs pickle, instances.json) -> ref items; malformed refs -> read rejects."""

    def __init__(self, dataset: str):
        self.dataset = dataset

    def process(self, paths):
        refs_path, instances_path = paths
        # The driver has loaded this pickle once already, to refuse a hostile one before anything runs. Loading
        # it again here (a second or two for refcoco's ~30 MB, through the same restricted unpickler) is the
        # price of not shipping every ref from the driver through beam.Create.
        try:
            yield from read_outputs(read_refer_files(refs_path, instances_path, self.dataset), "refs_read")
        except ReaderError as err:
            yield reject(refs_path, "read", "unreadable_file", str(err))


class ReadRowsFn(beam.DoFn):
    """One Parquet/JSON/JSONL file -> ref items; malformed rows -> read rejects."""

    def __init__(self, source: Source):
        self.source = source

    def process(self, path: str):
        s = self.source
        rows = read_refcoco_file(path, dataset=s.dataset, layout=s.layout, split=s.split,
                                 bbox_format=s.bbox_format, images_dir=s.images)
        try:
            yield from read_outputs(rows, "refs_read")
        except ReaderError as err:  # a corrupt file is bad input, not a bad configuration
            yield reject(path, "read", "unreadable_file", str(err))


# ---------------------------------------------------------------- images and records

def _image_key(item: dict) -> str:
    """Items with the same key share one image: the same file, or the same embedded bytes."""
    if item["image_bytes"] is not None:
        return "sha256:" + hashlib.sha256(item["image_bytes"]).hexdigest()
    return "file:" + (item["file_name"] or "")


class RefImageFn(beam.DoFn):
    """(image id, ref items) -> rendered rec/reg records; the image is loaded and checked once per group."""

    def __init__(self, config: "RefcocoConfig", plan: "Plan"):
        self.layout = plan.source.layout
        self.images = plan.source.images
        self.tasks = plan.tasks
        self.fmt = config.format
        self.seed = config.seed
        self.options = config.format_options()
        self.exclude = plan.exclude
        self.max_pixels = config.max_pixels
        self.max_bytes = config.max_image_bytes
        self.image_mode = config.image_mode

    def process(self, element):
        image_id, items = element
        if image_id in self.exclude:
            yield stat("excluded_holdout_images")
            return
        groups: dict[str, list[dict]] = {}
        for item in sorted(items, key=lambda it: (it["source"], it["ref_id"])):
            groups.setdefault(_image_key(item), []).append(item)
        for key in sorted(groups):
            group = groups[key]
            try:
                data, info = self._load(group[0])
            except (ImageError, PathError) as err:
                for item in group:
                    yield rejected(item["source"], "image", err)
                continue
            yield stat("images_read")
            yield from grouped_outputs(out for item in group for out in self._records(item, data, info))

    def _load(self, item: dict):
        if item["image_bytes"] is not None:
            return prepare_image(item["image_bytes"], self.max_pixels, self.max_bytes)
        if not self.images:
            raise ImageError("missing_image", f"{item['file_name']}: no --images directory was given")
        return load_image(self.images, item["file_name"], self.max_pixels, self.max_bytes)

    def _records(self, item: dict, data: bytes, info):
        known = (item["width"], item["height"])
        if None not in known and known != (info.width, info.height):
            yield size_mismatch(item["source"], known, (info.width, info.height))
            return
        try:
            box = checked_box(item["bbox_xyxy"], info.width, info.height)
        except BoxError as err:
            yield rejected(item["source"], "annotation", err)
            return
        if item.get("skipped_sentences"):
            yield stat("blank_or_non_text_sentences", item["skipped_sentences"])
        sentences, dropped = dedupe_sentences(item["sentences"])
        if dropped:
            yield stat("duplicate_sentences", dropped)
        image = self._image(item, data)
        for index, text in enumerate(sentences):
            expr = " ".join(text.split())
            for task in self.tasks:
                record = make_record(
                    id=record_id(item["dataset"], item["split"], item["ref_id"], normalize_sentence(text), task),
                    dataset=item["dataset"], split=item["split"], task=task, image=image,
                    image_id=item["image_id"], width=info.width, height=info.height, image_sha256=info.sha256,
                    objects=[make_object(expr, box, 1.0, (0, len(expr)))], caption=expr,
                    meta={"builder": NAME, "layout": self.layout, "source": public_source(item["source"]),
                          "ref_id": item["ref_id"], "ann_id": item["ann_id"], "sentence_index": index,
                          "file_name": item["file_name"], "license": LICENSE_NOTE})
                yield render_or_reject(record, self.fmt, self.seed, f"{item['source']} {task}", self.options)

    def _image(self, item: dict, data: bytes) -> dict:
        # Embedded inputs have no file to point to, so their bytes are kept even with --image-mode path.
        if self.image_mode == "path" and item["image_bytes"] is None:
            return {"bytes": None, "path": item["file_name"]}
        return {"bytes": data, "path": item["file_name"]}


def _write_holdout(image_ids: list, path: str) -> None:
    fs.write_bytes(path, holdout_text(sort_image_ids(image_ids)).encode("utf-8"))


# ---------------------------------------------------------------- configuration (driver side, before any pipeline)

def resolve_source(*, refer_dir, parquet, dataset, split_by, images, input_layout, bbox_format, split) -> Source:
    """Check the input options; raises click.UsageError / ReaderError (UnsafePickleError for a hostile pickle)."""
    if refer_dir and parquet:
        raise click.UsageError("give --refer-dir or --parquet, not both")
    if parquet:
        if split_by:
            raise click.UsageError("--split-by applies to --refer-dir inputs only")
        files, layout = resolve_inputs(parquet, input_layout, split)
        if input_layout == "auto":
            click.echo(f"input layout: {layout} (auto-detected from the columns of {files[0]})")
        if layout == "jxu124" and not images:
            raise click.UsageError("the jxu124 layout has no image bytes: pass --images DIR")
        check_dir(images, "--images")
        return Source(layout, dataset, images, files=tuple(files), split=split, bbox_format=bbox_format)
    for name, given in (("--split", split), ("--bbox-format", bbox_format), ("--input-layout", input_layout != "auto")):
        if given:
            raise click.UsageError(f"{name} applies to --parquet inputs only")
    if not refer_dir:  # the shipped sample
        refer_dir, images = str(SAMPLE_DIR), images or str(SAMPLE_DIR / "images")
    elif not images:
        raise click.UsageError("--refer-dir needs --images DIR (the COCO train2014 images)")
    refs_path, instances_path = refer_paths(refer_dir, dataset, split_by or DEFAULT_SPLIT_BY[dataset])
    load_refs(refs_path)  # the restricted unpickler refuses a hostile pickle here, before anything runs
    check_dir(images, "--images")
    return Source("refer", dataset, images, refs_path=refs_path, instances_path=instances_path)


# ---------------------------------------------------------------- the builder

@dataclass(frozen=True, kw_only=True)
class RefcocoConfig(BuildConfig):
    refer_dir: str | None = option(None, "refer DATA_ROOT holding <dataset>/refs(<split_by>).p and "
                                   "<dataset>/instances.json (default: the shipped sample).", show_default=False)
    dataset: str = option("refcoco", "Dataset name written into every record; here also the source to read: one "
                          "of the three datasets.", type=click.Choice(DATASETS))
    split_by: str | None = option(None, "refer split (default: unc; umd for refcocog).",
                                  type=click.Choice(("unc", "google", "umd")), show_default=False)
    images: str | None = option(None, "Image directory (COCO train2014) that file names resolve in, local or a URL "
                                "(gs://...).", check=lambda v: check_dir(v, "--images") or v, show_default=False)
    parquet: str | None = option(None, "GLOB of lmms-lab/RefCOCO or jxu124/refcoco files (.parquet, .json, .jsonl; "
                                 "local or remote).", show_default=False)
    input_layout: str = option("auto", "Layout of --parquet files; auto detects it from the columns and says which.",
                               type=click.Choice(("auto",) + LAYOUTS))
    bbox_format: str | None = option(None, "Override the box format of --parquet rows (lmms: xywh, jxu124: xyxy).",
                                     type=click.Choice(("xywh", "xyxy")), show_default=False)
    split: str | None = option(None, "Split name written into records whose input does not give one: --parquet "
                               "files whose names do not tell it (lmms), rows without one (jxu124); the refer "
                               "layout's splits come from its refs.", check=check_split, show_default=False)
    tasks: str = option("rec,reg", "Comma list of rec, reg.")
    image_mode: str = option("embed", "Embed image bytes, or keep file paths relative to --images (embedded inputs "
                             "stay embedded).", type=click.Choice(("embed", "path")))


class Plan(NamedTuple):
    source: Source
    tasks: tuple
    exclude: frozenset


class RefcocoBuilder(Builder):
    name = NAME
    config = RefcocoConfig
    help = ("RefCOCO / RefCOCO+ / RefCOCOg: `rec` (expression -> box) and `reg` (box -> expression) records, from "
            "the refer layout (--refer-dir), or lmms-lab / jxu124 exports (--parquet). Writes "
            "OUT/holdout_image_ids.txt.")

    def card(self, config, plan):
        from groundforge.pipeline.card import refcoco_card

        return refcoco_card(config.dataset)

    def prepare(self, config: RefcocoConfig) -> Plan:
        tasks = parse_tasks(config.tasks, TASKS)
        try:
            source = resolve_source(refer_dir=config.refer_dir, parquet=config.parquet, dataset=config.dataset,
                                    split_by=config.split_by, images=config.images,
                                    input_layout=config.input_layout, bbox_format=config.bbox_format,
                                    split=config.split)
            exclude = read_exclude_images(config.exclude_images)
        except ReaderError as err:
            raise click.ClickException(str(err)) from None
        if config.image_mode == "path" and source.layout == "lmms":
            click.echo("note: lmms rows embed their images; those stay embedded with --image-mode path")
        return Plan(source, tasks, exclude)

    def input_paths(self, config, plan: Plan) -> list[str]:
        s = plan.source
        return [*s.files, s.refs_path or "", s.instances_path or ""]

    def inputs(self, config, plan: Plan) -> dict:
        return {"layout": plan.source.layout}

    def expand(self, p, config: RefcocoConfig, plan: Plan) -> Outputs:
        source = plan.source
        if source.layout == "refer":
            read = (p | "ReferFiles" >> beam.Create([(source.refs_path, source.instances_path)])
                    | "ReadRefs" >> beam.ParDo(ReadReferFn(source.dataset)).with_outputs(REJECTS, STATS, main="items"))
        else:
            read = (p | "Files" >> beam.Create(list(source.files)) | "SpreadFiles" >> beam.Reshuffle()
                    | "ReadRows" >> beam.ParDo(ReadRowsFn(source)).with_outputs(REJECTS, STATS, main="items"))
        _ = (read.items
             | "Holdout" >> beam.Filter(is_holdout)
             | "HoldoutIds" >> beam.Map(lambda item: item["image_id"])
             | "HoldoutDistinct" >> beam.Distinct()
             | "HoldoutList" >> beam.combiners.ToList()
             | "WriteHoldout" >> beam.Map(_write_holdout, fs.join(config.out, HOLDOUT_FILE)))
        built = (read.items
                 | "ByImage" >> beam.Map(lambda item: (item["image_id"], item))
                 | "GroupByImage" >> beam.GroupByKey()
                 | "Records" >> beam.ParDo(RefImageFn(config, plan)).with_outputs(REJECTS, STATS, main="groups"))
        return Outputs(built.groups, [read[REJECTS], built[REJECTS]], [read[STATS], built[STATS]])


BUILDER = RefcocoBuilder()
