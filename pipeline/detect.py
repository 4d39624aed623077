"""GPU grounding stage: zero-shot detectors and Florence-2 as Beam RunInference model handlers.

Element contract (dict, or `GroundingInput`): `id` or `source` (source key for rejects), `image` (encoded bytes, a
Hugging Face `{"bytes", "path"}` dict, or a PIL image), `width`/`height` (display size, checked against the
decoded image when given), `texts` (the image's noun-chunk texts, in chunk order) and, for Florence-2,
`caption`. Other keys pass through untouched: each output is `PredictionResult(example=<the element as
given>, inference=[(chunk_idx, [x1, y1, x2, y2], score), ...])` with pixel boxes and plain Python numbers.

Failures. Decoding and input checks run per element in the handler's preprocess function, before
batching, so with `RunInference(handler).with_exception_handling()` a bad image becomes one failed element
in `dlq.failed_preprocessing[0]` as `(element, (exc_type, repr, traceback))`, and the rest of its batch is
still grounded. An error inside the batched forward (out of memory, ...) fails the whole batch into
`dlq.failed_inferences` as `(batch, error)`. `failed_to_reject`, `failed_batch_to_rejects` and
`dlq_to_rejects` turn both into reject rows with stage "ground" (or the stage given: the GRIT text stage
uses them for its spaCy handler too).

Thresholds. The handler keeps every box the post-processor yields above `min_score` (default 0.0, i.e.
all of them); the Kosmos-2 filters (score > 0.65, NMS, sizes) are `transforms.grounding.filter_detections`,
applied by the pipeline afterwards, so they are tested without a model. Setting `min_score` to the
pipeline's score threshold gives the same final boxes with much smaller handler output (both use `>`).

Model placement. The model is loaded once per worker process (Beam's `shared.Shared`). On a GPU the
handler by default shares one model across the worker's SDK processes (`share_model_across_processes`,
Beam's `MultiProcessShared`): Dataflow starts one SDK process per vCPU, and a model per process would
put n copies and n CUDA contexts on one GPU. The shared object is a `LoadedDetector` whose `detect`
takes PIL images and returns CPU lists, so only picklable data crosses the process boundary. On CPU
each process keeps its own copy (no proxy overhead). `share_across_processes=True/False` overrides.
"""
from __future__ import annotations

import re
import time
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from groundforge.transforms.grounding import detections_from_output, detector_queries
from groundforge.transforms.records import reject

DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("float16", "bfloat16", "float32")
STAGE = "ground"
OWL_TYPES = ("owlv2", "owlvit")
DINO_TYPES = ("grounding-dino", "mm-grounding-dino")
OMDET_TYPES = ("omdet-turbo",)
FLORENCE_TASK = "<CAPTION_TO_PHRASE_GROUNDING>"


