"""count_class questions that read right: class names that are not words, --class-names, the zero-answer cap,
crowd regions as skipped classes (transforms.counting.image_records, transforms.templates.class_name)."""
from __future__ import annotations

import json

import pytest

from groundforge.transforms.counting import (
    Categories,
    count_image,
    image_records,
    load_class_names,
    zeros_allowed,
)
from groundforge.transforms.templates import (
    ControlTokenError,
    class_name,
    plural,
    render_record,
    templates_for,
)

BASE = {"split": "train", "image": {"bytes": None, "path": "a.jpg"}, "image_id": "7", "width": 100, "height": 80,
        "image_sha256": "0" * 64}
META = {"source": "_annotations.coco.json", "builder": "counting"}


def _cats(names):
    return Categories(list(names), {i + 1: n for i, n in enumerate(names)})


def _ann(i, cat, box=(10, 10, 20, 20), crowd=0):
    return {"id": i, "category_id": cat, "bbox": list(box), "iscrowd": crowd}


def _meta(record):
    meta = record["meta"]
    return json.loads(meta) if isinstance(meta, str) else meta


# Real class names from public Roboflow exports that used to read wrongly:
#   "How many 8 are in the image?", "How many -- are ...", "How many is are ..." (class "i"), "xes",
#   "minus" (not pluralised), "white-queens", "rbcs".
REAL_NAMES = {
    "8": "How many objects labelled '8' are in the image?",
    "--": "How many objects labelled '--' are in the image?",
    "i": "How many objects labelled 'i' are in the image?",
    "x": "How many objects labelled 'x' are in the image?",
    "minus": "How many minuses are in the image?",
    "white-queen": "How many white queens are in the image?",
    "black_king": "How many black kings are in the image?",
    "rbc": "How many RBCs are in the image?",
    "RBC": "How many RBCs are in the image?",
    "Platelets": "How many Platelets are in the image?",
    "traffic light": "How many traffic lights are in the image?",
    "person": "How many people are in the image?",
}


@pytest.mark.parametrize("name", sorted(REAL_NAMES))
def test_real_class_names_read_right_in_every_paraphrase(name):
    cats = _cats([name])
    counts = count_image([_ann(1, 1)], cats, 100, 80)
    [record] = [r for r in image_records(BASE, counts, cats.classes, "counting", META).records
                if r["task"] == "count_class"]
    meta = _meta(record)
    assert meta["class"] == name and meta["count"] == 1
    assert meta["class_quoted"] == REAL_NAMES[name].startswith("How many objects labelled")
    prompts = {t.render({"plural": meta["class_plural"]}) for t in templates_for("count_class", "qwen2vl")}
    assert REAL_NAMES[name] in prompts
    rendered = render_record(record, "qwen2vl")
    assert rendered.prompt in prompts and rendered.target == "1"
    for bad in (" 8 are", " -- are", " is are", "xes", "minus are", "white-queens", "rbcs"):
        assert bad not in rendered.prompt
    # deterministic: the same record renders the same text every time, and for every format
    assert render_record(record, "qwen2vl") == rendered
    assert render_record(record, "paligemma").prompt.startswith("answer en ")


def test_records_without_the_new_meta_render_with_the_same_reading():
    old = {"id": "r", "task": "count_class", "width": 10, "height": 10, "objects": [], "caption": "8",
           "meta": {"class": "8"}}
    assert "objects labelled '8'" in render_record(old, "florence2").prompt
    old["meta"] = {"class": "white-queen"}
    assert " white queens " in render_record(old, "florence2").prompt


def test_plural_rules():
    for word, want in [("minus", "minuses"), ("plus", "pluses"), ("bus", "buses"), ("RBC", "RBCs"),
                       ("box", "boxes"), ("skis", "skis"), ("die", "dice"), ("knife", "knives")]:
        assert plural(word) == want, word


