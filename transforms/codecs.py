"""Loc-token codecs: pixel xyxy boxes <-> the box text of each target model format.

Every codec has the same interface (see `Codec`). `quantize` returns the integers in the order they appear
in the text (PaliGemma: y first; Kosmos-2: two patch indices), `dequantize` maps them back to pixel xyxy.
No codec ever emits a token outside its model's vocabulary: values are clamped to the valid range.
`decode` parses model output and never raises on junk or truncated text.
"""
from __future__ import annotations

import json
import math
import re
from typing import Iterable, Sequence

FORMATS = ("florence2", "kosmos2", "paligemma", "qwen2vl", "qwen25vl", "shikra")

Decoded = list[tuple[str, list[float]]]

# ---------------------------------------------------------------------------------------------------------
# control tokens of every format (used to reject text that would inject them)

_TAG_NAMES = (
    # Kosmos-2
    "phrase", "object", "grounding", "doc", "image", "chunk", "line",
    # sentencepiece / Gemma / BART specials
    "s", "pad", "unk", "eos", "bos", "mask", "start_of_turn", "end_of_turn", "start_of_image", "end_of_image",
    # Florence-2 added tokens
    "od", "ocr", "cap", "ncap", "dcap", "seg", "sep", "and", "region_cap", "region_to_desciption",
    "proposal", "poly", "quad", "ground", "obj", "box", "bbox",
    # LLaVA / Shikra / Qwen-VL
    "im_patch", "im_start", "im_end", "ref",
)
_FLORENCE_TASKS = (
    "OCR", "OCR_WITH_REGION", "CAPTION", "DETAILED_CAPTION", "MORE_DETAILED_CAPTION", "OD",
    "DENSE_REGION_CAPTION", "REGION_PROPOSAL", "CAPTION_TO_PHRASE_GROUNDING",
    "REFERRING_EXPRESSION_SEGMENTATION", "REGION_TO_SEGMENTATION", "OPEN_VOCABULARY_DETECTION",
    "REGION_TO_CATEGORY", "REGION_TO_DESCRIPTION", "REGION_TO_OCR",
)
_SPECIAL_RE = re.compile("|".join((
    r"<loc_\d+>",                                   # Florence-2
    r"<loc\d+>", r"<seg\d+>", r"<unused\d+>",       # PaliGemma / Gemma
    r"<patch_index_\d+>",                           # Kosmos-2
    r"</delimiter_of_multi_objects/>",
    r"<\|[^<>|\s]+\|>",                             # Qwen <|box_start|>, <|im_end|>, ...
    r"</?(?:" + "|".join(_TAG_NAMES) + r")>",
    r"<(?:" + "|".join(_FLORENCE_TASKS) + r")>",
    r"<[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+>",             # any other Florence-2 style task token
)))


def find_special_tokens(text: str) -> list[str]:
    """Control tokens of any supported format found in `text`, in order of occurrence."""
    if not text:
        return []
    return [m.group(0) for m in _SPECIAL_RE.finditer(text)]


# ---------------------------------------------------------------------------------------------------------
# helpers

def _clamp(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else hi if v > hi else v


def _floats(box: Sequence[float]) -> list[float]:
    vals = [float(v) for v in box]
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"box must be 4 finite numbers, got {box!r}")
    return vals


def _size(w: float, h: float) -> tuple[float, float]:
    if not (w > 0 and h > 0):
        raise ValueError(f"image size must be positive, got {w}x{h}")
    return float(w), float(h)


def _ints(q: Iterable, n: int) -> list[int]:
    vals = [int(v) for v in q]
    if len(vals) != n:
        raise ValueError(f"expected {n} quantized values, got {len(vals)}")
    return vals


_EOS_RE = re.compile(r"</?s>|<pad>|<eos>|<bos>|<\|im_end\|>|<\|endoftext\|>")


def _clean_label(text: str) -> str:
    """A label parsed from model output: no sequence-control tokens, no surrounding blanks."""
    return _EOS_RE.sub("", text).strip()


