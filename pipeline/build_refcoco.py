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
from typing import NamedTuple

import apache_beam as beam
import click

from groundforge.pipeline import fs
from groundforge.pipeline.options import check_dir, check_split, parse_tasks
from groundforge.pipeline.readers.coco import REJECTS, STATS, load_image
from groundforge.pipeline.readers.refcoco_parquet import LAYOUTS, read_refcoco_file, resolve_inputs
from groundforge.pipeline.readers.refer import (
    DATASETS,
    ReaderError,
    dedupe_sentences,
    holdout_text,
    is_holdout,
    is_reject,
    load_refs,
    normalize_sentence,
    read_refer_files,
    refer_paths,
    sort_image_ids,
)
from groundforge.pipeline.sample import SAMPLE_DIR
from groundforge.pipeline.writer import WriteDataset, grouped_outputs, start_output
from groundforge.transforms.boxes import BoxError, checked_box
from groundforge.transforms.images import ImageError, prepare_image
from groundforge.transforms.paths import PathError
from groundforge.transforms.records import make_object, make_record, record_id, reject, rendered

BUILDER = "refcoco"
HOLDOUT_FILE = "holdout_image_ids.txt"
TASKS = ("rec", "reg")
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
LICENSE_NOTE = "annotations Apache-2.0 (lichengunc/refer); images COCO, under their Flickr licenses"
CARD_NOTES = ("Referring expressions from RefCOCO/RefCOCO+/RefCOCOg: `rec` (expression -> box) and `reg` "
              "(box -> expression), one record per (ref, unique sentence). Annotations: Apache-2.0 "
              "(github.com/lichengunc/refer). Images: MS COCO, each under its own Flickr license "
              "(cocodataset.org/#termsofuse). `holdout_image_ids.txt` lists every image of a val/test split: "
              "pass it to `--exclude-images` when building other training sets on COCO.")


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
            for item in read_refer_files(refs_path, instances_path, self.dataset):
                yield from _read_output(item)
        except ReaderError as err:
            yield beam.pvalue.TaggedOutput(REJECTS, reject(refs_path, "read", "unreadable_file", str(err)))


class ReadRowsFn(beam.DoFn):
    """One Parquet/JSON/JSONL file -> ref items; malformed rows -> read rejects."""

    def __init__(self, source: Source):
        self.source = source

    def process(self, path: str):
        s = self.source
        rows = read_refcoco_file(path, dataset=s.dataset, layout=s.layout, split=s.split,
                                 bbox_format=s.bbox_format, images_dir=s.images)
        try:
            for item in rows:
                yield from _read_output(item)
        except ReaderError as err:  # a corrupt file is bad input, not a bad configuration
            yield beam.pvalue.TaggedOutput(REJECTS, reject(path, "read", "unreadable_file", str(err)))


def _read_output(item: dict):
    yield beam.pvalue.TaggedOutput(STATS, ("refs_read", 1))
    if is_reject(item):
        yield beam.pvalue.TaggedOutput(REJECTS, reject(item["source"], item["stage"], item["reason"], item["detail"]))
    else:
        yield item


# ---------------------------------------------------------------- images and records

def _image_key(item: dict) -> str:
    """Items with the same key share one image: the same file, or the same embedded bytes."""
    if item["image_bytes"] is not None:
        return "sha256:" + hashlib.sha256(item["image_bytes"]).hexdigest()
    return "file:" + (item["file_name"] or "")


