"""`groundforge build grit`: GRIT-style grounded captions (the Kosmos-2 construction pipeline) as a Beam pipeline.

Pipeline: read caption items (pipeline/readers/captions.py) -> text checks (empty captions and control tokens are
rejected, --exclude-images) -> spaCy noun chunks and referring expressions (RunInference with `SpacyHandler`) ->
optional LLaVA-style concept balancing (phrase counts and per-phrase selection are Beam combiners) -> image
load and checks -> grounding (`annotations`: COCO boxes by category synonym; `detector` / `florence2`:
RunInference with pipeline/detect.py's handlers, GPU resource hints, failures to rejects) -> Kosmos-2 filters
(score, size, NMS across the image's chunks; every drop counted) -> GRIT-20M annotation rows under
OUT/annotations/ and rendered `grounded_caption` / `rec` records under OUT/data/.

`--grit20m` rows already carry grounded chunks and expressions: they skip spaCy, grounding and filters.

Referring expressions are expanded for every chunk in the text stage and reduced after grounding: of the
expressions of chunks that kept a box, only those not contained in another are kept (Kosmos-2 expands the
grounded chunks), and each inherits its chunk's boxes.
"""
from __future__ import annotations

import csv
import heapq
import json
from typing import NamedTuple

import apache_beam as beam
import click
import pyarrow as pa

from groundforge.pipeline import fs
from groundforge.pipeline.options import check_dir, check_split, parse_tasks
from groundforge.pipeline.readers.captions import (
    InputError,
    check_caption_columns,
    check_grit20m_columns,
    read_caption_table,
    read_coco_captions,
    read_grit20m,
    read_webdataset,
)
from groundforge.pipeline.readers.coco import REJECTS, STATS, load_image
from groundforge.pipeline.readers.refer import canonical_image_id
from groundforge.pipeline.readers.tables import match_files
from groundforge.pipeline.sample import SAMPLE_DIR
from groundforge.pipeline.writer import Table, WriteDataset, grouped_outputs, start_output
from groundforge.transforms.codecs import find_special_tokens
from groundforge.transforms.grit import RowError, concept_key, grit_row, parse_grit_row, selection_rank
from groundforge.transforms.grounding import MAX_AREA_FRAC, MIN_AREA_FRAC, MIN_SIDE_PX, NMS_IOU, SCORE_THRESHOLD
from groundforge.transforms.images import ImageError, prepare_image
from groundforge.transforms.nounphrases import ABSTRACT_NOUNS, DEFAULT_MODEL, RefExp, not_contained
from groundforge.transforms.paths import PathError, safe_join
from groundforge.transforms.records import make_object, make_record, record_id, reject, rendered

BUILDER = "grit"
TASKS = ("grounded_caption", "rec")
GROUNDERS = ("annotations", "detector", "florence2")
ANNOTATIONS = "annotations"  # tagged output and OUT/ table name
ASPECT_TOLERANCE = 0.01      # a GRIT-20M image resized within this relative aspect change keeps its boxes
CARD_NOTES = ("GRIT-style grounded captions (Kosmos-2): `grounded_caption` records (the caption with its grounded "
              "noun chunks) and `rec` records (one per referring expression, with its chunk's boxes). "
              "`annotations/` holds the same pairs in the GRIT-20M layout: `noun_chunks` and `ref_exps` as "
              "[start_char, end_char, x1, y1, x2, y2, score] with boxes normalised to 0..1. Captions and images "
              "keep the licenses of their sources.")


class Source(NamedTuple):
    """A checked input configuration."""
    kind: str                   # "coco" (also the shipped sample), "captions", "webdataset" or "grit20m"
    files: tuple                # input files; coco: ((captions json, instances json or None),)
    images: str | None
    caption_column: str = "caption"
    image_column: str = "image"


class Settings(NamedTuple):
    """Everything the DoFns need besides the input."""
    dataset: str
    split: str
    fmt: str
    seed: int
    tasks: tuple
    grounder: str | None        # None for --grit20m
    model: str | None
    filters: dict               # transforms.grounding.filter_detections keyword arguments
    exclude: frozenset
    max_pixels: int


