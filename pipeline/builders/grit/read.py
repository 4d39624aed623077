"""GRIT stage 1: read caption items from the input files, then text checks (empty captions, control tokens,
held-out images)."""
from __future__ import annotations

import csv

import apache_beam as beam
import pyarrow as pa
from groundforge.pipeline.builders.grit.plan import Source
from groundforge.pipeline.emit import read_outputs, reject, stat
from groundforge.pipeline.readers.captions import (
    read_caption_table,
    read_coco_captions,
    read_grit20m,
    read_webdataset,
)
from groundforge.pipeline.readers.coco_stream import read_json_object
from groundforge.pipeline.readers.common import canonical_image_id
from groundforge.transforms.codecs import find_special_tokens


class ReadCaptionsFn(beam.DoFn):
    """One input file (coco: the (captions, instances) pair) -> caption items; bad rows -> read rejects."""

    def __init__(self, source: Source):
        self.source = source

    def process(self, element):
        try:
            yield from read_outputs(self._rows(element), "captions_read")
        except MalformedJson as exc:
            yield reject(element[0], "read", "malformed_json", str(exc))
        except (OSError, ValueError, csv.Error, pa.ArrowException) as exc:  # ValueError: UnicodeDecodeError too
            where = element[0] if isinstance(element, tuple) else element
            yield reject(where, "read", "unreadable_file", f"{type(exc).__name__}: {exc}")

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


class MalformedJson(ValueError):
    """A COCO captions or instances file that is not JSON: one `read/malformed_json` reject for the file."""


def _json_file(path: str, *lists: str) -> dict:
    """A JSON object with the given list fields. Errors name the file: the reject's source is the captions
    file even when the instances file is the bad one."""
    try:
        data = read_json_object(path)  # streamed when large
    except ValueError as exc:
        raise MalformedJson(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise ValueError(f"{path}: expected a JSON object with {', '.join(repr(k) for k in lists)} lists")
    return data


class TextFn(beam.DoFn):
    """Drop held-out images; reject empty captions and captions with control tokens (stage "text")."""

    def __init__(self, exclude: frozenset):
        self.exclude = exclude

    def process(self, item):
        if self.exclude and canonical_image_id(item["image_id"]) in self.exclude:
            yield stat("excluded_holdout_images")
            return
        caption = item["caption"]
        if not isinstance(caption, str) or not caption.strip():
            yield reject(item["source"], "text", "empty_caption", f"caption is {caption!r}")
            return
        tokens = find_special_tokens(caption)
        if tokens:
            yield reject(item["source"], "text", "control_tokens", " ".join(dict.fromkeys(tokens)))
            return
        if item["grit"] is not None:
            spans = sorted({(int(e[0]), int(e[1])) for e in item["grit"]["noun_chunks"]})
            item = {**item, "phrases": [caption[s:e] for s, e in spans]}
        yield item
