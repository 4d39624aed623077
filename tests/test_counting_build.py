"""The counting builder end to end through the CLI and the Beam DirectRunner."""
import hashlib
import json

import pytest
from groundforge.pipeline.image_files import load_image
from groundforge.pipeline.readers.coco import image_items
from groundforge.transforms.counting import categories_from_coco, count_image
from groundforge.transforms.images import ImageError
from helpers import FAST_BEAM, jpeg_bytes, read_rows, reader_pairs, run_cli, write_coco


def build(tmp_path, coco, extra=(), out_name="out", expect_exit=0):
    out = tmp_path / out_name
    result = run_cli(["build", "counting", "--coco", coco, "--images", tmp_path / "images", "--out", out,
                      *extra, *FAST_BEAM], expect_exit=expect_exit)
    return out, result


def by_task(rows, task):
    return {r["image_id"] + ("/" + json.loads(r["meta"]).get("class", "") if task == "count_class" else ""): r
            for r in rows if r["task"] == task}


def reasons(out):
    return sorted((r["stage"], r["reason"]) for r in read_rows(out, "rejects"))


def test_roboflow_root_category_dropped_but_owner_kept():
    cats = [{"id": 0, "name": "pets", "supercategory": "none"},
            {"id": 1, "name": "dog", "supercategory": "pets"}, {"id": 2, "name": "cat", "supercategory": "pets"}]
    assert categories_from_coco(cats, [{"category_id": 1}]).classes == ["dog", "cat"]
    # a category that is another's supercategory but owns annotations is a real class
    assert categories_from_coco(cats, [{"category_id": 0}]).classes == ["pets", "dog", "cat"]


