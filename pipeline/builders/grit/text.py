"""GRIT stage 2: spaCy noun chunks and referring expressions through RunInference."""
from __future__ import annotations

import apache_beam as beam
from groundforge.pipeline.builders.grit.plan import Text
from groundforge.pipeline.emit import STATS, stat


class PhrasesFn(beam.DoFn):
    """spaCy PredictionResult -> the item with its chunks and expressions; captions without chunks are counted."""

    def process(self, result):
        item, phrases = result.example, result.inference
        if not phrases.chunks:
            yield stat("captions_without_noun_chunks")
            return
        yield {**item, "chunks": list(phrases.chunks), "ref_exps": list(phrases.ref_exps),
               "phrases": [c.text for c in phrases.chunks]}


def text_stage(items, text: Text):
    """spaCy noun chunks and expressions through RunInference -> (items with them, rejects, stats). Every
    chunk's expression is kept here: contained ones are dropped after grounding (FilterFn)."""
    from apache_beam.ml.inference.base import RunInference
    from groundforge.pipeline.handlers.dlq import dlq_to_rejects
    from groundforge.pipeline.handlers.spacy import SpacyHandler

    handler = SpacyHandler(text.spacy_model, batch_size=text.batch_size, abstract_nouns=text.abstract_nouns,
                           drop_contained=False)
    results, dlq = items | "Spacy" >> RunInference(handler).with_exception_handling()
    phrased = results | "Phrases" >> beam.ParDo(PhrasesFn()).with_outputs(STATS, main="items")
    return phrased.items, dlq_to_rejects(dlq, "TextRejects", stage="text"), phrased[STATS]
