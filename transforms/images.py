"""Image probing: format, display size, EXIF orientation, sha256, byte cap, decompression-bomb limit, integrity.

Only the formats in ALLOWED_FORMATS are decoded: PIL's auto-detection would otherwise open PostScript (EPS,
through Ghostscript) or any of its ~40 formats from a file named .jpg. Bytes after the end of a JPEG (EOI),
PNG (IEND) or WebP (RIFF size) are cut off the stored copy: phones append videos and vendor trailers there,
and a hostile file hides hundreds of megabytes behind a tiny picture. JPEGs are checked with a draft decode (DCT scaling to 1/8): all entropy-coded data is read, so truncation
is caught, at a fraction of a full decode. Images whose EXIF orientation is not 1 are transposed and
re-encoded, so a reader that ignores EXIF sees the pixels the boxes refer to.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import warnings
from dataclasses import dataclass

from groundforge.transforms.errors import ReasonError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default bomb limit (about 0.25 GiB of RGBA)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # byte cap of an encoded image (file or embedded bytes)
# PIL format names decoded. MPO (phone cameras: JPEG + depth/gain map frames) is opened by PIL's JPEG plugin.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_ORIENTATION_TAG = 0x0112
_SAVE_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "GIF": "PNG", "BMP": "PNG", "TIFF": "PNG", "MPO": "JPEG"}


class ImageError(ReasonError):
    """An unusable image. `reason` is the reject reason."""


@dataclass(frozen=True)
class ImageInfo:
    format: str          # PIL format name of the stored bytes: JPEG, PNG, ...
    width: int           # display orientation
    height: int
    orientation: int     # EXIF orientation of the input (1 = none)
    sha256: str          # of the returned bytes
    trailing_bytes: int = 0  # bytes after the image's end marker, cut off the returned bytes


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prepare_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_bytes: int | None = DEFAULT_MAX_BYTES) -> tuple[bytes, ImageInfo]:
    """Check an encoded image and return the bytes to store with their info.

    Raises ImageError: `too_large` (over `max_bytes`; None: no cap), `empty_image`, `unsupported_format` (an
    image format outside ALLOWED_FORMATS), `undecodable_image`, `decompression_bomb`, `truncated_image`.
    """
    _check_size(data, max_bytes)
    trailing = 0
    end = image_end(data)
    if end is not None and end < len(data):
        data, trailing = data[:end], len(data) - end
    with _decode_errors():
        img = _open_checked(data, max_pixels)
        (width, height), fmt = img.size, img.format or "UNKNOWN"
        orientation = _orientation(img)
        if orientation != 1:
            out, info = _transposed(img, fmt, orientation)
            return out, dataclasses.replace(info, trailing_bytes=trailing)
        _check_decodes(img, fmt)  # a JPEG draft decode: img.size is scaled down after it
    return data, ImageInfo(fmt, width, height, 1, sha256_hex(data), trailing)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = DEFAULT_MAX_BYTES):
    """The decoded PIL image in display orientation (EXIF transposed), for a stage that needs the pixels (the
    detectors). Same checks and ImageError reasons as `prepare_image`, so every stage rejects the same bytes
    for the same reason."""
    _check_size(data, max_bytes)
    with _decode_errors():
        img = _open_checked(data, max_pixels)
        orientation = _orientation(img)
        img.load()
        if orientation != 1:
            from PIL import ImageOps

            return ImageOps.exif_transpose(img)
        return img


def _check_size(data: bytes, max_bytes: int | None) -> None:
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError("too_large", f"{len(data)} bytes > {max_bytes}")


def _open_checked(data: bytes, max_pixels: int):
    """The image opened (header only, allowed formats only), or ImageError for empty data, another format
    and images over `max_pixels` pixels."""
    from PIL import Image

    if not data:
        raise ImageError("empty_image", "0 bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.UnidentifiedImageError:
        other = other_format(data)
        if other:
            raise ImageError("unsupported_format",
                             f"{other} is not decoded; allowed: {', '.join(ALLOWED_FORMATS)}") from None
        raise
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


def other_format(data: bytes) -> str | None:
    """The PIL format outside ALLOWED_FORMATS whose signature `data` starts with, or None. Only PIL's prefix
    checks run (magic bytes): no plugin of a refused format ever parses the data."""
    from PIL import Image

    Image.init()
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        if name in ALLOWED_FORMATS or accept is None:
            continue
        try:
            if accept(prefix):
                return name
        except Exception:  # a prefix check that needs more bytes than there are
            continue
    return None


# ---------------------------------------------------------------------------------------------------------
# where an image's own bytes end (anything after is not part of the picture)

def image_end(data: bytes) -> int | None:
    """Offset just past the end marker of a JPEG (EOI), PNG (IEND chunk) or WebP (RIFF size); None when the
    format is another, the structure cannot be followed (PIL then judges the bytes) or the JPEG is an MPO,
    whose further frames follow the first EOI."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_end(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_end(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        end = 8 + int.from_bytes(data[4:8], "little")
        return end if end <= len(data) else None
    return None


def _jpeg_end(data: bytes) -> int | None:
    """Walk the marker segments from SOI; after each SOS skip the entropy-coded data (where 0xFF is followed
    by 0x00 stuffing or an RSTn marker) to the next marker, until EOI."""
    n, pos = len(data), 2
    while pos + 2 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xD9:  # EOI
            return pos + 2
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers
            pos += 2
        else:
            if pos + 4 > n:
                return None
            length = int.from_bytes(data[pos + 2:pos + 4], "big")
            if length < 2:
                return None
            if marker == 0xE2 and data[pos + 4:pos + 8] == b"MPF\x00":
                return None  # MPO (Multi-Picture Format): more images follow the first EOI
            pos += 2 + length
            if marker == 0xDA:  # SOS: entropy-coded data up to the next marker
                pos = _next_marker(data, pos)
                if pos is None:
                    return None
    return None


def _next_marker(data: bytes, pos: int) -> int | None:
    n = len(data)
    while True:
        i = data.find(b"\xff", pos)
        if i < 0 or i + 1 >= n:
            return None
        following = data[i + 1]
        if following == 0xFF:  # fill bytes before a marker
            pos = i + 1
        elif following == 0x00 or 0xD0 <= following <= 0xD7:  # stuffed 0xFF or restart marker
            pos = i + 2
        else:
            return i


def _png_end(data: bytes) -> int | None:
    n, pos = len(data), 8
    while pos + 12 <= n:
        end = pos + 12 + int.from_bytes(data[pos:pos + 4], "big")
        if end > n:
            return None
        if data[pos + 4:pos + 8] == b"IEND":
            return end
        pos = end
    return None
