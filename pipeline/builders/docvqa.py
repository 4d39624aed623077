"""`groundforge build docvqa`: DocVQA-style `vqa` records, one per question, from the original DocVQA JSON + an
image folder (--json) or Hugging Face Parquet exports with embedded images (--parquet); without either, the
shipped sample (pipeline/sample_data/docvqa, the original layout).

Pipeline: read question items (one element per file) -> key by (split, questionId) -> GroupByKey: one question
kept per key, chosen by content, the others rejected (duplicate_question_id) -> key by image -> GroupByKey, so
each document image is read and checked once however many questions it has -> one record per question: the
question in `caption`, every answer in meta["answers"] (for ANLS), the first answer as the target.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import click
from groundforge.pipeline.builder import Builder, Outputs
from groundforge.pipeline.config import BuildConfig, check_split, option
from groundforge.pipeline.emit import (
    REJECTS,
    STATS,
    read_outputs,
    reject,
    rejected,
    render_or_reject,
    stat,
)
from groundforge.pipeline.image_files import load_image
from groundforge.pipeline.options import check_dir
from groundforge.pipeline.readers.common import (
    ReaderError,
    public_source,
    read_exclude_images,
)
from groundforge.pipeline.readers.docvqa import (
    choose,
    json_files,
    parquet_files,
    read_json_file,
    read_parquet_file,
)
from groundforge.pipeline.sample import DOCVQA_SAMPLE_JSON
from groundforge.pipeline.writer import grouped_outputs
from groundforge.transforms.images import ImageError, prepare_image
from groundforge.transforms.paths import PathError
from groundforge.transforms.records import make_record, record_id

NAME = "docvqa"
LICENSE_NOTE = ("DocVQA questions/answers: RRC DocVQA terms (rrc.cvc.uab.es/?ch=17); images: UCSF Industry "
                "Documents Library")


@dataclass(frozen=True, kw_only=True)
class DocvqaConfig(BuildConfig):
    json: str | None = option(None, "Original DocVQA annotation JSON (train_v1.0.json style: {dataset_split, data: "
                              "[{questionId, question, image, answers, ...}]}); a glob for several files "
                              "(default: the shipped sample).", show_default=False)
    parquet: str | None = option(None, "GLOB of Hugging Face DocVQA Parquet files with embedded images "
                                 "(lmms-lab/DocVQA, HuggingFaceM4/DocumentVQA).", show_default=False)
    images: str | None = option(None, "Folder that the JSON `image` paths (documents/xxx.png) resolve in, local or a "
                                "URL (gs://...) (default: the folder of each --json file).",
                                check=lambda v: check_dir(v, "--images") or v, show_default=False)
    split: str | None = option(None, "Split name written into every record (default: the row's data_split, else the "
                               "JSON's dataset_split or the Parquet file name).", check=check_split,
                               show_default=False)
    dataset: str = option("docvqa", "Dataset name written into every record.")
    image_mode: str = option("embed", "Embed image bytes, or keep paths relative to the image folder (embedded "
                             "Parquet images stay embedded).", type=click.Choice(("embed", "path")))


class Plan(NamedTuple):
    layout: str                 # "json" or "hf"
    files: tuple
    images: str | None          # --images (json: None means the folder of each file)
    exclude: frozenset


# ---------------------------------------------------------------- reading

class ReadFileFn(beam.DoFn):
    """One annotation file -> question items; bad rows -> read rejects; a bad file -> one unreadable_file reject."""

    def __init__(self, layout: str, split: str | None):
        self.layout = layout
        self.split = split

    def process(self, path: str):
        read = read_json_file if self.layout == "json" else read_parquet_file
        try:
            for out in read_outputs(read(path, self.split), "questions_read"):
                if isinstance(out, dict):
                    if out["blank_answers"]:
                        yield stat("blank_answers_dropped", out["blank_answers"])
                    out = {**out, "images_root": self._root(path)}
                yield out
        except ReaderError as err:  # named by its base name, as record sources are: no local folder in OUT
            name = os.path.basename(path)
            yield reject(name, "read", "unreadable_file", str(err).replace(path, name))

    def _root(self, path: str) -> str | None:
        return os.path.dirname(path) if self.layout == "json" else None


def _first_of_duplicates(element):
    """((split, questionId), items) -> the item kept, and a reject per other item."""
    (split, question_id), items = element
    kept, others = choose(list(items))
    for item in others:
        same = (item["question"], item["answers"], item["image_key"]) == (
            kept["question"], kept["answers"], kept["image_key"])
        detail = f"questionId {question_id} ({split}) also at {kept['source']}" + (
            " (identical)" if same else " (differs; the kept one is chosen by content)")
        yield reject(item["source"], "read", "duplicate_question_id", detail)
    yield kept


# ---------------------------------------------------------------- images and records

class DocImageFn(beam.DoFn):
    """(image key, question items) -> rendered vqa records; the document image is read and checked once."""

    def __init__(self, config: DocvqaConfig, plan: Plan):
        self.c = config
        self.plan = plan
        self.options = config.format_options()

    def process(self, element):
        _, items = element
        items = sorted(items, key=lambda it: (it["split"], it["question_id"], it["source"]))
        first = items[0]
        if first["image_id"] in self.plan.exclude:
            yield stat("excluded_holdout_images")
            return
        try:
            data, info = self._load(first)
        except (ImageError, PathError) as err:
            for item in items:
                yield rejected(item["source"], "image", err)
            return
        yield stat("images_read")
        yield from grouped_outputs(self._record(item, data, info) for item in items)

    def _load(self, item: dict):
        if item["image_bytes"] is not None:
            return prepare_image(item["image_bytes"], self.c.max_pixels, self.c.max_image_bytes)
        root = self.plan.images or item["images_root"]
        if not root:
            raise ImageError("missing_image", f"{item['file_name']}: no --images folder to read it from")
        return load_image(root, item["file_name"], self.c.max_pixels, self.c.max_image_bytes)

    def _record(self, item: dict, data: bytes, info):
        c = self.c
        keep_path = c.image_mode == "path" and item["image_bytes"] is None
        image = {"bytes": None if keep_path else data, "path": item["file_name"]}
        question = " ".join(item["question"].split())
        meta = {"builder": NAME, "layout": item["layout"], "source": public_source(item["source"]),
                "question_id": item["question_id"], "answers": item["answers"], "doc_id": item["doc_id"],
                "ucsf_document_id": item["ucsf_document_id"], "ucsf_document_page_no": item["ucsf_document_page_no"],
                "question_types": item["question_types"], "file_name": item["file_name"], "license": LICENSE_NOTE}
        record = make_record(
            id=record_id(c.dataset, item["split"], item["question_id"], "vqa"), dataset=c.dataset,
            split=item["split"], task="vqa", image=image, image_id=item["image_id"], width=info.width,
            height=info.height, image_sha256=info.sha256, objects=[], caption=question, meta=meta)
        return render_or_reject(record, c.format, c.seed, f"{item['source']} vqa", self.options)


# ---------------------------------------------------------------- the builder

class DocvqaBuilder(Builder):
    name = NAME
    config = DocvqaConfig
    help = ("DocVQA-style document VQA: one `vqa` record per question (target: the first answer; all answers in "
            "meta.answers for ANLS), from the original DocVQA JSON + images (--json) or Hugging Face Parquet "
            "exports (--parquet).")

    def card(self, config, plan):
        from groundforge.pipeline.card import docvqa_card

        return docvqa_card()

    def inputs(self, config, plan: Plan) -> dict:
        return {"layout": plan.layout}

    def prepare(self, config: DocvqaConfig) -> Plan:
        if config.json and config.parquet:
            raise click.UsageError("give --json or --parquet, not both")
        check_dir(config.images, "--images")
        try:
            if config.parquet:
                if config.images:
                    raise click.UsageError("--images applies to --json inputs (Parquet rows embed their images)")
                files, layout = parquet_files(config.parquet, config.split), "hf"
            else:
                files, layout = json_files(config.json or str(DOCVQA_SAMPLE_JSON)), "json"
            exclude = read_exclude_images(config.exclude_images)
        except ReaderError as err:
            raise click.ClickException(str(err)) from None
        return Plan(layout, tuple(files), config.images, exclude)

    def expand(self, p, config: DocvqaConfig, plan: Plan) -> Outputs:
        read = (p | "Files" >> beam.Create(list(plan.files)) | "SpreadFiles" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(ReadFileFn(plan.layout, config.split)).with_outputs(REJECTS, STATS,
                                                                                            main="items"))
        kept = (read.items
                | "ByQuestion" >> beam.Map(lambda it: ((it["split"], it["question_id"]), it))
                | "GroupByQuestion" >> beam.GroupByKey()
                | "OnePerQuestion" >> beam.FlatMap(_first_of_duplicates).with_outputs(REJECTS, main="items"))
        built = (kept.items
                 | "ByImage" >> beam.Map(lambda it: (it["image_key"] + "\x1f" + (it["images_root"] or ""), it))
                 | "GroupByImage" >> beam.GroupByKey()
                 | "Records" >> beam.ParDo(DocImageFn(config, plan)).with_outputs(REJECTS, STATS, main="groups"))
        return Outputs(built.groups, [read[REJECTS], kept[REJECTS], built[REJECTS]], [read[STATS], built[STATS]])


BUILDER = DocvqaBuilder()
