"""Zero-shot detectors (OWLv2 / OWL-ViT, Grounding DINO, OmDet-Turbo) as a RunInference handler."""
from __future__ import annotations

import time
from typing import Any, Iterable, Optional, Sequence

from apache_beam.ml.inference.base import PredictionResult
from groundforge.pipeline.handlers.common import (
    DINO_TYPES,
    OMDET_TYPES,
    OWL_TYPES,
    Prepared,
    _autocast,
    _GroundingHandler,
    _lists,
    _to_device,
    resolve_device,
    resolve_dtype,
)
from groundforge.transforms.grounding import detections_from_output, detector_queries


def model_family(model_type: str) -> str:
    if model_type in OWL_TYPES:
        return "owl"
    if model_type in DINO_TYPES:
        return "dino"
    if model_type in OMDET_TYPES:
        return "omdet"
    raise ValueError(f"unsupported zero-shot detector type {model_type!r}; supported: "
                     f"{', '.join(OWL_TYPES + DINO_TYPES + OMDET_TYPES)}")


def dino_phrase(text: str) -> str:
    """A query as Grounding DINO reads it: lower case, no '.', which separates the phrases."""
    return " ".join(text.replace(".", " ").lower().split())


class LoadedDetector:
    """A zero-shot detector with its processor on one device. `detect` is the whole forward:
    processor, model under inference_mode/autocast, post-processing, and the move to CPU lists."""

    def __init__(self, model_id: str, device: str = "auto", dtype: str = "float16",
                 trust_remote_code: bool = False, min_score: float = 0.0):
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        self.min_score = float(min_score)
        self.processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(
            model_id, dtype=self.dtype, trust_remote_code=trust_remote_code)
        self.family = model_family(model.config.model_type)
        self.model = model.to(self.device).eval()
        self._torch = torch

    def detect(self, images: Sequence, queries: Sequence[Sequence[str]]
               ) -> list[tuple[list, list, list]]:
        """Per image `(boxes, scores, labels)` as CPU Python lists: pixel xyxy boxes (in each image's own
        size), scores, and label = index into that image's queries."""
        torch = self._torch
        sizes = [(img.height, img.width) for img in images]
        with torch.inference_mode():
            inputs = self._inputs(images, queries)
            with _autocast(self.device, self.dtype):
                outputs = self.model(**_to_device(inputs, self.device, self.dtype))
            if self.family == "owl":
                return self._owl(outputs, queries, sizes)
            if self.family == "dino":
                return self._dino(outputs, inputs, queries, sizes)
            return self._omdet(outputs, sizes)

    def _inputs(self, images, queries):
        if self.family == "dino":
            text = [". ".join(dino_phrase(q) for q in qs) + "." for qs in queries]
            return self.processor(images=list(images), text=text, return_tensors="pt",
                                  padding="longest", truncation=True)
        # OWL processors pad every image to the batch's largest query count with " " queries;
        # OmDet-Turbo keeps a per-image class count.
        return self.processor(images=list(images), text=[list(q) for q in queries], return_tensors="pt",
                              truncation=True)

    def _owl(self, outputs, queries, sizes):
        torch = self._torch
        logits = outputs.logits.float()
        for i, qs in enumerate(queries):  # the processor's padding queries must never win a box
            logits[i, :, len(qs):] = torch.finfo(logits.dtype).min
        outputs.logits = logits
        outputs.pred_boxes = outputs.pred_boxes.float()
        results = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.min_score, target_sizes=sizes)
        return [_lists(r["boxes"], r["scores"], r["labels"]) for r in results]

    def _dino(self, outputs, inputs, queries, sizes):
        """Per-phrase scores: a box's score for a phrase is the max token probability over the phrase's
        tokens (the post-processor's own box score is the max over all tokens); label = best phrase."""
        from transformers.image_transforms import center_to_corners_format

        torch = self._torch
        dot = self.processor.tokenizer.convert_tokens_to_ids(".")
        probs = outputs.logits.float().sigmoid()
        boxes = center_to_corners_format(outputs.pred_boxes.float())
        input_ids = inputs["input_ids"].tolist()
        attention = inputs["attention_mask"].tolist()
        tok = self.processor.tokenizer
        special = {t for t in (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id) if t is not None}
        out = []
        for i, (h, w) in enumerate(sizes):
            spans = _phrase_token_spans(input_ids[i], attention[i], dot, special, len(queries[i]))
            kept = [q for q, span in enumerate(spans) if span]
            if not kept:
                out.append(([], [], []))
                continue
            per_phrase = torch.stack([probs[i][:, spans[q]].max(dim=-1).values for q in kept], dim=-1)
            scores, best = per_phrase.max(dim=-1)
            labels = torch.tensor(kept, device=best.device)[best]
            scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
            keep = scores > self.min_score
            out.append(_lists(boxes[i][keep] * scale, scores[keep], labels[keep]))
        return out

    def _omdet(self, outputs, sizes):
        # nms_threshold=1.0: IoU never exceeds 1, so the post-processor's own NMS keeps everything and
        # the project's NMS (across all chunks) decides.
        results = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.min_score, nms_threshold=1.0, target_sizes=sizes)
        return [_lists(r["boxes"], r["scores"], r["labels"]) for r in results]


def _phrase_token_spans(ids: list[int], mask: list[int], dot: int, special: set, n: int) -> list[list[int]]:
    """Token positions of each of the n '.'-separated phrases (truncated phrases get fewer or none)."""
    spans: list[list[int]] = [[] for _ in range(n)]
    phrase = 0
    for pos, (tok, m) in enumerate(zip(ids, mask)):
        if not m or tok in special:
            continue
        if tok == dot:
            phrase += 1
        elif phrase < n:
            spans[phrase].append(pos)
    return spans


class DetectorHandler(_GroundingHandler):
    """RunInference handler for zero-shot detectors (OWLv2, OWL-ViT, Grounding DINO, MM-Grounding-DINO,
    OmDet-Turbo) loaded with AutoModelForZeroShotObjectDetection + AutoProcessor.

    Each image's texts are deduplicated (case-insensitively) into detector queries and every box is
    fanned back out to all chunks with that text. Inference per image:
    `[(chunk_idx, [x1, y1, x2, y2], score), ...]` in pixels of that image, every box above `min_score`.
    """

    namespace = "groundforge_detector"

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "float16", batch_size: int = 8,
                 trust_remote_code: bool = False, min_score: float = 0.0,
                 share_across_processes: Optional[bool] = None, model_copies: Optional[int] = None):
        super().__init__(model, device=device, dtype=dtype, batch_size=batch_size,
                         trust_remote_code=trust_remote_code, share_across_processes=share_across_processes,
                         model_copies=model_copies)
        self._min_score = float(min_score)

    def load_model(self) -> LoadedDetector:
        return LoadedDetector(self._model, self._device, self._dtype, self._trust_remote_code, self._min_score)

    def run_inference(self, batch: Sequence[Prepared], model: LoadedDetector,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        start = time.perf_counter()
        queries = [detector_queries(p.texts) for p in batch]
        outputs = model.detect([p.image for p in batch], [q.texts for q in queries])
        results, count = [], 0
        for p, q, (boxes, scores, labels) in zip(batch, queries, outputs):
            dets = [(d.chunk, d.box, d.score) for d in detections_from_output(boxes, scores, labels, q)]
            count += len(dets)
            results.append(PredictionResult(p.example, dets, self._model))
        self._count_batch(batch, count, time.perf_counter() - start)
        return results
