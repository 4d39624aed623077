"""Prompt templates and rendering of one canonical record into (prompt, target) for one model format.

Templates are registered per (task, format) with stable ids `task/format/i`. Formats whose model takes
free-form instructions get several paraphrases, chosen per record from sha256(seed, record id); formats with
a fixed task token (Florence-2, Kosmos-2, PaliGemma box tasks) get exactly one. What differs per format
(fixed prompts, target layout, text it cannot carry, coordinate frame) lives with the format's codec in
`transforms.formats`; this module holds the task logic. `parse_output` reads model output back for
evaluation; it inverts every target rendered here (boxes within one quantization bin).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from typing import Any, NamedTuple

from groundforge.schemas import TASKS
from groundforge.transforms.boxes import checked_box
from groundforge.transforms.codecs import FORMATS, Codec, find_special_tokens, get_codec
from groundforge.transforms.formats.base import (  # noqa: F401  (re-exported)
    ControlTokenError,
    FormatOptions,
    FormatTextError,
    RenderError,
)


class Template(NamedTuple):
    id: str
    task: str
    fmt: str
    prompt: str  # str.format pattern; fields: expr, phrase, phrases, caption, box, classes, plural, question

    def render(self, fields: dict) -> str:
        return self.prompt.format_map(fields)


class Rendered(NamedTuple):
    prompt: str
    target: str
    template_id: str


# ---------------------------------------------------------------------------------------------------------
# template registry

_REC = (
    "Locate {expr} in the image and output its bounding box.",
    "Find the region described by \"{expr}\" and give its bounding box.",
    "Where is {expr}? Answer with a bounding box.",
    "Output the bounding box of \"{expr}\".",
)
_PHRASE = (
    "Find all regions that match \"{phrase}\" and output their bounding boxes.",
    "Locate all instances of \"{phrase}\" in the image.",
    "Ground the phrase \"{phrase}\": give the bounding box of each region it refers to.",
)
_REG = (
    "Describe the region {box} in a short phrase.",
    "What is in the region {box}? Answer with a referring expression.",
    "Give a short description that singles out the object at {box}.",
)
_CAPTION = (
    "Describe the image in one sentence and ground each object you mention with its bounding box.",
    "Write a short caption for the image, giving the bounding box of every object it mentions.",
    "Briefly describe this image and include the coordinates of each mentioned object.",
)
_DETECT = (
    "Detect all instances of the following categories in the image: {classes}.",
    "Locate every object of these classes and give its bounding box: {classes}.",
    "Find each object in the image that is one of: {classes}. Output the bounding boxes.",
)
_COUNT = (
    "Count the objects of each class in the image: {classes}. Answer with a JSON object of the non-zero counts.",
    "How many of each of these are in the image: {classes}? Reply in JSON, leaving out classes that are absent.",
    "For the classes {classes}, count how many of each appear in the image. Give a JSON object mapping class to count.",
)
_COUNT_CLASS = (
    "How many {plural} are in the image?",
    "How many {plural} are there in this picture?",
    "Count the {plural} in the image.",
    "What is the number of {plural} in this image?",
)


def _paraphrases(task: str, fmt: str) -> tuple[str, ...]:
    codec = get_codec(fmt)
    if task in codec.fixed_prompts:
        return (codec.fixed_prompts[task],)
    if task == "vqa":  # the question is the instruction: one template, asked the way the format asks questions
        return (codec.question.format("{question}"),)
    if task in ("counting", "count_class"):
        base = _COUNT if task == "counting" else _COUNT_CLASS
        return tuple(codec.question.format(p) for p in base)
    return codec.paraphrases(task, {"rec": _REC, "phrase_grounding": _PHRASE, "reg": _REG,
                                    "grounded_caption": _CAPTION, "detection": _DETECT}[task])


REGISTRY: dict[tuple[str, str], tuple[Template, ...]] = {
    (task, fmt): tuple(Template(f"{task}/{fmt}/{i}", task, fmt, p) for i, p in enumerate(_paraphrases(task, fmt)))
    for task in TASKS for fmt in FORMATS
}
TEMPLATES: dict[str, Template] = {t.id: t for group in REGISTRY.values() for t in group}


def templates_for(task: str, fmt: str) -> tuple[Template, ...]:
    try:
        return REGISTRY[task, fmt]
    except KeyError:
        if fmt not in FORMATS:
            get_codec(fmt)  # raises the ValueError naming the valid formats
        raise RenderError("unknown_task", f"{task!r}; valid tasks: {', '.join(TASKS)}") from None


def get_template(template_id: str) -> Template:
    return TEMPLATES[template_id]


def choose_template(task: str, fmt: str, key: str, seed: int = 0) -> Template:
    """Deterministic choice among the paraphrases: sha256 of seed and key (never Python's salted hash())."""
    group = templates_for(task, fmt)
    if len(group) == 1:
        return group[0]
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode("utf-8")).digest()
    return group[int.from_bytes(digest[:8], "big") % len(group)]


