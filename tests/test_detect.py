"""GPU grounding stage: DetectorHandler / Florence2GroundingHandler through real Beam RunInference.

A tiny random-weight OWLv2 and its processor are built offline (CLIP BPE tokenizer from vocab/merges files
written here, Owlv2ImageProcessor at 64x64) and loaded through the handler's own from_pretrained path.
The box head's last layer is zeroed, so every predicted box is exactly OWLv2's patch-grid prior: on a 64x64
input with 16 px patches, a 4x4 grid of boxes 1/4 of the (padded, square) image wide. That makes pixel
coordinates checkable without trusting the post-processor: image (w, h) must get the 16 boxes
[(k+.5)*s, (j+.5)*s, (k+1.5)*s, (j+1.5)*s], k, j in 0..3, with s = max(w, h) / 4 (`grid_boxes`).
"""
from __future__ import annotations

import io

import pytest
from helpers import (
    FAST_BEAM,
    grid_boxes,
    jpeg_bytes,
    make_florence2,
    make_grounding_dino,
    make_owlv2,
    same_boxes,
)


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory):
    return make_owlv2(tmp_path_factory.mktemp("owlv2"))


def element(i: int, width: int, height: int, texts, **extra) -> dict:
    return {"id": f"img-{i}", "image": jpeg_bytes(width, height), "width": width, "height": height,
            "texts": list(texts), **extra}


def options():
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(FAST_BEAM)


# ---------------------------------------------------------------------------------------------------------
# handler options


def test_handler_options_and_defaults():
    from groundforge.pipeline.handlers.detector import DetectorHandler

    h = DetectorHandler("some/model", device="cpu", batch_size=3)
    assert h.trust_remote_code is False
    assert h.batch_elements_kwargs() == {"min_batch_size": 3, "max_batch_size": 3}
    assert h.get_metrics_namespace() == "groundforge_detector"
    assert h.share_model_across_processes() is False  # CPU: one model per process, no proxy
    assert DetectorHandler("m", device="cpu", share_across_processes=True).share_model_across_processes() is True
    assert DetectorHandler("m", device="cpu", trust_remote_code=True).trust_remote_code is True
    h.update_model_path("/models/other")
    assert h.model_id == "/models/other"
    h.update_model_path(None)
    assert h.model_id == "/models/other"
    with pytest.raises(ValueError, match="takes no inference_args"):
        h.validate_inference_args({"threshold": 0.1})
    for bad in (dict(device="tpu"), dict(dtype="int8"), dict(batch_size=0)):
        with pytest.raises(ValueError):
            DetectorHandler("m", **bad)


