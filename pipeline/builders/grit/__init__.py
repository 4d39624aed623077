"""`groundforge build grit`: GRIT-style grounded captions (the Kosmos-2 construction pipeline) as a Beam pipeline.

Stages, one module each: read.py (caption items, text checks) -> text.py (spaCy) -> balance.py -> ground.py
(images, grounding) -> outputs.py (filters, GRIT-20M rows, records); this module holds the config and the builder.

Pipeline: read caption items (pipeline/readers/captions.py) -> text checks (empty captions and control tokens are
rejected, --exclude-images) -> spaCy noun chunks and referring expressions (RunInference with `SpacyHandler`) ->
optional LLaVA-style concept balancing (phrase counts and per-phrase selection are Beam combiners) -> caption
items grouped by image, each image loaded and checked once -> grounding (`annotations`: COCO boxes by category
synonym; `detector`: one RunInference element per image with the union of its captions' chunk texts, fanned back
per caption; `florence2`: one generation per caption on the image decoded once; GPU resource hints, failures to
rejects, one per caption) -> Kosmos-2 filters
(score, size, NMS across the image's chunks; every drop counted) -> GRIT-20M annotation rows under
OUT/annotations/ and rendered `grounded_caption` / `rec` records under OUT/data/.

`--grit20m` rows already carry grounded chunks and expressions: they skip spaCy, grounding and filters.

Referring expressions are expanded for every chunk in the text stage and reduced after grounding: the expressions
of chunks that kept a box go into the GRIT-20M annotation row (nested ones included, as released GRIT-20M keeps
them); of those, only the ones not contained in another become `rec` records (Kosmos-2 expands the grounded
chunks), each with its chunk's boxes.
"""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
import click
from groundforge.pipeline import fs
from groundforge.pipeline.builder import Builder, Outputs
from groundforge.pipeline.builders.grit.balance import BalanceConcepts
from groundforge.pipeline.builders.grit.ground import ground, load_images
from groundforge.pipeline.builders.grit.outputs import (
    FilterFn,
    GritRowFn,
    annotation_key,
)
from groundforge.pipeline.builders.grit.plan import (
    ANNOTATIONS,
    GROUNDERS,
    NAME,
    TASKS,
    Balance,
    Grounding,
    Settings,
    Source,
    Text,
)
from groundforge.pipeline.builders.grit.read import ReadCaptionsFn, TextFn
from groundforge.pipeline.builders.grit.text import text_stage
from groundforge.pipeline.config import INPUT_FILE, BuildConfig, check_split, option
from groundforge.pipeline.emit import REJECTS, STATS
from groundforge.pipeline.handlers.common import DEVICES, DTYPES, check_model
from groundforge.pipeline.options import check_dir, parse_tasks
from groundforge.pipeline.readers.captions import (
    check_caption_columns,
    check_grit20m_columns,
)
from groundforge.pipeline.readers.common import ReaderError, read_exclude_images
from groundforge.pipeline.readers.tables import match_files
from groundforge.pipeline.sample import SAMPLE_DIR
from groundforge.pipeline.writer import Table
from groundforge.transforms.grounding import (
    MAX_AREA_FRAC,
    MIN_AREA_FRAC,
    MIN_SIDE_PX,
    NMS_IOU,
    SCORE_THRESHOLD,
)
from groundforge.transforms.nounphrases import (
    ABSTRACT_NOUNS,
    DEFAULT_MODEL,
    parse_word_list,
)


def read_abstract_nouns(path: str | None) -> frozenset:
    """The non-visual heads never grounded: the packaged list, or the --abstract-nouns FILE replacing it."""
    if path is None:
        return ABSTRACT_NOUNS
    try:
        return parse_word_list(fs.read_bytes(path).decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError) as err:
        raise click.BadParameter(f"{path}: {err}", param_hint="--abstract-nouns") from None


def _check_file(path: str | None, option: str) -> None:
    if path and not fs.exists(path):
        raise click.BadParameter(f"file not found: {path}", param_hint=option)


