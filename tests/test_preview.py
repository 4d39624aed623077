"""`groundforge preview` as a user meets it: records from every split and task, readable labels kept inside the
image, the decoded target beside the canonical boxes, filters by split/task, and a one-line error or a
placeholder card (never a traceback) for whatever cannot be shown."""
import base64
import io
import json
import os
import re
import shutil
from collections import Counter
from html.parser import HTMLParser

import pytest
from PIL import Image

from helpers import build_cli, info_of, jpeg_bytes, read_rows, rewrite_shard, run_cli, write_coco

FONT_PX = 14  # pipeline/preview.py FONT_PX (tests import the module lazily, so the CLI tests run on any code)


def _pv():
    from groundforge.pipeline import preview

    assert preview.FONT_PX == FONT_PX
    return preview


@pytest.fixture(scope="module")
def refcoco(tmp_path_factory):
    """The shipped RefCOCO sample: 4 splits x (rec, reg)."""
    out, _ = build_cli("refcoco", tmp_path_factory.mktemp("refcoco"), [])
    return out


def _coco(root, image_mode="embed"):
    """5 images, 6 classes (one with a digit and a dash), one box each: count_class 0s dominate (25 of 30)."""
    cats = [{"id": 1, "name": "dog", "supercategory": "animal"}, {"id": 2, "name": "cat", "supercategory": "animal"},
            {"id": 3, "name": "t-shirt 2", "supercategory": "clothes"}, {"id": 4, "name": "sports ball", "supercategory": "sports"},
            {"id": 5, "name": "person", "supercategory": "person"}, {"id": 6, "name": "hair drier", "supercategory": "indoor"}]
    images = [{"id": i, "file_name": f"sub/{i:012d}.jpg", "width": 64, "height": 48} for i in range(1, 6)]
    anns = [{"id": 10 * i, "image_id": i, "category_id": 1 + i % 3, "bbox": [4, 4, 20, 16], "iscrowd": 0}
            for i in range(1, 6)]
    coco = write_coco(root, images, anns, categories=cats)
    out, _ = build_cli("counting", root, ["--coco", coco, "--images", root / "images", "--image-mode", image_mode,
                                          "--max-zero-ratio", "1"],  # keep every zero answer: mostly empty cards
                       name=f"out-{image_mode}")
    return out


@pytest.fixture(scope="module")
def counting(tmp_path_factory):
    return _coco(tmp_path_factory.mktemp("counting"))


@pytest.fixture(scope="module")
def path_mode(tmp_path_factory):
    root = tmp_path_factory.mktemp("pathmode")
    return _coco(root, "path"), root / "images"


class Page(HTMLParser):
    """Cards (data-split, data-task, img count, verdict class), headings and select options of a preview page."""

    def __init__(self, text):
        super().__init__()
        self.cards, self.groups, self.options, self._select, self._in_card = [], [], {}, None, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class", "")
        if tag == "div" and cls == "card":
            self.cards.append({"split": a["data-split"], "task": a["data-task"], "imgs": [], "verdict": None,
                               "problem": None})
        elif tag == "img" and self.cards:
            self.cards[-1]["imgs"].append(a["src"])
        elif tag == "p" and cls.startswith("verdict"):
            self.cards[-1]["verdict"] = cls.split()[1]
        elif tag == "p" and cls == "problem" and self.cards:
            self.cards[-1]["problem"] = ""
        elif tag == "h2" and cls == "group":
            self.groups.append((a["data-split"], a["data-task"]))
        elif tag == "select":
            self._select = a["id"]
            self.options[self._select] = []
        elif tag == "option" and self._select:
            self.options[self._select].append(a["value"])

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None

    def handle_data(self, data):
        if self.cards and self.cards[-1]["problem"] == "":
            self.cards[-1]["problem"] = data


