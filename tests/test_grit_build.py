"""`groundforge build grit` end to end (CLI + in-memory Beam): the shipped sample with the annotations grounder
and the real spaCy model (exact records), a tiny random-weight OWLv2 through RunInference on CPU, the Dataflow
translation with GPU resource hints, caption tables, webdataset shards, GRIT-20M rows, text rejects,
--exclude-images and --balance-concepts (checked against transforms.grit.balance_concepts)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    build_cli,
    info_of,
    jpeg_bytes,
    read_rows,
    reader_pairs,
    run_cli,
    write_coco,
)

SAMPLE_W, SAMPLE_H = 320, 240


def build(tmp_path, args, name="out", expect_exit=0):
    return build_cli("grit", tmp_path, args, name, expect_exit)


def rejects_of(out):
    return sorted((r["source"], r["stage"], r["reason"]) for r in read_rows(out, "rejects"))


def loc(box, w, h) -> str:
    """Florence-2 quantization, written out independently of transforms.codecs: floor(v / (size / 1000))."""
    sizes = (w, h, w, h)
    return "".join(f"<loc_{min(999, max(0, math.floor(v / (s / 1000))))}>" for v, s in zip(box, sizes))


def xyxy(bbox):
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def normalised(start, end, box, w, h, score=1.0):
    return [float(start), float(end), box[0] / w, box[1] / h, box[2] / w, box[3] / h, score]


# ---------------------------------------------------------------------------------------------------------
# the shipped sample, annotations grounder, real spaCy model


@pytest.fixture(scope="module")
def sample_out(tmp_path_factory):
    out, result = build(tmp_path_factory.mktemp("sample"), [])
    return out, result.output


def sample_boxes(image_id: int) -> dict[str, list]:
    from groundforge.pipeline.sample import SAMPLE_DIR

    coco = json.loads((SAMPLE_DIR / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out: dict[str, list] = {}
    for ann in coco["annotations"]:
        if ann["image_id"] == image_id and not ann["iscrowd"]:
            out.setdefault(names[ann["category_id"]], []).append(xyxy(ann["bbox"]))
    return out


def test_sample_exact_records_and_annotations(sample_out):
    out, output = sample_out
    rows = read_rows(out)
    info = info_of(out)
    assert info["builder"] == "grit" and info["dataset"] == "grit"
    assert info["splits"]["train"]["tasks"]["grounded_caption"] == 50  # every sample caption names a COCO object
    assert info["rejects"]["rows"] == 0
    assert info["stats"]["captions_read"] == 50 and info["stats"]["images_read"] == 50
    assert "read: caption-image pairs 50, captions 50, images 50" in output

    # image 102: "a yellow car and two balls in a sandy beach": a chunk with two boxes, "a sandy beach" ungrounded,
    # "a yellow car" has a conjunct so it is not expanded
    caption = "a yellow car and two balls in a sandy beach"
    boxes = sample_boxes(102)
    car, balls = boxes["car"][0], boxes["sports ball"]
    by_task = {(r["task"], r["caption"]): r for r in rows if r["image_id"] == "102"}
    assert sorted(by_task) == [("grounded_caption", caption), ("rec", "a yellow car"), ("rec", "two balls")]
    gc = by_task["grounded_caption", caption]
    assert gc["prompt"] == f"<CAPTION_TO_PHRASE_GROUNDING>{caption}"
    assert gc["target"] == ("a yellow car" + loc(car, SAMPLE_W, SAMPLE_H)
                            + "two balls" + "".join(loc(b, SAMPLE_W, SAMPLE_H) for b in balls))
    assert [(o["label"], o["bbox"], o["score"], o["span"]) for o in gc["objects"]] == [
        ("a yellow car", car, 1.0, [0, 12]), ("two balls", balls[0], 1.0, [17, 26]),
        ("two balls", balls[1], 1.0, [17, 26])]
    assert (gc["format"], gc["split"], gc["dataset"], gc["width"], gc["height"]) == (
        "florence2", "train", "grit", SAMPLE_W, SAMPLE_H)
    meta = json.loads(gc["meta"])
    assert (meta["builder"], meta["grounder"], meta["file_name"], meta["template"]) == (
        "grit", "annotations", "000000000102.jpg", "grounded_caption/florence2/0")
    rec = by_task["rec", "two balls"]
    assert rec["prompt"] == "<OPEN_VOCABULARY_DETECTION>two balls"
    assert rec["target"] == "two balls" + "".join(loc(b, SAMPLE_W, SAMPLE_H) for b in balls)
    assert [(o["label"], o["span"]) for o in rec["objects"]] == [("two balls", [0, 9])] * 2
    assert json.loads(rec["meta"])["span"] == [17, 26] and json.loads(rec["meta"])["caption"] == caption

    # image 101: the expression expands over its prepositional phrase and inherits the cup's box
    cup = sample_boxes(101)["cup"][0]
    got = {(r["task"], r["caption"], r["target"]) for r in rows if r["image_id"] == "101"}
    expr = "a yellow cup in a gray street"
    assert got == {("grounded_caption", expr, "a yellow cup" + loc(cup, SAMPLE_W, SAMPLE_H)),
                   ("rec", expr, expr + loc(cup, SAMPLE_W, SAMPLE_H))}

    annotations = {r["image_id"]: r for r in read_rows(out, "annotations")}
    assert len(annotations) == 50
    assert annotations["102"]["noun_chunks"] == [normalised(0, 12, car, SAMPLE_W, SAMPLE_H)] + [
        normalised(17, 26, b, SAMPLE_W, SAMPLE_H) for b in balls]
    assert annotations["102"]["ref_exps"] == annotations["102"]["noun_chunks"]
    assert annotations["101"]["ref_exps"] == [normalised(0, 29, cup, SAMPLE_W, SAMPLE_H)]
    assert [annotations["102"][k] for k in ("caption", "width", "height", "url", "file_name")] == [
        caption, SAMPLE_W, SAMPLE_H, None, "000000000102.jpg"]
    # one rec record per distinct expression span of each annotation row
    n_exps = sum(len({(e[0], e[1]) for e in a["ref_exps"]}) for a in annotations.values())
    assert info["splits"]["train"]["tasks"]["rec"] == n_exps
    assert info["tables"]["annotations"]["rows"] == 50
    assert [f["file"] for f in info["tables"]["annotations"]["files"]] == ["annotations/train-00000-of-00001.parquet"]
    card = (out / "README.md").read_text()
    assert "- config_name: annotations\n  data_files:\n  - split: train\n    path: annotations/train-*" in card
    run_cli(["validate", out])


def test_annotation_rows_read_back_as_grit20m(sample_out, tmp_path):
    """The annotations/ output is valid --grit20m input: rendering it again gives the same records."""
    from groundforge.transforms.grit import parse_grit_row

    out, _ = sample_out
    rows = read_rows(out, "annotations")
    for row in rows:
        parsed = parse_grit_row(row)
        assert parsed.noun_chunks and all(o["label"] == row["caption"][o["span"][0]:o["span"][1]]
                                          for o in parsed.noun_chunks + parsed.ref_exps)
    assert all(r["file_name"] == f"{int(r['image_id']):012d}.jpg" for r in rows)
    from groundforge.pipeline.sample import SAMPLE_DIR

    again, _ = build(tmp_path, ["--grit20m", out / "annotations" / "*.parquet", "--images", SAMPLE_DIR / "images"],
                     "again")
    strip = lambda rs: sorted((r["image_id"], r["task"], r["caption"], r["prompt"], r["target"]) for r in rs)
    assert strip(read_rows(again)) == strip(read_rows(out))


# ---------------------------------------------------------------------------------------------------------
# a tiny random-weight OWLv2 through RunInference on CPU


@pytest.fixture(scope="module")
def owl(tmp_path_factory):
    from helpers import make_owlv2

    return make_owlv2(tmp_path_factory.mktemp("owl"))


CAPTIONS = [("0.jpg", 64, 64, "a dog on a red couch"), ("1.jpg", 80, 40, "two cats and a remote on a red couch"),
            ("2.jpg", 48, 64, "a man in a field of flowers")]


def write_images(directory, specs):
    directory.mkdir(parents=True, exist_ok=True)
    for name, w, h, _ in specs:
        (directory / name).write_bytes(jpeg_bytes(w, h))


def check_detector_records(out, sizes: dict):
    """Every box is one of OWLv2's (clipped) patch-grid prior boxes of its image, annotation rows are the boxes
    normalised, and each record's objects are the chunks / expression that were grounded."""
    from groundforge.transforms.boxes import clip
    from helpers import grid_boxes

    rows = read_rows(out)
    assert {r["image_id"] for r in rows if r["task"] == "grounded_caption"} == set(sizes)
    for r in rows:
        w, h = sizes[r["image_id"]]
        grid = [clip(b, w, h) for b in grid_boxes(w, h)]
        for o in r["objects"]:
            assert any(all(abs(a - b) < 0.05 for a, b in zip(o["bbox"], g)) for g in grid), o
            assert 0.0 < o["score"] <= 1.0
        if r["task"] == "grounded_caption":
            assert all(r["caption"][o["span"][0]:o["span"][1]] == o["label"] for o in r["objects"])
            assert json.loads(r["meta"])["grounder"] == "detector"
    for a in read_rows(out, "annotations"):
        w, h = sizes[a["image_id"]]
        gc = next(r for r in rows if r["image_id"] == a["image_id"] and r["task"] == "grounded_caption")
        assert [[e[0], e[1]] for e in a["noun_chunks"]] == [o["span"] for o in gc["objects"]]
        for e, o in zip(a["noun_chunks"], gc["objects"]):
            assert e[2:6] == pytest.approx([o["bbox"][0] / w, o["bbox"][1] / h, o["bbox"][2] / w, o["bbox"][3] / h],
                                           abs=1e-6)
    return rows


