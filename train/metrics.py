"""Score generations against records, per task and per dataset/split.

Generations are parsed with the project's own parser (transforms.templates.parse_output), so a model is
scored on exactly the markup the shards taught it. Ground-truth boxes come from the record's canonical
`objects` (pixel xyxy); answers without boxes (counting JSON, count_class integer, reg text) are compared
with the record's `target` parsed by the same parser.

Each record yields counters; a task's metrics are ratios of the summed counters, so merging groups or
batches is exact:
  rec                         n, hit                      acc@0.5 = hit / n (first predicted box)
  phrase_grounding, detection n, true, pred, matched      recall@0.5, precision@0.5 (class-agnostic)
  grounded_caption            n, true, pred, matched      phrase recall@0.5 / precision@0.5 (phrase and box)
  counting, count_class       n, exact                    accuracy = exact / n
  reg                         n, exact, f1                exact_match = exact / n, similarity = mean token F1
Every task also counts `unparsed` (the parser raised, or found no answer).
"""
from __future__ import annotations

import json
import re
from collections import Counter

from transforms.boxes import iou

BOX_TASKS = ("rec", "phrase_grounding", "detection")
_CONTROL = re.compile(r"</?s>|<pad>")
_SPACES = re.compile(r"\s+")


def clean_generation(text: str) -> str:
    """Decoded model output without BOS/EOS/padding tokens."""
    return _CONTROL.sub("", text or "").strip()


def parse(record: dict, text: str):
    """parse_output for the record's task and format; None when the text cannot be parsed."""
    from transforms.templates import parse_output

    try:
        return parse_output(record["task"], record.get("format") or "florence2", text,
                            record["width"], record["height"], record.get("meta"))
    except (ValueError, KeyError, TypeError):
        return None


def true_boxes(record: dict) -> list[list[float]]:
    return [list(map(float, o["bbox"])) for o in record.get("objects") or []]


def _box_of(item) -> list[float]:
    """parse_output gives (label, box) pairs; a bare box is accepted too."""
    if len(item) == 2 and isinstance(item[0], str):
        item = item[1]
    return [float(v) for v in item]


def predicted_boxes(task: str, parsed) -> list[list[float]]:
    """Boxes of a parsed answer (for drawing and box metrics); [] for answers without boxes."""
    if not parsed or task not in BOX_TASKS + ("grounded_caption",):
        return []
    return [_box_of(item) for item in parsed]


def predicted_phrases(parsed) -> list[tuple[str, list[float]]]:
    return [(str(item[0]), _box_of(item)) for item in parsed or []]


def _phrase_of(obj: dict, caption: str | None) -> str:
    """The caption text an object grounds (its span), else its label."""
    span = obj.get("span") or []
    if caption and len(span) == 2:
        return caption[span[0]:span[1]].strip()
    return obj.get("label") or ""


def normalize_text(text: str) -> str:
    return _SPACES.sub(" ", (text or "").lower()).strip().rstrip(".").strip()


