"""GRIT-20M layout of annotation rows vs. the containment rule of training records, on the GRIT-20M README row."""
from __future__ import annotations

import pytest

from groundforge.transforms.grit import grit_row, grounded_expressions, parse_grit_row, record_expressions
from groundforge.transforms.nounphrases import Chunk, RefExp

HANGER = "a wire hanger with a paper cover that reads we heart our customers"
# The example row of the GRIT-20M README (microsoft/unilm, kosmos-2/GRIT/README.md): two grounded chunks, and
# one expression per grounded chunk, the nested [19, 66] kept next to [0, 66].
README_ROW = {
    "caption": HANGER, "width": 1024, "height": 693,
    "noun_chunks": [[19, 32, 0.019644069503434333, 0.31054004033406574, 0.9622142865754519,
                     0.9603442351023356, 0.79298526],
                    [0, 13, 0.019422357885505368, 0.027634161214033764, 0.9593302408854166,
                     0.969467560450236, 0.67520964]],
    "ref_exps": [[19, 66, 0.019644069503434333, 0.31054004033406574, 0.9622142865754519,
                  0.9603442351023356, 0.79298526],
                 [0, 66, 0.019422357885505368, 0.027634161214033764, 0.9593302408854166,
                  0.969467560450236, 0.67520964]],
}


def _readme_boxes():
    """Chunk index (spaCy order: a wire hanger, a paper cover, our customers) -> the README's pixel box."""
    parsed = parse_grit_row(README_ROW)
    by_span = {tuple(o["span"]): [(o["bbox"], o["score"])] for o in parsed.noun_chunks}
    return {0: by_span[(0, 13)], 1: by_span[(19, 32)]}  # "our customers" has no box in the row


def _sorted(entries):
    return sorted(entries, key=lambda e: (e[0], e[1]))


def test_spacy_chunks_of_the_readme_caption_rebuild_the_readme_row():
    pytest.importorskip("spacy")
    from groundforge.transforms.nounphrases import extract, load_spacy

    phrases = extract([HANGER], load_spacy(), drop_contained=False)[0]
    boxes = _readme_boxes()
    exps = grounded_expressions(phrases.ref_exps, boxes)
    assert [(e.start_char, e.end_char) for e in exps] == [(0, 66), (19, 66)]
    row = grit_row(HANGER, 1024, 693, phrases.chunks, boxes, exps)
    for key in ("noun_chunks", "ref_exps"):
        mine, theirs = _sorted(row[key]), _sorted(README_ROW[key])
        assert [e[:2] for e in mine] == [e[:2] for e in theirs], key
        for a, b in zip(mine, theirs):
            assert a[2:] == pytest.approx(b[2:], abs=1e-9)
    # training records: only the outermost expression, with its own chunk's boxes
    assert [(e.start_char, e.end_char, e.chunk) for e in record_expressions(phrases.ref_exps, boxes)] == [(0, 66, 0)]


def test_old_layout_would_lose_the_nested_expression():
    """What groundforge wrote before: containment applied to the annotation row too ([19, 66] missing)."""
    exps = [RefExp(0, 66, HANGER, 0), RefExp(19, 66, HANGER[19:], 1), RefExp(53, 66, "our customers", 2)]
    boxes = _readme_boxes()
    assert len(grounded_expressions(exps, boxes)) == 2 == len(README_ROW["ref_exps"])
    assert len(record_expressions(exps, boxes)) == 1


def test_equal_expressions_of_two_chunks_are_both_kept_for_the_row():
    pytest.importorskip("spacy")
    from groundforge.transforms.nounphrases import extract, load_spacy

    # coordinated chunks are not expanded: each is its own expression; none contains another
    phrases = extract(["two cats and a remote on a red couch"], load_spacy(), drop_contained=False)[0]
    boxes = {1: [([0, 0, 5, 5], 0.9)], 2: [([5, 5, 9, 9], 0.8)]}
    assert [e.chunk for e in grounded_expressions(phrases.ref_exps, boxes)] == [1, 2]
    assert [e.chunk for e in record_expressions(phrases.ref_exps, boxes)] == [1, 2]
    same = [RefExp(0, 5, "a dog", 0), RefExp(0, 5, "a dog", 1)]
    both = {0: [([0, 0, 1, 1], 1.0)], 1: [([2, 2, 3, 3], 1.0)]}
    assert grounded_expressions(same, both) == same and record_expressions(same, both) == same[:1]
    assert Chunk(0, 5, "a dog", "dog").singular is None