def test_detector_grounder_csv_captions_end_to_end(owl, tmp_path):
    images = tmp_path / "images"
    write_images(images, CAPTIONS)
    (images / "bad.jpg").write_bytes(b"this is not an image")
    with open(tmp_path / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "caption", "image"])
        writer.writerows([[f"https://x/{n}", c, n] for n, _, _, c in CAPTIONS])
        writer.writerow(["https://x/bad", "a dog", "bad.jpg"])
        writer.writerow(["https://x/none", "a cat", "missing.jpg"])
        writer.writerow(["https://x/up", "a cat", "../escape.jpg"])
    out, result = build(tmp_path, ["--captions", tmp_path / "captions.csv", "--images", images, "--grounder",
                                   "detector", "--model", owl, "--device", "cpu", "--batch-size", "2",
                                   "--score-threshold", "0"])
    rows = check_detector_records(out, {n: (w, h) for n, w, h, _ in CAPTIONS})
    csv_path = str(tmp_path / "captions.csv")
    assert rejects_of(out) == [(f"{csv_path}#3", "image", "undecodable_image"),
                               (f"{csv_path}#4", "image", "missing_image"),
                               (f"{csv_path}#5", "image", "path_traversal")]
    # "a field of flowers" lies inside "a man in a field of flowers": only the full expression is a rec record
    recs = {r["caption"] for r in rows if r["task"] == "rec" and r["image_id"] == "2.jpg"}
    assert recs <= {"a man in a field of flowers"} and recs
    meta = json.loads(next(r["meta"] for r in rows if r["image_id"] == "0.jpg"))
    assert (meta["url"], meta["model"], meta["grounder"]) == ("https://x/0.jpg", owl.name, "detector")  # a local checkpoint by name: no absolute path in records
    stats = info_of(out)["stats"]
    assert stats["captions_read"] == 6 and stats["images_read"] == 3
    # the grid spans the padded square: 80x40 has 2 rows of 4 boxes below the image, 48x64 one column right of it
    assert stats["dropped_outside_image"] == 2 * 4 + 4
    assert "dropped outside image: 12" in result.output
    assert info_of(out)["args"]["score_threshold"] == 0.0 and info_of(out)["args"]["grounder"] == "detector"