def resolve_source(*, captions, webdataset, coco_captions, coco_instances, grit20m, images, caption_column,
                   image_column) -> Source:
    """Check the input options; raises click.UsageError / click.BadParameter / ReaderError."""
    given = [name for name, value in (("--captions", captions), ("--webdataset", webdataset),
                                      ("--coco-captions", coco_captions), ("--grit20m", grit20m)) if value]
    if len(given) > 1:
        raise click.UsageError(f"give one input, not {' and '.join(given)}")
    if coco_instances and not coco_captions:
        raise click.UsageError("--coco-instances goes with --coco-captions")
    check_dir(images, "--images")
    if not given:  # the shipped sample
        return Source("coco", ((str(SAMPLE_DIR / "captions.json"), str(SAMPLE_DIR / "instances.json")),),
                      images or str(SAMPLE_DIR / "images"))
    if coco_captions:
        if not images:
            raise click.UsageError("--coco-captions needs --images DIR (the COCO images)")
        _check_file(coco_captions, "--coco-captions")
        _check_file(coco_instances, "--coco-instances")
        return Source("coco", ((coco_captions, coco_instances),), images)
    if captions:
        files = match_files(captions, "--captions")
        check_caption_columns(files[0], caption_column, image_column)
        return Source("captions", tuple(files), images, caption_column, image_column)
    if webdataset:
        return Source("webdataset", tuple(match_files(webdataset, "--webdataset")), images)
    files = match_files(grit20m, "--grit20m")
    check_grit20m_columns(files[0], images)
    return Source("grit20m", tuple(files), images)


def resolve_grounder(source: Source, grounder: str | None, model: str | None) -> str | None:
    has_boxes = source.kind == "coco" and source.files[0][1] is not None
    if source.kind == "grit20m":
        if grounder:
            raise click.UsageError("--grit20m rows are grounded already; --grounder does not apply")
        return None
    grounder = grounder or ("annotations" if has_boxes else None)
    if grounder is None:
        raise click.UsageError("this input has no boxes: pass --grounder detector --model HUB_ID_OR_DIR "
                               "(e.g. google/owlv2-base-patch16-ensemble) or --grounder florence2 --model ...")
    if grounder == "annotations" and not has_boxes:
        raise click.UsageError("--grounder annotations needs COCO boxes: --coco-captions with --coco-instances")
    if grounder in ("detector", "florence2") and not model:
        raise click.UsageError(f"--grounder {grounder} needs --model HUB_ID_OR_DIR")
    return grounder


# ---------------------------------------------------------------- the builder

