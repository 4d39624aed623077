"""GRIT grounding per image, not per caption: caption items grouped by image, one image load and one detector
forward per image (the union of its captions' chunk texts, fanned back per caption), Florence-2 per caption on
the image decoded once; COCO captions the instances file does not cover; image preprocessing before batching."""
from __future__ import annotations

import json

import pytest
from helpers import (
    build_cli,
    info_of,
    jpeg_bytes,
    make_florence2,
    make_grounding_dino,
    make_owlv2,
    read_rows,
    write_multi_caption_coco,
)

CAPTIONS_139 = ["Two dogs and a man in a park.", "A man plays with two dogs on the grass.",
                "two dogs run next to a person", "A person with his dogs.", "The dogs chase a man."]


@pytest.fixture(scope="module")
def owl(tmp_path_factory):
    return make_owlv2(tmp_path_factory.mktemp("owl"))


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_multi_caption_coco(tmp_path_factory.mktemp("coco"))


def test_detector_runs_one_forward_per_image_and_rejects_fan_out(owl, coco, tmp_path):
    captions, _, images = coco
    out, result = build_cli("grit", tmp_path, ["--coco-captions", captions, "--images", images, "--grounder",
                                               "detector", "--model", owl, "--device", "cpu", "--batch-size", "2",
                                               "--score-threshold", "0"])
    stats = info_of(out)["stats"]
    # 19 captions, 1 without a noun chunk; 18 pairs on 5 images: 724's file is missing (3 captions), 776's size is
    # not the annotation's (its 2 captions with chunks); 139, 285 and 632 are loaded and grounded once each
    assert (stats["captions_read"], stats["caption-image_pairs_read"], stats["images_read"]) == (19, 15, 4)
    assert stats["grounding_forwards"] == 3
    assert "read: caption-image pairs 15, captions 19, images 4" in result.output
    rejects = sorted((r["source"].split(":")[2], r["stage"], r["reason"]) for r in read_rows(out, "rejects"))
    assert rejects == [("000000000724.jpg", "image", "missing_image")] * 3 + [
        ("000000000776.jpg", "image", "size_mismatch")] * 2  # one reject per caption of the image
    grounded = {r["caption"] for r in read_rows(out) if r["task"] == "grounded_caption"}
    assert set(CAPTIONS_139) <= grounded  # every caption of the image got its own record from the one forward


def test_grouped_forward_gives_each_caption_its_own_forward_boxes(owl):
    """The oracle is the per-caption forward (LoadedDetector.detect with only that caption's deduplicated
    phrases, the path every caption took before): the one grouped forward, fanned back, gives each caption the
    same detections (labels exactly, boxes and scores to float tolerance)."""
    from groundforge.pipeline.builders.grit.ground import caption_query_groups
    from groundforge.pipeline.handlers.detector import (
        LoadedDetector,
        image_inputs,
        image_processor_for,
    )
    from groundforge.transforms.grounding import (
        detections_from_output,
        detector_queries,
        fan_out,
        image_queries,
    )
    from groundforge.transforms.images import decode_image

    chunk_texts = [["Two dogs", "a man", "a park"], ["A man", "two dogs", "the grass"], ["two dogs", "a person"],
                   ["A person", "his dogs"], ["The dogs", "a man"]]
    image = decode_image(jpeg_bytes(96, 64)).convert("RGB")
    model = LoadedDetector(str(owl), device="cpu")
    queries = image_queries(chunk_texts)
    groups = caption_query_groups(queries)
    processor, _ = image_processor_for(str(owl), False, True)
    [grouped] = model.detect_tensors([image_inputs(processor, image)], [(64, 96)], [queries.texts], [groups])
    for c, texts in enumerate(chunk_texts):
        q = detector_queries(texts)
        [single] = model.detect([image], [q.texts])
        want = detections_from_output(*single, q)
        got = fan_out([(label, box, score) for box, score, label in zip(*grouped[c])], queries)[c]
        assert [d.chunk for d in got] == [d.chunk for d in want]
        assert [v for d in got for v in d.box] == pytest.approx([v for d in want for v in d.box], abs=1e-4)
        assert [d.score for d in got] == pytest.approx([d.score for d in want], abs=1e-5)


