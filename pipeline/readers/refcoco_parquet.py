"""RefCOCO rows from Hugging Face style exports, in two layouts:

- ``lmms``   (lmms-lab/RefCOCO): question_id, image {bytes, path}, question, answer (list of expressions),
             bbox [x, y, w, h] pixels, file_name (+ segmentation, iscrowd, ignored). No split column: the split
             comes from ``split=`` or the file name (``data/testA-00000-of-00001.parquet``,
             ``default/val/0000.parquet``).
- ``jxu124`` (jxu124/refcoco): ref_id, ann_id, image_id, split, sentences [{raw, sent, sent_id, tokens}],
             bbox [x1, y1, x2, y2] pixels, image_path, raw_image_info (JSON string: file_name, width, height),
             images read from an images dir. Parquet, JSON (array of rows) or JSON Lines.

Plain Python, no Beam transforms. Each reader yields ref items / read rejects as in `pipeline.readers.refer`.
"""
from __future__ import annotations

import io
import os
import posixpath
import re
from typing import Any, Iterable, Iterator

from groundforge.pipeline.readers.common import (
    ReaderError,
    canonical_image_id,
    id_str,
    image_field,
    loads_json,
    positive_int,
)
from groundforge.pipeline.readers.common import text_of as _text
from groundforge.pipeline.readers.refer import (
    _Reject,
    _str_keys,
    bbox_to_xyxy,
    check_bbox_format,
    check_dataset,
    image_id_from_file_name,
    make_item,
    make_reject,
    required,
    split_sentences,
)
from groundforge.pipeline.readers.tables import (
    BadRow,
    iter_table_rows,
    match_files,
    table_columns,
    table_kind,
)
from groundforge.transforms.paths import PathError, safe_join

LAYOUTS = ("lmms", "jxu124")
LAYOUT_COLUMNS = {
    "lmms": ("question_id", "image", "answer", "bbox"),
    "jxu124": ("ref_id", "sentences", "bbox"),
}
DEFAULT_BBOX_FORMAT = {"lmms": "xywh", "jxu124": "xyxy"}
_READ_COLUMNS = {
    "lmms": ("question_id", "image", "answer", "bbox", "file_name", "image_id", "ann_id", "width", "height"),
    "jxu124": ("ref_id", "ann_id", "image_id", "split", "sentences", "captions", "bbox", "image_path",
               "file_name", "raw_image_info", "width", "height"),
}
_SPLIT_NAMES = {"train": "train", "val": "val", "validation": "validation", "test": "test",
                "testa": "testA", "testb": "testB"}
KINDS = ("parquet", "json", "jsonl")  # table kinds a --parquet input may be


# ---------------------------------------------------------------- layout, split, files