class Grounding(NamedTuple):
    """Options of the RunInference grounding stage (detector / florence2)."""
    device: str = "auto"
    dtype: str = "float16"
    batch_size: int = 8
    trust_remote_code: bool = False
    accelerator: str | None = None


class Text(NamedTuple):
    spacy_model: str = DEFAULT_MODEL
    batch_size: int = 256
    abstract_nouns: frozenset = ABSTRACT_NOUNS


class Balance(NamedTuple):
    min_count: int = 3
    max_per_phrase: int = 100
    seed: int = 0


def _stat(name: str, n: int = 1):
    return beam.pvalue.TaggedOutput(STATS, (name, n))


def _reject(source: str, stage: str, reason: str, detail: str):
    return beam.pvalue.TaggedOutput(REJECTS, reject(source, stage, reason, detail))


# ---------------------------------------------------------------- reading and text checks

class ReadCaptionsFn(beam.DoFn):
    """One input file (coco: the (captions, instances) pair) -> caption items; bad rows -> read rejects."""

    def __init__(self, source: Source):
        self.source = source

    def process(self, element):
        try:
            for kind, value in self._rows(element):
                if kind != "annotation_reject":  # a bad box of the instances file is not a caption
                    yield _stat("captions_read")
                yield value if kind == "item" else beam.pvalue.TaggedOutput(REJECTS, value)
        except (OSError, ValueError, csv.Error, pa.ArrowException) as exc:  # ValueError: UnicodeDecodeError too
            where = element[0] if isinstance(element, tuple) else element
            yield _reject(where, "read", "unreadable_file", f"{type(exc).__name__}: {exc}")

    def _rows(self, element):
        s = self.source
        if s.kind == "coco":
            captions_path, instances_path = element
            captions = _json_file(captions_path, "images", "annotations")
            instances = _json_file(instances_path, "annotations", "categories") if instances_path else None
            return read_coco_captions(captions, instances, captions_path)
        if s.kind == "captions":
            return read_caption_table(element, caption_column=s.caption_column, image_column=s.image_column)
        if s.kind == "webdataset":
            return read_webdataset(element)
        return read_grit20m(element)


def _json_file(path: str, *lists: str) -> dict:
    """A JSON object with the given list fields. Errors name the file: the reject's source is the captions
    file even when the instances file is the bad one."""
    try:
        data = json.loads(fs.read_bytes(path))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise ValueError(f"{path}: expected a JSON object with {', '.join(repr(k) for k in lists)} lists")
    return data


class TextFn(beam.DoFn):
    """Drop held-out images; reject empty captions and captions with control tokens (stage "text")."""

    def __init__(self, exclude: frozenset):
        self.exclude = exclude

    def process(self, item):
        if self.exclude and canonical_image_id(item["image_id"]) in self.exclude:
            yield _stat("excluded_holdout_images")
            return
        caption = item["caption"]
        if not isinstance(caption, str) or not caption.strip():
            yield _reject(item["source"], "text", "empty_caption", f"caption is {caption!r}")
            return
        tokens = find_special_tokens(caption)
        if tokens:
            yield _reject(item["source"], "text", "control_tokens", " ".join(dict.fromkeys(tokens)))
            return
        if item["grit"] is not None:
            spans = sorted({(int(e[0]), int(e[1])) for e in item["grit"]["noun_chunks"]})
            item = {**item, "phrases": [caption[s:e] for s, e in spans]}
        yield item


class PhrasesFn(beam.DoFn):
    """spaCy PredictionResult -> the item with its chunks and expressions; captions without chunks are counted."""

    def process(self, result):
        item, phrases = result.example, result.inference
        if not phrases.chunks:
            yield _stat("captions_without_noun_chunks")
            return
        yield {**item, "chunks": list(phrases.chunks), "ref_exps": list(phrases.ref_exps),
               "phrases": [c.text for c in phrases.chunks]}


