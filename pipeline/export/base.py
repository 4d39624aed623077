"""The exporter interface: one output family of files per target, written as records stream in."""
from __future__ import annotations

from typing import NamedTuple

from groundforge.pipeline.export.common import (
    IMAGE_TAGS,
    ExportError,
    OutFile,
    check_tags,
)


class Image(NamedTuple):
    ref: str                # what the entry names: a path relative to the entry's file, prefixed, or as stored
    data: bytes | None      # the encoded bytes (embed mode), for targets that embed them
    name: str | None        # stable file name `{image_sha256}.{ext}` (embed mode)


class Target:
    """`entry(row)` builds the text part (raises ExportError for a record that cannot be exported), then
    `write(split, row, entry, image)` appends it; `close()` renames the files into place and lists them."""

    name = ""
    embeds_images = False   # True: image bytes go into the output file itself, not under DIR

    def __init__(self, out_dir: str, seed: int = 0):
        self.out_dir = out_dir
        self.seed = seed
        self.files: dict[str, OutFile] = {}

    def image_dir(self, split: str) -> str:
        """Folder (relative to DIR) for this split's image files."""
        return "images"

    def image_ref(self, split: str, name: str) -> str:
        """How an entry of `split` names image file `name` (relative to the entry file's folder)."""
        return f"images/{name}"

    def entry(self, row: dict):
        raise NotImplementedError

    def write(self, split: str, row: dict, entry, image: Image) -> None:
        raise NotImplementedError

    def close(self) -> list[str]:
        return sorted(f.close() for f in self.files.values())

    def file(self, rel: str, header: str = "") -> OutFile:
        if rel not in self.files:
            self.files[rel] = OutFile(self.out_dir, rel)
            if header:
                self.files[rel].write(header)
        return self.files[rel]


def rendered_pair(row: dict) -> tuple[str, str]:
    """The record's own prompt/target (the format it was rendered for), checked for image tags."""
    prompt, target = row.get("prompt") or "", row.get("target") or ""
    check_tags({"prompt": prompt, "target": target}, IMAGE_TAGS)
    if not target.strip():
        raise ExportError("empty_target", "the record has no target text")
    return prompt, target
