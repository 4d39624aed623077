"""Shared pieces of the exporters: the export error, text checks, image naming, streamed output files."""
from __future__ import annotations

import json
import os

from groundforge.transforms.codecs import find_special_tokens
from groundforge.transforms.errors import ReasonError

STAGE = "export"
# Tags the consuming trainers expand into image tokens or grounding markup: a record text that carries one
# would inject an image slot (or an object/box slot, for ms-swift) that the record does not have.
IMAGE_TAGS = ("<image>",)
SWIFT_TAGS = ("<image>", "<video>", "<audio>", "<ref-object>", "<bbox>")

_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
          (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))


class ExportError(ReasonError):
    """A record that cannot be exported; `reason` is the reject reason (snake_case)."""


def check_tags(fields: dict[str, str | None], tags=IMAGE_TAGS, model_tokens: bool = False) -> None:
    """Raise ExportError(control_tokens) when a text carries a trainer tag (or, with `model_tokens`, a
    special token of any groundforge format)."""
    for name, text in fields.items():
        if not text:
            continue
        found = [t for t in tags if t in text]
        if model_tokens:
            found += find_special_tokens(text)
        if found:
            raise ExportError("control_tokens", f"{name} contains {', '.join(dict.fromkeys(found))}")


def image_extension(data: bytes) -> str:
    """File extension from the encoded bytes' format (not from the stored file name)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    raise ExportError("unknown_image_format", f"bytes start {data[:8].hex()}")


def float32_text(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (boxes are stored as float32)."""
    import numpy as np

    return float(np.format_float_positional(np.float32(value), unique=True, trim="0"))


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def with_prefix(prefix: str, name: str) -> str:
    if not prefix:
        return name
    return prefix + name if prefix.endswith("/") else f"{prefix}/{name}"


class OutFile:
    """A text file written under a temporary name and renamed on close, so readers never see half a file."""

    def __init__(self, root: str, rel: str, mode: str = "w"):
        self.rel = rel
        self.path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.tmp = os.path.join(os.path.dirname(self.path), f".tmp-{os.path.basename(self.path)}")
        self.file = open(self.tmp, mode, encoding=None if "b" in mode else "utf-8",  # noqa: SIM115 (closed in close())
                         newline=None if "b" in mode else "\n")

    def write(self, text) -> None:
        self.file.write(text)

    def close(self) -> str:
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.rel


def write_file_once(path: str, data: bytes) -> bool:
    """Write `data` to `path` unless the file exists (names are content hashes). True if written now."""
    if os.path.exists(path):
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return True
