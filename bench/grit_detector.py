"""Images/s of the GRIT detector stage (DetectorHandler through RunInference on the DirectRunner) on COCO-style
input (5 captions per image), against three baselines with the same model, batch size, dtype and images:

- forward only: the model on pre-made device tensors (pixel values and token ids made before timing), the GPU's
  own limit;
- plain loop: decode, processor, forward, post-process, results to CPU lists (what a notebook does);
- per-caption stage: the same RunInference stage fed one element per caption, as the pipeline did before it
  grouped captions by image (5 forwards per image instead of 1).

The grouped stage is what `groundforge build grit --grounder detector` runs: one element per image with the
union of its captions' phrases (`transforms.grounding.image_queries`) and per-caption query groups; decode
and the image processor run in RunInference's preprocessing, before batching (torchvision image processors
when torchvision is installed; the one used is printed). Forwards per image are read from the handler's
`images` counter.

Models are random-weight, built from configs (no download): OWLv2 (tiny by default; `--full` = the size of
google/owlv2-base-patch16, 960 px, 3600 boxes) or Grounding DINO (`--detector dino`; tiny, or `--full` =
GroundingDinoConfig() defaults: Swin-T + BERT-base, 900 queries, 800/1333 px). Images are the shipped sample
(320x240 JPEGs) repeated to --images; caption c of an image is its sample caption's phrases rotated by c, one
phrase recased, plus a phrase of the next image (so the union is smaller than the sum, as with COCO's five
captions). Each side runs --repeat times after a warm-up, best kept; model load is timed separately.

    python bench/grit_detector.py                                  # tiny OWLv2, CPU
    python bench/grit_detector.py --full --images 256 --batch-size 16 --dtype float16          # GPU
    python bench/grit_detector.py --detector dino --full --images 128 --batch-size 8 --dtype float16
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from groundforge.pipeline.sample import SAMPLE_DIR

CAPTIONS_PER_IMAGE = 5


def _phrases(caption: str) -> list[str]:
    return [t.strip() for t in re.split(r",| and | in | on | with |\.", caption) if t.strip()]


def sample_images(total: int) -> list[dict]:
    """COCO-style images: bytes, size and five captions' phrase lists (see the module docstring)."""
    captions = json.loads((SAMPLE_DIR / "captions.json").read_text())
    files = {img["id"]: img for img in captions["images"]}
    by_image: dict[int, str] = {}
    for ann in captions["annotations"]:
        by_image.setdefault(ann["image_id"], ann["caption"])
    ordered = sorted(by_image.items())
    base = []
    for k, (image_id, caption) in enumerate(ordered):
        img, texts = files[image_id], _phrases(caption) or ["a thing"]
        other = _phrases(ordered[(k + 1) % len(ordered)][1]) or ["a thing"]
        caps = []
        for c in range(CAPTIONS_PER_IMAGE):
            rot = texts[c % len(texts):] + texts[:c % len(texts)]
            rot = [rot[0][:1].upper() + rot[0][1:]] + rot[1:] if c % 2 else rot
            caps.append(rot + ([other[c % len(other)]] if c >= 2 else []))
        base.append({"image": (SAMPLE_DIR / "images" / img["file_name"]).read_bytes(), "width": img["width"],
                     "height": img["height"], "captions": caps})
    return [{**base[k % len(base)], "id": f"bench-{k}"} for k in range(total)]


def image_element(img: dict) -> dict:
    from groundforge.pipeline.builders.grit.ground import caption_query_groups
    from groundforge.transforms.grounding import image_queries

    q = image_queries(img["captions"])
    return {"id": img["id"], "image": img["image"], "width": img["width"], "height": img["height"],
            "texts": list(q.texts), "query_groups": caption_query_groups(q)}


def caption_elements(img: dict) -> list[dict]:
    return [{"id": f"{img['id']}#{c}", "image": img["image"], "width": img["width"], "height": img["height"],
             "texts": texts} for c, texts in enumerate(img["captions"])]


class Elements:
    """Elements of image k on demand (the 50 sample images are pickled once with the pipeline)."""

    def __init__(self, images: list[dict], per_caption: bool):
        self.base = images[:50]
        self.per_caption = per_caption

    def __call__(self, k: int) -> list[dict]:
        img = {**self.base[k % len(self.base)], "id": f"bench-{k}"}
        return caption_elements(img) if self.per_caption else [image_element(img)]


# ---------------------------------------------------------------- models

def make_dino_full(directory: Path) -> Path:
    """GroundingDinoConfig() defaults (Swin-T, BERT-base text, 900 queries) with random weights and the tests'
    word-level tokenizer (its ids lie inside BERT's 30522-token embedding); the default 800/1333 processor."""
    import torch
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import CHARS, WORDS

    (directory / "tok").mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + list(WORDS) + list(CHARS.replace(".", ""))
    (directory / "tok" / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizer.from_pretrained(directory / "tok")
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    out = directory / "grounding_dino_full"
    model.save_pretrained(out)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(), tokenizer=tokenizer).save_pretrained(out)
    return out


