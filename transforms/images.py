"""Image probing: format, display size, EXIF orientation, sha256, decompression-bomb limit, integrity.

JPEGs are checked with a draft decode (DCT scaling to 1/8): all entropy-coded data is read, so truncation
is caught, at a fraction of a full decode. Images whose EXIF orientation is not 1 are transposed and
re-encoded, so a reader that ignores EXIF sees the pixels the boxes refer to.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from dataclasses import dataclass

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default bomb limit (about 0.25 GiB of RGBA)
_ORIENTATION_TAG = 0x0112
_SAVE_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "GIF": "PNG", "BMP": "PNG", "TIFF": "PNG", "MPO": "JPEG"}


class ImageError(ValueError):
    """An unusable image. `reason` is the reject reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    format: str          # PIL format name of the stored bytes: JPEG, PNG, ...
    width: int           # display orientation
    height: int
    orientation: int     # EXIF orientation of the input (1 = none)
    sha256: str          # of the returned bytes


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prepare_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, ImageInfo]:
    """Check an encoded image and return the bytes to store with their info.

    Raises ImageError: `empty_image`, `undecodable_image`, `decompression_bomb`, `truncated_image`.
    """
    with _decode_errors():
        img = _open_checked(data, max_pixels)
        (width, height), fmt = img.size, img.format or "UNKNOWN"
        orientation = _orientation(img)
        if orientation != 1:
            return _transposed(img, fmt, orientation)
        _check_decodes(img, fmt)  # a JPEG draft decode: img.size is scaled down after it
    return data, ImageInfo(fmt, width, height, 1, sha256_hex(data))


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The decoded PIL image in display orientation (EXIF transposed), for a stage that needs the pixels (the
    detectors). Same checks and ImageError reasons as `prepare_image`, so every stage rejects the same bytes
    for the same reason."""
    with _decode_errors():
        img = _open_checked(data, max_pixels)
        orientation = _orientation(img)
        img.load()
        if orientation != 1:
            from PIL import ImageOps

            return ImageOps.exif_transpose(img)
        return img


def _open_checked(data: bytes, max_pixels: int):
    """The image opened (header only), or ImageError for empty data and images over `max_pixels` pixels."""
    from PIL import Image

    if not data:
        raise ImageError("empty_image", "0 bytes")
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError("decompression_bomb", f"{width}x{height} = {width * height} pixels > {max_pixels}")
    return img


@contextlib.contextmanager
def _decode_errors():
    """PIL's failures as ImageError. Its bomb warning (over Image.MAX_IMAGE_PIXELS) is an error too; PIL raises
    many types for garbage, told apart from truncation by the message."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError("decompression_bomb", str(exc)) from None
        except Exception as exc:
            raise ImageError("truncated_image" if _looks_truncated(exc) else "undecodable_image",
                             f"{type(exc).__name__}: {exc}") from None


def _orientation(img) -> int:
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _check_decodes(img, fmt: str) -> None:
    if fmt == "JPEG":
        img.draft("RGB", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
    img.load()


def _looks_truncated(exc: Exception) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (OSError, SyntaxError)) and any(
        word in text for word in ("truncated", "broken", "premature", "end of file"))


def _transposed(img, fmt: str, orientation: int) -> tuple[bytes, ImageInfo]:
    from PIL import ImageOps

    img.load()
    out = ImageOps.exif_transpose(img)
    save_fmt = _SAVE_FORMATS.get(fmt, "PNG")
    if save_fmt == "JPEG" and out.mode not in ("RGB", "L", "CMYK"):
        out = out.convert("RGB")
    buf = io.BytesIO()
    kwargs = {"quality": 95} if save_fmt == "JPEG" else {}
    out.save(buf, format=save_fmt, **kwargs)  # exif_transpose already dropped the orientation tag
    data = buf.getvalue()
    return data, ImageInfo(save_fmt, out.size[0], out.size[1], orientation, sha256_hex(data))
