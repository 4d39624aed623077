"""COCO detection input (`instances_*.json` or a Roboflow `_annotations.coco.json` + image dir).

The JSON file is read inside a DoFn (not in the driver), then fanned out to one element per image.
"""
from __future__ import annotations

import json
from collections import defaultdict

import apache_beam as beam

from pipeline import fs
from transforms.counting import categories_from_coco
from transforms.images import DEFAULT_MAX_PIXELS, ImageError, prepare_image
from transforms.paths import safe_join
from transforms.records import reject

REJECTS = "rejects"
STATS = "stats"


def parse_coco(data: bytes, source: str):
    """-> (coco dict, None) or (None, reject row) for malformed JSON or a file that is not COCO."""
    try:
        coco = json.loads(data)
    except ValueError as exc:
        return None, reject(source, "read", "malformed_json", str(exc))
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) \
            or not isinstance(coco.get("categories"), list):
        return None, reject(source, "read", "not_coco", "expected an object with 'images' and 'categories' lists")
    return coco, None


def image_items(coco: dict, source: str):
    """Yield ("image", item) per image and ("reject", row) per unusable image/annotation entry."""
    annotations = [a for a in coco.get("annotations") or [] if isinstance(a, dict)]
    cats = categories_from_coco(coco["categories"], annotations)
    images = {}
    for entry in coco["images"]:
        missing = [k for k in ("id", "file_name", "width", "height") if not isinstance(entry, dict) or k not in entry]
        if missing:
            yield "reject", reject(f"{source}:image:{entry.get('id') if isinstance(entry, dict) else entry!r}",
                                   "read", "missing_field", f"missing {missing}")
            continue
        images[entry["id"]] = entry
    by_image = defaultdict(list)
    for ann in annotations:
        if ann.get("image_id") not in images:
            yield "reject", reject(f"annotation:{ann.get('id')}", "read", "unknown_image",
                                   f"image_id={ann.get('image_id')}")
            continue
        by_image[ann["image_id"]].append(ann)
    for image_id, entry in images.items():
        yield "image", {"image": entry, "annotations": by_image.get(image_id, []),
                        "classes": cats.classes, "category_names": cats.by_id, "source": source}


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
    """Read and check one image under the root -> (bytes to store, ImageInfo).

    Raises PathError or ImageError (reasons: absolute_path, path_traversal, link_escapes_root,
    missing_image, empty_image, undecodable_image, truncated_image, decompression_bomb).
    """
    path = safe_join(images_root, file_name)
    if not fs.exists(path):
        raise ImageError("missing_image", path)
    return prepare_image(fs.read_bytes(path), max_pixels)