def text_stage(items, text: Text):
    """spaCy noun chunks and expressions through RunInference -> (items with them, rejects, stats). Every
    chunk's expression is kept here: contained ones are dropped after grounding (FilterFn)."""
    from apache_beam.ml.inference.base import RunInference

    from groundforge.pipeline.detect import dlq_to_rejects
    from groundforge.pipeline.nlp import SpacyHandler

    handler = SpacyHandler(text.spacy_model, batch_size=text.batch_size, abstract_nouns=text.abstract_nouns,
                           drop_contained=False)
    results, dlq = items | "Spacy" >> RunInference(handler).with_exception_handling()
    phrased = results | "Phrases" >> beam.ParDo(PhrasesFn()).with_outputs(STATS, main="items")
    return phrased.items, dlq_to_rejects(dlq, "TextRejects", stage="text"), phrased[STATS]


# ---------------------------------------------------------------- concept balancing (LLaVA CC3M-595K)

class _CountAndSmallest(beam.CombineFn):
    """Per phrase: how many captions contain it, and its `k` lowest-ranked (rank, caption key) pairs. The
    candidate list is trimmed back to `k` whenever it reaches 2k, so adding is amortised O(log k)."""

    def __init__(self, k: int):
        self.k = k

    def create_accumulator(self):
        return 0, []

    def add_input(self, acc, value):
        count, best = acc
        best.append(value)
        if len(best) >= 2 * self.k:
            best = heapq.nsmallest(self.k, best)
        return count + 1, best

    def merge_accumulators(self, accs):
        accs = list(accs)
        return sum(a[0] for a in accs), heapq.nsmallest(self.k, [v for a in accs for v in a[1]])

    def compact(self, acc):
        return acc[0], heapq.nsmallest(self.k, acc[1])

    def extract_output(self, acc):
        return self.compact(acc)


class BalanceConcepts(beam.PTransform):
    """Keep the items that `transforms.grit.balance_concepts` would select, computed distributedly: per phrase
    a count and the `max_per_phrase` captions of lowest `selection_rank` (one combiner), phrases seen fewer
    than `min_count` times select nothing, an item survives when any phrase selected its key. Output:
    {"items", "stats"} (stat `captions_not_selected`)."""

    def __init__(self, balance: Balance):
        super().__init__()
        self.balance = balance

    def expand(self, items):
        b = self.balance
        keyed = items | "KeyItems" >> beam.Map(lambda it: (it["key"], it))
        selected = (
            items
            | "PhraseRanks" >> beam.FlatMap(
                lambda it, seed: [(p, (selection_rank(seed, p, it["key"]), it["key"]))
                                  for p in sorted({concept_key(t) for t in it["phrases"]})], b.seed)
            | "PerPhrase" >> beam.CombinePerKey(_CountAndSmallest(b.max_per_phrase))
            | "Selected" >> beam.FlatMap(
                lambda kv, n: [(key, 1) for _, key in kv[1][1]] if kv[1][0] >= n else [], b.min_count))
        joined = ({"item": keyed, "selected": selected} | "Join" >> beam.CoGroupByKey()
                  | "Keep" >> beam.ParDo(_KeepSelected()).with_outputs(STATS, main="items"))
        return {"items": joined.items, "stats": joined[STATS]}


class _KeepSelected(beam.DoFn):
    """(key, {"item": items, "selected": marks}) -> the items when any phrase selected the key."""

    def process(self, element):
        _, grouped = element
        items = list(grouped["item"])
        if next(iter(grouped["selected"]), None) is None:
            if items:
                yield _stat("captions_not_selected", len(items))
            return
        yield from items


# ---------------------------------------------------------------- images

def _same_aspect(claimed: tuple, actual: tuple) -> bool:
    (cw, ch), (w, h) = claimed, actual
    return abs(cw / ch - w / h) <= ASPECT_TOLERANCE * (w / h)


