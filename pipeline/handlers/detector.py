"""Zero-shot detectors (OWLv2 / OWL-ViT, Grounding DINO, OmDet-Turbo) as a RunInference handler."""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import PredictionResult
from groundforge.pipeline.handlers.common import (
    DINO_TYPES,
    OMDET_TYPES,
    OWL_TYPES,
    GroundingError,
    Prepared,
    _autocast,
    _field,
    _GroundingHandler,
    _lists,
    _to_device,
    load_processor,
    prepare,
    processor_backend,
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
    """A zero-shot detector with its processor on one device. `detect` is the whole forward: processor,
    model under inference_mode/autocast, post-processing, and the move to CPU lists. `detect_tensors` is the
    same from pixel values the image processor made before batching (`ImageInputs`), so the GPU worker only
    tokenizes the queries, pads and runs the model."""

    def __init__(self, model_id: str, device: str = "auto", dtype: str = "float16",
                 trust_remote_code: bool = False, min_score: float = 0.0, use_fast: bool = True):
        import torch
        from transformers import AutoModelForZeroShotObjectDetection

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        self.min_score = float(min_score)
        self.processor = load_processor(model_id, trust_remote_code, use_fast)
        self.image_processor_name = processor_backend(self.processor)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(
            model_id, dtype=self.dtype, trust_remote_code=trust_remote_code)
        self.family = model_family(model.config.model_type)
        # Grounding DINO's text limit (256 tokens): longer prompts are cut there (their last phrases get no box)
        limit = getattr(model.config, "max_text_len", None)
        self._text_limit = {"max_length": int(limit)} if self.family == "dino" and limit else {}
        self.model = model.to(self.device).eval()
        self._torch = torch

    def detect(self, images: Sequence, queries: Sequence[Sequence[str]], groups: Sequence | None = None
               ) -> list:
        """Per image `(boxes, scores, labels)` as CPU Python lists: pixel xyxy boxes (in each image's own
        size), scores, and label = index into that image's queries. With `groups` (per image None or a list of
        query-index lists), such an image gets one `(boxes, scores, labels)` per group: what a forward with only
        that group's queries gives (a box takes the best of the group's queries), labels indexing all queries."""
        sizes = [(img.height, img.width) for img in images]
        with self._torch.inference_mode():
            inputs = self._inputs(images, queries)
            return self._run(inputs, queries, sizes, groups)

    def detect_tensors(self, pixel_values: Sequence, sizes: Sequence[tuple], queries: Sequence[Sequence[str]],
                       groups: Sequence | None = None) -> list:
        """`detect` from per-image pixel values (3, H, W) made by `image_inputs`; sizes are (height, width)."""
        with self._torch.inference_mode():
            inputs = {**self._text_inputs(queries), **batch_pixels(pixel_values, self.family == "dino")}
            return self._run(inputs, queries, sizes, groups)

    def _run(self, inputs, queries, sizes, groups):
        with _autocast(self.device, self.dtype):
            outputs = self.model(**_to_device(inputs, self.device, self.dtype))
        groups = list(groups) if groups is not None else [None] * len(queries)
        if self.family == "owl":
            return self._owl(outputs, queries, sizes, groups)
        if self.family == "dino":
            return self._dino(outputs, inputs, queries, sizes, groups)
        return self._omdet(outputs, sizes, groups)

    def _text_inputs(self, queries):
        if self.family == "dino":
            text = [". ".join(dino_phrase(q) for q in qs) + "." for qs in queries]
            return dict(self.processor(text=text, return_tensors="pt", padding="longest", truncation=True,
                                       **self._text_limit))
        if self.family == "owl":
            return dict(self.processor(text=[list(q) for q in queries], return_tensors="pt", truncation=True))
        raise ValueError("OmDet-Turbo takes images and classes together: use detect()")

    def _inputs(self, images, queries):
        if self.family == "dino":
            text = [". ".join(dino_phrase(q) for q in qs) + "." for qs in queries]
            return self.processor(images=list(images), text=text, return_tensors="pt",
                                  padding="longest", truncation=True, **self._text_limit)
        # OWL processors pad every image to the batch's largest query count with " " queries;
        # OmDet-Turbo keeps a per-image class count.
        return self.processor(images=list(images), text=[list(q) for q in queries], return_tensors="pt",
                              truncation=True)

    def _owl(self, outputs, queries, sizes, groups):
        """One post-processor row per (image, group): the group's query columns of the image's logits (padded
        with -inf), so a box's label and score are the best over that group's queries alone."""
        torch = self._torch
        logits, boxes = outputs.logits.float(), outputs.pred_boxes.float()
        rows = [(i, g) for i, qs in enumerate(queries)
                for g in (groups[i] if groups[i] is not None else [list(range(len(qs)))])]
        width = max(len(g) for _, g in rows)
        sliced = torch.full((len(rows), logits.shape[1], width), torch.finfo(logits.dtype).min, dtype=logits.dtype,
                            device=logits.device)  # the processor's padding queries must never win a box either
        for r, (i, g) in enumerate(rows):
            if g:
                sliced[r, :, :len(g)] = logits[i][:, list(g)]
        outputs.logits = sliced
        outputs.pred_boxes = boxes[[i for i, _ in rows]]
        results = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.min_score, target_sizes=[sizes[i] for i, _ in rows])
        per_row = []
        for (i, g), res in zip(rows, results):
            b, s, labels = _lists(res["boxes"], res["scores"], res["labels"])
            per_row.append((b, s, [g[label] for label in labels]))
        return _regroup(per_row, rows, groups)

    def _dino(self, outputs, inputs, queries, sizes, groups):
        """Per-phrase scores: a box's score for a phrase is the max token probability over the phrase's
        tokens (the post-processor's own box score is the max over all tokens); label = best phrase (of the
        group's phrases, with groups). Grounding DINO fuses text and image, so its scores depend on every
        phrase of the prompt: a group's boxes are those of the image's whole prompt restricted to the group."""
        from transformers.image_transforms import center_to_corners_format

        torch = self._torch
        dot = self.processor.tokenizer.convert_tokens_to_ids(".")
        probs = outputs.logits.float().sigmoid()
        boxes = center_to_corners_format(outputs.pred_boxes.float())
        input_ids = inputs["input_ids"].tolist()
        attention = inputs["attention_mask"].tolist()
        tok = self.processor.tokenizer
        special = {t for t in (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id) if t is not None}
        per_row, rows = [], []
        for i, (h, w) in enumerate(sizes):
            spans = _phrase_token_spans(input_ids[i], attention[i], dot, special, len(queries[i]))
            for g in (groups[i] if groups[i] is not None else [list(range(len(queries[i])))]):
                rows.append((i, g))
                kept = [q for q in g if spans[q]]
                if not kept:
                    per_row.append(([], [], []))
                    continue
                per_phrase = torch.stack([probs[i][:, spans[q]].max(dim=-1).values for q in kept], dim=-1)
                scores, best = per_phrase.max(dim=-1)
                labels = torch.tensor(kept, device=best.device)[best]
                scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
                keep = scores > self.min_score
                per_row.append(_lists(boxes[i][keep] * scale, scores[keep], labels[keep]))
        return _regroup(per_row, rows, groups)

    def _omdet(self, outputs, sizes, groups):
        # nms_threshold=1.0: IoU never exceeds 1, so the post-processor's own NMS keeps everything and
        # the project's NMS (across all chunks) decides. A group keeps the boxes labelled with its classes.
        results = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.min_score, nms_threshold=1.0, target_sizes=sizes)
        out = []
        for i, r in enumerate(results):
            b, s, labels = _lists(r["boxes"], r["scores"], r["labels"])
            if groups[i] is None:
                out.append((b, s, labels))
                continue
            parts = []
            for g in groups[i]:
                mine = set(g)
                keep = [k for k, label in enumerate(labels) if label in mine]
                parts.append(([b[k] for k in keep], [s[k] for k in keep], [labels[k] for k in keep]))
            out.append(parts)
        return out


