"""`groundforge build refcoco` end to end (CLI + in-memory Beam): the three input layouts, exact Florence-2
strings against transformers' Florence2PostProcessor, dedupe and split counts, rejects, the hostile-pickle
refusal, --image-mode path, the holdout file honoured by the counting builder, re-rendering and validation."""
from __future__ import annotations

import hashlib
import io
import json
import pickle

import fixtures_refcoco as fx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import FAST_BEAM, build_cli, info_of, read_rows, run_cli

# (width, height) per fixture image id, as the image files are written
SIZES = {str(i): (w, h) for i, (_, w, h) in fx.IMAGES.items()}


@pytest.fixture(scope="module")
def florence():
    """transformers' Florence2PostProcessor (the quantization oracle), with a tiny tokenizer (no hub download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.florence2.processing_florence2 import (
        Florence2PostProcessor,
    )

    tok = Tokenizer(models.WordLevel(vocab={"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    post = Florence2PostProcessor({}, fast)

    def locs(box, w, h):
        import torch

        q = post.quantize(torch.tensor([box], dtype=torch.float64), (w, h))[0].tolist()
        return "".join(f"<loc_{v}>" for v in q)

    return locs


def build(tmp_path, args, name="out", expect_exit=0):
    return build_cli("refcoco", tmp_path, args, name, expect_exit)


def split_tasks(out):
    return {split: entry["tasks"] for split, entry in info_of(out)["splits"].items()}


def rejects_of(out):
    return sorted((r["source"].rsplit("#", 1)[-1], r["stage"], r["reason"]) for r in read_rows(out, "rejects"))


def holdout(out):
    lines = (out / "holdout_image_ids.txt").read_text().splitlines()
    assert lines[0].startswith("#")
    return lines[1:]


def by_key(rows):
    return {(json.loads(r["meta"])["ref_id"], r["caption"], r["task"]): r for r in rows}


def check_florence(rows, expected, florence):
    """expected: {(ref_id, expression): (image_id, split, (w, h), pixel xyxy box)} -> exact rec and reg strings."""
    got = by_key(rows)
    assert set(got) == {(ref, expr, task) for ref, expr in expected for task in ("rec", "reg")}
    for (ref, expr), (image_id, split, (w, h), box) in expected.items():
        locs = florence(box, w, h)
        rec, reg = got[ref, expr, "rec"], got[ref, expr, "reg"]
        assert (rec["prompt"], rec["target"]) == (f"<OPEN_VOCABULARY_DETECTION>{expr}", f"{expr}{locs}")
        assert (reg["prompt"], reg["target"]) == (f"<REGION_TO_DESCRIPTION>{locs}", f"{expr}{locs}")
        for row in (rec, reg):
            assert (row["image_id"], row["split"], row["width"], row["height"]) == (image_id, split, w, h)
            assert row["format"] == "florence2" and row["dataset"] == "refcoco"
            assert row["objects"] == [{"label": expr, "bbox": box, "score": 1.0, "span": [0, len(expr)]}]
            assert row["image_sha256"] == hashlib.sha256(row["image"]["bytes"]).hexdigest()
    assert len({r["id"] for r in rows}) == len(rows)


# ---------------------------------------------------------------- the three layouts

def test_refer_layout(tmp_path, florence):
    refer_dir, images = fx.write_refer(str(tmp_path))
    out, result = build(tmp_path, ["--refer-dir", refer_dir, "--images", images])
    # oracle sanity on one literal: x2 = w and y2 = h clamp to bin 999
    assert florence([4.5, 0, 8, 6], 8, 6) == "<loc_562><loc_0><loc_999><loc_999>"
    check_florence(read_rows(out), {
        ("0", "man on the left"): ("581857", "train", (8, 6), [1.0, 1.0, 4.0, 3.0]),
        ("0", "woman in a café"): ("581857", "train", (8, 6), [1.0, 1.0, 4.0, 3.0]),
        ("1", "right guy"): ("581857", "train", (8, 6), [4.5, 0.0, 8.0, 6.0]),
        ("2", "the whole thing"): ("100", "val", (10, 8), [0.0, 0.0, 10.0, 8.0]),
        ("3", "small dog"): ("200", "testB", (6, 10), [2.0, 3.0, 4.0, 8.0]),
    }, florence)
    assert split_tasks(out) == {"train": {"rec": 3, "reg": 3}, "val": {"rec": 1, "reg": 1},
                                "testB": {"rec": 1, "reg": 1}}
    assert info_of(out)["stats"] == {"refs_read": 9, "images_read": 3, "duplicate_sentences": 2}
    assert rejects_of(out) == [("ref_id=4", "read", "bad_bbox"), ("ref_id=5", "read", "unknown_annotation"),
                               ("ref_id=6", "read", "unknown_image"), ("ref_id=7", "read", "no_sentences"),
                               ("ref_id=8", "read", "missing_field")]
    assert holdout(out) == ["100", "200"]
    assert "read: images 3, refs 9" in result.output and "duplicate sentences: 2" in result.output
    assert "read/bad_bbox: 1" in result.output
    assert run_cli(["validate", out]).output.startswith("ok: 10 records")


def test_lmms_parquet_layout(tmp_path, florence):
    fx.write_images(str(tmp_path / "images"))
    fx.write_lmms_parquet(str(tmp_path / "lmms" / "data" / "val-00000-of-00001.parquet"))
    first = dict(fx.lmms_rows()[0], question_id="100")
    fx.write_lmms_parquet(str(tmp_path / "lmms" / "data" / "testA-00000-of-00001.parquet"), [first])
    out, result = build(tmp_path, ["--parquet", tmp_path / "lmms" / "data" / "*.parquet",
                                   "--images", tmp_path / "images"])
    assert f"input layout: lmms (auto-detected from the columns of {tmp_path}/lmms/data/testA-" in result.output
    rows = read_rows(out)
    check_florence(rows, {
        ("0", "left man"): ("100", "val", (10, 8), [1.5, 1.0, 4.5, 3.5]),
        ("0", "tall one"): ("100", "val", (10, 8), [1.5, 1.0, 4.5, 3.5]),
        ("1", "rotated"): ("200", "val", (6, 8), [0.0, 0.0, 2.0, 2.0]),   # EXIF 6: 8x6 stored as 6x8
        ("2", "by path"): ("581857", "val", (8, 6), [1.0, 1.0, 2.0, 2.0]),
        ("100", "left man"): ("100", "testA", (10, 8), [1.5, 1.0, 4.5, 3.5]),
        ("100", "tall one"): ("100", "testA", (10, 8), [1.5, 1.0, 4.5, 3.5]),
    }, florence)
    from PIL import Image

    rotated = next(r for r in rows if r["caption"] == "rotated")
    img = Image.open(io.BytesIO(rotated["image"]["bytes"]))
    assert img.size == (6, 8) and img.getexif().get(0x0112, 1) == 1
    assert split_tasks(out) == {"val": {"rec": 4, "reg": 4}, "testA": {"rec": 2, "reg": 2}}
    # the val and testA rows of image 100 embed the same bytes: one image read for both
    assert info_of(out)["stats"] == {"refs_read": 7, "images_read": 3, "duplicate_sentences": 2}
    assert rejects_of(out) == [("row=3", "read", "no_sentences"), ("row=4", "read", "bad_bbox"),
                               ("row=5", "read", "missing_field")]
    assert holdout(out) == ["100", "200", "581857"]
    run_cli(["validate", out])


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "json"])
def test_jxu124_layout(tmp_path, florence, kind):
    images = tmp_path / "images" / "train2014"
    fx.write_images(str(images))
    path = str(tmp_path / "jx" / f"refcoco.{kind}")
    {"parquet": fx.write_jxu124_parquet, "jsonl": fx.write_jxu124_jsonl, "json": fx.write_jxu124_json}[kind](path)
    out, result = build(tmp_path, ["--parquet", path, "--images", images])
    assert f"input layout: jxu124 (auto-detected from the columns of {path})" in result.output
    check_florence(read_rows(out), {
        ("10", "man on the left"): ("581857", "train", (8, 6), [1.0, 1.0, 4.0, 3.0]),
        ("11", "the whole thing"): ("100", "val", (10, 8), [0.0, 0.0, 10.0, 8.0]),
        ("12", "small dog"): ("200", "testA", (6, 10), [2.0, 3.0, 4.0, 8.0]),  # size from the image file
    }, florence)
    assert split_tasks(out) == {"train": {"rec": 1, "reg": 1}, "val": {"rec": 1, "reg": 1},
                                "testA": {"rec": 1, "reg": 1}}
    assert info_of(out)["stats"] == {"refs_read": 6, "images_read": 3, "duplicate_sentences": 1}
    assert rejects_of(out) == [("row=3", "read", "bad_bbox"), ("row=4", "read", "missing_field"),
                               ("row=5", "read", "no_sentences")]
    assert holdout(out) == ["100", "200"]


# ---------------------------------------------------------------- rejects, modes, safety

def test_embedded_size_mismatch_box_and_control_tokens(tmp_path):
    schema = fx.LMMS_SCHEMA.append(pa.field("width", pa.int32())).append(pa.field("height", pa.int32()))
    data = fx.jpeg_bytes(10, 8)
    name = "COCO_train2014_000000000100.jpg"

    def row(qid, answer, bbox, w=10, h=8):
        return {"question_id": qid, "image": {"bytes": data, "path": None}, "question": fx.LMMS_QUESTION,
                "answer": answer, "segmentation": [], "bbox": bbox, "iscrowd": 0, "file_name": name,
                "width": w, "height": h}

    path = tmp_path / "lmms" / "test-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([
        row("0", ["good one"], [1.0, 1.0, 2.0, 2.0]),
        row("1", ["claims 12x8"], [1.0, 1.0, 2.0, 2.0], w=12),            # size_mismatch
        row("2", ["far away"], [20.0, 20.0, 5.0, 5.0]),                   # outside_image
        row("3", ["the <loc_5> dog", "plain dog"], [0.0, 0.0, 12.0, 4.0]),  # control tokens; box clipped
    ], schema=schema), path)
    out, _ = build(tmp_path, ["--parquet", path, "--input-layout", "lmms"])
    rows = read_rows(out)
    assert sorted((r["caption"], r["task"]) for r in rows) == [
        ("good one", "rec"), ("good one", "reg"), ("plain dog", "rec"), ("plain dog", "reg")]
    assert next(r for r in rows if r["caption"] == "plain dog")["objects"][0]["bbox"] == [0.0, 0.0, 10.0, 4.0]
    got = [(r["source"].rsplit("#", 1)[-1] if r["stage"] != "render" else "record", r["stage"], r["reason"])
           for r in read_rows(out, "rejects")]
    assert sorted(got) == [("record", "render", "control_tokens"), ("record", "render", "control_tokens"),
                           ("row=1", "image", "size_mismatch"), ("row=2", "annotation", "outside_image")]
    details = {r["reason"]: r["detail"] for r in read_rows(out, "rejects")}
    assert details["size_mismatch"] == "annotation 12x8, image 10x8"
    assert "caption contains <loc_5>" in details["control_tokens"]
    assert info_of(out)["stats"]["images_read"] == 1  # four refs on one image: read and checked once


def test_corrupt_parquet_file_is_one_reject_or_a_clear_error(tmp_path):
    data = tmp_path / "lmms"
    fx.write_lmms_parquet(str(data / "val-00000-of-00001.parquet"))
    (data / "testA-00000-of-00001.parquet").write_bytes(b"PAR1 truncated")  # sorts first
    out, _ = build(tmp_path, ["--parquet", data / "*.parquet", "--input-layout", "lmms"])
    assert split_tasks(out) == {"val": {"rec": 3, "reg": 3}}  # the good file's rows are kept
    assert rejects_of(out) == [(f"{data}/testA-00000-of-00001.parquet", "read", "unreadable_file"),
                               ("row=2", "image", "missing_image"),  # a path row, and no --images
                               ("row=3", "read", "no_sentences"), ("row=4", "read", "bad_bbox"),
                               ("row=5", "read", "missing_field")]
    # auto-detection reads the first file's columns in the driver: a clear one-line error there
    out, result = build(tmp_path, ["--parquet", data / "*.parquet"], name="auto", expect_exit=1)
    assert result.output.startswith(f"Error: {data}/testA-00000-of-00001.parquet: not a readable Parquet file "
                                    "(ArrowInvalid: ")  # the rest is pyarrow's wording
    assert result.output.count("\n") == 1
    assert not out.exists()


def test_image_mode_path_tasks_and_exclude(tmp_path):
    refer_dir, images = fx.write_refer(str(tmp_path))
    ids = tmp_path / "exclude.txt"
    ids.write_text("# not these\n000000581857\n")
    out, _ = build(tmp_path, ["--refer-dir", refer_dir, "--images", images, "--image-mode", "path",
                              "--tasks", "rec", "--exclude-images", ids])
    rows = read_rows(out)
    assert sorted((r["image_id"], r["caption"], r["task"]) for r in rows) == [
        ("100", "the whole thing", "rec"), ("200", "small dog", "rec")]
    assert {r["image_id"]: r["image"] for r in rows} == {
        "100": {"bytes": None, "path": "COCO_train2014_000000000100.jpg"},
        "200": {"bytes": None, "path": "COCO_train2014_000000000200.jpg"}}
    assert info_of(out)["stats"]["excluded_holdout_images"] == 1
    assert holdout(out) == ["100", "200"]  # the holdout lists every eval image, excluded or not
    run_cli(["validate", out])


class _OpenForWrite:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [2, 4])
def test_hostile_pickle_refused_no_code_runs(tmp_path, protocol):
    target = tmp_path / "pwned"
    refer_dir, images = fx.write_refer(str(tmp_path), refs_bytes=pickle.dumps([_OpenForWrite(str(target))],
                                                                               protocol=protocol))
    out, result = build(tmp_path, ["--refer-dir", refer_dir, "--images", images], expect_exit=1)
    assert not target.exists() and not out.exists()
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and "refs(unc).p: refusing to unpickle io.open: only plain" in lines[0]


@pytest.mark.parametrize("args, code, message", [
    (["--refer-dir", "{tmp}/nowhere", "--images", "{tmp}"], 1, "refer file not found: {tmp}/nowhere/refcoco/refs(unc).p"),
    (["--dataset", "refcoco+", "--split-by", "google"], 1, "refcoco+ has no split_by 'google'"),
    (["--dataset", "refcocoX"], 2, "'refcocoX' is not one of"),
    (["--refer-dir", "{tmp}"], 2, "--refer-dir needs --images DIR"),
    (["--parquet", "{tmp}/none-*.parquet"], 1, "no input files match {tmp}/none-*.parquet"),
    (["--tasks", "rec,caption"], 2, "expected a comma list of rec, reg"),
    (["--split", "val"], 2, "--split applies to --parquet inputs only"),
    (["--images", "{tmp}/missing"], 2, "directory not found: {tmp}/missing"),
])
def test_bad_configuration_fails_at_once(tmp_path, args, code, message):
    args = [a.format(tmp=tmp_path) for a in args]
    out, result = build(tmp_path, args, expect_exit=code)
    assert message.format(tmp=tmp_path) in result.output
    assert "Traceback" not in result.output and not out.exists()


# ---------------------------------------------------------------- the sample: holdout -> counting, render, validate

@pytest.fixture(scope="module")
def sample_out(tmp_path_factory):
    out, result = build(tmp_path_factory.mktemp("sample"), ["--num-shards", "2"])
    return out, result


def test_sample_build(sample_out):
    out, result = sample_out
    info = info_of(out)
    assert info["stats"]["refs_read"] == 123 and info["stats"]["images_read"] == 50
    assert info["rejects"]["rows"] == 0
    assert "read: images 50, refs 123" in result.output and "rejected: 0" in result.output
    assert {s: sum(t.values()) for s, t in split_tasks(out).items()} == {
        "train": 368, "val": 42, "testA": 72, "testB": 44}
    assert holdout(out) == [str(i) for i in range(135, 150)]
    assert run_cli(["validate", out]).output.startswith(f"ok: {info['rows']} records")


def test_counting_honours_refcoco_holdout(sample_out, tmp_path):
    out, _ = sample_out
    counting = tmp_path / "counting"
    result = run_cli(["build", "counting", "--out", counting, "--exclude-images", out / "holdout_image_ids.txt",
                      *FAST_BEAM])
    info = info_of(counting)
    assert info["stats"]["excluded_holdout_images"] == 15
    image_ids = {r["image_id"] for r in read_rows(counting)}
    assert image_ids == {str(i) for i in range(100, 135)}
    assert "excluded holdout images: 15" in result.output


def test_render_to_kosmos2(sample_out, tmp_path):
    from transformers.models.kosmos2.processing_kosmos2 import coordinate_to_patch_index

    out, _ = sample_out
    k2 = tmp_path / "k2"
    run_cli(["render", "--in", out, "--format", "kosmos2", "--out", k2, *FAST_BEAM])
    before = {r["id"]: r for r in read_rows(out)}
    after = {r["id"]: r for r in read_rows(k2)}
    assert before.keys() == after.keys()
    for key, row in after.items():
        w, h, expr = row["width"], row["height"], row["caption"]
        x1, y1, x2, y2 = row["objects"][0]["bbox"]
        a, b = coordinate_to_patch_index((x1 / w, y1 / h, x2 / w, y2 / h), 32)
        obj = f"<object><patch_index_{a:04d}><patch_index_{b:04d}></object>"
        if row["task"] == "rec":
            assert (row["prompt"], row["target"]) == (f"<grounding><phrase> {expr}</phrase>", obj)
        else:
            assert (row["prompt"], row["target"]) == (f"<grounding><phrase> It</phrase>{obj} is", expr)
        assert row["format"] == "kosmos2" and row["image_sha256"] == before[key]["image_sha256"]
    run_cli(["validate", k2])