# ---------------------------------------------------------------------------------------------------------
# record access

class _Obj(NamedTuple):
    label: str
    box: list[float]
    span: tuple[int, int] | None


class _Ctx(NamedTuple):
    codec: Codec
    fmt: str
    w: int
    h: int
    objects: list[_Obj]
    caption: str
    meta: dict


def _meta(value: Any) -> dict:
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    try:
        meta = json.loads(value)
    except (TypeError, ValueError) as err:
        raise RenderError("bad_meta", f"meta is not JSON: {err}") from None
    if not isinstance(meta, dict):
        raise RenderError("bad_meta", "meta is not a JSON object")
    return meta


def _objects(raw) -> list[_Obj]:
    out = []
    for obj in list(raw if raw is not None else []):
        span = obj.get("span")
        span = [int(v) for v in span] if span is not None else []
        if span and len(span) != 2:
            raise RenderError("bad_span", f"span {span} is not [start, end]")
        out.append(_Obj(str(obj.get("label") or ""), list(obj["bbox"]), tuple(span) if span else None))
    return out


def _check_texts(ctx: _Ctx) -> None:
    fields = [("caption", ctx.caption)] + [(f"objects[{i}].label", o.label) for i, o in enumerate(ctx.objects)]
    classes = ctx.meta.get("classes")
    if isinstance(classes, list):
        fields += [(f"meta.classes[{i}]", str(c)) for i, c in enumerate(classes)]
    if "class" in ctx.meta:
        fields.append(("meta.class", str(ctx.meta["class"])))
    for name, text in fields:
        tokens = find_special_tokens(text)
        if tokens:
            raise ControlTokenError(name, tokens)
    for name, text in fields:
        ctx.codec.check_text(name, text)


def _context(record: dict, fmt: str, options: FormatOptions | None = None) -> _Ctx:
    codec = get_codec(fmt, options or FormatOptions())
    try:
        w, h = int(record["width"]), int(record["height"])
    except (KeyError, TypeError, ValueError):
        raise RenderError("bad_size", f"width/height {record.get('width')!r}x{record.get('height')!r}") from None
    if w <= 0 or h <= 0:
        raise RenderError("bad_size", f"{w}x{h}")
    try:
        codec.frame(w, h)
    except ValueError as err:  # Qwen2.5-VL: aspect ratio over 200, or no pixels left within max_pixels
        raise RenderError("bad_aspect_ratio", f"{w}x{h}: {err}") from None
    objects = [o._replace(box=checked_box(o.box, w, h)) for o in _objects(record.get("objects"))]
    return _Ctx(codec, fmt, w, h, objects, record.get("caption") or "", _meta(record.get("meta")))


# ---------------------------------------------------------------------------------------------------------
# task renderers: ctx -> (prompt fields, target)

def _need_objects(ctx: _Ctx) -> list[list[float]]:
    if not ctx.objects:
        raise RenderError("no_objects", "the task needs at least one box")
    return [o.box for o in ctx.objects]


def _expression(ctx: _Ctx) -> str:
    text = (ctx.caption or (ctx.objects[0].label if ctx.objects else "")).strip()
    if not text:
        raise RenderError("missing_text", "no expression (caption) and no label")
    return text


def _label(ctx: _Ctx, field: str, text: str) -> str:
    """`text` as written next to box markup (a label, expression or phrase), checked for the format."""
    ctx.codec.check_label(field, text)
    return text


def _grounded_text(ctx: _Ctx, label: str, boxes: list) -> str:
    """Target for text -> boxes tasks (rec, phrase_grounding)."""
    return ctx.codec.grounded_text(label, boxes, ctx.w, ctx.h)


def _rec(ctx: _Ctx):
    boxes = _need_objects(ctx)
    expr = _label(ctx, "caption", _expression(ctx))
    return {"expr": expr}, _grounded_text(ctx, expr, boxes)