def detect_layout(columns: Iterable[str]) -> str:
    """"lmms" or "jxu124" from a file's column names; ReaderError listing the columns otherwise."""
    cols = set(columns)
    matches = [name for name, need in LAYOUT_COLUMNS.items() if cols.issuperset(need)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(sorted(cols)) or "(none)"
    if matches:
        raise ReaderError(f"columns match both RefCOCO layouts, pass --input-layout lmms|jxu124 (columns: {listed})")
    need = "; ".join(f"{name} needs {', '.join(cols_)}" for name, cols_ in LAYOUT_COLUMNS.items())
    raise ReaderError(f"cannot detect the RefCOCO layout ({need}); columns found: {listed}")


def split_from_path(path: str) -> str | None:
    """The split named by a file (`val-00000-of-00004.parquet`, `testA.jsonl`) or its folder
    (`default/testB/0000.parquet`); None when neither names one."""
    parts = path.replace("\\", "/").split("/")
    base = parts[-1].split(".", 1)[0]
    for token in [re.split(r"[-_]", base)[0], *reversed(parts[:-1])]:
        split = _SPLIT_NAMES.get(token.lower())
        if split is not None:
            return split
    return None


def input_files(pattern: str) -> list[str]:
    """Sorted files matching a glob (local, or remote through Beam's FileSystems); ReaderError when none match."""
    return match_files(pattern, "--parquet", "no input files match")


def file_columns(path: str) -> list[str]:
    """Column names of a Parquet file (its schema) or a JSON/JSONL file (keys of its first row)."""
    table_kind(path, KINDS)
    return table_columns(path)


def detect_file_layout(path: str) -> str:
    return detect_layout(file_columns(path))


# ---------------------------------------------------------------- row functions

def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in display orientation from the image header only (no pixel decode)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def lmms_row_to_item(row: dict, *, dataset: str, split: str, source: str, bbox_format: str | None = None) -> dict:
    """One lmms-lab/RefCOCO row -> ref item (ref_id = question_id), or a read reject."""
    try:
        if not isinstance(row, dict):
            raise _Reject("bad_row", f"row is a {type(row).__name__}, not an object")
        row = _str_keys(row)
        ref_id = required(row, "question_id")
        image_bytes, image_path = image_field(row.get("image"))
        file_name = _text(row.get("file_name")) or image_path
        if image_bytes is None and not file_name:
            raise _Reject("missing_field", "image has neither bytes nor a path, and there is no file_name")
        image_id = canonical_image_id(row.get("image_id")) or (image_id_from_file_name(file_name) if file_name else None)
        if image_id is None:
            raise _Reject("missing_field", "no image_id and no file_name to derive it from")
        bbox = bbox_to_xyxy(row.get("bbox"), bbox_format or DEFAULT_BBOX_FORMAT["lmms"])
        sentences, skipped = split_sentences(row.get("answer"))
        if not sentences:
            raise _Reject("no_sentences", f"question {ref_id} has no usable answer expressions")
        width, height = positive_int(row.get("width")), positive_int(row.get("height"))
        if image_bytes is not None and (width is None or height is None):
            width, height = image_size(image_bytes) or (None, None)
    except _Reject as rej:
        return make_reject(source, rej.reason, rej.detail)
    return make_item(dataset=dataset, split=split, ref_id=ref_id, ann_id=id_str(row.get("ann_id")),
                     image_id=image_id, file_name=None if image_bytes is not None else file_name,
                     image_bytes=image_bytes, width=width, height=height, bbox_xyxy=bbox,
                     sentences=sentences, source=source, skipped_sentences=skipped)


def _image_info(value: Any) -> dict:
    if isinstance(value, (str, bytes)):
        try:
            value = loads_json(value)
        except ValueError:
            return {}
    return _str_keys(value) if isinstance(value, dict) else {}


_ANN_SUFFIX = re.compile(r"^(COCO_[A-Za-z]+\d*_\d+)_\d+(\.\w+)$")


def _pick_file_name(candidates: list[str], images_dir: str | None) -> str | None:
    """The first candidate that exists under a local images dir (also trying its base name, so
    `coco/train2014/X.jpg` works with `--images .../train2014`); without a hit, the first candidate."""
    candidates = [c for c in candidates if c]
    if not candidates:
        return None
    if images_dir and "://" not in images_dir:
        tries = []
        for name in candidates:
            tries += [name, posixpath.basename(name.replace("\\", "/"))]
        for name in tries:
            if _is_file_under(images_dir, name):
                return name
    return candidates[0]


def _is_file_under(root: str, name: str) -> bool:
    try:
        return os.path.isfile(safe_join(root, name))
    except PathError:
        return False


def jxu124_row_to_item(row: dict, *, dataset: str, source: str, split: str | None = None,
                       bbox_format: str | None = None, images_dir: str | None = None) -> dict:
    """One jxu124/refcoco row -> ref item, or a read reject. The row's own `split` wins over `split=`.

    The image file is image_path, else raw_image_info.file_name, else the row's file_name with refer's
    `_<ann_id>` suffix removed (refs' file_name is COCO_train2014_<image>_<ann>.jpg, not a real file)."""
    try:
        if not isinstance(row, dict):
            raise _Reject("bad_row", f"row is a {type(row).__name__}, not an object")
        row = _str_keys(row)
        ref_id = required(row, "ref_id")
        row_split = _text(row.get("split"))
        split = row_split.strip() if row_split and row_split.strip() else split
        if not split:
            raise _Reject("missing_field", "split is missing and no --split was given")
        info = _image_info(row.get("raw_image_info"))
        ref_file = _text(row.get("file_name")) or ""
        candidates = [_text(row.get("image_path")) or "", _text(info.get("file_name")) or "",
                      _ANN_SUFFIX.sub(r"\1\2", ref_file)]
        file_name = _pick_file_name(candidates, images_dir)
        if file_name is None:
            raise _Reject("missing_field", "no image_path, raw_image_info.file_name or file_name")
        image_id = (canonical_image_id(row.get("image_id")) or canonical_image_id(info.get("id"))
                    or image_id_from_file_name(file_name))
        bbox = bbox_to_xyxy(row.get("bbox"), bbox_format or DEFAULT_BBOX_FORMAT["jxu124"])
        sentences, skipped = split_sentences(row.get("sentences"))
        if not sentences:
            sentences, skipped = split_sentences(row.get("captions"))
        if not sentences:
            raise _Reject("no_sentences", f"ref {ref_id} has no usable sentences")
        width = positive_int(info.get("width")) or positive_int(row.get("width"))
        height = positive_int(info.get("height")) or positive_int(row.get("height"))
    except _Reject as rej:
        return make_reject(source, rej.reason, rej.detail)
    return make_item(dataset=dataset, split=split, ref_id=ref_id, ann_id=id_str(row.get("ann_id")),
                     image_id=image_id, file_name=file_name, image_bytes=None, width=width, height=height,
                     bbox_xyxy=bbox, sentences=sentences, source=source, skipped_sentences=skipped)


# ---------------------------------------------------------------- files

def read_refcoco_file(path: str, *, dataset: str, layout: str = "auto", split: str | None = None,
                      bbox_format: str | None = None, images_dir: str | None = None) -> Iterator[dict]:
    """Ref items / read rejects of one Parquet, JSON or JSONL file, in file order.

    layout: "auto" (from the columns), "lmms" or "jxu124". split: the split of an lmms file (default:
    from its name) or the fallback for jxu124 rows without one. bbox_format: override the layout's
    box format ("xywh" for lmms, "xyxy" for jxu124). Raises ReaderError for a bad configuration."""
    check_dataset(dataset)
    check_bbox_format(bbox_format)
    table_kind(path, KINDS)
    if layout == "auto":
        layout = detect_file_layout(path)
    elif layout not in LAYOUTS:
        raise ReaderError(f"unknown input layout {layout!r}: expected auto, {' or '.join(LAYOUTS)}")
    file_split = split or split_from_path(path)
    if layout == "lmms" and not file_split:
        raise ReaderError(f"{path}: cannot tell the split from the file name; pass --split")
    for position, row in enumerate(iter_table_rows(path, _READ_COLUMNS[layout])):
        source = f"{path}#row={position}"
        if isinstance(row, BadRow):
            yield make_reject(source, row.reason, row.detail)
        elif layout == "lmms":
            yield lmms_row_to_item(row, dataset=dataset, split=file_split, source=source, bbox_format=bbox_format)
        else:
            yield jxu124_row_to_item(row, dataset=dataset, source=source, split=file_split,
                                     bbox_format=bbox_format, images_dir=images_dir)


def resolve_inputs(pattern: str, layout: str = "auto", split: str | None = None) -> tuple[list[str], str]:
    """Check a --parquet GLOB before any pipeline runs -> (sorted files, layout).

    Every file must be Parquet/JSON/JSONL; "auto" is resolved from the first file's columns; for the lmms
    layout every file must name its split unless `split` is given. Raises ReaderError otherwise."""
    if layout != "auto" and layout not in LAYOUTS:
        raise ReaderError(f"unknown input layout {layout!r}: expected auto, {' or '.join(LAYOUTS)}")
    files = input_files(pattern)
    for path in files:
        table_kind(path, KINDS)
    if layout == "auto":
        layout = detect_file_layout(files[0])
    if layout == "lmms" and not split:
        unnamed = [p for p in files if split_from_path(p) is None]
        if unnamed:
            raise ReaderError(f"{unnamed[0]}: cannot tell the split from the file name; pass --split")
    return files, layout


def read_refcoco_files(pattern: str, **kwargs) -> Iterator[dict]:
    """`read_refcoco_file` over every file matching a glob, in sorted path order."""
    for path in input_files(pattern):
        yield from read_refcoco_file(path, **kwargs)
