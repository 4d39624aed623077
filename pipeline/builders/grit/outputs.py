"""GRIT stage 5: Kosmos-2 filters, GRIT-20M annotation rows and rendered records."""
from __future__ import annotations

import apache_beam as beam
from groundforge.pipeline.builders.grit.plan import ANNOTATIONS, NAME, Settings
from groundforge.pipeline.emit import rejected, render_or_reject, stat
from groundforge.pipeline.readers.common import public_source
from groundforge.pipeline.writer import grouped_outputs
from groundforge.transforms.grit import (
    RowError,
    grit_row,
    grounded_expressions,
    parse_grit_row,
    record_expressions,
)
from groundforge.transforms.nounphrases import RefExp, not_contained
from groundforge.transforms.records import make_object, make_record, record_id


def annotation_key(row: dict) -> str:
    return row["id"]


def annotation_row(pair_key: str, item: dict, chunks: list, exps: list) -> dict:
    """The pair's GRIT-20M row, built by `transforms.grit.grit_row`. chunks / exps: [(start_char, end_char, text,
    boxes)]. Every group gets its own key in grit_row's boxes map (chunks first, then expressions), so an
    expression keeps the boxes it came with: a GRIT-20M row's expressions are not tied to a chunk."""
    groups = chunks + exps
    spans = [RefExp(start, end, text, i) for i, (start, end, text, _) in enumerate(groups)]
    boxes = {i: group[3] for i, group in enumerate(groups)}
    return grit_row(item["caption"], item["width"], item["height"], spans[:len(chunks)], boxes, spans[len(chunks):],
                    row_id=pair_key, image_id=item["image_id"], file_name=item["file_name"],
                    url=item["meta"].get("url"), keep_missing=True)


class _PairOutputs(beam.DoFn):
    """Shared by both paths: a grounded pair -> its annotation row and rendered records."""

    def __init__(self, settings: Settings):
        self.s = settings

    def outputs(self, item, chunks: list, exps: list, record_exps: list):
        """chunks / exps: [(start_char, end_char, text, [(pixel xyxy, score), ...])] in caption order. `exps` go
        into the GRIT-20M annotation row (nested ones included, as released GRIT-20M keeps them); `record_exps`
        (the outermost ones, the Kosmos-2 rule) become `rec` records. The pair's records leave as one image group
        (see pipeline.writer.image_groups)."""
        return grouped_outputs(self._pair_outputs(item, chunks, exps, record_exps))

    def _pair_outputs(self, item, chunks: list, exps: list, record_exps: list):
        s = self.s
        yield beam.pvalue.TaggedOutput(ANNOTATIONS,
                                       annotation_row(record_id(s.dataset, s.split, item["key"]), item, chunks, exps))
        base = dict(dataset=s.dataset, split=s.split, image={"bytes": item["image"], "path": item["file_name"]},
                    image_id=item["image_id"], width=item["width"], height=item["height"],
                    image_sha256=item["image_sha256"])
        meta = {"builder": NAME, "source": public_source(item["source"]), "grounder": s.grounder or "grit20m", **item["meta"]}
        if s.model:
            meta["model"] = public_source(s.model)  # a local checkpoint folder by its name only
        if "grounded_caption" in s.tasks:
            objects = [make_object(text, box, score, (start, end)) for start, end, text, boxes in chunks
                       for box, score in boxes]
            yield self._render(make_record(id=record_id(s.dataset, s.split, item["key"], "grounded_caption"),
                                           task="grounded_caption", objects=objects, caption=item["caption"],
                                           meta=meta, **base), item)
        if "rec" in s.tasks:
            for start, end, text, boxes in record_exps:
                objects = [make_object(text, box, score, (0, len(text))) for box, score in boxes]
                yield self._render(make_record(
                    id=record_id(s.dataset, s.split, item["key"], "rec", start, end), task="rec", objects=objects,
                    caption=text, meta={**meta, "caption": item["caption"], "span": [start, end]}, **base), item)

    def _render(self, record, item):
        return render_or_reject(record, self.s.fmt, self.s.seed, f"{item['source']} {record['task']}",
                                self.s.options)


class FilterFn(_PairOutputs):
    """Kosmos-2 filters over the image's detections (drops counted as `dropped_<reason>` stats); pairs without
    a surviving box are counted (`pairs_without_box`); the rest become annotation rows and records."""

    def process(self, item):
        from collections import Counter

        from groundforge.transforms.grounding import filter_detections, singular_chunks

        singular = None if self.s.keep_all_boxes else singular_chunks(item["chunks"])
        kept = filter_detections(item["detections"], item["width"], item["height"], n_chunks=len(item["chunks"]),
                                 singular=singular, **self.s.filters)
        drops = Counter(item.get("ground_drops") or {}) + Counter(kept.drops)
        for reason, n in sorted(drops.items()):
            yield stat(f"dropped_{reason}", n)
        if not kept.boxes:
            yield stat("pairs_without_box")
            return
        chunks = [(c.start_char, c.end_char, c.text, kept.boxes[i]) for i, c in enumerate(item["chunks"])
                  if i in kept.boxes]

        def spans(exps):
            return [(e.start_char, e.end_char, e.text, kept.boxes[e.chunk]) for e in exps]

        yield from self.outputs(item, chunks, spans(grounded_expressions(item["ref_exps"], kept.boxes)),
                                spans(record_expressions(item["ref_exps"], kept.boxes)))


def _grouped(objects: list, caption: str) -> list:
    groups: dict = {}
    for obj in objects:
        groups.setdefault(tuple(obj["span"]), []).append((obj["bbox"], obj["score"]))
    return [(s, e, caption[s:e], boxes) for (s, e), boxes in sorted(groups.items())]


class GritRowFn(_PairOutputs):
    """A GRIT-20M item with its image -> annotation row and records (no spaCy, grounding or filters). The
    normalised boxes are read against the real image size."""

    def process(self, item):
        row = {"caption": item["caption"], "width": item["width"], "height": item["height"], **item["grit"]}
        try:
            parsed = parse_grit_row(row)
        except RowError as err:
            yield rejected(item["source"], "read", err)
            return
        chunks = _grouped(parsed.noun_chunks, item["caption"])
        if not chunks:
            yield stat("pairs_without_box")
            return
        exps = _grouped(parsed.ref_exps, item["caption"])
        records = [exps[i] for i in not_contained([(start, end) for start, end, _, _ in exps])]
        yield from self.outputs(item, chunks, exps, records)