class GroundingError(ValueError):
    """A bad grounding input. `reason` is the reject reason; repr is `reason: detail` so the DLQ's
    `repr(exn)` carries both."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __repr__(self) -> str:
        return f"{self.reason}: {self.detail}"

    def __reduce__(self):
        return type(self), (self.reason, self.detail)


class GroundingInput(NamedTuple):
    id: str
    image: Any            # bytes, {"bytes", "path"} dict or PIL image
    width: Optional[int]
    height: Optional[int]
    texts: Sequence[str]
    caption: Optional[str] = None


class Prepared(NamedTuple):
    """One decoded element between preprocessing and inference (never leaves the stage)."""
    example: Any          # the element as given; becomes PredictionResult.example
    image: Any            # PIL RGB image in display orientation
    texts: tuple
    caption: Optional[str]
    num_bytes: int


# ---------------------------------------------------------------------------------------------------------
# element helpers


def _field(element, name: str, default=None):
    if isinstance(element, Mapping):
        return element.get(name, default)
    return getattr(element, name, default)


def source_of(element) -> str:
    """Reject `source` of an element (original or prepared)."""
    if isinstance(element, Prepared):
        element = element.example
    for name in ("id", "source", "key", "image_id"):
        value = _field(element, name)
        if value is not None:
            return str(value)
    return "unknown"


def decode_image(image) -> tuple[Any, int]:
    """bytes / HF image dict / PIL image -> (RGB PIL image in display orientation, encoded size). Bytes are
    decoded by `transforms.images.decode_image`: the checks and reject reasons of the image stage."""
    from PIL import Image

    from groundforge.transforms.images import ImageError
    from groundforge.transforms.images import decode_image as decode_bytes

    if isinstance(image, Mapping):
        image = image.get("bytes")
    if isinstance(image, Image.Image):
        return image.convert("RGB"), image.width * image.height * 3
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        try:
            return decode_bytes(data).convert("RGB"), len(data)
        except ImageError as err:
            raise GroundingError(err.reason, err.detail) from None
    raise GroundingError("no_image", f"image is {type(image).__name__}")


def prepare(element, need_caption: bool = False) -> Prepared:
    """Check and decode one element. Raises GroundingError (becomes a failed element in the DLQ)."""
    texts = _field(element, "texts")
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise GroundingError("no_text_queries", f"texts is {texts!r}"[:200])
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise GroundingError("bad_text_query", f"texts[{i}] is {text!r}"[:200])
    caption = _field(element, "caption")
    if need_caption and (not isinstance(caption, str) or not caption.strip()):
        raise GroundingError("empty_caption", f"caption is {caption!r}"[:200])
    if need_caption:
        from groundforge.transforms.codecs import find_special_tokens

        found = find_special_tokens(caption)
        if found:
            raise GroundingError("control_tokens", " ".join(found[:5]))
    image, num_bytes = decode_image(_field(element, "image"))
    width, height = _field(element, "width"), _field(element, "height")
    if width is not None and height is not None and (int(width), int(height)) != image.size:
        raise GroundingError("size_mismatch", f"element says {width}x{height}, image is "
                                              f"{image.size[0]}x{image.size[1]}")
    return Prepared(element, image, tuple(texts), caption, num_bytes)


# ---------------------------------------------------------------------------------------------------------
# rejects from RunInference's dead-letter outputs


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


# ---------------------------------------------------------------------------------------------------------
# torch helpers (lazy imports)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return device


def resolve_dtype(device: str, dtype: str):
    """torch dtype to run with: float32 on CPU whatever was asked (half precision on CPU is slow and
    poorly supported by the detectors' ops)."""
    import torch

    return torch.float32 if device == "cpu" else getattr(torch, dtype)


def _to_device(inputs: Mapping, device: str, dtype) -> dict:
    """Move processor outputs to the device; floating tensors (pixel values) take the model dtype."""
    import torch

    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        out[key] = value
    return out


def _autocast(device: str, dtype):
    import torch

    return torch.autocast(device_type=device, dtype=dtype,
                          enabled=device == "cuda" and dtype != torch.float32)


def _check_options(device: str, dtype: str, batch_size: int) -> None:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


# ---------------------------------------------------------------------------------------------------------
# zero-shot detectors


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


def _lists(boxes, scores, labels) -> tuple[list, list, list]:
    return (boxes.detach().float().cpu().tolist(), scores.detach().float().cpu().tolist(),
            [int(v) for v in labels.detach().cpu().tolist()])


class _GroundingHandler(ModelHandler):
    """Shared plumbing: options, batching, preprocessing, metrics, model sharing."""

    namespace = "groundforge_ground"
    needs_caption = False

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "float16", batch_size: int = 8,
                 trust_remote_code: bool = False, share_across_processes: Optional[bool] = None,
                 model_copies: Optional[int] = None):
        _check_options(device, dtype, batch_size)
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size, model_copies=model_copies)
        self._model = str(model)
        self._device = device
        self._dtype = dtype
        self._batch_size = batch_size
        self._trust_remote_code = bool(trust_remote_code)
        self._share = share_across_processes

    @property
    def model_id(self) -> str:
        return self._model

    @property
    def trust_remote_code(self) -> bool:
        return self._trust_remote_code

    def share_model_across_processes(self) -> bool:
        if self._share is not None:
            return self._share
        if self._model_copies is not None:
            return True
        if self._device == "cpu":
            return False
        try:
            return resolve_device(self._device) == "cuda"
        except (ImportError, RuntimeError):
            return False

    def get_preprocess_fns(self):
        return [self.prepare]

    def prepare(self, element) -> Prepared:
        return prepare(element, need_caption=self.needs_caption)

    def get_num_bytes(self, batch: Sequence[Prepared]) -> int:
        return sum(p.num_bytes + sum(len(t.encode()) for t in p.texts) for p in batch)

    def get_metrics_namespace(self) -> str:
        return self.namespace

    def update_model_path(self, model_path: Optional[str] = None):
        if model_path:
            self._model = model_path

    def validate_inference_args(self, inference_args: Optional[dict[str, Any]]):
        if inference_args:
            raise ValueError(f"{type(self).__name__} takes no inference_args, got {sorted(inference_args)}")

    def _count_batch(self, batch, detections: int, seconds: float) -> None:
        Metrics.distribution(self.namespace, "images_per_batch").update(len(batch))
        Metrics.counter(self.namespace, "images").inc(len(batch))
        Metrics.counter(self.namespace, "detections").inc(detections)
        Metrics.distribution(self.namespace, "batch_ms").update(int(seconds * 1000))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={self._model!r}, device={self._device!r}, dtype={self._dtype!r}, "
                f"batch_size={self._batch_size})")


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


# ---------------------------------------------------------------------------------------------------------
# Florence-2 phrase grounding


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


class Florence2GroundingHandler(_GroundingHandler):
    """RunInference handler: Florence-2 `<CAPTION_TO_PHRASE_GROUNDING>` + caption, decoded with the
    project's florence2 codec; phrases map back to chunks by `phrase_key` match; score 1.0.

    Needs a checkpoint in transformers' native Florence-2 format (trust_remote_code stays False)."""

    namespace = "groundforge_florence2"
    needs_caption = True

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "float16", batch_size: int = 8,
                 trust_remote_code: bool = False, max_new_tokens: int = 256, num_beams: int = 3,
                 share_across_processes: Optional[bool] = None, model_copies: Optional[int] = None):
        super().__init__(model, device=device, dtype=dtype, batch_size=batch_size,
                         trust_remote_code=trust_remote_code, share_across_processes=share_across_processes,
                         model_copies=model_copies)
        self._max_new_tokens = int(max_new_tokens)
        self._num_beams = int(num_beams)

    def load_model(self) -> LoadedFlorence2:
        return LoadedFlorence2(self._model, self._device, self._dtype, self._trust_remote_code,
                               self._max_new_tokens, self._num_beams)

    def run_inference(self, batch: Sequence[Prepared], model: LoadedFlorence2,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        start = time.perf_counter()
        texts = model.generate([p.image for p in batch], [p.caption for p in batch])
        results, count, unmatched = [], 0, 0
        for p, text in zip(batch, texts):
            dets, missed = florence_detections(text, p.texts, p.image.width, p.image.height)
            count += len(dets)
            unmatched += missed
            results.append(PredictionResult(p.example, dets, self._model))
        Metrics.counter(self.namespace, "unmatched_phrase_boxes").inc(unmatched)
        self._count_batch(batch, count, time.perf_counter() - start)
        return results
