"""Score generations against records, per task and per dataset/split.

Generations are parsed with the project's own parser (transforms.templates.parse_output), so a model is
scored on exactly the markup the shards taught it. Ground-truth boxes come from the record's canonical
`objects` (pixel xyxy); answers without boxes (counting JSON, count_class integer, reg text) are compared
with the record's `target` parsed by the same parser.

Each record yields counters; a task's metrics are ratios of the summed counters, so merging groups or
batches is exact:
  rec                         n, hit                      acc@0.5 = hit / n (first predicted box)
  phrase_grounding, detection n, true, pred, matched      recall@0.5, precision@0.5 (class-agnostic)
  grounded_caption            n, true, pred, matched      recall@0.5 / precision@0.5 of boxes whose phrase
                                                          matches too
                              phrases, phrases_hit        phrase_recall@0.5: a true phrase (one caption span,
                                                          one or more boxes) is found when an output phrase
                                                          with the same text has IoU >= 0.5 with one of its
                                                          boxes (one output phrase finds one true phrase)
  counting, count_class       n, exact                    accuracy = exact / n
                              abs_err, mae_n              mae = abs_err / mae_n over parsed answers (counting:
                                                          mean over the classes of truth and answer)
                              (answers)                   majority_answer, majority_accuracy, majority_mae: the
                                                          baseline that always gives the most common true answer
  reg                         n, exact, f1, refs          against every reference sentence of the region (all
                                                          records of the same ref): exact_match = exact / n (any
                                                          reference), similarity = mean of the best token F1
  vqa                         n, anls, nls, exact         against every answer in meta["answers"] (DocVQA): anls
                                                          (tau 0.5, the DocVQA metric), normalized_levenshtein_
                                                          similarity (the HF Florence-2 fine-tune's), exact_match
Every task also counts `unparsed` (the parser raised, or found no answer).
`Scores` sums the counters as generations arrive, so evaluation memory does not grow with the shard set.
"""
from __future__ import annotations

import json
import re
from collections import Counter

from groundforge.transforms.boxes import iou

BOX_TASKS = ("rec", "phrase_grounding", "detection")
_CONTROL = re.compile(r"</?s>|<pad>")
_SPACES = re.compile(r"\s+")


def clean_generation(text: str) -> str:
    """Decoded model output without BOS/EOS/padding tokens."""
    return _CONTROL.sub("", text or "").strip()


def parse(record: dict, text: str):
    """parse_output for the record's task and format; None when the text cannot be parsed."""
    from groundforge.transforms.templates import parse_output

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


def greedy_matches(pairs: list[tuple[float, int, int]]) -> int:
    """One-to-one matching of (score, pred, truth) candidates, highest score first; returns the count."""
    used_p, used_t = set(), set()
    for _score, i, j in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_t)


def match_boxes(preds: list, truths: list, threshold: float, same=None) -> int:
    """Matched truths at IoU >= threshold; `same(i, j)` can further require pred i and truth j to agree
    (e.g. on the phrase)."""
    pairs = []
    for i, p in enumerate(preds):
        for j, t in enumerate(truths):
            v = iou(p, t)
            if v >= threshold and (same is None or same(i, j)):
                pairs.append((v, i, j))
    return greedy_matches(pairs)


def true_phrases(record: dict) -> list[tuple[str, list[list[float]]]]:
    """(phrase, boxes) per caption span of a grounded_caption record (objects sharing a span are one phrase)."""
    groups: dict[tuple, tuple[str, list]] = {}
    for o in record.get("objects") or []:
        phrase = _phrase_of(o, record.get("caption"))
        key = tuple(o.get("span") or ()) or (phrase,)
        groups.setdefault(key, (phrase, []))[1].append([float(v) for v in o["bbox"]])
    return list(groups.values())


def _grounded_caption_counters(parsed, record: dict, threshold: float) -> dict:
    preds = predicted_phrases(parsed)
    phrases = true_phrases(record)
    truths = [(phrase, box) for phrase, boxes in phrases for box in boxes]

    def same(i, j):
        return normalize_text(preds[i][0]) == normalize_text(truths[j][0])

    matched = match_boxes([b for _, b in preds], [b for _, b in truths], threshold, same)
    pairs = []
    for i, (text, box) in enumerate(preds):
        for j, (phrase, boxes) in enumerate(phrases):
            if normalize_text(text) == normalize_text(phrase):
                v = max(iou(box, t) for t in boxes)
                if v >= threshold:
                    pairs.append((v, i, j))
    return {"true": len(truths), "pred": len(preds), "matched": matched, "phrases": len(phrases),
            "phrases_hit": greedy_matches(pairs)}


