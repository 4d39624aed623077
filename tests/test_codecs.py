"""Loc-token codecs against the reference implementations in transformers (Florence-2, Kosmos-2), qwen-vl-utils
(Qwen2.5-VL frame) and Shikra (square frame)."""
from __future__ import annotations

import math
import random
import re

import pytest

from helpers import tiny_florence2_processor

from groundforge.transforms.codecs import FORMATS, FormatOptions, find_special_tokens, get_codec, smart_resize

SIZES = [(640, 480), (1, 1), (333, 517), (4032, 3024), (1000, 1000), (2000, 3), (7, 5000), (1920, 1080)]


def random_boxes(rng: random.Random, w: float, h: float, n: int, margin: float = 0.0) -> list[list[float]]:
    """Random xyxy boxes with x1 < x2, y1 < y2, coordinates in [-margin, size + margin]."""
    out = []
    for _ in range(n):
        xs = sorted(rng.uniform(-margin * w, w * (1 + margin)) for _ in range(2))
        ys = sorted(rng.uniform(-margin * h, h * (1 + margin)) for _ in range(2))
        if xs[0] < xs[1] and ys[0] < ys[1]:
            out.append([xs[0], ys[0], xs[1], ys[1]])
    return out


def border_boxes(w: float, h: float, bins: int) -> list[list[float]]:
    """Boxes on bin edges, touching the right/bottom edge, smaller than a bin, and the full image."""
    bw, bh = w / bins, h / bins
    boxes = [[0.0, 0.0, w, h], [w - bw / 3, h - bh / 3, w, h], [0.0, 0.0, bw / 3, bh / 3],
             [w / 2, h / 2, w / 2 + bw / 7, h / 2 + bh / 7], [bw, bh, 2 * bw, 2 * bh], [0.0, h / 2, w, h]]
    for k in (1, 2, 3, bins // 3, bins // 2, bins - 2, bins - 1):
        boxes.append([k * bw, k * bh, min(w, (k + 1) * bw), min(h, (k + 1) * bh)])
        boxes.append([k * bw - 1e-9 * w, k * bh - 1e-9 * h, w, h])
    return [b for b in boxes if b[0] < b[2] and b[1] < b[3]]


# ---------------------------------------------------------------------------------------------------------
# Florence-2

@pytest.fixture(scope="module")
def florence_processor():
    """A real Florence2Processor with a tiny word-level tokenizer (no hub download)."""
    return tiny_florence2_processor()


def test_florence2_quantize_matches_transformers(florence_processor):
    import torch

    codec = get_codec("florence2")
    rng = random.Random(1)
    total = 0
    for w, h in SIZES:
        boxes = random_boxes(rng, w, h, 1500, margin=0.02) + border_boxes(w, h, 1000)
        theirs = florence_processor.post_processor.quantize(torch.tensor(boxes, dtype=torch.float64), (w, h))
        ours = [list(codec.quantize(b, w, h)) for b in boxes]
        assert ours == theirs.tolist(), (w, h)
        total += len(boxes)
    assert total >= 10_000


def test_florence2_quantize_border_values():
    codec = get_codec("florence2")
    assert codec.quantize([0, 0, 640, 480], 640, 480) == (0, 0, 999, 999)
    assert codec.quantize([639.9, 479.9, 640, 480], 640, 480) == (999, 999, 999, 999)
    assert codec.quantize([100, 50, 300, 410], 640, 480) == (156, 104, 468, 854)
    assert codec.quantize([0.1, 0.1, 0.5, 0.5], 640, 480) == (0, 0, 0, 1)  # sub-bin box
    assert codec.quantize([-3, -3, 700, 500], 640, 480) == (0, 0, 999, 999)


def test_florence2_dequantize_matches_transformers(florence_processor):
    import torch

    codec = get_codec("florence2")
    rng = random.Random(2)
    for w, h in SIZES:
        q = [[rng.randrange(1000) for _ in range(4)] for _ in range(500)] + [[0, 0, 999, 999], [999, 0, 0, 999]]
        theirs = florence_processor.post_processor.dequantize(torch.tensor(q), (w, h)).tolist()
        ours = [codec.dequantize(v, w, h) for v in q]
        # transformers truncates the bin centre to int; ours keeps the float
        assert [[math.floor(v) for v in box] for box in ours] == theirs
        assert ours[-2] == [0.5 * (w / 1000), 0.5 * (h / 1000), 999.5 * (w / 1000), 999.5 * (h / 1000)]


def _floored(decoded):
    return [label for label, _ in decoded], [[math.floor(v) for v in box] for _, box in decoded]


@pytest.mark.parametrize("task", ["<OD>", "<OPEN_VOCABULARY_DETECTION>", "<CAPTION_TO_PHRASE_GROUNDING>"])
def test_florence2_decode_matches_post_process_generation(florence_processor, task):
    codec = get_codec("florence2")
    rng = random.Random(3)
    labels = ["dog", "a red car", "person", "the man on the left"]
    for w, h in SIZES:
        items = [(rng.choice(labels), b) for b in random_boxes(rng, w, h, 6)]
        text = "</s><s>" + codec.objects_text(items, w, h) + "</s>"
        parsed = florence_processor.post_process_generation(text=text, task=task, image_size=(w, h))[task]
        ours_labels, ours_boxes = _floored(codec.decode(text, w, h))
        assert ours_boxes == parsed["bboxes"]
        assert ours_labels == parsed.get("labels", parsed.get("bboxes_labels"))
        assert ours_labels == [label for label, _ in items]


def test_florence2_rendered_targets_parse_with_transformers(florence_processor):
    from groundforge.transforms.templates import render_record

    w, h = 640, 480
    caption = "A man walks two dogs in a park."
    objects = [{"label": "man", "bbox": [100, 50, 300, 410], "score": 1.0, "span": [0, 5]},
               {"label": "dog", "bbox": [320, 240, 400, 470], "score": 1.0, "span": [12, 20]},
               {"label": "dog", "bbox": [400, 240, 500, 470], "score": 1.0, "span": [12, 20]}]
    cases = [("grounded_caption", "<CAPTION_TO_PHRASE_GROUNDING>", caption, objects,
              ["A man", "two dogs", "two dogs"]),
             ("rec", "<OPEN_VOCABULARY_DETECTION>", "the man", objects[:1], ["the man"]),
             ("detection", "<OD>", None, [{**o, "span": []} for o in objects], ["man", "dog", "dog"])]
    for task, token, cap, objs, labels in cases:
        out = render_record({"id": "x", "task": task, "width": w, "height": h, "caption": cap, "objects": objs,
                             "meta": "{}"}, "florence2")
        assert out.prompt.startswith(token)
        parsed = florence_processor.post_process_generation(text=out.target, task=token, image_size=(w, h))[token]
        got_labels = parsed.get("labels", parsed.get("bboxes_labels"))
        assert got_labels == labels
        assert parsed["bboxes"] == [[math.floor(v) for v in get_codec("florence2").dequantize(
            get_codec("florence2").quantize(o["bbox"], w, h), w, h)] for o in objs]


# ---------------------------------------------------------------------------------------------------------
# Kosmos-2

def test_kosmos2_quantize_matches_coordinate_to_patch_index():
    from transformers.models.kosmos2.processing_kosmos2 import coordinate_to_patch_index

    codec = get_codec("kosmos2")
    rng = random.Random(4)
    total = 0
    for w, h in SIZES:
        boxes = random_boxes(rng, w, h, 1300) + border_boxes(w, h, 32)
        for b in boxes:
            norm = (b[0] / w, b[1] / h, b[2] / w, b[3] / h)
            assert codec.quantize(b, w, h) == coordinate_to_patch_index(norm, 32), (b, w, h)
        total += len(boxes)
    assert total >= 10_000


def test_kosmos2_quantize_never_out_of_range():
    codec = get_codec("kosmos2")
    w, h = 640, 480
    cases = {
        (0, 0, 640, 480): (0, 1023),           # full image
        (630, 470, 640, 480): (1023, 1023),    # touches the right/bottom edge
        (320, 240, 321, 241): (528, 528),      # sub-cell box
        (640, 480, 640, 480): (1023, 1023),    # degenerate box on the corner
        (-50, -50, 700, 500): (0, 1023),       # outside the image
        (100, 100, 100, 100): (197, 197),      # zero-size box
    }
    for box, expected in cases.items():
        assert codec.quantize(box, w, h) == expected, box
    rng = random.Random(5)
    for b in random_boxes(rng, w, h, 2000, margin=0.5):
        ul, lr = codec.quantize(b, w, h)
        assert 0 <= ul <= 1023 and 0 <= lr <= 1023
        assert ul % 32 <= lr % 32 and ul // 32 <= lr // 32


def test_kosmos2_dequantize_matches_patch_index_to_coordinate():
    from transformers.models.kosmos2.processing_kosmos2 import patch_index_to_coordinate

    codec = get_codec("kosmos2")
    rng = random.Random(6)
    pairs = [(0, 0), (0, 1023), (1023, 1023), (31, 992), (5, 37), (44, 863)]
    pairs += [(rng.randrange(1024), rng.randrange(1024)) for _ in range(3000)]
    for w, h in [(640, 480), (1, 1), (333, 517)]:
        for a, b in pairs:
            x1, y1, x2, y2 = patch_index_to_coordinate(a, b, 32)
            assert codec.dequantize((a, b), w, h) == [x1 * w, y1 * h, x2 * w, y2 * h]


def test_kosmos2_decode_matches_clean_text_and_extract_entities():
    from transformers.models.kosmos2.processing_kosmos2 import clean_text_and_extract_entities_with_bboxes

    from groundforge.transforms.templates import render_record

    w, h = 640, 480
    caption = "A man walks two dogs in a park."
    objects = [{"label": "man", "bbox": [100, 50, 300, 410], "score": 1.0, "span": [0, 5]},
               {"label": "dog", "bbox": [320, 240, 400, 470], "score": 1.0, "span": [12, 20]},
               {"label": "dog", "bbox": [400, 240, 500, 470], "score": 1.0, "span": [12, 20]}]
    out = render_record({"id": "k", "task": "grounded_caption", "width": w, "height": h, "caption": caption,
                         "objects": objects, "meta": {}}, "kosmos2")
    text, entities = clean_text_and_extract_entities_with_bboxes(out.target)
    assert text == caption
    assert [(name, span) for name, span, _ in entities] == [("A man", (0, 5)), ("two dogs", (12, 20))]
    theirs = [(name, [b[0] * w, b[1] * h, b[2] * w, b[3] * h]) for name, _, boxes in entities for b in boxes]
    assert get_codec("kosmos2").decode(out.target, w, h) == theirs

    # the docstring example of transformers
    example = ("<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863>"
               "</object> warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911>"
               "</object>.")
    _, entities = clean_text_and_extract_entities_with_bboxes(example)
    assert get_codec("kosmos2").decode(example, 1, 1) == [(n, list(b)) for n, _, bs in entities for b in bs]


# ---------------------------------------------------------------------------------------------------------
# Qwen2.5-VL smart_resize

def qwen_vl_utils_smart_resize(height, width, factor=28, min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28):
    """qwen-vl-utils' smart_resize, transcribed from QwenLM/Qwen2-VL (also QwenLM/Qwen2.5-VL)
    qwen-vl-utils/src/qwen_vl_utils/vision_process.py, with its module defaults IMAGE_FACTOR = 28,
    MIN_PIXELS = 4 * 28 * 28, MAX_PIXELS = 16384 * 28 * 28, MAX_RATIO = 200."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError("absolute aspect ratio must be smaller than 200")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def test_smart_resize_matches_qwen_vl_utils():
    """Defaults are the released Qwen2.5-VL preprocessor's (min_pixels 3136, max_pixels 12845056), which are
    qwen-vl-utils' module defaults; other bounds (--qwen-min-pixels/--qwen-max-pixels) match too."""
    rng = random.Random(7)
    sizes = [(1, 1), (14, 14), (15, 15), (28, 28), (56, 56), (480, 640), (3024, 4032), (10000, 50), (50, 10000),
             (14, 2800), (1, 200), (200, 1), (5, 1000), (1080, 1920), (27, 27), (29, 57), (5000, 5000),
             (20000, 20000), (4000, 3000)]
    sizes += [(rng.randint(1, 8000), rng.randint(1, 8000)) for _ in range(9500)]
    sizes += [(rng.randint(1, 20), rng.randint(1, 4000)) for _ in range(2000)]  # thin images
    sizes += [(h, h * 200) for h in range(1, 60)] + [(w * 200, w) for w in range(1, 60)]  # 1:200
    bounds = [(3136, 12845056), (3136, 1003520), (256 * 28 * 28, 1280 * 28 * 28)]
    checked = 0
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError):
                smart_resize(h, w)
            continue
        assert smart_resize(h, w) == qwen_vl_utils_smart_resize(h, w), (h, w)
        lo, hi = bounds[checked % len(bounds)]
        assert smart_resize(h, w, min_pixels=lo, max_pixels=hi) == qwen_vl_utils_smart_resize(
            h, w, min_pixels=lo, max_pixels=hi), (h, w, lo, hi)
        checked += 1
    assert checked >= 10_000


