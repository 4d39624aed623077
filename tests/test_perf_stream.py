"""The streamed COCO reader (large files) gives the same items and rejects as the whole-file reader."""
from __future__ import annotations

import json

import pytest
from groundforge.pipeline.readers import coco_stream
from groundforge.pipeline.readers.coco import image_items, parse_coco, read_coco
from groundforge.pipeline.readers.coco_stream import stream_coco
from groundforge.pipeline.sample import SAMPLE_DIR

SAMPLE = (SAMPLE_DIR / "instances.json").read_bytes()
BAD_ROWS = json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3}, {"id": 1}, 7,
                                  {"id": 2, "file_name": "b.jpg", "width": 2.5, "height": 1}],
                       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1.5, 1]},
                                       {"id": 1, "image_id": 1}, "x", {"id": 3, "image_id": 9}],
                       "categories": [{"id": 1, "name": "cat"}]}).encode()
DEEP = b'{"images": [], "categories": [], "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"
ODD = {
    "malformed": b'{"images": [', "deep": DEEP, "list": b"[1, 2]", "nan": b'{"images": [], "categories": [], "a": NaN}',
    "repeated_key": b'{"images": [], "images": [{"id": 1}], "categories": []}', "bom": b"\xef\xbb\xbf" + SAMPLE,
    "two_documents": b'{"images": [], "categories": []} {}', "utf16": SAMPLE.decode().encode("utf-16"),
}


def _both(tmp_path, data: bytes, monkeypatch):
    path = tmp_path / "instances.json"
    path.write_bytes(data)
    whole = parse_coco(data, str(path))
    monkeypatch.setattr(coco_stream, "STREAM_MIN_BYTES", 0)
    streamed = read_coco(str(path))
    return whole, streamed, path


def _items(result, path):
    coco, bad = result
    return bad if bad else list(image_items(coco, str(path)))


@pytest.mark.parametrize("data", [SAMPLE, BAD_ROWS], ids=["sample", "bad_rows"])
def test_streamed_reader_reads_plain_files_with_the_same_items_and_rejects(tmp_path, monkeypatch, data):
    whole, streamed, path = _both(tmp_path, data, monkeypatch)
    assert stream_coco(lambda: open(path, "rb")) is not None  # the streamed path really ran
    assert _items(streamed, path) == _items(whole, path)


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_files_go_to_the_whole_file_reader(tmp_path, monkeypatch, name):
    whole, streamed, path = _both(tmp_path, ODD[name], monkeypatch)
    assert stream_coco(lambda: open(path, "rb")) is None
    assert _items(streamed, path) == _items(whole, path)


def test_a_streamed_grit_build_writes_the_same_bytes(tmp_path, monkeypatch):
    """GRIT's COCO captions and instances files go through the same reader: streamed, the output is identical."""
    from helpers import build_cli, info_of

    args = ["--coco-captions", SAMPLE_DIR / "captions.json", "--coco-instances", SAMPLE_DIR / "instances.json",
            "--images", SAMPLE_DIR / "images"]
    whole, _ = build_cli("grit", tmp_path, args, name="whole")
    calls = []
    monkeypatch.setattr(coco_stream, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(coco_stream, "stream_coco", lambda open_file: calls.append(1) or stream_coco(open_file))
    streamed, _ = build_cli("grit", tmp_path, args, name="streamed")
    assert len(calls) == 2  # captions and instances
    assert [s["sha256"] for s in info_of(streamed)["shards"]] == [s["sha256"] for s in info_of(whole)["shards"]]
