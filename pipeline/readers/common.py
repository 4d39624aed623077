"""What every reader shares: the item protocol, the error that stops a run, id and text helpers, holdout and
exclude-id files.

The item protocol: a reader is plain Python (no Beam) that yields, per input, either an item (a dict) or a
`Rejected` (one reject row). It never raises on one bad row; a whole-file problem raises `ReaderError`.
Builders turn a reader's output into Beam outputs with `pipeline.emit.read_outputs`.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, NamedTuple

from groundforge.pipeline import fs
from groundforge.transforms.records import reject


def loads_json(data: str | bytes) -> Any:
    """json.loads for input files: a document nested too deeply for the parser (a 6 KB file can hold a 3000-deep
    list) is a ValueError like any other malformed JSON, never a RecursionError."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")


def public_source(source: str) -> str:
    """A source key as records keep it in meta: a local absolute path is cut to its file name (`/data/x/refs.p#3`
    -> `refs.p#3`), so records neither leak the builder's file system nor change when the input folder moves."""
    head, sep, tail = str(source).partition("#")
    if head.startswith("/") or _WINDOWS_ABS.match(head):
        head = os.path.basename(head.replace("\\", "/"))
    return head + sep + tail


class Rejected(NamedTuple):
    """Yielded by a reader in place of an input it cannot use: `row` is a reject row (source, stage, reason,
    detail); stage "read" for a bad input row, "annotation" for a bad annotation beside a usable input."""
    row: dict

    @property
    def stage(self) -> str:
        return self.row["stage"]


def rejected(source: str, reason: str, detail: str, stage: str = "read") -> Rejected:
    return Rejected(reject(source, stage, reason, detail))


class ReaderError(ValueError):
    """A bad input file or configuration: the run stops with this one-line message, or a worker turns it into
    one `unreadable_file` reject for the file."""


def text_of(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    return value if isinstance(value, str) else None



def id_str(value: Any) -> str | None:
    """A source id as a string: 12 -> "12", 12.0 -> "12", " 12 " -> "12"; None for missing/unusable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else None
    text = text_of(value)
    if text is None or not text.strip():
        return None
    return text.strip()


def canonical_image_id(value: Any) -> str | None:
    """Image ids compare as strings; all-digit ids lose leading zeros so "000000581857" == "581857"."""
    text = id_str(value)
    if text is not None and text.isdigit():
        return str(int(text))
    return text


def positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and value > 0:
        return value
    return None



def _id_sort_key(image_id: str):
    return (0, int(image_id), image_id) if image_id.isdigit() else (1, 0, image_id)


def sort_image_ids(image_ids: Iterable[str]) -> list[str]:
    """Unique ids, numeric ones in numeric order first, then the others in string order."""
    return sorted(set(image_ids), key=_id_sort_key)



def holdout_text(image_ids: Iterable[str]) -> str:
    """Contents of OUT/holdout_image_ids.txt: a comment line, then one id per line."""
    lines = ["# image ids in val/test splits; pass to --exclude-images to keep them out of training sets"]
    lines += list(image_ids)
    return "\n".join(lines) + "\n"


def parse_exclude_images(text: str) -> frozenset[str]:
    """One image id per line; `#` starts a comment; blank lines are ignored. Ids are canonicalised."""
    ids = set()
    for line in text.splitlines():
        image_id = canonical_image_id(line.split("#", 1)[0])
        if image_id is not None:
            ids.add(image_id)
    return frozenset(ids)


def read_exclude_images(path: str | None) -> frozenset[str]:
    """Ids of an `--exclude-images FILE` (none for None). A missing or non-UTF-8 file is a ReaderError."""
    if not path:
        return frozenset()
    try:
        with fs.open_read(str(path)) as f:
            data = f.read()
    except FileNotFoundError:
        raise ReaderError(f"--exclude-images file not found: {path}") from None
    try:
        return parse_exclude_images(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ReaderError(f"--exclude-images {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def image_field(value: Any) -> tuple[bytes | None, str | None]:
    """(bytes, path) of an image column: a Hugging Face `{"bytes", "path"}` struct, raw bytes or a path."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), text_of(value.get("path"))
        return (bytes(data) if isinstance(data, (bytes, bytearray)) and data else None), (path or None)
    if isinstance(value, (bytes, bytearray)):
        return (bytes(value) or None), None
    text = text_of(value)
    return None, (text.strip() or None) if text else None
