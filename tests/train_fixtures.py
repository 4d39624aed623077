"""Helpers for the train/ tests: small florence2 record shards with real JPEG bytes."""
from __future__ import annotations

import hashlib
import io
import json
import os

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 200, 20), (200, 30, 200), (20, 200, 200),
           (120, 60, 0), (0, 0, 0), (250, 250, 250), (90, 90, 90)]


def jpeg(width: int, height: int, colour, box) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (128, 128, 128))
    ImageDraw.Draw(img).rectangle(box, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_record(i: int, task: str = "rec", dataset: str = "refcoco", split: str = "train",
                width: int = 48, height: int = 40, image_bytes: bool = True, fmt: str = "florence2") -> dict:
    """A record rendered for `fmt` (default florence2) by transforms.templates; its image shows one coloured
    rectangle (the box of its first object). Tasks: rec, reg, count_class, counting, grounded_caption."""
    from groundforge.transforms.templates import render_record

    colour = COLOURS[i % len(COLOURS)]
    x1, y1 = 2 + (i * 5) % 20, 3 + (i * 3) % 15
    box = [float(x1), float(y1), float(x1 + 18), float(y1 + 16)]
    label = f"thing {i}"
    caption, meta = label, {"builder": "test"}
    objects = [{"label": label, "bbox": box, "score": 1.0, "span": []}]
    if task == "count_class":
        meta["class"] = label
    elif task == "counting":
        meta["classes"] = [label, "other"]
    elif task == "grounded_caption":
        caption = f"a {label} next to a box"
        second = [0.0, 0.0, 10.0, 10.0]
        objects = [{"label": label, "bbox": box, "score": 1.0, "span": [2, 2 + len(label)]},
                   {"label": "box", "bbox": second, "score": 1.0, "span": [len(caption) - 3, len(caption)]}]
    data = jpeg(width, height, colour, box)
    rid = hashlib.sha256(f"{dataset}/{split}/{task}/{i}".encode()).hexdigest()[:20]
    record = {
        "id": rid, "dataset": dataset, "split": split, "task": task, "format": fmt,
        "prompt": "", "target": "",
        "image": {"bytes": data if image_bytes else None, "path": None if image_bytes else f"images/{rid}.jpg"},
        "image_id": str(i), "width": width, "height": height, "image_sha256": hashlib.sha256(data).hexdigest(),
        "objects": objects, "caption": caption, "meta": json.dumps(meta),
    }
    rendered = render_record(record, fmt)
    return {**record, "prompt": rendered.prompt, "target": rendered.target}


_TINY: dict = {}


def tiny_florence2(tmp_path_factory, dropout: float = 0.0) -> str:
    """A random-weight tiny Florence-2 directory, built once per test session and setting."""
    from groundforge.train.tiny import save_random_florence2

    if dropout not in _TINY:
        folder = str(tmp_path_factory.mktemp(f"tiny-florence2-{dropout:g}"))
        _TINY[dropout] = save_random_florence2(folder, "tiny", seed=0, dropout=dropout)
    return _TINY[dropout]


def image_bytes_of(record: dict) -> bytes:
    """The JPEG a path-only record refers to (regenerated from its id's index)."""
    return jpeg(record["width"], record["height"], COLOURS[int(record["image_id"]) % len(COLOURS)],
                record["objects"][0]["bbox"])


def write_shard(path: str, records: list[dict], row_group_size: int | None = None) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from groundforge.schemas import record_arrow_schema

    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.Table.from_pylist(records, schema=record_arrow_schema())
    pq.write_table(table, path, row_group_size=row_group_size or max(1, len(records)))
    return path


def write_shards(folder: str, records: list[dict], n_files: int, row_group_size: int,
                 prefix: str = "train") -> list[str]:
    """Records dealt round-robin into n_files files of `row_group_size`-row groups."""
    paths = []
    for k in range(n_files):
        part = records[k::n_files]
        paths.append(write_shard(os.path.join(folder, f"{prefix}-{k:05d}-of-{n_files:05d}.parquet"), part,
                                 row_group_size))
    return paths



def run_driver(argv: list[str]) -> int:
    """`python tests/train_fixtures.py CONFIG.json[,CONFIG2.json] LOG_PREFIX[,PREFIX2] [SLEEP_FROM SLEEP_S]`:
    train with the TrainConfig kwargs of each CONFIG in turn (alone or under torchrun: one launch for
    several runs saves the start-up), appending {step, ids, loss, lr} per step to PREFIX-rank{R}.jsonl,
    sleeping SLEEP_S after each step from SLEEP_FROM on so that a test can signal it mid-run. Exits
    128+signal when stopped by a signal."""
    import sys
    import time

    import torch

    from groundforge.train.loop import Interrupted, TrainConfig, train

    torch.set_num_threads(1)
    sleep_from, sleep_s = (int(argv[2]), float(argv[3])) if len(argv) > 3 else (10 ** 9, 0.0)
    rank = int(os.environ.get("RANK", "0"))
    for config, prefix in zip(argv[0].split(","), argv[1].split(",")):
        log_path = f"{prefix}-rank{rank}.jsonl"

        def on_step(step, info, log_path=log_path):
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "ids": info["ids"], "loss": info["loss"], "lr": info["lr"]})
                        + "\n")
            if step >= sleep_from:
                time.sleep(sleep_s)

        with open(config) as f:
            cfg = TrainConfig(**json.load(f))
        try:
            train(cfg, on_step=on_step)
        except Interrupted as exc:
            print(exc, file=sys.stderr)
            return 128 + exc.signum
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(run_driver(sys.argv[1:]))