def _regroup(per_row: list, rows: list, groups: list) -> list:
    """Post-processed rows -> per image: the one result, or the list of its groups' results."""
    out: list = [[] for _ in groups]
    for (i, _), result in zip(rows, per_row):
        out[i].append(result)
    return [parts if groups[i] is not None else parts[0] for i, parts in enumerate(out)]


def batch_pixels(pixel_values: Sequence, with_mask: bool) -> dict:
    """Per-image (3, H, W) tensors -> the batch the processor would give: stacked when they share a size (OWL's
    square input), else zero-padded at the bottom and right with a `pixel_mask` (DETR-style processors such as
    Grounding DINO's pad a batch that way)."""
    import torch

    shapes = {tuple(p.shape) for p in pixel_values}
    if len(shapes) == 1 and not with_mask:
        return {"pixel_values": torch.stack(list(pixel_values))}
    height = max(p.shape[1] for p in pixel_values)
    width = max(p.shape[2] for p in pixel_values)
    batch = torch.zeros((len(pixel_values), pixel_values[0].shape[0], height, width), dtype=pixel_values[0].dtype)
    mask = torch.zeros((len(pixel_values), height, width), dtype=torch.int64)
    for i, p in enumerate(pixel_values):
        batch[i, :, :p.shape[1], :p.shape[2]] = p
        mask[i, :p.shape[1], :p.shape[2]] = 1
    out = {"pixel_values": batch}
    if with_mask:
        out["pixel_mask"] = mask
    return out