def _phrase_grounding(ctx: _Ctx):
    boxes = _need_objects(ctx)
    first = ctx.objects[0]
    if first.span and ctx.caption:
        phrase = ctx.caption[first.span[0]:first.span[1]].strip()
    else:
        phrase = _expression(ctx)
    if not phrase:
        raise RenderError("bad_span", f"empty phrase at span {first.span}")
    _label(ctx, "caption", phrase)
    return {"phrase": phrase}, _grounded_text(ctx, phrase, boxes)


def _reg(ctx: _Ctx):
    boxes = _need_objects(ctx)
    expr = _expression(ctx)
    c = ctx.codec
    box = c.box_text(boxes[0], ctx.w, ctx.h) if len(boxes) == 1 else c.boxes_text(boxes, ctx.w, ctx.h)
    target = c.region_text(expr, boxes, ctx.w, ctx.h)
    if target != expr:  # the expression is written as a label next to the boxes
        _label(ctx, "caption", expr)
    return {"box": box}, target


def _phrase_groups(ctx: _Ctx) -> list[tuple[int, int, list]]:
    """Objects grouped by span (whitespace trimmed), in caption order; overlapping spans are refused."""
    caption = ctx.caption
    if not caption.strip():
        raise RenderError("missing_text", "grounded_caption needs a caption")
    groups: dict[tuple[int, int], list] = {}
    for o in ctx.objects:
        if o.span is None:
            raise RenderError("bad_span", f"object {o.label!r} has no span in the caption")
        s, e = o.span
        if not 0 <= s < e <= len(caption):
            raise RenderError("bad_span", f"span {[s, e]} outside caption of length {len(caption)}")
        while s < e and caption[s].isspace():
            s += 1
        while e > s and caption[e - 1].isspace():
            e -= 1
        if s == e:
            raise RenderError("bad_span", f"span {list(o.span)} is blank")
        groups.setdefault((s, e), []).append(o.box)
    if not groups:
        raise RenderError("no_objects", "grounded_caption needs at least one grounded phrase")
    ordered = sorted(groups.items())
    for (s0, e0), ((s1, e1), _) in zip((k for k, _ in ordered), ordered[1:]):
        if s1 < e0:
            raise RenderError("bad_span", f"overlapping spans {[s0, e0]} and {[s1, e1]}")
    return [(s, e, boxes) for (s, e), boxes in ordered]


def _grounded_caption(ctx: _Ctx):
    groups = _phrase_groups(ctx)
    phrases = [_label(ctx, f"caption[{s}:{e}]", ctx.caption[s:e]) for s, e, _ in groups]
    fields = {"caption": ctx.caption, "phrases": " ; ".join(phrases)}
    return fields, ctx.codec.caption_text(ctx.caption, groups, ctx.w, ctx.h)


def _classes(ctx: _Ctx) -> list[str]:
    classes = ctx.meta.get("classes")
    if classes is None:
        return list(dict.fromkeys(o.label for o in ctx.objects))
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise RenderError("bad_meta", "meta.classes must be a list of strings")
    return list(dict.fromkeys(classes))


def _detection(ctx: _Ctx):
    _need_objects(ctx)
    items = [(_label(ctx, f"objects[{i}].label", o.label), o.box) for i, o in enumerate(ctx.objects)]
    classes = [_label(ctx, f"meta.classes[{i}]", c) for i, c in enumerate(_classes(ctx))]
    return {"classes": ctx.codec.class_sep.join(classes)}, ctx.codec.objects_text(items, ctx.w, ctx.h)


def _counting(ctx: _Ctx):
    if "classes" not in ctx.meta:
        raise RenderError("bad_meta", "counting needs meta.classes")
    classes = _classes(ctx)
    counts = Counter(o.label for o in ctx.objects)
    unknown = sorted(set(counts) - set(classes))
    if unknown:
        raise RenderError("unknown_class", f"labels {unknown} not in meta.classes")
    answer = {c: counts[c] for c in classes if counts[c]}
    return {"classes": ", ".join(classes)}, json.dumps(answer, ensure_ascii=False)


