"""One declarative end-to-end case per registered builder (as TFDS's DatasetBuilderTestCase): build the shipped
sample through the Python API and compare split/task counts, reject reasons and read counters with the expected
table. A builder added to the registry without a case here fails `test_every_builder_has_a_case`."""
from __future__ import annotations

import pytest

from helpers import FAST_BEAM

CASES = {
    "counting": dict(
        options={},
        splits={"train": {"count_class": 206, "counting": 49}},
        rejects={},
        stats={"images_read": 50, "count_class_skipped_crowd_region": 1, "count_class_zero_dropped": 193}),
    "refcoco": dict(
        options={},
        splits={"train": {"rec": 184, "reg": 184}, "val": {"rec": 21, "reg": 21}, "testA": {"rec": 36, "reg": 36},
                "testB": {"rec": 22, "reg": 22}},
        rejects={},
        stats={"refs_read": 123, "images_read": 50, "duplicate_sentences": 26}),
    "docvqa": dict(
        options={},
        splits={"train": {"vqa": 9}, "val": {"vqa": 3}},
        rejects={},
        stats={"questions_read": 12, "images_read": 6}),
    "grit": dict(
        options={"tasks": "grounded_caption,rec"},
        splits={"train": {"grounded_caption": 50, "rec": 101}},
        rejects={},
        stats={"captions_read": 50, "images_read": 50}),
}


def test_every_builder_has_a_case():
    import groundforge

    assert sorted(CASES) == groundforge.builders()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_builder_on_the_sample(name, tmp_path):
    import groundforge

    case = CASES[name]
    info = groundforge.build(name, out=str(tmp_path / name), beam_args=FAST_BEAM, **case["options"])
    got = {split: entry["tasks"] for split, entry in info["splits"].items()}
    assert got == case["splits"]
    assert info["rejects"]["by_reason"] == case["rejects"]
    assert {k: info["stats"][k] for k in case["stats"]} == case["stats"]
    assert info["rows"] == sum(n for tasks in case["splits"].values() for n in tasks.values())
    assert groundforge.validate(str(tmp_path / name)) == []
