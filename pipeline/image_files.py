"""Reading image files: the one place that decides how an image file under an image root is read.

A name resolves inside the root (transforms.paths.safe_join); only a regular file is read (a FIFO, a device
or a directory is refused before it is read, so nothing blocks or reads forever), at most `max_bytes` of it;
the bytes then go through transforms.images.prepare_image (format allowlist, bomb limit, integrity, EXIF).
"""
from __future__ import annotations

from groundforge.pipeline import fs
from groundforge.transforms.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageError,
    prepare_image,
)
from groundforge.transforms.paths import safe_join


def read_image_file(path: str, max_bytes: int | None = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of one image file. Raises ImageError: `missing_image`, `not_a_file` (a directory, FIFO,
    device, ...), `too_large` (over `max_bytes`), `unreadable_image` (no permission, I/O error, ...)."""
    try:
        return fs.read_bytes(path, max_bytes)
    except fs.NotAFileError as exc:
        raise ImageError("not_a_file", f"{path}: a {exc.kind}, not a regular file") from None
    except fs.FileTooLargeError as exc:
        raise ImageError("too_large", f"{path}: {exc.size} bytes > {exc.max_bytes}") from None
    except OSError as exc:  # existence is asked only on failure: one request per image on gs:// or s3://
        if isinstance(exc, FileNotFoundError) or not fs.exists(path):
            raise ImageError("missing_image", path) from None
        raise ImageError("unreadable_image", f"{path}: {type(exc).__name__}") from None


def load_image(images_root: str, file_name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int | None = DEFAULT_MAX_BYTES):
    """Read and check one image under the root -> (bytes to store, ImageInfo).

    Raises PathError (bad_path, absolute_path, path_traversal, link_escapes_root) or ImageError
    (missing_image, not_a_file, too_large, unreadable_image, empty_image, unsupported_format,
    undecodable_image, truncated_image, decompression_bomb).
    """
    data = read_image_file(safe_join(images_root, file_name), max_bytes)
    return prepare_image(data, max_pixels, max_bytes)