def _preview(out, tmp_path, *args):
    html = tmp_path / "p.html"
    result = run_cli(["preview", out, "--out", html, *args])
    assert result.output.strip().splitlines() == [f"wrote {html} ({len(Page(html.read_text()).cards)} records)"]
    return Page(html.read_text()), html.read_text()


# ---------------------------------------------------------------- what is sampled

def test_sample_spreads_over_every_split_and_task(refcoco):
    rows = _pv().sample_rows(str(refcoco), 8, seed=0)
    assert Counter((r["split"], r["task"]) for r in rows) == {
        (s, t): 1 for s in ("testA", "testB", "train", "val") for t in ("rec", "reg")}
    assert _pv().sample_rows(str(refcoco), 8, seed=0) == rows  # deterministic
    assert [r["id"] for r in _pv().sample_rows(str(refcoco), 8, seed=1)] != [r["id"] for r in rows]


def test_sample_prefers_records_with_boxes(counting):
    rows = _pv().sample_rows(str(counting), 6, seed=0)
    assert Counter(r["task"] for r in rows) == {"count_class": 3, "counting": 3}
    zero = [r for r in rows if r["task"] == "count_class" and not r["objects"]]
    assert len(zero) <= 1  # every 4th pick of a group may be a record without boxes, so zeros still show
    all_rows = read_rows(counting)
    assert Counter(bool(r["objects"]) for r in all_rows if r["task"] == "count_class") == {False: 25, True: 5}


# ---------------------------------------------------------------- the page

def test_page_groups_and_filters_by_split_and_task(refcoco, tmp_path):
    page, text = _preview(refcoco, tmp_path, "--n", "16")
    splits, tasks = ["testA", "testB", "train", "val"], ["rec", "reg"]
    assert page.options == {"split": [""] + splits, "task": [""] + tasks}
    assert page.groups == [(s, t) for s in splits for t in tasks]
    assert [(c["split"], c["task"]) for c in page.cards] == [(s, t) for s in splits for t in tasks for _ in (0, 1)]
    assert all(len(c["imgs"]) == 1 and c["verdict"] == "ok" and c["problem"] is None for c in page.cards)
    assert "function applyFilter()" in text and 'onchange="applyFilter()"' in text
    assert "break-all" not in text


def test_tokens_are_never_split(refcoco, tmp_path):
    _, text = _preview(refcoco, tmp_path, "--n", "4")
    assert re.search(r'<span class="tok">&lt;loc_\d+&gt;</span><wbr>', text)
    assert ".tok{white-space:nowrap" in text
    assert _pv().code_html("cup<loc_908><loc_1>, x") == (
        'cup<span class="tok">&lt;loc_908&gt;</span><wbr><span class="tok">&lt;loc_1&gt;</span><wbr>,<wbr> x')


def _image_of(card) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(card["imgs"][0].split(",", 1)[1]))).convert("RGB")


def test_box_tasks_show_objects_and_decoded_target_side_by_side(refcoco, counting, tmp_path):
    page, _ = _preview(refcoco, tmp_path, "--n", "2")
    assert all(_image_of(c).width > 2 * _image_of(c).height for c in page.cards)  # two 4:3 panels
    page, _ = _preview(counting, tmp_path, "--n", "2")
    assert all(_image_of(c).width < 2 * _image_of(c).height for c in page.cards)  # counts: one panel + text


