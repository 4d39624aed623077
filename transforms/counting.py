"""Counting questions from COCO-style detection annotations.

Rules (issue 2): a category that is another category's supercategory and owns no annotations is the
Roboflow export root and is dropped; images without annotations count zero for every class; a class with
an `iscrowd` region (or an annotation whose box is unusable) has no exact count in that image, so no
question covering it is asked there; a box partly outside the image is clipped and still counts, one
fully outside is not in the image and is not counted.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from groundforge.transforms.boxes import BoxError, checked_box, xywh_to_xyxy
from groundforge.transforms.records import make_object, make_record, record_id, reject


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


def counting_records(base: dict, image_counts: ImageCounts, classes: list[str], dataset: str,
                     source_meta: dict) -> tuple[list[dict], list[dict]]:
    """Unrendered `counting` and `count_class` records for one image, plus skip rows for uncertain classes.

    `base` holds the image fields of make_record (split, image, image_id, width, height, image_sha256).
    """
    records, skipped = [], []
    ic = image_counts
    image_id = base["image_id"]
    if ic.uncertain:
        for name, why in sorted(ic.uncertain.items()):
            skipped.append(reject(f"image:{image_id}", "counting", why, f"no counting question covers {name!r}"))
    else:
        records.append(make_record(
            id=record_id(dataset, image_id, "counting", ""), dataset=dataset, task="counting",
            objects=ic.objects, caption=None, meta={**source_meta, "classes": list(classes)}, **base))
    for name in classes:
        if name in ic.uncertain:
            continue
        records.append(make_record(
            id=record_id(dataset, image_id, "count_class", name), dataset=dataset, task="count_class",
            objects=[o for o in ic.objects if o["label"] == name], caption=name,
            meta={**source_meta, "class": name, "count": ic.counts[name]}, **base))
    return records, skipped
