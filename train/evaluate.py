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
    split: str = "-train"           # splits of --shards to evaluate (data.parse_splits): all but train
    train_shards: list[str] | None = None   # checked for images shared with the eval shards
    progress: bool = True


# Decoding settings that a checkpoint's generation_config.json could otherwise change silently (Florence-2's
# ships no_repeat_ngram_size=3, which makes answers such as `{"cup": 1, "car": 1, "dog": 1}` impossible).
# transformers fills every setting left None from the model's generation_config, so each is given a value.
PINNED = {"do_sample": False, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
          "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "length_penalty": 1.0,
          "min_new_tokens": 0, "num_return_sequences": 1,
          "temperature": 1.0, "top_k": 50, "top_p": 1.0, "renormalize_logits": False, "max_length": None,
          "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
          "exponential_decay_length_penalty": None, "forced_bos_token_id": None, "use_cache": True}
_RECORDED = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "forced_eos_token_id")


def generation_config(model, num_beams: int, max_new_tokens: int):
    """The model's generation config with every decoding setting pinned (its token ids kept)."""
    import copy

    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    pinned = {**PINNED, "num_beams": num_beams, "max_new_tokens": max_new_tokens,
              "early_stopping": True if num_beams > 1 else None}   # a beam-search setting only
    for key, value in pinned.items():
        setattr(config, key, value)
    config.min_length = 0 if config.min_length else config.min_length   # min_new_tokens=0 decides
    return config


def generation_settings(config) -> dict:
    """What the report records: every pinned setting and the special token ids."""
    keys = sorted(set(PINNED) | {"num_beams", "max_new_tokens", "early_stopping", "min_length"} | set(_RECORDED))
    return {k: getattr(config, k, None) for k in keys}


def generate(model, processor, inputs: dict, *, device, amp_dtype, num_beams: int = 1,
             max_new_tokens: int = 256, config=None, decoder_only: bool = False) -> list[str]:
    """Decoded generations (control tokens kept; metrics.clean_generation strips BOS/EOS/pad). A decoder-only
    model returns prompt + answer: only the answer is decoded."""
    import torch

    config = config or generation_config(model, num_beams, max_new_tokens)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                         enabled=amp_dtype is not None):
        out = model.generate(**inputs, generation_config=config)
    if decoder_only:
        out = out[:, inputs["input_ids"].shape[1]:]
    return processor.tokenizer.batch_decode(out, skip_special_tokens=False)


def eval_loader(sources, processor, *, batch_size: int, num_workers: int, image_root: str | None,
                max_source_length: int | None = None, family=None):
    """One ordered pass over the shards (no shuffling), records kept for scoring."""
    import torch
    from torch.utils.data import DataLoader

    from groundforge.train.data import EVAL_COLUMNS, ShardStream
    from groundforge.train.families import FAMILIES, make_collator
    from groundforge.train.loop import ignore_stop_signals

    family = family or FAMILIES["florence2"]
    ds = ShardStream(sources, shuffle=False, epochs=1, columns=EVAL_COLUMNS, image_root=image_root, family=family)
    collate = make_collator(family, processor, with_labels=False, keep_records=True,
                            max_source_length=max_source_length if family.name == "florence2" else None)
    # a seeded generator: the loader's base seed must not come from (and advance) the global RNG
    return DataLoader(ds, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0), worker_init_fn=ignore_stop_signals)


def run_eval(model, processor, sources, *, out: str | None, device, amp_dtype=None, batch_size: int = 8,
             max_samples: int | None = None, num_beams: int = 3, max_new_tokens: int = 256,
             num_workers: int = 0, image_root: str | None = None, examples: int = 4,
             info: dict | None = None, progress: bool = True, family=None) -> dict:
    """Evaluate an already loaded model on `sources` ({name: [Unit]}); writes the report when `out`.

    Scores are summed as batches arrive; only the `examples` records per task that get drawn are kept.
    `skipped` in the report counts records whose image could not be read (they are not in `n`)."""
    from groundforge.train.families import FAMILIES
    from groundforge.train.model import max_positions

    family = family or FAMILIES["florence2"]

    was_training = model.training
    model.eval()
    gen_config = generation_config(model, num_beams, max_new_tokens)
    scores = metrics.Scores(references=reference_texts(sources))
    shown, skipped, per_task, n = [], Counter(), Counter(), 0
    total = sum(u.rows for units in sources.values() for u in units)
    bar = _bar(min(total, max_samples or total), progress)
    start = time.time()
    try:
        for batch in eval_loader(sources, processor, batch_size=batch_size, num_workers=num_workers,
                                 image_root=image_root, max_source_length=max_positions(model), family=family):
            skipped.update(batch["skipped"])
            records, inputs = batch["records"], batch["inputs"]
            if inputs is None:
                continue
            if max_samples is not None and n + len(records) > max_samples:
                keep = max_samples - n   # generate only for the records that count
                records, inputs = records[:keep], {k: v[:keep] for k, v in inputs.items()}
            texts = generate(model, processor, inputs, device=device, amp_dtype=amp_dtype, config=gen_config,
                             decoder_only=family.decoder_only)
            for rec, text in zip(records, texts):
                scores.add(rec, text)
                if per_task[rec["task"]] < examples:
                    per_task[rec["task"]] += 1
                    shown.append((rec, text))
            n += len(records)
            if bar is not None:
                bar.update(len(records))
            if max_samples is not None and n >= max_samples:
                break
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    report = {"n": n, "seconds": round(time.time() - start, 2), "tasks": scores.report(),
              "skipped": dict(skipped), "generation": generation_settings(gen_config), **(info or {})}
    report["headline"] = metrics.headline(report["tasks"])
    log.info("evaluated %d records in %.1fs: %s", report["n"], report["seconds"], report["headline"])
    if skipped:
        log.warning("evaluation skipped %d records with unreadable images: %s", sum(skipped.values()),
                    dict(skipped))
    if out:
        report["examples"] = write_examples(shown, out)
        write_json(out, report)
    return report


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="eval", unit="rec", dynamic_ncols=True)


