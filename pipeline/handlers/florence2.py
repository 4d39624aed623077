"""Florence-2 <CAPTION_TO_PHRASE_GROUNDING> as a RunInference grounding handler."""
from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult
from groundforge.pipeline.handlers.common import (
    FLORENCE_TASK,
    GroundingError,
    Prepared,
    _autocast,
    _field,
    _GroundingHandler,
    _to_device,
    decode_image,
    prepare,
    resolve_device,
    resolve_dtype,
)

_ARTICLE_RE = re.compile(r"^(?:a|an|the)\s+")


def phrase_key(text: str) -> str:
    """Text-match key: lower case, punctuation and a leading article dropped, blanks collapsed."""
    text = " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())
    return _ARTICLE_RE.sub("", text)


def florence_detections(text: str, chunk_texts: Sequence[str], width: int, height: int
                        ) -> tuple[list[tuple[int, list[float], float]], int]:
    """Florence-2 `<CAPTION_TO_PHRASE_GROUNDING>` output -> `([(chunk_idx, box, 1.0), ...], unmatched)`.

    Parsed with the project's florence2 codec; each phrase goes to every chunk whose `phrase_key` is
    equal; `unmatched` counts boxes whose phrase names no chunk.
    """
    from groundforge.transforms.codecs import get_codec

    by_key: dict[str, list[int]] = {}
    for i, chunk in enumerate(chunk_texts):
        by_key.setdefault(phrase_key(chunk), []).append(i)
    out, unmatched = [], 0
    for label, box in get_codec("florence2").decode(text, width, height):
        chunks = by_key.get(phrase_key(label))
        if not chunks:
            unmatched += 1
            continue
        out.extend((i, [float(v) for v in box], 1.0) for i in chunks)
    return out, unmatched


class LoadedFlorence2:
    """Florence-2 (transformers' native Florence2ForConditionalGeneration) with its processor."""

    def __init__(self, model_id: str, device: str = "auto", dtype: str = "float16",
                 trust_remote_code: bool = False, max_new_tokens: int = 256, num_beams: int = 3):
        import torch
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        self.model = Florence2ForConditionalGeneration.from_pretrained(
            model_id, dtype=self.dtype, trust_remote_code=trust_remote_code).to(self.device).eval()
        self._torch = torch

    def generate(self, images: Sequence, captions: Sequence[str]) -> list[str]:
        """Raw generated text per image, special tokens kept (the codec strips </s>, <s>, <pad>)."""
        torch = self._torch
        prompts = [FLORENCE_TASK + c for c in captions]
        with torch.inference_mode():
            inputs = self.processor(images=list(images), text=prompts, return_tensors="pt", padding="longest")
            with _autocast(self.device, self.dtype):
                ids = self.model.generate(**_to_device(inputs, self.device, self.dtype),
                                          max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                          do_sample=False)
        return self.processor.batch_decode(ids.cpu(), skip_special_tokens=False)


def prepare_captions(element) -> Prepared:
    """An element with several captions of one image (`captions`, and `caption_texts`: per caption its chunk
    texts): every caption and text list is checked like a single element's, and the image is decoded once.
    Raises GroundingError (the whole element fails: the GRIT text stage has rejected bad captions before)."""
    captions, caption_texts = _field(element, "captions"), _field(element, "caption_texts")
    if (not isinstance(captions, Sequence) or isinstance(captions, str) or not captions
            or not isinstance(caption_texts, Sequence) or len(caption_texts) != len(captions)):
        raise GroundingError("bad_captions", f"captions is {captions!r}, caption_texts is {caption_texts!r}"[:200])
    for caption, texts in zip(captions, caption_texts):
        prepare({"caption": caption, "texts": texts, "image": None, "width": None, "height": None},
                need_caption=True, decode=False)
    image, num_bytes = decode_image(_field(element, "image"))
    width, height = _field(element, "width"), _field(element, "height")
    if width is not None and height is not None and (int(width), int(height)) != image.size:
        raise GroundingError("size_mismatch", f"element says {width}x{height}, image is "
                                              f"{image.size[0]}x{image.size[1]}")
    return Prepared(element, image, tuple(tuple(t) for t in caption_texts), tuple(captions), num_bytes,
                    size=(image.height, image.width))


class Florence2GroundingHandler(_GroundingHandler):
    """RunInference handler: Florence-2 `<CAPTION_TO_PHRASE_GROUNDING>` + caption, decoded with the
    project's florence2 codec; phrases map back to chunks by `phrase_key` match; score 1.0.

    An element with `captions` and `caption_texts` (all captions of one image) is decoded once and gives,
    per caption, the detections a single-caption element would: one generation per caption (the caption is
    the prompt), at most `batch_size` prompts per `generate` call.

    Needs a checkpoint in transformers' native Florence-2 format (trust_remote_code stays False)."""

    namespace = "groundforge_florence2"
    needs_caption = True

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "float16", batch_size: int = 8,
                 trust_remote_code: bool = False, max_new_tokens: int = 256, num_beams: int = 3,
                 share_across_processes: bool | None = None, model_copies: int | None = None):
        super().__init__(model, device=device, dtype=dtype, batch_size=batch_size,
                         trust_remote_code=trust_remote_code, share_across_processes=share_across_processes,
                         model_copies=model_copies)
        self._max_new_tokens = int(max_new_tokens)
        self._num_beams = int(num_beams)

    def load_model(self) -> LoadedFlorence2:
        return LoadedFlorence2(self._model, self._device, self._dtype, self._trust_remote_code,
                               self._max_new_tokens, self._num_beams)

    def prepare(self, element) -> Prepared:
        if _field(element, "captions") is not None:
            return prepare_captions(element)
        return prepare(element, need_caption=True)

    def run_inference(self, batch: Sequence[Prepared], model: LoadedFlorence2,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        start = time.perf_counter()
        prompts = []  # (element index, image, caption, chunk texts)
        for e, p in enumerate(batch):
            if isinstance(p.caption, tuple):
                prompts.extend((e, p.image, caption, texts) for caption, texts in zip(p.caption, p.texts))
            else:
                prompts.append((e, p.image, p.caption, p.texts))
        texts = []
        for i in range(0, len(prompts), self._batch_size):
            chunk = prompts[i:i + self._batch_size]
            texts += model.generate([c[1] for c in chunk], [c[2] for c in chunk])
        per_element: list = [[] for _ in batch]
        count, unmatched = 0, 0
        for (e, image, _, chunk_texts), text in zip(prompts, texts):
            dets, missed = florence_detections(text, chunk_texts, image.width, image.height)
            count += len(dets)
            unmatched += missed
            per_element[e].append(dets)
        results = [PredictionResult(p.example, dets if isinstance(p.caption, tuple) else dets[0], self._model)
                   for p, dets in zip(batch, per_element)]
        Metrics.counter(self.namespace, "unmatched_phrase_boxes").inc(unmatched)
        Metrics.counter(self.namespace, "generations").inc(len(prompts))
        self._count_batch(batch, count, time.perf_counter() - start)
        return results