def reg_key(record: dict) -> tuple:
    """Records describing the same region: the same ref (meta ref_id) of a dataset/split, else the same
    image and box."""
    meta = record.get("meta")
    try:
        meta = json.loads(meta) if isinstance(meta, str) else (meta or {})
    except ValueError:
        meta = {}
    if isinstance(meta, dict) and meta.get("ref_id") is not None:
        return ("ref", record.get("dataset"), record.get("split"), str(meta["ref_id"]))
    boxes = tuple(tuple(round(float(v), 1) for v in b) for b in true_boxes(record))
    return ("box", record.get("image_sha256") or record.get("image_id"), boxes)


def reference_text(record: dict) -> str:
    """The description a reg record teaches: its target as the parser reads it, else its caption."""
    truth = parse(record, clean_generation(record["target"]))
    return truth if isinstance(truth, str) else record.get("caption") or ""


def count_error(pred, truth) -> float:
    """|pred - truth| for count_class; for counting, the mean over the classes of either answer."""
    if isinstance(truth, dict):
        keys = set(truth) | set(pred)
        return sum(abs(pred.get(k, 0) - truth.get(k, 0)) for k in keys) / len(keys) if keys else 0.0
    return float(abs(pred - truth))


def score_record(record: dict, generation: str, threshold: float = 0.5, references: list[str] | None = None) -> dict:
    """Counters for one record (see module doc). `references`: every description of a reg record's region
    (default: its own target)."""
    task = record["task"]
    parsed = parse(record, clean_generation(generation))
    c = {"n": 1, "unparsed": int(parsed is None or parsed == [])}
    if task == "rec":
        preds, truths = predicted_boxes(task, parsed), true_boxes(record)
        c["hit"] = int(bool(preds) and any(iou(preds[0], t) >= threshold for t in truths))  # first box only
    elif task in ("phrase_grounding", "detection"):
        preds, truths = predicted_boxes(task, parsed), true_boxes(record)
        c.update(true=len(truths), pred=len(preds), matched=match_boxes(preds, truths, threshold))
    elif task == "grounded_caption":
        c.update(_grounded_caption_counters(parsed, record, threshold))
    elif task in ("counting", "count_class"):
        truth = parse(record, clean_generation(record["target"]))
        c["exact"] = int(parsed is not None and truth is not None and parsed == truth)
        usable = parsed is not None and truth is not None and type(parsed) is type(truth)
        c["abs_err"] = count_error(parsed, truth) if usable else 0.0
        c["mae_n"] = int(usable)
    elif task == "reg":
        refs = references or [reference_text(record)]
        pred = parsed if isinstance(parsed, str) else ""
        c["unparsed"] = int(parsed is None)
        c.update(exact=int(any(normalize_text(pred) == normalize_text(r) for r in refs)),
                 f1=max(token_f1(pred, r) for r in refs), refs=len(refs))
    elif task == "vqa":
        from groundforge.transforms.anls import anls, normalized_levenshtein_similarity

        pred = parsed if isinstance(parsed, str) else ""
        answers = vqa_answers(record)
        c.update(anls=anls(pred, answers), nls=normalized_levenshtein_similarity(pred, answers),
                 exact=int(any(normalize_text(pred) == normalize_text(a) for a in answers)))
    else:
        raise ValueError(f"no metric for task {task!r}")
    return c


def vqa_answers(record: dict) -> list[str]:
    """Every accepted answer of a vqa record (meta["answers"], DocVQA), else its target."""
    try:
        meta = json.loads(record.get("meta") or "{}")
    except ValueError:
        meta = {}
    answers = meta.get("answers") if isinstance(meta, dict) else None
    if isinstance(answers, list) and all(isinstance(a, str) for a in answers) and answers:
        return answers
    return [record["target"]]


def majority_baseline(answers: Counter, n: int) -> dict:
    """Accuracy and MAE of always giving the most common true answer (ties: the smallest JSON text)."""
    text, hits = min(answers.items(), key=lambda kv: (-kv[1], kv[0]))
    mode = json.loads(text)
    err = sum(k * count_error(mode, json.loads(t)) for t, k in answers.items())
    return {"majority_answer": mode, "majority_accuracy": hits / n if n else 0.0,
            "majority_mae": err / n if n else None}


