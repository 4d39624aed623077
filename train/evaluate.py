"""Generate for every record of a shard set, score with train.metrics, write a report and example images."""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass

from groundforge.train import metrics

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    model: str
    shards: list[str]
    out: str                        # report JSON path; examples go next to it in <stem>_examples/
    batch_size: int = 8
    max_samples: int | None = None
    num_beams: int = 3
    max_new_tokens: int = 256
    num_workers: int = 2
    device: str = "auto"
    dtype: str = "auto"
    image_root: str | None = None
    examples: int = 4               # rendered examples per task
    trust_remote_code: bool = False


def generate(model, processor, inputs: dict, *, device, amp_dtype, num_beams: int,
             max_new_tokens: int) -> list[str]:
    """Decoded generations (control tokens kept; metrics.clean_generation strips BOS/EOS/pad)."""
    import torch

    inputs = {k: v.to(device) for k, v in inputs.items()}
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                         enabled=amp_dtype is not None):
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
    return processor.tokenizer.batch_decode(out, skip_special_tokens=False)


def eval_loader(sources, processor, *, batch_size: int, num_workers: int, image_root: str | None,
                max_source_length: int | None = None):
    """One ordered pass over the shards (no shuffling), records kept for scoring."""
    import torch
    from torch.utils.data import DataLoader

    from groundforge.train.collate import Florence2Collator
    from groundforge.train.data import EVAL_COLUMNS, ShardStream
    from groundforge.train.loop import ignore_stop_signals

    ds = ShardStream(sources, shuffle=False, epochs=1, columns=EVAL_COLUMNS, image_root=image_root)
    collate = Florence2Collator(processor, with_labels=False, keep_records=True,
                                max_source_length=max_source_length)
    # a seeded generator: the loader's base seed must not come from (and advance) the global RNG
    return DataLoader(ds, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0), worker_init_fn=ignore_stop_signals)


def run_eval(model, processor, sources, *, out: str | None, device, amp_dtype=None, batch_size: int = 8,
             max_samples: int | None = None, num_beams: int = 3, max_new_tokens: int = 256,
             num_workers: int = 0, image_root: str | None = None, examples: int = 4,
             info: dict | None = None, progress: bool = True) -> dict:
    """Evaluate an already loaded model on `sources` ({name: [Unit]}); writes the report when `out`.

    Scores are summed as batches arrive; only the `examples` records per task that get drawn are kept.
    `skipped` in the report counts records whose image could not be read (they are not in `n`)."""
    from groundforge.train.model import max_positions

    was_training = model.training
    model.eval()
    scores, shown, skipped, per_task, n = metrics.Scores(), [], Counter(), Counter(), 0
    start = time.time()
    try:
        for batch in eval_loader(sources, processor, batch_size=batch_size, num_workers=num_workers,
                                 image_root=image_root, max_source_length=max_positions(model)):
            skipped.update(batch["skipped"])
            records, inputs = batch["records"], batch["inputs"]
            if inputs is None:
                continue
            if max_samples is not None and n + len(records) > max_samples:
                keep = max_samples - n   # generate only for the records that count
                records, inputs = records[:keep], {k: v[:keep] for k, v in inputs.items()}
            texts = generate(model, processor, inputs, device=device, amp_dtype=amp_dtype,
                             num_beams=num_beams, max_new_tokens=max_new_tokens)
            for rec, text in zip(records, texts):
                scores.add(rec, text)
                if per_task[rec["task"]] < examples:
                    per_task[rec["task"]] += 1
                    shown.append((rec, text))
            n += len(records)
            if max_samples is not None and n >= max_samples:
                break
    finally:
        model.train(was_training)
    report = {"n": n, "seconds": round(time.time() - start, 2), "tasks": scores.report(),
              "skipped": dict(skipped), **(info or {})}
    report["headline"] = metrics.headline(report["tasks"])
    log.info("evaluated %d records in %.1fs: %s", report["n"], report["seconds"], report["headline"])
    if skipped:
        log.warning("evaluation skipped %d records with unreadable images: %s", sum(skipped.values()),
                    dict(skipped))
    if out:
        report["examples"] = write_examples(shown, out)
        write_json(out, report)
    return report


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(metrics.dumps(obj) + "\n")
    os.replace(tmp, path)


def write_examples(shown: list, report_path: str) -> list[dict]:
    """Draw true (green) and predicted (red) boxes on a few images, with prompt, target and output."""
    folder = os.path.splitext(os.path.abspath(report_path))[0] + "_examples"
    os.makedirs(folder, exist_ok=True)
    entries = []
    for i, (rec, text) in enumerate(shown):
        name = f"{i:03d}_{rec['task']}_{rec['id']}.png"
        parsed = metrics.parse(rec, metrics.clean_generation(text))
        draw_example(rec, metrics.predicted_boxes(rec["task"], parsed), text).save(os.path.join(folder, name))
        entries.append({"id": rec["id"], "task": rec["task"], "prompt": rec["prompt"], "target": rec["target"],
                        "generation": metrics.clean_generation(text), "image": os.path.join(
                            os.path.basename(folder), name)})
    return entries


def draw_example(rec: dict, pred_boxes: list, generation: str):
    from PIL import Image, ImageDraw

    img = rec["image"].convert("RGB")
    scale = 512 / max(img.size) if max(img.size) > 512 else 1.0
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    lines = [f"task: {rec['task']}", f"prompt: {rec['prompt']}", f"target: {rec['target']}",
             f"output: {metrics.clean_generation(generation)}", "green = true, red = predicted"]
    canvas = Image.new("RGB", (max(img.width, 512), img.height + 14 * len(lines) + 8), "white")
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    sx, sy = img.width / rec["width"], img.height / rec["height"]
    for boxes, colour in ((metrics.true_boxes(rec), (0, 200, 0)), (pred_boxes, (230, 0, 0))):
        for x1, y1, x2, y2 in boxes:
            draw.rectangle([x1 * sx, y1 * sy, x2 * sx, y2 * sy], outline=colour, width=2)
    for k, line in enumerate(lines):
        draw.text((4, img.height + 4 + 14 * k), line[:110], fill=(0, 0, 0))
    return canvas


def evaluate(cfg: EvalConfig) -> dict:
    """`groundforge eval`: load a model directory (full model or LoRA adapter), evaluate, write the report."""
    from groundforge.train.data import discover, list_units
    from groundforge.train.model import adapter_base, is_adapter_dir, load_model, load_processor, resolve_amp_dtype, resolve_device

    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp_dtype(cfg.dtype, device)
    model = load_model(cfg.model, cfg.trust_remote_code)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.to(device)
    proc_dir = cfg.model
    if os.path.isdir(cfg.model) and is_adapter_dir(cfg.model) and not _has_processor(cfg.model):
        proc_dir = adapter_base(cfg.model)
    processor = load_processor(proc_dir, cfg.trust_remote_code)
    sources = list_units(discover(cfg.shards))
    info = {"model": cfg.model, "shards": list(cfg.shards), "num_beams": cfg.num_beams,
            "max_new_tokens": cfg.max_new_tokens}
    return run_eval(model, processor, sources, out=cfg.out, device=device, amp_dtype=amp_dtype,
                    batch_size=cfg.batch_size, max_samples=cfg.max_samples, num_beams=cfg.num_beams,
                    max_new_tokens=cfg.max_new_tokens, num_workers=cfg.num_workers,
                    image_root=cfg.image_root, examples=cfg.examples, info=info)


def _has_processor(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("processor_config.json", "preprocessor_config.json"))


def summary_line(report: dict) -> str:
    return json.dumps({"n": report["n"], **report["headline"]})
