"""Pixel boxes: conversion, clipping, validation, IoU and NMS. Boxes are xyxy floats in pixels."""
from __future__ import annotations

import math
from typing import Sequence

from groundforge.transforms.errors import ReasonError


class BoxError(ReasonError):
    """A box that cannot be used. `reason` is the reject reason (snake_case)."""


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def clip(box: Sequence[float], width: float, height: float) -> list[float]:
    x1, y1, x2, y2 = box
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
            min(max(x2, 0.0), width), min(max(y2, 0.0), height)]


def checked_box(box: Sequence[float], width: float, height: float) -> list[float]:
    """Validate an xyxy pixel box and clip it to the image.

    Raises BoxError with reason `bad_box` (wrong length, not numbers), `nan_box`, `inverted_box`,
    `outside_image` (nothing left after clipping) or `empty_box` (zero width or height).
    """
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        raise BoxError("bad_box", f"not numbers: {box!r}") from None
    if len(vals) != 4:
        raise BoxError("bad_box", f"expected 4 numbers, got {len(vals)}")
    if any(math.isnan(v) or math.isinf(v) for v in vals):
        raise BoxError("nan_box", f"{vals}")
    x1, y1, x2, y2 = vals
    if x2 < x1 or y2 < y1:
        raise BoxError("inverted_box", f"{vals}")
    if x2 == x1 or y2 == y1:
        raise BoxError("empty_box", f"{vals}")
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise BoxError("outside_image", f"{vals} outside {width}x{height}")
    clipped = clip(vals, width, height)
    if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
        raise BoxError("empty_box", f"{vals} clipped to {clipped}")
    return clipped


def area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix2 - ix1) * max(0.0, iy2 - iy1)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def nms(boxes: Sequence[Sequence[float]], scores: Sequence[float], iou_threshold: float) -> list[int]:
    """Greedy NMS. Returns kept indices, highest score first; ties keep the earlier index."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= iou_threshold for k in keep):
            keep.append(i)
    return keep