def test_detector_failures_become_ground_rejects(owl, tmp_path, monkeypatch):
    from groundforge.pipeline.handlers import detector

    def out_of_memory(self, inputs, queries, sizes, groups):
        raise RuntimeError(f"CUDA out of memory with {len(queries)} images")

    monkeypatch.setattr(detector.LoadedDetector, "_run", out_of_memory)  # in-memory runner: same process
    images = tmp_path / "images"
    write_images(images, CAPTIONS[:2])
    rows = [{"caption": c, "image": {"bytes": (images / n).read_bytes(), "path": None}} for n, _, _, c in CAPTIONS[:2]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "caps.parquet")
    out, result = build(tmp_path, ["--captions", tmp_path / "caps.parquet", "--grounder", "detector", "--model", owl,
                                   "--device", "cpu", "--batch-size", "2"], expect_exit=1)
    got = read_rows(out, "rejects")
    assert sorted((r["source"], r["stage"], r["reason"], r["detail"]) for r in got) == [
        (f"{tmp_path / 'caps.parquet'}#{i}", "ground", "out_of_memory",
         "RuntimeError: RuntimeError('CUDA out of memory with 2 images')") for i in (0, 1)]
    assert "ground/out_of_memory: 2" in result.output and "no records were written" in result.output


def test_dataflow_translation_puts_the_gpu_hint_on_the_grounding_stage(owl, tmp_path, monkeypatch):
    pytest.importorskip("apache_beam.io.gcp.gcsio")  # apache-beam[gcp]
    from apache_beam.options.pipeline_options import GoogleCloudOptions, WorkerOptions
    from apache_beam.portability.api import beam_runner_api_pb2
    from apache_beam.runners.dataflow import dataflow_runner

    captured = {}
    original = dataflow_runner.DataflowRunner.run_pipeline

    def spy(self, pipeline, options, pipeline_proto=None):
        result = original(self, pipeline, options, pipeline_proto)
        captured["proto"], captured["job"] = self.proto_pipeline, result.job
        return result

    monkeypatch.setattr(dataflow_runner.DataflowRunner, "run_pipeline", spy)
    images = tmp_path / "images"
    write_images(images, CAPTIONS[:1])
    (tmp_path / "c.jsonl").write_text(json.dumps({"caption": CAPTIONS[0][3], "image": "0.jpg"}) + "\n")
    hint = "type:nvidia-l4;count:1;install-nvidia-driver"
    image = "us-central1-docker.pkg.dev/my-project/repo/groundforge:latest"
    out = tmp_path / "out"
    result = run_cli(["build", "grit", "--captions", tmp_path / "c.jsonl", "--images", images, "--grounder", "detector",
                      "--model", owl, "--accelerator", hint, "--out", out,
                      "--runner", "DataflowRunner", "--project", "my-project", "--region", "us-central1",
                      "--temp_location", "gs://my-bucket/tmp", "--dry_run=True", f"--sdk_container_image={image}",
                      f"--dataflow_service_options=worker_accelerator={hint}", "--machine_type", "g2-standard-8"])
    assert "submitted" in result.output and not (out / "data").exists()
    proto = captured["proto"]
    envs = proto.components.environments
    gpu_envs = {k for k, env in envs.items()
                if env.resource_hints.get("beam:resources:accelerator:v1") == hint.encode()}
    assert len(gpu_envs) == 1
    for env in envs.values():
        assert beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image == image
    placed = {t.unique_name: t.environment_id for t in proto.components.transforms.values() if t.environment_id}
    inference = [n for n in placed if n.startswith("Ground/") and "RunInference" in n]
    assert inference and all(placed[n] in gpu_envs for n in inference)
    in_ground = lambda n: n == "Ground" or n.startswith("Ground/")
    assert not any(placed[n] in gpu_envs for n in placed if not in_ground(n))  # spaCy, reads, writes: no GPU hint
    options = captured["job"].options
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [f"worker_accelerator={hint}"]
    assert options.view_as(WorkerOptions).machine_type == "g2-standard-8"


# ---------------------------------------------------------------------------------------------------------
# inputs


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_webdataset_shards_end_to_end(owl, tmp_path):
    shard = tar_bytes([
        ("000000000.jpg", jpeg_bytes(64, 64)), ("000000000.txt", b"a dog on a red couch\n"),
        ("000000000.json", json.dumps({"key": "000000000", "url": "https://x/0.jpg", "caption": "x"}).encode()),
        ("000000001.txt", b"a cat without its image"),
        ("000000002.jpg", jpeg_bytes(48, 64)), ("000000002.json", json.dumps({"caption": "two cats"}).encode()),
        ("000000003.jpg", jpeg_bytes(64, 64)), ("000000003.txt", b"a dog <loc_12> on a couch"),
    ])
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "00000.tar").write_bytes(shard)
    (tmp_path / "shards" / "00001.tar").write_bytes(shard[:700])  # broken off inside the first image
    out, _ = build(tmp_path, ["--webdataset", tmp_path / "shards" / "*.tar", "--grounder", "detector", "--model", owl,
                              "--device", "cpu", "--score-threshold", "0"])
    rows = check_detector_records(out, {"000000000": (64, 64), "000000002": (48, 64)})
    gc = {r["image_id"]: r["caption"] for r in rows if r["task"] == "grounded_caption"}
    assert gc == {"000000000": "a dog on a red couch", "000000002": "two cats"}  # .txt wins, else json caption
    assert json.loads(next(r["meta"] for r in rows if r["image_id"] == "000000000"))["url"] == "https://x/0.jpg"
    s0, s1 = tmp_path / "shards" / "00000.tar", tmp_path / "shards" / "00001.tar"
    assert rejects_of(out) == [(f"{s0}#000000001", "read", "missing_image"),
                               (f"{s0}#000000003", "text", "control_tokens"),
                               (str(s1), "read", "unreadable_file")]


