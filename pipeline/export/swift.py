"""ms-swift grounding JSONL: `<ref-object>`/`<bbox>` placeholders in the messages, pixel boxes in `objects`.

The layout is ms-swift's documented grounding format (docs/source_en/Customization/Custom-dataset.md,
"Grounding"): `{"messages": [...], "images": [...], "objects": {"ref": [...], "bbox": [[x1, y1, x2, y2], ...],
"bbox_type": "real"}}`. ms-swift's Template (swift/llm/template/base.py, `_pre_tokenize`) replaces the n-th
`<ref-object>` of the conversation with `objects["ref"][n]` and the n-th `<bbox>` with `objects["bbox"][n]`,
after `normalize_bbox` has scaled the real-pixel boxes to the model's own convention, so one export trains any
model ms-swift supports. Texts come from the canonical `objects`, not from the record's rendered prompt/target;
the prompt wording is the record's plain-language paraphrase (the qwen2vl template family, which has no task
tokens), chosen per record id and --seed as `groundforge render` does.
"""
from __future__ import annotations

import json
from itertools import pairwise

from groundforge.pipeline.export.base import Image, Target
from groundforge.pipeline.export.common import (
    SWIFT_TAGS,
    ExportError,
    check_tags,
    dumps,
    float32_text,
)
from groundforge.transforms.boxes import BoxError, checked_box
from groundforge.transforms.templates import choose_template, render_record

REF, BOX = "<ref-object>", "<bbox>"
PLAIN_FORMAT = "qwen2vl"  # its templates are plain instructions: no task tokens, no JSON hint


class SwiftTarget(Target):
    name = "swift"

    def entry(self, row: dict) -> dict:
        task = row.get("task")
        w, h = int(row["width"]), int(row["height"])
        objects = [(str(o.get("label") or ""), _box(o["bbox"], w, h), list(o.get("span") or []))
                   for o in row.get("objects") or []]
        caption = row.get("caption") or ""
        texts = {"caption": caption, **{f"objects[{i}].label": o[0] for i, o in enumerate(objects)}}
        check_tags(texts, SWIFT_TAGS, model_tokens=True)
        if task in ("counting", "count_class", "vqa"):
            return self._plain(row)
        build = _TASKS.get(task)
        if build is None:
            raise ExportError("unsupported_task", f"ms-swift export has no grounding layout for task {task!r}")
        if not objects:
            raise ExportError("no_objects", f"task {task} needs at least one box")
        fields, response, refs, boxes = build(objects, caption)
        if task == "detection":
            fields["classes"] = ", ".join(_classes(row, refs))
        template = choose_template(task, PLAIN_FORMAT, str(row["id"]), self.seed)
        query = template.render({"expr": REF, "phrase": REF, "box": BOX * len(boxes), "caption": caption,
                                 "phrases": "", "classes": "", **fields})
        return {"query": query, "response": response,
                "objects": {"ref": refs, "bbox": [[float32_text(v) for v in b] for b in boxes], "bbox_type": "real"}}

    def _plain(self, row: dict) -> dict:
        """Counting answers carry no boxes: the plain-language prompt and answer, and an empty `objects`."""
        try:
            out = render_record(row, PLAIN_FORMAT, self.seed)
        except ValueError as err:
            raise ExportError(getattr(err, "reason", "render_error"), str(err)) from None
        check_tags({"prompt": out.prompt, "target": out.target}, SWIFT_TAGS)
        return {"query": out.prompt, "response": out.target, "objects": {"ref": [], "bbox": [], "bbox_type": "real"}}

    def write(self, split: str, row: dict, entry: dict, image: Image) -> None:
        line = {"messages": [{"role": "user", "content": "<image>" + entry["query"]},
                             {"role": "assistant", "content": entry["response"]}],
                "images": [image.ref], "objects": entry["objects"]}
        self.file(f"{split}.jsonl").write(dumps(line) + "\n")


def _classes(row: dict, labels: list[str]) -> list[str]:
    """The class list the record was asked about (meta.classes, as the renderer uses it), else its labels."""
    try:
        classes = json.loads(row.get("meta") or "{}").get("classes")
    except (ValueError, AttributeError):
        classes = None
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        check_tags({f"meta.classes[{i}]": c for i, c in enumerate(classes)}, SWIFT_TAGS, model_tokens=True)
        return list(dict.fromkeys(classes))
    return labels


def _box(bbox, w: int, h: int) -> list[float]:
    try:
        return checked_box(bbox, w, h)
    except BoxError as err:
        raise ExportError(err.reason, err.detail) from None


def _text_to_boxes(objects, caption):
    """rec / phrase_grounding: the expression (or the first object's phrase) -> all boxes."""
    label, _, span = objects[0]
    text = caption[span[0]:span[1]].strip() if len(span) == 2 and caption else (caption or label).strip()
    if not text:
        raise ExportError("missing_text", "no expression (caption) and no label")
    boxes = [o[1] for o in objects]
    return {}, BOX * len(boxes), [text], boxes


def _rec(objects, caption):
    text = (caption or objects[0][0]).strip()
    if not text:
        raise ExportError("missing_text", "no expression (caption) and no label")
    boxes = [o[1] for o in objects]
    return {}, BOX * len(boxes), [text], boxes


def _reg(objects, caption):
    fields, _, refs, boxes = _rec(objects, caption)
    return fields, REF, refs, boxes


def _detection(objects, caption):
    labels = list(dict.fromkeys(o[0] for o in objects))
    if not all(labels):
        raise ExportError("missing_text", "an object has no label")
    groups = [[o[1] for o in objects if o[0] == label] for label in labels]
    response = ", ".join(REF + BOX * len(g) for g in groups)
    return {"classes": ", ".join(labels)}, response, labels, [b for g in groups for b in g]


def _grounded_caption(objects, caption):
    """Each grounded span of the caption becomes `<ref-object>` plus one `<bbox>` per box (as ms-swift's own
    GritPreprocessor writes GRIT: swift/llm/dataset/dataset/mllm.py, replace_intervals_with_tags)."""
    if not caption.strip():
        raise ExportError("missing_text", "grounded_caption needs a caption")
    groups: dict[tuple[int, int], list] = {}
    for label, box, span in objects:
        if len(span) != 2 or not 0 <= span[0] < span[1] <= len(caption):
            raise ExportError("bad_span", f"object {label!r} has span {span} in a caption of length {len(caption)}")
        s, e = span
        while s < e and caption[s].isspace():
            s += 1
        while e > s and caption[e - 1].isspace():
            e -= 1
        groups.setdefault((s, e), []).append(box)
    spans = sorted(groups)
    for (s0, e0), (s1, e1) in pairwise(spans):
        if s1 < e0:
            raise ExportError("bad_span", f"overlapping spans {[s0, e0]} and {[s1, e1]}")
    parts, pos = [], 0
    for s, e in spans:
        parts += [caption[pos:s], REF + BOX * len(groups[s, e])]
        pos = e
    parts.append(caption[pos:])
    refs = [caption[s:e] for s, e in spans]
    return {}, "".join(parts), refs, [b for key in spans for b in groups[key]]


_TASKS = {"rec": _rec, "phrase_grounding": _text_to_boxes, "reg": _reg, "detection": _detection,
          "grounded_caption": _grounded_caption}
