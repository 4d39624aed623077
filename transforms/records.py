"""Stable record keys and the canonical record dict (one Parquet row)."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Iterable

BUILDER_VERSION = "0.1.0"


def record_id(*parts: object) -> str:
    """Stable key from dataset, source ids, task and variant (never Python's salted hash())."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def shard_order(row: dict) -> tuple:
    """Order of records in a data shard: by image (its sha256), then by id, so an image's records are adjacent
    and the shard writer can store its bytes once."""
    return str(row.get("image_sha256") or ""), str(row.get("id") or "")


def bucket(key: str, n: int) -> int:
    """Shard index of a key: the same key always lands in the same shard for the same n."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) % n


def make_object(label: str, bbox: Iterable[float], score: float = 1.0, span: Iterable[int] = ()) -> dict:
    return {"label": label, "bbox": [float(v) for v in bbox], "score": float(score), "span": [int(s) for s in span]}


def dumps_meta(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def make_record(*, id: str, dataset: str, split: str, task: str, image: dict, image_id: str, width: int,
                height: int, image_sha256: str, objects: list, caption: str | None, meta: dict,
                format: str = "", prompt: str = "", target: str = "") -> dict:
    """A record before rendering: `format`, `prompt` and `target` are filled, and `meta` (a dict until then)
    is serialised, by `rendered`."""
    return {
        "id": id, "dataset": dataset, "split": split, "task": task, "format": format, "prompt": prompt,
        "target": target, "image": image, "image_id": str(image_id), "width": int(width), "height": int(height),
        "image_sha256": image_sha256, "objects": objects, "caption": caption, "meta": meta,
    }


def rendered(record: dict, fmt: str, seed: int, options=None) -> dict:
    """The record with prompt/target for `fmt` (frame options: `options`, a templates.FormatOptions);
    the template id goes into meta["template"] and the coordinate frame into meta["frame"] (removed for
    formats without one), so parse_output decodes in the frame the record was rendered in.

    Raises templates.RenderError (ControlTokenError, FormatTextError, ...) when the record cannot be rendered.
    """
    from groundforge.transforms.codecs import get_codec
    from groundforge.transforms.templates import FormatOptions, render_record

    options = options or FormatOptions()
    meta = record["meta"]
    meta = dict(json.loads(meta) if isinstance(meta, str) else meta)
    out = render_record({**record, "meta": meta}, fmt, seed, options)
    meta["template"] = out.template_id
    frame = get_codec(fmt, options).frame(int(record["width"]), int(record["height"]))
    if frame is None:
        meta.pop("frame", None)
    else:
        meta["frame"] = frame
    return {**record, "format": fmt, "prompt": out.prompt, "target": out.target, "meta": dumps_meta(meta)}


_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


def reject(source: str, stage: str, reason: str, detail: str = "") -> dict:
    """A reject row. Run-dependent text (a memory address in an exception message, e.g. PIL's
    `<_io.BytesIO object at 0x7f...>`) is removed, so reruns write the same rejects."""
    return {"source": str(source), "stage": stage, "reason": reason,
            "detail": _ADDRESS.sub("", str(detail))[:2000]}
