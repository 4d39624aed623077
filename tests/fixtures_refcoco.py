"""Small RefCOCO fixtures with the real field names of the three layouts:

- refer (lichengunc/refer): DATA_ROOT/refcoco/refs(unc).p written as Python 2 would (protocol 2, `str`
  as byte strings) + instances.json, images in images/train2014/
- lmms-lab/RefCOCO parquet with embedded image bytes
- jxu124/refcoco parquet, JSON and JSONL
"""
from __future__ import annotations

import io
import json
import os
import struct

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

# image id -> (file name, width, height)
IMAGES = {
    581857: ("COCO_train2014_000000581857.jpg", 8, 6),
    100: ("COCO_train2014_000000000100.jpg", 10, 8),
    200: ("COCO_train2014_000000000200.jpg", 6, 10),
}


def jpeg_bytes(width: int, height: int, color=(200, 30, 30), orientation: int | None = None) -> bytes:
    img = Image.new("RGB", (width, height), color)
    buf = io.BytesIO()
    if orientation is None:
        img.save(buf, format="JPEG", quality=90)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def write_images(images_dir: str) -> None:
    os.makedirs(images_dir, exist_ok=True)
    for name, w, h in IMAGES.values():
        with open(os.path.join(images_dir, name), "wb") as f:
            f.write(jpeg_bytes(w, h))


# ---------------------------------------------------------------- Python 2 style pickle

def py2_pickle(obj) -> bytes:
    """Protocol 2 the way Python 2's cPickle writes plain data: `str` values become Python 2 byte strings
    (SHORT_BINSTRING / BINSTRING, UTF-8 encoded); `bytes` are written as byte strings unchanged."""
    out = bytearray(b"\x80\x02")
    _py2(obj, out)
    out += b"."
    return bytes(out)


def _py2(obj, out: bytearray) -> None:
    if obj is None:
        out += b"N"
    elif obj is True:
        out += b"\x88"
    elif obj is False:
        out += b"\x89"
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out += b"K" + bytes([obj])
        elif -2**31 <= obj < 2**31:
            out += b"J" + struct.pack("<i", obj)
        else:
            raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            out += b"\x8a" + bytes([len(raw)]) + raw
    elif isinstance(obj, float):
        out += b"G" + struct.pack(">d", obj)
    elif isinstance(obj, (str, bytes)):
        raw = obj.encode("utf-8") if isinstance(obj, str) else obj
        if len(raw) < 256:
            out += b"U" + bytes([len(raw)]) + raw
        else:
            out += b"T" + struct.pack("<i", len(raw)) + raw
    elif isinstance(obj, list):
        out += b"](" if obj else b"]"
        for item in obj:
            _py2(item, out)
        if obj:
            out += b"e"
    elif isinstance(obj, tuple):
        out += b"("
        for item in obj:
            _py2(item, out)
        out += b"t"
    elif isinstance(obj, dict):
        out += b"}(" if obj else b"}"
        for key, value in obj.items():
            _py2(key, out)
            _py2(value, out)
        if obj:
            out += b"u"
    else:
        raise TypeError(type(obj))


# ---------------------------------------------------------------- refer layout

def _sent(sent_id: int, raw: str, sent: str | None = None) -> dict:
    sent = raw.lower().strip() if sent is None else sent
    return {"tokens": sent.split(), "raw": raw, "sent_id": sent_id, "sent": sent}


def _ref(ref_id, ann_id, image_id, split, sentences, category_id=1) -> dict:
    return {
        "sent_ids": [s["sent_id"] for s in sentences],
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
        "ann_id": ann_id, "ref_id": ref_id, "image_id": image_id, "split": split,
        "sentences": sentences, "category_id": category_id,
    }


