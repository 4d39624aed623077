"""Images/s of the GRIT detector stage (DetectorHandler through RunInference on the DirectRunner) against a
bare loop doing the same work: decode, processor, forward, post-process, results to CPU lists, with the same
batch size, dtype and images.

The model is a random-weight OWLv2 built from a config (no download): tiny by default (CPU), or with
`--full` the size of google/owlv2-base-patch16 (Owlv2Config() defaults with the 960 px vision input,
3600 boxes per image) for a GPU. Images are the shipped COCO-style sample (640x480 JPEGs) repeated to --images; each
image's queries are the phrases of its sample caption. Both sides are timed end to end, model load
included (it is printed separately); each side runs --repeat times after one warm-up forward, best kept.

    python bench/grit_detector.py                          # tiny, CPU
    python bench/grit_detector.py --full --images 256 --batch-size 16 --dtype float16   # GPU
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

from groundforge.pipeline.sample import SAMPLE_DIR  # noqa: E402


def sample_elements(total: int) -> list[dict]:
    captions = json.loads((SAMPLE_DIR / "captions.json").read_text())
    files = {img["id"]: img for img in captions["images"]}
    by_image: dict[int, str] = {}
    for ann in captions["annotations"]:
        by_image.setdefault(ann["image_id"], ann["caption"])
    base = []
    for image_id, caption in sorted(by_image.items()):
        img = files[image_id]
        texts = [t.strip() for t in re.split(r",| and | in | on | with ", caption) if t.strip()]
        base.append({"image": (SAMPLE_DIR / "images" / img["file_name"]).read_bytes(), "width": img["width"],
                     "height": img["height"], "texts": texts})
    return [{**base[k % len(base)], "id": f"bench-{k}"} for k in range(total)]


class Source:
    """Element k on demand (the 50 sample elements are pickled once with the pipeline, not per element)."""

    def __init__(self, elements: list[dict]):
        self.base = elements[:50]

    def __call__(self, k: int) -> dict:
        return {**self.base[k % len(self.base)], "id": f"bench-{k}"}


def bare_loop(model_dir: str, elements: list[dict], batch_size: int, device: str, dtype: str) -> tuple[float, float]:
    """The minimum a notebook would do. Returns (seconds incl. load, load seconds)."""
    import torch
    from PIL import Image
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    start = time.perf_counter()
    dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dt = torch.float32 if dev == "cpu" else getattr(torch, dtype)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(model_dir, dtype=dt).to(dev).eval()
    loaded = time.perf_counter()
    n = 0
    for i in range(0, len(elements), batch_size):
        batch = elements[i:i + batch_size]
        images = [Image.open(io.BytesIO(e["image"])).convert("RGB") for e in batch]
        texts = [e["texts"] for e in batch]
        with torch.inference_mode():
            inputs = processor(images=images, text=texts, return_tensors="pt", truncation=True)
            inputs = {k: (v.to(dev, dt) if v.is_floating_point() else v.to(dev)) for k, v in inputs.items()}
            with torch.autocast(device_type=dev, dtype=dt, enabled=dev == "cuda" and dt != torch.float32):
                outputs = model(**inputs)
            outputs.logits = outputs.logits.float()
            outputs.pred_boxes = outputs.pred_boxes.float()
            results = processor.post_process_grounded_object_detection(
                outputs, threshold=0.0, target_sizes=[(im.height, im.width) for im in images])
            cpu = [(r["boxes"].cpu().tolist(), r["scores"].cpu().tolist(), r["labels"].cpu().tolist())
                   for r in results]
            n += len(cpu)
    assert n == len(elements)
    if dev == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, loaded - start


def pipeline_run(model_dir: str, elements: list[dict], batch_size: int, device: str, dtype: str,
                 runner_args: list[str]) -> tuple[float, int]:
    """RunInference(DetectorHandler) with exception handling, as the GRIT pipeline runs it."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    from groundforge.pipeline.handlers.detector import DetectorHandler

    handler = DetectorHandler(model_dir, device=device, dtype=dtype, batch_size=batch_size)
    start = time.perf_counter()
    p = beam.Pipeline(options=PipelineOptions(runner_args))
    results, _dlq = (p | beam.Create(range(len(elements)), reshuffle=False) | beam.Map(Source(elements))
                     | RunInference(handler).with_exception_handling())
    _ = results | beam.Map(lambda r: len(r.inference))
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - start
    counters = result.metrics().query(MetricsFilter().with_namespace(handler.get_metrics_namespace()))["counters"]
    images = sum(c.committed for c in counters if c.key.metric.name == "images")
    return seconds, images


def warm_up(model_dir: str, device: str, dtype: str, elements: list[dict]) -> float:
    """One load + forward before timing (CUDA context, kernels, file cache); returns the load seconds."""
    from PIL import Image

    from groundforge.pipeline.handlers.detector import LoadedDetector

    start = time.perf_counter()
    det = LoadedDetector(model_dir, device, dtype)
    load = time.perf_counter() - start
    e = elements[0]
    det.detect([Image.open(io.BytesIO(e["image"])).convert("RGB")], [e["texts"]])
    return load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="owlv2-base-patch16-sized model (for a GPU)")
    ap.add_argument("--images", type=int, default=None, help="images per run (default 64 tiny, 128 full)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--runner-args", default="--direct_running_mode=in_memory",
                    help="Beam options for the pipeline side (default: DirectRunner, one process)")
    args = ap.parse_args()

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import make_owlv2  # the tests' offline tiny/full-size OWLv2 builder

    total = args.images or (128 if args.full else 64)
    elements = sample_elements(total)
    runner_args = shlex.split(args.runner_args)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(make_owlv2(Path(tmp), full=args.full))
        load = warm_up(model_dir, args.device, args.dtype, elements)
        bare, bare_load, piped = [], [], []
        for _ in range(args.repeat):
            t, t_load = bare_loop(model_dir, elements, args.batch_size, args.device, args.dtype)
            bare.append(t)
            bare_load.append(t_load)
            t, count = pipeline_run(model_dir, elements, args.batch_size, args.device, args.dtype, runner_args)
            assert count == total, (count, total)
            piped.append(t)
    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(0) if dev == "cuda" else None
    bare_ips, pipe_ips = total / min(bare), total / min(piped)
    print(f"model: random-weight OWLv2 {'base-patch16 size (960 px)' if args.full else 'tiny (64 px)'}, "
          f"{total} images 640x480, batch {args.batch_size}, "
          f"{'float32 (CPU)' if dev == 'cpu' else args.dtype}, device {gpu or 'cpu'}")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"model load: {load:.2f} s (warm-up), bare loop load {min(bare_load):.2f} s; both sides below include it")
    print(f"bare loop:            {bare_ips:8.2f} images/s  ({min(bare):.2f} s)")
    print(f"RunInference stage:   {pipe_ips:8.2f} images/s  ({min(piped):.2f} s, runner args {args.runner_args!r})")
    print(f"ratio stage/bare:     {pipe_ips / bare_ips:8.3f}")


if __name__ == "__main__":
    main()
