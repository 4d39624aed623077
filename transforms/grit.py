"""GRIT-20M annotation rows and LLaVA-style concept balancing.

GRIT-20M layout (the released Kosmos-2 data): `caption`, `width`, `height`, and `noun_chunks` /
`ref_exps` as lists of `[start_char, end_char, x1, y1, x2, y2, score]`, boxes normalised to 0..1,
one entry per (span, box) pair. `ref_exps` keeps one expression per grounded chunk, an expression inside another
one included (`grounded_expressions`); only training records apply the containment rule (`record_expressions`).
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from typing import Hashable, Iterable, Mapping, NamedTuple, Sequence

from groundforge.transforms.boxes import BoxError, checked_box
from groundforge.transforms.errors import ReasonError
from groundforge.transforms.nounphrases import not_contained


class RowError(ReasonError):
    """A GRIT-20M row that cannot be used; `reason` is the reject reason."""


def _entry(span: tuple[int, int], box: Sequence[float], score: float, width: float, height: float
           ) -> list[float]:
    x1, y1, x2, y2 = box
    return [int(span[0]), int(span[1]), x1 / width, y1 / height, x2 / width, y2 / height, float(score)]


def entries(groups: Sequence, width: float, height: float) -> list[list[float]]:
    """[(start_char, end_char, [(pixel xyxy box, score), ...]), ...] -> GRIT-20M entries
    [start_char, end_char, x1, y1, x2, y2, score] with boxes normalised to 0..1, one per box."""
    return [_entry((start, end), box, score, width, height) for start, end, boxes in groups for box, score in boxes]


def grit_row(caption: str, width: int, height: int, chunks: Sequence, boxes: Mapping[int, Sequence],
             ref_exps: Sequence, *, row_id: str | None = None, image_id: str | None = None,
             file_name: str | None = None, url: str | None = None, keep_missing: bool = False) -> dict:
    """Build a GRIT-20M annotation row (schemas/grit_annotation.schema.json).

    `chunks` and `ref_exps` are `nounphrases.Chunk` / `RefExp` (anything with start_char, end_char;
    ref_exps also `.chunk`); `boxes` maps a chunk index to `[(pixel_xyxy_box, score), ...]` as
    `grounding.filter_detections` returns. Chunks without boxes are left out; an expression gets
    one entry per box of its chunk. The id columns are left out when None, unless `keep_missing`
    (the pipeline's rows always carry every column).
    """
    chunk_groups = [(c.start_char, c.end_char, boxes.get(i, ())) for i, c in enumerate(chunks)]
    exp_groups = [(e.start_char, e.end_char, boxes.get(e.chunk, ())) for e in ref_exps]
    ids = (("id", row_id), ("image_id", image_id), ("file_name", file_name), ("url", url))
    row = {name: value for name, value in ids if value is not None or keep_missing}
    row.update(caption=caption, width=int(width), height=int(height),
               noun_chunks=entries(chunk_groups, width, height), ref_exps=entries(exp_groups, width, height))
    return row


def grounded_expressions(ref_exps: Sequence, boxes: Mapping[int, Sequence]) -> list:
    """The expressions of the chunks that kept a box, in order, nested ones included: what a GRIT-20M row holds
    (its README row keeps [0, 66] and [19, 66]). `ref_exps` are every chunk's expressions (`extract(...,
    drop_contained=False)`); `boxes` is `filter_detections(...).boxes`. Pass the result to `grit_row`."""
    return [e for e in ref_exps if boxes.get(e.chunk)]


def record_expressions(ref_exps: Sequence, boxes: Mapping[int, Sequence]) -> list:
    """The expressions that become `rec` training records: of the grounded ones, those no other grounded one
    contains (the Kosmos-2 rule; of equal spans the first stays), each with its own chunk's boxes."""
    grounded = grounded_expressions(ref_exps, boxes)
    return [grounded[i] for i in not_contained([(e.start_char, e.end_char) for e in grounded])]


class GritObjects(NamedTuple):
    caption: str
    width: int
    height: int
    noun_chunks: list[dict]  # {"label", "bbox" (pixel xyxy), "score", "span"}: record `objects` layout
    ref_exps: list[dict]


def parse_grit_row(row: Mapping) -> GritObjects:
    """GRIT-20M row -> caption, size and objects with pixel boxes and char spans.

    Raises RowError (`bad_size`, `bad_entry`, `bad_span`, or a `boxes.BoxError` reason) for a row
    that cannot be used; boxes are clipped to the image.
    """
    caption = row.get("caption")
    if not isinstance(caption, str):
        raise RowError("bad_entry", f"caption is {type(caption).__name__}")
    try:
        width, height = int(row["width"]), int(row["height"])
    except (KeyError, TypeError, ValueError):
        raise RowError("bad_size", f"width/height {row.get('width')!r}x{row.get('height')!r}") from None
    if width <= 0 or height <= 0:
        raise RowError("bad_size", f"{width}x{height}")
    return GritObjects(caption, width, height,
                       [_object(e, caption, width, height) for e in row.get("noun_chunks") or ()],
                       [_object(e, caption, width, height) for e in row.get("ref_exps") or ()])


def _object(entry: Sequence, caption: str, width: int, height: int) -> dict:
    if entry is None or len(entry) != 7:
        raise RowError("bad_entry", f"expected 7 numbers, got {entry!r}")
    try:
        vals = [float(v) for v in entry]
    except (TypeError, ValueError):
        raise RowError("bad_entry", f"not numbers: {entry!r}") from None
    start, end = vals[0], vals[1]
    if not (start.is_integer() and end.is_integer() and 0 <= start < end <= len(caption)):
        raise RowError("bad_span", f"[{entry[0]}, {entry[1]}] in a caption of {len(caption)} chars")
    start, end = int(start), int(end)
    x1, y1, x2, y2 = vals[2] * width, vals[3] * height, vals[4] * width, vals[5] * height
    try:
        box = checked_box([x1, y1, x2, y2], width, height)
    except BoxError as err:
        raise RowError(err.reason, err.detail) from None
    score = vals[6]
    if math.isnan(score):
        raise RowError("bad_entry", f"score is NaN in {entry!r}")
    return {"label": caption[start:end], "bbox": box, "score": score, "span": [start, end]}


# --- concept balancing (LLaVA CC3M-595K) -------------------------------------------------------

_ARTICLES = ("a ", "an ", "the ")


def concept_key(phrase: str) -> str:
    """Noun phrase as counted for balancing: lower case, single spaces, no leading article."""
    key = " ".join(phrase.lower().split())
    for article in _ARTICLES:
        if key.startswith(article):
            return key[len(article):]
    return key


def phrase_counts(phrase_lists: Iterable[Iterable[str]]) -> Counter:
    """In how many captions each concept occurs (a caption counts a phrase once)."""
    counts: Counter = Counter()
    for phrases in phrase_lists:
        counts.update({concept_key(p) for p in phrases})
    return counts


def selection_rank(seed: int, phrase: str, caption_key: Hashable) -> bytes:
    """Seeded pseudo-random rank of a caption within a phrase; the lowest ranks are selected.

    Depends only on its arguments, so a distributed runner can select per phrase (e.g. Beam
    `Top.Smallest` keyed by phrase) and get the same result as `balance_concepts`.
    """
    return hashlib.blake2b(f"{seed}\x00{phrase}\x00{caption_key}".encode(), digest_size=16).digest()


def balance_concepts(captions: Iterable[tuple[Hashable, Iterable[str]]],
                     counts: Mapping[str, int] | None = None, *, min_count: int = 3,
                     max_per_phrase: int = 100, seed: int = 0) -> list:
    """Caption keys selected LLaVA CC3M-595K style, sorted.

    `captions` are `(caption_key, noun_phrases)` pairs; `counts` maps `concept_key(phrase)` to the
    number of captions containing it over the whole input (computed from `captions` if omitted,
    which then must be re-iterable). From the rarest phrase up, phrases seen fewer than
    `min_count` times are skipped and each other phrase adds its captions, at most
    `max_per_phrase` of them chosen by `selection_rank` with `seed`. A caption already added by a
    rarer phrase is not re-added but still counts among the frequent phrase's candidates, as in
    LLaVA (each phrase samples from all its captions). Deterministic and independent of input order.
    """
    captions = list(captions)
    if counts is None:
        counts = phrase_counts(p for _, p in captions)
    by_phrase: dict[str, list] = {}
    for key, phrases in captions:
        for phrase in {concept_key(p) for p in phrases}:
            if counts.get(phrase, 0) >= min_count:
                by_phrase.setdefault(phrase, []).append(key)
    selected: set = set()
    for phrase in sorted(by_phrase, key=lambda p: (counts[p], p)):
        keys = sorted(by_phrase[phrase], key=lambda k: selection_rank(seed, phrase, k))
        selected.update(keys[:max_per_phrase])
    return sorted(selected)
