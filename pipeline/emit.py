"""What a DoFn emits besides its main output: reject rows and counters, as tagged outputs.

Every builder routes bad input the same way: `reject(...)` (or `rejected(err)` for a ReasonError-style
exception with `.reason` and `.detail`) -> the "rejects" output, `stat(name)` -> the "stats" output (summed into
dataset_info.json), and `render_or_reject` renders a record for the target format or rejects it.
"""
from __future__ import annotations

import apache_beam as beam
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
