"""Shikra: `[0.123,0.456,0.789,0.900]` after the phrase, several boxes `[a,b,c,d;e,f,g,h]`.

The frame is Shikra's (shikras/shikra mllm/dataset/utils/transform.py): the image is padded to a square
(Expand2square, pasted at ((S - w) // 2, (S - h) // 2)), boxes are shifted by that offset and normalised by
the square's side with `norm_box_xyxy` (clamp to [0, 1], Python round(v, 3)), and written by
PlainBoxFormatter (mllm/dataset/process_function/box_process_function.py) with 3 decimals. `shikra_frame
="plain"` normalises by width and height instead. Text that Shikra's box pattern would read as a box or a
point (`[0.1,0.2,0.3,0.4]`, `[0.5,0.5]`) is rejected (`box_syntax`).
"""
from __future__ import annotations

import re

from groundforge.transforms.formats.base import (
    DEFAULT_OPTIONS,
    Codec,
    Decoded,
    FormatOptions,
    FormatTextError,
    clamp,
    clean_label,
    floats,
    group_by_label,
    ints,
    size,
)

# PlainBoxFormatter's patterns (middle brackets), for boxes and for points
_D = r"\d(?:\.\d*)?"
SHIKRA_BOX_RE = re.compile(r"\[" + _D + r"(?:," + _D + r"){3}(?:;" + _D + r"(?:," + _D + r"){3})*\]")
SHIKRA_POINT_RE = re.compile(r"\[" + _D + r"(?:," + _D + r")(?:;" + _D + r"(?:," + _D + r"))*\]")

# words that end a noun phrase when reading a label back from a grounded caption
_BREAK_WORDS = frozenset("""
and or but nor while whereas then plus with without in on at of near by from to into onto under over behind
beside besides next between among through across along around against beneath above below inside outside for
as is are was were be been being has have had who which where there it they he she we you i
""".split())
_DETERMINERS = frozenset("""
a an the this these those his her their its my our your some several many few each every another one two three
four five six seven eight nine ten eleven twelve
""".split())


def phrase_before(text: str) -> str:
    """The noun phrase that ends `text` (the words before a box in a Shikra answer).

    Shikra marks where a phrase ends, not where it starts. The phrase starts after the last punctuation or
    conjunction/preposition/verb-like word, at its first determiner or number when it has one
    ("and a green sofa" -> "a green sofa", "walks two dogs" -> "two dogs").
    """
    text = re.split(r"[,;:.!?()\[\]\"]", text)[-1]
    words = text.split()
    start = 0
    for i, word in enumerate(words):
        if word.lower() in _BREAK_WORDS:
            start = i + 1
    words = words[start:]
    for i, word in enumerate(words):
        if word.lower() in _DETERMINERS or word.isdigit():
            words = words[i:]
            break
    return " ".join(words)