def test_webdataset_reader_gives_one_row_per_sample(tmp_path, monkeypatch):
    """An oversized member rejects its sample once (not the member and then the sample's missing image); a
    shard that breaks off inside a sample ends with the file reject only, not a half-read sample."""
    from groundforge.pipeline.readers import captions

    monkeypatch.setattr(captions, "MAX_MEMBER_BYTES", 1000)
    shard = tar_bytes([("a.jpg", b"x" * 2000), ("a.txt", b"a dog"), ("b.jpg", b"y" * 10), ("b.txt", b"a cat")])
    # headers and data are padded to 512 bytes: a.jpg 0-2560, a.txt 2560-3584, b.jpg 3584-4608, b.txt from 4608
    (tmp_path / "whole.tar").write_bytes(shard)
    (tmp_path / "cut.tar").write_bytes(shard[:5122])  # inside b.txt's data: b.jpg was read, its caption not
    whole = reader_pairs(captions.read_webdataset(str(tmp_path / "whole.tar")))
    assert [kind for kind, _ in whole] == ["reject", "item"]
    assert whole[0][1] == {"source": f"{tmp_path / 'whole.tar'}#a", "stage": "read", "reason": "member_too_large",
                           "detail": "a.jpg: 2000 bytes"}
    assert (whole[1][1]["caption"], whole[1][1]["image_bytes"]) == ("a cat", b"y" * 10)
    cut = reader_pairs(captions.read_webdataset(str(tmp_path / "cut.tar")))
    assert [(kind, row["source"], row["reason"]) for kind, row in cut] == [
        ("reject", f"{tmp_path / 'cut.tar'}#a", "member_too_large"),
        ("reject", str(tmp_path / "cut.tar"), "unreadable_file")]
    # cut inside b.jpg's header, which tarfile itself takes for the end of the archive: sample a, still open
    # (more of its members could have followed), goes with the file
    (tmp_path / "header.tar").write_bytes(shard[:3684])
    assert reader_pairs(captions.read_webdataset(str(tmp_path / "header.tar"))) == [
        ("reject", {"source": str(tmp_path / "header.tar"), "stage": "read", "reason": "unreadable_file",
                    "detail": "ReadError: the archive ends without its end-of-archive block (cut short)"})]


def test_coco_reader_rejects_bad_instance_boxes_and_keys_captions_without_id(tmp_path):
    """A malformed instances box is one `annotation` reject (it used to fail the whole captions file, or the
    run); captions without an id get distinct keys (they used to share one record id)."""
    from groundforge.pipeline.builders.grit.plan import Source
    from groundforge.pipeline.builders.grit.read import ReadCaptionsFn
    from groundforge.pipeline.emit import REJECTS, STATS

    instances = {"categories": [{"id": 1, "name": "dog"}], "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 30], "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": ["a", 1, 2, 3], "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 1, "bbox": None, "iscrowd": 0},
        {"id": 13, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        {"id": 14, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1}]}  # crowd: not an object
    caps = {"images": [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48}], "annotations": [
        {"image_id": 1, "caption": "a dog"}, {"image_id": 1, "caption": "a brown dog"}, {"image_id": 1}]}
    (tmp_path / "i.json").write_text(json.dumps(instances))
    (tmp_path / "c.json").write_text(json.dumps(caps))
    fn = ReadCaptionsFn(Source("coco", (), None))
    out = {"items": [], REJECTS: [], STATS: []}
    for value in fn.process((str(tmp_path / "c.json"), str(tmp_path / "i.json"))):
        tag = getattr(value, "tag", "items")
        out[tag].append(getattr(value, "value", value))
    assert [(r["source"], r["stage"], r["reason"], r["detail"]) for r in out[REJECTS]] == [
        ("annotation:11", "annotation", "bad_box", "bbox=['a', 1, 2, 3]"),
        ("annotation:12", "annotation", "bad_box", "bbox=None"),
        ("annotation:13", "annotation", "unknown_category", "category_id=9"),
        (f"{tmp_path / 'c.json'}#2", "read", "missing_field", "caption annotation without a caption")]
    assert out[STATS] == [("captions_read", 1)] * 3  # the instance boxes are not captions
    assert [(it["source"], it["key"], it["annotations"]) for it in out["items"]] == [
        ("caption:#0:1.jpg", "coco:#0\x1f1", [("dog", [4.0, 4.0, 24.0, 34.0])]),
        ("caption:#1:1.jpg", "coco:#1\x1f1", [("dog", [4.0, 4.0, 24.0, 34.0])])]
    (tmp_path / "i.json").write_text("{not json")  # the reject names the instances file, not only the captions
    [bad] = fn.process((str(tmp_path / "c.json"), str(tmp_path / "i.json")))
    assert (bad.value["source"], bad.value["reason"], bad.value["detail"]) == (
        str(tmp_path / "c.json"), "malformed_json", f"{tmp_path / 'i.json'}: Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1)")


def test_text_stage_failures_become_text_rejects(tmp_path, monkeypatch):
    """A spaCy batch that raises becomes one `text` reject per caption (RunInference's dead letters, through
    pipeline.detect.dlq_to_rejects); the other batches go on to records."""
    from groundforge.pipeline.handlers.spacy import SpacyHandler

    original = SpacyHandler.run_inference

    def flaky(self, batch, model, inference_args=None):
        if any("exploding" in item["caption"] for item in batch):
            raise RuntimeError("parser crashed")
        return original(self, batch, model, inference_args)

    monkeypatch.setattr(SpacyHandler, "run_inference", flaky)  # in-memory runner: same process
    images = [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48}]
    instances = write_coco(tmp_path, [dict(i) for i in images],
                           [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 30], "iscrowd": 0}])
    (tmp_path / "c.json").write_text(json.dumps({"images": images, "annotations": [
        {"id": 1, "image_id": 1, "caption": "a dog on the grass"},
        {"id": 2, "image_id": 1, "caption": "an exploding dog"}]}))
    out, _ = build(tmp_path, ["--coco-captions", tmp_path / "c.json", "--coco-instances", instances, "--images",
                              tmp_path / "images", "--spacy-batch-size", "1", "--tasks", "grounded_caption"])
    assert [(r["source"], r["stage"], r["reason"], r["detail"]) for r in read_rows(out, "rejects")] == [
        ("caption:2:1.jpg", "text", "inference_error", "RuntimeError: RuntimeError('parser crashed')")]
    assert [r["caption"] for r in read_rows(out)] == ["a dog on the grass"]