class LoadImageFn(beam.DoFn):
    """Load and check the item's image (stage "image" rejects); the item gets `image` bytes, the display size
    and sha256. A size other than the input's is rejected, except for GRIT-20M rows whose image was resized
    with its aspect ratio kept (their boxes are normalised, so they scale with it)."""

    def __init__(self, images: str | None, max_pixels: int):
        self.images = images
        self.max_pixels = max_pixels

    def process(self, item):
        try:
            data, info, file_name = self._load(item)
        except (ImageError, PathError) as err:
            yield _reject(item["source"], "image", err.reason, err.detail)
            return
        yield _stat("images_read")
        claimed, actual = (item["width"], item["height"]), (info.width, info.height)
        if None not in claimed and claimed != actual:
            if item["grit"] is None or not _same_aspect(claimed, actual):
                yield _reject(item["source"], "image", "size_mismatch",
                              f"input says {claimed[0]}x{claimed[1]}, image is {actual[0]}x{actual[1]}")
                return
            yield _stat("images_resized")
        yield {**item, "image": data, "image_bytes": None, "file_name": file_name, "width": info.width,
               "height": info.height, "image_sha256": info.sha256}

    def _load(self, item):
        """-> (bytes, ImageInfo, the file name that was found or None for embedded bytes)."""
        if item["image_bytes"] is not None:
            return (*prepare_image(item["image_bytes"], self.max_pixels), None)
        if not self.images:
            raise ImageError("missing_image", f"{item['file_name']}: no --images directory was given")
        names = (item["file_name"], *item["alt_file_names"])
        for name in names:
            safe_join(self.images, name)  # every candidate must stay inside the root, found or not
        for name in names:
            try:
                return (*load_image(self.images, name, self.max_pixels), name)
            except ImageError as err:
                if err.reason != "missing_image":
                    raise
        raise ImageError("missing_image", safe_join(self.images, names[0]))


# ---------------------------------------------------------------- grounding

def _ground_annotations(item):
    from groundforge.transforms.grounding import ground_with_annotations

    detections = ground_with_annotations(item["chunks"], item["annotations"] or [])
    return {**item, "detections": [tuple(d) for d in detections]}


def _grounding_element(item):
    """The detect.py element contract: source (for rejects), image, width, height, caption and the texts."""
    return {**item, "texts": [c.text for c in item["chunks"]]}


def _detections(result):
    item = {k: v for k, v in result.example.items() if k != "texts"}
    return {**item, "detections": result.inference}


def make_handler(grounder: str, model: str, grounding: Grounding, min_score: float):
    from groundforge.pipeline.detect import DetectorHandler, Florence2GroundingHandler

    common = dict(device=grounding.device, dtype=grounding.dtype, batch_size=grounding.batch_size,
                  trust_remote_code=grounding.trust_remote_code)
    if grounder == "detector":
        return DetectorHandler(model, min_score=min_score, **common)
    return Florence2GroundingHandler(model, **common)


def ground(items, settings: Settings, grounding: Grounding):
    """items -> (items with `detections`, reject PCollection or None)."""
    if settings.grounder == "annotations":
        return items | "GroundAnnotations" >> beam.Map(_ground_annotations), None
    from apache_beam.ml.inference.base import RunInference

    from groundforge.pipeline.detect import dlq_to_rejects

    threshold = settings.filters.get("score_threshold")
    handler = make_handler(settings.grounder, settings.model, grounding, threshold or 0.0)
    inference = RunInference(handler)
    if grounding.accelerator:
        inference = inference.with_resource_hints(accelerator=grounding.accelerator)
    results, dlq = (items | "GroundElements" >> beam.Map(_grounding_element)
                    | "Ground" >> inference.with_exception_handling())
    return results | "Detections" >> beam.Map(_detections), dlq_to_rejects(dlq)


# ---------------------------------------------------------------- filters, annotation rows and records

def annotation_key(row: dict) -> str:
    return row["id"]