def derived(task: str, c: dict, threshold: float = 0.5, answers: Counter | None = None) -> dict:
    """Ratios from summed counters (`answers`: the true answers' counts, for the majority baseline)."""
    out = dict(c)
    n = c.get("n", 0)
    at = f"@{threshold:g}"
    if task == "rec":
        out["acc" + at] = c["hit"] / n if n else 0.0
    elif task in ("phrase_grounding", "detection", "grounded_caption"):
        out["recall" + at] = c["matched"] / c["true"] if c["true"] else 0.0
        out["precision" + at] = c["matched"] / c["pred"] if c["pred"] else 0.0
        if task == "grounded_caption":
            out["phrase_recall" + at] = c["phrases_hit"] / c["phrases"] if c["phrases"] else 0.0
    elif task in ("counting", "count_class"):
        out["accuracy"] = c["exact"] / n if n else 0.0
        if "mae_n" in c:
            out["mae"] = c["abs_err"] / c["mae_n"] if c["mae_n"] else None
        if answers:
            out.update(majority_baseline(answers, n))
    elif task == "reg":
        out["exact_match"] = c["exact"] / n if n else 0.0
        out["similarity"] = c["f1"] / n if n else 0.0
    elif task == "vqa":
        out["anls"] = c["anls"] / n if n else 0.0
        out["normalized_levenshtein_similarity"] = c["nls"] / n if n else 0.0
        out["exact_match"] = c["exact"] / n if n else 0.0
    return out


def _add(total: dict, c: dict) -> None:
    for k, v in c.items():
        total[k] = total.get(k, 0) + v


class Scores:
    """Running sums of the counters per task and per task and dataset/split."""

    def __init__(self, threshold: float = 0.5, references: dict | None = None):
        self.threshold = threshold
        self.references = references or {}      # reg_key -> every reference text of that region
        self.totals: dict[str, dict] = {}
        self.groups: dict[str, dict[str, dict]] = {}
        self.answers: dict[tuple, Counter] = {}  # (task, group or None) -> true answer (JSON) counts

    def add(self, record: dict, generation: str) -> dict:
        task = record["task"]
        refs = self.references.get(reg_key(record)) if task == "reg" else None
        c = score_record(record, generation, self.threshold, refs)
        group = f"{record.get('dataset', '?')}/{record.get('split', '?')}"
        _add(self.totals.setdefault(task, {}), c)
        _add(self.groups.setdefault(task, {}).setdefault(group, {}), c)
        if task in ("counting", "count_class"):
            truth = parse(record, clean_generation(record["target"]))
            if truth is not None:
                key = json.dumps(truth, sort_keys=True)
                for g in (None, group):
                    self.answers.setdefault((task, g), Counter())[key] += 1
        return c

    def report(self) -> dict:
        """{task: {metrics..., "by_split": {"dataset/split": {metrics...}}}}."""
        report = {}
        for task in sorted(self.totals):
            report[task] = derived(task, self.totals[task], self.threshold, self.answers.get((task, None)))
            report[task]["by_split"] = {g: derived(task, c, self.threshold, self.answers.get((task, g)))
                                        for g, c in sorted(self.groups[task].items())}
        return report


def reg_references(records) -> dict:
    """reg_key -> the reference texts of every reg record of that region (in record order, deduplicated)."""
    refs: dict[tuple, list[str]] = {}
    for record in records:
        if record.get("task") == "reg":
            texts = refs.setdefault(reg_key(record), [])
            text = reference_text(record)
            if text not in texts:
                texts.append(text)
    return refs


def score_records(records: list[dict], generations: list[str], threshold: float = 0.5) -> dict:
    """Scores.report() over all records (reg against every reference of its region among `records`)."""
    if len(records) != len(generations):
        raise ValueError(f"{len(records)} records but {len(generations)} generations")
    scores = Scores(threshold, reg_references(records))
    for record, gen in zip(records, generations):
        scores.add(record, gen)
    return scores.report()


def headline(report: dict) -> dict:
    """One number per task, for logs: {"rec/acc@0.5": 0.71, ...}."""
    keys = {"rec": "acc@0.5", "phrase_grounding": "recall@0.5", "detection": "recall@0.5",
            "grounded_caption": "phrase_recall@0.5", "counting": "accuracy", "count_class": "accuracy",
            "reg": "exact_match", "vqa": "anls"}
    out = {f"{t}/{keys[t]}": round(v[keys[t]], 4) for t, v in report.items() if keys.get(t) in v}
    for t in ("counting", "count_class"):
        if t in report and "majority_accuracy" in report[t]:
            out[f"{t}/majority_accuracy"] = round(report[t]["majority_accuracy"], 4)
    return out


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)