class ShikraCodec(Codec):
    """Quantize to thousandths of the frame's side(s); the text is q / 1000 with 3 decimals."""

    name = "shikra"
    boxes_only = True
    tag_names = ("im_patch", "im_start", "im_end", "ref")  # LLaVA / Shikra image and reference tokens
    _NUM = r"\s*\d+(?:\.\d*)?\s*"
    _BOX = _NUM + "," + _NUM + "," + _NUM + "," + _NUM
    _BOXES_RE = re.compile(r"\[(" + _BOX + r"(?:;" + _BOX + r")*)\]")

    def __init__(self, frame: str = DEFAULT_OPTIONS.shikra_frame):
        if frame not in ("square", "plain"):
            raise ValueError(f"shikra frame must be 'square' or 'plain', got {frame!r}")
        self.square = frame == "square"

    def __repr__(self):
        return f"ShikraCodec(frame={'square' if self.square else 'plain'!r})"

    def __eq__(self, other):
        return isinstance(other, ShikraCodec) and self.square == other.square

    def __hash__(self):
        return hash((self.name, self.square))

    # -- frame ------------------------------------------------------------------------------------------

    def configured(self, options: FormatOptions):
        return ShikraCodec(options.shikra_frame)

    def frame(self, w, h):
        if not self.square:
            return {"format": self.name, "frame": "plain"}
        side, dx, dy = self._square(w, h)
        return {"format": self.name, "frame": "square", "side": side, "pad_x": dx, "pad_y": dy}

    def from_frame(self, frame):
        if isinstance(frame, dict) and frame.get("format") == self.name and frame.get("frame") in ("square", "plain"):
            return ShikraCodec(frame["frame"])
        return self

    @staticmethod
    def _square(w, h) -> tuple[int, int, int]:
        """Side of Expand2square's canvas and the offset of the image in it (box_xyxy_expand2square)."""
        w, h = int(w), int(h)
        if w >= h:
            return w, 0, (w - h) // 2
        return h, (h - w) // 2, 0

    def _norm(self, w, h) -> tuple[float, float, float, float]:
        """(x offset, y offset, x scale, y scale): v_norm = (v + offset) / scale."""
        w, h = size(w, h)
        if self.square:
            side, dx, dy = self._square(w, h)
            return dx, dy, side, side
        return 0, 0, w, h

    # -- box text ---------------------------------------------------------------------------------------

    def quantize(self, box, w, h):
        x1, y1, x2, y2 = floats(box)
        dx, dy, sx, sy = self._norm(w, h)
        # norm_box_xyxy: clamp to [0, 1], then round(v, 3)
        vals = ((x1 + dx) / sx, (y1 + dy) / sy, (x2 + dx) / sx, (y2 + dy) / sy)
        return tuple(round(round(max(0.0, min(v, 1.0)), 3) * 1000) for v in vals)

    def dequantize(self, q, w, h):
        dx, dy, sx, sy = self._norm(w, h)
        x1, y1, x2, y2 = (clamp(v, 0, 1000) / 1000 for v in ints(q, 4))
        return [min(max(x1 * sx - dx, 0.0), w), min(max(y1 * sy - dy, 0.0), h),
                min(max(x2 * sx - dx, 0.0), w), min(max(y2 * sy - dy, 0.0), h)]

    def bin_size(self, w, h):
        _, _, sx, sy = self._norm(w, h)
        return sx / 1000, sy / 1000

    def _inner(self, box, w, h) -> str:
        return ",".join(f"{v / 1000:.3f}" for v in self.quantize(box, w, h))

    def box_text(self, box, w, h):
        return f"[{self._inner(box, w, h)}]"

    def boxes_text(self, boxes, w, h):
        return "[" + ";".join(self._inner(b, w, h) for b in boxes) + "]"

    def phrase_text(self, label, boxes, w, h):
        return label + self.boxes_text(boxes, w, h)

    def objects_text(self, items, w, h):
        return ", ".join(self.phrase_text(label, boxes, w, h) for label, boxes in group_by_label(items))

    def decode(self, text, w, h):
        text = text or ""
        dx, dy, sx, sy = self._norm(w, h)
        out: Decoded = []
        pos = 0
        for m in self._BOXES_RE.finditer(text):
            label = phrase_before(clean_label(text[pos:m.start()]))
            pos = m.end()
            for part in m.group(1).split(";"):
                x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in part.split(","))
                out.append((label, [min(max(x1 * sx - dx, 0.0), w), min(max(y1 * sy - dy, 0.0), h),
                                    min(max(x2 * sx - dx, 0.0), w), min(max(y2 * sy - dy, 0.0), h)]))
        return out

    # -- text rules -------------------------------------------------------------------------------------

    def check_text(self, field, text):
        m = SHIKRA_BOX_RE.search(text or "") or SHIKRA_POINT_RE.search(text or "")
        if m:
            raise FormatTextError("box_syntax", self.name, field, text,
                                  f"Shikra reads {m.group(0)} as coordinates")

