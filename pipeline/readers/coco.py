"""COCO detection input (`instances_*.json` or a Roboflow `_annotations.coco.json` + image dir).

Plain Python (no Beam): the counting builder reads the JSON file inside a DoFn (not in the driver) and fans it
out to one element per image with `image_items`.
"""
from __future__ import annotations

from collections import defaultdict

from groundforge.pipeline.readers.coco_stream import read_json_object
from groundforge.pipeline.readers.common import loads_json, positive_int, rejected
from groundforge.transforms.counting import categories_from_coco
from groundforge.transforms.records import reject


def read_coco(path: str):
    """(coco dict, None) or (None, reject row) for a COCO file; a large one is streamed (`read_json_object`)."""
    try:
        coco = read_json_object(path)
    except ValueError as exc:
        return None, reject(path, "read", "malformed_json", str(exc))
    return check_coco(coco, path)


def parse_coco(data: bytes, source: str):
    """-> (coco dict, None) or (None, reject row) for malformed JSON or a file that is not COCO."""
    try:
        coco = loads_json(data)
    except ValueError as exc:
        return None, reject(source, "read", "malformed_json", str(exc))
    return check_coco(coco, source)


def check_coco(coco, source: str):
    """A parsed COCO file -> (coco dict, None) or (None, a `not_coco` reject row)."""
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) \
            or not isinstance(coco.get("categories"), list) \
            or not isinstance(coco.get("annotations", []), list):
        return None, reject(source, "read", "not_coco",
                            "expected an object with 'images' and 'categories' lists (and an 'annotations' list)")
    return coco, None


def image_items(coco: dict, source: str):
    """Yield an item per image and a `Rejected` per unusable image/annotation entry (readers/common.py).

    Nothing is dropped silently: a non-object annotation, an image entry without a usable id or size, a
    repeated image id and an annotation on an unknown image are each a read reject; categories that
    cannot be used (missing keys, duplicate names) reject the whole file."""
    annotations, ann_ids = [], set()
    for position, ann in enumerate(coco.get("annotations") or []):
        if isinstance(ann, dict) and _is_id(ann.get("id")) and ann["id"] in ann_ids:
            yield rejected(f"{source}:annotation:{ann['id']}", "duplicate_annotation_id",
                           f"annotation id {ann['id']!r} appears more than once; the first is counted")
        elif isinstance(ann, dict):
            if _is_id(ann.get("id")):
                ann_ids.add(ann["id"])
            annotations.append(ann)
        else:
            yield rejected(f"{source}:annotation#{position}", "bad_row", f"not an object: {ann!r}")
    try:
        cats = categories_from_coco(coco["categories"], annotations)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        yield rejected(source, "bad_categories", f"{type(exc).__name__}: {exc}")
        return
    images = {}
    for entry in coco["images"]:
        problem = _image_entry_problem(entry, images)
        if problem:
            label = entry.get("id") if isinstance(entry, dict) else repr(entry)[:80]
            yield rejected(f"{source}:image:{label}", *problem)
            continue
        images[entry["id"]] = entry
    by_image = defaultdict(list)
    for ann in annotations:
        image_id = ann.get("image_id")
        if not _is_id(image_id) or image_id not in images:
            yield rejected(f"annotation:{ann.get('id')}", "unknown_image", f"image_id={image_id}")
            continue
        by_image[image_id].append(ann)
    for image_id, entry in images.items():
        yield {"image": entry, "annotations": by_image.get(image_id, []),
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
