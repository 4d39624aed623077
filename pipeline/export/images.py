"""Image references of exported entries: files written once per image (embed) or the stored paths (path)."""
from __future__ import annotations

import os
import zlib

from groundforge.pipeline import fs
from groundforge.pipeline.export.base import Image, Target
from groundforge.pipeline.export.common import (
    ExportError,
    image_extension,
    with_prefix,
    write_file_once,
)
from groundforge.transforms.images import sha256_hex
from groundforge.transforms.paths import PathError, safe_join

CACHE_LIMIT = 4096  # images of one shard: an image's records share a shard, so a small cache sees them all


class ImageResolver:
    """embed: the record's bytes (or, for a path-mode build, the file under `images_root`), checked against
    image_sha256, named `{image_sha256}.{ext}` and written once per target folder (or embedded, for targets
    that embed); path: the record's stored path, after `prefix`."""

    def __init__(self, target: Target, out_dir: str, mode: str, prefix: str = "", images_root: str | None = None):
        self.target = target
        self.out_dir = out_dir
        self.mode = mode
        self.prefix = prefix
        self.images_root = images_root
        self.checked: dict[tuple, str] = {}  # (image_sha256, size, crc32) -> file name, sha256 verified
        self.written = 0
        self.reused = 0

    def resolve(self, row: dict, split: str) -> Image:
        image = row.get("image") or {}
        if self.mode == "path":
            path = image.get("path")
            if not path:
                raise ExportError("no_image_path", "the record stores no image path (--image-mode path needs one)")
            return Image(with_prefix(self.prefix, path), None, None)
        data = image.get("bytes") or self._read(image.get("path"))
        name = self._name(row, data)
        if self.target.embeds_images:
            return Image(with_prefix(self.prefix, name), data, name)
        rel_dir = self.target.image_dir(split)
        if write_file_once(os.path.join(self.out_dir, *rel_dir.split("/"), name), data):
            self.written += 1
        else:
            self.reused += 1
        return Image(with_prefix(self.prefix, self.target.image_ref(split, name)), None, name)

    def _read(self, path: str | None) -> bytes:
        if not path:
            raise ExportError("missing_image", "the record has neither image bytes nor an image path")
        if not self.images_root:
            raise ExportError("missing_image", f"no image bytes stored for {path}; give --images (the build's image root)")
        try:
            full = safe_join(self.images_root, path)
            return fs.read_bytes(full)
        except PathError as err:
            raise ExportError(err.reason, err.detail) from None
        except OSError as err:
            raise ExportError("missing_image", f"{path}: {type(err).__name__}") from None

    def _name(self, row: dict, data: bytes) -> str:
        sha = row.get("image_sha256") or ""
        key = (sha, len(data), zlib.crc32(data))  # a cheap key: other bytes under the same sha are hashed again
        if key in self.checked:
            return self.checked[key]
        actual = sha256_hex(data)
        if actual != sha:
            raise ExportError("image_sha256_mismatch", f"image_sha256 {sha[:16]}... but the bytes hash to {actual[:16]}...")
        if len(self.checked) >= CACHE_LIMIT:
            self.checked.clear()
        self.checked[key] = name = f"{sha}.{image_extension(data)}"
        return name
