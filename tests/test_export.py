"""`groundforge export`: each target read back the way its trainer reads it, boxes round-tripped against the
canonical `objects`, images written once, rejects, byte-identical reruns and the DIR/OUT guard.

Oracles. ms-swift (its pip install pins transformers<5.20 and datasets 4) and maestro (it pins
requests<=2.32.3, below apache-beam's floor) cannot share the project venv: their readers are transcribed here,
source cited at each transcription, and two more tests run the real packages where they are installed (both
passed in side venvs: ms-swift 4.6.0, maestro 1.0.0; they skip here). LLaVA's loader is a few lines,
transcribed; the messages Parquet is loaded with the real `datasets` and rendered with a real chat template.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from groundforge.pipeline.export import export_cmd
from groundforge.pipeline.export.swift import SwiftTarget
from groundforge.pipeline.shards import iter_rows, load_info, shard_paths
from groundforge.schemas import record_arrow_schema
from groundforge.transforms.codecs import get_codec
from groundforge.transforms.templates import parse_output
from helpers import build_cli, jpeg_bytes


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The three shipped samples, built once: {builder: OUT}."""
    root = tmp_path_factory.mktemp("built")
    return {b: build_cli(b, root, [], name=b)[0] for b in ("counting", "refcoco", "grit")}


def export(src, out, target, *args, expect_exit=0):
    from click.testing import CliRunner

    result = CliRunner().invoke(export_cmd, ["--in", str(src), "--to", target, "--out", str(out), *map(str, args)],
                                catch_exceptions=False)
    assert result.exit_code == expect_exit, result.output
    return result


def records(out: Path) -> list[dict]:
    """Records in the order the export streams them (dataset_info shard order, id order within a shard)."""
    info = load_info(str(out))
    return [r for p in shard_paths(str(out), info) for r in iter_rows(p)]


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_round_trip(row: dict, fmt: str, text: str, width: int, height: int) -> None:
    """The answer text parsed back with groundforge's own parser matches the canonical objects (boxes within
    one quantization bin; counts and expressions exactly)."""
    task, objects = row["task"], row["objects"]
    parsed = parse_output(task, fmt, text, width, height, meta=row["meta"])
    if task == "reg":
        assert parsed == row["caption"]
    elif task == "counting":
        assert parsed == dict(Counter(o["label"] for o in objects))
    elif task == "count_class":
        assert parsed == sum(o["label"] == json.loads(row["meta"])["class"] for o in objects)
    else:
        bw, bh = get_codec(fmt).bin_size(width, height)
        got = sorted(box for _, box in parsed)
        want = sorted(o["bbox"] for o in objects)
        assert len(got) == len(want), (text, want)
        for g, w in zip(got, want):
            assert all(abs(a - b) <= tol + 1e-6 for a, b, tol in zip(g, w, (bw, bh, bw, bh))), (text, g, w)


# ---------------------------------------------------------------------------------------------------------
# ms-swift

def swift_expand(line: dict, width: int, height: int) -> tuple[str, str]:
    """What ms-swift's Qwen2-VL template makes of one grounding line, transcribed from ms-swift 3.x:
    swift/llm/template/base.py `Template.normalize_bbox` (bbox_type 'real', norm_bbox 'norm1000':
    `bbox[2*i] = int(round(x / width * 1000))`, image_id 0 by default), `Template._pre_tokenize` (the n-th
    `<ref-object>` of the conversation -> `replace_ref(objects['ref'][n])`, the n-th `<bbox>` ->
    `replace_bbox(objects['bbox'][n])`, counted over user and assistant turns in order), `_get_bbox_str`
    (`','.join(f'({x},{y})')`), and swift/llm/template/template/qwen.py `Qwen2VLTemplate.replace_ref` /
    `replace_bbox` with bbox_format 'legacy' (`<|object_ref_start|>{ref}<|object_ref_end|>`,
    `<|box_start|>{bbox_str}<|box_end|>`)."""
    objects = line["objects"]
    assert objects["bbox_type"] == "real"
    boxes = [[int(round(v / (width if i % 2 == 0 else height) * 1000)) for i, v in enumerate(b)]  # noqa: RUF046
             for b in objects["bbox"]]
    refs, state, out = objects["ref"], {"ref": 0, "bbox": 0}, []
    for message in line["messages"]:
        parts = []
        for piece in re.split(r"(<ref-object>|<bbox>|<image>)", message["content"]):
            if piece == "<ref-object>" and state["ref"] < len(refs):
                parts.append(f"<|object_ref_start|>{refs[state['ref']]}<|object_ref_end|>")
                state["ref"] += 1
            elif piece == "<bbox>" and state["bbox"] < len(boxes):
                b = boxes[state["bbox"]]
                parts.append("<|box_start|>" + ",".join(f"({x},{y})" for x, y in zip(b[::2], b[1::2])) + "<|box_end|>")
                state["bbox"] += 1
            elif piece != "<image>":
                parts.append(piece)
        out.append("".join(parts))
    # every placeholder consumed: ms-swift would leave an unmatched one in the text as is
    assert state == {"ref": len(refs), "bbox": len(boxes)}, (line, state)
    return out[0], out[1]


