"""Does the shard loader keep the GPU fed? Samples/s of the data path alone against the model's step rate.

    python bench/train_throughput.py                      # GPU: random-weight Florence-2-base; CPU: tiny
    python bench/train_throughput.py --size base --batch-size 16 --num-workers 8 --lora
    python bench/train_throughput.py --format all --size tiny --data-only   # every family's data path

--format picks the family (florence2, paligemma, qwen2vl, qwen25vl, kosmos2, or all): shards rendered for that
format and the family's collator (PaliGemma: processor with suffix; Qwen: chat template, images resized to the
qwen25vl frame; Kosmos-2: prompt + answer, prompt processed twice to mask it). Only Florence-2 has a `base`
size here; the other families use their tiny random-weight models (train.tiny), whose processors are tiny
too (28-pixel images), so their data-path figures measure decoding and batching, not the released models'
image preprocessing at 224-896 px.

Data path: Parquet row groups -> shuffle buffer -> JPEG decode -> Florence-2 processor (resize to 768,
normalize, tokenize prompt and target) -> batches, in --num-workers DataLoader workers.
Model step: forward + backward + AdamW step on one pre-collated batch kept on the device (autocast as
in training), i.e. the rate the GPU could go if data were free.
ratio = data samples/s / model samples/s; above 1 the loader never starves the model.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_bench_shards(folder: str, n: int, width: int, height: int, files: int = 4, row_group: int = 64,
                       fmt: str = "florence2") -> str:
    """n `rec` records rendered for `fmt`, with noisy JPEGs (so decoding costs what a photo costs)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from groundforge.schemas import record_arrow_schema
    from groundforge.transforms.templates import render_record

    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    records = []
    for i in range(n):
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        box = [width * 0.1, height * 0.2, width * 0.6, height * 0.9]
        rec = {"id": hashlib.sha256(str(i).encode()).hexdigest()[:20], "dataset": "bench", "split": "train",
               "task": "rec", "format": fmt, "prompt": "", "target": "",
               "image": {"bytes": data, "path": None}, "image_id": str(i), "width": width, "height": height,
               "image_sha256": hashlib.sha256(data).hexdigest(),
               "objects": [{"label": "the object", "bbox": box, "score": 1.0, "span": []}],
               "caption": f"the object on the left number {i}", "meta": json.dumps({"builder": "bench"})}
        r = render_record(rec, fmt)
        records.append({**rec, "prompt": r.prompt, "target": r.target})
    for k in range(files):
        table = pa.Table.from_pylist(records[k::files], schema=record_arrow_schema())
        pq.write_table(table, os.path.join(folder, f"train-{k:05d}-of-{files:05d}.parquet"), row_group_size=row_group)
    return folder


def data_rate(shards: str, processor, batch_size: int, num_workers: int, batches: int, family=None) -> float:
    import torch
    from torch.utils.data import DataLoader

    from groundforge.train.data import TRAIN_COLUMNS, ShardStream, discover, list_units
    from groundforge.train.families import FAMILIES, make_collator

    family = family or FAMILIES["florence2"]
    ds = ShardStream(list_units(discover([shards])), shuffle_buffer=256, family=family,
                     columns=TRAIN_COLUMNS + ("meta",))
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=make_collator(family, processor),
                        prefetch_factor=4 if num_workers else None, pin_memory=torch.cuda.is_available())
    it = iter(loader)
    for _ in range(max(2, num_workers)):  # workers started, first batches out
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def model_rate(model, batch: dict, device, amp_dtype, steps: int) -> tuple[float, float | None]:
    """Optimizer steps/s on one batch kept on the device, with the training loop's own step (autocast,
    fp16 GradScaler, clipping, AdamW); returns (samples/s, peak GPU memory in GiB or None)."""
    import torch

    from groundforge.train.loop import train_step

    inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    model.train()

    def step():
        train_step(model, [inputs], optimizer=opt, scaler=scaler, params=params, device=device,
                   amp_dtype=amp_dtype, max_grad_norm=1.0)

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = steps * inputs["input_ids"].shape[0] / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return rate, peak


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["auto", "tiny", "base"], default="auto",
                   help="auto: base on a GPU, tiny on CPU (base: Florence-2 only)")
    p.add_argument("--format", default="florence2",
                   choices=["florence2", "paligemma", "qwen2vl", "qwen25vl", "kosmos2", "all"],
                   help="model family, by the shard format it trains on")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--records", type=int, default=256)
    p.add_argument("--image-size", default="640x480", help="WIDTHxHEIGHT of the stored JPEGs")
    p.add_argument("--data-batches", type=int, default=20)
    p.add_argument("--model-steps", type=int, default=10)
    p.add_argument("--freeze-vision", action="store_true")
    p.add_argument("--lora", action="store_true")
    p.add_argument("--data-only", action="store_true", help="measure the data path only (no model step)")
    args = p.parse_args(argv)

    formats = ["florence2", "paligemma", "qwen2vl", "qwen25vl", "kosmos2"] if args.format == "all" else [args.format]
    for fmt in formats:
        run_one(args, fmt)