def refer_refs() -> list[dict]:
    """Four good refs (2 train, 1 val, 1 testB) then five malformed ones."""
    refs = [
        _ref(0, 1001, 581857, "train", [_sent(0, "man on the left"), _sent(1, "Man on the  LEFT "),
                                        _sent(2, "woman in a café")]),
        _ref(1, 1002, 581857, "train", [_sent(3, "right guy")]),
        _ref(2, 2001, 100, "val", [_sent(4, "the whole thing"), _sent(5, "THE WHOLE THING")]),
        _ref(3, 3001, 200, "testB", [_sent(6, "", "small dog")]),
        _ref(4, 9001, 200, "testB", [_sent(7, "bad box")]),        # bad_bbox
        _ref(5, 7777, 581857, "train", [_sent(8, "no such ann")]),  # unknown_annotation
        _ref(6, 5001, 555, "val", [_sent(9, "no such image")]),    # unknown_image
        _ref(7, 1001, 581857, "train", [_sent(10, "   ")]),          # no_sentences
        _ref(8, 1002, 581857, "train", [_sent(11, "no split")]),    # missing_field
    ]
    del refs[8]["split"]
    return refs


def refer_instances() -> dict:
    def ann(ann_id, image_id, bbox):
        return {"id": ann_id, "image_id": image_id, "bbox": bbox, "category_id": 1, "area": 1.0,
                "iscrowd": 0, "segmentation": [[0, 0, 1, 0, 1, 1]]}

    return {
        "images": [{"id": i, "file_name": n, "width": w, "height": h, "license": 1, "coco_url": "",
                    "flickr_url": "", "date_captured": ""} for i, (n, w, h) in IMAGES.items()],
        "annotations": [ann(1001, 581857, [1, 1, 3, 2]), ann(1002, 581857, [4.5, 0, 3.5, 6]),
                        ann(2001, 100, [0, 0, 10, 8]), ann(3001, 200, [2, 3, 2, 5]),
                        ann(9001, 200, [1, 2, 3]), ann(5001, 555, [0, 0, 1, 1])],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }


def write_refer(root: str, refs_bytes: bytes | None = None) -> tuple[str, str]:
    """Write DATA_ROOT and images; returns (refer_dir, images_dir)."""
    refer_dir = os.path.join(root, "refer")
    base = os.path.join(refer_dir, "refcoco")
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "refs(unc).p"), "wb") as f:
        f.write(py2_pickle(refer_refs()) if refs_bytes is None else refs_bytes)
    with open(os.path.join(base, "instances.json"), "w") as f:
        json.dump(refer_instances(), f)
    images_dir = os.path.join(root, "images", "train2014")
    write_images(images_dir)
    return refer_dir, images_dir


# ---------------------------------------------------------------- lmms-lab/RefCOCO parquet

LMMS_SCHEMA = pa.schema([
    ("question_id", pa.string()),
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("question", pa.string()),
    ("answer", pa.list_(pa.string())),
    ("segmentation", pa.list_(pa.float32())),
    ("bbox", pa.list_(pa.float32())),
    ("iscrowd", pa.int8()),
    ("file_name", pa.string()),
])
LMMS_QUESTION = "Please carefully observe the area circled in the image and come up with a caption for the area."


def lmms_rows() -> list[dict]:
    def row(qid, image, answer, bbox, file_name):
        return {"question_id": qid, "image": image, "question": LMMS_QUESTION, "answer": answer,
                "segmentation": [1.0, 1.0, 4.0, 1.0, 4.0, 3.0], "bbox": bbox, "iscrowd": 0, "file_name": file_name}

    return [
        row("0", {"bytes": jpeg_bytes(10, 8), "path": None}, ["left man", "Left  Man", "tall one"],
            [1.5, 1.0, 3.0, 2.5], "COCO_train2014_000000000100.jpg"),
        row("1", {"bytes": jpeg_bytes(8, 6, orientation=6), "path": None}, ["rotated"],
            [0.0, 0.0, 2.0, 2.0], "COCO_train2014_000000000200.jpg"),
        row("2", {"bytes": None, "path": "COCO_train2014_000000581857.jpg"}, ["by path"],
            [1.0, 1.0, 1.0, 1.0], None),
        row("3", {"bytes": jpeg_bytes(10, 8), "path": None}, [], [1.0, 1.0, 1.0, 1.0],
            "COCO_train2014_000000000100.jpg"),                     # no_sentences
        row("4", {"bytes": jpeg_bytes(10, 8), "path": None}, ["short box"], [1.0, 2.0],
            "COCO_train2014_000000000100.jpg"),                     # bad_bbox
        row("5", {"bytes": None, "path": None}, ["no image"], [1.0, 1.0, 1.0, 1.0], None),  # missing_field
    ]


