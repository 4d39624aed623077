"""Hostile and awkward input at the level of whole runs: every item ends as records, a reject row with a stage and
reason, or a one-line error with the documented exit code (0 ok, 1 runtime, 2 usage, 130 interrupted); never a
traceback, a silent loss or a different output on a rerun. (File-level cases: test_file_safety.py; validate and
preview: test_validate.py, test_preview.py.)"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import FAST_BEAM, info_of, jpeg_bytes, read_rows, run_cli, write_coco

DEEP = "[" * 3000 + "]" * 3000


def _coco(tmp_path: Path, n: int = 2, anns=None) -> Path:
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 30} for i in range(1, n + 1)]
    anns = anns if anns is not None else [{"id": 10 + i, "image_id": i, "category_id": 1, "bbox": [1, 1, 9, 9],
                                           "iscrowd": 0} for i in range(1, n + 1)]
    return write_coco(tmp_path, images, anns)


def _cli(args, code: int):
    """The console entry point (groundforge.pipeline.cli:run) in a subprocess: what a user sees."""
    out = subprocess.run([sys.executable, "-m", "groundforge.pipeline.cli", *map(str, args)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == code, out.stderr + out.stdout
    assert "Traceback" not in out.stderr + out.stdout
    return out


# ---------------------------------------------------------------- crashes

def test_deeply_nested_coco_file_is_malformed_json(tmp_path):
    (tmp_path / "deep.json").write_text(DEEP)
    out, result = tmp_path / "out", None
    result = run_cli(["build", "counting", "--coco", tmp_path / "deep.json", "--images", tmp_path, "--out", out,
                      *FAST_BEAM], expect_exit=1)
    assert [(r["stage"], r["reason"]) for r in read_rows(out, "rejects")] == [("read", "malformed_json")]
    assert "nested too deeply" in read_rows(out, "rejects")[0]["detail"]
    assert "Traceback" not in result.output


def test_deeply_nested_jsonl_lines_are_bad_json_and_the_rest_builds(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg_bytes(40, 30))
    good = {"ref_id": 1, "image_id": 5, "file_name": "a.jpg", "split": "train", "bbox": [1, 1, 20, 20],
            "sentences": ["the red box"]}
    (tmp_path / "refs.jsonl").write_text(json.dumps(good) + "\n" + DEEP + "\n")
    out = tmp_path / "ref"
    run_cli(["build", "refcoco", "--parquet", tmp_path / "refs.jsonl", "--images", tmp_path / "images",
             "--input-layout", "jxu124", "--out", out, *FAST_BEAM])
    assert [(r["stage"], r["reason"]) for r in read_rows(out, "rejects")] == [("read", "bad_json")]
    assert {r["task"] for r in read_rows(out)} == {"rec", "reg"}

    captions = tmp_path / "caps.jsonl"
    captions.write_text(json.dumps({"caption": "a red box", "image": "a.jpg"}) + "\n" + DEEP + "\n")
    from groundforge.pipeline.readers.captions import read_caption_table
    from groundforge.pipeline.readers.common import Rejected

    rows = list(read_caption_table(str(captions), caption_column="caption", image_column="image"))
    assert isinstance(rows[1], Rejected) and rows[1].row["reason"] == "bad_json" and rows[0]["caption"] == "a red box"


def test_unwritable_out_fails_before_anything_runs(tmp_path):
    """/proc refuses new folders even for root: the error is one line and no pipeline runs."""
    start = time.monotonic()
    out = _cli(["build", "counting", "--out", "/proc/groundforge-test/out", "--direct_running_mode=in_memory"], 2)
    assert "--out" in out.stderr and "cannot" in out.stderr
    assert time.monotonic() - start < 60


def test_a_detector_that_does_not_load_fails_before_out_is_touched(tmp_path):
    out = tmp_path / "out"
    run_cli(["build", "counting", "--out", out, *FAST_BEAM])
    before = (out / "dataset_info.json").read_bytes()
    missing = tmp_path / "no-such-model"
    result = run_cli(["build", "grit", "--out", out, "--grounder", "detector", "--model", missing,
                      "--coco-captions", Path(__file__).parent.parent / "pipeline/sample_data/captions.json",
                      "--images", Path(__file__).parent.parent / "pipeline/sample_data/images", *FAST_BEAM],
                     expect_exit=2)
    assert "cannot load the config" in result.output
    assert (out / "dataset_info.json").read_bytes() == before  # the previous output is untouched


def test_exclude_images_not_utf8_and_unknown_runner_are_one_line_errors(tmp_path):
    bad = tmp_path / "ids.txt"
    bad.write_bytes(b"12\n\xff\xfe\n")
    out = _cli(["build", "counting", "--out", tmp_path / "o", "--exclude-images", bad,
                "--direct_running_mode=in_memory"], 1)
    assert "not UTF-8" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = _cli(["build", "counting", "--out", tmp_path / "o", "--runner", "NoSuchRunner"], 2)
    assert "unknown Beam runner 'NoSuchRunner'" in out.stderr


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    """SIGINT while the pipeline runs (the lock file exists from the moment OUT is taken)."""
    sample = Path(__file__).resolve().parents[1] / "pipeline" / "sample_data"
    base = json.loads((sample / "instances.json").read_text())
    images = [{**img, "id": 100000 + 100 * k + i} for k in range(40) for i, img in enumerate(base["images"])]
    (tmp_path / "big.json").write_text(json.dumps({"images": images, "annotations": [],
                                                   "categories": base["categories"]}))
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "groundforge.pipeline.cli", "build", "counting", "--coco",
                             str(tmp_path / "big.json"), "--images", str(sample / "images"), "--out", str(out),
                             "--direct_running_mode=in_memory"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (out / ".groundforge.lock").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the build finished before the signal")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted"
    assert not (out / ".groundforge.lock").exists()  # the lock is released on the way out


# ---------------------------------------------------------------- silent loss and nondeterminism

def test_duplicate_keys_keep_the_same_row_whatever_the_order():
    from groundforge.pipeline.writer import _WriteShard

    def group(target):
        rec = {"id": "k1", "split": "train", "task": "rec", "format": "florence2", "prompt": "p", "target": target,
               "image": {"bytes": None, "path": "a.jpg"}, "image_id": "1", "width": 4, "height": 4,
               "image_sha256": target * 64, "objects": [], "caption": None, "meta": "{}"}
        return {"split": "train", "key": "k1", "bytes": None, "records": [rec]}

    def kept(order, tmp):
        fn = _WriteShard(str(tmp), "data", 1 << 20)
        outs = list(fn.process((("train", 0, 1), order)))
        info = [o for o in outs if isinstance(o, dict)][0]
        dupes = [o.value for o in outs if not isinstance(o, dict)]
        return pq.read_table(Path(tmp) / info["file"].split("/")[1]).to_pylist()[0]["target"], dupes

    import tempfile

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        first, d1 = kept([group("b"), group("a")], a)
        second, d2 = kept([group("a"), group("b")], b)
    assert first == second == "a"  # the smallest by content, not the first to arrive
    assert d1 == d2 == [{"source": "record:k1", "stage": "write", "reason": "duplicate_key",
                         "detail": "two records share a key"}]


def test_duplicate_ids_in_coco_inputs_are_rejects(tmp_path):
    from groundforge.pipeline.readers.captions import read_coco_captions
    from groundforge.pipeline.readers.coco import image_items
    from helpers import reader_pairs

    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 8}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]},
                            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}],
            "categories": [{"id": 1, "name": "dog"}]}
    pairs = reader_pairs(image_items(coco, "c.json"), item="image")
    assert [(k, v.get("reason")) for k, v in pairs if k == "reject"] == [("reject", "duplicate_annotation_id")]
    assert len([v for k, v in pairs if k == "image"][0]["annotations"]) == 1  # counted once, not twice

    caps = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
            "annotations": [{"id": 5, "image_id": 1, "caption": "a dog"}, {"id": 5, "image_id": 1, "caption": "x"}]}
    out = reader_pairs(read_coco_captions(caps, None, "caps.json"))
    assert sorted(v["reason"] for k, v in out if k == "reject") == ["duplicate_caption_id", "duplicate_image_id"]
    assert [v["caption"] for k, v in out if k == "item"] == ["a dog"]


def test_duplicate_ids_in_refer_instances_are_rejects(tmp_path):
    import fixtures_refcoco as fx

    from groundforge.pipeline.readers.refer import read_refer

    refer_dir, _ = fx.write_refer(str(tmp_path))
    path = Path(refer_dir) / "refcoco" / "instances.json"
    data = json.loads(path.read_text())
    data["images"].append(dict(data["images"][0], file_name="other.jpg"))
    data["annotations"].append(dict(data["annotations"][0]))
    path.write_text(json.dumps(data))
    from helpers import reader_view

    rows = reader_view(read_refer(refer_dir, "refcoco", "unc"))
    reasons = [r["reason"] for r in rows if r.get("reject")]
    assert "duplicate_image_id" in reasons and "duplicate_annotation_id" in reasons


def test_blank_sentences_are_counted(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg_bytes(40, 30))
    row = {"ref_id": 1, "image_id": 5, "file_name": "a.jpg", "split": "train", "bbox": [1, 1, 20, 20],
           "sentences": ["the red box", "   ", 17, None]}
    (tmp_path / "refs.jsonl").write_text(json.dumps(row) + "\n")
    out = tmp_path / "ref"
    run_cli(["build", "refcoco", "--parquet", tmp_path / "refs.jsonl", "--images", tmp_path / "images",
             "--input-layout", "jxu124", "--out", out, *FAST_BEAM])
    assert info_of(out)["stats"]["blank_or_non_text_sentences"] == 3


def test_webdataset_sample_of_a_symlink_is_a_reject(tmp_path):
    from groundforge.pipeline.readers.captions import read_webdataset
    from groundforge.pipeline.readers.common import Rejected

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("s1.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        for name, data in (("s2.jpg", jpeg_bytes(8, 8)), ("s2.txt", b"a cat")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "shard.tar").write_bytes(buf.getvalue())
    rows = list(read_webdataset(str(tmp_path / "shard.tar")))
    assert isinstance(rows[0], Rejected) and rows[0].row["reason"] == "not_a_file"
    assert rows[1]["caption"] == "a cat"


def test_reject_details_have_no_memory_address():
    from groundforge.transforms.images import ImageError, prepare_image
    from groundforge.transforms.records import reject

    assert reject("s", "image", "x", "cannot identify image file <_io.BytesIO object at 0x7f3a2b1c>")["detail"] == (
        "cannot identify image file <_io.BytesIO>")
    with pytest.raises(ImageError) as err:
        prepare_image(b"\xff\xd8\xff" + b"junk" * 10, 10 ** 6)
    assert "0x" not in reject("s", "image", err.value.reason, err.value.detail)["detail"]


def test_records_carry_no_absolute_paths_and_a_moved_input_gives_the_same_shards(tmp_path):
    coco = _coco(tmp_path / "a")
    out = tmp_path / "out1"
    run_cli(["build", "counting", "--coco", coco, "--images", tmp_path / "a" / "images", "--out", out, *FAST_BEAM])
    metas = [json.loads(r["meta"]) for r in read_rows(out)]
    assert metas and all(not m["source"].startswith("/") for m in metas)
    os.rename(tmp_path / "a", tmp_path / "moved")
    out2 = tmp_path / "out2"
    run_cli(["build", "counting", "--coco", tmp_path / "moved" / "instances.json", "--images",
             tmp_path / "moved" / "images", "--out", out2, *FAST_BEAM])
    assert [p.read_bytes() for p in sorted((out / "data").glob("*"))] == [
        p.read_bytes() for p in sorted((out2 / "data").glob("*"))]


def test_a_second_build_into_a_locked_out_fails_at_once(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".groundforge.lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        result = _cli(["build", "counting", "--out", out, "--direct_running_mode=in_memory"], 1)
        assert "is being written by another groundforge build" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over
    _cli(["build", "counting", "--out", out, "--direct_running_mode=in_memory"], 0)
    assert not (out / ".groundforge.lock").exists()


def test_a_build_owns_out_and_removes_an_earlier_outputs_files(tmp_path):
    out = tmp_path / "out"
    run_cli(["build", "grit", "--out", out, *FAST_BEAM])
    (out / "holdout_image_ids.txt").write_text("1\n")
    assert (out / "annotations").is_dir()
    run_cli(["build", "counting", "--out", out, *FAST_BEAM])
    assert not (out / "annotations").exists() and not (out / "holdout_image_ids.txt").exists()
    assert run_cli(["validate", out]).exit_code == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = run_cli(["build", "counting", "--out", foreign, *FAST_BEAM], expect_exit=2)
    assert "holds no groundforge output" in result.output and (foreign / "notes.txt").exists()


def test_out_inside_a_globbed_input_and_render_onto_itself_are_refused(tmp_path):
    out = tmp_path / "out"
    run_cli(["build", "counting", "--out", out, *FAST_BEAM])
    result = run_cli(["render", "--in", out, "--out", out, "--format", "kosmos2", *FAST_BEAM], expect_exit=2)
    assert "would contain the input" in result.output
    pq.write_table(pa.table({"caption": ["a dog"], "image": ["x.jpg"]}), tmp_path / "caps.parquet")
    result = run_cli(["build", "grit", "--captions", str(tmp_path / "*.parquet"), "--grounder", "detector",
                      "--model", tmp_path, "--out", tmp_path / "o2", *FAST_BEAM], expect_exit=2)
    assert "config.json" in result.output  # checks run before anything is built


# ---------------------------------------------------------------- CLI safety

@pytest.mark.parametrize("typo, hint", [("--num-shardz", "--num-shards"), ("--fromat", "--format")])
def test_a_mistyped_option_is_a_usage_error_with_a_suggestion(tmp_path, typo, hint):
    result = run_cli(["build", "counting", "--out", tmp_path / "o", typo, "3", *FAST_BEAM], expect_exit=2)
    assert f"no such option: {typo} (did you mean {hint}?)" in result.output
    assert not (tmp_path / "o").exists()


def test_beam_options_still_pass_through(tmp_path):
    result = run_cli(["build", "counting", "--out", tmp_path / "o", "--direct_running_mode=in_memory",
                      "--direct_num_workers", "1"])
    assert "written:" in result.output


def test_usage_errors_look_the_same_in_every_builder(tmp_path):
    for builder in ("counting", "refcoco", "grit"):
        out = _cli(["build", builder, "--out", tmp_path / "o", "--seed", "x"], 2)
        assert out.stderr.splitlines()[0] == f"Usage: groundforge build {builder} [OPTIONS]"
        assert "Invalid value for '--seed'" in out.stderr


def test_an_out_that_would_contain_an_input_is_refused_before_anything_runs(tmp_path):
    """A caption glob like 'data/**/*.parquet' that also matches the build's own earlier shards in OUT."""
    import click

    from groundforge.pipeline.outdir import check_output

    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    shard = out / "data" / "train-00000-of-00001.parquet"
    shard.write_bytes(b"PAR1")
    with pytest.raises(click.BadParameter, match="would contain the input"):
        check_output(str(out), [str(tmp_path / "caps.parquet"), str(shard)])
    with pytest.raises(click.BadParameter, match="would contain the input"):
        check_output(str(tmp_path / "in" / "out"), [str(tmp_path / "in")] if (tmp_path / "in").mkdir() is None else [])
    check_output(str(tmp_path / "elsewhere"), [str(shard)])  # an input outside OUT is fine
