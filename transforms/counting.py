"""Counting questions from COCO-style detection annotations.

Rules (issue 2): a category that is another category's supercategory and owns no annotations is the
Roboflow export root and is dropped; images without annotations count zero for every class; a class with
an `iscrowd` region (or an annotation whose box is unusable) has no exact count in that image, so no
question covering it is asked there: that class is skipped (a stat, not a reject: the image and its other
classes are still asked); a box partly outside the image is clipped and still counts, one fully outside is
not in the image and is not counted.

count_class questions name the class as `templates.class_name` reads it (`--class-names` entries first) and
carry that reading in meta (`class_display`, `class_plural`, `class_quoted`), so rendering never guesses.
`max_zero_ratio` caps, per image, the share of count_class questions whose answer is 0 (on COCO 94-96% are);
which zero questions stay is chosen by a seeded hash of image and class, so runs are identical.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

from groundforge.transforms.boxes import BoxError, checked_box, xywh_to_xyxy
from groundforge.transforms.records import make_object, make_record, record_id, reject
from groundforge.transforms.templates import ClassName, class_name


@dataclass
class Categories:
    classes: list[str]              # class order = category id order, root dropped
    by_id: dict[int, str]
    dropped_roots: list[str] = field(default_factory=list)


def categories_from_coco(categories: list[dict], annotations: list[dict]) -> Categories:
    owned = Counter(a.get("category_id") for a in annotations if isinstance(a.get("category_id"), (int, str)))
    supers = {c.get("supercategory") for c in categories}
    kept, roots = [], []
    for cat in sorted(categories, key=lambda c: c["id"]):
        if cat["name"] in supers and owned[cat["id"]] == 0 and cat.get("supercategory") != cat["name"]:
            roots.append(cat["name"])
        else:
            kept.append(cat)
    names = [c["name"] for c in kept]
    if len(set(names)) != len(names):
        dupes = sorted(n for n, k in Counter(names).items() if k > 1)
        raise ValueError(f"duplicate category names: {dupes}")
    return Categories(names, {c["id"]: c["name"] for c in kept}, roots)


@dataclass
class ImageCounts:
    objects: list[dict]             # counted boxes, class order then annotation order
    counts: dict[str, int]          # every class, zero included
    uncertain: dict[str, str]       # class -> reason the count is not exact (crowd, bad box)
    rejects: list[dict]


def count_image(annotations: list[dict], cats: Categories, width: int, height: int) -> ImageCounts:
    counts = {name: 0 for name in cats.classes}
    boxes: dict[str, list[dict]] = {name: [] for name in cats.classes}
    uncertain: dict[str, str] = {}
    rejects = []
    for ann in annotations:
        source = f"annotation:{ann.get('id')}"
        category_id = ann.get("category_id")
        name = cats.by_id.get(category_id) if isinstance(category_id, (int, str)) else None
        if name is None:
            rejects.append(reject(source, "annotation", "unknown_category", f"category_id={category_id}"))
            continue
        if ann.get("iscrowd"):
            uncertain[name] = "crowd_region"
            continue
        try:
            bbox = ann["bbox"]
            box = checked_box(xywh_to_xyxy(bbox), width, height)
        except BoxError as err:
            rejects.append(reject(source, "annotation", err.reason, err.detail))
            if err.reason != "outside_image":
                uncertain[name] = "bad_box_in_class"
            continue
        except (KeyError, TypeError, ValueError) as exc:
            rejects.append(reject(source, "annotation", "bad_box", repr(exc)))
            uncertain[name] = "bad_box_in_class"
            continue
        counts[name] += 1
        boxes[name].append(make_object(name, box))
    objects = [obj for name in cats.classes for obj in boxes[name]]
    return ImageCounts(objects, counts, uncertain, rejects)


class ImageRecords(NamedTuple):
    records: list[dict]      # unrendered `counting` / `count_class` records
    skipped: list[tuple]     # (class, reason) of the classes not asked in this image (crowd_region, bad_box_in_class)
    stats: Counter           # count_class_skipped_<reason>, counting_skipped_uncertain_class, count_class_zero_dropped


def zero_rank(seed: int, image_id: str, name: str) -> bytes:
    """Seeded rank of a zero-answer question within its image; the lowest ranks are kept."""
    return hashlib.sha256(f"{seed}\x1f{image_id}\x1f{name}".encode("utf-8")).digest()


def zeros_allowed(nonzero: int, max_zero_ratio: float) -> int:
    """How many zero-answer questions an image with `nonzero` non-zero ones may keep so that zeros make at most
    `max_zero_ratio` of its count_class questions: z / (nonzero + z) <= r, i.e. z <= r * nonzero / (1 - r)."""
    if max_zero_ratio >= 1:
        return 2 ** 31
    return int(max_zero_ratio * nonzero / (1 - max_zero_ratio) + 1e-9)


def image_records(base: dict, image_counts: ImageCounts, classes: list[str], dataset: str, source_meta: dict, *,
                  class_names: Mapping[str, ClassName] | None = None, max_zero_ratio: float | None = None,
                  seed: int = 0) -> ImageRecords:
    """Unrendered `counting` and `count_class` records for one image.

    `base` holds the image fields of make_record (split, image, image_id, width, height, image_sha256).
    A class without an exact count (crowd region, unusable box) is skipped: no count_class question for it and
    no all-class `counting` question for the image; the other classes are still asked. `class_names` (from
    `load_class_names`) overrides how prompts name a class. `max_zero_ratio` (0..1, None = keep all): at most this
    share of the image's count_class questions may have the answer 0; the zero questions kept are those of lowest
    `zero_rank(seed, image_id, class)`, the rest are counted as `count_class_zero_dropped`.
    """
    if max_zero_ratio is not None and not 0 <= max_zero_ratio <= 1:
        raise ValueError(f"max_zero_ratio must be within 0..1, got {max_zero_ratio}")
    ic = image_counts
    image_id = base["image_id"]
    stats: Counter = Counter()
    records, skipped = [], []
    for name, why in sorted(ic.uncertain.items()):
        skipped.append((name, why))
        stats[f"count_class_skipped_{why}"] += 1
    if ic.uncertain:
        stats["counting_skipped_uncertain_class"] += 1
    else:
        records.append(make_record(
            id=record_id(dataset, image_id, "counting", ""), dataset=dataset, task="counting",
            objects=ic.objects, caption=None, meta={**source_meta, "classes": list(classes)}, **base))
    asked = [name for name in classes if name not in ic.uncertain]
    keep = set(asked)
    if max_zero_ratio is not None:
        zeros = [name for name in asked if ic.counts[name] == 0]
        allowed = zeros_allowed(len(asked) - len(zeros), max_zero_ratio)
        dropped = sorted(zeros, key=lambda n: zero_rank(seed, image_id, n))[allowed:]
        keep -= set(dropped)
        if dropped:
            stats["count_class_zero_dropped"] += len(dropped)
    names = class_names or {}
    for name in asked:
        if name not in keep:
            continue
        named = names.get(name) or class_name(name)
        records.append(make_record(
            id=record_id(dataset, image_id, "count_class", name), dataset=dataset, task="count_class",
            objects=[o for o in ic.objects if o["label"] == name], caption=name,
            meta={**source_meta, "class": name, "count": ic.counts[name], "class_display": named.display,
                  "class_plural": named.phrase, "class_quoted": named.quoted}, **base))
    return ImageRecords(records, skipped, +stats)


# --- --class-names -------------------------------------------------------------------------------------------

def load_class_names(text: str, source: str = "--class-names") -> dict[str, ClassName]:
    """Parse a `--class-names` JSON file: an object mapping a source class name to its display name, or to
    {"name": display, "plural": plural}; e.g. {"8": "eight ball", "rbc": {"name": "red blood cell"},
    "minus": {"name": "minus sign", "plural": "minus signs"}}. Raises ValueError naming the bad entry."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{source}: not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object mapping class names to display names")
    out = {}
    for key, value in data.items():
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict) or set(value) - {"name", "plural"} or not isinstance(value.get("name"), str):
            raise ValueError(f"{source}: entry {key!r} must be a string or {{\"name\": ..., \"plural\": ...}}")
        plural_form = value.get("plural")
        if plural_form is not None and (not isinstance(plural_form, str) or not plural_form.strip()):
            raise ValueError(f"{source}: entry {key!r} has an empty or non-string plural")
        if not value["name"].strip():
            raise ValueError(f"{source}: entry {key!r} has an empty name")
        out[key] = class_name(key, value["name"], plural_form)
    return out