def _group_by_label(items: Sequence[tuple[str, Sequence[float]]]) -> list[tuple[str, list]]:
    """(label, box) pairs -> (label, boxes) in first-occurrence order of the labels."""
    groups: dict[str, list] = {}
    for label, box in items:
        groups.setdefault(label, []).append(box)
    return list(groups.items())


# ---------------------------------------------------------------------------------------------------------
# codecs

class Codec:
    """Base class. Subclasses define quantize/dequantize/box_text/boxes_text/phrase_text/decode/bin_size."""

    name = ""

    def quantize(self, box: Sequence[float], w: float, h: float) -> tuple[int, ...]:
        raise NotImplementedError

    def dequantize(self, q: Sequence[int], w: float, h: float) -> list[float]:
        raise NotImplementedError

    def bin_size(self, w: float, h: float) -> tuple[float, float]:
        """Pixel width and height of one quantization bin (decode(encode(b)) is within one bin of b)."""
        raise NotImplementedError

    def box_text(self, box: Sequence[float], w: float, h: float) -> str:
        """One box, no label."""
        raise NotImplementedError

    def boxes_text(self, boxes: Sequence[Sequence[float]], w: float, h: float) -> str:
        """All boxes of one phrase, no label."""
        return "".join(self.box_text(b, w, h) for b in boxes)

    def phrase_text(self, label: str, boxes: Sequence[Sequence[float]], w: float, h: float) -> str:
        """One grounded phrase with its boxes, in the model's markup."""
        raise NotImplementedError

    def objects_text(self, items: Sequence[tuple[str, Sequence[float]]], w: float, h: float) -> str:
        """A detection answer: (label, box) pairs. Default: one phrase per label, first-occurrence order."""
        return "".join(self.phrase_text(label, boxes, w, h) for label, boxes in _group_by_label(items))

    def decode(self, text: str, w: float, h: float) -> Decoded:
        """Model output -> [(label, pixel xyxy box)], one entry per box; '' where no label is attached."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _RoundedCodec(Codec):
    """Coordinates as round(v / size * top) clamped to 0..top, in x1, y1, x2, y2 order; decode q / top * size."""

    top = 1000

    def quantize(self, box, w, h):
        x1, y1, x2, y2 = _floats(box)
        w, h = _size(w, h)
        t = self.top
        return (_clamp(round(x1 / w * t), 0, t), _clamp(round(y1 / h * t), 0, t),
                _clamp(round(x2 / w * t), 0, t), _clamp(round(y2 / h * t), 0, t))

    def dequantize(self, q, w, h):
        w, h = _size(w, h)
        x1, y1, x2, y2 = (_clamp(v, 0, self.top) for v in _ints(q, 4))
        t = self.top
        return [x1 * w / t, y1 * h / t, x2 * w / t, y2 * h / t]

    def bin_size(self, w, h):
        return w / self.top, h / self.top


class Florence2Codec(Codec):
    """`<loc_x1><loc_y1><loc_x2><loc_y2>`, 1000 bins per side, as transformers' Florence2PostProcessor."""

    name = "florence2"
    bins = 1000
    _LOCS_RE = re.compile(r"(?:<loc_\d+>)+")
    _LOC_RE = re.compile(r"<loc_(\d+)>")

    def quantize(self, box, w, h):
        x1, y1, x2, y2 = _floats(box)
        w, h = _size(w, h)
        per_w, per_h = w / self.bins, h / self.bins
        top = self.bins - 1
        return (_clamp(math.floor(x1 / per_w), 0, top), _clamp(math.floor(y1 / per_h), 0, top),
                _clamp(math.floor(x2 / per_w), 0, top), _clamp(math.floor(y2 / per_h), 0, top))

    def dequantize(self, q, w, h):
        w, h = _size(w, h)
        per_w, per_h = w / self.bins, h / self.bins
        x1, y1, x2, y2 = (_clamp(v, 0, self.bins - 1) for v in _ints(q, 4))
        return [(x1 + 0.5) * per_w, (y1 + 0.5) * per_h, (x2 + 0.5) * per_w, (y2 + 0.5) * per_h]

    def bin_size(self, w, h):
        return w / self.bins, h / self.bins

    def box_text(self, box, w, h):
        return "".join(f"<loc_{v}>" for v in self.quantize(box, w, h))

    def phrase_text(self, label, boxes, w, h):
        return label + self.boxes_text(boxes, w, h)

    def objects_text(self, items, w, h):
        # Florence-2 <OD> repeats the label before every box.
        return "".join(self.phrase_text(label, [box], w, h) for label, box in items)

    def decode(self, text, w, h):
        text = text or ""
        out: Decoded = []
        pos = 0
        for run in self._LOCS_RE.finditer(text):
            label = _clean_label(re.sub(r"</?od>|<ground>|<obj>", "", text[pos:run.start()]))
            pos = run.end()
            vals = [int(v) for v in self._LOC_RE.findall(run.group(0))]
            for i in range(0, len(vals) - 3, 4):
                out.append((label, self.dequantize(vals[i:i + 4], w, h)))
        return out


