"""Does the shard loader keep the GPU fed? Samples/s of the data path alone against the model's step rate.

    python bench/train_throughput.py                      # GPU: random-weight Florence-2-base; CPU: tiny
    python bench/train_throughput.py --size base --batch-size 16 --num-workers 8 --lora

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


def write_bench_shards(folder: str, n: int, width: int, height: int, files: int = 4, row_group: int = 64) -> str:
    """n florence2 `rec` records with noisy JPEGs (so decoding costs what a photo costs)."""
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
               "task": "rec", "format": "florence2", "prompt": "", "target": "",
               "image": {"bytes": data, "path": None}, "image_id": str(i), "width": width, "height": height,
               "image_sha256": hashlib.sha256(data).hexdigest(),
               "objects": [{"label": "the object", "bbox": box, "score": 1.0, "span": []}],
               "caption": f"the object on the left number {i}", "meta": json.dumps({"builder": "bench"})}
        r = render_record(rec, "florence2")
        records.append({**rec, "prompt": r.prompt, "target": r.target})
    for k in range(files):
        table = pa.Table.from_pylist(records[k::files], schema=record_arrow_schema())
        pq.write_table(table, os.path.join(folder, f"train-{k:05d}-of-{files:05d}.parquet"), row_group_size=row_group)
    return folder


def data_rate(shards: str, processor, batch_size: int, num_workers: int, batches: int) -> float:
    import torch
    from torch.utils.data import DataLoader

    from groundforge.train.collate import Florence2Collator
    from groundforge.train.data import ShardStream, discover, list_units

    ds = ShardStream(list_units(discover([shards])), shuffle_buffer=256)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=Florence2Collator(processor),
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
                   help="auto: base on a GPU, tiny on CPU")
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

    import torch

    from groundforge.train.model import apply_lora, freeze_vision, load_model, load_processor, resolve_amp_dtype, resolve_device
    from groundforge.train.tiny import save_random_florence2

    device = resolve_device(args.device)
    amp_dtype = resolve_amp_dtype(args.dtype, device)
    size = args.size if args.size != "auto" else ("base" if device.type == "cuda" else "tiny")
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - args.num_workers))
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_bench_shards(os.path.join(tmp, "shards"), args.records, width, height)
        model_dir = save_random_florence2(os.path.join(tmp, "model"), size)
        processor = load_processor(model_dir)
        data_sps = data_rate(shards, processor, args.batch_size, args.num_workers, args.data_batches)
        if args.data_only:
            print(f"data path ({size} processor, batch {args.batch_size}, {width}x{height} JPEGs, "
                  f"{args.num_workers} workers): {data_sps:.2f} samples/s")
            return
        model = load_model(model_dir)
        if args.freeze_vision:
            freeze_vision(model)
        if args.lora:
            model = apply_lora(model)
        model.to(device)
        batch = next(iter(_one_batch(shards, processor, args.batch_size)))
        model_sps, peak = model_rate(model, batch, device, amp_dtype, args.model_steps)
    mode = "lora" if args.lora else "freeze-vision" if args.freeze_vision else "full"
    print(f"model: random-weight Florence-2-{size} ({mode}), device {device}, autocast {amp_dtype}, "
          f"batch {args.batch_size}, {width}x{height} JPEGs, {args.num_workers} workers")
    print(f"data path : {data_sps:9.2f} samples/s")
    print(f"model step: {model_sps:9.2f} samples/s" + (f"  (peak GPU memory {peak:.1f} GiB)" if peak else ""))
    print(f"ratio data/model = {data_sps / model_sps:.2f}  "
          + ("(loader keeps up)" if data_sps >= model_sps else "(loader-bound: add --num-workers)"))


def _one_batch(shards, processor, batch_size):
    from torch.utils.data import DataLoader

    from groundforge.train.collate import Florence2Collator
    from groundforge.train.data import ShardStream, discover, list_units

    ds = ShardStream(list_units(discover([shards])), epochs=1, shuffle=False)
    return DataLoader(ds, batch_size=batch_size, collate_fn=Florence2Collator(processor))


if __name__ == "__main__":
    main()