class RefImageFn(beam.DoFn):
    """(image id, ref items) -> rendered rec/reg records; the image is loaded and checked once per group."""

    def __init__(self, *, layout: str, images: str | None, tasks: tuple, fmt: str, seed: int, exclude: frozenset,
                 max_pixels: int, image_mode: str):
        self.layout = layout
        self.images = images
        self.tasks = tasks
        self.fmt = fmt
        self.seed = seed
        self.exclude = exclude
        self.max_pixels = max_pixels
        self.image_mode = image_mode

    def process(self, element):
        image_id, items = element
        if image_id in self.exclude:
            yield beam.pvalue.TaggedOutput(STATS, ("excluded_holdout_images", 1))
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
                    yield _reject(item["source"], "image", err.reason, err.detail)
                continue
            yield beam.pvalue.TaggedOutput(STATS, ("images_read", 1))
            yield from grouped_outputs(out for item in group for out in self._records(item, data, info))

    def _load(self, item: dict):
        if item["image_bytes"] is not None:
            return prepare_image(item["image_bytes"], self.max_pixels)
        if not self.images:
            raise ImageError("missing_image", f"{item['file_name']}: no --images directory was given")
        return load_image(self.images, item["file_name"], self.max_pixels)

    def _records(self, item: dict, data: bytes, info):
        known = (item["width"], item["height"])
        if None not in known and known != (info.width, info.height):
            yield _reject(item["source"], "image", "size_mismatch",
                          f"annotation {known[0]}x{known[1]}, image {info.width}x{info.height}")
            return
        try:
            box = checked_box(item["bbox_xyxy"], info.width, info.height)
        except BoxError as err:
            yield _reject(item["source"], "annotation", err.reason, err.detail)
            return
        sentences, dropped = dedupe_sentences(item["sentences"])
        if dropped:
            yield beam.pvalue.TaggedOutput(STATS, ("duplicate_sentences", dropped))
        image = self._image(item, data)
        for index, text in enumerate(sentences):
            expr = " ".join(text.split())
            for task in self.tasks:
                record = make_record(
                    id=record_id(item["dataset"], item["split"], item["ref_id"], normalize_sentence(text), task),
                    dataset=item["dataset"], split=item["split"], task=task, image=image,
                    image_id=item["image_id"], width=info.width, height=info.height, image_sha256=info.sha256,
                    objects=[make_object(expr, box, 1.0, (0, len(expr)))], caption=expr,
                    meta={"builder": BUILDER, "layout": self.layout, "source": item["source"],
                          "ref_id": item["ref_id"], "ann_id": item["ann_id"], "sentence_index": index,
                          "file_name": item["file_name"], "license": LICENSE_NOTE})
                try:
                    yield rendered(record, self.fmt, self.seed)
                except ValueError as err:  # templates.ControlTokenError (or another RenderError)
                    yield _reject(f"record:{record['id']}", "render", getattr(err, "reason", "render_error"),
                                  f"{item['source']} {task}: {err}")

    def _image(self, item: dict, data: bytes) -> dict:
        # Embedded inputs have no file to point to, so their bytes are kept even with --image-mode path.
        if self.image_mode == "path" and item["image_bytes"] is None:
            return {"bytes": None, "path": item["file_name"]}
        return {"bytes": data, "path": item["file_name"]}


def _reject(source: str, stage: str, reason: str, detail: str):
    return beam.pvalue.TaggedOutput(REJECTS, reject(source, stage, reason, detail))


def _write_holdout(image_ids: list, path: str) -> None:
    fs.write_bytes(path, holdout_text(sort_image_ids(image_ids)).encode("utf-8"))


# ---------------------------------------------------------------- pipeline

def build_refcoco(*, source: Source, out: str, task_list: tuple, fmt: str, seed: int, exclude: frozenset,
                  max_pixels: int, image_mode: str, num_shards: int | None, shard_size_mb: float,
                  options, args: dict, **recorded) -> None:
    """`recorded`: scalar descriptions of the inputs, only kept in dataset_info.json's args."""
    start_output(out)
    with beam.Pipeline(options=options) as p:
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
             | "WriteHoldout" >> beam.Map(_write_holdout, fs.join(out, HOLDOUT_FILE)))
        built = (read.items
                 | "ByImage" >> beam.Map(lambda item: (item["image_id"], item))
                 | "GroupByImage" >> beam.GroupByKey()
                 | "Records" >> beam.ParDo(RefImageFn(
                     layout=source.layout, images=source.images, tasks=task_list, fmt=fmt, seed=seed, exclude=exclude,
                     max_pixels=max_pixels, image_mode=image_mode)).with_outputs(REJECTS, STATS, main="groups"))
        rejects = (read[REJECTS], built[REJECTS]) | "Rejects" >> beam.Flatten()
        stats = (read[STATS], built[STATS]) | "Stats" >> beam.Flatten()
        _ = {"groups": built.groups, "rejects": rejects, "stats": stats} | WriteDataset(
            out, builder=BUILDER, dataset=source.dataset, args=args, num_shards=num_shards,
            shard_size_mb=shard_size_mb, license="other", card_notes=CARD_NOTES)


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


