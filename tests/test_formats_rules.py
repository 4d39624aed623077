"""Format registry, options and per-format text rules: labels a parser would read back differently are
rejected with a reason, Shikra labels read back as the phrase, frames recorded in meta decode the same."""
from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import pytest

from groundforge.transforms import codecs
from groundforge.transforms.codecs import FORMATS, get_codec
from groundforge.transforms.records import rendered
from groundforge.transforms.templates import (
    REGISTRY,
    ControlTokenError,
    FormatOptions,
    FormatTextError,
    RenderError,
    parse_output,
    render_record,
)

W, H = 640, 480
MAN = [100, 50, 300, 410]
DOG = [320, 240, 400, 470]


def obj(label, bbox, span=()):
    return {"label": label, "bbox": list(bbox), "score": 1.0, "span": list(span)}


def record(task, objects, caption=None, meta=None, w=W, h=H, id="r1"):
    return {"id": id, "task": task, "width": w, "height": h, "objects": objects, "caption": caption,
            "meta": meta or {}}


def reason(rec, fmt):
    with pytest.raises(RenderError) as err:
        render_record(rec, fmt)
    return err.value.reason


# ---------------------------------------------------------------------------------------------------------
# registry and options

def test_formats_derive_from_the_codec_modules():
    assert FORMATS == tuple(cls.name for cls in codecs._CODEC_CLASSES)
    assert FORMATS == ("florence2", "kosmos2", "paligemma", "qwen2vl", "qwen25vl", "shikra")
    for fmt in FORMATS:
        codec = get_codec(fmt)
        module = Path(type(codec).__module__.replace(".", "/")).name
        assert module == fmt  # one module per format: transforms/formats/<fmt>.py
        for task, prompt in codec.fixed_prompts.items():
            assert REGISTRY[task, fmt][0].prompt == prompt and len(REGISTRY[task, fmt]) == 1


def test_format_options_defaults_help_and_validation():
    options = FormatOptions()
    assert (options.qwen_min_pixels, options.qwen_max_pixels, options.shikra_frame) == (3136, 12845056, "square")
    assert all(f.metadata.get("help") for f in dataclasses.fields(FormatOptions))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.shikra_frame = "plain"
    for bad in ({"shikra_frame": "padded"}, {"qwen_min_pixels": 0}, {"qwen_min_pixels": 10, "qwen_max_pixels": 5}):
        with pytest.raises(ValueError):
            FormatOptions(**bad)


def test_frame_goes_into_meta_and_parse_output_uses_it():
    rec = record("rec", [obj("cup", [2000, 1500, 2400, 1900])], caption="the cup", w=4032, h=3024)
    small = FormatOptions(qwen_max_pixels=1003520)
    out = rendered(rec, "qwen25vl", 0, small)
    meta = json.loads(out["meta"])
    assert meta["frame"] == {"format": "qwen25vl", "factor": 28, "min_pixels": 3136, "max_pixels": 1003520,
                             "width": 1148, "height": 840}
    assert json.loads(out["target"])[0]["bbox_2d"] == [569, 417, 683, 528]
    got = parse_output("rec", "qwen25vl", out["target"], 4032, 3024, meta=out["meta"])
    assert all(abs(a - b) <= 4032 / 1148 for a, b in zip(got[0][1], [2000, 1500, 2400, 1900]))
    default = rendered(rec, "qwen25vl", 0)
    assert json.loads(default["target"])[0]["bbox_2d"] == [2000, 1500, 2400, 1900]
    assert json.loads(default["meta"])["frame"]["width"] == 4032
    # re-rendering for a format without a frame drops the old one
    assert "frame" not in json.loads(rendered({**out, "meta": out["meta"]}, "florence2", 0)["meta"])
    plain = rendered(rec, "shikra", 0, FormatOptions(shikra_frame="plain"))
    assert json.loads(plain["meta"])["frame"] == {"format": "shikra", "frame": "plain"}
    square = rendered(rec, "shikra", 0)
    assert json.loads(square["meta"])["frame"] == {"format": "shikra", "frame": "square", "side": 4032,
                                                   "pad_x": 0, "pad_y": 504}
    for r in (plain, square):
        box = parse_output("rec", "shikra", r["target"], 4032, 3024, meta=r["meta"])[0][1]
        assert all(abs(a - b) <= 4.032 for a, b in zip(box, [2000, 1500, 2400, 1900]))


