"""Qwen2-VL: `<|object_ref_start|>t<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`, ints 0..1000."""
from __future__ import annotations

import re

from groundforge.transforms.formats.base import Decoded, RoundedCodec, clean_label


class Qwen2VLCodec(RoundedCodec):
    """round(v / size * 1000) clamped to 0..1000."""

    name = "qwen2vl"
    top = 1000
    special_patterns = (r"<\|[^<>|\s]+\|>",)  # <|box_start|>, <|im_end|>, ...
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
                label = clean_label(m.group(1))
                continue
            q = [round(float(v)) for v in m.group(2, 3, 4, 5)]
            out.append((label, self.dequantize(q, w, h)))
        return out