def _count_class(ctx: _Ctx):
    name = ctx.meta.get("class")
    if not isinstance(name, str) or not name.strip():
        raise RenderError("bad_meta", "count_class needs meta.class")
    count = sum(1 for o in ctx.objects if o.label == name)
    phrase = ctx.meta.get("class_plural")  # written by transforms.counting; older records: derived from the name
    if phrase is None:
        phrase = class_name(name).phrase
    if not isinstance(phrase, str) or not phrase.strip():
        raise RenderError("bad_meta", "meta.class_plural must be a non-empty string")
    tokens = find_special_tokens(phrase)
    if tokens:
        raise ControlTokenError("meta.class_plural", tokens)
    return {"plural": phrase}, str(count)


def _vqa(ctx: _Ctx):
    """Document VQA: the question is the caption, the answers are meta["answers"] (all kept for ANLS); the
    target is the first answer, whitespace collapsed (DocVQA lists the original annotator's answer first, and
    the Hugging Face Florence-2 DocVQA fine-tune trains on `example['answers'][0]`)."""
    question = " ".join(ctx.caption.split())
    if not question:
        raise RenderError("missing_text", "vqa needs a question (caption)")
    answers = ctx.meta.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise RenderError("bad_meta", "vqa needs meta.answers, a non-empty list of strings")
    for i, answer in enumerate(answers):
        tokens = find_special_tokens(answer)
        if tokens:
            raise ControlTokenError(f"meta.answers[{i}]", tokens)
        ctx.codec.check_text(f"meta.answers[{i}]", answer)
    target = " ".join(answers[0].split())
    if not target:
        raise RenderError("missing_text", "the first answer is blank")
    return {"question": question}, target


_RENDERERS = {"rec": _rec, "reg": _reg, "grounded_caption": _grounded_caption,
              "phrase_grounding": _phrase_grounding, "detection": _detection, "counting": _counting,
              "count_class": _count_class, "vqa": _vqa}


def render_record(record: dict, fmt: str, seed: int = 0, options: FormatOptions | None = None) -> Rendered:
    """Prompt and target of `record` for model format `fmt` (frame options: `options`, default FormatOptions()).

    Raises ValueError for an unknown format, ControlTokenError when record text carries control tokens,
    FormatTextError when text would not read back in this format, RenderError (reason attribute) or
    transforms.boxes.BoxError for records that cannot be rendered.
    """
    task = record.get("task")
    templates_for(task, fmt)  # unknown format / task fail first
    ctx = _context(record, fmt, options)
    _check_texts(ctx)
    fields, target = _RENDERERS[task](ctx)
    template = choose_template(task, fmt, str(record.get("id", "")), seed)
    return Rendered(template.render(fields), target, template.id)


# ---------------------------------------------------------------------------------------------------------
# class names and plurals for count_class prompts

_IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
              "goose": "geese", "tooth": "teeth", "foot": "feet", "knife": "knives", "leaf": "leaves",
              "wife": "wives", "shelf": "shelves", "wolf": "wolves", "calf": "calves", "ox": "oxen",
              "cactus": "cacti", "bus": "buses", "die": "dice", "fungus": "fungi", "bacterium": "bacteria",
              "louse": "lice", "loaf": "loaves", "thief": "thieves", "half": "halves", "life": "lives"}
_INVARIANT = {"sheep", "deer", "fish", "broccoli", "aircraft", "series", "species", "moose", "bison", "salmon"}
_VOWELS = set("aeiouy")


def plural(label: str) -> str:
    """Plural of an English noun phrase (last word inflected), good enough for dataset class names."""
    head, _, last = label.strip().rpartition(" ")
    low = last.lower()
    if low in _IRREGULAR:
        word = _IRREGULAR[low]
        word = word[0].upper() + word[1:] if last[:1].isupper() else word
    elif low in _INVARIANT or not low[-1:].isalpha():
        word = last
    elif last.isupper() and len(last) > 1:  # an acronym: RBC -> RBCs
        word = last + "s"
    elif low.endswith(("ss", "sh", "ch", "x", "z", "us")):  # minus -> minuses, box -> boxes
        word = last + "es"
    elif low.endswith("s"):  # already plural: skis, scissors, glasses-like class names
        word = last
    elif low.endswith("y") and low[-2:-1] not in ("a", "e", "i", "o", "u", ""):
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


class ClassName(NamedTuple):
    """How a count_class prompt names a class. `phrase` goes into the templates' {plural} slot."""
    source: str     # the class name in the source annotations (record labels, meta.class)
    display: str    # the name as read: `--class-names` entry, or the source name humanised
    plural: str     # plural of `display` (for a quoted name: `display` itself)
    quoted: bool    # the name is not a word ("8", "--", "i"): prompts say objects labelled '<name>'
    phrase: str     # "white queens" or "objects labelled '8'"