class Kosmos2Codec(Codec):
    """`<object><patch_index_A><patch_index_B></object>` on a 32x32 grid, as transformers' Kosmos2Processor."""

    name = "kosmos2"
    grid = 32
    delimiter = "</delimiter_of_multi_objects/>"
    _OBJECT_RE = re.compile(
        r"(?:<phrase>((?:(?!</?phrase>|<object>).)*)</phrase>\s*)?<object>((?:(?!</?object>).)*?)</object>", re.S)
    _PAIR_RE = re.compile(r"<patch_index_(\d+)>\s*<patch_index_(\d+)>")

    def quantize(self, box, w, h):
        x1, y1, x2, y2 = _floats(box)
        w, h = _size(w, h)
        n = self.grid
        # coordinate_to_patch_index on normalised coordinates, clamped so that every box gives valid indices
        ul_x = _clamp(math.floor(x1 / w * n), 0, n - 1)
        ul_y = _clamp(math.floor(y1 / h * n), 0, n - 1)
        lr_x = _clamp(math.ceil(x2 / w * n - 1), ul_x, n - 1)
        lr_y = _clamp(math.ceil(y2 / h * n - 1), ul_y, n - 1)
        return ul_y * n + ul_x, lr_y * n + lr_x

    def dequantize(self, q, w, h):
        """patch_index_to_coordinate, scaled to pixels."""
        w, h = _size(w, h)
        n = self.grid
        ul, lr = (_clamp(v, 0, n * n - 1) for v in _ints(q, 2))
        cell = 1.0 / n
        ul_x, ul_y, lr_x, lr_y = ul % n, ul // n, lr % n, lr // n
        if ul == lr or ul_x == lr_x or ul_y == lr_y:
            x1, y1, x2, y2 = ul_x * cell, ul_y * cell, lr_x * cell + cell, lr_y * cell + cell
        else:
            x1, y1 = ul_x * cell + cell / 2, ul_y * cell + cell / 2
            x2, y2 = lr_x * cell + cell / 2, lr_y * cell + cell / 2
        return [x1 * w, y1 * h, x2 * w, y2 * h]

    def bin_size(self, w, h):
        return w / self.grid, h / self.grid

    def _pair(self, box, w, h) -> str:
        a, b = self.quantize(box, w, h)
        return f"<patch_index_{a:04d}><patch_index_{b:04d}>"

    def box_text(self, box, w, h):
        return f"<object>{self._pair(box, w, h)}</object>"

    def boxes_text(self, boxes, w, h):
        return "<object>" + self.delimiter.join(self._pair(b, w, h) for b in boxes) + "</object>"

    def phrase_text(self, label, boxes, w, h):
        return f"<phrase>{label}</phrase>" + self.boxes_text(boxes, w, h)

    def decode(self, text, w, h):
        out: Decoded = []
        for m in self._OBJECT_RE.finditer(text or ""):
            label = _clean_label(m.group(1) or "")
            for a, b in self._PAIR_RE.findall(m.group(2)):
                a, b = int(a), int(b)
                if a < self.grid ** 2 and b < self.grid ** 2:
                    out.append((label, self.dequantize((a, b), w, h)))
        return out