def test_failed_forward_rejects_every_caption_of_the_image(owl, coco, tmp_path, monkeypatch):
    from groundforge.pipeline.handlers import detector

    def out_of_memory(self, inputs, queries, sizes, groups):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(detector.LoadedDetector, "_run", out_of_memory)  # in-memory runner: same process
    captions, _, images = coco
    out, result = build_cli("grit", tmp_path, ["--coco-captions", captions, "--images", images, "--grounder",
                                               "detector", "--model", owl, "--device", "cpu"], expect_exit=1)
    ground = [r for r in read_rows(out, "rejects") if r["stage"] == "ground"]
    assert sorted(r["source"].split(":")[2] for r in ground) == (
        ["000000000139.jpg"] * 5 + ["000000000285.jpg"] * 5 + ["000000000632.jpg"] * 3)
    assert {r["reason"] for r in ground} == {"out_of_memory"}
    assert "ground/out_of_memory: 13" in result.output


def test_captions_without_instances_have_their_own_count(coco, tmp_path):
    """Image 632 is captioned but not in the instances file: its captions are `captions_without_instances`, no
    longer `pairs_without_box` (which is left for pairs whose boxes were all filtered away)."""
    captions, instances, images = coco
    out, result = build_cli("grit", tmp_path, ["--coco-captions", captions, "--coco-instances", instances,
                                               "--images", images])
    stats = info_of(out)["stats"]
    assert stats["captions_without_instances"] == 3 and "pairs_without_box" not in stats
    assert "captions without instances: 3" in result.output
    assert not any(r["image_id"] == "632" for r in read_rows(out))


def test_coco_reader_tells_uncovered_images_from_images_without_boxes():
    from groundforge.pipeline.readers.captions import read_coco_captions

    captions = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in (1, 2, 3)],
                "annotations": [{"id": 10 + i, "image_id": i, "caption": "a dog"} for i in (1, 2, 3)]}
    instances = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "dog"}],
                 "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0}]}
    items = [it for it in read_coco_captions(captions, instances, "c.json") if isinstance(it, dict)]
    assert [(it["image_id"], it["annotations"]) for it in items] == [
        ("1", [("dog", [1.0, 2.0, 4.0, 6.0])]), ("2", []), ("3", None)]
    no_list = {**instances, "images": None}  # without an images list, the annotations name the covered images
    items = [it for it in read_coco_captions(captions, no_list, "c.json") if isinstance(it, dict)]
    assert [it["annotations"] is None for it in items] == [False, True, True]


def test_florence2_decodes_each_image_once_and_grounds_each_caption(coco, tmp_path):
    captions, _, images = coco
    model = make_florence2(tmp_path / "f2", answer="a dog<loc_100><loc_200><loc_500><loc_900>")
    out, _ = build_cli("grit", tmp_path, ["--coco-captions", captions, "--images", images, "--grounder",
                                          "florence2", "--model", model, "--device", "cpu", "--batch-size", "2"])
    stats = info_of(out)["stats"]
    assert (stats["images_read"], stats["grounding_forwards"]) == (4, 13)  # 3 images, 13 captions: one each
    rows = [r for r in read_rows(out) if r["task"] == "grounded_caption"]
    assert sorted(r["caption"] for r in rows) == ["A dog sleeping.", "A dog.", "a dog on a bed"]
    assert all(json.loads(r["meta"])["grounder"] == "florence2" for r in rows)


def test_florence2_caption_group_equals_single_elements(tmp_path):
    from groundforge.pipeline.handlers.florence2 import Florence2GroundingHandler

    model_dir = str(make_florence2(tmp_path, answer="a dog<loc_100><loc_200><loc_500><loc_900>"))
    handler = Florence2GroundingHandler(model_dir, device="cpu", batch_size=2, max_new_tokens=16, num_beams=2)
    loaded = handler.load_model()
    data = jpeg_bytes(80, 40)
    caps, texts = ["a dog on a couch", "the dog", "a cat"], [["a dog", "a couch"], ["the dog"], ["a cat"]]
    singles = [handler.prepare({"id": "x", "image": data, "caption": c, "texts": t}) for c, t in zip(caps, texts)]
    group = handler.prepare({"id": "x", "image": data, "captions": caps, "caption_texts": texts})
    [grouped] = handler.run_inference([group], loaded)
    assert grouped.inference == [r.inference for r in handler.run_inference(singles, loaded)]
    assert grouped.inference[0] and not grouped.inference[2]


