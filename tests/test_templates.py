"""Template registry, exact renderings per task and format, control-token rejection, parse_output round trips."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from groundforge.transforms.codecs import FORMATS, get_codec
from groundforge.transforms.templates import (
    REGISTRY,
    TASKS,
    ControlTokenError,
    Rendered,
    RenderError,
    choose_template,
    get_template,
    parse_output,
    plural,
    render_record,
    templates_for,
)

W, H = 640, 480
MAN = [100, 50, 300, 410]
DOG1 = [320, 240, 400, 470]
DOG2 = [400, 240, 500, 470]


def obj(label, bbox, span=()):
    return {"label": label, "bbox": list(bbox), "score": 1.0, "span": list(span)}


def record(task, objects, caption=None, meta="{}", id="rec-1"):
    return {"id": id, "task": task, "width": W, "height": H, "objects": objects, "caption": caption, "meta": meta}


CAPTION = "A man walks two dogs in a park."
RECORDS = {
    "rec": record("rec", [obj("man", MAN)], caption="the man on the left"),
    "reg": record("reg", [obj("man", MAN)], caption="the man on the left"),
    "grounded_caption": record("grounded_caption", [obj("man", MAN, (0, 5)), obj("dog", DOG1, (12, 20)),
                                                    obj("dog", DOG2, (12, 20))], caption=CAPTION),
    "phrase_grounding": record("phrase_grounding", [obj("dog", DOG1, (12, 20)), obj("dog", DOG2, (12, 20))],
                               caption=CAPTION),
    "detection": record("detection", [obj("dog", DOG1), obj("person", MAN), obj("dog", DOG2)]),
    "counting": record("counting", [obj("dog", DOG1), obj("person", MAN), obj("dog", DOG2)],
                       meta=json.dumps({"classes": ["dog", "person", "cat"]})),
    "count_class": record("count_class", [obj("dog", DOG1), obj("dog", DOG2)], caption="dog",
                          meta={"class": "dog"}),
    "vqa": record("vqa", [], caption="What is the date?", meta={"answers": ["1/8/93", "January 8, 1993"]}),
}

# (task, format) -> (template id, prompt, target) for record id "rec-1", seed 0
EXPECTED = {
    ("rec", "florence2"): ("rec/florence2/0", "<OPEN_VOCABULARY_DETECTION>the man on the left",
                           "the man on the left<loc_156><loc_104><loc_468><loc_854>"),
    ("rec", "kosmos2"): ("rec/kosmos2/0", "<grounding><phrase> the man on the left</phrase>",
                         "<object><patch_index_0101><patch_index_0878></object>"),
    ("rec", "paligemma"): ("rec/paligemma/0", "detect the man on the left",
                           "<loc0107><loc0160><loc0874><loc0480> the man on the left"),
    ("rec", "qwen2vl"): ("rec/qwen2vl/0", "Locate the man on the left in the image and output its bounding box.",
                         "<|object_ref_start|>the man on the left<|object_ref_end|>"
                         "<|box_start|>(156,104),(469,854)<|box_end|>"),
    # Shikra's frame: 640x480 padded to 640x640 (80 px above), normalised by 640
    ("rec", "shikra"): ("rec/shikra/0", "Locate the man on the left in the image and output its bounding box.",
                        "[0.156,0.203,0.469,0.766]"),

    # the pretrained Florence-2 answers <REGION_TO_DESCRIPTION> with text<loc_..>x4
    ("reg", "florence2"): ("reg/florence2/0", "<REGION_TO_DESCRIPTION><loc_156><loc_104><loc_468><loc_854>",
                           "the man on the left<loc_156><loc_104><loc_468><loc_854>"),
    ("reg", "kosmos2"): ("reg/kosmos2/0",
                         "<grounding><phrase> It</phrase><object><patch_index_0101><patch_index_0878></object> is",
                         "the man on the left"),
    ("reg", "paligemma"): ("reg/paligemma/0", "caption en <loc0107><loc0160><loc0874><loc0480>",
                           "the man on the left"),
    ("reg", "qwen2vl"): ("reg/qwen2vl/1", "What is in the region <|box_start|>(156,104),(469,854)<|box_end|>? "
                         "Answer with a referring expression.", "the man on the left"),
    ("reg", "shikra"): ("reg/shikra/1", "What is in the region [0.156,0.203,0.469,0.766]? "
                        "Answer with a referring expression.", "the man on the left"),

    ("grounded_caption", "florence2"): (
        "grounded_caption/florence2/0", "<CAPTION_TO_PHRASE_GROUNDING>A man walks two dogs in a park.",
        "A man<loc_156><loc_104><loc_468><loc_854>"
        "two dogs<loc_500><loc_500><loc_625><loc_979><loc_625><loc_500><loc_781><loc_979>"),
    ("grounded_caption", "kosmos2"): (
        "grounded_caption/kosmos2/0", "<grounding> Describe this image in detail:",
        "<phrase> A man</phrase><object><patch_index_0101><patch_index_0878></object> walks"
        "<phrase> two dogs</phrase><object><patch_index_0528><patch_index_1011></delimiter_of_multi_objects/>"
        "<patch_index_0532><patch_index_1016></object> in a park."),
    ("grounded_caption", "paligemma"): (
        "grounded_caption/paligemma/0", "detect A man ; two dogs",
        "<loc0107><loc0160><loc0874><loc0480> A man ; <loc0512><loc0512><loc1002><loc0639> two dogs ; "
        "<loc0512><loc0639><loc1002><loc0799> two dogs"),
    ("grounded_caption", "qwen2vl"): (
        "grounded_caption/qwen2vl/1",
        "Write a short caption for the image, giving the bounding box of every object it mentions.",
        "<|object_ref_start|>A man<|object_ref_end|><|box_start|>(156,104),(469,854)<|box_end|> walks "
        "<|object_ref_start|>two dogs<|object_ref_end|><|box_start|>(500,500),(625,979)<|box_end|>"
        "<|box_start|>(625,500),(781,979)<|box_end|> in a park."),
    ("grounded_caption", "shikra"): (
        "grounded_caption/shikra/1",
        "Write a short caption for the image, giving the bounding box of every object it mentions.",
        "A man[0.156,0.203,0.469,0.766] walks two dogs[0.500,0.500,0.625,0.859;0.625,0.500,0.781,0.859] in a park."),

    ("phrase_grounding", "florence2"): (
        "phrase_grounding/florence2/0", "<CAPTION_TO_PHRASE_GROUNDING>two dogs",
        "two dogs<loc_500><loc_500><loc_625><loc_979><loc_625><loc_500><loc_781><loc_979>"),
    ("phrase_grounding", "kosmos2"): (
        "phrase_grounding/kosmos2/0", "<grounding><phrase> two dogs</phrase>",
        "<object><patch_index_0528><patch_index_1011></delimiter_of_multi_objects/>"
        "<patch_index_0532><patch_index_1016></object>"),
    ("phrase_grounding", "paligemma"): (
        "phrase_grounding/paligemma/0", "detect two dogs",
        "<loc0512><loc0512><loc1002><loc0639> two dogs ; <loc0512><loc0639><loc1002><loc0799> two dogs"),
    ("phrase_grounding", "qwen2vl"): (
        "phrase_grounding/qwen2vl/1", 'Locate all instances of "two dogs" in the image.',
        "<|object_ref_start|>two dogs<|object_ref_end|><|box_start|>(500,500),(625,979)<|box_end|>"
        "<|box_start|>(625,500),(781,979)<|box_end|>"),

    ("detection", "florence2"): (
        "detection/florence2/0", "<OD>",
        "dog<loc_500><loc_500><loc_625><loc_979>person<loc_156><loc_104><loc_468><loc_854>"
        "dog<loc_625><loc_500><loc_781><loc_979>"),
    ("detection", "kosmos2"): (
        "detection/kosmos2/0", "<grounding> Locate the objects in this image:",
        "<phrase> dog</phrase><object><patch_index_0528><patch_index_1011></delimiter_of_multi_objects/>"
        "<patch_index_0532><patch_index_1016></object><phrase> person</phrase><object><patch_index_0101>"
        "<patch_index_0878></object>"),
    ("detection", "paligemma"): (
        "detection/paligemma/0", "detect dog ; person",
        "<loc0512><loc0512><loc1002><loc0639> dog ; <loc0107><loc0160><loc0874><loc0480> person ; "
        "<loc0512><loc0639><loc1002><loc0799> dog"),
    ("detection", "qwen2vl"): (
        "detection/qwen2vl/1", "Locate every object of these classes and give its bounding box: dog, person.",
        "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(500,500),(625,979)<|box_end|>"
        "<|box_start|>(625,500),(781,979)<|box_end|>"
        "<|object_ref_start|>person<|object_ref_end|><|box_start|>(156,104),(469,854)<|box_end|>"),

    ("counting", "florence2"): (
        "counting/florence2/1", "How many of each of these are in the image: dog, person, cat? "
        "Reply in JSON, leaving out classes that are absent.", '{"dog": 2, "person": 1}'),
    ("counting", "kosmos2"): (
        "counting/kosmos2/1", "Question: How many of each of these are in the image: dog, person, cat? "
        "Reply in JSON, leaving out classes that are absent. Answer:", '{"dog": 2, "person": 1}'),
    ("counting", "paligemma"): (
        "counting/paligemma/1", "answer en How many of each of these are in the image: dog, person, cat? "
        "Reply in JSON, leaving out classes that are absent.", '{"dog": 2, "person": 1}'),
    ("counting", "qwen2vl"): (
        "counting/qwen2vl/1", "How many of each of these are in the image: dog, person, cat? "
        "Reply in JSON, leaving out classes that are absent.", '{"dog": 2, "person": 1}'),

    ("count_class", "florence2"): ("count_class/florence2/0", "How many dogs are in the image?", "2"),
    ("count_class", "kosmos2"): ("count_class/kosmos2/0",
                                 "Question: How many dogs are in the image? Answer:", "2"),
    ("count_class", "paligemma"): ("count_class/paligemma/0", "answer en How many dogs are in the image?",
                                   "2"),
    ("count_class", "qwen2vl"): ("count_class/qwen2vl/0", "How many dogs are in the image?", "2"),
}


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_exact_rendering(key):
    task, fmt = key
    out = render_record(RECORDS[task], fmt, seed=0)
    assert isinstance(out, Rendered)
    assert out == Rendered(EXPECTED[key][1], EXPECTED[key][2], EXPECTED[key][0])
    assert out.prompt == get_template(out.template_id).prompt.format(
        expr="the man on the left", phrase="two dogs", caption=CAPTION, phrases="A man ; two dogs",
        box=_box_field(task, fmt),
        classes=_classes_field(task, fmt), plural="dogs")


def _box_field(task, fmt):
    return get_codec(fmt).box_text(MAN, W, H)


def _classes_field(task, fmt):
    if task == "counting":
        return "dog, person, cat"
    return "dog ; person" if fmt == "paligemma" else "dog, person"


def test_qwen25vl_targets_are_json():
    codec = get_codec("qwen25vl")
    assert codec.resized(W, H) == (644, 476)
    rec = json.loads(render_record(RECORDS["rec"], "qwen25vl").target)
    assert rec == [{"bbox_2d": [101, 50, 302, 407], "label": "the man on the left"}]
    assert render_record(RECORDS["rec"], "qwen25vl").target == (
        '[{"bbox_2d": [101, 50, 302, 407], "label": "the man on the left"}]')
    det = json.loads(render_record(RECORDS["detection"], "qwen25vl").target)
    assert [d["label"] for d in det] == ["dog", "person", "dog"]
    assert det[1]["bbox_2d"] == [101, 50, 302, 407]
    pg = json.loads(render_record(RECORDS["phrase_grounding"], "qwen25vl").target)
    assert pg == [{"bbox_2d": [322, 238, 402, 466], "label": "two dogs"},
                  {"bbox_2d": [402, 238, 503, 466], "label": "two dogs"}]
    # grounded captions: the caption, then the fenced JSON list (what Qwen2.5-VL answers)
    gc = render_record(RECORDS["grounded_caption"], "qwen25vl").target
    caption, fenced = gc.split("\n", 1)
    assert caption == CAPTION
    assert fenced.startswith("```json\n") and fenced.endswith("\n```")
    assert [o["label"] for o in json.loads(fenced[8:-4])] == ["A man", "two dogs", "two dogs"]
    for task in ("rec", "phrase_grounding", "detection", "grounded_caption"):
        target = render_record(RECORDS[task], "qwen25vl").target
        for entry in get_codec("qwen25vl").decode(target, W, H):
            assert all(isinstance(v, float) for v in entry[1])
        body = target.split("```json\n")[-1].rstrip("`\n")
        for value in _bboxes(json.loads(body)):
            assert all(isinstance(v, int) for v in value)
    reg = render_record(RECORDS["reg"], "qwen25vl")
    assert "[101, 50, 302, 407]" in reg.prompt


def _bboxes(value):
    if isinstance(value, dict):
        return [value["bbox_2d"]] if "bbox_2d" in value else [b for v in value.values() for b in _bboxes(v)]
    if isinstance(value, list):
        return [b for v in value for b in _bboxes(v)]
    return []


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("task", ["rec", "phrase_grounding", "detection", "grounded_caption"])
def test_parse_output_roundtrip_within_one_bin(task, fmt):
    rec = RECORDS[task]
    out = render_record(rec, fmt)
    parsed = parse_output(task, fmt, out.target, W, H)
    bw, bh = get_codec(fmt).bin_size(W, H)
    if task == "detection" and fmt in ("kosmos2", "qwen2vl", "shikra"):
        expected = [DOG1, DOG2, MAN]  # these formats group boxes by label
    else:
        expected = [o["bbox"] for o in rec["objects"]]
    assert len(parsed) == len(expected)
    for (label, box), want in zip(parsed, expected):
        assert all(abs(a - b) <= (bw if i % 2 == 0 else bh) for i, (a, b) in enumerate(zip(box, want))), (box, want)
    labels = [label for label, _ in parsed]
    if task == "grounded_caption" and fmt != "shikra":
        assert labels == ["A man", "two dogs", "two dogs"]
    if task == "detection" and fmt in ("florence2", "paligemma", "qwen25vl"):
        assert labels == ["dog", "person", "dog"]
    if task == "rec" and fmt not in ("kosmos2", "shikra"):
        assert labels == ["the man on the left"]


def test_parse_output_other_tasks():
    assert parse_output("reg", "florence2", "</s><s> the man on the left </s>", W, H) == "the man on the left"
    assert parse_output("counting", "qwen2vl", '{"dog": 2, "person": 1}<|im_end|>', W, H) == {"dog": 2, "person": 1}
    assert parse_output("counting", "qwen25vl", '```json\n{"dog": 2}\n```', W, H) == {"dog": 2}
    for bad in ['{"dog": "two"}', '{"dog": 2.5}', '{"dog": true}', '[1, 2]', "two dogs", '{"dog": -1}', ""]:
        assert parse_output("counting", "florence2", bad, W, H) is None, bad
    assert parse_output("count_class", "florence2", "2", W, H) == 2
    assert parse_output("count_class", "florence2", "0", W, H) == 0
    assert parse_output("count_class", "kosmos2", "There are 3 dogs.", W, H) == 3
    assert parse_output("count_class", "paligemma", "three", W, H) == 3
    assert parse_output("count_class", "qwen2vl", "many", W, H) is None
    assert parse_output("rec", "florence2", "garbage <loc_1", W, H) == []
    for task in TASKS:
        render = render_record(RECORDS[task], "florence2")
        parsed = parse_output(task, "florence2", render.target, W, H)
        if task == "counting":
            assert parsed == {"dog": 2, "person": 1}
        elif task == "count_class":
            assert parsed == 2
        elif task == "reg":
            assert parsed == "the man on the left"
        elif task == "vqa":
            assert parsed == "1/8/93"


def test_counting_target_follows_class_order_and_drops_zeros():
    base = RECORDS["counting"]
    assert render_record(base, "qwen2vl").target == '{"dog": 2, "person": 1}'
    other = {**base, "meta": {"classes": ["person", "cat", "dog"]}}
    assert render_record(other, "qwen2vl").target == '{"person": 1, "dog": 2}'
    empty = {**base, "objects": [], "meta": {"classes": ["person", "cat"]}}
    assert render_record(empty, "florence2").target == "{}"
    with pytest.raises(RenderError) as err:
        render_record({**base, "meta": {"classes": ["person"]}}, "florence2")
    assert err.value.reason == "unknown_class"
    with pytest.raises(RenderError) as err:
        render_record({**base, "meta": "{}"}, "florence2")
    assert err.value.reason == "bad_meta"


def test_count_class_zero_and_plurals():
    zero = {**RECORDS["count_class"], "objects": [], "meta": {"class": "person"}, "caption": "person"}
    out = render_record(zero, "florence2")
    assert out.target == "0"
    assert "people" in out.prompt
    cases = {"dog": "dogs", "person": "people", "bus": "buses", "traffic light": "traffic lights",
             "wine glass": "wine glasses", "bench": "benches", "skis": "skis", "sheep": "sheep", "knife": "knives",
             "mouse": "mice", "teddy bear": "teddy bears", "butterfly": "butterflies", "toy": "toys",
             "box": "boxes", "broccoli": "broccoli", "tv": "tvs", "scissors": "scissors", "toothbrush": "toothbrushes"}
    for word, want in cases.items():
        assert plural(word) == want, word
    prompts = {t.prompt for t in templates_for("count_class", "qwen2vl")}
    assert "How many {plural} are in the image?" in prompts


def test_control_tokens_rejected():
    bad = {**RECORDS["rec"], "caption": "the <loc_12> man"}
    for fmt in FORMATS:
        with pytest.raises(ControlTokenError) as err:
            render_record(bad, fmt)
        assert isinstance(err.value, ValueError)
        assert err.value.reason == "control_tokens"
        assert err.value.tokens == ["<loc_12>"]
        assert "caption" in str(err.value)
    with pytest.raises(ControlTokenError):
        render_record({**RECORDS["detection"], "objects": [obj("dog<|box_end|>", DOG1)]}, "paligemma")
    with pytest.raises(ControlTokenError):
        render_record({**RECORDS["count_class"], "meta": {"class": "</s>"}, "caption": None}, "qwen2vl")
    with pytest.raises(ControlTokenError):
        render_record({**RECORDS["counting"], "meta": {"classes": ["dog", "person", "<OD>"]}}, "florence2")
    ok = {**RECORDS["rec"], "caption": "the man with a <3 shirt, a < b"}
    assert render_record(ok, "qwen2vl").target.startswith(
        "<|object_ref_start|>the man with a <3 shirt, a < b<|object_ref_end|>")
    with pytest.raises(RenderError) as err:  # not a control token, but Florence-2's parser ends a label at '<'
        render_record(ok, "florence2")
    assert err.value.reason == "label_markup"


def test_template_choice_deterministic_and_seed_dependent():
    keys = [f"key-{i}" for i in range(300)]
    for task in TASKS:
        for fmt in FORMATS:
            group = templates_for(task, fmt)
            ids = [t.id for t in group]
            assert ids == [f"{task}/{fmt}/{i}" for i in range(len(group))]
            picks = [choose_template(task, fmt, k, 0).id for k in keys]
            assert picks == [choose_template(task, fmt, k, 0).id for k in keys]
            if len(group) > 1:
                assert set(picks) == set(ids)  # every paraphrase is used
                assert picks != [choose_template(task, fmt, k, 1).id for k in keys]
                digest = hashlib.sha256(f"7\x1f{keys[0]}".encode()).digest()
                assert choose_template(task, fmt, keys[0], 7) is group[int.from_bytes(digest[:8], "big") % len(group)]


def test_paraphrases_only_for_free_form_formats():
    fixed = {"florence2", "kosmos2", "paligemma"}
    for (task, fmt), group in REGISTRY.items():
        if task == "vqa":  # the question is the instruction: one template per format
            assert len(group) == 1, (task, fmt)
        elif task in ("counting", "count_class") or fmt not in fixed:
            assert len(group) >= 2, (task, fmt)
        else:
            assert len(group) == 1, (task, fmt)


def test_rendering_independent_of_python_hash_seed():
    code = ("import json, sys; from groundforge.transforms.templates import render_record; RECORDS = json.loads(sys.argv[1]);"
            "print(json.dumps([render_record({**r, 'id': f'k{i}'}, f, 3) for i, r in enumerate(RECORDS.values())"
            " for f in ('qwen2vl', 'shikra', 'qwen25vl')]))")
    outs = {subprocess.run([sys.executable, "-c", code, json.dumps(RECORDS)], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}, cwd=_repo()).stdout for seed in ("1", "2")}
    assert len(outs) == 1


def _repo():
    import pathlib
    return str(pathlib.Path(__file__).resolve().parent.parent)


def test_render_errors():
    with pytest.raises(ValueError, match="florence2"):
        render_record(RECORDS["rec"], "llava")
    with pytest.raises(RenderError) as err:
        render_record({**RECORDS["rec"], "task": "ocr"}, "florence2")
    assert err.value.reason == "unknown_task"
    with pytest.raises(RenderError) as err:
        render_record({**RECORDS["rec"], "objects": []}, "florence2")
    assert err.value.reason == "no_objects"
    overlap = [obj("man", MAN, (0, 5)), obj("dog", DOG1, (2, 9))]
    with pytest.raises(RenderError) as err:
        render_record({**RECORDS["grounded_caption"], "objects": overlap}, "kosmos2")
    assert err.value.reason == "bad_span"
    with pytest.raises(RenderError) as err:
        render_record({**RECORDS["grounded_caption"], "objects": [obj("man", MAN)]}, "qwen2vl")
    assert err.value.reason == "bad_span"
    with pytest.raises(RenderError) as err:
        render_record({**RECORDS["rec"], "meta": "{not json"}, "florence2")
    assert err.value.reason == "bad_meta"
    with pytest.raises(RenderError) as err:
        render_record({**RECORDS["rec"], "width": 20000, "height": 10}, "qwen25vl")
    assert err.value.reason == "bad_aspect_ratio"
    from groundforge.transforms.boxes import BoxError
    with pytest.raises(BoxError) as err:
        render_record({**RECORDS["rec"], "objects": [obj("man", [10, 10, 5, 20])]}, "florence2")
    assert err.value.reason == "inverted_box"


def test_kosmos2_space_goes_inside_phrase_and_spans_are_trimmed():
    rec = record("grounded_caption", [obj("dog", DOG1, (1, 6))], caption="a dog  runs")  # span " dog " -> "dog"
    assert render_record(rec, "kosmos2").target == (
        "a<phrase> dog</phrase><object><patch_index_0528><patch_index_1011></object>  runs")
    assert render_record(rec, "qwen2vl").target == (
        "a <|object_ref_start|>dog<|object_ref_end|><|box_start|>(500,500),(625,979)<|box_end|>  runs")


def test_numpy_like_objects_and_dict_meta():
    import numpy as np

    rec = {**RECORDS["rec"], "objects": [{"label": "man", "bbox": np.array(MAN, dtype=np.float32),
                                          "score": np.float32(1.0), "span": np.array([], dtype=np.int32)}],
           "meta": {"source": "x"}}
    assert render_record(rec, "florence2") == render_record(RECORDS["rec"], "florence2")


def test_every_template_renders():
    seen = set()
    for task, rec in RECORDS.items():
        for fmt in FORMATS:
            for i in range(60):
                out = render_record({**rec, "id": f"id-{i}"}, fmt, seed=i % 3)
                assert "{" not in out.prompt and "}" not in out.prompt
                seen.add(out.template_id)
    assert seen == {t.id for group in REGISTRY.values() for t in group}