def test_qwen25vl_thin_image_frame():
    """A side of 14 px or less: qwen-vl-utils floors it at 28 px and keeps the other side."""
    rec = record("rec", [obj("line", [0, 0, 500, 10])], caption="the line", w=1000, h=10)
    out = rendered(rec, "qwen25vl", 0)
    assert json.loads(out["meta"])["frame"]["width"] == 1008
    assert json.loads(out["target"])[0]["bbox_2d"] == [0, 0, 504, 28]


# ---------------------------------------------------------------------------------------------------------
# text a format cannot carry

def test_paligemma_rejects_separator_in_labels():
    for rec in (record("rec", [obj("x", MAN)], caption="salt; pepper"),
                record("detection", [obj("salt;pepper", MAN)]),
                record("detection", [obj("dog", DOG)], meta={"classes": ["dog", "cat;mouse"]}),
                record("grounded_caption", [obj("x", MAN, (0, 12))], caption="salt; pepper on a table"),
                record("phrase_grounding", [obj("x", MAN, (0, 12))], caption="salt; pepper on a table")):
        assert reason(rec, "paligemma") == "label_separator", rec
        assert render_record(rec, "qwen2vl")  # other formats carry it
    # why: the model's own separator splits the label (so does groundforge's decode, and the reference parser)
    target = get_codec("paligemma").phrase_text("salt; pepper", [MAN], W, H)
    assert [label for label, _ in get_codec("paligemma").decode(target, W, H)] != ["salt; pepper"]
    assert paligemma_space_names(target) != ["salt; pepper"]
    target = render_record(record("detection", [obj("t-shirt", MAN), obj("7up can", DOG)]), "paligemma").target
    assert paligemma_space_names(target) == ["t-shirt", "7up can"]


def paligemma_space_names(text: str) -> list:
    """Object names as the PaliGemma reference parser reads them: `_SEGMENT_DETECT_RE` and its loop in the
    big-vision/paligemma-hf Hugging Face Space (app.py), which big_vision's PaliGemma demos share."""
    segment_detect_re = re.compile(
        r'(.*?)' + r'<loc(\d{4})>' * 4 + r'\s*' + '(?:%s)?' % (r'<seg(\d{3})>' * 16) + r'\s*([^;<>]+)? ?(?:; )?')
    names = []
    while text:
        m = segment_detect_re.match(text)
        if not m:
            break
        names.append((m.groups()[-1] or "").strip())
        text = text[len(m.group()):]
    return names
    # a caption with ';' outside the grounded phrases is fine: only the phrases are written as labels
    ok = record("grounded_caption", [obj("dog", DOG, (0, 5))], caption="a dog; a bone")
    assert render_record(ok, "paligemma").target.endswith("> a dog")


@pytest.mark.parametrize("fmt,text", [("paligemma", "a <b> tag"), ("paligemma", "x > y"), ("florence2", "a < b"),
                                      ("kosmos2", "I <3 NY")])
def test_markup_characters_in_labels_rejected_where_the_parser_stops_at_them(fmt, text):
    err_reason = reason(record("rec", [obj("x", MAN)], caption=text), fmt)
    assert err_reason == "label_markup"
    if fmt == "paligemma":  # the reference parser would cut the name at the markup character
        assert paligemma_space_names(get_codec(fmt).phrase_text(text, [MAN], W, H)) != [text]
    with pytest.raises(FormatTextError) as err:
        render_record(record("detection", [obj(text, MAN)]), fmt)
    assert err.value.field == "objects[0].label" and err.value.fmt == fmt and fmt in str(err.value)
    assert render_record(record("rec", [obj("x", MAN)], caption=text), "qwen2vl")