def test_qwen25vl_frame_is_the_released_processors():
    codec = get_codec("qwen25vl")
    # a 12 MP phone photo keeps its size (transformers' class default max_pixels would give 1148x840)
    assert codec.resized(4032, 3024) == (4032, 3024)
    assert codec.quantize([4031, 3023, 4032, 3024], 4032, 3024) == (4031, 3023, 4032, 3024)
    # a side under 15 px is floored at 28 px (qwen-vl-utils), not scaled up to min_pixels with the other side
    assert codec.resized(1000, 10) == (1008, 28)
    small = get_codec("qwen25vl", FormatOptions(qwen_min_pixels=3136, qwen_max_pixels=1003520))
    assert small.resized(4032, 3024) == (1148, 840)


def test_transformers_smart_resize_differs_only_for_thin_images():
    """transformers' smart_resize (same bounds) has no 28 px floor on the rounded sides; elsewhere it agrees."""
    reference = reference_smart_resize()
    rng = random.Random(17)
    for _ in range(3000):
        h, w = rng.randint(15, 6000), rng.randint(15, 6000)
        if max(h, w) / min(h, w) > 200:
            continue
        assert smart_resize(h, w) == reference(h, w, factor=28, min_pixels=3136, max_pixels=12845056)
    assert reference(10, 1000, factor=28, min_pixels=3136, max_pixels=12845056) == (28, 560)
    assert smart_resize(10, 1000) == (28, 1008)


