"""Record and reject schemas: JSON Schema files are the source of truth; the pyarrow schema is derived.

`x-arrow` in the JSON Schema names the Parquet type where JSON Schema is not precise enough
(int32, float32, binary, the Hugging Face image struct); `x-column-order` fixes column order.
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import pyarrow as pa

RECORD_COLUMNS = (
    "id", "dataset", "split", "task", "format", "prompt", "target", "image", "image_id",
    "width", "height", "image_sha256", "objects", "caption", "meta",
)
TASKS = ("rec", "reg", "grounded_caption", "phrase_grounding", "counting", "count_class", "detection", "vqa")


@functools.lru_cache(maxsize=None)
def load_json_schema(name: str) -> dict:
    """`name` is 'record', 'reject' or 'grit_annotation'."""
    text = resources.files(__package__).joinpath(f"{name}.schema.json").read_text()
    return json.loads(text)


def _arrow_type(prop: dict) -> pa.DataType:
    hint = prop.get("x-arrow")
    if hint == "hf_image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if hint:
        return {"int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(),
                "float64": pa.float64(), "binary": pa.binary()}[hint]
    kinds = prop.get("type")
    if "enum" in prop:
        return pa.string()
    if isinstance(kinds, list):
        kinds = [k for k in kinds if k != "null"][0]
    if kinds == "string":
        return pa.string()
    if kinds == "integer":
        return pa.int64()
    if kinds == "number":
        return pa.float64()
    if kinds == "boolean":
        return pa.bool_()
    if kinds == "array":
        item = _arrow_type(prop["items"])
        if prop.get("minItems") is not None and prop.get("minItems") == prop.get("maxItems"):
            return pa.list_(item, prop["minItems"])
        return pa.list_(item)
    if kinds == "object":
        return pa.struct([pa.field(k, _arrow_type(v), nullable=True) for k, v in _ordered(prop)])
    raise ValueError(f"no arrow type for schema fragment {prop}")


def _ordered(obj_schema: dict):
    props = obj_schema["properties"]
    order = obj_schema.get("x-column-order", list(props))
    return [(k, props[k]) for k in order]


def _hf_feature(prop: dict) -> Any:
    """Hugging Face `datasets` feature dict, in the form both old (2.x) and new (4+) versions read."""
    arrow = _arrow_type(prop)
    if prop.get("x-arrow") == "hf_image":
        return {"_type": "Image"}
    if pa.types.is_list(arrow) or pa.types.is_fixed_size_list(arrow):
        inner = prop["items"]
        if inner.get("type") == "object":
            return [_hf_feature_struct(inner)]
        feat = {"feature": _hf_feature(inner), "_type": "Sequence"}
        if pa.types.is_fixed_size_list(arrow):
            feat["length"] = arrow.list_size
        return feat
    if pa.types.is_struct(arrow):
        return _hf_feature_struct(prop)
    return {"dtype": _hf_dtype(arrow), "_type": "Value"}


def _hf_feature_struct(prop: dict) -> dict:
    return {k: _hf_feature(v) for k, v in _ordered(prop)}


def _hf_dtype(t: pa.DataType) -> str:
    names = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64", pa.float32(): "float32",
             pa.float64(): "float64", pa.binary(): "binary", pa.bool_(): "bool"}
    return names[t]


def arrow_schema_for(name: str) -> pa.Schema:
    """pyarrow schema derived from a JSON Schema file, with `huggingface` feature metadata."""
    js = load_json_schema(name)
    # All fields nullable, as `datasets` writes them: its Features.from_arrow_schema only honours the
    # metadata (e.g. Image decoding) when the field, nullability included, equals its own.
    # Required-ness is enforced by the JSON Schema in `validate`.
    fields = [pa.field(col, _arrow_type(prop)) for col, prop in _ordered(js)]
    features = {col: _hf_feature(prop) for col, prop in _ordered(js)}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return pa.schema(fields, metadata=meta)


@functools.lru_cache(maxsize=None)
def record_arrow_schema() -> pa.Schema:
    return arrow_schema_for("record")


@functools.lru_cache(maxsize=None)
def reject_arrow_schema() -> pa.Schema:
    return arrow_schema_for("reject")


@functools.lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema

    return jsonschema.Draft202012Validator(load_json_schema(name))


def record_errors(record: dict, name: str = "record") -> list[str]:
    """Schema violations of one row (image bytes are checked for type, not content)."""
    row = dict(record)
    img = row.get("image")
    if isinstance(img, dict) and isinstance(img.get("bytes"), (bytes, bytearray)):
        row["image"] = {**img, "bytes": "<bytes>"}
    errors = []
    for err in _validator(name).iter_errors(row):
        where = "/".join(str(p) for p in err.absolute_path) or "<row>"
        errors.append(f"{where}: {err.message[:200]}")
    if name == "record" and not errors:
        errors.extend(_semantic_errors(record))
    return errors


def _semantic_errors(record: dict) -> list[str]:
    out = []
    img = record["image"]
    if not img.get("bytes") and not img.get("path"):
        out.append("image: neither bytes nor path")
    try:
        json.loads(record["meta"])
    except ValueError as exc:
        out.append(f"meta: not JSON ({exc})")
    w, h = record["width"], record["height"]
    for i, obj in enumerate(record["objects"]):
        x1, y1, x2, y2 = obj["bbox"]
        if not (0 <= x1 < x2 <= w + 1e-3 and 0 <= y1 < y2 <= h + 1e-3):
            out.append(f"objects/{i}/bbox: {obj['bbox']} not inside {w}x{h} or empty")
    return out
