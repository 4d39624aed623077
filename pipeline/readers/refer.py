"""RefCOCO / RefCOCO+ / RefCOCOg in the refer layout (github.com/lichengunc/refer), plus the helpers
every RefCOCO reader shares: ref items, read rejects, sentence dedupe, holdout image ids.

    DATA_ROOT/<dataset>/refs(<split_by>).p   pickled list of refs (Python 2, protocol 2)
    DATA_ROOT/<dataset>/instances.json       COCO-style images / annotations / categories

Plain Python, no Beam transforms (remote files open through Beam's FileSystems): every function works
on one file or one row, so the Beam builder can call it from a DoFn. A reader yields one dict per ref:
a *ref item* (see `make_item`) or, for a malformed ref, a *read reject* (see `make_reject`); it never
raises on one bad row. A bad configuration (unknown dataset, missing file, hostile pickle) raises
`ReaderError` at once.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import re
from typing import Any, Iterable, Iterator, NamedTuple

from groundforge.pipeline import fs
from groundforge.pipeline.readers.common import (  # noqa: F401  (re-exported: the refer layout's id helpers)
    ReaderError,
    Rejected,
    canonical_image_id,
    holdout_text,
    id_str,
    loads_json,
    parse_exclude_images,
    positive_int,
    read_exclude_images,
    rejected,
    sort_image_ids,
)
from groundforge.pipeline.readers.common import (
    text_of as _text,
)
from groundforge.transforms.errors import ReasonError

DATASETS = ("refcoco", "refcoco+", "refcocog")
# (dataset -> split_by values that exist in lichengunc/refer)
SPLIT_BY = {"refcoco": ("unc", "google"), "refcoco+": ("unc",), "refcocog": ("google", "umd")}
TRAIN_SPLIT = "train"


class UnsafePickleError(ReaderError):
    """A pickle that references anything but plain containers and scalars."""


class _Reject(ReasonError):
    """Internal: one row is unusable; turned into a read reject by the row function."""


# ---------------------------------------------------------------- items and rejects

def make_item(*, dataset: str, split: str, ref_id: str, ann_id: str | None, image_id: str,
              file_name: str | None, image_bytes: bytes | None, width: int | None, height: int | None,
              bbox_xyxy: list[float], sentences: list[str], source: str, skipped_sentences: int = 0) -> dict:
    """The normalised output of every RefCOCO reader (one per ref, sentences not yet deduplicated);
    `skipped_sentences`: entries of the ref's sentences that were blank or not text (the key is there only
    when some were)."""
    item = {
        "dataset": dataset, "split": split, "ref_id": ref_id, "ann_id": ann_id, "image_id": image_id,
        "file_name": file_name, "image_bytes": image_bytes, "width": width, "height": height,
        "bbox_xyxy": bbox_xyxy, "sentences": sentences, "source": source,
    }
    if skipped_sentences:
        item["skipped_sentences"] = skipped_sentences
    return item


def make_reject(source: str, reason: str, detail: str) -> Rejected:
    return rejected(source, reason, detail)


def is_reject(obj) -> bool:
    return isinstance(obj, Rejected)


# ---------------------------------------------------------------- restricted unpickler

def _empty_bytes(*args):
    # Python 3 pickles b"" at protocol < 3 as `builtins.bytes()`.
    if args:
        raise UnsafePickleError("refusing to unpickle builtins.bytes with arguments: only bytes() is allowed")
    return b""


def _latin1_encode(obj=None, encoding=None, *rest):
    # Python 3 pickles bytes at protocol < 3 as `_codecs.encode(str, "latin1")`.
    if rest or not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("refusing to unpickle _codecs.encode other than (str, 'latin1')")
    return obj.encode("latin1")


class _Admitted:
    """A global the restricted unpickler hands out: a call with checked arguments and no state. BUILD
    (`__setstate__`) and attribute writes are refused, so a pickle cannot alter it for later loads."""

    __slots__ = ("call", "name")

    def __init__(self, name: str, call):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "call", call)

    def __call__(self, *args):
        return self.call(*args)

    def __setattr__(self, attr, value):
        raise UnsafePickleError(f"refusing to set {attr!r} on {self.name}: only plain containers and scalars "
                                "are allowed")

    def __setstate__(self, state):
        raise UnsafePickleError(f"refusing to unpickle state for {self.name}: only plain containers and "
                                "scalars are allowed")


_ALLOWED_GLOBALS = {
    ("builtins", "bytes"): _Admitted("builtins.bytes", _empty_bytes),
    ("__builtin__", "bytes"): _Admitted("__builtin__.bytes", _empty_bytes),
    ("_codecs", "encode"): _Admitted("_codecs.encode", _latin1_encode),
}
_PLAIN_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})
_PLAIN_CONTAINERS = frozenset({list, tuple, set, frozenset, bytearray})


class _RestrictedUnpickler(pickle.Unpickler):
    """Every GLOBAL / STACK_GLOBAL / INST / EXT opcode goes through find_class, so refusing there means
    no class or function other than the byte-string helpers above ever reaches REDUCE/OBJ/BUILD."""

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: only plain containers and scalars are allowed")
        return allowed

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refusing to unpickle persistent id {pid!r}: only plain containers and scalars are allowed")


def check_plain(obj: Any) -> None:
    """Raise UnsafePickleError unless `obj` is built of plain containers and scalars only. Opcodes alone
    can still leave a non-plain value: an admitted helper pushed but never called, or a memoryview
    (protocol 5 READONLY_BUFFER). Shared containers are visited once, so cycles and DAGs stay linear."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind in _PLAIN_SCALARS:
            continue
        if kind is not dict and kind not in _PLAIN_CONTAINERS:
            what = value.name if kind is _Admitted else f"a {kind.__module__}.{kind.__qualname__}"
            raise UnsafePickleError(f"refusing to unpickle {what} as a value: only plain containers and "
                                    "scalars are allowed")
        if id(value) in seen:
            continue
        seen.add(id(value))
        if kind is dict:
            stack.extend(value.keys())
            stack.extend(value.values())
        elif kind is not bytearray:
            stack.extend(value)


