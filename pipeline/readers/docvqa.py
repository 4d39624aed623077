"""DocVQA questions, in the two layouts people have:

- ``json``: the original release (rrc.cvc.uab.es/?ch=17, docvqa.org): one file per split, e.g. train_v1.0.json =
  {"dataset_name", "dataset_split", "dataset_version", "data": [{"questionId", "question", "question_types",
  "image": "documents/xxx.png", "docId", "ucsf_document_id", "ucsf_document_page_no", "answers", "data_split"}]},
  images in a folder beside it (`image` is relative to the folder of the JSON file, or to --images).
- ``hf``: Hugging Face Parquet exports with the same field names and the image embedded as {bytes, path}:
  lmms-lab/DocVQA (questionId string, data_split column) and HuggingFaceM4/DocumentVQA (questionId int32, no
  data_split: the split comes from the file name, `data/validation-00000-of-00008.parquet`).

Plain Python, no Beam. Readers yield question items or `Rejected` (readers/common.py). The image itself is
read and checked later, once per image, by the builder.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterator
from typing import Any

from groundforge.pipeline import fs
from groundforge.pipeline.config import SPLIT_NAME
from groundforge.pipeline.readers.common import (
    ReaderError,
    Rejected,
    canonical_image_id,
    id_str,
    image_field,
    rejected,
    text_of,
)
from groundforge.pipeline.readers.refcoco_parquet import split_from_path
from groundforge.pipeline.readers.tables import (
    BadRow,
    iter_table_rows,
    match_files,
    table_columns,
    table_kind,
)

LAYOUTS = ("json", "hf")
HF_COLUMNS = ("questionId", "question", "question_types", "image", "docId", "ucsf_document_id",
              "ucsf_document_page_no", "answers", "data_split")
HF_REQUIRED = ("questionId", "question", "image")


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail


# ---------------------------------------------------------------- files (driver side)

def json_files(pattern: str) -> list[str]:
    """Sorted --json files; ReaderError when none match or one is not .json."""
    files = match_files(pattern, "--json", "no files match")
    for path in files:
        if not path.lower().endswith(".json"):
            raise ReaderError(f"{path}: expected a DocVQA .json annotation file (train_v1.0.json style)")
    return files


def parquet_files(pattern: str, split: str | None) -> list[str]:
    """Sorted --parquet files, each with the columns DocVQA rows need, and a split for each (the --split, a
    data_split column, or the file name); ReaderError otherwise."""
    files = match_files(pattern, "--parquet", "no files match")
    for path in files:
        table_kind(path, ("parquet",))
        columns = set(table_columns(path))
        missing = [c for c in HF_REQUIRED if c not in columns]
        if missing:
            raise ReaderError(f"{path}: not a DocVQA export: missing column(s) {', '.join(missing)} (expected "
                              f"{', '.join(HF_COLUMNS)})")
        if not split and "data_split" not in columns and split_from_path(path) is None:
            raise ReaderError(f"{path}: no data_split column and the file name names no split; pass --split")
    return files


# ---------------------------------------------------------------- rows

def _answers(value: Any) -> tuple[list[str], int]:
    """(answers, blank answers dropped); _Bad when there is no usable answer."""
    if value is None:
        raise _Bad("no_answers", "the question has no answers (a test split?)")
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise _Bad("bad_answers", f"answers must be a list of strings, got {type(value).__name__}")
    answers, blank = [], 0
    for item in value:
        text = text_of(item)
        if text is None:
            raise _Bad("bad_answers", f"answers must be a list of strings, got an item {item!r}"[:200])
        if text.strip():
            answers.append(text)
        else:
            blank += 1
    if not answers:
        raise _Bad("no_answers", "the answers list is empty" + (f" ({blank} blank)" if blank else ""))
    return answers, blank


def _split(row: dict, given: str | None, fallback: str | None) -> str:
    """--split, else the row's data_split, else the file's (dataset_split or file name)."""
    split = given or (text_of(row.get("data_split")) or "").strip() or fallback
    if not split:
        raise _Bad("missing_field", "no data_split and no split from the file; pass --split")
    if not re.match(SPLIT_NAME, split):
        raise _Bad("bad_split", f"{split!r} is not a split name (letters, digits, underscores)")
    return split


def _image_id(row: dict, file_name: str | None, data: bytes | None) -> str:
    doc = canonical_image_id(row.get("docId"))
    if doc is not None:
        return doc
    ucsf, page = id_str(row.get("ucsf_document_id")), id_str(row.get("ucsf_document_page_no"))
    if ucsf:
        return f"{ucsf}_{page}" if page else ucsf
    if file_name:
        return posixpath.splitext(posixpath.basename(file_name.replace("\\", "/")))[0]
    return "sha256:" + hashlib.sha256(data or b"").hexdigest()[:16]


def row_item(row: Any, *, layout: str, source: str, split: str | None = None,
             file_split: str | None = None) -> dict | Rejected:
    """One DocVQA question (either layout) -> item, or a read reject (bad_row, missing_field, bad_id,
    no_answers, bad_answers, missing_image, bad_split). `split` (--split) wins over the row's data_split, which
    wins over `file_split`."""
    try:
        if not isinstance(row, dict):
            raise _Bad("bad_row", f"row is a {type(row).__name__}, not an object")
        if row.get("questionId") is None:
            raise _Bad("missing_field", "no questionId")
        question_id = id_str(row.get("questionId"))
        if question_id is None:
            raise _Bad("bad_id", f"questionId {row.get('questionId')!r} is not an id")
        question = text_of(row.get("question"))
        if question is None or not question.strip():
            raise _Bad("missing_field", f"question {question_id} has no question text")
        answers, blank = _answers(row.get("answers"))
        image_bytes, file_name = image_field(row.get("image"))
        if image_bytes is None and not file_name:
            raise _Bad("missing_image", f"question {question_id}: image has neither bytes nor a path")
        row_split = _split(row, split, file_split)
    except _Bad as bad:
        return rejected(source, bad.reason, bad.detail)
    key = ("sha256:" + hashlib.sha256(image_bytes).hexdigest()) if image_bytes is not None else "file:" + file_name
    types = row.get("question_types")
    return {
        "question_id": question_id, "question": question, "answers": answers, "blank_answers": blank,
        "split": row_split, "image_bytes": image_bytes, "file_name": file_name, "image_key": key,
        "image_id": _image_id(row, file_name, image_bytes), "source": source, "layout": layout,
        "doc_id": id_str(row.get("docId")), "ucsf_document_id": id_str(row.get("ucsf_document_id")),
        "ucsf_document_page_no": id_str(row.get("ucsf_document_page_no")),
        "question_types": [t for t in (text_of(x) for x in types) if t] if isinstance(types, (list, tuple)) else [],
    }


# ---------------------------------------------------------------- files (worker side)

def _name(path: str) -> str:
    """The file's base name: record sources carry no local folder."""
    return posixpath.basename(path.replace("\\", "/"))