def humanise(name: str) -> str:
    """Source class name as read: `_` becomes a space, and so does a `-` between two words of two letters or more
    ("white-queens" -> "white queens"; "t-shirt" stays), blanks collapse, a lower-case word without vowels is an
    acronym ("rbc" -> "RBC", "rbcs" -> "RBCs")."""
    text = re.sub(r"(?<=[^\W\d_]{2})-(?=[^\W\d_]{2})", " ", name.replace("_", " "))
    return " ".join(_acronym(w) for w in text.split())


def _acronym(word: str) -> str:
    if not (word.isalpha() and word.islower() and len(word) > 1) or set(word) & _VOWELS:
        return word
    if word.endswith("s") and len(word) > 2:
        return word[:-1].upper() + "s"
    return word.upper()


def _is_word(word: str) -> bool:
    """A word a sentence can use as a noun: letters only (inner apostrophes allowed), two or more of them."""
    letters = word.replace("'", "").replace("-", "")
    return len(letters) >= 2 and letters.isalpha() and word[0].isalpha() and word[-1].isalpha()


def quote(name: str) -> str:
    q = "'" if "'" not in name else '"'
    return f"{q}{name}{q}"


def class_name(source: str, display: str | None = None, plural_form: str | None = None) -> ClassName:
    """Name a class for count_class prompts. `display` / `plural_form` come from `--class-names`; without them
    the source name is humanised and pluralised. A name whose last word is not a word ("8", "--", "i", "x") is
    quoted: "How many objects labelled '8' are in the image?" (an explicit display name is never quoted)."""
    if display is not None:
        display = " ".join(display.split())
        many = " ".join(plural_form.split()) if plural_form else plural(display)
        return ClassName(source, display, many, False, many)
    readable = humanise(source)
    words = readable.split()
    if not words or not _is_word(words[-1]):
        shown = source.strip() or source
        return ClassName(source, shown, shown, True, f"objects labelled {quote(shown)}")
    many = " ".join(plural_form.split()) if plural_form else plural(readable)
    return ClassName(source, readable, many, False, many)


# ---------------------------------------------------------------------------------------------------------
# model output -> predictions

_END_RE = re.compile(r"</?s>|<pad>|<eos>|<bos>|<\|im_end\|>|<\|endoftext\|>")
_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*(?:```)?$", re.S)
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}


def _clean(text: str) -> str:
    return _END_RE.sub("", text or "").strip()


def parse_output(task: str, fmt: str, text: str, width: int, height: int, meta=None):
    """Model output -> predictions for eval.

    rec / phrase_grounding / detection / grounded_caption: [(label, [x1, y1, x2, y2])] in pixels;
    counting: dict class -> int, or None if the text is not a JSON object of non-negative ints;
    count_class: int or None; reg: the expression (text before any box markup the target repeats);
    vqa: the answer text (score it with transforms.anls against meta["answers"]).
    `meta` (the record's meta, dict or JSON) gives the coordinate frame the record was rendered in
    (meta["frame"]); without it the default FormatOptions frame is used.
    """
    templates_for(task, fmt)
    text = _clean(text)
    if task == "reg":
        return _region_text(fmt, text)
    if task == "vqa":
        return text
    if task == "counting":
        return _parse_counts(text)
    if task == "count_class":
        return _parse_int(text)
    return get_codec(fmt, frame=_frame(meta)).decode(text, width, height)


def _frame(meta) -> dict | None:
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return None
    frame = meta.get("frame") if isinstance(meta, dict) else None
    return frame if isinstance(frame, dict) else None


def _region_text(fmt: str, text: str) -> str:
    return get_codec(fmt).region_answer(text)


def _parse_counts(text: str) -> dict | None:
    m = _FENCE_RE.match(text)
    try:
        value = json.loads(m.group(1) if m else text)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values()):
        return None
    return value


def _parse_int(text: str) -> int | None:
    m = re.fullmatch(r"(\d+)\s*\.?", text)
    if m:
        return int(m.group(1))
    m = re.search(r"(?<![\d.])\d+(?![\d.])", text)
    if m:
        return int(m.group(0))
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _NUMBER_WORDS:
            return _NUMBER_WORDS[word]
    return None