class PaliGemmaCodec(_RoundedCodec):
    """`<locY1><locX1><locY2><locX2> label`, 1024 values per side, objects joined by ` ; `."""

    name = "paligemma"
    top = 1023
    _OBJ_RE = re.compile(r"((?:<loc\d{4}>){4})((?:<seg\d{3}>)*)(.*?)(?=;|<loc\d{4}>|$)", re.S)
    _LOC_RE = re.compile(r"<loc(\d{4})>")

    def quantize(self, box, w, h):
        x1, y1, x2, y2 = super().quantize(box, w, h)
        return y1, x1, y2, x2  # y first

    def dequantize(self, q, w, h):
        y1, x1, y2, x2 = _ints(q, 4)
        return super().dequantize((x1, y1, x2, y2), w, h)

    def box_text(self, box, w, h):
        return "".join(f"<loc{v:04d}>" for v in self.quantize(box, w, h))

    def boxes_text(self, boxes, w, h):
        return " ; ".join(self.box_text(b, w, h) for b in boxes)

    def phrase_text(self, label, boxes, w, h):
        return " ; ".join(f"{self.box_text(b, w, h)} {label}" for b in boxes)

    def objects_text(self, items, w, h):
        return " ; ".join(self.phrase_text(label, [box], w, h) for label, box in items)

    def decode(self, text, w, h):
        out: Decoded = []
        for m in self._OBJ_RE.finditer(text or ""):
            vals = [int(v) for v in self._LOC_RE.findall(m.group(1))]
            out.append((_clean_label(m.group(3)), self.dequantize(vals, w, h)))
        return out


