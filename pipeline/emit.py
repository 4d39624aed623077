"""What a DoFn emits besides its main output: reject rows and counters, as tagged outputs.

Every builder routes bad input the same way: `reject(...)` (or `rejected(err)` for a ReasonError-style
exception with `.reason` and `.detail`) -> the "rejects" output, `stat(name)` -> the "stats" output (summed into
dataset_info.json), and `render_or_reject` renders a record for the target format or rejects it.
`Progress` counts what passes for the live display (see pipeline/console.py); `expect(name, n)` announces how many
items counter `name` will reach, for an ETA.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from groundforge.pipeline import console
from groundforge.pipeline.readers.common import Rejected
from groundforge.transforms.records import reject as reject_row
from groundforge.transforms.records import rendered

REJECTS = "rejects"
STATS = "stats"


def reject(source: str, stage: str, reason: str, detail: str = ""):
    return beam.pvalue.TaggedOutput(REJECTS, reject_row(source, stage, reason, detail))


def rejected(source: str, stage: str, err: Exception):
    """A reject from an exception that carries `.reason` and `.detail` (ImageError, PathError, BoxError, ...)."""
    return reject(source, stage, err.reason, err.detail)


def stat(name: str, n: int = 1):
    return beam.pvalue.TaggedOutput(STATS, (name, n))


def size_mismatch(source: str, claimed: tuple, actual: tuple):
    """The reject for an annotation size that differs from the decoded image (one message everywhere)."""
    return reject(source, "image", "size_mismatch",
                  f"annotation {claimed[0]}x{claimed[1]}, image {actual[0]}x{actual[1]}")


def render_or_reject(record: dict, fmt: str, seed: int, where: str = "", options=None):
    """The record rendered for `fmt`, or a render reject naming the record (and `where` it came from)."""
    try:
        return rendered(record, fmt, seed, options)
    except ValueError as err:  # templates.RenderError (control_tokens, bad_span, ...) or BoxError, with .reason
        detail = f"{where}: {err}" if where else str(err)
        return reject(f"record:{record['id']}", "render", getattr(err, "reason", "render_error"), detail)


def read_outputs(rows, counter: str | None = None):
    """A reader's output (items and `Rejected`, see readers/common.py) -> items and reject outputs, plus a
    `counter` stat per input read: every item and every read-stage reject (an annotation reject is not an input)."""
    for row in rows:
        if isinstance(row, Rejected):
            if counter and row.stage == "read":
                yield stat(counter)
            yield beam.pvalue.TaggedOutput(REJECTS, row.row)
        else:
            if counter:
                yield stat(counter)
            yield row


def expect(counter: str, n: int) -> None:
    """Announce that stat `counter` (e.g. "images_read") will reach about `n` in this run, as soon as a reader
    knows it (the images of a parsed COCO file): the progress line then shows `k/n`, a percentage and an ETA.
    Call it from a DoFn or the driver; it does nothing when no CLI run is watching."""
    console.count(f"total/{counter}", int(n))


class Progress(beam.DoFn):
    """A tap on the flattened outputs, for progress: `kind` "records" (image groups: their records), "rejects"
    (one per row) or "stats" (the `*_read` counters). Increments Beam Metrics counters (namespace
    groundforge.progress, shown by any runner's monitoring) and the local progress channel. Emits nothing."""

    def __init__(self, kind: str):
        self.kind = kind
        self.counters = {}

    def _count(self, key: str, n: int) -> None:
        if key not in self.counters:
            self.counters[key] = Metrics.counter("groundforge.progress", key)
        self.counters[key].inc(n)
        console.count(key, n)

    def process(self, element):
        if self.kind == "stats":
            name, n = element
            if name.endswith("_read"):
                self._count(f"read/{name}", n)
        elif self.kind == "records":
            self._count("records", len(element["records"]))
        else:
            self._count("rejected", 1)
        return ()

    def finish_bundle(self):
        console.flush()
