"""The text stage as a Beam RunInference model handler: spaCy noun chunks and referring expressions.

One spaCy pipeline per worker process (RunInference keeps it in Beam's `shared.Shared`; `load_spacy` also
caches it per process), unused components disabled, `nlp.pipe` over each batch. Elements are caption strings
or dicts with a `caption` key (passed through untouched); each output is
`PredictionResult(example=<element>, inference=transforms.nounphrases.Phrases)`.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from groundforge.transforms.nounphrases import ABSTRACT_NOUNS, DEFAULT_MODEL


def caption_of(element) -> str:
    return element if isinstance(element, str) else element["caption"]


class SpacyHandler(ModelHandler):
    """RunInference handler: caption -> `Phrases` (chunks minus abstract nouns, pronouns and stop-word-only
    chunks; with `drop_contained`, only expressions not contained in another; without it, every chunk's
    expression, so a caller can drop contained ones after grounding, among the grounded chunks only).

    Batches hold `batch_size` captions (min = max batch size for Beam's BatchElements; a bundle's last batch
    may be smaller), and each batch is one `nlp.pipe` call.
    The model is not shared across processes (Beam's default): a CPU model copy per process is cheaper than
    a cross-process proxy."""

    def __init__(self, model: str = DEFAULT_MODEL, *, batch_size: int = 256,
                 abstract_nouns: Iterable[str] = ABSTRACT_NOUNS, drop_contained: bool = True):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._model = model
        self._batch_size = batch_size
        self._abstract = frozenset(a.lower() for a in abstract_nouns)
        self._drop_contained = drop_contained

    def load_model(self):
        from groundforge.transforms.nounphrases import load_spacy

        return load_spacy(self._model)

    def run_inference(self, batch: Sequence[Any], model, inference_args: Optional[dict[str, Any]] = None
                      ) -> Iterable[PredictionResult]:
        from groundforge.transforms.nounphrases import iter_extract

        phrases = iter_extract([caption_of(e) for e in batch], model, batch_size=len(batch),
                               abstract_nouns=self._abstract, drop_contained=self._drop_contained)
        return [PredictionResult(e, p, self._model) for e, p in zip(batch, phrases)]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(len(caption_of(e).encode()) for e in batch)

    def get_metrics_namespace(self) -> str:
        return "groundforge_spacy"

    def __repr__(self) -> str:
        return f"SpacyHandler(model={self._model!r}, batch_size={self._batch_size})"