def annotation_row(pair_key: str, item: dict, chunks: list, exps: list) -> dict:
    """The pair's GRIT-20M row, built by `transforms.grit.grit_row`. chunks / exps: [(start_char, end_char, text,
    boxes)]. Every group gets its own key in grit_row's boxes map (chunks first, then expressions), so an
    expression keeps the boxes it came with: a GRIT-20M row's expressions are not tied to a chunk."""
    groups = chunks + exps
    spans = [RefExp(start, end, text, i) for i, (start, end, text, _) in enumerate(groups)]
    boxes = {i: group[3] for i, group in enumerate(groups)}
    return grit_row(item["caption"], item["width"], item["height"], spans[:len(chunks)], boxes, spans[len(chunks):],
                    row_id=pair_key, image_id=item["image_id"], file_name=item["file_name"],
                    url=item["meta"].get("url"), keep_missing=True)


class _PairOutputs(beam.DoFn):
    """Shared by both paths: a grounded pair -> its annotation row and rendered records."""

    def __init__(self, settings: Settings):
        self.s = settings

    def outputs(self, item, chunks: list, exps: list):
        """chunks / exps: [(start_char, end_char, text, [(pixel xyxy, score), ...])] in caption order.
        The pair's records leave as one image group (see pipeline.writer.image_groups)."""
        return grouped_outputs(self._pair_outputs(item, chunks, exps))

    def _pair_outputs(self, item, chunks: list, exps: list):
        s = self.s
        yield beam.pvalue.TaggedOutput(ANNOTATIONS,
                                       annotation_row(record_id(s.dataset, s.split, item["key"]), item, chunks, exps))
        base = dict(dataset=s.dataset, split=s.split, image={"bytes": item["image"], "path": item["file_name"]},
                    image_id=item["image_id"], width=item["width"], height=item["height"],
                    image_sha256=item["image_sha256"])
        meta = {"builder": BUILDER, "source": item["source"], "grounder": s.grounder or "grit20m", **item["meta"]}
        if s.model:
            meta["model"] = s.model
        if "grounded_caption" in s.tasks:
            objects = [make_object(text, box, score, (start, end)) for start, end, text, boxes in chunks
                       for box, score in boxes]
            yield self._render(make_record(id=record_id(s.dataset, s.split, item["key"], "grounded_caption"),
                                           task="grounded_caption", objects=objects, caption=item["caption"],
                                           meta=meta, **base), item)
        if "rec" in s.tasks:
            for start, end, text, boxes in exps:
                objects = [make_object(text, box, score, (0, len(text))) for box, score in boxes]
                yield self._render(make_record(
                    id=record_id(s.dataset, s.split, item["key"], "rec", start, end), task="rec", objects=objects,
                    caption=text, meta={**meta, "caption": item["caption"], "span": [start, end]}, **base), item)

    def _render(self, record, item):
        try:
            return rendered(record, self.s.fmt, self.s.seed)
        except ValueError as err:  # templates.RenderError (control_tokens, bad_span, ...) or BoxError
            return _reject(f"record:{record['id']}", "render", getattr(err, "reason", "render_error"),
                           f"{item['source']} {record['task']}: {err}")


class FilterFn(_PairOutputs):
    """Kosmos-2 filters over the image's detections (drops counted as `dropped_<reason>` stats); pairs without
    a surviving box are counted (`pairs_without_box`); the rest become annotation rows and records."""

    def process(self, item):
        from groundforge.transforms.grounding import filter_detections

        kept = filter_detections(item["detections"], item["width"], item["height"], n_chunks=len(item["chunks"]),
                                 **self.s.filters)
        for reason, n in sorted(kept.drops.items()):
            yield _stat(f"dropped_{reason}", n)
        if not kept.boxes:
            yield _stat("pairs_without_box")
            return
        chunks = [(c.start_char, c.end_char, c.text, kept.boxes[i]) for i, c in enumerate(item["chunks"])
                  if i in kept.boxes]
        exps = [(e.start_char, e.end_char, e.text, kept.boxes[e.chunk]) for e in item["ref_exps"]
                if e.chunk in kept.boxes]
        exps = [exps[i] for i in not_contained([(start, end) for start, end, _, _ in exps])]
        yield from self.outputs(item, chunks, exps)