class Qwen2VLCodec(_RoundedCodec):
    """`<|object_ref_start|>t<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`, ints 0..1000."""

    name = "qwen2vl"
    top = 1000
    _NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
    _TOKEN_RE = re.compile(
        r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>"
        r"|<\|box_start\|>\s*\(" + _NUM + "," + _NUM + r"\)\s*,\s*\(" + _NUM + "," + _NUM + r"\)\s*<\|box_end\|>",
        re.S)


    def box_text(self, box, w, h):
        x1, y1, x2, y2 = self.quantize(box, w, h)
        return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"

    def phrase_text(self, label, boxes, w, h):
        return f"<|object_ref_start|>{label}<|object_ref_end|>" + self.boxes_text(boxes, w, h)

    def decode(self, text, w, h):
        out: Decoded = []
        label = ""
        for m in self._TOKEN_RE.finditer(text or ""):
            if m.group(2) is None:
                label = _clean_label(m.group(1))
                continue
            q = [round(float(v)) for v in m.group(2, 3, 4, 5)]
            out.append((label, self.dequantize(q, w, h)))
        return out


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """Qwen2-VL / Qwen2.5-VL image resize: sides divisible by `factor`, pixel count within the bounds.

    Same result as transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class Qwen25VLCodec(Codec):
    """JSON `[{"bbox_2d": [x1, y1, x2, y2], "label": "t"}]` in absolute pixels of the smart_resize'd image."""

    name = "qwen25vl"
    _FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.S)
    _FLAT_OBJ_RE = re.compile(r"\{[^{}]*\}")

    @staticmethod
    def resized(w: float, h: float) -> tuple[int, int]:
        """(width, height) of the image the model sees."""
        h_bar, w_bar = smart_resize(int(h), int(w))
        return w_bar, h_bar

    def quantize(self, box, w, h):
        x1, y1, x2, y2 = _floats(box)
        w, h = _size(w, h)
        rw, rh = self.resized(w, h)
        return (_clamp(round(x1 / w * rw), 0, rw), _clamp(round(y1 / h * rh), 0, rh),
                _clamp(round(x2 / w * rw), 0, rw), _clamp(round(y2 / h * rh), 0, rh))

    def dequantize(self, q, w, h):
        w, h = _size(w, h)
        rw, rh = self.resized(w, h)
        x1, y1, x2, y2 = _ints(q, 4)
        x1, x2 = _clamp(x1, 0, rw), _clamp(x2, 0, rw)
        y1, y2 = _clamp(y1, 0, rh), _clamp(y2, 0, rh)
        return [x1 * w / rw, y1 * h / rh, x2 * w / rw, y2 * h / rh]

    def bin_size(self, w, h):
        rw, rh = self.resized(w, h)
        return w / rw, h / rh

    def box_text(self, box, w, h):
        return json.dumps(list(self.quantize(box, w, h)))

    def boxes_text(self, boxes, w, h):
        return json.dumps([{"bbox_2d": list(self.quantize(b, w, h))} for b in boxes])

    def entries(self, items: Sequence[tuple[str, Sequence[float]]], w, h) -> list[dict]:
        """(label, box) pairs -> the JSON entries of the answer."""
        return [{"bbox_2d": list(self.quantize(box, w, h)), "label": label} for label, box in items]

    def phrase_text(self, label, boxes, w, h):
        return json.dumps(self.entries([(label, b) for b in boxes], w, h), ensure_ascii=False)

    def objects_text(self, items, w, h):
        return json.dumps(self.entries(items, w, h), ensure_ascii=False)

    def decode(self, text, w, h):
        try:
            self.resized(w, h)
        except ValueError:  # an aspect ratio Qwen2.5-VL cannot take: nothing to decode
            return []
        text = _EOS_RE.sub("", text or "")
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
            out.append((_clean_label(label) if isinstance(label, str) else str(label), box))
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


class ShikraCodec(_RoundedCodec):
    """`[0.123,0.456,0.789,0.900]` normalised with 3 decimals; several boxes as `[a,b,c,d;e,f,g,h]`."""

    name = "shikra"
    top = 1000
    _NUM = r"\s*\d+(?:\.\d*)?\s*"
    _BOX = _NUM + "," + _NUM + "," + _NUM + "," + _NUM
    _BOXES_RE = re.compile(r"\[(" + _BOX + r"(?:;" + _BOX + r")*)\]")

    def _inner(self, box, w, h) -> str:
        return ",".join(f"{v / self.top:.3f}" for v in self.quantize(box, w, h))

    def box_text(self, box, w, h):
        return f"[{self._inner(box, w, h)}]"

    def boxes_text(self, boxes, w, h):
        return "[" + ";".join(self._inner(b, w, h) for b in boxes) + "]"

    def phrase_text(self, label, boxes, w, h):
        return label + self.boxes_text(boxes, w, h)

    def objects_text(self, items, w, h):
        return ", ".join(self.phrase_text(label, boxes, w, h) for label, boxes in _group_by_label(items))

    def decode(self, text, w, h):
        text = text or ""
        w, h = _size(w, h)
        out: Decoded = []
        pos = 0
        for m in self._BOXES_RE.finditer(text):
            label = _clean_label(text[pos:m.start()]).lstrip(",;:. ").strip()
            pos = m.end()
            for part in m.group(1).split(";"):
                x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in part.split(","))
                out.append((label, [x1 * w, y1 * h, x2 * w, y2 * h]))
        return out


_CODECS = {c.name: c for c in (Florence2Codec(), Kosmos2Codec(), PaliGemmaCodec(), Qwen2VLCodec(),
                               Qwen25VLCodec(), ShikraCodec())}


def get_codec(fmt: str) -> Codec:
    try:
        return _CODECS[fmt]
    except (KeyError, TypeError):
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}") from None
