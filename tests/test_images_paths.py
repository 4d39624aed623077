import io
import os

import pytest
from groundforge.transforms.boxes import BoxError, checked_box, iou, nms, xywh_to_xyxy
from groundforge.transforms.images import ImageError, prepare_image
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
