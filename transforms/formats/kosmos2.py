"""Kosmos-2: `<phrase> t</phrase><object><patch_index_A><patch_index_B></object>` on a 32x32 grid.

Text is written as Kosmos2Processor builds it (its `_insert_patch_index_tokens`, minus the blanks between
tokens that the lstrip added tokens absorb) and as the model card and unilm's kosmos-2 README prompt it:
`<grounding> Describe ...`, `<grounding><phrase> It</phrase><object>..</object> is`, the blank before a
phrase inside `<phrase> ...</phrase>`.
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


class Kosmos2Codec(Codec):
    """transformers' coordinate_to_patch_index / patch_index_to_coordinate, clamped to valid indices."""

    name = "kosmos2"
    grid = 32
    delimiter = "</delimiter_of_multi_objects/>"
    fixed_prompts = {
        "rec": "<grounding><phrase> {expr}</phrase>",
        "reg": "<grounding><phrase> It</phrase>{box} is",
        "grounded_caption": "<grounding> Describe this image in detail:",
        "phrase_grounding": "<grounding><phrase> {phrase}</phrase>",
        "detection": "<grounding> Locate the objects in this image:",
    }
    question = "Question: {} Answer:"
    boxes_only = True
    # clean_text_and_extract_entities_with_bboxes reads a phrase as `[^<]+`
    label_stops = "<"
    tag_names = ("phrase", "object", "grounding", "doc", "image", "chunk", "line")
    special_patterns = (r"<patch_index_\d+>", r"</delimiter_of_multi_objects/>")
    _OBJECT_RE = re.compile(
        r"(?:<phrase>((?:(?!</?phrase>|<object>).)*)</phrase>\s*)?<object>((?:(?!</?object>).)*?)</object>", re.S)
    _PAIR_RE = re.compile(r"<patch_index_(\d+)>\s*<patch_index_(\d+)>")

    def quantize(self, box, w, h):
        x1, y1, x2, y2 = floats(box)
        w, h = size(w, h)
        n = self.grid
        # coordinate_to_patch_index on normalised coordinates, clamped so that every box gives valid indices
        ul_x = clamp(math.floor(x1 / w * n), 0, n - 1)
        ul_y = clamp(math.floor(y1 / h * n), 0, n - 1)
        lr_x = clamp(math.ceil(x2 / w * n - 1), ul_x, n - 1)
        lr_y = clamp(math.ceil(y2 / h * n - 1), ul_y, n - 1)
        return ul_y * n + ul_x, lr_y * n + lr_x

    def dequantize(self, q, w, h):
        """patch_index_to_coordinate, scaled to pixels."""
        w, h = size(w, h)
        n = self.grid
        ul, lr = (clamp(v, 0, n * n - 1) for v in ints(q, 2))
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
        """The blank before a phrase goes inside the tags: `<phrase> a dog</phrase>`."""
        label = label if label.startswith(" ") else " " + label
        return f"<phrase>{label}</phrase>" + self.boxes_text(boxes, w, h)

    def caption_text(self, caption, groups, w, h):
        out, pos = [], 0
        for s, e, boxes in groups:
            before = caption[pos:s]
            if before.endswith(" "):
                before = before[:-1]  # that blank is written inside <phrase>
            out.append(before)
            out.append(self.phrase_text(caption[s:e], boxes, w, h))
            pos = e
        out.append(caption[pos:])
        return "".join(out)

    def decode(self, text, w, h):
        out: Decoded = []
        for m in self._OBJECT_RE.finditer(text or ""):
            label = clean_label(m.group(1) or "")
            for a, b in self._PAIR_RE.findall(m.group(2)):
                a, b = int(a), int(b)
                if a < self.grid ** 2 and b < self.grid ** 2:
                    out.append((label, self.dequantize((a, b), w, h)))
        return out