def test_counts_crowd_clipping_and_zero(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
              {"id": 2, "file_name": "b.jpg", "width": 100, "height": 80},
              {"id": 3, "file_name": "c.jpg", "width": 100, "height": 80}]
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [90, 60, 30, 30], "iscrowd": 0},  # partly outside: clipped, counts
        {"id": 12, "image_id": 1, "category_id": 2, "bbox": [40, 40, 10, 10], "iscrowd": 0},
        {"id": 13, "image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1},   # crowd: dog count unknown
        {"id": 14, "image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 10], "iscrowd": 0},
    ]
    cats = [{"id": 100, "name": "animals", "supercategory": "none"},
            {"id": 1, "name": "dog", "supercategory": "animals"}, {"id": 2, "name": "cat", "supercategory": "animals"}]
    coco = write_coco(tmp_path, images, anns, cats)
    out, result = build(tmp_path, coco, ["--max-zero-ratio", "1"])  # keep every zero answer (see the next test)
    rows = read_rows(out)
    counting = by_task(rows, "counting")
    assert set(counting) == {"1", "3"}  # image 2 has a crowd region: no all-class question
    assert counting["1"]["target"] == '{"dog": 2, "cat": 1}'
    assert counting["3"]["target"] == "{}"
    assert json.loads(counting["1"]["meta"])["classes"] == ["dog", "cat"]  # Roboflow root dropped
    assert [o["bbox"] for o in counting["1"]["objects"] if o["label"] == "dog"][1] == [90.0, 60.0, 100.0, 80.0]
    per_class = by_task(rows, "count_class")
    assert {k: r["target"] for k, r in per_class.items()} == {
        "1/dog": "2", "1/cat": "1", "2/cat": "1", "3/dog": "0", "3/cat": "0"}
    assert reasons(out) == []  # a crowd region skips its class in that image: a counted stat, not a reject
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["splits"]["train"]["tasks"] == {"counting": 2, "count_class": 5}
    assert info["stats"]["images_read"] == 3
    assert info["stats"]["count_class_skipped_crowd_region"] == 1
    assert "images 3" in result.output and "count class skipped crowd region: 1" in result.output
    assert run_cli(["validate", out]).output.startswith("ok: 7 records")


def test_zero_answers_are_capped_per_image_by_default(tmp_path):
    """--max-zero-ratio 0.5 (default): an image's zero-answer count_class questions are at most half of them."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in (1, 2)]
    cats = [{"id": c, "name": n, "supercategory": "x"} for c, n in enumerate(["dog", "cat", "8", "bus", "car"], 1)]
    anns = [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [40, 40, 10, 10], "iscrowd": 0}]
    out, result = build(tmp_path, write_coco(tmp_path, images, anns, cats))
    per_class = {k: r["target"] for k, r in by_task(read_rows(out), "count_class").items()}
    zeros = sorted(k for k, v in per_class.items() if v == "0")
    assert {k: v for k, v in per_class.items() if v != "0"} == {"1/dog": "1", "1/cat": "1"}
    assert len(zeros) == 2 and all(k.startswith("1/") for k in zeros)  # 2 non-zero -> 2 zeros; image 2 none
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["stats"]["count_class_zero_dropped"] == 1 + 5
    again, _ = build(tmp_path, write_coco(tmp_path, images, anns, cats), out_name="again")
    assert read_rows(again) == read_rows(out)  # the seeded choice is the same on a rerun


def test_exif_image_stored_transposed(tmp_path):
    images = [{"id": 1, "file_name": "r.jpg", "width": 40, "height": 60, "bytes": jpeg_bytes(60, 40, exif_orientation=6)}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 30, 10, 20], "iscrowd": 0}]
    out, _ = build(tmp_path, write_coco(tmp_path, images, anns))
    row = by_task(read_rows(out), "counting")["1"]
    assert (row["width"], row["height"]) == (40, 60)
    import io

    from PIL import Image
    img = Image.open(io.BytesIO(row["image"]["bytes"]))
    assert img.size == (40, 60) and img.getexif().get(0x0112, 1) == 1
    assert row["image_sha256"] == hashlib.sha256(row["image"]["bytes"]).hexdigest()


def test_every_bad_input_is_a_reject_with_reason(tmp_path):
    good = jpeg_bytes(100, 80)
    import io

    from PIL import Image
    bomb = io.BytesIO()
    Image.new("L", (3000, 3000)).save(bomb, format="PNG")
    images = [
        {"id": 1, "file_name": "ok.jpg", "width": 100, "height": 80, "bytes": good},
        {"id": 2, "file_name": "missing.jpg", "width": 100, "height": 80, "skip_file": True},
        {"id": 3, "file_name": "trunc.jpg", "width": 100, "height": 80, "bytes": jpeg_bytes(100, 80)[:300]},
        {"id": 4, "file_name": "../../etc/passwd", "width": 100, "height": 80, "skip_file": True},
        {"id": 5, "file_name": "bomb.png", "width": 3000, "height": 3000, "bytes": bomb.getvalue()},
        {"id": 6, "file_name": "size.jpg", "width": 50, "height": 50, "bytes": good},
    ]
    anns = [
        {"id": 20, "image_id": 1, "category_id": 1, "bbox": [500, 500, 10, 10], "iscrowd": 0},   # fully outside
        {"id": 21, "image_id": 1, "category_id": 2, "bbox": [float("nan"), 1, 5, 5], "iscrowd": 0},  # NaN
        {"id": 22, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        {"id": 23, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},     # unknown image
    ]
    out, result = build(tmp_path, write_coco(tmp_path, images, anns), ["--max-pixels", "1000000"])
    got = {(r["source"].split(":")[1], r["stage"], r["reason"]) for r in read_rows(out, "rejects")}
    assert got == {
        ("2", "image", "missing_image"), ("3", "image", "truncated_image"), ("4", "image", "path_traversal"),
        ("5", "image", "decompression_bomb"), ("6", "image", "size_mismatch"),
        ("20", "annotation", "outside_image"), ("21", "annotation", "nan_box"),
        ("23", "read", "unknown_image"),
    }
    rows = read_rows(out)
    # image 1: the outside box is not counted, the NaN box makes the cat count unknown
    assert {r["task"]: r["target"] for r in rows} == {"count_class": "1"}
    assert json.loads((out / "dataset_info.json").read_text())["stats"]["count_class_skipped_bad_box_in_class"] == 1
    assert "rejected: 8" in result.output


def test_malformed_entries_are_rejects_not_losses_or_crashes():
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 8},
                   {"id": 1, "file_name": "again.jpg", "width": 10, "height": 8},   # the same id again
                   {"id": 2, "file_name": "b.jpg", "width": "10", "height": 8},
                   {"id": 3, "file_name": 7, "width": 10, "height": 8},
                   {"id": [4], "file_name": "d.jpg", "width": 10, "height": 8},
                   {"id": 5, "file_name": "e.jpg", "width": 10.0, "height": 8},      # an integral float is fine
                   "junk"],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]},
                        ["not", "an", "object"],
                        {"id": 11, "image_id": [1], "category_id": 1, "bbox": [1, 1, 2, 2]}],
        "categories": [{"id": 1, "name": "dog", "supercategory": "animal"}],
    }
    out = reader_pairs(image_items(coco, "c.json"), item="image")
    assert [(v["source"], v["reason"]) for k, v in out if k == "reject"] == [
        ("c.json:annotation#1", "bad_row"), ("c.json:image:1", "duplicate_image_id"), ("c.json:image:2", "bad_size"),
        ("c.json:image:3", "missing_field"), ("c.json:image:[4]", "bad_id"), ("c.json:image:'junk'", "bad_row"),
        ("annotation:11", "unknown_image")]
    assert [(v["image"]["file_name"], len(v["annotations"])) for k, v in out if k == "image"] == [("a.jpg", 1),
                                                                                                  ("e.jpg", 0)]


@pytest.mark.parametrize("categories, detail", [
    ([{"id": 1, "name": "dog"}, {"id": 2, "name": "dog"}], "ValueError: duplicate category names: ['dog']"),
    ([{"id": 1}], "KeyError: 'name'"),
    (["dog"], "AttributeError: 'str' object has no attribute 'get'"),
])
def test_unusable_categories_reject_the_file(categories, detail):
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 8}], "categories": categories}
    assert reader_pairs(image_items(coco, "c.json"), item="image") == [
        ("reject", {"source": "c.json", "stage": "read", "reason": "bad_categories", "detail": detail})]


def test_unhashable_category_id_is_unknown_category():
    anns = [{"id": 5, "category_id": [1], "bbox": [0, 0, 1, 1]}]
    cats = categories_from_coco([{"id": 1, "name": "dog", "supercategory": "animal"}], anns)
    counts = count_image(anns, cats, 10, 10)
    assert [(r["source"], r["reason"]) for r in counts.rejects] == [("annotation:5", "unknown_category")]
    assert counts.counts == {"dog": 0}


def test_unreadable_image_file_is_an_image_error(tmp_path):
    (tmp_path / "a_dir.jpg").mkdir()
    with pytest.raises(ImageError) as err:
        load_image(str(tmp_path), "a_dir.jpg")
    assert (err.value.reason, err.value.detail) == ("not_a_file", f"{tmp_path}/a_dir.jpg: a directory, not a regular file")


def test_image_mode_path(tmp_path):
    import groundforge

    coco = write_coco(tmp_path, [{"id": 1, "file_name": "sub/a.jpg", "width": 20, "height": 10}],
                      [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}])
    out = tmp_path / "out"
    groundforge.build("counting", coco=str(coco), images=str(tmp_path / "images"), out=str(out), max_pixels=10**6,
                      num_shards=1, shard_size_mb=1, image_mode="path", beam_args=FAST_BEAM)
    rows = read_rows(out)
    assert len(rows) == 3 and {r["task"] for r in rows} == {"counting", "count_class"}
    assert all(r["image"] == {"bytes": None, "path": "sub/a.jpg"} for r in rows)
    assert {r["image_sha256"] for r in rows} == {hashlib.sha256(jpeg_bytes(20, 10)).hexdigest()}


def test_malformed_json_is_a_reject_and_fails_the_run(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [ {"id": 1,')
    (tmp_path / "images").mkdir()
    out, result = build(tmp_path, bad, expect_exit=1)
    assert reasons(out) == [("read", "malformed_json")]
    assert "no records were written" in result.output


def test_missing_config_fails_at_once(tmp_path):
    result = run_cli(["build", "counting", "--coco", tmp_path / "nope.json", "--out", tmp_path / "o"], expect_exit=2)
    assert "does not exist" in result.output
    result = run_cli(["build", "counting", "--format", "llava", "--out", tmp_path / "o"], expect_exit=2)
    assert "llava" in result.output


def _sample_build(tmp_path, name, extra=()):
    out = tmp_path / name
    run_cli(["build", "counting", "--out", out, "--num-shards", "3", *extra, *FAST_BEAM])
    return out


def test_two_runs_byte_identical_and_restart_cleans_up(tmp_path):
    a = _sample_build(tmp_path, "a")
    b = tmp_path / "b"
    # an interrupted earlier run left a stale shard, a temp file and an old shard count behind
    (b / "data").mkdir(parents=True)
    (b / "data" / "train-00000-of-00007.parquet").write_bytes(b"old")
    (b / "data" / ".tmp-train-00001-of-00003.parquet").write_bytes(b"partial")
    _sample_build(tmp_path, "b")
    files_a = sorted(p.name for p in (a / "data").iterdir())
    assert files_a == sorted(p.name for p in (b / "data").iterdir())
    assert files_a == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    for name in files_a:
        assert (a / "data" / name).read_bytes() == (b / "data" / name).read_bytes()
    assert (a / "dataset_info.json").read_text().replace(str(a), "") == (b / "dataset_info.json").read_text().replace(str(b), "")
    ids = [r["id"] for r in read_rows(a)]
    assert len(ids) == len(set(ids))


def test_sample_loads_with_datasets_and_renders(tmp_path):
    import datasets
    from PIL.Image import Image as PILImage

    out = _sample_build(tmp_path, "s")
    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    info = json.loads((out / "dataset_info.json").read_text())
    # 8 classes + counting per image; crowd in the last image; zero answers capped at half of each image's questions
    assert len(ds) == info["rows"] == 50 * 8 + 49 - 1 - info["stats"]["count_class_zero_dropped"]
    assert isinstance(ds[0]["image"], PILImage)
    first_object = next(objs[0] for objs in ds.select_columns(["objects"])["objects"] if objs)
    assert set(first_object) == {"label", "bbox", "score", "span"} and first_object["score"] == 1.0

    k2 = tmp_path / "k2"
    run_cli(["render", "--in", out, "--format", "qwen2vl", "--out", k2, *FAST_BEAM])
    before = {r["id"]: r for r in read_rows(out)}
    after = {r["id"]: r for r in read_rows(k2)}
    assert before.keys() == after.keys()
    assert all(after[i]["format"] == "qwen2vl" and after[i]["image_sha256"] == before[i]["image_sha256"]
               and after[i]["objects"] == before[i]["objects"] for i in after)
    run_cli(["validate", k2])

    html = tmp_path / "p.html"
    run_cli(["preview", out, "--out", html, "--n", "5"])
    text = html.read_text()
    assert text.count('<img src="data:image/jpeg;base64,') == 5 and "<b>target</b>" in text


def test_validate_reports_tampering(tmp_path):
    out = _sample_build(tmp_path, "t")
    shard = sorted((out / "data").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    (out / "data" / "extra.parquet").write_bytes(b"x")
    result = run_cli(["validate", out], expect_exit=1)
    assert f"data/{shard.name}: sha256 differs" in result.output
    assert "data/extra.parquet: not listed" in result.output


def test_exclude_images(tmp_path):
    ids = tmp_path / "holdout.txt"
    ids.write_text("# eval images\n100\n101\n\n")
    out = _sample_build(tmp_path, "x", ["--exclude-images", ids])
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["stats"]["excluded_holdout_images"] == 2
    assert not {"100", "101"} & {r["image_id"] for r in read_rows(out)}


@pytest.mark.slow
def test_default_multiprocessing_runner(tmp_path):
    out = tmp_path / "mp"
    run_cli(["build", "counting", "--out", out, "--num-shards", "3"])
    fast = _sample_build(tmp_path, "fast")
    for name in (f"train-{i:05d}-of-00003.parquet" for i in range(3)):
        assert (out / "data" / name).read_bytes() == (fast / "data" / name).read_bytes()
