"""`groundforge validate` turns every damaged output into FAIL lines, never a traceback, and never reads outside
OUT; it also re-checks record text for control tokens."""
import json
import os
import shutil

import pytest

from helpers import build_cli, info_of, jpeg_bytes, read_rows, rewrite_shard, run_cli, write_coco
from groundforge.transforms.codecs import FORMATS
from groundforge.transforms.records import make_object, make_record, rendered


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small counting output: 3 images, 2 classes, one shard."""
    root = tmp_path_factory.mktemp("validate")
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 32, "height": 24, "bytes": jpeg_bytes(32, 24)}
              for i in (1, 2, 3)]
    anns = [{"id": 10 + i, "image_id": i, "category_id": 1 + i % 2, "bbox": [2, 2, 10, 8], "iscrowd": 0}
            for i in (1, 2, 3)]
    coco = write_coco(root, images, anns)
    out, _ = build_cli("counting", root, ["--coco", coco, "--images", root / "images"])
    return out


@pytest.fixture
def out(built, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(built, copy)
    return copy


def _fails(out) -> list[str]:
    result = run_cli(["validate", out], expect_exit=1)  # catch_exceptions=False: a traceback fails the test
    lines = result.output.strip().splitlines()
    assert lines and all(line.startswith("FAIL ") or line.startswith("... and") for line in lines), result.output
    return lines


def test_clean_output_is_ok(out):
    assert run_cli(["validate", out]).output.startswith("ok: 9 records in 1 shards")


def test_corrupted_shard_is_a_fail_line(out):
    shard = out / info_of(out)["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 400):  # flip bytes inside the column pages, footer intact
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))
    lines = _fails(out)
    name = info_of(out)["shards"][0]["file"]
    assert f"FAIL {name}: sha256 differs from dataset_info.json" in lines
    assert any(line.startswith(f"FAIL {name}: corrupt Parquet data (") for line in lines), lines


def test_corrupted_footer_is_a_fail_line(out):
    shard = out / info_of(out)["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-30] + b"\0" * 30)
    assert any("not a Parquet file (" in line for line in _fails(out))


@pytest.mark.parametrize("text,expected", [
    ("{}", "FAIL dataset_info.json: rows must be a count, got None"),
    ("[]", "FAIL dataset_info.json: not a JSON object (a list)"),
    ('"out"', "FAIL dataset_info.json: not a JSON object (a str)"),
    ("{", "FAIL dataset_info.json: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ('{"rows": 1, "shards": {}}', "FAIL dataset_info.json: shards must be a list, got dict"),
])
def test_info_that_is_not_an_info_is_a_fail_line(out, text, expected):
    (out / "dataset_info.json").write_text(text)
    assert expected in _fails(out)


def test_info_with_bad_entries_lists_each(out):
    info = info_of(out)
    info["shards"][0]["rows"] = -1
    info["shards"][0]["sha256"] = "xyz"
    info["rejects"] = {"rows": 0, "files": [{"file": "rejects/a.parquet"}]}
    (out / "dataset_info.json").write_text(json.dumps(info))
    lines = _fails(out)
    assert "FAIL dataset_info.json: shards[0].rows must be a count, got -1" in lines
    assert "FAIL dataset_info.json: shards[0].sha256 must be 64 lower-case hex digits" in lines
    assert "FAIL dataset_info.json: rejects.files[0].rows must be a count, got None" in lines


@pytest.mark.parametrize("name", [
    "../elsewhere/train-00000-of-00001.parquet", "data/../../elsewhere/train-00000-of-00001.parquet",
    "/tmp/train-00000-of-00001.parquet", "data/sub/x.parquet", "rejects/train-00000-of-00001.parquet",
    "data/..\\..\\x.parquet", "data/C:x.parquet", "data/.tmp-x.parquet",
])
def test_listed_files_outside_their_folder_are_not_read(out, tmp_path, name, monkeypatch):
    """A tampered info file pointing anywhere (here: at a valid copy of the shard, sha256 and rows right)."""
    from groundforge.pipeline import fs

    info = info_of(out)
    real = out / info["shards"][0]["file"]
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(real, tmp_path / "elsewhere" / real.name)
    info["shards"][0]["file"] = name
    (out / "dataset_info.json").write_text(json.dumps(info))
    opened = []
    real_read = fs.read_bytes
    monkeypatch.setattr(fs, "read_bytes", lambda p, *a: opened.append(p) or real_read(p, *a))
    lines = _fails(out)
    assert lines[0] == f"FAIL dataset_info.json: shards[0].file {name!r} is not a data/<name>.parquet file of this output"
    assert [os.path.basename(p) for p in opened] == ["dataset_info.json"]


def test_shard_that_is_a_link_out_of_out_is_not_read(out, tmp_path):
    info = info_of(out)
    real = out / info["shards"][0]["file"]
    outside = tmp_path / "outside.parquet"
    shutil.move(real, outside)
    os.symlink(outside, real)
    assert f"FAIL {info['shards'][0]['file']}: link_escapes_root (not read)" in _fails(out)


def test_missing_output_is_one_fail_line(tmp_path):
    lines = _fails(tmp_path / "nothing")
    assert len(lines) == 1 and lines[0].startswith("FAIL ") and "dataset_info.json not found" in lines[0]


def test_info_that_is_a_fifo_is_a_fail_line(out):
    (out / "dataset_info.json").unlink()
    os.mkfifo(out / "dataset_info.json")
    lines = _fails(out)
    assert lines == ["FAIL dataset_info.json: cannot be read ("
                     f"{out}/dataset_info.json: a FIFO, not a regular file)"]


def test_control_tokens_in_record_text_are_fail_lines(out):
    def inject(rows):
        rows[0] = {**rows[0], "caption": "a <|box_start|> cup", "target": rows[0]["target"] + "</s>",
                   "objects": [{**o, "label": "<loc_12>"} for o in rows[0]["objects"]] or rows[0]["objects"]}
        return rows

    rewrite_shard(out, inject)
    row = read_rows(out)[0]
    text = "\n".join(_fails(out))
    assert f"row {row['id']}: caption: control tokens <|box_start|>" in text
    assert f"row {row['id']}: target: control tokens </s> that neither its template nor the florence2 box markup writes" in text


def test_unexpected_error_is_one_fail_line(out, monkeypatch):
    from groundforge.pipeline import validate

    def boom(_):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(validate, "validate_output", boom)
    assert _fails(out) == ["FAIL validation stopped: RuntimeError: disk on fire second line"]


# ---------------------------------------------------------------- the control-token rule, per task and format

def _record(task: str, caption: str, labels=("a red cup",), meta=None) -> dict:
    objects = [make_object(label, [10 + 40 * i, 12, 40 + 40 * i, 60], span=_span(caption, label))
               for i, label in enumerate(labels)]
    return make_record(id=f"id-{task}", dataset="t", split="train", task=task,
                       image={"bytes": None, "path": "x.jpg"}, image_id="1", width=200, height=100,
                       image_sha256="0" * 64, objects=objects, caption=caption, meta=meta or {})


def _span(caption: str, label: str):
    i = caption.find(label) if caption else -1
    return [i, i + len(label)] if i >= 0 else []


RECORDS = [
    ("rec", "a red cup", ("a red cup",), None),
    ("reg", "a red cup", ("a red cup",), None),
    ("phrase_grounding", "a red cup and two dogs", ("a red cup", "two dogs"), None),
    ("grounded_caption", "a red cup and two dogs", ("a red cup", "two dogs"), None),
    ("detection", None, ("cup", "dog"), {"classes": ["cup", "dog"]}),
    ("counting", None, ("cup", "dog"), {"classes": ["cup", "dog", "cat"]}),
    ("count_class", "dog", ("dog",), {"class": "dog"}),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("task,caption,labels,meta", RECORDS)
def test_rendered_records_have_no_token_problems(fmt, task, caption, labels, meta):
    from groundforge.pipeline.validate import text_problems

    for seed in range(3):  # several templates
        row = rendered(_record(task, caption, labels, meta), fmt, seed)
        assert text_problems(row) == [], (row["prompt"], row["target"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_tokens_injected_after_rendering_are_found(fmt):
    from groundforge.pipeline.validate import text_problems

    row = rendered(_record("rec", "a red cup", ("a red cup",)), fmt, 0)
    other = "<loc_5>" if fmt != "florence2" else "<|box_start|>"
    bad = {**row, "prompt": row["prompt"] + other, "target": row["target"] + "<|im_end|>"}
    problems = text_problems(bad)
    assert [p.split(":")[0] for p in problems] == ["prompt", "target"], problems
    assert text_problems({**row, "meta": json.dumps({"class": "<grounding>x"})}) == ["meta.class: control tokens <grounding>"]