def test_parquet_tables_read_only_the_needed_columns(tmp_path):
    from groundforge.pipeline.readers.captions import (
        iter_table_rows,
        read_caption_table,
    )

    row = {"caption": "a dog", "image": "x.jpg", "url": "https://x", "clip_embedding": [0.5] * 8}
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "c.parquet")
    assert list(iter_table_rows(str(tmp_path / "c.parquet"), ["image", "caption", "absent"])) == [
        {"caption": "a dog", "image": "x.jpg"}]
    [(_, item)] = reader_pairs(read_caption_table(str(tmp_path / "c.parquet"), caption_column="caption",
                                                image_column="image"))
    assert (item["caption"], item["file_name"], item["meta"]) == ("a dog", "x.jpg", {"url": "https://x"})


def test_caption_table_readers_jsonl_parquet_csv(tmp_path):
    from groundforge.pipeline.readers.captions import (
        check_caption_columns,
        read_caption_table,
    )
    from groundforge.pipeline.readers.common import ReaderError

    data = jpeg_bytes(8, 6)
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"text": " a dog ", "img": "a/b.jpg", "image_id": 7}) + "\n{not json\n\n"
        + json.dumps({"text": "a cat", "img": None}) + "\n")
    items = reader_pairs(read_caption_table(str(tmp_path / "c.jsonl"), caption_column="text", image_column="img"))
    src = str(tmp_path / "c.jsonl")
    assert [k for k, _ in items] == ["item", "reject", "reject"]
    item = items[0][1]
    assert (item["caption"], item["file_name"], item["image_bytes"], item["image_id"], item["source"]) == (
        "a dog", "a/b.jpg", None, "7", f"{src}#0")
    assert items[1][1]["reason"] == "bad_json" and items[1][1]["source"] == f"{src}#1"
    assert items[2][1] == {"source": f"{src}#2", "stage": "read", "reason": "missing_image",
                           "detail": "column 'img' has no path or bytes"}

    pq.write_table(pa.Table.from_pylist([  # Hugging Face Image structs: bytes win over the path
        {"caption": "a dog", "image": {"bytes": data, "path": "x.jpg"}},
        {"caption": "a dog", "image": {"bytes": None, "path": "y.jpg"}}]), tmp_path / "c.parquet")
    pq.write_table(pa.Table.from_pylist([{"caption": "a cat", "image": data}]), tmp_path / "raw.parquet")
    (_, first), (_, second) = reader_pairs(read_caption_table(str(tmp_path / "c.parquet"), caption_column="caption",
                                                              image_column="image"))
    assert (first["image_bytes"], first["file_name"], first["image_id"]) == (data, None, "x.jpg")
    assert (second["image_bytes"], second["file_name"], second["image_id"]) == (None, "y.jpg", "y.jpg")
    [(_, raw)] = reader_pairs(read_caption_table(str(tmp_path / "raw.parquet"), caption_column="caption",
                                               image_column="image"))
    assert (raw["image_bytes"], raw["image_id"]) == (data, hashlib.sha256(data).hexdigest()[:16])
    assert first["key"] != second["key"] and raw["key"] == f"sha256:{hashlib.sha256(data).hexdigest()}\x1fa cat"

    (tmp_path / "c.csv").write_text("caption,path\na dog,x.jpg\n")
    (tmp_path / "bom.csv").write_bytes("\ufeffcaption,image\na cat,y.jpg\n".encode())
    [(kind, item)] = reader_pairs(read_caption_table(str(tmp_path / "bom.csv"), caption_column="caption",
                                                    image_column="image"))
    assert (kind, item["caption"], item["file_name"]) == ("item", "a cat", "y.jpg")  # no BOM in the header
    with pytest.raises(ReaderError, match="no column 'image'"):
        check_caption_columns(str(tmp_path / "c.csv"), "caption", "image")
    [(kind, item)] = reader_pairs(read_caption_table(str(tmp_path / "c.csv"), caption_column="caption",
                                                    image_column="path"))
    assert (kind, item["caption"], item["file_name"]) == ("item", "a dog", "x.jpg")


def test_caption_jsonl_with_bom_and_a_line_not_utf8(tmp_path):
    """The shared table reader (pipeline.readers.tables): the BOM line is read, a line that is not UTF-8 is one
    `bad_json` reject and the lines after it are still read."""
    from groundforge.pipeline.readers.captions import read_caption_table

    path = tmp_path / "c.jsonl"
    path.write_bytes("\ufeff".encode() + json.dumps({"caption": "a dog", "image": "a.jpg"}).encode() + b"\n"
                     + b'{"caption": "caf\xe9", "image": "b.jpg"}\n'  # latin-1, not UTF-8
                     + json.dumps({"caption": "a cat", "image": "c.jpg"}).encode() + b"\n")
    items = reader_pairs(read_caption_table(str(path), caption_column="caption", image_column="image"))
    assert [(kind, row.get("caption", row.get("reason"))) for kind, row in items] == [
        ("item", "a dog"), ("reject", "bad_json"), ("item", "a cat")]
    assert items[1][1] == {"source": f"{path}#1", "stage": "read", "reason": "bad_json",
                           "detail": "'utf-8' codec can't decode byte 0xe9 in position 16: invalid continuation "
                                     "byte: '{\"caption\": \"caf\ufffd\", \"image\": \"b.jpg\"}'"}


