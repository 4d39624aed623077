"""GRIT stage 4: load and check each image, then ground the chunks (COCO annotations, a zero-shot detector or
Florence-2 through RunInference)."""
from __future__ import annotations

import apache_beam as beam
from groundforge.pipeline.builders.grit.plan import (
    ASPECT_TOLERANCE,
    Grounding,
    Settings,
)
from groundforge.pipeline.emit import rejected, size_mismatch, stat
from groundforge.pipeline.image_files import load_image
from groundforge.transforms.images import ImageError, prepare_image
from groundforge.transforms.paths import PathError, safe_join


def _same_aspect(claimed: tuple, actual: tuple) -> bool:
    (cw, ch), (w, h) = claimed, actual
    return abs(cw / ch - w / h) <= ASPECT_TOLERANCE * (w / h)


class LoadImageFn(beam.DoFn):
    """Load and check the item's image (stage "image" rejects); the item gets `image` bytes, the display size
    and sha256. A size other than the input's is rejected, except for GRIT-20M rows whose image was resized
    with its aspect ratio kept (their boxes are normalised, so they scale with it)."""

    def __init__(self, images: str | None, max_pixels: int, max_bytes: int | None = None):
        self.images = images
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def process(self, item):
        try:
            data, info, file_name = self._load(item)
        except (ImageError, PathError) as err:
            yield rejected(item["source"], "image", err)
            return
        yield stat("images_read")
        claimed, actual = (item["width"], item["height"]), (info.width, info.height)
        if None not in claimed and claimed != actual:
            if item["grit"] is None or not _same_aspect(claimed, actual):
                yield size_mismatch(item["source"], claimed, actual)
                return
            yield stat("images_resized")
        yield {**item, "image": data, "image_bytes": None, "file_name": file_name, "width": info.width,
               "height": info.height, "image_sha256": info.sha256}

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


def _ground_annotations(item, keep_all_boxes: bool):
    from collections import Counter

    from groundforge.transforms.grounding import ground_with_annotations

    drops = Counter()
    detections = ground_with_annotations(item["chunks"], item["annotations"] or [], drops=drops,
                                         keep_ambiguous=keep_all_boxes)
    return {**item, "detections": [tuple(d) for d in detections], "ground_drops": dict(drops)}


def _grounding_element(item):
    """The detect.py element contract: source (for rejects), image, width, height, caption and the texts."""
    return {**item, "texts": [c.text for c in item["chunks"]]}


def _detections(result):
    item = {k: v for k, v in result.example.items() if k != "texts"}
    return {**item, "detections": result.inference}


def make_handler(grounder: str, model: str, grounding: Grounding, min_score: float):
    from groundforge.pipeline.handlers.detector import DetectorHandler
    from groundforge.pipeline.handlers.florence2 import Florence2GroundingHandler

    common = dict(device=grounding.device, dtype=grounding.dtype, batch_size=grounding.batch_size,
                  trust_remote_code=grounding.trust_remote_code)
    if grounder == "detector":
        return DetectorHandler(model, min_score=min_score, **common)
    return Florence2GroundingHandler(model, **common)


def ground(items, settings: Settings, grounding: Grounding):
    """items -> (items with `detections`, reject PCollection or None)."""
    if settings.grounder == "annotations":
        return items | "GroundAnnotations" >> beam.Map(_ground_annotations, settings.keep_all_boxes), None
    from apache_beam.ml.inference.base import RunInference
    from groundforge.pipeline.handlers.dlq import dlq_to_rejects

    threshold = settings.filters.get("score_threshold")
    handler = make_handler(settings.grounder, settings.model, grounding, threshold or 0.0)
    inference = RunInference(handler)
    if grounding.accelerator:
        inference = inference.with_resource_hints(accelerator=grounding.accelerator)
    results, dlq = (items | "GroundElements" >> beam.Map(_grounding_element)
                    | "Ground" >> inference.with_exception_handling())
    return results | "Detections" >> beam.Map(_detections), dlq_to_rejects(dlq)
