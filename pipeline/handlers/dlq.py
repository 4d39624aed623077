"""Failed RunInference elements and batches -> reject rows (stage "ground", or the stage given)."""
from __future__ import annotations

import re

from groundforge.pipeline.handlers.common import STAGE, GroundingError, source_of
from groundforge.transforms.records import reject


def _error_parts(error) -> tuple[type, str]:
    if isinstance(error, BaseException):
        return type(error), repr(error)
    exc_type, message = error[0], error[1]
    return (exc_type if isinstance(exc_type, type) else Exception), str(message)


def _reason(exc_type: type, message: str) -> tuple[str, str]:
    if issubclass(exc_type, GroundingError):
        reason, _, detail = message.partition(": ")
        if re.fullmatch(r"[a-z0-9_]+", reason):
            return reason, detail
    name = exc_type.__name__
    if name == "OutOfMemoryError" or "out of memory" in message.lower():
        return "out_of_memory", f"{name}: {message}"
    return "inference_error", f"{name}: {message}"


def failed_to_reject(failed_element, stage: str = STAGE) -> dict:
    """One `(element, error)` from `dlq.failed_preprocessing[i]` -> reject row.

    `error` is Beam's `(exc_type, repr(exc), traceback_lines)` (or an exception). GroundingErrors keep
    their reason (`undecodable_image`, `size_mismatch`, ...); anything else is `inference_error` or
    `out_of_memory` with the exception type and message as detail.
    """
    element, error = failed_element
    reason, detail = _reason(*_error_parts(error))
    return reject(source_of(element), stage, reason, detail)


def failed_batch_to_rejects(failed_batch, stage: str = STAGE) -> list[dict]:
    """One `(batch, error)` from `dlq.failed_inferences` -> a reject row per element of the batch."""
    batch, error = failed_batch
    return [failed_to_reject((element, error), stage) for element in batch]


def dlq_to_rejects(dlq, label: str = "GroundRejects", stage: str = STAGE):
    """All reject rows of a `RunInferenceDLQ` as one PCollection."""
    import apache_beam as beam

    parts = [bad | f"{label}Pre{i}" >> beam.Map(failed_to_reject, stage)
             for i, bad in enumerate(dlq.failed_preprocessing)]
    parts.append(dlq.failed_inferences | f"{label}Batch" >> beam.FlatMap(failed_batch_to_rejects, stage))
    parts += [bad | f"{label}Post{i}" >> beam.Map(failed_to_reject, stage)
              for i, bad in enumerate(dlq.failed_postprocessing)]
    return parts | f"{label}Flatten" >> beam.Flatten()
