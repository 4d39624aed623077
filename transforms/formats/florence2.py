"""Florence-2: `<loc_x1><loc_y1><loc_x2><loc_y2>`, 1000 bins per side, as transformers' Florence2PostProcessor.

Prompts are the model's task tokens. `reg` (`<REGION_TO_DESCRIPTION>`) answers `text<loc_..>x4`, the
pretrained model's own output (transformers.js Florence-2 test vectors; supervision's `from_florence_2`
requires the locations), and decode reads the bare text as well.
"""
from __future__ import annotations

import math
import re

from groundforge.transforms.formats.base import (
    Codec,
    Decoded,
    clamp,
    clean_label,
    floats,
    ints,
    size,
)


class Florence2Codec(Codec):
    """`<loc_x1><loc_y1><loc_x2><loc_y2>`: q = floor(v / (size / 1000)) clamped to 0..999."""

    name = "florence2"
    bins = 1000
    fixed_prompts = {
        "rec": "<OPEN_VOCABULARY_DETECTION>{expr}",
        "reg": "<REGION_TO_DESCRIPTION>{box}",
        "grounded_caption": "<CAPTION_TO_PHRASE_GROUNDING>{caption}",
        "phrase_grounding": "<CAPTION_TO_PHRASE_GROUNDING>{phrase}",
        "detection": "<OD>",
        # not a pretrained task: the task prefix of the Hugging Face DocVQA fine-tune (blog "Fine-tuning
        # Florence-2", andimarafioti/florence2-finetuning: question = "<DocVQA>" + example['question'])
        "vqa": "<DocVQA>{question}",
    }
    # transformers' parsers read a label as `[^<]+` before the locations
    label_stops = "<"
    tag_names = ("od", "ocr", "cap", "ncap", "dcap", "seg", "sep", "and", "region_cap", "region_to_desciption",
                 "proposal", "poly", "quad", "ground", "obj", "box", "bbox")
    special_patterns = (
        r"<loc_\d+>",
        r"<(?:OCR|OCR_WITH_REGION|CAPTION|DETAILED_CAPTION|MORE_DETAILED_CAPTION|OD|DENSE_REGION_CAPTION"
        r"|REGION_PROPOSAL|CAPTION_TO_PHRASE_GROUNDING|REFERRING_EXPRESSION_SEGMENTATION|REGION_TO_SEGMENTATION"
        r"|OPEN_VOCABULARY_DETECTION|REGION_TO_CATEGORY|REGION_TO_DESCRIPTION|REGION_TO_OCR)>",
        r"<[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+>",  # any other Florence-2 style task token
        r"<DocVQA>",  # the DocVQA fine-tune's task prefix
    )
    _LOCS_RE = re.compile(r"(?:<loc_\d+>)+")
    _LOC_RE = re.compile(r"<loc_(\d+)>")

    def quantize(self, box, w, h):
        x1, y1, x2, y2 = floats(box)
        w, h = size(w, h)
        per_w, per_h = w / self.bins, h / self.bins
        top = self.bins - 1
        return (clamp(math.floor(x1 / per_w), 0, top), clamp(math.floor(y1 / per_h), 0, top),
                clamp(math.floor(x2 / per_w), 0, top), clamp(math.floor(y2 / per_h), 0, top))

    def dequantize(self, q, w, h):
        w, h = size(w, h)
        per_w, per_h = w / self.bins, h / self.bins
        x1, y1, x2, y2 = (clamp(v, 0, self.bins - 1) for v in ints(q, 4))
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

    def region_text(self, expr, boxes, w, h):
        return self.phrase_text(expr, boxes, w, h)

    def region_answer(self, text):
        """`text<loc_..>x4` (the pretrained model's answer) or the bare text: the text before the boxes."""
        return clean_label(text.split("<loc_", 1)[0])

    def caption_text(self, caption, groups, w, h):
        return "".join(self.phrase_text(caption[s:e], boxes, w, h) for s, e, boxes in groups)

    def decode(self, text, w, h):
        text = text or ""
        out: Decoded = []
        pos = 0
        for run in self._LOCS_RE.finditer(text):
            label = clean_label(re.sub(r"</?od>|<ground>|<obj>", "", text[pos:run.start()]))
            pos = run.end()
            vals = [int(v) for v in self._LOC_RE.findall(run.group(0))]
            for i in range(0, len(vals) - 3, 4):
                out.append((label, self.dequantize(vals[i:i + 4], w, h)))
        return out