def reference_smart_resize():
    """transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize.

    That module imports torchvision at the top; without torchvision the function is taken from its source
    file as is (ast), so the oracle is still the library's own code.
    """
    try:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference
        return reference
    except ImportError:
        pass
    import ast
    import importlib.util

    path = importlib.util.find_spec("transformers.models.qwen2_vl").submodule_search_locations[0]
    source = open(f"{path}/image_processing_qwen2_vl.py", encoding="utf-8").read()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "smart_resize")
    namespace = {"math": math}
    exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), namespace)
    return namespace["smart_resize"]


# ---------------------------------------------------------------------------------------------------------
# every format

def sizes_for(fmt: str) -> list[tuple[int, int]]:
    """Qwen2.5-VL cannot take aspect ratios over 200 (smart_resize raises)."""
    if fmt != "qwen25vl":
        return SIZES
    return [(w, h) for w, h in SIZES if max(w, h) / min(w, h) <= 200]


def test_qwen25vl_refuses_extreme_aspect_ratio():
    codec = get_codec("qwen25vl")
    with pytest.raises(ValueError, match="aspect ratio"):
        codec.quantize([0, 0, 1, 1], 2000, 3)
    assert codec.decode('[{"bbox_2d": [0, 0, 1, 1], "label": "x"}]', 2000, 3) == []