REFERENCE_COLUMNS = ("task", "format", "target", "width", "height", "dataset", "split", "meta", "caption",
                     "objects", "image_sha256", "image_id")


def reference_texts(sources) -> dict:
    """metrics.reg_references over every reg record of the shards (a column pass, no images): a region's
    description is scored against all its sentences, also when --max-samples stops early."""
    import pyarrow.compute as pc

    from groundforge.train.data import open_parquet

    def reg_rows():
        for units in sources.values():
            for u in units:
                with open_parquet(u.file) as pf:
                    cols = [c for c in REFERENCE_COLUMNS if c in pf.schema_arrow.names]
                    table = pf.read_row_group(u.row_group, columns=cols)
                if "task" in table.column_names:
                    yield from table.filter(pc.equal(table["task"], "reg")).to_pylist()

    return metrics.reg_references(reg_rows())


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
    from groundforge.train.data import check_shard_formats, discover, list_units
    from groundforge.train.families import detect
    from groundforge.train.model import (adapter_base, is_adapter_dir, load_model, load_processor, resolve_amp_dtype,
                                         resolve_device)

    family = detect(cfg.model, cfg.trust_remote_code)
    files = discover(cfg.shards, cfg.split)
    check_shard_formats([f for fs in files.values() for f in fs], family)
    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp_dtype(cfg.dtype, device)
    model = load_model(cfg.model, cfg.trust_remote_code)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.to(device)
    proc_dir = cfg.model
    if os.path.isdir(cfg.model) and is_adapter_dir(cfg.model) and not _has_processor(cfg.model):
        proc_dir = adapter_base(cfg.model)
    processor = load_processor(proc_dir, cfg.trust_remote_code, family)
    sources = list_units(files)
    info = {"model": cfg.model, "shards": list(cfg.shards), "split": cfg.split,
            "overlap": train_overlap(cfg, [f for fs in files.values() for f in fs])}
    return run_eval(model, processor, sources, out=cfg.out, device=device, amp_dtype=amp_dtype,
                    batch_size=cfg.batch_size, max_samples=cfg.max_samples, num_beams=cfg.num_beams,
                    max_new_tokens=cfg.max_new_tokens, num_workers=cfg.num_workers,
                    image_root=cfg.image_root, examples=cfg.examples, info=info, progress=cfg.progress,
                    family=family)


def train_overlap(cfg: EvalConfig, eval_files: list[str]) -> dict | None:
    """Images shared (by image_sha256) between the eval shards and the train split next to them (or
    --train-shards); a warning when there are any. None when there is nothing to compare with."""
    from groundforge.train.data import TRAIN_SPLIT, discover, image_overlap

    train_files = set()
    for specs, split in ((cfg.shards, TRAIN_SPLIT), (cfg.train_shards or [], "all")):
        for spec in specs:
            try:
                train_files.update(f for fs in discover([spec], split).values() for f in fs)
            except FileNotFoundError:
                pass
    train_files -= set(eval_files)
    if not train_files:
        return None
    overlap = {"train_files": len(train_files), **image_overlap(sorted(train_files), eval_files)}
    if overlap["shared_images"]:
        log.warning("%d of the %d eval images are also in the train shards (by image_sha256): the score is not "
                    "a held-out score", overlap["shared_images"], overlap["eval_images"])
    return overlap


def _has_processor(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("processor_config.json", "preprocessor_config.json"))


def summary_line(report: dict) -> str:
    return json.dumps({"n": report["n"], **report["headline"]})
