"""Reading files safely: only regular files, up to a byte cap, through pipeline/fs.py and pipeline/image_files.py
(the hostile-input issue: a FIFO in the image root hung the build, a character device read until memory ran
out, a 920-byte JPEG with a 300 MB tail was accepted)."""
import json
import os
import stat
import threading

import pytest
from groundforge.pipeline import fs
from groundforge.pipeline.image_files import load_image, read_image_file
from groundforge.transforms.images import DEFAULT_MAX_BYTES, ImageError
from groundforge.transforms.paths import (
    PathError,
    open_regular,
    read_capped,
    read_regular,
)
from helpers import FAST_BEAM, jpeg_bytes, read_rows, run_cli, write_coco


def _finishes(fn, timeout=10.0):
    """Run fn in a thread -> (finished, result or exception). A reader blocked on a FIFO stays blocked: the
    caller unblocks it (opens the FIFO for writing) so the test fails instead of hanging."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["value"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), box.get("value"), thread


def _unblock(fifo, thread):
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds because a reader is waiting
    os.close(fd)
    thread.join(5)


def _char_device(path) -> bool:
    """A character device (like /dev/null, major 1 minor 3) inside a temporary folder; False where mknod is
    not permitted."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))
    except (PermissionError, OSError):
        return False
    return True


def test_fifo_in_the_image_root_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "frame.jpg"
    os.mkfifo(fifo)
    done, value, thread = _finishes(lambda: load_image(str(tmp_path), "frame.jpg"))
    if not done:
        _unblock(fifo, thread)
    assert done, "reading a FIFO blocked"
    assert isinstance(value, ImageError)
    assert (value.reason, value.detail) == ("not_a_file", f"{fifo}: a FIFO, not a regular file")


def test_fifo_given_to_fs_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "instances.json"
    os.mkfifo(fifo)
    for call in (lambda: fs.read_bytes(str(fifo)), lambda: fs.open_read(str(fifo)),
                 lambda: fs.read_bytes(str(fifo), 100), lambda: read_regular(str(fifo))):  # the last: for train/
        done, value, thread = _finishes(call)
        if not done:
            _unblock(fifo, thread)
        assert done and isinstance(value, fs.NotAFileError) and value.kind == "FIFO"


def test_character_device_is_refused(tmp_path):
    if not _char_device(tmp_path / "null.jpg"):
        pytest.skip("mknod not permitted here")
    with pytest.raises(ImageError) as err:  # before: read as 0 bytes (/dev/zero: until memory ran out)
        load_image(str(tmp_path), "null.jpg")
    assert (err.value.reason, err.value.detail) == ("not_a_file",
                                                     f"{tmp_path}/null.jpg: a character device, not a regular file")


def test_system_devices_are_refused_by_fs():
    for dev in ("/dev/zero", "/dev/urandom"):
        with pytest.raises(fs.NotAFileError) as err:
            fs.read_bytes(dev, 1024)
        assert err.value.kind == "character device"
        with pytest.raises(fs.NotAFileError):
            fs.open_read(dev)


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "a_dir.jpg").mkdir()
    with pytest.raises(ImageError) as err:
        load_image(str(tmp_path), "a_dir.jpg")
    assert (err.value.reason, err.value.detail) == ("not_a_file", f"{tmp_path}/a_dir.jpg: a directory, not a regular file")


def test_symlink_to_a_regular_file_inside_the_root_is_read(tmp_path):
    (tmp_path / "real.jpg").write_bytes(jpeg_bytes(20, 10))
    os.symlink(tmp_path / "real.jpg", tmp_path / "alias.jpg")
    assert load_image(str(tmp_path), "alias.jpg")[1].width == 20


def test_file_over_the_byte_cap_is_refused_before_reading(tmp_path, monkeypatch):
    """The tiny JPEG with a huge tail: its size is checked with fstat, and no byte of it is read."""
    big = tmp_path / "tail.jpg"
    with open(big, "wb") as f:
        f.write(jpeg_bytes(16, 16))
        f.truncate(DEFAULT_MAX_BYTES + 1)  # sparse: nothing is written to disk
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    with pytest.raises(ImageError) as err:
        load_image(str(tmp_path), "tail.jpg")
    assert (err.value.reason, err.value.detail) == ("too_large", f"{big}: {DEFAULT_MAX_BYTES + 1} bytes > {DEFAULT_MAX_BYTES}")
    assert reads == []
    with pytest.raises(ImageError) as err:
        load_image(str(tmp_path), "tail.jpg", max_bytes=1000)
    assert err.value.reason == "too_large"