def test_dino_tensors_batched_like_the_processor(tmp_path):
    """Grounding DINO's images differ in size: pixel values made one image at a time (before batching) and
    padded by `batch_pixels` equal the processor's own batch (oracle), pixel_mask included; the grouped forward
    with the whole prompt as one group gives the ungrouped result."""
    import torch
    from groundforge.pipeline.handlers.detector import (
        LoadedDetector,
        batch_pixels,
        image_inputs,
        image_processor_for,
    )
    from groundforge.transforms.images import decode_image

    model_dir = str(make_grounding_dino(tmp_path))
    images = [decode_image(jpeg_bytes(w, h)).convert("RGB") for w, h in ((40, 30), (20, 50))]
    processor, family = image_processor_for(model_dir, False, True)
    assert family == "dino"
    want = processor(images=images, return_tensors="pt")
    got = batch_pixels([image_inputs(processor, im) for im in images], with_mask=True)
    assert torch.equal(got["pixel_values"], want["pixel_values"])
    assert torch.equal(got["pixel_mask"], want["pixel_mask"])
    model = LoadedDetector(model_dir, device="cpu")
    queries = [["a dog", "a cat"], ["a man"]]
    sizes = [(im.height, im.width) for im in images]
    plain = model.detect(images, queries)
    tensors = [image_inputs(processor, im) for im in images]
    grouped = model.detect_tensors(tensors, sizes, queries, [[[0, 1]], None])
    assert grouped[0][0][2] == plain[0][2]
    assert [v for box in grouped[0][0][0] for v in box] == pytest.approx([v for box in plain[0][0] for v in box],
                                                                          abs=1e-4)
    assert grouped[1][2] == plain[1][2]


def test_processor_backend_falls_back_without_torchvision(owl):
    import importlib.util

    from groundforge.pipeline.handlers.common import load_processor, processor_backend

    fast = processor_backend(load_processor(str(owl), use_fast=True))
    slow = processor_backend(load_processor(str(owl), use_fast=False))
    assert slow == "Owlv2ImageProcessorPil"
    if importlib.util.find_spec("torchvision") is None:
        assert fast == slow  # no torchvision: the PIL/numpy processor, no error
    else:
        assert fast != slow


def test_owl_preprocessing_before_batching_matches_the_processor_batch(owl):
    """DetectorHandler.prepare makes each image's pixel values (RunInference preprocessing, before batching);
    stacked, they are the processor's own batch (oracle: Owlv2Processor(images=...)), and run_inference on
    them gives what the PIL path (`preprocess_images=False`) gives."""
    import torch
    from groundforge.pipeline.handlers.detector import (
        DetectorHandler,
        batch_pixels,
        image_processor_for,
    )
    from groundforge.transforms.images import decode_image

    elements = [{"id": f"e{i}", "image": jpeg_bytes(w, h), "width": w, "height": h, "texts": ["a dog", "A dog"]}
                for i, (w, h) in enumerate(((40, 30), (20, 50), (64, 64)))]
    handler = DetectorHandler(str(owl), device="cpu", batch_size=3)
    prepared = [handler.prepare(e) for e in elements]
    assert all(p.image is None and p.pixel_values.shape == (3, 64, 64) for p in prepared)
    processor, _ = image_processor_for(str(owl), False, True)
    want = processor(images=[decode_image(e["image"]).convert("RGB") for e in elements], return_tensors="pt")
    assert torch.equal(batch_pixels([p.pixel_values for p in prepared], False)["pixel_values"],
                       want["pixel_values"])
    plain = DetectorHandler(str(owl), device="cpu", batch_size=3, preprocess_images=False)
    model = handler.load_model()
    got = [r.inference for r in handler.run_inference(prepared, model)]
    assert got == [r.inference for r in plain.run_inference([plain.prepare(e) for e in elements], model)]
    assert got[0] and {d[0] for d in got[0]} == {0, 1}  # "a dog" / "A dog": one query, boxes on both chunks