def token_f1(pred: str, truth: str) -> float:
    p, t = normalize_text(pred).split(), normalize_text(truth).split()
    if not p and not t:
        return 1.0
    common = sum((Counter(p) & Counter(t)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(t)
    return 2 * precision * recall / (precision + recall)


def match_boxes(preds: list, truths: list, threshold: float, same=None) -> int:
    """Greedy one-to-one matching, highest IoU first; returns the number of matched truths.
    `same(i, j)` can further require pred i and truth j to agree (e.g. on the phrase)."""
    pairs = []
    for i, p in enumerate(preds):
        for j, t in enumerate(truths):
            v = iou(p, t)
            if v >= threshold and (same is None or same(i, j)):
                pairs.append((-v, i, j))
    pairs.sort()
    used_p, used_t = set(), set()
    for _v, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_t)


def score_record(record: dict, generation: str, threshold: float = 0.5) -> dict:
    """Counters for one record (see module doc)."""
    task = record["task"]
    parsed = parse(record, clean_generation(generation))
    c = {"n": 1, "unparsed": int(parsed is None or parsed == [])}
    if task == "rec":
        preds, truths = predicted_boxes(task, parsed), true_boxes(record)
        c["hit"] = int(bool(preds) and any(iou(preds[0], t) >= threshold for t in truths))
    elif task in ("phrase_grounding", "detection"):
        preds, truths = predicted_boxes(task, parsed), true_boxes(record)
        c.update(true=len(truths), pred=len(preds), matched=match_boxes(preds, truths, threshold))
    elif task == "grounded_caption":
        preds = predicted_phrases(parsed)
        truths = [(_phrase_of(o, record.get("caption")), list(map(float, o["bbox"])))
                  for o in record.get("objects") or []]

        def same(i, j):
            return normalize_text(preds[i][0]) == normalize_text(truths[j][0])

        matched = match_boxes([b for _, b in preds], [b for _, b in truths], threshold, same)
        c.update(true=len(truths), pred=len(preds), matched=matched)
    elif task in ("counting", "count_class"):
        truth = parse(record, clean_generation(record["target"]))
        c["exact"] = int(parsed is not None and truth is not None and parsed == truth)
    elif task == "reg":
        truth = parse(record, clean_generation(record["target"]))
        truth = truth if isinstance(truth, str) else record.get("caption") or ""
        pred = parsed if isinstance(parsed, str) else ""
        c["unparsed"] = int(parsed is None)
        c.update(exact=int(normalize_text(pred) == normalize_text(truth)), f1=token_f1(pred, truth))
    else:
        raise ValueError(f"no metric for task {task!r}")
    return c


def derived(task: str, c: dict, threshold: float = 0.5) -> dict:
    """Ratios from summed counters."""
    out = dict(c)
    n = c.get("n", 0)
    at = f"@{threshold:g}"
    if task == "rec":
        out["acc" + at] = c["hit"] / n if n else 0.0
    elif task in ("phrase_grounding", "detection", "grounded_caption"):
        out["recall" + at] = c["matched"] / c["true"] if c["true"] else 0.0
        out["precision" + at] = c["matched"] / c["pred"] if c["pred"] else 0.0
    elif task in ("counting", "count_class"):
        out["accuracy"] = c["exact"] / n if n else 0.0
    elif task == "reg":
        out["exact_match"] = c["exact"] / n if n else 0.0
        out["similarity"] = c["f1"] / n if n else 0.0
    return out


def _add(total: dict, c: dict) -> None:
    for k, v in c.items():
        total[k] = total.get(k, 0) + v


def score_records(records: list[dict], generations: list[str], threshold: float = 0.5) -> dict:
    """{task: {metrics..., "by_split": {"dataset/split": {metrics...}}}} over all records."""
    if len(records) != len(generations):
        raise ValueError(f"{len(records)} records but {len(generations)} generations")
    totals: dict[str, dict] = {}
    groups: dict[str, dict[str, dict]] = {}
    for record, gen in zip(records, generations):
        c = score_record(record, gen, threshold)
        task = record["task"]
        group = f"{record.get('dataset', '?')}/{record.get('split', '?')}"
        _add(totals.setdefault(task, {}), c)
        _add(groups.setdefault(task, {}).setdefault(group, {}), c)
    report = {}
    for task in sorted(totals):
        report[task] = derived(task, totals[task], threshold)
        report[task]["by_split"] = {g: derived(task, groups[task][g], threshold) for g in sorted(groups[task])}
    return report


def headline(report: dict) -> dict:
    """One number per task, for logs: {"rec/acc@0.5": 0.71, ...}."""
    keys = {"rec": "acc@0.5", "phrase_grounding": "recall@0.5", "detection": "recall@0.5",
            "grounded_caption": "recall@0.5", "counting": "accuracy", "count_class": "accuracy",
            "reg": "exact_match"}
    return {f"{t}/{keys[t]}": round(v[keys[t]], 4) for t, v in report.items() if keys.get(t) in v}


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)
