"""Kosmos-2 text exactly as Kosmos2Processor builds it for the same boxes (transformers
models/kosmos2/processing_kosmos2.py `_insert_patch_index_tokens`), with the prompts of the model card and of
unilm's kosmos-2 README (`<grounding> Describe ...`, `<grounding><phrase> It</phrase>... is`), compared as
text and as token ids of a tiny sentencepiece-style tokenizer built offline."""
from __future__ import annotations

import re

import pytest
from helpers import tiny_kosmos2_processor

from groundforge.transforms.templates import render_record

W, H = 640, 480
MAN = [100, 50, 300, 410]
DOG1 = [320, 240, 400, 470]
DOG2 = [400, 240, 500, 470]
CAPTION = "A man walks two dogs in a park."


def obj(label, bbox, span=()):
    return {"label": label, "bbox": list(bbox), "score": 1.0, "span": list(span)}


def norm(box):
    return (box[0] / W, box[1] / H, box[2] / W, box[3] / H)


# record -> (the text Kosmos-2 is given / generates before the boxes are inserted, boxes per phrase);
# the processor inserts `<object>..</object>` after each `</phrase>`
CASES = {
    "rec": ({"task": "rec", "caption": "the man on the left", "objects": [obj("man", MAN)]},
            "<grounding><phrase> the man on the left</phrase>", [[norm(MAN)]]),
    "reg": ({"task": "reg", "caption": "the man on the left", "objects": [obj("man", MAN)]},
            "<grounding><phrase> It</phrase> is", [[norm(MAN)]]),
    "phrase_grounding": ({"task": "phrase_grounding", "caption": CAPTION,
                          "objects": [obj("dog", DOG1, (12, 20)), obj("dog", DOG2, (12, 20))]},
                         "<grounding><phrase> two dogs</phrase>", [[norm(DOG1), norm(DOG2)]]),
    "grounded_caption": ({"task": "grounded_caption", "caption": CAPTION,
                          "objects": [obj("man", MAN, (0, 5)), obj("dog", DOG1, (12, 20)), obj("dog", DOG2, (12, 20))]},
                         "<grounding> Describe this image in detail:<phrase> A man</phrase> walks<phrase> two dogs"
                         "</phrase> in a park.", [[norm(MAN)], [norm(DOG1), norm(DOG2)]]),
    "detection": ({"task": "detection", "caption": None,
                   "objects": [obj("dog", DOG1), obj("person", MAN), obj("dog", DOG2)]},
                  "<grounding> Locate the objects in this image:<phrase> dog</phrase><phrase> person</phrase>",
                  [[norm(DOG1), norm(DOG2)], [norm(MAN)]]),
}

WORDS = ("the man on left It is two dogs A walks in a park Describe this image detail Locate objects dog "
         "person").split()


@pytest.fixture(scope="module")
def processor():
    return tiny_kosmos2_processor(WORDS)


def _compact(text: str) -> str:
    """The processor writes `<object> <patch_index_a> <patch_index_b> </object>`; the blanks before these
    lstrip tokens are absorbed by the tokenizer and absent from the model's decoded output."""
    return re.sub(r"(?<=<object>) | (?=<patch_index_|</object>|</delimiter_of_multi_objects/>)", "", text)


@pytest.mark.parametrize("task", sorted(CASES))
def test_kosmos2_text_is_what_the_processor_builds(processor, task):
    record, plain, boxes = CASES[task]
    out = render_record({"id": "k", "width": W, "height": H, "meta": {}, **record}, "kosmos2")
    ours = out.prompt + out.target if task != "reg" else out.prompt
    theirs = processor.preprocess_examples(plain, bboxes=boxes)
    assert ours == _compact(theirs)
    assert processor(text=ours)["input_ids"] == processor(text=plain, bboxes=boxes)["input_ids"]


def test_kosmos2_blank_inside_phrase_changes_token_ids(processor):
    """The tiny tokenizer tells `<phrase> It` from `<phrase>It` (as sentencepiece does), so the id
    comparison above checks the blanks too."""
    a = processor(text="<grounding><phrase> It</phrase> is")["input_ids"]
    b = processor(text="<grounding><phrase>It</phrase> is")["input_ids"]
    assert a != b
