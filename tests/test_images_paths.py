import hashlib
import io
import os

import pytest
from groundforge.transforms.boxes import BoxError, checked_box, iou, nms, xywh_to_xyxy
from groundforge.transforms.images import ImageError, decode_image, prepare_image
from groundforge.transforms.paths import PathError, safe_join
from helpers import jpeg_bytes
from PIL import Image


def test_prepare_plain_jpeg_keeps_bytes():
    data = jpeg_bytes(64, 48)
    out, info = prepare_image(data)
    assert out == data
    assert (info.format, info.width, info.height, info.orientation) == ("JPEG", 64, 48, 1)


def test_exif_rotated_image_is_stored_transposed():
    data = jpeg_bytes(64, 48, exif_orientation=6)  # 6 = rotate 90 CW to display
    out, info = prepare_image(data)
    assert (info.width, info.height, info.orientation) == (48, 64, 6)
    img = Image.open(io.BytesIO(out))
    assert img.size == (48, 64)
    assert img.getexif().get(0x0112, 1) == 1  # a reader that ignores EXIF sees display pixels
    # the blue top-left quadrant of the stored pixels moved to the top-right after a 90 degree CW turn
    assert img.convert("RGB").getpixel((40, 5))[2] > 150 and img.convert("RGB").getpixel((5, 5))[0] > 150


def test_truncated_jpeg_rejected():
    data = jpeg_bytes(200, 150)
    with pytest.raises(ImageError) as err:
        prepare_image(data[: len(data) // 2])
    assert err.value.reason == "truncated_image"


def test_garbage_rejected():
    with pytest.raises(ImageError) as err:
        prepare_image(b"not an image at all")
    assert err.value.reason == "undecodable_image"


def test_decompression_bomb_rejected_without_decoding():
    buf = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buf, format="PNG")  # compresses to a few KB
    with pytest.raises(ImageError) as err:
        prepare_image(buf.getvalue(), max_pixels=1_000_000)
    assert err.value.reason == "decompression_bomb"


def test_safe_join(tmp_path):
    (tmp_path / "a").mkdir()
    assert safe_join(str(tmp_path), "a/x.jpg") == os.path.join(str(tmp_path), "a", "x.jpg")
    for bad, reason in [("/etc/passwd", "absolute_path"), ("../x.jpg", "path_traversal"),
                        ("a/../../x.jpg", "path_traversal"), ("C:/x.jpg", "absolute_path")]:
        with pytest.raises(PathError) as err:
            safe_join(str(tmp_path), bad)
        assert err.value.reason == reason
    outside = tmp_path.parent / "outside-target"
    outside.mkdir(exist_ok=True)
    os.symlink(outside, tmp_path / "link")
    with pytest.raises(PathError) as err:
        safe_join(str(tmp_path), "link/x.jpg")
    assert err.value.reason == "link_escapes_root"
    assert safe_join("gs://bucket/imgs", "a/b.jpg") == "gs://bucket/imgs/a/b.jpg"


@pytest.mark.parametrize("box,reason", [
    ([float("nan"), 0, 10, 10], "nan_box"), ([10, 10, 5, 20], "inverted_box"), ([5, 5, 5, 9], "empty_box"),
    ([200, 200, 300, 300], "outside_image"), ([1, 2, 3], "bad_box"), (["a", 1, 2, 3], "bad_box")])
def test_bad_boxes(box, reason):
    with pytest.raises(BoxError) as err:
        checked_box(box, 100, 100)
    assert err.value.reason == reason


def test_box_clip_and_nms():
    assert checked_box([-5, 10, 120, 50], 100, 100) == [0.0, 10.0, 100.0, 50.0]
    assert xywh_to_xyxy([1, 2, 3, 4]) == [1.0, 2.0, 4.0, 6.0]
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]]
    assert nms(boxes, [0.8, 0.9, 0.7], 0.5) == [1, 2]


# ---------------------------------------------------------------- formats: only what users expect is decoded

EPS_AS_JPG = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
              b"newpath 0 0 moveto 16 16 lineto stroke showpage\n%%EOF\n")


def _encoded(fmt: str, **kwargs) -> bytes:
    img = Image.new("RGB", (24, 16), (10, 120, 200))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _mpo_bytes() -> bytes:
    """A two-frame MPO, as phones write for depth/portrait shots (Pillow writes MPO since 9.3)."""
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 0, 0)).save(buf, format="MPO", save_all=True,
                                                 append_images=[Image.new("RGB", (24, 16), (0, 0, 200))])
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_are_decoded(fmt):
    out, info = prepare_image(_encoded(fmt))
    assert (info.format, info.width, info.height) == (fmt, 24, 16)


def test_mpo_from_a_phone_is_kept_whole():
    data = _mpo_bytes()
    out, info = prepare_image(data)
    assert (info.format, info.width, info.height, info.trailing_bytes) == ("MPO", 24, 16, 0)
    assert out == data  # the second frame follows the first EOI: nothing is cut


@pytest.mark.parametrize("data,fmt", [
    (EPS_AS_JPG, "EPS"),                       # PIL would hand this to Ghostscript
    (_encoded("PPM"), "PPM"), (_encoded("ICO"), "ICO"), (_encoded("PCX"), "PCX")
])
def test_other_formats_are_not_decoded(data, fmt):
    for decode in (prepare_image, decode_image):
        with pytest.raises(ImageError) as err:
            decode(data)
        assert err.value.reason == "unsupported_format"
        assert err.value.detail.startswith(f"{fmt} is not decoded; allowed: JPEG, PNG")


