"""PaliGemma: `<locY1><locX1><locY2><locX2> label`, objects joined by ` ; ` (big_vision).

Quantization as big_vision's PaliGemma encoder (pp/proj/paligemma/segmentation.py, refcoco_mask2str):
round(v_norm * 1023) clipped to 0..1023, y first. A label cannot hold `;` (it separates objects) nor `<`/`>`
(the reference parser, `_SEGMENT_DETECT_RE` in the big-vision/paligemma-hf Space's app.py, reads a name as
`[^;<>]+`): such text is rejected.
"""
from __future__ import annotations

import re

from groundforge.transforms.formats.base import Decoded, RoundedCodec, clean_label, ints


class PaliGemmaCodec(RoundedCodec):
    """`<locY1><locX1><locY2><locX2> label`, 1024 values per side."""

    name = "paligemma"
    top = 1023
    fixed_prompts = {
        "rec": "detect {expr}",
        "reg": "caption en {box}",
        "grounded_caption": "detect {phrases}",
        "phrase_grounding": "detect {phrase}",
        "detection": "detect {classes}",
        # big_vision's DocVQA transfer (configs/proj/paligemma/transfers/docvqa.py) feeds the bare question as
        # the prefix (`copy(inkey="question", outkey="prefix")`); its VQAv2 transfer, by contrast, prefixes
        # "answer en " (kept here for counting questions)
        "vqa": "{question}",
    }
    question = "answer en {}"
    class_sep = " ; "
    label_stops = ";<>"
    tag_names = ("start_of_turn", "end_of_turn", "start_of_image", "end_of_image")
    special_patterns = (r"<loc\d+>", r"<seg\d+>", r"<unused\d+>")
    _OBJ_RE = re.compile(r"((?:<loc\d{4}>){4})((?:<seg\d{3}>)*)(.*?)(?=;|<loc\d{4}>|$)", re.S)
    _LOC_RE = re.compile(r"<loc(\d{4})>")

    def quantize(self, box, w, h):
        x1, y1, x2, y2 = super().quantize(box, w, h)
        return y1, x1, y2, x2  # y first

    def dequantize(self, q, w, h):
        y1, x1, y2, x2 = ints(q, 4)
        return super().dequantize((x1, y1, x2, y2), w, h)

    def box_text(self, box, w, h):
        return "".join(f"<loc{v:04d}>" for v in self.quantize(box, w, h))

    def boxes_text(self, boxes, w, h):
        return " ; ".join(self.box_text(b, w, h) for b in boxes)

    def phrase_text(self, label, boxes, w, h):
        return " ; ".join(f"{self.box_text(b, w, h)} {label}" for b in boxes)

    def objects_text(self, items, w, h):
        return " ; ".join(self.phrase_text(label, [box], w, h) for label, box in items)

    def caption_text(self, caption, groups, w, h):
        return " ; ".join(self.phrase_text(caption[s:e], boxes, w, h) for s, e, boxes in groups)

    def decode(self, text, w, h):
        out: Decoded = []
        for m in self._OBJ_RE.finditer(text or ""):
            vals = [int(v) for v in self._LOC_RE.findall(m.group(1))]
            out.append((clean_label(m.group(3)), self.dequantize(vals, w, h)))
        return out