def _grouped(objects: list, caption: str) -> list:
    groups: dict = {}
    for obj in objects:
        groups.setdefault(tuple(obj["span"]), []).append((obj["bbox"], obj["score"]))
    return [(s, e, caption[s:e], boxes) for (s, e), boxes in sorted(groups.items())]


class GritRowFn(_PairOutputs):
    """A GRIT-20M item with its image -> annotation row and records (no spaCy, grounding or filters). The
    normalised boxes are read against the real image size."""

    def process(self, item):
        row = {"caption": item["caption"], "width": item["width"], "height": item["height"], **item["grit"]}
        try:
            parsed = parse_grit_row(row)
        except RowError as err:
            yield _reject(item["source"], "read", err.reason, err.detail)
            return
        chunks = _grouped(parsed.noun_chunks, item["caption"])
        if not chunks:
            yield _stat("pairs_without_box")
            return
        yield from self.outputs(item, chunks, _grouped(parsed.ref_exps, item["caption"]))


# ---------------------------------------------------------------- pipeline

def build_grit(*, source: Source, settings: Settings, text: Text, grounding: Grounding, balance: Balance | None,
               out: str, num_shards: int | None, shard_size_mb: float, options, args: dict, **recorded) -> None:
    """`recorded`: scalar descriptions of the inputs and options, only kept in dataset_info.json's args."""
    from groundforge.schemas import arrow_schema_for

    start_output(out)
    with beam.Pipeline(options=options) as p:
        read = (p | "Inputs" >> beam.Create(list(source.files)) | "SpreadFiles" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(ReadCaptionsFn(source)).with_outputs(REJECTS, STATS, main="items"))
        checked = read.items | "Text" >> beam.ParDo(TextFn(settings.exclude)).with_outputs(REJECTS, STATS, main="items")
        rejects, stats = [read[REJECTS], checked[REJECTS]], [read[STATS], checked[STATS]]
        items = checked.items | "SpreadItems" >> beam.Reshuffle()  # a file's items over all workers
        if source.kind != "grit20m":
            items, text_rejects, text_stats = text_stage(items, text)
            rejects.append(text_rejects)
            stats.append(text_stats)
        if balance is not None:
            balanced = items | "Balance" >> BalanceConcepts(balance)
            items = balanced["items"]
            stats.append(balanced["stats"])
        loaded = items | "LoadImages" >> beam.ParDo(LoadImageFn(source.images, settings.max_pixels)).with_outputs(
            REJECTS, STATS, main="items")
        rejects.append(loaded[REJECTS])
        stats.append(loaded[STATS])
        if source.kind == "grit20m":
            built = loaded.items | "GritRows" >> beam.ParDo(GritRowFn(settings)).with_outputs(
                REJECTS, STATS, ANNOTATIONS, main="groups")
        else:
            grounded, ground_rejects = ground(loaded.items, settings, grounding)
            if ground_rejects is not None:
                rejects.append(ground_rejects)
            built = grounded | "Filter" >> beam.ParDo(FilterFn(settings)).with_outputs(
                REJECTS, STATS, ANNOTATIONS, main="groups")
        rejects.append(built[REJECTS])
        stats.append(built[STATS])
        table = Table(arrow_schema_for("grit_annotation"), annotation_key, settings.split)
        _ = {"groups": built.groups, "rejects": rejects | "Rejects" >> beam.Flatten(),
             "stats": stats | "Stats" >> beam.Flatten(), ANNOTATIONS: built[ANNOTATIONS]} | WriteDataset(
            out, builder=BUILDER, dataset=settings.dataset, args=args, num_shards=num_shards,
            shard_size_mb=shard_size_mb, license="other", card_notes=CARD_NOTES, tables={ANNOTATIONS: table})


# ---------------------------------------------------------------- configuration (driver side, before any pipeline)

def parse_abstract_nouns(value: str | None) -> frozenset:
    if value is None:
        return ABSTRACT_NOUNS
    return frozenset(w.strip().lower() for w in value.split(",") if w.strip())