_IMAGE_PROCESSORS: dict = {}


def image_processor_for(model_id: str, trust_remote_code: bool, use_fast: bool):
    """(image processor, model family) of a checkpoint, loaded once per process: the CPU side of the stage
    (RunInference's preprocessing, before batching) resizes and normalises, so batches carry ready tensors."""
    key = (model_id, trust_remote_code, use_fast)
    if key not in _IMAGE_PROCESSORS:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        processor = load_processor(model_id, trust_remote_code, use_fast)
        _IMAGE_PROCESSORS[key] = (processor.image_processor, model_family(config.model_type))
    return _IMAGE_PROCESSORS[key]


def image_inputs(image_processor, image) -> Any:
    """One PIL image -> its (3, H, W) float32 pixel values, as the image processor makes them in a batch."""
    return image_processor(images=[image], return_tensors="pt")["pixel_values"][0]


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

    An element with `query_groups` (one image's captions: per caption the indices into `texts` of its
    phrases, texts already distinct, as `transforms.grounding.image_queries` makes them) gets one forward and,
    per group, `[(query_idx, box, score), ...]`: the boxes a forward with only that group's queries gives
    (OWL: exactly; Grounding DINO / OmDet-Turbo: the whole prompt's boxes restricted to the group).

    Preprocessing (decode, checks, and for OWL / Grounding DINO the image processor's resize and normalise,
    `use_fast`: the torchvision-based processor when torchvision is installed) runs in RunInference's
    preprocessing, before batching, off the model's critical path; `run_inference` stacks ready tensors.
    """

    namespace = "groundforge_detector"

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "float16", batch_size: int = 8,
                 trust_remote_code: bool = False, min_score: float = 0.0, use_fast: bool = True,
                 preprocess_images: bool = True, share_across_processes: bool | None = None,
                 model_copies: int | None = None):
        super().__init__(model, device=device, dtype=dtype, batch_size=batch_size,
                         trust_remote_code=trust_remote_code, share_across_processes=share_across_processes,
                         model_copies=model_copies)
        self._min_score = float(min_score)
        self._use_fast = bool(use_fast)
        self._preprocess_images = bool(preprocess_images)
        self._pixel_dtype = None

    def load_model(self) -> LoadedDetector:
        return LoadedDetector(self._model, self._device, self._dtype, self._trust_remote_code, self._min_score,
                              self._use_fast)

    def prepare(self, element) -> Prepared:
        p = prepare(element)
        groups = _field(element, "query_groups")
        if groups is not None:
            if not isinstance(groups, Sequence) or not all(
                    isinstance(g, Sequence) and all(isinstance(q, int) and 0 <= q < len(p.texts) for q in g)
                    for g in groups):
                raise GroundingError("bad_query_groups", f"query_groups is {groups!r}"[:200])
            p = p._replace(groups=[list(g) for g in groups])
        p = p._replace(size=(p.image.height, p.image.width))
        if not self._preprocess_images:
            return p
        image_processor, family = image_processor_for(self._model, self._trust_remote_code, self._use_fast)
        if family == "omdet":  # its processor takes images and classes together
            return p
        pixels = image_inputs(image_processor, p.image)
        if self._pixel_dtype is None:
            self._pixel_dtype = resolve_dtype(resolve_device(self._device), self._dtype)
        # in the model's dtype already (the same rounding as the cast on the device): half the bytes through
        # the batch and, when the model is shared across processes, through the proxy
        return p._replace(pixel_values=pixels.to(self._pixel_dtype), image=None)

    def run_inference(self, batch: Sequence[Prepared], model: LoadedDetector,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        start = time.perf_counter()
        queries = [detector_queries(p.texts) if p.groups is None else None for p in batch]
        texts = [q.texts if q is not None else list(p.texts) for p, q in zip(batch, queries)]
        groups = [p.groups for p in batch]
        if all(p.pixel_values is not None for p in batch):
            outputs = model.detect_tensors([p.pixel_values for p in batch], [p.size for p in batch], texts, groups)
        else:
            outputs = model.detect([p.image for p in batch], texts, groups)
        results, count = [], 0
        for p, q, output in zip(batch, queries, outputs):
            if q is None:  # one list per group: (query index, box, score)
                dets = [[(int(label), [float(v) for v in box], float(score))
                         for box, score, label in zip(*part)] for part in output]
                count += sum(len(d) for d in dets)
            else:
                dets = [(d.chunk, d.box, d.score) for d in detections_from_output(*output, q)]
                count += len(dets)
            results.append(PredictionResult(p.example, dets, self._model))
        self._count_batch(batch, count, time.perf_counter() - start)
        return results
