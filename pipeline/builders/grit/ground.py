"""GRIT stage 4: load and check each image once, then ground the chunks of all its captions (COCO annotations,
a zero-shot detector or Florence-2 through RunInference).

Caption items are keyed by their image (`image_key`) and grouped, so an image with five captions (COCO) is
read, decoded and checked once, and a detector runs one forward for it with the union of its captions' chunk
texts (`transforms.grounding.image_queries`); the detections are fanned back to each caption
(`transforms.grounding.fan_out`), which then goes through the filters on its own as before. Each caption's
boxes are the ones a forward with only its own phrases gives (the handler's `query_groups`: a box takes the
best of that caption's phrases, not of the union). Florence-2 grounds a caption (its prompt), so it runs once
per caption, but on the image decoded once.
"""
from __future__ import annotations

import hashlib

import apache_beam as beam
from groundforge.pipeline.builders.grit.plan import (
    ASPECT_TOLERANCE,
    Grounding,
    Settings,
)
from groundforge.pipeline.emit import REJECTS, STATS, rejected, size_mismatch, stat
from groundforge.pipeline.image_files import load_image
from groundforge.transforms.images import ImageError, prepare_image
from groundforge.transforms.paths import PathError, safe_join

FORWARDS = "grounding_forwards"  # stat: images (detector) or captions (florence2) sent through the model


def _same_aspect(claimed: tuple, actual: tuple) -> bool:
    (cw, ch), (w, h) = claimed, actual
    return abs(cw / ch - w / h) <= ASPECT_TOLERANCE * (w / h)


def image_key(item) -> str:
    """The image a caption item names: the sha256 of embedded bytes, else its id and file names; with the size
    the input claims, so every caption of a group passes or fails the size check the same way."""
    if item["image_bytes"] is not None:
        ref = "sha256:" + hashlib.sha256(item["image_bytes"]).hexdigest()
    else:
        ref = "\x1e".join(("file", item["image_id"], str(item["file_name"]), *item["alt_file_names"]))
    return f"{ref}\x1f{item['width']}x{item['height']}"


class LoadImageFn(beam.DoFn):
    """(image key, caption items) -> the items that passed, each with `image` bytes, display size and sha256,
    as one list (stage "image" rejects go to every caption of the image). The image is loaded once
    (`images_read`); `caption-image_pairs_read` counts its captions. A size other than the input's is rejected,
    except for GRIT-20M rows whose image was resized with its aspect ratio kept (their boxes are normalised,
    so they scale with it)."""

    def __init__(self, images: str | None, max_pixels: int, max_bytes: int | None = None):
        self.images = images
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def process(self, element):
        _, items = element
        items = sorted(items, key=lambda it: it["key"])  # the runner's order must not matter
        try:
            data, info, file_name = self._load(items[0])
        except (ImageError, PathError) as err:
            for item in items:
                yield rejected(item["source"], "image", err)
            return
        yield stat("images_read")
        yield stat("caption-image_pairs_read", len(items))
        kept = []
        for item in items:
            claimed, actual = (item["width"], item["height"]), (info.width, info.height)
            if None not in claimed and claimed != actual:
                if item["grit"] is None or not _same_aspect(claimed, actual):
                    yield size_mismatch(item["source"], claimed, actual)
                    continue
                yield stat("images_resized")
            kept.append({**item, "image": data, "image_bytes": None, "file_name": file_name, "width": info.width,
                         "height": info.height, "image_sha256": info.sha256})
        if kept:
            yield kept

    def _load(self, item):
        """-> (bytes, ImageInfo, the file name that was found or None for embedded bytes)."""
        if item["image_bytes"] is not None:
            return (*prepare_image(item["image_bytes"], self.max_pixels, self.max_bytes), None)
        if not self.images:
            raise ImageError("missing_image", f"{item['file_name']}: no --images directory was given")
        names = (item["file_name"], *item["alt_file_names"])
        for name in names:
            safe_join(self.images, name)  # every candidate must stay inside the root, found or not
        for name in names:
            try:
                return (*load_image(self.images, name, self.max_pixels, self.max_bytes), name)
            except ImageError as err:
                if err.reason != "missing_image":
                    raise
        raise ImageError("missing_image", safe_join(self.images, names[0]))


def load_images(items, settings: Settings, images: str | None, max_bytes: int | None):
    """caption items -> (image groups: lists of loaded items of one image, rejects, stats)."""
    loaded = (items | "ImageKey" >> beam.Map(lambda it: (image_key(it), it))
              | "ByImage" >> beam.GroupByKey()
              | "LoadImages" >> beam.ParDo(LoadImageFn(images, settings.max_pixels, max_bytes)).with_outputs(
                  REJECTS, STATS, main="groups"))
    return loaded.groups, loaded[REJECTS], loaded[STATS]


class GroundAnnotationsFn(beam.DoFn):
    """COCO boxes by category synonym. A caption whose image the instances file does not list has no boxes to
    give (`captions_without_instances`, not `pairs_without_box`: nothing was filtered away)."""

    def __init__(self, keep_all_boxes: bool):
        self.keep_all_boxes = keep_all_boxes

    def process(self, item):
        from collections import Counter

        from groundforge.transforms.grounding import ground_with_annotations

        if item["annotations"] is None:
            yield beam.pvalue.TaggedOutput(STATS, ("captions_without_instances", 1))
            return
        drops = Counter()
        detections = ground_with_annotations(item["chunks"], item["annotations"], drops=drops,
                                             keep_ambiguous=self.keep_all_boxes)
        yield {**item, "detections": [tuple(d) for d in detections], "ground_drops": dict(drops)}