def test_class_names_file():
    text = json.dumps({"8": "eight ball", "rbc": {"name": "red blood cell"},
                       "minus": {"name": "minus sign", "plural": "minus signs"}, "x": {"name": "letter x"}})
    names = load_class_names(text)
    assert names["8"].phrase == "eight balls" and not names["8"].quoted
    assert names["rbc"].phrase == "red blood cells"
    assert names["minus"].phrase == "minus signs" and names["x"].phrase == "letter xes"
    cats = _cats(["8", "rbc", "minus", "dog"])
    counts = count_image([_ann(1, 1), _ann(2, 2), _ann(3, 2, (30, 30, 5, 5))], cats, 100, 80)
    recs = image_records(BASE, counts, cats.classes, "counting", META, class_names=names).records
    phrases = {_meta(r)["class"]: _meta(r)["class_plural"] for r in recs if r["task"] == "count_class"}
    assert phrases == {"8": "eight balls", "rbc": "red blood cells", "minus": "minus signs", "dog": "dogs"}
    for r in recs:
        if r["task"] == "count_class":
            assert f" {phrases[_meta(r)['class']]} " in render_record(r, "florence2").prompt
    for bad, why in [("[1]", "JSON object"), ("{", "not JSON"), ('{"8": 3}', "'8' must be"),
                     ('{"8": {"name": "a", "plural": ""}}', "empty or non-string plural"),
                     ('{"8": {"name": " "}}', "empty name"), ('{"8": {"nom": "a"}}', "'8' must be")]:
        with pytest.raises(ValueError, match=why):
            load_class_names(bad, "names.json")
    # a display name with control tokens is refused at render time, not written into a prompt
    recs = image_records(BASE, counts, cats.classes, "counting", META,
                         class_names=load_class_names('{"dog": "dog<loc_5>"}')).records
    with pytest.raises(ControlTokenError):
        render_record([r for r in recs if _meta(r).get("class") == "dog"][0], "florence2")


COCO_LIKE = [f"class{i:02d}" for i in range(80)]


def _zero_heavy(seed=0, ratio=None, classes=COCO_LIKE):
    cats = _cats(classes)
    # 3 objects of 2 classes in an image of 80 classes: 78 of 80 answers would be 0 (97.5 %)
    anns = [_ann(1, 5), _ann(2, 5, (40, 10, 10, 10)), _ann(3, 40)]
    return image_records(BASE, count_image(anns, cats, 100, 80), cats.classes, "counting", META,
                         max_zero_ratio=ratio, seed=seed)


def test_max_zero_ratio_caps_zero_answers_per_image_deterministically():
    everything = _zero_heavy()
    assert sum(r["task"] == "count_class" for r in everything.records) == 80 and not everything.stats
    half = _zero_heavy(ratio=0.5)
    answers = [_meta(r)["count"] for r in half.records if r["task"] == "count_class"]
    assert sorted(answers) == [0, 0, 1, 2]
    assert half.stats["count_class_zero_dropped"] == 76
    assert any(r["task"] == "counting" for r in half.records)  # the all-class question stays
    # same seed: same questions (and independent of class order); another seed: another choice of zeros
    again = _zero_heavy(ratio=0.5)
    assert [r["id"] for r in again.records] == [r["id"] for r in half.records]
    kept = {_meta(r)["class"] for r in half.records if r["task"] == "count_class"}
    cats_rev = list(reversed(COCO_LIKE))
    rev = image_records(BASE, count_image([_ann(1, 76), _ann(2, 76, (40, 10, 10, 10)), _ann(3, 41)], _cats(cats_rev),
                                          100, 80), cats_rev, "counting", META, max_zero_ratio=0.5)
    assert {_meta(r)["class"] for r in rev.records if r["task"] == "count_class"} == kept
    other = {_meta(r)["class"] for r in _zero_heavy(seed=1, ratio=0.5).records
             if r["task"] == "count_class"}
    assert other != kept and {"class04", "class39"} <= other
    assert sum(_meta(r)["count"] == 0 for r in _zero_heavy(ratio=0.0).records
               if r["task"] == "count_class") == 0
    assert len(_zero_heavy(ratio=1.0).records) == 81
    assert zeros_allowed(2, 0.5) == 2 and zeros_allowed(3, 0.25) == 1 and zeros_allowed(0, 0.9) == 0
    assert zeros_allowed(1, 0.8) == 4  # 4 / (1 + 4) = 0.8 exactly
    with pytest.raises(ValueError, match="within 0..1"):
        _zero_heavy(ratio=1.5)


def test_crowd_region_is_a_skipped_class_not_a_rejected_image():
    cats = _cats(["person", "dog", "cat"])
    counts = count_image([_ann(1, 1, (0, 0, 90, 70), crowd=1), _ann(2, 2), _ann(3, 3)], cats, 100, 80)
    out = image_records(BASE, counts, cats.classes, "counting", META)
    assert out.skipped == [("person", "crowd_region")]
    assert out.stats == {"count_class_skipped_crowd_region": 1, "counting_skipped_uncertain_class": 1}
    assert [_meta(r)["class"] for r in out.records] == ["dog", "cat"]  # the others are still asked


def test_class_name_quotes_only_non_words():
    assert class_name("8").quoted and class_name("i").quoted and class_name("--").quoted
    assert class_name("5-ball").phrase == "objects labelled '5-ball'"
    assert class_name("t-shirt").phrase == "t-shirts" and class_name("x-ray").phrase == "x-rays"
    assert class_name("it's").phrase == "it's" or not class_name("it's").quoted
    assert class_name("O'Neil").quoted is False
    assert class_name("8", "eight ball").phrase == "eight balls"  # an explicit display name is never quoted