def parse_docvqa_json(data: bytes, path: str) -> dict:
    """The top-level object of an original DocVQA JSON file; ReaderError when it is not one."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ReaderError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ReaderError(f"{path}: not a DocVQA annotation file (expected an object with a 'data' list of "
                          "questions, as train_v1.0.json)")
    return doc


def read_json_file(path: str, split: str | None = None) -> Iterator[dict | Rejected]:
    """Items / read rejects of one original DocVQA JSON file, in file order; ReaderError for a bad file."""
    doc = parse_docvqa_json(fs.read_bytes(path), path)
    file_split = (text_of(doc.get("dataset_split")) or "").strip() or split_from_path(path)
    name = _name(path)
    for position, row in enumerate(doc["data"]):
        yield row_item(row, layout="json", source=f"{name}#{position}", split=split, file_split=file_split)


def read_parquet_file(path: str, split: str | None = None) -> Iterator[dict | Rejected]:
    """Items / read rejects of one Hugging Face DocVQA Parquet file, in file order; ReaderError for a file
    that does not read."""
    file_split = split_from_path(path)
    name = _name(path)
    for position, row in enumerate(iter_table_rows(path, HF_COLUMNS)):
        source = f"{name}#{position}"
        if isinstance(row, BadRow):
            yield rejected(source, row.reason, row.detail)
        else:
            yield row_item(row, layout="hf", source=source, split=split, file_split=file_split)


def choose(items: list[dict]) -> tuple[dict, list[dict]]:
    """Of several items with one (split, questionId): the kept one, chosen by content (so every runner keeps the
    same), and the others."""
    def content(item: dict):
        return (item["question"], json.dumps(item["answers"]), item["image_key"], item["source"])

    ordered = sorted(items, key=content)
    return ordered[0], ordered[1:]