def caption_query_groups(queries) -> list[list[int]]:
    """For each caption of an `ImageQueries`, the union query indices of its own phrases, in the order a
    per-caption `detector_queries` would ask them (first chunk first)."""
    first: list[dict[int, int]] = [{} for _ in range(queries.n_captions)]
    for q, members in enumerate(queries.members):
        for caption, chunk in members:
            first[caption].setdefault(q, chunk)
    return [sorted(f, key=f.get) for f in first]


def detector_element(group: list) -> dict:
    """One image's detector element: the union of its captions' chunk texts, each caption's query group, and
    the caption items (passed through to `fan_back`)."""
    from groundforge.transforms.grounding import image_queries

    queries = image_queries([[c.text for c in item["chunks"]] for item in group])
    first = group[0]
    return {"source": first["source"], "image": first["image"], "width": first["width"], "height": first["height"],
            "texts": list(queries.texts), "query_groups": caption_query_groups(queries), "items": group}


def fan_back(result):
    """The image's PredictionResult -> each caption item with its own detections."""
    from collections import Counter

    from groundforge.transforms.grounding import fan_out, image_queries

    element = result.example
    group = element["items"]
    queries = image_queries([[c.text for c in item["chunks"]] for item in group])
    for c, (item, dets) in enumerate(zip(group, result.inference)):
        drops = Counter()
        mine = fan_out(dets, queries, drops)[c]
        yield {**item, "detections": [tuple(d) for d in mine], "ground_drops": dict(drops)}


def florence_element(group: list) -> dict:
    """One image's Florence-2 element: each caption is its own prompt (one generation each), decoded once."""
    first = group[0]
    return {"source": first["source"], "image": first["image"], "width": first["width"], "height": first["height"],
            "captions": [item["caption"] for item in group],
            "caption_texts": [[c.text for c in item["chunks"]] for item in group], "items": group}


def florence_back(result):
    for item, dets in zip(result.example["items"], result.inference):
        yield {**item, "detections": dets}


def make_handler(grounder: str, model: str, grounding: Grounding, min_score: float):
    from groundforge.pipeline.handlers.detector import DetectorHandler
    from groundforge.pipeline.handlers.florence2 import Florence2GroundingHandler

    common = dict(device=grounding.device, dtype=grounding.dtype, batch_size=grounding.batch_size,
                  trust_remote_code=grounding.trust_remote_code)
    if grounder == "detector":
        return DetectorHandler(model, min_score=min_score, use_fast=grounding.use_fast, **common)
    return Florence2GroundingHandler(model, **common)


def _group_rejects(failed, stage: str):
    """A failed image element -> one reject per caption of the image (as the per-caption stage gave)."""
    from groundforge.pipeline.handlers.common import Prepared
    from groundforge.pipeline.handlers.dlq import failed_to_reject

    element, error = failed
    if isinstance(element, Prepared):  # a failed batch holds the preprocessed elements
        element = element.example
    return [failed_to_reject((item, error), stage) for item in element["items"]]


def group_dlq_to_rejects(dlq, stage: str = "ground"):
    parts = [bad | f"GroundRejectsPre{i}" >> beam.FlatMap(_group_rejects, stage)
             for i, bad in enumerate(dlq.failed_preprocessing)]
    parts.append(dlq.failed_inferences | "GroundRejectsBatch" >> beam.FlatMap(
        lambda fb, s: [r for element in fb[0] for r in _group_rejects((element, fb[1]), s)], stage))
    parts += [bad | f"GroundRejectsPost{i}" >> beam.FlatMap(_group_rejects, stage)
              for i, bad in enumerate(dlq.failed_postprocessing)]
    return parts | "GroundRejectsFlatten" >> beam.Flatten()


def ground(groups, settings: Settings, grounding: Grounding):
    """image groups -> (caption items with `detections`, reject PCollection or None, stats PCollection or None).
    `grounding_forwards` counts the model's per-image (detector) or per-caption (florence2) forwards."""
    items = groups | "Captions" >> beam.FlatMap(lambda group: group)
    if settings.grounder == "annotations":
        grounded = items | "GroundAnnotations" >> beam.ParDo(GroundAnnotationsFn(settings.keep_all_boxes)
                                                             ).with_outputs(STATS, main="items")
        return grounded.items, None, grounded[STATS]
    from apache_beam.ml.inference.base import RunInference

    threshold = settings.filters.get("score_threshold")
    handler = make_handler(settings.grounder, settings.model, grounding, threshold or 0.0)
    inference = RunInference(handler)
    if grounding.accelerator:
        inference = inference.with_resource_hints(accelerator=grounding.accelerator)
    if settings.grounder == "detector":
        elements = groups | "GroundElements" >> beam.Map(detector_element)
        forwards = elements | "CountForwards" >> beam.Map(lambda e: (FORWARDS, 1))
        back = fan_back
    else:
        elements = groups | "GroundElements" >> beam.Map(florence_element)
        forwards = elements | "CountForwards" >> beam.Map(lambda e: (FORWARDS, len(e["captions"])))
        back = florence_back
    results, dlq = elements | "Ground" >> inference.with_exception_handling()
    return results | "Detections" >> beam.FlatMap(back), group_dlq_to_rejects(dlq), forwards