VOCAB = {
    "florence2": (re.compile(r"<loc_(\d+)>"), 999),
    "kosmos2": (re.compile(r"<patch_index_(\d+)>"), 1023),
    "paligemma": (re.compile(r"<loc(\d+)>"), 1023),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_roundtrip_within_one_bin(fmt):
    codec = get_codec(fmt)
    rng = random.Random(8)
    for w, h in sizes_for(fmt):
        bw, bh = codec.bin_size(w, h)
        boxes = random_boxes(rng, w, h, 150) + border_boxes(w, h, 1000) + border_boxes(w, h, 32)
        decoded = codec.decode(codec.phrase_text("thing", boxes, w, h), w, h)
        assert len(decoded) == len(boxes)
        for b, (label, d) in zip(boxes, decoded):
            assert label == "thing"
            for i, (v, u) in enumerate(zip(b, d)):
                assert abs(v - u) <= (bw if i % 2 == 0 else bh) * (1 + 1e-9), (fmt, w, h, b, d)
            assert codec.decode(codec.box_text(b, w, h), w, h)[0][1] == d


@pytest.mark.parametrize("fmt", FORMATS)
def test_never_out_of_vocabulary(fmt):
    codec = get_codec(fmt)
    rng = random.Random(9)
    for w, h in sizes_for(fmt):
        boxes = random_boxes(rng, w, h, 300, margin=0.3) + border_boxes(w, h, 1000)
        boxes += [[w, h, w, h], [0, 0, 0, 0], [-w, -h, 2 * w, 2 * h]]
        text = codec.phrase_text("x", boxes, w, h)
        if fmt in VOCAB:
            pattern, top = VOCAB[fmt]
            values = [int(v) for v in pattern.findall(text)]
            assert values and max(values) <= top and min(values) >= 0
            width = {"florence2": None, "kosmos2": 4, "paligemma": 4}[fmt]
            if width:
                assert all(len(v) == width for v in pattern.findall(text))
        for b in boxes:
            q = codec.quantize(b, w, h)
            if fmt == "qwen25vl":
                rw, rh = codec.resized(w, h)
                assert all(0 <= v <= (rw if i % 2 == 0 else rh) for i, v in enumerate(q))
            elif fmt in ("qwen2vl", "shikra"):
                assert all(0 <= v <= 1000 for v in q)
        for _, d in codec.decode(text, w, h):
            assert all(-1e-9 <= v <= (w if i % 2 == 0 else h) + 1e-9 for i, v in enumerate(d))


def test_box_text_exact():
    b, w, h = [100, 50, 300, 410], 640, 480
    assert get_codec("florence2").box_text(b, w, h) == "<loc_156><loc_104><loc_468><loc_854>"
    assert get_codec("kosmos2").box_text(b, w, h) == "<object><patch_index_0101><patch_index_0878></object>"
    assert get_codec("paligemma").box_text(b, w, h) == "<loc0107><loc0160><loc0874><loc0480>"
    assert get_codec("qwen2vl").box_text(b, w, h) == "<|box_start|>(156,104),(469,854)<|box_end|>"
    assert get_codec("qwen25vl").box_text(b, w, h) == "[101, 50, 302, 407]"
    assert get_codec("shikra").box_text(b, w, h) == "[0.156,0.203,0.469,0.766]"  # padded to 640x640
    assert get_codec("shikra", FormatOptions(shikra_frame="plain")).box_text(b, w, h) == "[0.156,0.104,0.469,0.854]"


def test_phrase_text_exact():
    b1, b2, w, h = [100, 50, 300, 410], [0, 0, 640, 480], 640, 480
    k = get_codec("kosmos2").phrase_text("a dog", [b1, b2], w, h)
    assert k == ("<phrase> a dog</phrase><object><patch_index_0101><patch_index_0878>"
                 "</delimiter_of_multi_objects/><patch_index_0000><patch_index_1023></object>")
    assert get_codec("florence2").phrase_text("a dog", [b1, b2], w, h) == (
        "a dog<loc_156><loc_104><loc_468><loc_854><loc_0><loc_0><loc_999><loc_999>")
    assert get_codec("paligemma").phrase_text("a dog", [b1, b2], w, h) == (
        "<loc0107><loc0160><loc0874><loc0480> a dog ; <loc0000><loc0000><loc1023><loc1023> a dog")
    assert get_codec("qwen2vl").phrase_text("a dog", [b1], w, h) == (
        "<|object_ref_start|>a dog<|object_ref_end|><|box_start|>(156,104),(469,854)<|box_end|>")
    assert get_codec("qwen25vl").phrase_text("a dog", [b1, b2], w, h) == (
        '[{"bbox_2d": [101, 50, 302, 407], "label": "a dog"}, {"bbox_2d": [0, 0, 644, 476], "label": "a dog"}]')
    assert get_codec("shikra").phrase_text("a dog", [b1, b2], w, h) == (
        "a dog[0.156,0.203,0.469,0.766;0.000,0.125,1.000,0.875]")


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_tolerates_junk_and_truncation(fmt):
    codec = get_codec(fmt)
    w, h = 640, 480
    items = [("dog", [10, 20, 200, 300]), ("cat", [300, 100, 600, 470]), ("dog", [50, 60, 70, 80])]
    text = codec.objects_text(items, w, h)
    full = codec.decode(text, w, h)
    assert sorted(label for label, _ in full) == ["cat", "dog", "dog"]
    for cut in range(len(text) + 1):
        partial = codec.decode(text[:cut], w, h)
        assert len(partial) <= len(full)
    rng = random.Random(10)
    alphabet = "<>|_[](),;:{}\"0123456789 abcloc_patchindexbox"
    junk = ["", "nothing here", "<loc_99999><loc_1><loc_2><loc_3>", "<patch_index_9999><patch_index_0001>",
            "<object><patch_index_0001></object>", "[1.5,2,3]", '{"bbox_2d": [1, 2]}', "```json\n[{\"bbox_2d\": ",
            "<|box_start|>(1,2),(3,<|box_end|>", "<loc9999><loc0000><loc0001><loc0002> x", None]
    junk += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(300)]
    for j in junk:
        assert isinstance(codec.decode(j, w, h), list)


