"""COCO detection input (`instances_*.json` or a Roboflow `_annotations.coco.json` + image dir).

The JSON file is read inside a DoFn (not in the driver), then fanned out to one element per image.
"""
from __future__ import annotations

import json
from collections import defaultdict

import apache_beam as beam

from groundforge.pipeline import fs
from groundforge.pipeline.readers.refer import positive_int
from groundforge.transforms.counting import categories_from_coco
from groundforge.transforms.images import DEFAULT_MAX_PIXELS, ImageError, prepare_image
from groundforge.transforms.paths import safe_join
from groundforge.transforms.records import reject

REJECTS = "rejects"
STATS = "stats"


def parse_coco(data: bytes, source: str):
    """-> (coco dict, None) or (None, reject row) for malformed JSON or a file that is not COCO."""
    try:
        coco = json.loads(data)
    except ValueError as exc:
        return None, reject(source, "read", "malformed_json", str(exc))
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) \
            or not isinstance(coco.get("categories"), list) \
            or not isinstance(coco.get("annotations", []), list):
        return None, reject(source, "read", "not_coco",
                            "expected an object with 'images' and 'categories' lists (and an 'annotations' list)")
    return coco, None


def image_items(coco: dict, source: str):
    """Yield ("image", item) per image and ("reject", row) per unusable image/annotation entry.

    Nothing is dropped silently: a non-object annotation, an image entry without a usable id or size, a
    repeated image id and an annotation on an unknown image are each a read reject; categories that
    cannot be used (missing keys, duplicate names) reject the whole file."""
    annotations = []
    for position, ann in enumerate(coco.get("annotations") or []):
        if isinstance(ann, dict):
            annotations.append(ann)
        else:
            yield "reject", reject(f"{source}:annotation#{position}", "read", "bad_row", f"not an object: {ann!r}")
    try:
        cats = categories_from_coco(coco["categories"], annotations)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        yield "reject", reject(source, "read", "bad_categories", f"{type(exc).__name__}: {exc}")
        return
    images = {}
    for entry in coco["images"]:
        problem = _image_entry_problem(entry, images)
        if problem:
            label = entry.get("id") if isinstance(entry, dict) else repr(entry)[:80]
            yield "reject", reject(f"{source}:image:{label}", "read", *problem)
            continue
        images[entry["id"]] = entry
    by_image = defaultdict(list)
    for ann in annotations:
        image_id = ann.get("image_id")
        if not _is_id(image_id) or image_id not in images:
            yield "reject", reject(f"annotation:{ann.get('id')}", "read", "unknown_image", f"image_id={image_id}")
            continue
        by_image[image_id].append(ann)
    for image_id, entry in images.items():
        yield "image", {"image": entry, "annotations": by_image.get(image_id, []),
                        "classes": cats.classes, "category_names": cats.by_id, "source": source}


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _image_entry_problem(entry, seen: dict) -> tuple[str, str] | None:
    """(reason, detail) when an image entry cannot be used, else None."""
    if not isinstance(entry, dict):
        return "bad_row", "image entry is not an object"
    missing = [k for k in ("id", "file_name", "width", "height") if k not in entry]
    if missing:
        return "missing_field", f"missing {missing}"
    if not isinstance(entry["file_name"], str) or not entry["file_name"]:
        return "missing_field", f"file_name must be a non-empty string, got {entry['file_name']!r}"
    if not _is_id(entry["id"]):
        return "bad_id", f"id must be an integer or a string, got {entry['id']!r}"
    if entry["id"] in seen:
        return "duplicate_image_id", f"image id {entry['id']!r} appears more than once"
    if positive_int(entry["width"]) is None or positive_int(entry["height"]) is None:
        return "bad_size", f"width and height must be positive integers, got {entry['width']!r}x{entry['height']!r}"
    return None


class ExpandCoco(beam.DoFn):
    """COCO file path -> one element per image; malformed files and entries go to rejects."""

    def process(self, path: str):
        coco, bad = parse_coco(fs.read_bytes(path), path)
        if bad:
            yield beam.pvalue.TaggedOutput(REJECTS, bad)
            return
        for kind, value in image_items(coco, path):
            if kind == "image":
                yield value
            else:
                yield beam.pvalue.TaggedOutput(REJECTS, value)


def load_image(images_root: str, file_name: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """pipeline.image_files.load_image with the default byte cap (kept here for the builders that import it)."""
    from groundforge.pipeline.image_files import load_image as load

    return load(images_root, file_name, max_pixels)