def test_a_target_that_disagrees_with_objects_is_flagged(refcoco, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(refcoco, out)
    shards = info_of(out)["shards"]
    index = next(i for i, s in enumerate(shards) if s["split"] == "testA")

    def break_rec(rows):
        return [{**r, "target": re.sub(r"<loc_(\d+)>", "<loc_0>", r["target"])} if r["task"] == "rec" else r
                for r in rows]

    rewrite_shard(out, break_rec, index)
    page, text = _preview(out, tmp_path, "--n", "16")
    verdicts = {(c["split"], c["task"], c["verdict"]) for c in page.cards}
    assert ("testA", "rec", "bad") in verdicts and ("testA", "reg", "ok") in verdicts
    assert ("testB", "rec", "ok") in verdicts
    assert "target decodes to 1 box(es) for 1 object(s), not the same boxes" in text


def test_decoded_target_for_every_task():
    row = {"task": "count_class", "format": "florence2", "target": "3", "width": 10, "height": 10, "prompt": "",
           "meta": json.dumps({"class": "dog"})}
    assert _pv().decoded_target(row) == ("count", 3)
    assert _pv().decoded_target({**row, "task": "counting", "target": '{"dog": 2}'}) == ("counts", {"dog": 2})
    kind, value = _pv().decoded_target({**row, "task": "reg", "format": "qwen25vl", "width": 640, "height": 480,
                                  "prompt": "What is in the region [10, 20, 300, 400]?"})
    assert kind == "boxes" and len(value) == 1 and value[0][0] == "prompt box"
    assert _pv().decoded_target({**row, "format": "nope"})[0] == "error"


# ---------------------------------------------------------------- labels: readable, on a background, inside the image

def _panel(box, label, size=(304, 228)):
    base = Image.new("RGB", size, (255, 255, 255))
    return _pv().draw_panel(base, [(label, box)], [label], 1.0, "objects: 1")


def _strip(panel):
    return panel.crop((0, FONT_PX + 8, panel.width, panel.height))  # below the heading strip


def test_label_has_a_background_and_a_scaled_font():
    img = _strip(_panel([60, 80, 200, 200], "dog"))
    red = (0xE6, 0x19, 0x4B)
    rows = [y for y in range(img.height) if any(_near(img.getpixel((x, y)), red) for x in range(60, 100))]
    # filled background band above the box, at least as tall as the font (PIL's old bitmap font: ~11 px)
    band = [y for y in rows if y < 80]
    assert len(band) >= FONT_PX and max(band) == 79
    text = [(x, y) for x in range(60, 120) for y in band if img.getpixel((x, y))[0] > 200 and img.getpixel((x, y))[1] > 200]
    assert text, "white text on the label background"
    assert max(y for _, y in text) - min(y for _, y in text) >= 8  # glyphs at least 8 px tall


def _near(p, q, tol=40):
    return all(abs(a - b) <= tol for a, b in zip(p, q))


@pytest.mark.parametrize("box", [[0, 0, 50, 40], [250, 0, 304, 30], [280, 200, 304, 228], [-30, -10, 20, 20]])
def test_label_stays_inside_the_image(box):
    """Boxes on the top edge, the right edge, the bottom-right corner and partly outside: the whole label is
    drawn inside the image (before: clipped at the edges)."""
    label = "a very long referring expression that is wider than the whole image itself"
    img = _strip(_panel(box, label))
    red = (0xE6, 0x19, 0x4B)
    filled = [(x, y) for x in range(img.width) for y in range(img.height) if img.getpixel((x, y)) == red]
    xs, ys = [x for x, _ in filled], [y for _, y in filled]
    assert min(xs) >= 0 and max(xs) < img.width and min(ys) >= 0 and max(ys) < img.height
    assert max(ys) - min(ys) + 1 >= FONT_PX  # a whole label band, not a clipped sliver


def test_label_box_placement():
    assert _pv().label_box(40, 14, [100, 100, 150, 150], (300, 200)) == (100, 80, 146, 100)   # above the box
    assert _pv().label_box(40, 14, [100, 5, 150, 150], (300, 200)) == (100, 5, 146, 25)       # no room: inside
    assert _pv().label_box(40, 14, [290, 100, 300, 150], (300, 200)) == (254, 80, 300, 100)   # pushed left
    assert _pv().label_box(40, 14, [10, 195, 20, 200], (300, 200)) == (10, 175, 56, 195)      # above, at the bottom


# ---------------------------------------------------------------- errors: one line, or a card that says why

def _error(args) -> str:
    result = run_cli(["preview", *args], expect_exit=1)  # catch_exceptions=False: a traceback fails the test
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_missing_out_folder_is_one_line(counting, tmp_path):
    html = tmp_path / "no" / "such" / "p.html"
    assert _error([counting, "--out", html]) == f"Error: cannot write {html}: folder {html.parent} does not exist"


def test_missing_output_and_bad_info_are_one_line(counting, tmp_path):
    assert "dataset_info.json not found" in _error([tmp_path / "nothing", "--out", tmp_path / "p.html"])
    out = tmp_path / "out"
    shutil.copytree(counting, out)
    (out / "dataset_info.json").write_text("[]")
    assert _error([out, "--out", tmp_path / "p.html"]).startswith(
        "Error: dataset_info.json: not a JSON object (a list); run `groundforge validate")


def test_corrupt_shard_is_one_line(counting, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(counting, out)
    shard = out / info_of(out)["shards"][0]["file"]
    shard.write_bytes(b"PAR1" + b"\0" * 100)
    assert _error([out, "--out", tmp_path / "p.html"]).startswith(f"Error: {info_of(out)['shards'][0]['file']}: cannot be read (")


def test_path_mode_output_without_image_root_or_files(path_mode, tmp_path):
    out, images = path_mode
    page, _ = _preview(out, tmp_path, "--n", "3")
    assert all(c["problem"].startswith("image not embedded (sub/") and c["problem"].endswith("pass --image-root")
               for c in page.cards)
    empty = tmp_path / "empty"
    empty.mkdir()
    page, _ = _preview(out, tmp_path, "--n", "3", "--image-root", empty)
    assert [c["problem"].split(": ")[0] for c in page.cards] == ["image not found under --image-root"] * 3
    assert all(len(c["imgs"]) == 1 for c in page.cards)  # boxes still drawn, on a blank canvas
    page, _ = _preview(out, tmp_path, "--n", "3", "--image-root", images)
    assert all(c["problem"] is None for c in page.cards)


def test_image_root_that_is_not_a_folder_is_one_line(path_mode, tmp_path):
    out, _ = path_mode
    assert _error([out, "--out", tmp_path / "p.html", "--image-root", tmp_path / "nope"]) == (
        f"Error: --image-root {tmp_path / 'nope'} is not a folder")


def test_tampered_record_paths_and_bytes_become_placeholder_cards(path_mode, tmp_path):
    out, images = path_mode
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(jpeg_bytes(64, 48))
    os.symlink(outside, images / "sub" / "link.jpg")
    bad = ["../../secret.jpg", str(outside), "sub/link.jpg", "C:\\secret.jpg"]

    def tamper(rows):
        for row, path in zip(rows, bad):
            row["image"] = {"bytes": None, "path": path}
        rows[len(bad)]["image"] = {"bytes": b"\xff\xd8\xff not a jpeg", "path": None}
        return rows

    rewrite_shard(copy, tamper)
    try:
        page, _ = _preview(copy, tmp_path, "--n", "40", "--image-root", images)
    finally:
        os.unlink(images / "sub" / "link.jpg")
    problems = Counter((c["problem"] or "").split(" (")[0].split(":")[0] for c in page.cards)
    assert problems["image path refused"] == 4
    assert problems["image does not decode"] == 1
    assert all(len(c["imgs"]) == 1 for c in page.cards)


def test_card_image_without_bytes_draws_boxes_on_a_canvas():
    row = {"width": 64, "height": 48, "objects": [{"label": "dog", "bbox": [4.0, 4.0, 24.0, 20.0]}]}
    img = Image.open(io.BytesIO(_pv().card_image(row, None, "boxes", [("dog", [4.0, 4.0, 24.0, 20.0])])))
    assert img.width > 2 * 200 and img.getpixel((2, img.height - 2))[0] in range(195, 215)  # grey canvas