def _check_file(path: str | None, option: str) -> None:
    if path and not fs.exists(path):
        raise click.BadParameter(f"file not found: {path}", param_hint=option)


def resolve_source(*, captions, webdataset, coco_captions, coco_instances, grit20m, images, caption_column,
                   image_column) -> Source:
    """Check the input options; raises click.UsageError / click.BadParameter / InputError."""
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


def grit_command():
    """The click command; built on demand so pipeline.cli can register it without a circular import."""
    from groundforge.pipeline.cli import BEAM_CONTEXT, output_options, read_id_file, run_builder
    from groundforge.pipeline.detect import DEVICES, DTYPES

    @click.command("grit", context_settings=BEAM_CONTEXT)
    @click.option("--captions", default=None, help="GLOB of caption tables (.parquet, .csv, .jsonl/.json) with a "
                  "caption column and an image column (path under --images, bytes, or {bytes, path}).")
    @click.option("--caption-column", default="caption", show_default=True)
    @click.option("--image-column", default="image", show_default=True)
    @click.option("--webdataset", default=None, help="GLOB of img2dataset tar shards ({key}.jpg, {key}.txt, "
                  "{key}.json).")
    @click.option("--coco-captions", default=None, help="COCO captions JSON (with --images; default input: the "
                  "shipped sample).")
    @click.option("--coco-instances", default=None, help="COCO instances JSON of the same images: boxes for "
                  "--grounder annotations.")
    @click.option("--grit20m", default=None, help="GLOB of GRIT-20M parquet (caption, width, height, noun_chunks, "
                  "ref_exps): rendered as is, images from --images by key/file_name/image_path.")
    @click.option("--images", default=None, help="Image directory that relative image paths resolve in.")
    @click.option("--grounder", type=click.Choice(GROUNDERS), default=None,
                  help="annotations (COCO boxes; default with instances), detector (zero-shot detector), "
                  "florence2 (<CAPTION_TO_PHRASE_GROUNDING>).")
    @click.option("--model", default=None, help="Detector or Florence-2 checkpoint: hub id or local directory.")
    @click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
    @click.option("--dtype", type=click.Choice(DTYPES), default="float16", show_default=True,
                  help="Model dtype on GPU (CPU always runs float32).")
    @click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
                  help="Images per detector batch.")
    @click.option("--trust-remote-code", is_flag=True, default=False, help="Allow the checkpoint's own code "
                  "(off by default).")
    @click.option("--accelerator", default=None, help="Beam resource hint for the grounding stage, e.g. "
                  "'type:nvidia-l4;count:1;install-nvidia-driver' (Dataflow GPU workers).")
    @click.option("--spacy-model", default=DEFAULT_MODEL, show_default=True)
    @click.option("--spacy-batch-size", type=click.IntRange(1), default=256, show_default=True)
    @click.option("--abstract-nouns", default=None, help="Comma list replacing the Kosmos-2 abstract nouns that "
                  "are never grounded ('' keeps all).")
    @click.option("--score-threshold", type=float, default=SCORE_THRESHOLD, show_default=True,
                  help="Keep boxes scoring above this.")
    @click.option("--nms-iou", type=click.FloatRange(0, 1), default=NMS_IOU, show_default=True,
                  help="NMS across all chunks of an image (1 keeps everything).")
    @click.option("--max-box-area", type=click.FloatRange(0, 1), default=MAX_AREA_FRAC, show_default=True,
                  help="Drop boxes covering more than this fraction of the image.")
    @click.option("--min-box-side", type=click.FloatRange(0), default=MIN_SIDE_PX, show_default=True,
                  help="Drop boxes with a side shorter than this (pixels).")
    @click.option("--min-box-area", type=click.FloatRange(0, 1), default=MIN_AREA_FRAC, show_default=True,
                  help="Drop boxes covering less than this fraction of the image.")
    @click.option("--tasks", default="grounded_caption,rec", show_default=True,
                  help="Comma list of grounded_caption, rec.")
    @click.option("--balance-concepts", is_flag=True, default=False, help="LLaVA CC3M-595K style selection: "
                  "from the rarest noun phrase up, at most --balance-max-per-phrase captions per phrase.")
    @click.option("--balance-min-count", type=click.IntRange(1), default=3, show_default=True,
                  help="Phrases in fewer captions select nothing.")
    @click.option("--balance-max-per-phrase", type=click.IntRange(1), default=100, show_default=True)
    @click.option("--split", default="train", show_default=True, callback=check_split,
                  help="Split name of the records.")
    @click.option("--dataset", "dataset_name", default="grit", show_default=True)
    @output_options
    @click.pass_context
    def build_grit_cmd(ctx, captions, caption_column, image_column, webdataset, coco_captions, coco_instances,
                       grit20m, images, grounder, model, device, dtype, batch_size, trust_remote_code, accelerator,
                       spacy_model, spacy_batch_size, abstract_nouns, score_threshold, nms_iou, max_box_area,
                       min_box_side, min_box_area, tasks, balance_concepts, balance_min_count,
                       balance_max_per_phrase, split, dataset_name, out, fmt, num_shards, shard_size_mb, seed,
                       exclude_images, max_pixels):
        """GRIT-style grounded captions (Kosmos-2): spaCy noun chunks and referring expressions, grounded by COCO
        boxes, a zero-shot detector or Florence-2, filtered, written as `grounded_caption` and `rec` records plus
        GRIT-20M style OUT/annotations/. Default input: the shipped sample with --grounder annotations."""
        from groundforge.transforms.nounphrases import SpacyModelError, load_spacy

        task_list = parse_tasks(tasks, TASKS)
        try:
            source = resolve_source(captions=captions, webdataset=webdataset, coco_captions=coco_captions,
                                    coco_instances=coco_instances, grit20m=grit20m, images=images,
                                    caption_column=caption_column, image_column=image_column)
        except InputError as err:
            raise click.UsageError(str(err)) from None
        grounder = resolve_grounder(source, grounder, model)
        if source.kind != "grit20m":
            try:
                load_spacy(spacy_model)  # fail here, once, rather than in every worker
            except SpacyModelError as err:
                raise click.ClickException(str(err)) from None
        filters = {"score_threshold": score_threshold, "nms_iou": nms_iou, "max_area_frac": max_box_area,
                   "min_side": min_box_side, "min_area_frac": min_box_area}
        settings = Settings(dataset_name, split, fmt, seed, task_list, grounder,
                            model if grounder in ("detector", "florence2") else None, filters,
                            read_id_file(exclude_images), max_pixels)
        text = Text(spacy_model, spacy_batch_size, parse_abstract_nouns(abstract_nouns))
        grounding = Grounding(device, dtype, batch_size, trust_remote_code, accelerator)
        balance = Balance(balance_min_count, balance_max_per_phrase, seed) if balance_concepts else None
        inputs = captions or webdataset or coco_captions or grit20m or "sample"
        run_builder(build_grit, out, ctx.args, source=source, settings=settings, text=text, grounding=grounding,
                    balance=balance, num_shards=num_shards, shard_size_mb=shard_size_mb, inputs=inputs,
                    input_kind=source.kind, coco_instances=coco_instances, images=source.images, grounder=grounder,
                    model=settings.model, format=fmt, split=split, dataset=dataset_name, tasks=",".join(task_list),
                    spacy_model=spacy_model, abstract_nouns=",".join(sorted(text.abstract_nouns)),
                    score_threshold=score_threshold, nms_iou=nms_iou, max_box_area=max_box_area,
                    min_box_side=min_box_side, min_box_area=min_box_area, balance_concepts=balance_concepts,
                    balance_min_count=balance_min_count, balance_max_per_phrase=balance_max_per_phrase,
                    seed=seed, device=device, dtype=dtype, batch_size=batch_size, accelerator=accelerator,
                    trust_remote_code=trust_remote_code, exclude_images=exclude_images)

    return build_grit_cmd