def swift_check_line(line: dict, root: Path) -> None:
    """ms-swift's reading of one line: messages alternate user/assistant with non-empty assistant content
    (swift/llm/dataset/preprocessor/core.py `RowPreprocessor.check_messages`), one `<image>` per entry of
    `images`, which it opens as paths."""
    assert set(line) == {"messages", "images", "objects"}
    user, assistant = line["messages"]
    assert user["role"] == "user" and assistant["role"] == "assistant" and assistant["content"]
    assert user["content"].startswith("<image>") and user["content"].count("<image>") == len(line["images"]) == 1
    assert (root / line["images"][0]).is_file()


@pytest.mark.parametrize("builder", ["refcoco", "grit", "counting"])
def test_swift_lines_expand_to_the_canonical_boxes(built, tmp_path, builder):
    out = tmp_path / "swift"
    result = export(built[builder], out, "swift")
    rows = records(built[builder])
    lines = [json.loads(s) for split in sorted({r["split"] for r in rows})
             for s in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    by_split = sorted(rows, key=lambda r: r["split"])  # stable: the streamed order within each split
    assert len(lines) == len(rows) and f"written: {len(rows)} swift entries" in result.output
    for line, row in zip(lines, by_split):
        swift_check_line(line, out)
        w, h = row["width"], row["height"]
        from PIL import Image

        with Image.open(out / line["images"][0]) as img:
            assert img.size == (w, h)  # normalize_bbox divides by the image file's own size
        if row["task"] not in ("counting", "count_class"):  # bbox_type real: the record's float32 boxes, exactly
            assert sorted(np.float32(line["objects"]["bbox"]).tolist()) == sorted(o["bbox"] for o in row["objects"])
        user, answer = swift_expand(line, w, h)
        if row["task"] == "reg":
            assert_round_trip({**row, "caption": answer}, "qwen2vl", answer, w, h)
            assert_round_trip({**row, "task": "rec"}, "qwen2vl", user, w, h)  # the box is in the question
            assert answer == f"<|object_ref_start|>{row['caption']}<|object_ref_end|>"
        elif row["task"] in ("counting", "count_class"):
            assert line["objects"] == {"ref": [], "bbox": [], "bbox_type": "real"}
            assert_round_trip(row, "qwen2vl", answer, w, h)
        else:
            assert_round_trip(row, "qwen2vl", answer, w, h)
        if row["task"] == "grounded_caption":
            assert re.sub(r"<\|box_start\|>.*?<\|box_end\|>|<\|object_ref_(start|end)\|>", "", answer) == row["caption"]


def test_swift_lines_through_ms_swift_itself(built, tmp_path):
    """Where ms-swift is installed (it is not in the project venv: it pins transformers<5.20 and datasets 4):
    its own `load_dataset` (AutoPreprocessor, strict) reads every line, and its Qwen2-VL template's grounding
    path (`_get_height_width`, `normalize_bbox`, `_pre_tokenize`, once over the whole conversation as
    `_swift_encode` does) produces exactly what `swift_expand` transcribes. Run with ms-swift 4.6.0 on the
    three samples: 1127 lines, identical."""
    pytest.importorskip("swift.template.templates.qwen")
    from PIL import Image
    from swift.dataset import load_dataset as swift_load_dataset
    from swift.template.base import Template
    from swift.template.template_inputs import StdTemplateInputs
    from swift.template.templates.qwen import Qwen2VLTemplate
    from swift.template.utils import split_str_parts_by

    out = tmp_path / "swift"
    export(built["grit"], out, "swift")
    lines = [json.loads(s) for s in (out / "train.jsonl").read_text().splitlines()]
    cwd = os.getcwd()
    os.chdir(out)  # relative image paths, as a user running `swift sft` from DIR
    try:
        ds, _ = swift_load_dataset([str(out / "train.jsonl")], strict=True)
        template = object.__new__(Qwen2VLTemplate)  # the grounding path needs no tokenizer
        template.norm_bbox, template.bbox_format, template.task_type = "norm1000", "legacy", "causal_lm"
        template.template_backend = "swift"
        assert len(ds) == len(lines)
        for row, line in zip(ds, lines):
            inputs = StdTemplateInputs.from_dict({k: row[k] for k in ("messages", "images", "objects")})
            inputs.images = [Image.open(p if isinstance(p, str) else p["path"]) for p in inputs.images]
            template._get_height_width(inputs)
            context = []
            for m in inputs.messages:
                context += [c for d in split_str_parts_by(m["content"], Template.special_tokens)
                            for c in (d["key"], d["content"]) if c and c != "<image>"] + ["\x00"]
            res, _ = template._pre_tokenize(context, [0.0] * len(context), inputs)
            user, answer, _ = "".join(res).split("\x00")
            assert (user, answer) == swift_expand(line, *inputs.images[0].size)
    finally:
        os.chdir(cwd)


def _row(task, objects, caption, **meta):
    return {"id": "0123456789abcdef0123", "task": task, "width": 640, "height": 480, "caption": caption,
            "objects": [{"label": label, "bbox": box, "score": 1.0, "span": span} for label, box, span in objects],
            "meta": json.dumps(meta), "prompt": "", "target": "", "split": "train"}


def test_swift_detection_and_phrase_grounding_layouts():
    """Tasks the shipped samples do not build, from records shaped like the builders'."""
    target = SwiftTarget("unused", seed=0)
    det = _row("detection", [("traffic light", [10, 20, 30.5, 60], []), ("person", [100, 100, 200, 400], []),
                             ("traffic light", [300, 10, 320, 50], [])], None,
               classes=["person", "traffic light", "t-shirt"])
    entry = target.entry(det)
    assert entry["response"] == "<ref-object><bbox><bbox>, <ref-object><bbox>"
    assert entry["objects"]["ref"] == ["traffic light", "person"]
    line = {"messages": [{"role": "user", "content": "<image>" + entry["query"]},
                         {"role": "assistant", "content": entry["response"]}], "objects": entry["objects"]}
    assert_round_trip(det, "qwen2vl", swift_expand(line, 640, 480)[1], 640, 480)
    assert "person, traffic light, t-shirt" in entry["query"]  # meta.classes, as the record was asked

    caption = "a man in a red t-shirt holding two cups"
    span = [caption.index("two cups"), len(caption)]
    pg = _row("phrase_grounding", [("two cups", [5, 5, 50, 50], span), ("two cups", [60, 5, 90, 50], span)], caption)
    entry = target.entry(pg)
    assert entry["objects"]["ref"] == ["two cups"] and entry["response"] == "<bbox><bbox>"
    assert "<ref-object>" in entry["query"]


@pytest.mark.parametrize("text, reason", [
    ("a dog <image> on a couch", "control_tokens"),
    ("the <bbox> left dog", "control_tokens"),
    ("the dog<loc_12>", "control_tokens"),
])
def test_swift_refuses_texts_that_would_inject_placeholders(text, reason):
    from groundforge.pipeline.export.common import ExportError

    with pytest.raises(ExportError) as err:
        SwiftTarget("unused").entry(_row("rec", [(text, [1, 1, 20, 20], [0, len(text)])], text))
    assert err.value.reason == reason


# ---------------------------------------------------------------------------------------------------------
# maestro

def maestro_load_split(location: Path, split: str) -> list[tuple[object, dict]]:
    """roboflow/maestro, transcribed: maestro/trainer/common/datasets/core.py `load_split_dataset` reads
    `{location}/{split}/annotations.jsonl` with images in `{location}/{split}`; datasets/jsonl.py
    `JSONLDataset._load_entries` keeps lines that parse, have REQUIRED_KEYS {"image", "prefix", "suffix"} and
    whose `os.path.join(image_dir, entry["image"])` exists; `__getitem__` returns
    (Image.open(path).convert("RGB"), entry)."""
    from PIL import Image

    image_dir = os.path.join(location, split)
    entries, skipped = [], 0
    with open(os.path.join(image_dir, "annotations.jsonl"), encoding="utf-8") as file:
        for line in file:
            entry = json.loads(line)
            if {"image", "prefix", "suffix"} - entry.keys() or not os.path.exists(os.path.join(image_dir, entry["image"])):
                skipped += 1
                continue
            entries.append(entry)
    assert skipped == 0
    return [(Image.open(os.path.join(image_dir, e["image"])).convert("RGB"), e) for e in entries]


def test_maestro_splits_load_and_suffixes_parse_back(built, tmp_path):
    out = tmp_path / "maestro"
    export(built["refcoco"], out, "maestro")
    rows = records(built["refcoco"])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["rejects", "testA", "testB", "train", "valid"]
    for split in ("train", "valid", "testA", "testB"):
        expected = [r for r in rows if r["split"] == ("val" if split == "valid" else split)]
        loaded = maestro_load_split(out, split)
        assert len(loaded) == len(expected) > 0
        for (image, entry), row in zip(loaded, expected):
            assert entry == {"image": f"{row['image_sha256']}.jpg", "prefix": row["prompt"], "suffix": row["target"]}
            assert image.size == (row["width"], row["height"])
            assert_round_trip(row, row["format"], entry["suffix"], *image.size)
    # each image once per split folder
    assert len(list((out / "train").glob("*.jpg"))) == len({r["image_sha256"] for r in rows if r["split"] == "train"})


def test_maestro_counting_answers_parse_back(built, tmp_path):
    out = tmp_path / "maestro"
    export(built["counting"], out, "maestro", "--rename-split", "train=valid")
    rows = records(built["counting"])
    loaded = maestro_load_split(out, "valid")
    assert len(loaded) == len(rows)
    for (image, entry), row in zip(loaded, rows):
        assert_round_trip(row, row["format"], entry["suffix"], *image.size)


def _installed_maestro_datasets():
    """maestro's PyPI release (1.0.0) keeps its JSONL loader in maestro/trainer/common/datasets.py; the file is
    loaded on its own because the package __init__ of maestro.trainer.common loads BLEU from the Hub."""
    import importlib.util

    spec = importlib.util.find_spec("maestro")
    roots = (spec and spec.submodule_search_locations) or []
    path = Path(roots[0]) / "trainer" / "common" / "datasets.py" if roots else None
    if path is None or not path.is_file():
        pytest.skip("maestro (PyPI release layout) is not installed")
    module_spec = importlib.util.spec_from_file_location("maestro_datasets", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_maestro_export_through_maestros_own_loader(built, tmp_path):
    """Where maestro is installed (not in the project venv: it pins requests<=2.32.3, which apache-beam
    refuses): its `load_split_dataset` / `create_data_loaders` read the export. Passed with maestro 1.0.0."""
    maestro = _installed_maestro_datasets()
    out = tmp_path / "maestro"
    export(built["refcoco"], out, "maestro")
    rows = records(built["refcoco"])
    for split in ("train", "valid", "testA"):
        ds = maestro.load_split_dataset(str(out), split)
        expected = [r for r in rows if r["split"] == ("val" if split == "valid" else split)]
        assert len(ds) == len(expected)
        for i, row in enumerate(expected):
            image, entry = ds[i]
            assert image.size == (row["width"], row["height"]) and entry["suffix"] == row["target"]
    _, valid, test = maestro.create_data_loaders(str(out), train_batch_size=4, train_collect_fn=lambda b: b)
    assert valid is not None and test is None and len(next(iter(valid))) == 4


# ---------------------------------------------------------------------------------------------------------
# LLaVA

def llava_items(data_path: Path, image_folder: Path):
    """haotian-liu/LLaVA llava/train/train.py, transcribed: LazySupervisedDataset json.load()s --data_path;
    __getitem__ opens os.path.join(image_folder, item['image']) and preprocess_multimodal moves the
    DEFAULT_IMAGE_TOKEN of a turn to its start (`replace(DEFAULT_IMAGE_TOKEN, '').strip()`, then
    `DEFAULT_IMAGE_TOKEN + '\\n' + value`)."""
    from PIL import Image

    with open(data_path, encoding="utf-8") as f:
        data = json.load(f)
    for item in data:
        image = Image.open(os.path.join(image_folder, item["image"])).convert("RGB")
        turns = [dict(t) for t in item["conversations"]]
        for t in turns:
            if "<image>" in t["value"]:
                t["value"] = "<image>\n" + t["value"].replace("<image>", "").strip()
        yield item, image, turns


def test_llava_json_loads_and_answers_parse_back(built, tmp_path):
    out = tmp_path / "llava"
    export(built["grit"], out, "llava")
    rows = {r["id"]: r for r in records(built["grit"])}
    items = list(llava_items(out / "train.json", out))
    assert [i["id"] for i, _, _ in items] == list(rows)
    for item, image, turns in items:
        row = rows[item["id"]]
        human, gpt = item["conversations"]
        assert human == {"from": "human", "value": "<image>\n" + row["prompt"]} and turns[0] == human
        assert gpt == {"from": "gpt", "value": row["target"]}
        assert image.size == (row["width"], row["height"])
        assert_round_trip(row, row["format"], gpt["value"], *image.size)
    assert len(list((out / "images").iterdir())) == len({r["image_sha256"] for r in rows.values()})


# ---------------------------------------------------------------------------------------------------------
# HF / TRL messages

def test_messages_parquet_loads_with_datasets(built, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "messages"
    export(built["refcoco"], out, "messages")
    rows = records(built["refcoco"])
    ds = load_dataset(str(out))  # the card's configs name every split (data_dir alone finds train/validation only)
    assert sorted(ds) == ["testA", "testB", "train", "val"]
    for split, part in ds.items():
        expected = [r for r in rows if r["split"] == split]
        assert part.num_rows == len(expected)
        for got, row in zip(part, expected):
            assert got["id"] == row["id"]
            assert got["messages"] == [
                {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": row["prompt"]}]},
                {"role": "assistant", "content": [{"type": "text", "text": row["target"]}]}]
            (image,) = got["images"]
            assert image.size == (row["width"], row["height"])  # decoded to PIL by the `datasets` Image feature
    card = (out / "README.md").read_text()
    assert "- split: testA\n    path: data/testA-*" in card
    # the rows go through a real chat template unchanged: Qwen2-VL-2B-Instruct's (tokenizer_config.json),
    # applied by transformers' apply_chat_template to the row as `datasets` returns it
    from groundforge.train.tiny import build_tokenizer

    row, first = ds["val"][0], next(r for r in rows if r["split"] == "val")
    text = build_tokenizer().apply_chat_template(row["messages"], chat_template=QWEN2_VL_CHAT_TEMPLATE, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    f"<|vision_start|><|image_pad|><|vision_end|>{first['prompt']}<|im_end|>\n"
                    f"<|im_start|>assistant\n{first['target']}<|im_end|>\n")


QWEN2_VL_CHAT_TEMPLATE = (  # Qwen/Qwen2-VL-2B-Instruct tokenizer_config.json "chat_template", verbatim
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == "
    "'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")


# ---------------------------------------------------------------------------------------------------------
# determinism, image modes, rejects, guard

@pytest.mark.parametrize("target", ["swift", "maestro", "llava", "messages"])
def test_rerun_gives_identical_bytes(built, tmp_path, target):
    a, b = tmp_path / "a", tmp_path / "b"
    export(built["grit"], a, target)
    export(built["grit"], b, target)
    first = tree_hashes(a)
    assert first == tree_hashes(b)
    export(built["grit"], a, target)  # again into the same DIR: images already there, same files
    assert tree_hashes(a) == first
    assert not [p for p in a.rglob(".tmp-*")]


def test_path_mode_references_the_stored_paths(built, tmp_path):
    out = tmp_path / "swift"
    export(built["counting"], out, "swift", "--image-mode", "path", "--image-prefix", "/data/coco/train2017")
    rows = records(built["counting"])
    lines = [json.loads(s) for s in (out / "train.jsonl").read_text().splitlines()]
    assert [ln["images"] for ln in lines] == [[f"/data/coco/train2017/{r['image']['path']}"] for r in rows]
    assert not (out / "images").exists()


def test_embed_export_of_a_path_mode_build_reads_the_image_root(tmp_path):
    from groundforge.pipeline.sample import SAMPLE_DIR

    src, _ = build_cli("counting", tmp_path, ["--image-mode", "path"], name="paths")
    result = export(src, tmp_path / "none", "llava", expect_exit=1)
    assert "export/missing_image" in result.output
    export(src, tmp_path / "llava", "llava", "--images", SAMPLE_DIR / "images")
    items = list(llava_items(tmp_path / "llava" / "train.json", tmp_path / "llava"))
    assert len(items) == len(records(src)) and all(i["image"].startswith("images/") for i, _, _ in items)


def _tamper(src: Path, dst: Path) -> dict:
    """A copy of `src` whose first shard has a caption with `<image>`, bytes that do not match image_sha256,
    and a PNG-looking record whose bytes are not an image format."""
    import shutil

    import pyarrow as pa

    shutil.copytree(src, dst)
    info = load_info(str(dst))
    shard = dst / info["shards"][0]["file"]
    rows = pq.read_table(shard).to_pylist()
    rows[0]["prompt"] = rows[0]["prompt"] + " <image>"
    rows[1]["image"] = {"bytes": jpeg_bytes(32, 32), "path": rows[1]["image"]["path"]}
    junk = b"\x00\x01junk"
    rows[2]["image"] = {"bytes": junk, "path": "x.png"}
    rows[2]["image_sha256"] = hashlib.sha256(junk).hexdigest()
    pq.write_table(pa.Table.from_pylist(rows, schema=record_arrow_schema()), shard)
    return {rows[0]["id"]: "control_tokens", rows[1]["id"]: "image_sha256_mismatch",
            rows[2]["id"]: "unknown_image_format"}


def test_bad_records_become_export_rejects(built, tmp_path):
    src = tmp_path / "tampered"
    bad = _tamper(built["refcoco"], src)
    out = tmp_path / "llava"
    result = export(src, out, "llava")
    rejects = pq.read_table(out / "rejects" / "rejects-00000-of-00001.parquet").to_pylist()
    assert {r["source"]: r["reason"] for r in rejects} == {f"record:{k}": v for k, v in bad.items()}
    assert {r["stage"] for r in rejects} == {"export"} and all(r["detail"] for r in rejects)
    for reason in bad.values():
        assert f"export/{reason}: 1" in result.output
    assert "rejected: 3" in result.output
    written = sum(len(json.loads(p.read_text())) for p in out.glob("*.json") if p.name != "export_info.json")
    assert written == len(records(src)) - 3
    info = json.loads((out / "export_info.json").read_text())
    assert info["rejects"]["rows"] == 3 and str(tmp_path) not in json.dumps(info)


def test_swift_rejects_a_nan_box_and_exports_the_rest(built, tmp_path):
    import shutil

    import pyarrow as pa

    src = tmp_path / "nan"
    shutil.copytree(built["refcoco"], src)
    shard = src / load_info(str(src))["shards"][0]["file"]
    rows = pq.read_table(shard).to_pylist()
    rows[0]["objects"][0]["bbox"] = [float("nan"), 1.0, 20.0, 20.0]
    pq.write_table(pa.Table.from_pylist(rows, schema=record_arrow_schema()), shard)
    result = export(src, tmp_path / "swift", "swift")
    assert "export/nan_box: 1" in result.output and "rejected: 1" in result.output
    rejects = pq.read_table(tmp_path / "swift" / "rejects" / "rejects-00000-of-00001.parquet").to_pylist()
    assert rejects == [{"source": f"record:{rows[0]['id']}", "stage": "export", "reason": "nan_box",
                        "detail": "[nan, 1.0, 20.0, 20.0]"}]


@pytest.mark.parametrize("inside", [".", "exports/llava"])
def test_refuses_out_equal_to_or_inside_in(built, inside):
    result = export(built["counting"], built["counting"] / inside, "llava", expect_exit=1)
    assert result.output.strip().splitlines() == ["Error: --out must not be --in or a folder inside it"]
    assert not (built["counting"] / "exports").exists()


def test_missing_input_is_a_one_line_error(tmp_path):
    result = export(tmp_path / "nothing", tmp_path / "x", "swift", expect_exit=1)
    assert len(result.output.strip().splitlines()) == 1 and "not a groundforge output" in result.output