def test_decode_clamps_out_of_vocabulary_values():
    assert get_codec("florence2").decode("x<loc_5000><loc_0><loc_5000><loc_999>", 1000, 1000) == [
        ("x", [999.5, 0.5, 999.5, 999.5])]
    assert get_codec("kosmos2").decode("<object><patch_index_5000><patch_index_0001></object>", 32, 32) == []
    assert get_codec("qwen2vl").decode("<|box_start|>(0,0),(2000,500)<|box_end|>", 100, 100) == [
        ("", [0.0, 0.0, 100.0, 50.0])]


def test_qwen25vl_decode_fenced_prose_and_truncated():
    codec = get_codec("qwen25vl")
    w, h = 644, 476  # already a multiple of 28: resized size == original
    assert codec.resized(w, h) == (644, 476)
    fenced = '```json\n[\n  {"bbox_2d": [1, 2, 30, 40], "label": "cup"}\n]\n```'
    assert codec.decode(fenced, w, h) == [("cup", [1.0, 2.0, 30.0, 40.0])]
    prose = 'Sure: {"bbox_2d": [1, 2, 30, 40], "label": "cup"} and {"bbox_2d": [5, 6, 7, 8], "label": "pen"}'
    assert codec.decode(prose, w, h) == [("cup", [1.0, 2.0, 30.0, 40.0]), ("pen", [5.0, 6.0, 7.0, 8.0])]
    truncated = '[{"bbox_2d": [1, 2, 30, 40], "label": "cup"}, {"bbox_2d": [5, 6'
    assert codec.decode(truncated, w, h) == [("cup", [1.0, 2.0, 30.0, 40.0])]
    nested = '{"caption": "a cup", "objects": [{"bbox_2d": [1, 2, 30, 40], "label": "a cup"}]}'
    assert codec.decode(nested, w, h) == [("a cup", [1.0, 2.0, 30.0, 40.0])]


