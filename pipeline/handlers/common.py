"""GPU grounding stage: zero-shot detectors and Florence-2 as Beam RunInference model handlers.

Element contract (dict, or `GroundingInput`): `id` or `source` (source key for rejects), `image` (encoded bytes, a
Hugging Face `{"bytes", "path"}` dict, or a PIL image), `width`/`height` (display size, checked against the
decoded image when given), `texts` (the image's noun-chunk texts, in chunk order) and, for Florence-2,
`caption`. Other keys pass through untouched: each output is `PredictionResult(example=<the element as
given>, inference=[(chunk_idx, [x1, y1, x2, y2], score), ...])` with pixel boxes and plain Python numbers.
Several captions of one image go in one element: for the detector, `texts` (their distinct phrases) plus
`query_groups` (per caption, the indices into `texts` of its phrases), inference = per caption
`[(query_idx, box, score), ...]`; for Florence-2, `captions` plus `caption_texts` (per caption its chunk texts),
inference = per caption the single-caption list. The image is decoded once either way.

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

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

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
    width: int | None
    height: int | None
    texts: Sequence[str]
    caption: str | None = None


class Prepared(NamedTuple):
    """One decoded element between preprocessing and inference (never leaves the stage)."""
    example: Any          # the element as given; becomes PredictionResult.example
    image: Any            # PIL RGB image in display orientation (None once `pixel_values` hold it)
    texts: tuple
    caption: str | None
    num_bytes: int
    pixel_values: Any = None   # the image processor's tensor for this image (3, H, W), made before batching
    size: tuple | None = None  # (height, width) of the image in display orientation
    groups: list | None = None  # `query_groups`: per caption, the indices into `texts` of its own phrases


def load_processor(model_id: str, trust_remote_code: bool = False, use_fast: bool = True):
    """AutoProcessor with the torchvision-based ("fast") image processor where transformers has one and
    torchvision is installed, else the PIL/numpy one (never an error: the fast one is a speed-up). The
    choice is explicit (`backend=`; `use_fast=` on transformers before 5), so transformers prints no
    fallback warning; `processor_backend(p)` names what was loaded."""
    import importlib.util

    from transformers import AutoProcessor

    fast = bool(use_fast) and importlib.util.find_spec("torchvision") is not None
    try:
        return AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code,
                                             backend="torchvision" if fast else "pil")
    except TypeError:  # transformers 4.x: no `backend`
        return AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code, use_fast=fast)


def processor_backend(processor) -> str:
    """The image processor class a processor loaded, e.g. `Owlv2ImageProcessorPil` (PIL/numpy) or
    `Owlv2ImageProcessorFast` / `Owlv2ImageProcessor` with torchvision."""
    image_processor = getattr(processor, "image_processor", processor)
    return type(image_processor).__name__


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
    from groundforge.transforms.images import ImageError
    from groundforge.transforms.images import decode_image as decode_bytes
    from PIL import Image

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


def prepare(element, need_caption: bool = False, decode: bool = True) -> Prepared:
    """Check and decode one element (`decode=False`: check its texts and caption only). Raises GroundingError
    (becomes a failed element in the DLQ)."""
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
    if not decode:
        return Prepared(element, None, tuple(texts), caption, 0)
    image, num_bytes = decode_image(_field(element, "image"))
    width, height = _field(element, "width"), _field(element, "height")
    if width is not None and height is not None and (int(width), int(height)) != image.size:
        raise GroundingError("size_mismatch", f"element says {width}x{height}, image is "
                                              f"{image.size[0]}x{image.size[1]}")
    return Prepared(element, image, tuple(texts), caption, num_bytes)


def _text_bytes(texts) -> int:
    return sum(len(t.encode()) if isinstance(t, str) else _text_bytes(t) for t in texts)


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


def _lists(boxes, scores, labels) -> tuple[list, list, list]:
    return (boxes.detach().float().cpu().tolist(), scores.detach().float().cpu().tolist(),
            [int(v) for v in labels.detach().cpu().tolist()])


class _GroundingHandler(ModelHandler):
    """Shared plumbing: options, batching, preprocessing, metrics, model sharing."""

    namespace = "groundforge_ground"
    needs_caption = False

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "float16", batch_size: int = 8,
                 trust_remote_code: bool = False, share_across_processes: bool | None = None,
                 model_copies: int | None = None):
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
        """Encoded image bytes (or the pixel tensor's, once made) plus the UTF-8 bytes of the texts."""
        return sum((p.num_bytes if p.pixel_values is None else p.pixel_values.nbytes) + _text_bytes(p.texts)
                   for p in batch)

    def get_metrics_namespace(self) -> str:
        return self.namespace

    def update_model_path(self, model_path: str | None = None):
        if model_path:
            self._model = model_path

    def validate_inference_args(self, inference_args: dict[str, Any] | None):
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


def check_model(model: str, trust_remote_code: bool = False) -> None:
    """Fail before anything runs, in one line, when the grounding model's config cannot be loaded (a local
    directory without config.json, a hub id that is neither cached nor reachable)."""
    import os

    import click

    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise click.BadParameter(f"{model} has no config.json: not a transformers checkpoint", param_hint="--model")
        return
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, HTTP errors, ...
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise click.BadParameter(f"cannot load the config of {model!r}: {first[:200]}", param_hint="--model") from None