def test_unreadable_caption_parquet_is_one_file_reject(tmp_path):
    from groundforge.pipeline.builders.grit.plan import Source
    from groundforge.pipeline.builders.grit.read import ReadCaptionsFn
    from groundforge.pipeline.emit import REJECTS

    path = tmp_path / "c.parquet"
    path.write_bytes(b"PAR1 truncated")
    [bad] = ReadCaptionsFn(Source("captions", (), None)).process(str(path))
    assert bad.tag == REJECTS
    assert (bad.value["source"], bad.value["reason"]) == (str(path), "unreadable_file")
    assert bad.value["detail"].startswith(f"ReaderError: {path}: not a readable Parquet file (ArrowInvalid: ")


def grit_entry(start, end, box, w, h, score=0.9):
    return [start, end, box[0] / w, box[1] / h, box[2] / w, box[3] / h, score]


def test_grit20m_rows_skip_spacy_and_render(tmp_path, monkeypatch):
    from groundforge.transforms import nounphrases

    def no_spacy(*args, **kwargs):
        raise AssertionError("GRIT-20M input must not load spaCy")

    monkeypatch.setattr(nounphrases, "load_spacy", no_spacy)
    images = tmp_path / "images"
    (images / "00001").mkdir(parents=True)
    (images / "000000001.jpg").write_bytes(jpeg_bytes(64, 48))
    (images / "00001" / "000010002.jpg").write_bytes(jpeg_bytes(64, 48))  # img2dataset `files` layout, resized
    (images / "000000007.jpg").write_bytes(jpeg_bytes(64, 48))
    cap = "a dog on a red couch"
    dog, couch = [8.0, 8.0, 32.0, 40.0], [0.0, 24.0, 64.0, 48.0]
    ok = {"key": "000000001", "url": "https://x/1.jpg", "caption": cap, "width": 64, "height": 48,
          "noun_chunks": [grit_entry(0, 5, dog, 64, 48), grit_entry(9, 20, couch, 64, 48, 0.7)],
          "ref_exps": [grit_entry(0, 20, dog, 64, 48)]}
    resized = {**ok, "key": "000010002", "url": "https://x/2.jpg", "width": 128, "height": 96}
    rows = [ok, resized,
            {**ok, "key": "000000003", "url": "https://x/3.jpg"},                           # image not downloaded
            {**ok, "key": "000000004", "noun_chunks": [[0, 99, 0.1, 0.1, 0.2, 0.2, 0.9]]},   # span past the caption
            {**ok, "key": "000000005", "caption": "a dog <patch_index_0001> couch."},
            {**ok, "key": "000000006", "caption": "", "noun_chunks": [], "ref_exps": []},
            {**ok, "key": "000000007", "width": 100, "height": 100}]                         # aspect ratio changed
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "grit.parquet")
    out, result = build(tmp_path, ["--grit20m", tmp_path / "grit.parquet", "--images", images])
    src = str(tmp_path / "grit.parquet")
    assert rejects_of(out) == [(f"{src}#2", "image", "missing_image"), (f"{src}#3", "read", "bad_span"),
                               (f"{src}#4", "text", "control_tokens"), (f"{src}#5", "text", "empty_caption"),
                               (f"{src}#6", "image", "size_mismatch")]
    records = read_rows(out)
    assert sorted((r["image_id"], r["task"]) for r in records) == [
        ("000000001", "grounded_caption"), ("000000001", "rec"), ("000010002", "grounded_caption"),
        ("000010002", "rec")]
    for r in records:  # the resized image's boxes scale with it: both render the same
        if r["task"] == "grounded_caption":
            assert r["target"] == "a dog" + loc(dog, 64, 48) + "a red couch" + loc(couch, 64, 48)
            assert [(o["label"], o["bbox"], o["span"]) for o in r["objects"]] == [
                ("a dog", dog, [0, 5]), ("a red couch", couch, [9, 20])]
            assert [o["score"] for o in r["objects"]] == pytest.approx([0.9, 0.7])
        else:
            assert (r["prompt"], r["target"]) == (f"<OPEN_VOCABULARY_DETECTION>{cap}", cap + loc(dog, 64, 48))
        assert json.loads(r["meta"])["grounder"] == "grit20m"
    annotations = {a["image_id"]: a for a in read_rows(out, "annotations")}
    assert [annotations["000010002"][k] for k in ("width", "url", "file_name")] == [
        64, "https://x/2.jpg", "00001/000010002.jpg"]
    assert annotations["000000001"]["file_name"] == "000000001.jpg"
    for got, want in zip(annotations["000010002"]["noun_chunks"], ok["noun_chunks"], strict=True):
        assert got == pytest.approx(want)  # normalised boxes do not change with the image size
    stats = info_of(out)["stats"]
    assert (stats["captions_read"], stats["images_read"], stats["images_resized"]) == (7, 3, 1)
    assert "images resized: 1" in result.output


# ---------------------------------------------------------------------------------------------------------
# concept balancing, text rejects, --exclude-images