def test_paligemma_and_shikra_decode_labels():
    pg = get_codec("paligemma")
    text = "<loc0000><loc0000><loc1023><loc1023> a cat ; <loc0100><loc0200><loc0300><loc0400><seg001><seg002> dog"
    assert [label for label, _ in pg.decode(text, 1023, 1023)] == ["a cat", "dog"]
    assert pg.decode(text, 1023, 1023)[1][1] == [200.0, 100.0, 400.0, 300.0]
    sh = get_codec("shikra", FormatOptions(shikra_frame="plain"))
    assert sh.decode("dog[0.1,0.2,0.3,0.4;0.5,0.5,1,1], person[0.000,0.000,0.500,0.500]", 100, 10) == [
        ("dog", [10.0, 2.0, 30.0, 4.0]), ("dog", [50.0, 5.0, 100.0, 10.0]), ("person", [0.0, 0.0, 50.0, 5.0])]
    square = get_codec("shikra")  # 100x10 padded to 100x100, 45 px above
    assert square.decode("dog[0.1,0.46,0.3,0.5]", 100, 10) == [("dog", [10.0, 1.0, 30.0, 5.0])]


def test_get_codec_unknown_format_names_the_valid_ones():
    with pytest.raises(ValueError) as err:
        get_codec("llava")
    for fmt in FORMATS:
        assert fmt in str(err.value)
    assert FORMATS == ("florence2", "kosmos2", "paligemma", "qwen2vl", "qwen25vl", "shikra")


