"""Qwen2.5-VL: JSON `[{"bbox_2d": [x1, y1, x2, y2], "label": "t"}]` in absolute pixels of the resized image.

The frame is the image as qwen-vl-utils' `fetch_image` resizes it (QwenLM/Qwen2.5-VL
qwen-vl-utils/src/qwen_vl_utils/vision_process.py, used by ms-swift): `smart_resize` with factor 28 and
min_pixels 3136 / max_pixels 12845056, the values of the released Qwen2.5-VL preprocessor_config.json.
Grounded captions are the caption followed by the fenced JSON list, as Qwen2.5-VL answers and as the
cookbook's `parse_json` (spatial_understanding.ipynb) and supervision read it.
"""
from __future__ import annotations

import json
import math
import re

from groundforge.transforms.formats.base import (
    DEFAULT_OPTIONS,
    EOS_RE,
    Codec,
    Decoded,
    FormatOptions,
    clamp,
    clean_label,
    floats,
    ints,
    size,
)

FACTOR = 28
MAX_RATIO = 200


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = DEFAULT_OPTIONS.qwen_min_pixels,
                 max_pixels: int = DEFAULT_OPTIONS.qwen_max_pixels) -> tuple[int, int]:
    """(height, width) of the image Qwen2-VL / Qwen2.5-VL sees, as qwen-vl-utils computes it: sides are
    multiples of `factor` (at least one factor), pixel count within [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, "
                         f"got {max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar <= 0 or w_bar <= 0:
        raise ValueError(f"max_pixels {max_pixels} leaves no pixels for a {width}x{height} image")
    return h_bar, w_bar


_JSON = " Report bbox coordinates in JSON format."
_CAPTION = (
    "Describe the image in one sentence, then locate every object you mention and report their bbox "
    "coordinates in JSON format.",
    "Write a short caption for this image, then output the bounding boxes of the objects it mentions "
    "in JSON format.",
)
_DETECT = (
    "Locate every instance that belongs to the following categories: \"{classes}\". "
    "Report bbox coordinates in JSON format.",
    "Detect all objects of these classes in the image: {classes}. Output their bbox coordinates in JSON format.",
)


class Qwen25VLCodec(Codec):
    """Coordinates: round(v / size * resized_size), clamped to the resized image."""

    name = "qwen25vl"
    special_patterns = (r"<\|[^<>|\s]+\|>",)  # <|box_start|>, <|im_end|>, <|vision_start|>, ...
    _FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.S)
    _FLAT_OBJ_RE = re.compile(r"\{[^{}]*\}")

    def __init__(self, min_pixels: int = DEFAULT_OPTIONS.qwen_min_pixels,
                 max_pixels: int = DEFAULT_OPTIONS.qwen_max_pixels):
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)

    def __repr__(self):
        return f"Qwen25VLCodec(min_pixels={self.min_pixels}, max_pixels={self.max_pixels})"

    def __eq__(self, other):
        return isinstance(other, Qwen25VLCodec) and (self.min_pixels, self.max_pixels) == (
            other.min_pixels, other.max_pixels)

    def __hash__(self):
        return hash((self.name, self.min_pixels, self.max_pixels))

    # -- frame ------------------------------------------------------------------------------------------

    def configured(self, options: FormatOptions):
        return Qwen25VLCodec(options.qwen_min_pixels, options.qwen_max_pixels)

    def frame(self, w, h):
        rw, rh = self.resized(w, h)
        return {"format": self.name, "factor": FACTOR, "min_pixels": self.min_pixels,
                "max_pixels": self.max_pixels, "width": rw, "height": rh}

    def from_frame(self, frame):
        if not isinstance(frame, dict) or frame.get("format") != self.name:
            return self
        try:
            return Qwen25VLCodec(int(frame["min_pixels"]), int(frame["max_pixels"]))
        except (KeyError, TypeError, ValueError):
            return self

    def resized(self, w: float, h: float) -> tuple[int, int]:
        """(width, height) of the image the model sees."""
        h_bar, w_bar = smart_resize(int(h), int(w), FACTOR, self.min_pixels, self.max_pixels)
        return w_bar, h_bar

    # -- prompts ----------------------------------------------------------------------------------------

    def paraphrases(self, task, shared):
        if task in ("rec", "phrase_grounding"):
            return tuple(p + _JSON for p in shared)
        if task == "grounded_caption":
            return _CAPTION
        if task == "detection":
            return _DETECT
        return shared

    # -- box text ---------------------------------------------------------------------------------------

    def quantize(self, box, w, h):
        x1, y1, x2, y2 = floats(box)
        w, h = size(w, h)
        rw, rh = self.resized(w, h)
        return (clamp(round(x1 / w * rw), 0, rw), clamp(round(y1 / h * rh), 0, rh),
                clamp(round(x2 / w * rw), 0, rw), clamp(round(y2 / h * rh), 0, rh))

    def dequantize(self, q, w, h):
        w, h = size(w, h)
        rw, rh = self.resized(w, h)
        x1, y1, x2, y2 = ints(q, 4)
        x1, x2 = clamp(x1, 0, rw), clamp(x2, 0, rw)
        y1, y2 = clamp(y1, 0, rh), clamp(y2, 0, rh)
        return [x1 * w / rw, y1 * h / rh, x2 * w / rw, y2 * h / rh]

    def bin_size(self, w, h):
        rw, rh = self.resized(w, h)
        return w / rw, h / rh

    def box_text(self, box, w, h):
        return json.dumps(list(self.quantize(box, w, h)))

    def boxes_text(self, boxes, w, h):
        return json.dumps([{"bbox_2d": list(self.quantize(b, w, h))} for b in boxes])

    def entries(self, items, w, h) -> list[dict]:
        """(label, box) pairs -> the JSON entries of the answer."""
        return [{"bbox_2d": list(self.quantize(box, w, h)), "label": label} for label, box in items]

    def phrase_text(self, label, boxes, w, h):
        return json.dumps(self.entries([(label, b) for b in boxes], w, h), ensure_ascii=False)

    def objects_text(self, items, w, h):
        return json.dumps(self.entries(items, w, h), ensure_ascii=False)

    def caption_text(self, caption, groups, w, h):
        items = [(caption[s:e], b) for s, e, boxes in groups for b in boxes]
        return f"{caption}\n```json\n{self.objects_text(items, w, h)}\n```"

    def decode(self, text, w, h):
        try:
            self.resized(w, h)
        except ValueError:  # an aspect ratio Qwen2.5-VL cannot take: nothing to decode
            return []
        text = EOS_RE.sub("", text or "")
        fenced = self._FENCE_RE.search(text)
        body = fenced.group(1) if fenced else text
        try:
            found = [json.loads(body)]
        except ValueError:  # prose around the JSON, or truncated output: keep the complete {...} entries
            found = []
            for m in self._FLAT_OBJ_RE.finditer(body):
                try:
                    found.append(json.loads(m.group(0)))
                except ValueError:
                    continue
        out: Decoded = []
        for label, raw in _bbox_entries(found):
            try:
                box = self.dequantize([round(float(v)) for v in raw], w, h)
            except (TypeError, ValueError, OverflowError):
                continue
            out.append((clean_label(label) if isinstance(label, str) else str(label), box))
        return out


def _is_box(value) -> bool:
    return (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def _bbox_entries(value) -> list[tuple[object, list]]:
    """(label, box) of every dict with a 4-number `bbox_2d` (and of bare 4-number lists), in document order."""
    if isinstance(value, dict):
        if _is_box(value.get("bbox_2d")):
            return [(value.get("label", ""), value["bbox_2d"])]
        return [e for v in value.values() for e in _bbox_entries(v)]
    if _is_box(value):
        return [("", value)]
    if isinstance(value, list):
        return [e for v in value for e in _bbox_entries(v)]
    return []