def test_shikra_rejects_its_box_syntax_in_text():
    for rec in (record("rec", [obj("x", MAN)], caption="the box [0.1,0.2,0.3,0.4] on the left"),
                record("reg", [obj("x", MAN)], caption="point [0.5,0.5]"),
                record("detection", [obj("crate[0,0,1,1]", MAN)]),
                record("grounded_caption", [obj("dog", DOG, (0, 5))],
                       caption="a dog at [0.1,0.2,0.3,0.4;0.5,0.5,1,1]")):
        with pytest.raises(FormatTextError) as err:
            render_record(rec, "shikra")
        assert err.value.reason == "box_syntax"
        assert isinstance(err.value, RenderError) and not isinstance(err.value, ControlTokenError)
        render_record(rec, "florence2")  # plain text for the others
    assert render_record(record("rec", [obj("x", MAN)], caption="a [big] dog (2 of 3)"), "shikra")


# ---------------------------------------------------------------------------------------------------------
# reading answers back

def _sample_captions() -> list[str]:
    root = Path(__file__).resolve().parent.parent / "pipeline" / "sample_data" / "captions.json"
    return [a["caption"] for a in json.loads(root.read_text())["annotations"]]


def test_shikra_grounded_caption_labels_are_the_phrases():
    """The 50 sample captions ("a yellow mug, a white couch and a brown bicycle in a green field"): every box
    reads back with its phrase, not with the caption words before it ("and a brown bicycle")."""
    rng = random.Random(3)
    captions = _sample_captions()
    assert len(captions) == 50
    for i, caption in enumerate(captions):
        objects = []
        for m in re.finditer(r"(?:^|, | and | in )(.+?)(?=, | and | in |$)", caption):  # the noun phrases
            x, y = rng.uniform(0, 300), rng.uniform(0, 200)
            objects.append(obj(m.group(1).split()[-1], [x, y, x + 100, y + 80], m.span(1)))
        assert len(objects) >= 2
        rec = record("grounded_caption", objects, caption=caption, id=f"s{i}")
        out = render_record(rec, "shikra")
        labels = [label for label, _ in parse_output("grounded_caption", "shikra", out.target, W, H)]
        assert labels == [caption[s:e] for s, e in (o["span"] for o in objects)], (caption, out.target)


@pytest.mark.parametrize("text,want", [
    ("A man[0.1,0.1,0.2,0.2] walks two dogs[0.3,0.3,0.4,0.4;0.5,0.5,0.6,0.6] in a park.",
     ["A man", "two dogs", "two dogs"]),
    ("two mugs[0.1,0.1,0.2,0.2], a white ball[0.3,0.3,0.4,0.4] and a green sofa[0.5,0.5,0.6,0.6] in a room",
     ["two mugs", "a white ball", "a green sofa"]),
    ("dog[0.1,0.1,0.2,0.2], traffic light[0.3,0.3,0.4,0.4]", ["dog", "traffic light"]),
    ("a cat sitting on the sofa[0.1,0.1,0.2,0.2]", ["the sofa"]),
])
def test_shikra_label_is_the_noun_phrase_before_the_box(text, want):
    assert [label for label, _ in parse_output("grounded_caption", "shikra", text, W, H)] == want


def test_florence2_reg_answer_read_with_or_without_boxes():
    out = render_record(record("reg", [obj("man", MAN)], caption="the man on the left"), "florence2")
    assert out.target == "the man on the left<loc_156><loc_104><loc_468><loc_854>"
    assert parse_output("reg", "florence2", out.target + "</s>", W, H) == "the man on the left"
    assert parse_output("reg", "florence2", "</s><s>the man on the left</s>", W, H) == "the man on the left"
    assert parse_output("reg", "qwen2vl", "the man on the left<|im_end|>", W, H) == "the man on the left"


def test_qwen25vl_grounded_caption_is_text_then_the_json_list():
    rec = record("grounded_caption", [obj("man", MAN, (0, 5)), obj("dog", DOG, (12, 20))],
                 caption="A man walks two dogs in a park.")
    target = render_record(rec, "qwen25vl").target
    assert target == ('A man walks two dogs in a park.\n```json\n[{"bbox_2d": [101, 50, 302, 407], "label": "A man"}, '
                      '{"bbox_2d": [322, 238, 402, 466], "label": "two dogs"}]\n```')
    assert [label for label, _ in parse_output("grounded_caption", "qwen25vl", target, W, H)] == ["A man", "two dogs"]