def run_one(args, fmt: str) -> None:
    import torch

    from groundforge.train.families import detect
    from groundforge.train.model import apply_lora, freeze_vision, load_model, load_processor, resolve_amp_dtype, resolve_device
    from groundforge.train.tiny import save_random, save_random_florence2

    device = resolve_device(args.device)
    amp_dtype = resolve_amp_dtype(args.dtype, device)
    size = args.size if args.size != "auto" else ("base" if device.type == "cuda" else "tiny")
    if fmt != "florence2":
        size = "tiny"
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - args.num_workers))
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_bench_shards(os.path.join(tmp, "shards"), args.records, width, height, fmt=fmt)
        model_dir = os.path.join(tmp, "model")
        save_random_florence2(model_dir, size) if fmt == "florence2" else save_random(fmt, model_dir)
        family = detect(model_dir)
        processor = load_processor(model_dir, family=family)
        data_sps = data_rate(shards, processor, args.batch_size, args.num_workers, args.data_batches, family)
        if args.data_only:
            print(f"{family.title} data path ({size} processor, batch {args.batch_size}, {width}x{height} JPEGs, "
                  f"{args.num_workers} workers): {data_sps:.2f} samples/s")
            return
        model = load_model(model_dir)
        if args.freeze_vision:
            freeze_vision(model)
        if args.lora:
            model = apply_lora(model, targets=family.lora_targets)
        model.to(device)
        batch = next(iter(_one_batch(shards, processor, args.batch_size, family)))
        model_sps, peak = model_rate(model, batch, device, amp_dtype, args.model_steps)
    mode = "lora" if args.lora else "freeze-vision" if args.freeze_vision else "full"
    print(f"model: random-weight {family.title} {size} ({mode}), device {device}, autocast {amp_dtype}, "
          f"batch {args.batch_size}, {width}x{height} JPEGs, {args.num_workers} workers")
    print(f"data path : {data_sps:9.2f} samples/s")
    print(f"model step: {model_sps:9.2f} samples/s" + (f"  (peak GPU memory {peak:.1f} GiB)" if peak else ""))
    print(f"ratio data/model = {data_sps / model_sps:.2f}  "
          + ("(loader keeps up)" if data_sps >= model_sps else "(loader-bound: add --num-workers)"))


def _one_batch(shards, processor, batch_size, family):
    from torch.utils.data import DataLoader

    from groundforge.train.data import TRAIN_COLUMNS, ShardStream, discover, list_units
    from groundforge.train.families import make_collator

    ds = ShardStream(list_units(discover([shards])), epochs=1, shuffle=False, family=family,
                     columns=TRAIN_COLUMNS + ("meta",))
    return DataLoader(ds, batch_size=batch_size, collate_fn=make_collator(family, processor))


if __name__ == "__main__":
    main()
