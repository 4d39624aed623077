"""`groundforge validate`: check an output against its contract; every problem is one FAIL line.

Checked: dataset_info.json's shape (pipeline/shards.py), files that are missing, unlisted, corrupt or outside
OUT, sha256, the record schema, row counts, unique sorted keys, image hashes, and control tokens in the text.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
from collections import Counter
from functools import lru_cache

import click
from groundforge.pipeline import fs
from groundforge.pipeline.command import HELP
from groundforge.pipeline.shards import InfoError, listed_path, load_info
from groundforge.schemas import record_arrow_schema, record_errors, reject_arrow_schema
from groundforge.transforms.codecs import FORMATS, find_special_tokens, get_codec
from groundforge.transforms.paths import PathError
from groundforge.transforms.records import shard_order

MAX_LISTED = 50


def validate_output(out_dir: str) -> list[str]:
    """Every problem found, one line each (the first MAX_LISTED + 1 per file at most)."""
    try:
        info = load_info(out_dir)
    except FileNotFoundError as err:
        return [str(err)]
    except InfoError as err:
        return err.problems
    problems: list[str] = []
    tables = info.get("tables", {})  # extra tables such as grit's annotations/
    table_files = [f for table in tables.values() for f in table["files"]]
    listed = {s["file"] for s in info["shards"] + info["rejects"]["files"] + table_files}
    for sub in ("data", "rejects", *tables):
        for path in fs.match(fs.join(out_dir, sub, "*")):
            rel = f"{sub}/{os.path.basename(path)}"
            if rel not in listed:
                problems.append(f"{rel}: not listed in dataset_info.json")
    seen_ids: set[str] = set()
    for shard in info["shards"]:
        problems += _check_file(out_dir, shard, record_arrow_schema(), shard["split"], seen_ids)
    for shard in info["rejects"]["files"]:
        problems += _check_file(out_dir, shard, reject_arrow_schema(), None, None)
    for shard in table_files:
        problems += _check_file(out_dir, shard, None, None, None)
    total = sum(s["rows"] for s in info["shards"])
    if total != info["rows"]:
        problems.append(f"dataset_info.json: rows {info['rows']} != sum of shard rows {total}")
    return problems


def _one_line(exc: Exception) -> str:
    return re.sub(r"\s+", " ", f"{type(exc).__name__}: {exc}")[:300]


def _check_file(out_dir, shard, schema, split, seen_ids) -> list[str]:
    import pyarrow.parquet as pq

    name = shard["file"]
    try:
        path = listed_path(out_dir, name)
    except PathError as err:
        return [f"{name}: {err.reason} (not read)"]
    if not fs.exists(path):
        return [f"{name}: missing"]
    try:
        data = fs.read_bytes(path)
    except OSError as exc:
        return [f"{name}: cannot be read ({_one_line(exc)})"]
    problems = []
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        problems.append(f"{name}: sha256 differs from dataset_info.json")
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for a damaged footer
        return problems + [f"{name}: not a Parquet file ({_one_line(exc)})"]
    same_schema = schema is None or pf.schema_arrow.equals(schema, check_metadata=False)
    if not same_schema:
        problems.append(f"{name}: schema differs from the record schema")
    if pf.metadata.num_rows != shard["rows"]:
        problems.append(f"{name}: {pf.metadata.num_rows} rows, dataset_info.json says {shard['rows']}")
    try:
        if split is not None and same_schema:
            problems += _check_rows(name, pf, split, seen_ids)
        else:
            for g in range(pf.num_row_groups):  # decode every page: corrupt data is found here
                pf.read_row_group(g)
    except Exception as exc:  # damaged pages: bad compressed data, bad encodings, ...
        problems.append(f"{name}: corrupt Parquet data ({_one_line(exc)})")
    return problems


def _check_rows(name, pf, split, seen_ids) -> list[str]:
    problems, last = [], None
    for g in range(pf.num_row_groups):
        for row in pf.read_row_group(g).to_pylist():
            where = f"{name}: row {row.get('id')}"
            errors = record_errors(row)
            problems += [f"{where}: {e}" for e in errors]
            if row["split"] != split:
                problems.append(f"{where}: split {row['split']!r} in a {split!r} shard")
            if row["id"] in seen_ids:
                problems.append(f"{where}: duplicate id")
            seen_ids.add(row["id"])
            order = shard_order(row)
            if last is not None and order <= last:
                problems.append(f"{where}: rows not sorted by image, then id")
            last = order
            blob = (row.get("image") or {}).get("bytes")
            if blob is not None and hashlib.sha256(blob).hexdigest() != row["image_sha256"]:
                problems.append(f"{where}: image_sha256 does not match the image bytes")
            if not errors:
                problems += [f"{where}: {p}" for p in text_problems(row)]
            if len(problems) > MAX_LISTED:
                return problems
    return problems


# ---------------------------------------------------------------------------------------------------------
# control tokens

_BOX_IN_TARGET = {"rec", "phrase_grounding", "grounded_caption", "detection"}
_SAMPLE_BOXES = [[1.0, 2.0, 30.0, 40.0], [50.0, 52.0, 90.0, 99.0]]


def _shape(token: str) -> str:
    return re.sub(r"\d+", "0", token)


@lru_cache(maxsize=None)
def box_token_shapes(fmt: str) -> frozenset:
    """Shapes (digits as 0) of the control tokens the format's codec writes for boxes, taken from the codec
    itself so the check follows the codecs."""
    codec = get_codec(fmt)
    texts = [codec.box_text(_SAMPLE_BOXES[0], 100, 100), codec.boxes_text(_SAMPLE_BOXES, 100, 100),
             codec.phrase_text("a", _SAMPLE_BOXES, 100, 100),
             codec.objects_text([("a", _SAMPLE_BOXES[0]), ("b", _SAMPLE_BOXES[1])], 100, 100)]
    return frozenset(_shape(t) for text in texts for t in find_special_tokens(text))


@lru_cache(maxsize=None)
def reg_target_has_boxes(fmt: str) -> bool:
    """Whether the format's `reg` answer carries the region's box (Florence-2 answers `text<loc_..>x4`)."""
    return bool(find_special_tokens(get_codec(fmt).region_text("a", _SAMPLE_BOXES[:1], 100, 100)))


@lru_cache(maxsize=4096)
def _template_tokens(task: str, fmt: str, template_id) -> Counter | None:
    """Control tokens a prompt template writes itself (e.g. `<OD>`, `<grounding>`); None for an unknown
    task/format. An unknown template id allows what any template of the task and format writes."""
    from groundforge.transforms.templates import REGISTRY

    group = REGISTRY.get((task, fmt))
    if group is None:
        return None
    chosen = [t for t in group if t.id == template_id] or list(group)
    allowed: Counter = Counter()
    for t in chosen:
        allowed |= Counter(_shape(tok) for tok in find_special_tokens(t.prompt))
    return allowed


def text_problems(row: dict) -> list[str]:
    """Control tokens where the data cannot have put them: any in caption, object labels and meta.class(es);
    in prompt/target, any the record's template and format's box markup do not write."""
    problems = []
    try:
        meta = json.loads(row.get("meta") or "{}")
    except ValueError:
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    fields = [("caption", row.get("caption"))]
    fields += [(f"objects/{i}/label", o.get("label")) for i, o in enumerate(row.get("objects") or [])]
    if isinstance(meta.get("class"), str):
        fields.append(("meta.class", meta["class"]))
    if isinstance(meta.get("classes"), list):
        fields += [(f"meta.classes/{i}", c) for i, c in enumerate(meta["classes"]) if isinstance(c, str)]
    for field, text in fields:
        tokens = find_special_tokens(text or "")
        if tokens:
            problems.append(f"{field}: control tokens {', '.join(dict.fromkeys(tokens))}")
    task, fmt = row.get("task"), row.get("format")
    template_id = meta.get("template") if isinstance(meta.get("template"), str) else None
    template = _template_tokens(task, fmt, template_id) if fmt in FORMATS and isinstance(task, str) else None
    if template is None:
        return problems
    boxes = box_token_shapes(fmt)
    boxed_target = task in _BOX_IN_TARGET or (task == "reg" and reg_target_has_boxes(fmt))
    for field, own, box_ok in (("prompt", template, task == "reg"), ("target", Counter(), boxed_target)):
        found = find_special_tokens(row.get(field) or "")
        extra = Counter(_shape(t) for t in found) - own
        bad = [t for t in found if _shape(t) in extra and not (box_ok and _shape(t) in boxes)]
        if bad:
            problems.append(f"{field}: control tokens {', '.join(dict.fromkeys(bad))} that neither its template "
                            f"nor the {fmt} box markup writes")
    return problems


@click.command("validate", context_settings=HELP)
@click.argument("out_dir", metavar="DATASET")
def validate_cmd(out_dir):
    """Check every shard of DATASET (a groundforge output) against the schema and dataset_info.json; exit 1
    listing each problem."""
    try:
        problems = validate_output(out_dir)
        info = None if problems else load_info(out_dir)
    except Exception as exc:  # a checker never ends in a traceback: anything unexpected is a failure too
        problems = [f"validation stopped: {_one_line(exc)}"]
    if problems:
        for p in problems[:MAX_LISTED]:
            click.echo(f"FAIL {p}", err=True)
        if len(problems) > MAX_LISTED:
            click.echo(f"... and {len(problems) - MAX_LISTED} more", err=True)
        sys.exit(1)
    click.echo(f"ok: {info['rows']} records in {len(info['shards'])} shards, {info['rejects']['rows']} rejects")