def test_balance_concepts_matches_the_reference_selection(tmp_path):
    from groundforge.pipeline.readers.captions import read_coco_captions
    from groundforge.transforms.grit import balance_concepts
    from groundforge.transforms.nounphrases import extract, load_spacy

    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in (1, 2, 3, 4)]
    animals = [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "couch"}]
    anns = [{"id": 10 * i + c, "image_id": i, "category_id": c, "bbox": [4.0 + 8 * c, 4.0, 12.0, 30.0], "iscrowd": 0}
            for i in (1, 2, 3, 4) for c in (1, 2, 3)]  # unique annotation ids, as in COCO
    instances = write_coco(tmp_path, [dict(i) for i in images], anns, animals)
    texts = (["a dog on a couch"] * 2 + ["a brown dog"] * 6 + ["a cat near a dog"] * 2 + ["a black cat"] * 3
             + ["a red couch", "a cat"])
    captions = [{"id": 100 + k, "image_id": 1 + k % 3, "caption": t} for k, t in enumerate(texts)]
    captions += [{"id": 200, "image_id": 1, "caption": "   "},
                 {"id": 201, "image_id": 2, "caption": "a dog </s> on a couch"},
                 {"id": 202, "image_id": 4, "caption": "a held-out dog"}]
    cap_file = tmp_path / "captions.json"
    cap_file.write_text(json.dumps({"images": images, "annotations": captions}))
    (tmp_path / "holdout.txt").write_text("# held out\n4\n")
    out, result = build(tmp_path, ["--coco-captions", cap_file, "--coco-instances", instances, "--images",
                                   tmp_path / "images", "--balance-concepts", "--balance-max-per-phrase", "2",
                                   "--seed", "5", "--exclude-images", tmp_path / "holdout.txt",
                                   "--tasks", "grounded_caption"])
    assert rejects_of(out) == [("caption:200:1.jpg", "text", "empty_caption"),
                               ("caption:201:2.jpg", "text", "control_tokens")]
    rej = {r["source"]: r["detail"] for r in read_rows(out, "rejects")}
    assert rej["caption:201:2.jpg"] == "</s>"

    # the reference: transforms.grit.balance_concepts over the same keys and spaCy chunks
    coco = json.loads(cap_file.read_text())
    items = [v for kind, v in reader_pairs(read_coco_captions(coco, None, str(cap_file))) if kind == "item"
             and v["caption"].strip() and v["image_id"] != "4" and "</s>" not in v["caption"]]
    phrases = extract([it["caption"] for it in items], load_spacy())
    chosen = set(balance_concepts([(it["key"], [c.text for c in p.chunks]) for it, p in zip(items, phrases)],
                                  max_per_phrase=2, seed=5))
    expected = sorted(it["meta"]["caption_id"] for it in items if it["key"] in chosen)
    got = sorted(json.loads(r["meta"])["caption_id"] for r in read_rows(out))
    assert got == expected
    assert 4 <= len(got) < len(items)  # dog, cat (and couch) give at most 2 each; "red couch" is seen once
    stats = info_of(out)["stats"]
    assert stats["captions_not_selected"] == len(items) - len(got)
    assert stats["excluded_holdout_images"] == 1
    assert f"captions not selected: {len(items) - len(got)}" in result.output


def test_configuration_errors_fail_before_running(tmp_path, owl):
    (tmp_path / "c.csv").write_text("caption,image\na dog,x.jpg\n")
    cases = [
        (["--captions", tmp_path / "c.csv"], "this input has no boxes"),
        (["--captions", tmp_path / "c.csv", "--grounder", "annotations"], "needs COCO boxes"),
        (["--captions", tmp_path / "c.csv", "--grounder", "detector"], "needs --model"),
        (["--captions", tmp_path / "none*.csv", "--grounder", "detector", "--model", owl], "no files match"),
        (["--captions", tmp_path / "c.csv", "--webdataset", "x.tar"], "give one input"),
        (["--grit20m", tmp_path / "c.csv"], "not in the GRIT-20M layout"),
        (["--tasks", "rec,vqa"], "expected a comma list"),
        (["--spacy-model", "no_such_model_xx"], "cannot load spaCy model"),
    ]
    for args, message in cases:
        result = run_cli(["build", "grit", *args, "--out", tmp_path / "o"], expect_exit=None)
        assert result.exit_code != 0 and message in result.output, (args, result.output)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------------------
# the filter stage with injected detector outputs, the text handler


def run_filter(detections, chunks, ref_exps, keep_all_boxes=True, **filters):
    """FilterFn on one item; keep_all_boxes=True by default so these tests see the Kosmos-2 filters alone (the
    singular-phrase rule is tested in test_singular_phrase_keeps_its_best_detector_box)."""
    from apache_beam.pvalue import TaggedOutput
    from groundforge.pipeline.builders.grit.outputs import FilterFn
    from groundforge.pipeline.builders.grit.plan import Settings
    from groundforge.pipeline.writer import expand_group
    from groundforge.transforms.grounding import filter_settings

    settings = Settings("grit", "train", "florence2", 0, ("grounded_caption", "rec"), "detector", "owl",
                        dict(filter_settings(**filters)), frozenset(), 10 ** 8, None, keep_all_boxes)
    caption = "a dog on a red couch near a cat"
    item = {"source": "s#0", "key": "k", "image_id": "7", "caption": caption, "file_name": None, "image": b"jpeg",
            "width": 100, "height": 100, "image_sha256": "0" * 64, "meta": {}, "chunks": chunks,
            "ref_exps": ref_exps, "detections": detections}
    out: dict[str, list] = {"records": [], "stats": [], "annotations": [], "rejects": []}
    for value in FilterFn(settings).process(item):
        if isinstance(value, TaggedOutput):
            out[value.tag].append(value.value)
        else:  # an image group: the pair's records share one image
            out["records"].extend(expand_group(value))
    return out


def chunks_and_exps():
    from groundforge.transforms.nounphrases import Chunk, RefExp

    chunks = [Chunk(0, 5, "a dog", "dog"), Chunk(9, 20, "a red couch", "couch"), Chunk(26, 31, "a cat", "cat")]
    exps = [RefExp(0, 31, "a dog on a red couch near a cat", 0), RefExp(9, 31, "a red couch near a cat", 1),
            RefExp(26, 31, "a cat", 2)]
    return chunks, exps