# --device and --dtype accept the same values as train's and eval's (tests/test_console.py checks it); the grounding
# handlers take DEVICES and DTYPES, so the short spellings and auto are mapped onto those.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
DTYPE_NAMES = {"auto": "float16", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
assert set(DEVICE_CHOICES) == set(DEVICES) and set(DTYPE_NAMES.values()) <= set(DTYPES)


@dataclass(frozen=True, kw_only=True)
class GritConfig(BuildConfig):
    captions: str | None = option(None, "GLOB of caption tables (.parquet, .csv, .jsonl/.json) with a caption column "
                                  "and an image column (path under --images, bytes, or {bytes, path}).",
                                  show_default=False)
    caption_column: str = option("caption", "Caption column of --captions tables.")
    image_column: str = option("image", "Image column of --captions tables.")
    webdataset: str | None = option(None, "GLOB of img2dataset tar shards ({key}.jpg, {key}.txt, {key}.json).",
                                    show_default=False)
    coco_captions: str | None = option(None, "COCO captions JSON (with --images; default input: the shipped "
                                       "sample).", show_default=False)
    coco_instances: str | None = option(None, "COCO instances JSON of the same images: boxes for --grounder "
                                        "annotations.", show_default=False)
    grit20m: str | None = option(None, "GLOB of GRIT-20M parquet (caption, width, height, noun_chunks, ref_exps): "
                                 "rendered as is, images from --images by key/file_name/image_path.",
                                 show_default=False)
    images: str | None = option(None, "Image directory that relative image paths resolve in, local or a URL "
                                "(gs://...).", check=lambda v: check_dir(v, "--images") or v, show_default=False)
    grounder: str | None = option(None, "annotations (COCO boxes; default with instances), detector (zero-shot "
                                  "detector), florence2 (<CAPTION_TO_PHRASE_GROUNDING>).",
                                  type=click.Choice(GROUNDERS), show_default=False)
    model: str | None = option(None, "Detector or Florence-2 checkpoint: hub id or local directory.",
                               show_default=False)
    device: str = option("auto", "Device of the grounding model (auto: cuda when the worker has one).",
                         type=click.Choice(DEVICE_CHOICES))
    dtype: str = option("float16", "Model dtype on GPU (CPU always runs float32); auto is float16; fp32, bf16 and "
                        "fp16 are accepted for float32, bfloat16 and float16.", type=click.Choice(DTYPE_CHOICES),
                        check=lambda v: DTYPE_NAMES.get(v, v))
    batch_size: int = option(8, "Images per detector batch.", type=click.IntRange(1))
    trust_remote_code: bool = option(False, "Allow the checkpoint's own code (off by default).", flag=True)
    accelerator: str | None = option(None, "Beam resource hint for the grounding stage, e.g. "
                                     "'type:nvidia-l4;count:1;install-nvidia-driver' (Dataflow GPU workers).",
                                     show_default=False)
    spacy_model: str = option(DEFAULT_MODEL, "spaCy pipeline: a package name or a local directory.")
    spacy_batch_size: int = option(256, "Captions per spaCy batch.", type=click.IntRange(1))
    abstract_nouns: str | None = option(None, "File of noun-chunk heads never grounded (one per line, # comments, "
                                        "'word of' = a collective head whose expression goes to the noun after "
                                        "'of'); replaces the packaged list; an empty file keeps every chunk.",
                                        type=INPUT_FILE, show_default=False)
    keep_all_boxes: bool = option(False, "A singular phrase ('a dog') keeps every matching box. Off: with "
                                  "annotations it is dropped when its category has several boxes "
                                  "(dropped_ambiguous_singular); with a detector it keeps its best box "
                                  "(dropped_singular_extra_box).", flag=True)
    score_threshold: float = option(SCORE_THRESHOLD, "Keep boxes scoring above this.", type=float)
    nms_iou: float = option(NMS_IOU, "NMS across all chunks of an image (1 keeps everything).",
                            type=click.FloatRange(0, 1))
    max_box_area: float = option(MAX_AREA_FRAC, "Drop boxes covering more than this fraction of the image.",
                                 type=click.FloatRange(0, 1))
    min_box_side: float = option(MIN_SIDE_PX, "Drop boxes with a side shorter than this (pixels).",
                                 type=click.FloatRange(0))
    min_box_area: float = option(MIN_AREA_FRAC, "Drop boxes covering less than this fraction of the image.",
                                 type=click.FloatRange(0, 1))
    tasks: str = option("grounded_caption,rec", "Comma list of grounded_caption, rec.")
    balance_concepts: bool = option(False, "LLaVA CC3M-595K style selection: from the rarest noun phrase up, at most "
                                    "--balance-max-per-phrase captions per phrase.", flag=True)
    balance_min_count: int = option(3, "Phrases in fewer captions select nothing.", type=click.IntRange(1))
    balance_max_per_phrase: int = option(100, "Captions kept per phrase.", type=click.IntRange(1))
    split: str = option("train", "Split name written into every record.", check=check_split)
    dataset: str = option("grit", "Dataset name written into every record.")


@dataclass(frozen=True)
class GritPlan:
    source: Source
    settings: Settings
    text: Text
    grounding: Grounding
    balance: Balance | None


class GritBuilder(Builder):
    name = NAME
    config = GritConfig
    help = ("GRIT-style grounded captions (Kosmos-2): spaCy noun chunks and referring expressions, grounded by COCO "
            "boxes, a zero-shot detector or Florence-2, filtered, written as `grounded_caption` and `rec` records plus "
            "GRIT-20M style OUT/annotations/. Default input: the shipped sample with --grounder annotations.")

    def card(self, config, plan: GritPlan):
        from groundforge.pipeline.card import grit_card

        return grit_card(plan.source.kind)

    def prepare(self, c: GritConfig) -> GritPlan:
        from groundforge.transforms.nounphrases import SpacyModelError, load_spacy

        tasks = parse_tasks(c.tasks, TASKS)
        try:
            source = resolve_source(captions=c.captions, webdataset=c.webdataset, coco_captions=c.coco_captions,
                                    coco_instances=c.coco_instances, grit20m=c.grit20m, images=c.images,
                                    caption_column=c.caption_column, image_column=c.image_column)
            exclude = read_exclude_images(c.exclude_images)
        except ReaderError as err:
            raise click.UsageError(str(err)) from None
        grounder = resolve_grounder(source, c.grounder, c.model)
        if grounder in ("detector", "florence2"):
            check_model(c.model, c.trust_remote_code)  # before OUT is touched, not in the grounding stage
        if source.kind != "grit20m":
            try:
                load_spacy(c.spacy_model)  # fail here, once, rather than in every worker
            except SpacyModelError as err:
                raise click.ClickException(str(err)) from None
        filters = {"score_threshold": c.score_threshold, "nms_iou": c.nms_iou, "max_area_frac": c.max_box_area,
                   "min_side": c.min_box_side, "min_area_frac": c.min_box_area}
        settings = Settings(c.dataset, c.split, c.format, c.seed, tasks, grounder,
                            c.model if grounder in ("detector", "florence2") else None, filters, exclude, c.max_pixels,
                            c.format_options(), c.keep_all_boxes)
        return GritPlan(source, settings, Text(c.spacy_model, c.spacy_batch_size, read_abstract_nouns(c.abstract_nouns)),
                        Grounding(c.device, c.dtype, c.batch_size, c.trust_remote_code, c.accelerator),
                        Balance(c.balance_min_count, c.balance_max_per_phrase, c.seed) if c.balance_concepts else None)

    def input_paths(self, config, plan: GritPlan) -> list[str]:
        return [p for f in plan.source.files for p in (f if isinstance(f, tuple) else (f,)) if p]

    def inputs(self, config, plan: GritPlan) -> dict:
        return {"input_kind": plan.source.kind, "grounder": plan.settings.grounder}

    def expand(self, p, config: GritConfig, plan: GritPlan) -> Outputs:
        from groundforge.schemas import arrow_schema_for

        source, settings = plan.source, plan.settings
        read = (p | "Inputs" >> beam.Create(list(source.files)) | "SpreadFiles" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(ReadCaptionsFn(source)).with_outputs(REJECTS, STATS, main="items"))
        checked = read.items | "Text" >> beam.ParDo(TextFn(settings.exclude)).with_outputs(REJECTS, STATS, main="items")
        rejects, stats = [read[REJECTS], checked[REJECTS]], [read[STATS], checked[STATS]]
        items = checked.items | "SpreadItems" >> beam.Reshuffle()  # a file's items over all workers
        if source.kind != "grit20m":
            items, text_rejects, text_stats = text_stage(items, plan.text)
            rejects.append(text_rejects)
            stats.append(text_stats)
        if plan.balance is not None:
            balanced = items | "Balance" >> BalanceConcepts(plan.balance)
            items = balanced["items"]
            stats.append(balanced["stats"])
        groups, image_rejects, image_stats = load_images(items, settings, source.images, config.max_image_bytes)
        rejects.append(image_rejects)
        stats.append(image_stats)
        if source.kind == "grit20m":
            built = (groups | "Captions" >> beam.FlatMap(lambda group: group)
                     | "GritRows" >> beam.ParDo(GritRowFn(settings)).with_outputs(REJECTS, STATS, ANNOTATIONS,
                                                                                  main="groups"))
        else:
            grounded, ground_rejects, ground_stats = ground(groups, settings, plan.grounding)
            if ground_rejects is not None:
                rejects.append(ground_rejects)
            stats.append(ground_stats)
            built = grounded | "Filter" >> beam.ParDo(FilterFn(settings)).with_outputs(
                REJECTS, STATS, ANNOTATIONS, main="groups")
        rejects.append(built[REJECTS])
        stats.append(built[STATS])
        table = Table(arrow_schema_for("grit_annotation"), annotation_key, settings.split)
        return Outputs(built.groups, rejects, stats, {ANNOTATIONS: (built[ANNOTATIONS], table)})


BUILDER = GritBuilder()