def refcoco_command():
    """The click command; built on demand so pipeline.cli can register it without a circular import."""
    from groundforge.pipeline.cli import BEAM_CONTEXT, output_options, read_id_file, run_builder

    @click.command("refcoco", context_settings=BEAM_CONTEXT)
    @click.option("--refer-dir", default=None, help="refer DATA_ROOT holding <dataset>/refs(<split_by>).p and "
                  "<dataset>/instances.json (default: the shipped sample).")
    @click.option("--dataset", type=click.Choice(DATASETS), default="refcoco", show_default=True)
    @click.option("--split-by", type=click.Choice(("unc", "google", "umd")), default=None,
                  help="refer split (default: unc; umd for refcocog).")
    @click.option("--images", default=None, help="Image directory (COCO train2014) that file names resolve in.")
    @click.option("--parquet", default=None, help="GLOB of lmms-lab/RefCOCO or jxu124/refcoco files "
                  "(.parquet, .json, .jsonl; local or remote).")
    @click.option("--input-layout", type=click.Choice(("auto",) + LAYOUTS), default="auto", show_default=True,
                  help="Layout of --parquet files; auto detects it from the columns and says which.")
    @click.option("--bbox-format", type=click.Choice(("xywh", "xyxy")), default=None,
                  help="Override the box format of --parquet rows (lmms: xywh, jxu124: xyxy).")
    @click.option("--split", default=None, callback=check_split, help="Split of --parquet files whose names do not tell it "
                  "(lmms), or of rows without one (jxu124).")
    @click.option("--tasks", default="rec,reg", show_default=True, help="Comma list of rec, reg.")
    @click.option("--image-mode", type=click.Choice(("embed", "path")), default="embed", show_default=True,
                  help="Embed image bytes, or keep file paths relative to --images (embedded inputs stay embedded).")
    @output_options
    @click.pass_context
    def build_refcoco_cmd(ctx, refer_dir, dataset, split_by, images, parquet, input_layout, bbox_format, split,
                          tasks, image_mode, out, fmt, num_shards, shard_size_mb, seed, exclude_images, max_pixels):
        """RefCOCO / RefCOCO+ / RefCOCOg: `rec` (expression -> box) and `reg` (box -> expression) records, from the
        refer layout (--refer-dir), or lmms-lab / jxu124 exports (--parquet). Writes OUT/holdout_image_ids.txt."""
        task_list = parse_tasks(tasks, TASKS)
        try:
            source = resolve_source(refer_dir=refer_dir, parquet=parquet, dataset=dataset, split_by=split_by,
                                    images=images, input_layout=input_layout, bbox_format=bbox_format, split=split)
            exclude = read_id_file(exclude_images)
        except ReaderError as err:
            raise click.ClickException(str(err)) from None
        if image_mode == "path" and source.layout == "lmms":
            click.echo("note: lmms rows embed their images; those stay embedded with --image-mode path")
        inputs = parquet or source.refs_path
        run_builder(build_refcoco, out, ctx.args, source=source, task_list=task_list, fmt=fmt, seed=seed,
                    exclude=exclude, max_pixels=max_pixels, image_mode=image_mode, num_shards=num_shards,
                    shard_size_mb=shard_size_mb, dataset=dataset, layout=source.layout, inputs=inputs,
                    images=source.images, tasks=",".join(task_list), exclude_images=exclude_images)

    return build_refcoco_cmd