def test_filters_on_injected_detections_count_every_drop():
    chunks, exps = chunks_and_exps()
    dets = [(0, [10, 10, 40, 40], 0.9),
            (0, [12, 12, 40, 40], 0.8),     # IoU 0.87 with the box above: suppressed
            (1, [11, 11, 41, 41], 0.7),     # another chunk's box on the same object: NMS runs across chunks
            (1, [50, 50, 90, 90], 0.65),    # not above the 0.65 threshold
            (1, [0, 0, 100, 99], 0.99),     # 99 % of the image
            (2, [60, 5, 62, 30], 0.9),      # 2 px wide
            (2, [60, 40, 70, 120], 0.9)]    # clipped to [60, 40, 70, 100], kept
    out = run_filter(dets, chunks, exps)
    assert sorted(out["stats"]) == [("dropped_box_too_large", 1), ("dropped_box_too_small", 1),
                                    ("dropped_nms_suppressed", 2), ("dropped_no_box_left", 1),
                                    ("dropped_score_below_threshold", 1)]
    gc, rec = out["records"]
    assert [(o["label"], o["bbox"], o["score"]) for o in gc["objects"]] == [
        ("a dog", [10.0, 10.0, 40.0, 40.0], 0.9), ("a cat", [60.0, 40.0, 70.0, 100.0], 0.9)]
    assert gc["target"] == "a dog<loc_100><loc_100><loc_400><loc_400>a cat<loc_600><loc_400><loc_700><loc_999>"
    # "a cat" lies inside the dog's expression: only the longest grounded expression is kept
    assert (rec["caption"], [o["bbox"] for o in rec["objects"]]) == (
        "a dog on a red couch near a cat", [[10.0, 10.0, 40.0, 40.0]])
    [row] = out["annotations"]
    assert row["noun_chunks"] == [[0.0, 5.0, 0.1, 0.1, 0.4, 0.4, 0.9], [26.0, 31.0, 0.6, 0.4, 0.7, 1.0, 0.9]]
    # the GRIT-20M row keeps one expression per grounded chunk, nested ones included (as released GRIT-20M does);
    # only the rec records above keep the outermost
    assert row["ref_exps"] == [[0.0, 31.0, 0.1, 0.1, 0.4, 0.4, 0.9], [26.0, 31.0, 0.6, 0.4, 0.7, 1.0, 0.9]]

    # thresholds are flags: with score > 0.6 and no NMS the couch keeps two boxes
    loose = run_filter(dets, chunks, exps, score_threshold=0.6, nms_iou=None)
    couch = [o["bbox"] for o in loose["records"][0]["objects"] if o["label"] == "a red couch"]
    assert couch == [[11.0, 11.0, 41.0, 41.0], [50.0, 50.0, 90.0, 90.0]]


def test_singular_phrase_keeps_its_best_detector_box():
    """Default (no --keep-all-boxes): "a dog" is singular, so of its two boxes only the best stays (counted as
    dropped_singular_extra_box), before NMS."""
    chunks, exps = chunks_and_exps()
    dets = [(0, [10, 10, 40, 40], 0.9), (0, [60, 60, 90, 90], 0.8), (2, [60, 5, 70, 30], 0.9)]
    out = run_filter(dets, chunks, exps, keep_all_boxes=False)
    assert ("dropped_singular_extra_box", 1) in out["stats"]
    gc = out["records"][0]
    assert [(o["label"], o["bbox"]) for o in gc["objects"]] == [("a dog", [10.0, 10.0, 40.0, 40.0]),
                                                               ("a cat", [60.0, 5.0, 70.0, 30.0])]
    both = run_filter(dets, chunks, exps, keep_all_boxes=True)
    assert [o["bbox"] for o in both["records"][0]["objects"] if o["label"] == "a dog"] == [
        [10.0, 10.0, 40.0, 40.0], [60.0, 60.0, 90.0, 90.0]]


def test_expressions_are_reduced_after_grounding():
    chunks, exps = chunks_and_exps()
    # the dog is not grounded, so the couch's expression (inside the dog's) becomes a rec record
    out = run_filter([(1, [50, 50, 90, 90], 0.9), (2, [5, 5, 30, 30], 0.8)], chunks, exps)
    assert [(r["task"], r["caption"]) for r in out["records"]] == [
        ("grounded_caption", "a dog on a red couch near a cat"), ("rec", "a red couch near a cat")]
    assert ("dropped_no_box_left", 1) in out["stats"]
    nothing = run_filter([(0, [10, 10, 40, 40], 0.5)], chunks, exps)
    assert nothing["records"] == [] and nothing["annotations"] == []
    assert sorted(nothing["stats"]) == [("dropped_no_box_left", 3), ("dropped_score_below_threshold", 1),
                                        ("pairs_without_box", 1)]


def test_spacy_handler_batches_and_abstract_nouns():
    from groundforge.pipeline.handlers.spacy import SpacyHandler

    handler = SpacyHandler(batch_size=2, abstract_nouns=["dog"])
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 2}
    assert handler.share_model_across_processes() is False
    nlp = handler.load_model()
    assert "ner" not in nlp.pipe_names
    items = [{"caption": "a dog on a couch with love"}, "a dog"]
    results = handler.run_inference(items, nlp)
    assert [r.example for r in results] == items
    assert [[c.text for c in r.inference.chunks] for r in results] == [["a couch", "love"], []]
    assert handler.get_num_bytes(items) == len("a dog on a couch with love") + len("a dog")
    with pytest.raises(ValueError):
        SpacyHandler(batch_size=0)


def test_florence2_grounder_uses_the_florence_handler_without_remote_code():
    from groundforge.pipeline.builders.grit.ground import make_handler
    from groundforge.pipeline.builders.grit.plan import Grounding
    from groundforge.pipeline.handlers.detector import DetectorHandler
    from groundforge.pipeline.handlers.florence2 import Florence2GroundingHandler

    florence = make_handler("florence2", "some/florence", Grounding(device="cpu", batch_size=3), 0.65)
    assert isinstance(florence, Florence2GroundingHandler) and florence.trust_remote_code is False
    assert florence.batch_elements_kwargs() == {"min_batch_size": 3, "max_batch_size": 3}
    detector = make_handler("detector", "some/owl", Grounding(device="cpu", trust_remote_code=True), 0.65)
    assert isinstance(detector, DetectorHandler) and detector.trust_remote_code is True
    assert detector._min_score == 0.65  # the handler drops what the filter would drop anyway


def test_validate_checks_the_annotations_table(sample_out, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sample_out[0], copy)
    table = copy / "annotations" / "train-00000-of-00001.parquet"
    table.write_bytes(table.read_bytes()[:-8])
    (copy / "annotations" / "stray.parquet").write_bytes(b"x")
    result = run_cli(["validate", copy], expect_exit=1)
    assert "annotations/train-00000-of-00001.parquet: sha256 differs from dataset_info.json" in result.output
    assert "annotations/stray.parquet: not listed in dataset_info.json" in result.output