def test_find_special_tokens():
    text = ("a <loc_12> b <loc0012> <seg012> <patch_index_0001> <phrase>x</phrase><object></object><grounding>"
            "</delimiter_of_multi_objects/> <|box_start|> <|im_end|> </s> <s> <pad> <unk> <eos> <bos> <OD> "
            "<CAPTION_TO_PHRASE_GROUNDING> <OPEN_VOCABULARY_DETECTION> <REGION_TO_DESCRIPTION> <SOME_NEW_TASK> "
            "<image> <od> </poly>")
    assert find_special_tokens(text) == [
        "<loc_12>", "<loc0012>", "<seg012>", "<patch_index_0001>", "<phrase>", "</phrase>", "<object>", "</object>",
        "<grounding>", "</delimiter_of_multi_objects/>", "<|box_start|>", "<|im_end|>", "</s>", "<s>", "<pad>",
        "<unk>", "<eos>", "<bos>", "<OD>", "<CAPTION_TO_PHRASE_GROUNDING>", "<OPEN_VOCABULARY_DETECTION>",
        "<REGION_TO_DESCRIPTION>", "<SOME_NEW_TASK>", "<image>", "<od>", "</poly>"]
    for ordinary in ["a < b", "<3", "I <3 you", "x<y and y>z", "a <= b", "<b>bold</b>", "<NAME>", "<html>",
                     "1 < 2 > 0", "<loc>", "<loc_x>", "< s>", "<| |>", "", "[0.1,0.2,0.3,0.4]"]:
        assert find_special_tokens(ordinary) == [], ordinary