def test_byte_cap_is_inclusive_and_tail_under_it_is_cut(tmp_path):
    data = jpeg_bytes(30, 20)
    (tmp_path / "a.jpg").write_bytes(data + b"\0" * 5000)
    out, info = load_image(str(tmp_path), "a.jpg", max_bytes=len(data) + 5000)
    assert out == data and info.trailing_bytes == 5000
    with pytest.raises(ImageError) as err:
        load_image(str(tmp_path), "a.jpg", max_bytes=len(data) + 4999)
    assert err.value.reason == "too_large"


def test_growing_file_is_cut_off_at_the_cap(tmp_path):
    """A file that grows after its size was checked is never read past max_bytes + 1."""
    path = tmp_path / "grow.bin"
    path.write_bytes(b"a" * 10)
    f, size = open_regular(str(path), 100)
    with open(path, "ab") as w:
        w.write(b"b" * 1000)
    with pytest.raises(fs.FileTooLargeError) as err:
        read_capped(f, str(path), 100, size + 1)
    assert err.value.size == 101
    f.close()


def test_missing_and_unreadable_images(tmp_path):
    with pytest.raises(ImageError) as err:
        read_image_file(str(tmp_path / "nope.jpg"))
    assert (err.value.reason, err.value.detail) == ("missing_image", f"{tmp_path}/nope.jpg")
    locked = tmp_path / "locked.jpg"
    locked.write_bytes(jpeg_bytes(8, 8))
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user who reads anything (root)")
        with pytest.raises(ImageError) as err:
            read_image_file(str(locked))
        assert (err.value.reason, err.value.detail) == ("unreadable_image", f"{locked}: PermissionError")
    finally:
        locked.chmod(0o644)


def test_paths_are_checked_before_any_read(tmp_path):
    with pytest.raises(PathError) as err:
        load_image(str(tmp_path), "../x.jpg")
    assert err.value.reason == "path_traversal"


def test_fs_functions_round_trip(tmp_path):
    path = fs.join(str(tmp_path), "sub", "a.bin")
    os.makedirs(os.path.dirname(path))
    fs.write_bytes(path, b"hello")
    assert fs.exists(path) and not fs.exists(path + ".x")
    assert fs.read_bytes(path) == b"hello" == fs.read_bytes(path, 5)
    with pytest.raises(fs.FileTooLargeError):
        fs.read_bytes(path, 4)
    with fs.open_read(path) as f:
        assert f.read() == b"hello"
    assert fs.match(fs.join(str(tmp_path), "sub", "*.bin")) == [path]
    assert not [p for p in os.listdir(tmp_path / "sub") if p.startswith(".tmp-")]
    fs.delete([path])
    assert not fs.exists(path)
    assert not hasattr(fs, "mkdirs")  # was never called


def test_load_image_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "f.jpg")
    done, value, thread = _finishes(lambda: load_image(str(tmp_path), "f.jpg"))
    if not done:
        _unblock(tmp_path / "f.jpg", thread)
    assert done and isinstance(value, ImageError) and value.reason == "not_a_file"


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 10\n%%EndComments\nshowpage\n%%EOF\n")


def test_counting_build_turns_hostile_files_into_rejects(tmp_path):
    """A build over an image root with a character device, an oversized file, PostScript named .jpg and a JPEG
    with a tail: every bad file is a reject row (stage image), the good ones are records, nothing hangs."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 20, "height": 10} for i in range(1, 6)]
    coco = write_coco(tmp_path, [dict(im, skip_file=True) for im in images],
                      [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}
                       for i in range(1, 6)])
    root = tmp_path / "images"
    good = jpeg_bytes(20, 10)
    (root / "1.jpg").write_bytes(good)
    (root / "2.jpg").write_bytes(good + b"\0" * 200_000)             # tail: stored without it
    with open(root / "3.jpg", "wb") as f:                             # over the cap
        f.write(good)
        f.truncate(DEFAULT_MAX_BYTES + 1)
    (root / "4.jpg").write_bytes(EPS)                                 # PostScript, named .jpg
    has_device = _char_device(root / "5.jpg")
    if not has_device:
        (root / "5.jpg").mkdir()
    out = tmp_path / "out"
    result = run_cli(["build", "counting", "--coco", coco, "--images", root, "--out", out, *FAST_BEAM])
    rejects = sorted((r["source"], r["stage"], r["reason"]) for r in read_rows(out, "rejects"))
    assert rejects == [("image:3:3.jpg", "image", "too_large"), ("image:4:4.jpg", "image", "unsupported_format"),
                       ("image:5:5.jpg", "image", "not_a_file")]
    rows = read_rows(out)
    assert {r["image_id"] for r in rows} == {"1", "2"}
    assert {len(r["image"]["bytes"]) for r in rows} == {len(good)}
    assert "too_large: 1" in result.output and "unsupported_format: 1" in result.output
    assert json.loads((out / "dataset_info.json").read_text())["rejects"]["rows"] == 3