def test_eps_is_never_opened_by_its_plugin(monkeypatch):
    """The refusal comes from the magic bytes alone: EPS's plugin (which runs Ghostscript) is not called."""
    from PIL import EpsImagePlugin

    def boom(*a, **k):
        raise AssertionError("EPS plugin used")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", boom)
    with pytest.raises(ImageError) as err:
        prepare_image(EPS_AS_JPG)
    assert err.value.reason == "unsupported_format"


# ---------------------------------------------------------------- byte cap and bytes after the image's end

def test_byte_cap_on_embedded_bytes():
    data = jpeg_bytes(64, 48)
    assert prepare_image(data, max_bytes=len(data))[0] == data
    for decode in (prepare_image, decode_image):
        with pytest.raises(ImageError) as err:
            decode(data, max_bytes=len(data) - 1)
        assert (err.value.reason, err.value.detail) == ("too_large", f"{len(data)} bytes > {len(data) - 1}")


def test_default_byte_cap_is_64_mib():
    from groundforge.transforms.images import DEFAULT_MAX_BYTES

    data = jpeg_bytes(8, 8)
    assert DEFAULT_MAX_BYTES == 64 * 1024 * 1024
    with pytest.raises(ImageError) as err:
        prepare_image(data + bytes(DEFAULT_MAX_BYTES))
    assert err.value.reason == "too_large"


def _progressive_jpeg_with_thumbnail() -> bytes:
    """Progressive (several scans) with an EXIF thumbnail JPEG inside APP1, whose own EOI is not the end."""
    img = Image.new("RGB", (96, 64), (30, 160, 60))
    img.paste((250, 250, 0), (10, 10, 40, 40))
    thumb = io.BytesIO()
    img.resize((24, 16)).save(thumb, format="JPEG")
    exif = Image.Exif()
    exif[0x010F] = "Camera"
    raw = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, format="JPEG", progressive=True, exif=raw, quality=90)
    data = buf.getvalue()
    assert data.count(b"\xff\xda") > 1
    # splice a second APP1 segment that holds a complete JPEG (SOI..EOI) after the first
    seg = b"Exif\x00\x00" + thumb.getvalue()
    app1 = b"\xff\xe1" + (len(seg) + 2).to_bytes(2, "big") + seg
    return data[:2] + app1 + data[2:]


@pytest.mark.parametrize("make", [
    lambda: jpeg_bytes(40, 30), _progressive_jpeg_with_thumbnail,
    lambda: _encoded("PNG"), lambda: _encoded("WEBP", lossless=True),
])
def test_bytes_after_the_image_end_are_cut_off(make):
    """A tiny picture with a large tail (a hostile file, or a phone's appended video) stores only the picture."""
    image = make()
    tail = b"\x00" * 3_000_000 + b"\xff\xd9 trailer"
    out, info = prepare_image(image + tail)
    assert out == image
    assert info.trailing_bytes == len(tail)
    assert info.sha256 == hashlib.sha256(image).hexdigest()
    assert Image.open(io.BytesIO(out)).tobytes() == Image.open(io.BytesIO(image)).tobytes()


def test_trailing_bytes_cut_from_a_rotated_jpeg_too():
    image = jpeg_bytes(64, 48, exif_orientation=6)
    out, info = prepare_image(image + b"x" * 1000)
    assert (info.width, info.height, info.orientation, info.trailing_bytes) == (48, 64, 6, 1000)


def test_image_end_of_cut_or_odd_bytes():
    from groundforge.transforms.images import image_end

    data = jpeg_bytes(40, 30)
    assert image_end(data) == len(data)
    assert image_end(data[:-2]) is None  # no EOI: a truncated file, judged by PIL
    assert image_end(data[: len(data) // 2]) is None
    assert image_end(b"GIF89a...") is None
    png = _encoded("PNG")
    assert image_end(png) == len(png) and image_end(png[:-4]) is None


# ---------------------------------------------------------------- names that are relative, and names that are not

@pytest.mark.parametrize("name,parts", [
    ("x:y.jpg", ["x:y.jpg"]), ("C:x.jpg", ["C:x.jpg"]), ("a/b:c/d.jpg", ["a", "b:c", "d.jpg"]),
    ("img:001.png", ["img:001.png"]), ("sub\\x.jpg", ["sub", "x.jpg"]),
])
def test_colons_in_relative_names_are_fine(tmp_path, name, parts):
    assert safe_join(str(tmp_path), name) == os.path.join(str(tmp_path), *parts)


@pytest.mark.parametrize("name,reason", [
    ("/etc/passwd", "absolute_path"), ("C:/x.jpg", "absolute_path"), ("C:\\x.jpg", "absolute_path"),
    ("c:\\Windows\\x.jpg", "absolute_path"), ("D:", "absolute_path"), ("\\\\server\\share\\x.jpg", "absolute_path"),
    ("http://host/x.jpg", "absolute_path"), ("file:///etc/passwd", "absolute_path"),
    ("..\\x.jpg", "path_traversal"), ("a/../../x.jpg", "path_traversal"), ("", "bad_path"), ("a\x00.jpg", "bad_path"),
])
def test_absolute_and_escaping_names_are_refused(tmp_path, name, reason):
    with pytest.raises(PathError) as err:
        safe_join(str(tmp_path), name)
    assert err.value.reason == reason