def _exif(orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def test_prepare_checks_and_num_bytes():
    from groundforge.pipeline.handlers.common import (
        GroundingError,
        GroundingInput,
        prepare,
        source_of,
    )
    from groundforge.pipeline.handlers.detector import DetectorHandler
    from PIL import Image

    data = jpeg_bytes(40, 30)
    p = prepare({"id": "x", "image": {"bytes": data, "path": "x.jpg"}, "width": 40, "height": 30,
                 "texts": ["a dog"]})
    assert p.image.size == (40, 30) and p.image.mode == "RGB" and p.texts == ("a dog",)
    assert DetectorHandler("m", device="cpu").get_num_bytes([p]) == len(data) + len("a dog")
    pil = prepare({"id": "y", "image": Image.new("L", (5, 7)), "texts": ["cat"]})  # no size given: taken as is
    assert pil.image.mode == "RGB" and pil.image.size == (5, 7)
    tup = prepare(GroundingInput("z", data, 40, 30, ["a dog", "a cat"]))
    assert (source_of(tup), tup.texts, tup.image.size) == ("z", ("a dog", "a cat"), (40, 30))
    buf = io.BytesIO()  # EXIF orientation 6 (rotate 90): the element gives the display size, 30x40
    Image.new("RGB", (40, 30)).save(buf, format="JPEG", exif=_exif(6))
    assert prepare({"image": buf.getvalue(), "width": 30, "height": 40, "texts": ["x"]}).image.size == (30, 40)
    bomb = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1000
        with pytest.raises(GroundingError, match="decompression_bomb"):
            prepare({"image": data, "texts": ["dog"]})
    finally:
        Image.MAX_IMAGE_PIXELS = bomb
    cases = [
        ({"image": data, "width": 40, "height": 30, "texts": []}, "no_text_queries"),
        ({"image": data, "width": 40, "height": 30, "texts": ["dog", "  "]}, "bad_text_query"),
        ({"image": b"", "texts": ["dog"]}, "empty_image"),
        ({"image": b"GIF89a broken", "texts": ["dog"]}, "undecodable_image"),
        ({"image": data[: len(data) // 2], "texts": ["dog"]}, "truncated_image"),
        ({"image": data, "width": 30, "height": 40, "texts": ["dog"]}, "size_mismatch"),
        ({"image": None, "texts": ["dog"]}, "no_image"),
    ]
    for elem, reason in cases:
        with pytest.raises(GroundingError) as err:
            prepare(elem)
        assert err.value.reason == reason, (elem, err.value)
    with pytest.raises(GroundingError) as err:
        prepare({"image": data, "width": 30, "height": 40, "texts": ["dog"]})
    assert repr(err.value) == "size_mismatch: element says 30x40, image is 40x30"
    with pytest.raises(GroundingError) as err:
        prepare({"image": data, "texts": ["dog"], "caption": "a dog <loc_5>"}, need_caption=True)
    assert (err.value.reason, err.value.detail) == ("control_tokens", "<loc_5>")


def _png_with_broken_exif() -> bytes:
    """A good 40x30 PNG whose eXIf chunk is not a TIFF block (PIL's getexif raises on it)."""
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buf, format="PNG")
    data, payload = buf.getvalue(), b"XX*\x00\x08\x00\x00\x00"
    chunk = (struct.pack(">I", len(payload)) + b"eXIf" + payload
             + struct.pack(">I", zlib.crc32(b"eXIf" + payload)))
    return data[:33] + chunk + data[33:]  # after the 8-byte signature and the 25-byte IHDR chunk


def test_grounding_and_image_stage_judge_bytes_alike():
    """detect.decode_image decodes through transforms.images: the bytes the image stage (prepare_image) keeps
    decode here, at the same display size, and the ones it rejects fail with the same reason. A broken EXIF
    block means orientation 1 in both (it used to be `undecodable_image` here only)."""
    from groundforge.pipeline.handlers.common import GroundingError, decode_image
    from groundforge.transforms.images import ImageError, prepare_image
    from PIL import Image

    data = jpeg_bytes(40, 30)
    rotated = io.BytesIO()
    Image.new("RGB", (40, 30)).save(rotated, format="JPEG", exif=_exif(6))
    cases = {"jpeg": (data, (40, 30)), "rotated": (rotated.getvalue(), (30, 40)),
             "broken_exif": (_png_with_broken_exif(), (40, 30)), "empty": (b"", "empty_image"),
             "garbage": (b"GIF89a broken", "undecodable_image"),
             "truncated": (data[: len(data) // 2], "truncated_image")}
    for name, (blob, expected) in cases.items():
        try:
            _, info = prepare_image(blob)
            kept = (info.width, info.height)
        except ImageError as err:
            kept = err.reason
        try:
            image, _ = decode_image(blob)
            grounded = image.size
        except GroundingError as err:
            grounded = err.reason
        assert kept == grounded == expected, name


def test_failed_to_reject_shapes():
    from groundforge.pipeline.handlers.common import GroundingError, Prepared
    from groundforge.pipeline.handlers.dlq import (
        failed_batch_to_rejects,
        failed_to_reject,
    )

    err = GroundingError("size_mismatch", "element says 1x1, image is 2x2")
    beam_style = (type(err), repr(err), ["Traceback ..."])
    assert failed_to_reject(({"id": "a"}, beam_style)) == {
        "source": "a", "stage": "ground", "reason": "size_mismatch", "detail": "element says 1x1, image is 2x2"}
    assert failed_to_reject(({"id": "a"}, err))["reason"] == "size_mismatch"
    oom = (RuntimeError, "RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')", [])
    prepared = [Prepared({"id": "p1"}, None, ("dog",), None, 0), Prepared({"id": "p2"}, None, ("cat",), None, 0)]
    assert failed_batch_to_rejects((prepared, oom)) == [
        {"source": s, "stage": "ground", "reason": "out_of_memory",
         "detail": "RuntimeError: RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')"}
        for s in ("p1", "p2")]
    other = failed_to_reject(({"key": "k"}, (KeyError, "KeyError('x')", [])))
    assert other == {"source": "k", "stage": "ground", "reason": "inference_error", "detail": "KeyError: KeyError('x')"}


def test_rejects_take_the_item_source_and_the_given_stage():
    """The GRIT pipeline's items carry `source` (no `id`), and its text stage reuses these helpers."""
    from groundforge.pipeline.handlers.common import GroundingError
    from groundforge.pipeline.handlers.dlq import (
        failed_batch_to_rejects,
        failed_to_reject,
    )

    item = {"source": "caps.csv#3", "key": "x.jpg\x1fa dog", "image_id": "x.jpg"}
    err = GroundingError("undecodable_image", "cannot identify")
    assert failed_to_reject((item, err)) == {"source": "caps.csv#3", "stage": "ground",
                                             "reason": "undecodable_image", "detail": "cannot identify"}
    assert failed_to_reject(({"id": "i", **item}, err))["source"] == "i"
    crash = (RuntimeError, "RuntimeError('parser crashed')", [])
    assert failed_batch_to_rejects(([item], crash), stage="text") == [
        {"source": "caps.csv#3", "stage": "text", "reason": "inference_error",
         "detail": "RuntimeError: RuntimeError('parser crashed')"}]


# ---------------------------------------------------------------------------------------------------------
# the real model


def test_loads_via_auto_classes_without_remote_code(owl_dir, monkeypatch):
    import transformers
    from groundforge.pipeline.handlers.detector import DetectorHandler

    seen = []
    for cls in (transformers.AutoModelForZeroShotObjectDetection, transformers.AutoProcessor):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            seen.append((klass.__name__, str(args[0]), kwargs.get("trust_remote_code")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    loaded = DetectorHandler(str(owl_dir), device="auto", dtype="float16").load_model()
    assert sorted(seen) == [("AutoModelForZeroShotObjectDetection", str(owl_dir), False),
                            ("AutoProcessor", str(owl_dir), False)]
    import torch

    on_gpu = torch.cuda.is_available()  # "auto" picks the GPU where there is one
    assert loaded.family == "owl" and loaded.device == ("cuda" if on_gpu else "cpu")
    # float16 asked for: kept on a GPU, float32 forced on CPU
    assert str(loaded.dtype) == ("torch.float16" if on_gpu else "torch.float32")
    assert type(loaded.model).__name__ == "Owlv2ForObjectDetection"


def test_detect_boxes_are_pixels_of_each_image_and_padding_queries_never_win(owl_dir):
    from groundforge.pipeline.handlers.detector import LoadedDetector
    from PIL import Image

    det = LoadedDetector(str(owl_dir), device="cpu")
    sizes = [(80, 40), (30, 60), (64, 64)]
    long = " ".join(["a field of flowers"] * 6)  # 24 words > the 16-token text model: truncated
    queries = [["a dog", "a red couch", "two cats"], ["a cat"], ["a remote", long]]
    out = det.detect([Image.new("RGB", s, (120, 20, 20)) for s in sizes], queries)
    assert len(out) == 3
    for (w, h), qs, (boxes, scores, labels) in zip(sizes, queries, out):
        assert same_boxes(boxes, grid_boxes(w, h))  # all 16 boxes kept at min_score 0.0
        assert len(boxes) == len(scores) == len(labels) == 16
        assert all(0 <= lab < len(qs) for lab in labels)  # batch padded to 3 queries; " " never wins
        assert all(0.0 <= s <= 1.0 for s in scores)
    assert set(out[1][2]) == {0}


def _check_results(results, expected_sizes):
    """Matcher for assert_that: everything plain Python, boxes the image's grid, chunks fanned out."""
    import torch

    assert sorted(r.example["id"] for r in results) == sorted(expected_sizes)
    for r in results:
        w, h = expected_sizes[r.example["id"]]
        assert isinstance(r.inference, list)
        n_chunks = len(r.example["texts"])
        by_chunk: dict[int, list] = {}
        for det in r.inference:
            assert type(det) is tuple and len(det) == 3
            chunk, box, score = det
            assert type(chunk) is int and 0 <= chunk < n_chunks
            assert type(box) is list and len(box) == 4 and all(type(v) is float for v in box)
            assert type(score) is float and not isinstance(score, torch.Tensor)
            by_chunk.setdefault(chunk, []).append((box, score))
        # duplicate chunk texts (any case) share one query and get the same boxes
        texts = [t.lower() for t in r.example["texts"]]
        for i, t in enumerate(texts):
            first = texts.index(t)
            assert sorted(by_chunk.get(i, []), key=repr) == sorted(by_chunk.get(first, []), key=repr)
        all_boxes = [b for dets in by_chunk.values() for b, _ in dets]
        distinct = {tuple(b) for b in all_boxes}
        assert same_boxes([list(b) for b in distinct], grid_boxes(w, h))
        assert r.model_id.endswith("owlv2")


def test_runinference_batches_and_hands_off_cpu_lists(owl_dir):
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that
    from groundforge.pipeline.handlers.detector import DetectorHandler

    sizes = [(80, 40), (30, 60), (64, 64), (50, 20), (33, 47)]
    texts = [["a dog", "A dog", "two cats"], ["a red couch"], ["the remote", "a cat", "a dog", "a sofa"],
             ["a man"], ["a woman", "a field of flowers"]]
    elements = [element(i, w, h, t) for i, ((w, h), t) in enumerate(zip(sizes, texts))]
    handler = DetectorHandler(str(owl_dir), device="cpu", batch_size=2)
    p = TestPipeline(options=options())
    results = (p | beam.Create(elements) | RunInference(handler))
    assert_that(results, lambda rs: _check_results(rs, {f"img-{i}": s for i, s in enumerate(sizes)}))
    result = p.run()
    result.wait_until_finish()
    query = result.metrics().query(MetricsFilter().with_namespace("groundforge_detector"))
    dist = {m.key.metric.name: m.committed for m in query["distributions"]}["images_per_batch"]
    # 3 batches holding 5 images, none larger than 2, one of 1: exactly [2, 2, 1]
    assert (dist.count, dist.sum, dist.max, dist.min) == (3, 5, 2, 1)
    counters = {m.key.metric.name: m.committed for m in query["counters"]}
    assert counters["images"] == 5
    # min_score 0: all 16 boxes of every image; each box has one label (its best query), fanned out to
    # every chunk with that text
    assert 16 * len(texts) <= counters["detections"] <= 16 * sum(len(t) for t in texts)


def test_bad_images_become_failed_elements_and_rejects(owl_dir):
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from groundforge.pipeline.handlers.detector import DetectorHandler
    from groundforge.pipeline.handlers.dlq import dlq_to_rejects

    good = [element(0, 40, 30, ["a dog"]), element(1, 64, 48, ["two cats", "a couch"])]
    corrupt = {**element(2, 40, 30, ["a dog"]), "image": b"this is not an image"}
    wrong_size = {**element(3, 40, 30, ["a cat"]), "width": 41}
    handler = DetectorHandler(str(owl_dir), device="cpu", batch_size=2)
    with TestPipeline(options=options()) as p:
        results, dlq = (p | beam.Create(good + [corrupt, wrong_size])
                        | RunInference(handler).with_exception_handling())
        assert_that(results | "Ids" >> beam.Map(lambda r: (r.example["id"], len(r.inference))),
                    equal_to([("img-0", 16), ("img-1", 16)]), label="Good")
        failed = dlq.failed_preprocessing[0] | beam.Map(lambda f: (f[0]["id"], f[1][0].__name__))
        assert_that(failed, equal_to([("img-2", "GroundingError"), ("img-3", "GroundingError")]),
                    label="Failed")
        rejects = dlq_to_rejects(dlq) | beam.Map(lambda r: (r["source"], r["stage"], r["reason"],
                                                            r["detail"][:40]))
        assert_that(rejects, equal_to([
            ("img-2", "ground", "undecodable_image", "UnidentifiedImageError: cannot identify "),
            ("img-3", "ground", "size_mismatch", "element says 41x30, image is 40x30")]), label="Rejects")


def test_failed_batch_becomes_one_reject_per_element(owl_dir, monkeypatch):
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from groundforge.pipeline.handlers import detector
    from groundforge.pipeline.handlers.dlq import dlq_to_rejects

    def out_of_memory(self, inputs, queries, sizes, groups):
        raise RuntimeError(f"CUDA out of memory with {len(queries)} images")

    monkeypatch.setattr(detector.LoadedDetector, "_run", out_of_memory)  # in_memory runner: same process
    handler = detector.DetectorHandler(str(owl_dir), device="cpu", batch_size=2)
    with TestPipeline(options=options()) as p:
        results, dlq = (p | beam.Create([element(0, 40, 30, ["a dog"]), element(1, 20, 20, ["a cat"])])
                        | RunInference(handler).with_exception_handling())
        assert_that(results, equal_to([]), label="NoResults")
        assert_that(dlq_to_rejects(dlq), equal_to([
            {"source": f"img-{i}", "stage": "ground", "reason": "out_of_memory",
             "detail": "RuntimeError: RuntimeError('CUDA out of memory with 2 images')"} for i in (0, 1)]),
            label="Rejects")


# ---------------------------------------------------------------------------------------------------------
# Grounding DINO phrase spans and Florence-2 parsing


def test_dino_phrase_token_spans():
    from groundforge.pipeline.handlers.detector import _phrase_token_spans, dino_phrase

    assert dino_phrase("St. Louis  Arch") == "st louis arch"
    cls, sep, dot, pad = 101, 102, 1012, 0
    ids = [cls, 7, 8, dot, 9, dot, 10, 11, dot, sep, pad, pad]
    mask = [1] * 10 + [0, 0]
    assert _phrase_token_spans(ids, mask, dot, {cls, sep, pad}, 3) == [[1, 2], [4], [6, 7]]
    # truncated text: the last phrase lost its tokens, the one before lost its dot
    assert _phrase_token_spans([cls, 7, dot, 9, sep], [1] * 5, dot, {cls, sep}, 3) == [[1], [3], []]


def test_florence_detections_map_phrases_to_chunks():
    from groundforge.pipeline.handlers.florence2 import florence_detections, phrase_key
    from groundforge.transforms.codecs import get_codec

    codec = get_codec("florence2")
    w, h = 640, 480
    dog, cats, couch = [10, 20, 200, 300], [300, 100, 600, 400], [0, 200, 640, 480]
    text = ("</s><s>" + codec.phrase_text("A dog", [dog], w, h) + codec.phrase_text("two cats", [cats], w, h)
            + codec.phrase_text("a sofa", [couch], w, h) + "</s>")
    chunks = ["a dog", "the dog", "Two cats", "a red couch"]
    dets, unmatched = florence_detections(text, chunks, w, h)
    dq = lambda b: codec.dequantize(codec.quantize(b, w, h), w, h)
    assert dets == [(0, dq(dog), 1.0), (1, dq(dog), 1.0), (2, dq(cats), 1.0)]
    assert unmatched == 1  # "a sofa" names no chunk
    assert phrase_key("The  red couch!") == "red couch"
    assert florence_detections("", chunks, w, h) == ([], 0)


def test_florence_handler_options():
    from groundforge.pipeline.handlers.florence2 import Florence2GroundingHandler

    h = Florence2GroundingHandler("florence-dir", device="cpu", batch_size=4)
    assert h.trust_remote_code is False
    assert h.batch_elements_kwargs() == {"min_batch_size": 4, "max_batch_size": 4}
    assert h.get_metrics_namespace() == "groundforge_florence2"
    from groundforge.pipeline.handlers.common import GroundingError
    with pytest.raises(GroundingError) as err:
        h.prepare(element(0, 20, 20, ["a dog"]))
    assert err.value.reason == "empty_caption"
    assert h.prepare(element(0, 20, 20, ["a dog"], caption="a dog on a couch")).caption == "a dog on a couch"


def test_grounding_dino_labels_are_per_phrase_argmax(tmp_path):
    """Tiny Grounding DINO: boxes equal the processor's own post-processing; a box's label and score are
    the best phrase by max token probability, phrases located independently via tokenizer offsets."""
    import torch
    from groundforge.pipeline.handlers.detector import LoadedDetector
    from PIL import Image

    det = LoadedDetector(str(make_grounding_dino(tmp_path)), device="cpu")
    assert det.family == "dino"
    images = [Image.new("RGB", (80, 40), (200, 10, 10)), Image.new("RGB", (30, 60), (10, 10, 200))]
    queries = [["A dog", "two cats", "the red couch"], ["a cat."]]  # "." separates phrases: dropped
    got = det.detect(images, queries)

    texts = ["a dog. two cats. the red couch.", "a cat."]
    inputs = det.processor(images=images, text=texts, return_tensors="pt", padding="longest")
    with torch.inference_mode():
        outputs = det.model(**inputs)
    ref = det.processor.post_process_grounded_object_detection(
        outputs, threshold=0.0, text_threshold=0.0, target_sizes=[(40, 80), (60, 30)])
    enc = det.processor.tokenizer(texts, return_offsets_mapping=True, padding="longest")
    probs = outputs.logits.sigmoid()
    for i, (text, qs) in enumerate(zip(texts, queries)):
        boxes, scores, labels = got[i]
        assert torch.allclose(torch.tensor(boxes), ref[i]["boxes"], atol=1e-4)
        spans, start = [], 0
        for phrase in text.split(".")[:-1]:
            phrase = phrase.strip()
            begin = text.index(phrase, start)
            start = begin + len(phrase)
            spans.append([t for t, (a, b) in enumerate(enc["offset_mapping"][i])
                          if b > a >= begin and b <= start])
        assert len(spans) == len(qs)
        per_phrase = torch.stack([probs[i][:, idx].max(-1).values for idx in spans], -1)
        want_scores, want_labels = per_phrase.max(-1)
        assert labels == want_labels.tolist()
        assert torch.allclose(torch.tensor(scores), want_scores, atol=1e-6)
        assert all(type(v) is float for b in boxes for v in b) and all(type(v) is int for v in labels)


def test_florence2_handler_through_runinference(tmp_path):
    """Tiny Florence-2 made to answer "a dog" + 4 loc tokens: through RunInference, each image gets that box
    in its own pixels on every chunk whose text matches, and bad elements go to rejects."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from groundforge.pipeline.handlers.dlq import dlq_to_rejects
    from groundforge.pipeline.handlers.florence2 import Florence2GroundingHandler
    from groundforge.transforms.codecs import get_codec

    model_dir = str(make_florence2(tmp_path, answer="a dog<loc_100><loc_200><loc_500><loc_900>"))
    elements = [element(0, 80, 40, ["a dog", "a couch"], caption="a dog on a couch"),
                element(1, 30, 60, ["two cats", "The dog"], caption="two cats and the dog"),
                element(2, 30, 60, ["a cat"], caption="a cat"),
                element(3, 30, 60, ["a cat"], caption="a cat <loc_3>")]
    box = lambda w, h: get_codec("florence2").dequantize((100, 200, 500, 900), w, h)
    expected = [("img-0", [(0, box(80, 40), 1.0)]), ("img-1", [(1, box(30, 60), 1.0)]), ("img-2", [])]
    handler = Florence2GroundingHandler(model_dir, device="cpu", batch_size=2, max_new_tokens=16, num_beams=2)
    p = TestPipeline(options=options())
    results, dlq = p | beam.Create(elements) | RunInference(handler).with_exception_handling()
    assert_that(results | beam.Map(lambda r: (r.example["id"], r.inference)), equal_to(expected),
                label="Results")
    assert_that(dlq_to_rejects(dlq) | beam.Map(lambda r: (r["source"], r["reason"], r["detail"])),
                equal_to([("img-3", "control_tokens", "<loc_3>")]), label="Rejects")
    result = p.run()
    result.wait_until_finish()
    from apache_beam.metrics.metric import MetricsFilter
    counters = {m.key.metric.name: m.committed for m in result.metrics().query(
        MetricsFilter().with_namespace("groundforge_florence2"))["counters"]}
    assert (counters["images"], counters["unmatched_phrase_boxes"]) == (3, 1)  # img-2: "a dog" names no chunk