def make_model(kind: str, full: bool, directory: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_grounding_dino, make_owlv2  # the tests' offline builders

    if kind == "owlv2":
        return str(make_owlv2(directory, full=full))
    if full:
        return str(make_dino_full(directory))
    from transformers import AutoProcessor

    path = make_grounding_dino(directory)  # 32..64 px input: a lone 640x480 image gives its last level 1x1 pixel,
    processor = AutoProcessor.from_pretrained(path)  # which the extra level's GroupNorm refuses; 64..96 px does not
    processor.image_processor.size = {"shortest_edge": 64, "longest_edge": 96}
    processor.save_pretrained(path)
    return str(path)


def _device(device: str) -> str:
    import torch

    return device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def _sync(dev: str) -> None:
    import torch

    if dev == "cuda":
        torch.cuda.synchronize()


def _dino_text(texts) -> str:
    from groundforge.pipeline.handlers.detector import dino_phrase

    return ". ".join(dino_phrase(t) for t in texts) + "."


# ---------------------------------------------------------------- baselines

def plain_loop(model_dir: str, kind: str, images: list[dict], batch_size: int, device: str, dtype: str) -> float:
    """Decode, processor, forward, post-process, CPU lists; one forward per image with its union phrases."""
    import torch
    from groundforge.pipeline.handlers.common import load_processor
    from PIL import Image
    from transformers import AutoModelForZeroShotObjectDetection

    dev = _device(device)
    dt = torch.float32 if dev == "cpu" else getattr(torch, dtype)
    processor = load_processor(model_dir)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(model_dir, dtype=dt).to(dev).eval()
    elements = [image_element(img) for img in images]
    start = time.perf_counter()
    for i in range(0, len(elements), batch_size):
        batch = elements[i:i + batch_size]
        pil = [Image.open(io.BytesIO(e["image"])).convert("RGB") for e in batch]
        sizes = [(im.height, im.width) for im in pil]
        with torch.inference_mode():
            if kind == "owlv2":
                inputs = processor(images=pil, text=[e["texts"] for e in batch], return_tensors="pt", truncation=True)
            else:
                inputs = processor(images=pil, text=[_dino_text(e["texts"]) for e in batch], return_tensors="pt",
                                   padding="longest", truncation=True, max_length=model.config.max_text_len)
            on_dev = {k: (v.to(dev, dt) if v.is_floating_point() else v.to(dev)) for k, v in inputs.items()}
            with torch.autocast(device_type=dev, dtype=dt, enabled=dev == "cuda" and dt != torch.float32):
                outputs = model(**on_dev)
            outputs.logits = outputs.logits.float()
            outputs.pred_boxes = outputs.pred_boxes.float()
            if kind == "owlv2":
                results = processor.post_process_grounded_object_detection(outputs, threshold=0.0,
                                                                           target_sizes=sizes)
            else:
                results = processor.post_process_grounded_object_detection(
                    outputs, on_dev["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=sizes)
            [(r["boxes"].cpu().tolist(), r["scores"].cpu().tolist()) for r in results]
    _sync(dev)
    return time.perf_counter() - start


def forward_only(model_dir: str, kind: str, images: list[dict], batch_size: int, device: str, dtype: str) -> float:
    """The model alone on batches made (and moved to the device) before timing."""
    import torch
    from groundforge.pipeline.handlers.common import load_processor
    from PIL import Image
    from transformers import AutoModelForZeroShotObjectDetection

    dev = _device(device)
    dt = torch.float32 if dev == "cpu" else getattr(torch, dtype)
    processor = load_processor(model_dir)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(model_dir, dtype=dt).to(dev).eval()
    elements = [image_element(img) for img in images]
    batches = []
    for i in range(0, len(elements), batch_size):
        batch = elements[i:i + batch_size]
        pil = [Image.open(io.BytesIO(e["image"])).convert("RGB") for e in batch]
        if kind == "owlv2":
            inputs = processor(images=pil, text=[e["texts"] for e in batch], return_tensors="pt", truncation=True)
        else:
            inputs = processor(images=pil, text=[_dino_text(e["texts"]) for e in batch], return_tensors="pt",
                               padding="longest", truncation=True, max_length=model.config.max_text_len)
        batches.append({k: (v.to(dev, dt) if v.is_floating_point() else v.to(dev)) for k, v in inputs.items()})
    _sync(dev)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device_type=dev, dtype=dt,
                                                enabled=dev == "cuda" and dt != torch.float32):
        for inputs in batches:
            model(**inputs)
    _sync(dev)
    return time.perf_counter() - start


def stage(model_dir: str, images: list[dict], batch_size: int, device: str, dtype: str, runner_args: list[str],
          per_caption: bool) -> tuple[float, int]:
    """RunInference(DetectorHandler) with exception handling, as the GRIT pipeline runs it -> (seconds,
    forwards), forwards = images the handler ran through the model."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions
    from groundforge.pipeline.handlers.detector import DetectorHandler

    handler = DetectorHandler(model_dir, device=device, dtype=dtype, batch_size=batch_size)
    start = time.perf_counter()
    p = beam.Pipeline(options=PipelineOptions(runner_args))
    results, _dlq = (p | beam.Create(range(len(images)), reshuffle=False)
                     | beam.FlatMap(Elements(images, per_caption))
                     | RunInference(handler).with_exception_handling())
    _ = results | beam.Map(lambda r: len(r.inference))
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - start
    counters = result.metrics().query(MetricsFilter().with_namespace(handler.get_metrics_namespace()))["counters"]
    return seconds, sum(c.committed for c in counters if c.key.metric.name == "images")


def warm_up(model_dir: str, device: str, dtype: str, images: list[dict]) -> tuple[float, str]:
    """One load + forward before timing (CUDA context, kernels, file cache) -> (load seconds, image processor)."""
    from groundforge.pipeline.handlers.detector import LoadedDetector
    from PIL import Image

    start = time.perf_counter()
    det = LoadedDetector(model_dir, device, dtype)
    load = time.perf_counter() - start
    e = image_element(images[0])
    det.detect([Image.open(io.BytesIO(e["image"])).convert("RGB")], [e["texts"]])
    return load, det.image_processor_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", default="owlv2", choices=("owlv2", "dino"))
    ap.add_argument("--full", action="store_true", help="full-size model (for a GPU)")
    ap.add_argument("--images", type=int, default=None, help="images per run (default 32 tiny, 128 full)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-per-caption", action="store_true", help="leave out the per-caption stage (5x the work)")
    ap.add_argument("--runner-args", default="--direct_running_mode=in_memory",
                    help="Beam options for the stage runs (default: DirectRunner, one process)")
    args = ap.parse_args()

    import torch

    total = args.images or (128 if args.full else 32)
    images = sample_images(total)
    runner_args = shlex.split(args.runner_args)
    times: dict[str, list[float]] = {"forward": [], "plain": [], "stage": [], "per_caption": []}
    forwards: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(args.detector, args.full, Path(tmp))
        load, backend = warm_up(model_dir, args.device, args.dtype, images)
        for _ in range(args.repeat):
            times["forward"].append(forward_only(model_dir, args.detector, images, args.batch_size, args.device,
                                                 args.dtype))
            times["plain"].append(plain_loop(model_dir, args.detector, images, args.batch_size, args.device,
                                             args.dtype))
            t, forwards["stage"] = stage(model_dir, images, args.batch_size, args.device, args.dtype, runner_args,
                                         per_caption=False)
            times["stage"].append(t)
            if not args.skip_per_caption:
                t, forwards["per_caption"] = stage(model_dir, images, args.batch_size, args.device, args.dtype,
                                                   runner_args, per_caption=True)
                times["per_caption"].append(t)
    dev = _device(args.device)
    gpu = torch.cuda.get_device_name(0) if dev == "cuda" else None
    ips = {k: total / min(v) for k, v in times.items() if v}
    size = "full size" if args.full else "tiny"
    print(f"model: random-weight {args.detector} ({size}), {total} images {images[0]['width']}x{images[0]['height']} "
          f"x {CAPTIONS_PER_IMAGE} captions, "
          f"batch {args.batch_size}, {'float32 (CPU)' if dev == 'cpu' else args.dtype}, device {gpu or 'cpu'}")
    print(f"image processor: {backend}; machine: {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} torch threads; model load {load:.2f} s (not timed below)")
    print(f"forward only (pre-made tensors):  {ips['forward']:9.2f} images/s")
    print(f"plain processor+forward loop:     {ips['plain']:9.2f} images/s")
    print(f"RunInference stage, per image:    {ips['stage']:9.2f} images/s  "
          f"({forwards['stage'] / total:.0f} forward per image; stage start-up included)")
    if "per_caption" in ips:
        print(f"RunInference stage, per caption:  {ips['per_caption']:9.2f} images/s  "
              f"({forwards['per_caption'] / total:.0f} forwards per image, the pipeline before grouping)")
    print(f"ratio stage / forward only:       {ips['stage'] / ips['forward']:9.3f}")
    print(f"ratio stage / plain loop:         {ips['stage'] / ips['plain']:9.3f}")
    if "per_caption" in ips:
        print(f"gain per image / per caption:     {ips['stage'] / ips['per_caption']:9.3f}")


if __name__ == "__main__":
    main()
