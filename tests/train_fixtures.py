"""Helpers for the train/ tests: small record shards with real JPEG bytes, and a saved tiny Florence-2."""
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


def loc_text(box, width, height) -> str:
    from transforms.codecs import get_codec

    return get_codec("florence2").box_text(box, width, height)


def make_record(i: int, task: str = "rec", dataset: str = "refcoco", split: str = "train",
                width: int = 48, height: int = 40, image_bytes: bool = True) -> dict:
    """A florence2-rendered record whose image shows one coloured rectangle (its `objects` box)."""
    colour = COLOURS[i % len(COLOURS)]
    x1, y1 = 2 + (i * 5) % 20, 3 + (i * 3) % 15
    box = [float(x1), float(y1), float(x1 + 18), float(y1 + 16)]
    label = f"thing {i}"
    data = jpeg(width, height, colour, box)
    locs = loc_text(box, width, height)
    if task == "rec":
        prompt, target = f"<OPEN_VOCABULARY_DETECTION>{label}", f"{label}{locs}"
    elif task == "count_class":
        prompt, target = f"How many {label} are in the image?", "1"
    elif task == "reg":
        prompt, target = f"<REGION_TO_DESCRIPTION>{locs}", label
    else:
        raise ValueError(task)
    rid = hashlib.sha256(f"{dataset}/{split}/{task}/{i}".encode()).hexdigest()[:20]
    return {
        "id": rid, "dataset": dataset, "split": split, "task": task, "format": "florence2",
        "prompt": prompt, "target": target,
        "image": {"bytes": data if image_bytes else None, "path": None if image_bytes else f"images/{rid}.jpg"},
        "image_id": str(i), "width": width, "height": height, "image_sha256": hashlib.sha256(data).hexdigest(),
        "objects": [{"label": label, "bbox": box, "score": 1.0, "span": []}],
        "caption": label, "meta": json.dumps({"builder": "test"}),
    }


def write_shard(path: str, records: list[dict], row_group_size: int | None = None) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import record_arrow_schema

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


def tiny_model_dir(path: str) -> str:
    from train.tiny import save_random_florence2

    return save_random_florence2(path, "tiny", seed=0)