def write_lmms_parquet(path: str, rows: list[dict] | None = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(lmms_rows() if rows is None else rows, schema=LMMS_SCHEMA), path)
    return path


# ---------------------------------------------------------------- jxu124/refcoco

JXU124_SCHEMA = pa.schema([
    ("sent_ids", pa.list_(pa.int64())),
    ("file_name", pa.string()),
    ("ann_id", pa.int64()),
    ("ref_id", pa.int64()),
    ("image_id", pa.int64()),
    ("split", pa.string()),
    ("sentences", pa.list_(pa.struct([("raw", pa.string()), ("sent", pa.string()), ("sent_id", pa.int64()),
                                      ("tokens", pa.list_(pa.string()))]))),
    ("category_id", pa.int64()),
    ("raw_anns", pa.string()),
    ("raw_image_info", pa.string()),
    ("raw_sentences", pa.string()),
    ("image_path", pa.string()),
    ("bbox", pa.list_(pa.float64())),
    ("captions", pa.list_(pa.string())),
    ("global_image_id", pa.string()),
    ("anns_id", pa.string()),
])


def jxu124_rows() -> list[dict]:
    def row(ref_id, ann_id, image_id, split, sentences, bbox, info=True):
        name, w, h = IMAGES.get(image_id, (f"COCO_train2014_{image_id:012d}.jpg", 5, 5))
        image_info = {"license": 1, "file_name": name, "coco_url": "", "height": h, "width": w,
                      "date_captured": "", "flickr_url": "", "id": image_id}
        return {
            "sent_ids": [s["sent_id"] for s in sentences],
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "ann_id": ann_id, "ref_id": ref_id, "image_id": image_id, "split": split, "sentences": sentences,
            "category_id": 1, "raw_anns": json.dumps({"id": ann_id, "image_id": image_id}),
            "raw_image_info": json.dumps(image_info) if info else None,
            "raw_sentences": json.dumps(sentences),
            "image_path": f"coco/train2014/{name}" if info else None,
            "bbox": bbox, "captions": [s["raw"] for s in sentences],
            "global_image_id": f"coco.{image_id}", "anns_id": str(ann_id),
        }

    return [
        row(10, 1001, 581857, "train", [_sent(0, "man on the left"), _sent(1, "MAN on the left")], [1.0, 1.0, 4.0, 3.0]),
        row(11, 2001, 100, "val", [_sent(2, "the whole thing")], [0.0, 0.0, 10.0, 8.0]),
        row(12, 3001, 200, "testA", [_sent(3, "small dog")], [2.0, 3.0, 4.0, 8.0], info=False),
        row(13, 3002, 200, "testB", [_sent(4, "nan box")], [float("nan"), 0.0, 1.0, 1.0]),  # bad_bbox
        row(14, 3003, 200, "", [_sent(5, "no split")], [0.0, 0.0, 1.0, 1.0]),  # missing_field (no --split)
        row(15, 3004, 200, "testB", [], [0.0, 0.0, 1.0, 1.0]),                 # no_sentences
    ]


def write_jxu124_parquet(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(jxu124_rows(), schema=JXU124_SCHEMA), path)
    return path


def _json_safe(row: dict) -> dict:
    # JSON has no NaN: a string box is as malformed in JSON as a NaN box in Parquet.
    return {**row, "bbox": "nan" if any(v != v for v in row["bbox"]) else row["bbox"]}


def write_jxu124_jsonl(path: str, extra_lines: list[str] = ()) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for row in jxu124_rows():
            f.write(json.dumps(_json_safe(row)) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


def write_jxu124_json(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump([_json_safe(r) for r in jxu124_rows()], f, indent=1)
    return path