def safe_load_pickle(path_or_file: Any) -> Any:
    """Load a pickle of dicts, lists, tuples, sets, str, bytes, int, float, bool and None only.

    Anything else raises UnsafePickleError (one line, names the class) before it is called, or, for a
    value that needs no call, before it is returned. Python 2 `str` objects (refer's refs(*).p) decode
    as UTF-8, falling back to latin-1 when they are not valid UTF-8. Corrupt data raises ReaderError.
    """
    if hasattr(path_or_file, "read"):
        data, name = path_or_file.read(), getattr(path_or_file, "name", "<pickle data>")
    else:
        name = str(path_or_file)
        with fs.open_read(name) as f:
            data = f.read()
    try:
        try:
            obj = _RestrictedUnpickler(io.BytesIO(data), encoding="utf-8").load()
        except UnicodeDecodeError:
            obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
        check_plain(obj)
        return obj
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{name}: {exc}") from None
    except Exception as exc:  # pickle raises many types for corrupt input
        raise ReaderError(f"{name}: not a readable pickle ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------- value helpers

def _str_keys(d: dict) -> dict:
    """Dict keys that a pickle loaded as bytes become str."""
    return {(_text(k) if isinstance(k, bytes) else k): v for k, v in d.items()}


def bbox_to_xyxy(value: Any, fmt: str) -> list[float]:
    """4 finite numbers in `fmt` ("xywh" or "xyxy") -> xyxy floats. Raises _Reject("bad_bbox")."""
    if isinstance(value, (str, bytes)):
        try:
            value = loads_json(value)
        except ValueError:
            raise _Reject("bad_bbox", f"not a list of 4 numbers: {value!r}") from None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise _Reject("bad_bbox", f"not a list of 4 numbers: {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise _Reject("bad_bbox", f"not a list of 4 numbers: {value!r}")
    vals = [float(v) for v in value]
    if any(math.isnan(v) or math.isinf(v) for v in vals):
        raise _Reject("bad_bbox", f"non-finite value in {vals}")
    if fmt == "xywh":
        x, y, w, h = vals
        return [x, y, x + w, y + h]
    return vals


def check_bbox_format(fmt: str | None) -> None:
    if fmt not in (None, "xywh", "xyxy"):
        raise ReaderError(f"--bbox-format must be xywh or xyxy, got {fmt!r}")


def check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ReaderError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")


def sentence_texts(value: Any) -> list[str]:
    return split_sentences(value)[0]


def split_sentences(value: Any) -> tuple[list[str], int]:
    """Expressions from a sentences field: refer dicts ({raw, sent, ...}: `raw`, else `sent`) or plain
    strings, and how many entries were skipped as blank or not text (counted by the builder, never lost
    silently). The raw form is kept as is."""
    if isinstance(value, (str, bytes)):
        text = _text(value)
        if text is not None and text.lstrip().startswith("["):
            try:
                value = loads_json(text)
            except ValueError:
                value = [text]
        else:
            value = [text]
    if not isinstance(value, (list, tuple)):
        return [], 0
    out, skipped = [], 0
    for sent in value:
        if isinstance(sent, dict):
            sent = _str_keys(sent)
            text = _text(sent.get("raw"))
            if text is None or not text.strip():
                text = _text(sent.get("sent"))
        else:
            text = _text(sent)
        if text is not None and text.strip():
            out.append(text)
        else:
            skipped += 1
    return out, skipped


def required(row: dict, key: str, convert=id_str):
    value = convert(row.get(key))
    if value is None:
        raise _Reject("missing_field", f"{key} is missing or empty (got {row.get(key)!r})")
    return value


# ---------------------------------------------------------------- sentence dedupe and holdout

def normalize_sentence(text: str) -> str:
    return " ".join(text.split()).casefold()


def dedupe_sentences(sentences: Iterable[str]) -> tuple[list[str], int]:
    """Drop sentences equal after case folding and whitespace collapsing; keep the first raw form, in
    order. Blank sentences are dropped too. Returns (kept, number dropped)."""
    seen: set[str] = set()
    kept: list[str] = []
    dropped = 0
    for text in sentences:
        key = normalize_sentence(text)
        if not key or key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(text)
    return kept, dropped


def is_holdout(item: dict) -> bool:
    """A ref item in an evaluation split (anything but `train`)."""
    return not is_reject(item) and item["split"] != TRAIN_SPLIT


def holdout_image_ids(items: Iterable[dict]) -> list[str]:
    """Sorted unique image ids of every item whose split is not `train` (val, testA, testB, test, ...).
    Rejects are ignored. Numeric ids sort numerically."""
    return sort_image_ids(item["image_id"] for item in items if is_holdout(item))


# ---------------------------------------------------------------- refer layout

class ReferIndex(NamedTuple):
    images: dict[str, tuple[str | None, int | None, int | None]]   # image id -> (file_name, width, height)
    annotations: dict[str, tuple[str | None, Any]]                 # ann id -> (image id, raw bbox)
    rejects: tuple = ()                                            # Rejected: repeated image / annotation ids


def refer_paths(refer_dir: str, dataset: str, split_by: str) -> tuple[str, str]:
    """(refs pickle, instances.json) for a valid (dataset, split_by); ReaderError otherwise."""
    check_dataset(dataset)
    if split_by not in SPLIT_BY[dataset]:
        valid = "; ".join(f"{d}: {'|'.join(s)}" for d, s in SPLIT_BY.items())
        raise ReaderError(f"{dataset} has no split_by {split_by!r} (refer provides {valid})")
    base = os.path.join(str(refer_dir), dataset)
    refs_path = os.path.join(base, f"refs({split_by}).p")
    instances_path = os.path.join(base, "instances.json")
    for path in (refs_path, instances_path):
        found = fs.exists(path) if "://" in path else os.path.isfile(path)
        if not found:
            raise ReaderError(f"refer file not found: {path}")
    return refs_path, instances_path


def load_instances(path: str) -> ReferIndex:
    """Index instances.json by image id and annotation id (string ids, canonical for images)."""
    try:
        with fs.open_read(str(path)) as f:
            data = loads_json(f.read())
    except ValueError as exc:
        raise ReaderError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ReaderError(f"{path}: expected a COCO instances file with 'images' and 'annotations' lists")
    images, rejects = {}, []
    for img in data["images"]:
        image_id = canonical_image_id(img.get("id")) if isinstance(img, dict) else None
        if image_id in images:  # the first entry in file order stays, whatever the runner
            rejects.append(rejected(f"{path}#image:{image_id}", "duplicate_image_id",
                                    f"image id {image_id} appears more than once; the first entry is used"))
        elif image_id is not None:
            images[image_id] = (_text(img.get("file_name")), positive_int(img.get("width")),
                                positive_int(img.get("height")))
    annotations = {}
    for ann in data["annotations"]:
        ann_id = id_str(ann.get("id")) if isinstance(ann, dict) else None
        if ann_id in annotations:
            rejects.append(rejected(f"{path}#annotation:{ann_id}", "duplicate_annotation_id",
                                    f"annotation id {ann_id} appears more than once; the first entry is used"))
        elif ann_id is not None:
            annotations[ann_id] = (canonical_image_id(ann.get("image_id")), ann.get("bbox"))
    return ReferIndex(images, annotations, tuple(rejects))


def load_refs(path: str) -> list:
    refs = safe_load_pickle(path)
    if not isinstance(refs, list):
        raise ReaderError(f"{path}: expected a pickled list of refs, got {type(refs).__name__}")
    return refs


def ref_source(refs_path: str, ref: Any, position: int) -> str:
    ref_id = id_str(_str_keys(ref).get("ref_id")) if isinstance(ref, dict) else None
    return f"{refs_path}#ref_id={ref_id}" if ref_id is not None else f"{refs_path}#index={position}"


def ref_to_item(ref: Any, index: ReferIndex, *, dataset: str, source: str) -> dict:
    """One refer ref -> ref item, or a read reject. Box and image file name come from instances.json
    (refs' own file_name is the annotation-suffixed COCO_train2014_<image>_<ann>.jpg)."""
    try:
        if not isinstance(ref, dict):
            raise _Reject("bad_row", f"ref is a {type(ref).__name__}, not a dict")
        ref = _str_keys(ref)
        ref_id = required(ref, "ref_id")
        split = required(ref, "split", _text_or_none)
        ann_id = required(ref, "ann_id")
        if ann_id not in index.annotations:
            raise _Reject("unknown_annotation", f"ann_id {ann_id} not in instances.json")
        ann_image_id, raw_bbox = index.annotations[ann_id]
        image_id = canonical_image_id(ref.get("image_id")) or ann_image_id
        if image_id is None:
            raise _Reject("missing_field", "image_id is missing in the ref and its annotation")
        if ann_image_id is not None and ann_image_id != image_id:
            raise _Reject("annotation_image_mismatch",
                          f"ref image_id {image_id} but annotation {ann_id} is on image {ann_image_id}")
        if image_id not in index.images:
            raise _Reject("unknown_image", f"image_id {image_id} not in instances.json")
        file_name, width, height = index.images[image_id]
        if not file_name:
            raise _Reject("missing_field", f"image {image_id} has no file_name in instances.json")
        bbox = bbox_to_xyxy(raw_bbox, "xywh")
        sentences, skipped = split_sentences(ref.get("sentences"))
        if not sentences:
            raise _Reject("no_sentences", f"ref {ref_id} has no usable sentences")
    except _Reject as rej:
        return make_reject(source, rej.reason, rej.detail)
    return make_item(dataset=dataset, split=split, ref_id=ref_id, ann_id=ann_id, image_id=image_id,
                     file_name=file_name, image_bytes=None, width=width, height=height, bbox_xyxy=bbox,
                     sentences=sentences, source=source, skipped_sentences=skipped)


def _text_or_none(value: Any) -> str | None:
    text = _text(value)
    return text.strip() if text is not None and text.strip() else None


def read_refer_files(refs_path: str, instances_path: str, dataset: str) -> Iterator[dict]:
    """All refs of one refs pickle as ref items / read rejects, in file order. ReaderError (on the first
    item) for an unreadable or hostile pickle or an unusable instances.json."""
    refs = load_refs(refs_path)
    index = load_instances(instances_path)
    yield from index.rejects
    for position, ref in enumerate(refs):
        yield ref_to_item(ref, index, dataset=dataset, source=ref_source(refs_path, ref, position))


def read_refer(refer_dir: str, dataset: str, split_by: str) -> Iterator[dict]:
    """All refs of DATA_ROOT/<dataset>/refs(<split_by>).p as ref items / read rejects, in file order."""
    return read_refer_files(*refer_paths(refer_dir, dataset, split_by), dataset)


_COCO_NAME = re.compile(r"COCO_[A-Za-z]+\d*_0*(\d+)(?:\.\w+)?$")


def image_id_from_file_name(file_name: str) -> str | None:
    """COCO_train2014_000000581857.jpg -> "581857"; 000000581857.jpg -> "581857"; else the stem."""
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    match = _COCO_NAME.search(base)
    if match:
        return match.group(1)
    stem = base.rsplit(".", 1)[0] if "." in base else base
    return canonical_image_id(stem)
