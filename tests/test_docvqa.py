"""`groundforge build docvqa` end to end (DirectRunner), on both layouts: the original DocVQA JSON + documents/
folder, and Hugging Face Parquet exports with the field names of lmms-lab/DocVQA and HuggingFaceM4/DocumentVQA
(their dataset cards: questionId, question, question_types, image {bytes, path}, docId, ucsf_document_id,
ucsf_document_page_no, answers, data_split; HuggingFaceM4 has an int32 questionId and no data_split)."""
from __future__ import annotations

import io
import json

import pytest
from groundforge.pipeline.readers.docvqa import row_item
from groundforge.transforms.records import record_id
from groundforge.transforms.templates import parse_output, render_record
from helpers import build_cli, info_of, read_rows


def png_bytes(width, height, text="", color=(250, 250, 245)) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), color)
    ImageDraw.Draw(img).text((8, 8), text, fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def question(qid, text, answers, image, doc_id, ucsf, page="1", split="val", types=("form",)):
    return {"questionId": qid, "question": text, "question_types": list(types), "image": image, "docId": doc_id,
            "ucsf_document_id": ucsf, "ucsf_document_page_no": page, "answers": answers, "data_split": split}


def write_docvqa_json(root, data, split="val", name="val_v1.0.json"):
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text(json.dumps({"dataset_name": "docvqa", "dataset_split": split, "dataset_version": "1.0",
                                "data": data}))
    return path


@pytest.fixture()
def json_input(tmp_path):
    """val_v1.0.json + documents/: two documents with good questions, and one bad input of each kind."""
    root = tmp_path / "docvqa"
    (root / "documents").mkdir(parents=True)
    (root / "documents" / "xnbl0037_1.png").write_bytes(png_bytes(320, 400, "MEMO  DATE: 1/8/93"))
    (root / "documents" / "pybv0228_81.png").write_bytes(png_bytes(300, 420, "TOTAL $ 4,500"))
    data = [
        question(49153, "What is the ‘actual’ value per 1000, during the year 1975?", ["0.28"],
                 "documents/pybv0228_81.png", 14465, "pybv0228", "81", types=("figure/diagram",)),
        question(24580, "What is the date mentioned in this letter?", ["1/8/93", "January 8, 1993", "  "],
                 "documents/xnbl0037_1.png", 2724, "xnbl0037", types=("layout",)),
        question(24581, "What is the total?", ["$ 4,500", "4,500"], "documents/pybv0228_81.png", 14465, "pybv0228",
                 "81", types=("table/list",)),
        # bad inputs
        question(24582, "Who signed it?", ["J. Doe"], "documents/missing_1.png", 9, "missing"),
        question(24583, "What does <loc_12> say?", ["x"], "documents/xnbl0037_1.png", 2724, "xnbl0037"),
        question(24584, "What is the fax number?", ["<|box_start|>"], "documents/xnbl0037_1.png", 2724, "xnbl0037"),
        question(24585, "What is the heading?", [], "documents/xnbl0037_1.png", 2724, "xnbl0037"),
        question(24586, "Whose letter is it?", ["Brown"], "../outside.png", 1, "x"),
        question(24580, "What is the date mentioned in this letter?", ["1/8/93"],
                 "documents/xnbl0037_1.png", 2724, "xnbl0037"),  # duplicate questionId
        "not an object",
    ]
    return write_docvqa_json(root, data)


def reasons(out):
    return sorted((r["stage"], r["reason"]) for r in read_rows(out, "rejects"))


def test_json_layout_records_and_rejects(tmp_path, json_input):
    out, result = build_cli("docvqa", tmp_path, ["--json", json_input])
    rows = {json.loads(r["meta"])["question_id"]: r for r in read_rows(out)}
    assert sorted(rows) == ["24580", "24581", "49153"]
    date = rows["24580"]
    assert date["task"] == "vqa" and date["split"] == "val" and date["dataset"] == "docvqa"
    assert date["prompt"] == "<DocVQA>What is the date mentioned in this letter?"  # "<DocVQA>" + question
    assert date["target"] == "1/8/93"  # the first answer
    meta = json.loads(date["meta"])
    assert meta["answers"] == ["1/8/93", "January 8, 1993"]  # every answer kept for ANLS (the blank one dropped)
    assert meta["question_types"] == ["layout"] and meta["ucsf_document_id"] == "xnbl0037"
    assert meta["source"] == "val_v1.0.json#1" and meta["file_name"] == "documents/xnbl0037_1.png"
    assert date["id"] == record_id("docvqa", "val", "24580", "vqa")
    assert date["image_id"] == "2724" and (date["width"], date["height"]) == (320, 400)
    assert date["objects"] == [] and date["caption"] == "What is the date mentioned in this letter?"
    assert rows["49153"]["prompt"] == "<DocVQA>What is the ‘actual’ value per 1000, during the year 1975?"
    assert reasons(out) == sorted([
        ("image", "missing_image"), ("image", "path_traversal"), ("read", "bad_row"), ("read", "no_answers"),
        ("read", "duplicate_question_id"), ("render", "control_tokens"), ("render", "control_tokens")])
    rejects = {r["reason"] + ":" + r["source"]: r for r in read_rows(out, "rejects")}
    assert "questionId 24580 (val) also at val_v1.0.json#1" in rejects["duplicate_question_id:val_v1.0.json#8"]["detail"]
    assert "caption" in rejects["control_tokens:record:" + record_id("docvqa", "val", "24583", "vqa")]["detail"]
    assert "meta.answers[0]" in rejects["control_tokens:record:" + record_id("docvqa", "val", "24584", "vqa")]["detail"]
    info = info_of(out)
    # 10 inputs read; 3 distinct readable images, each decoded once for all its questions
    assert info["stats"]["questions_read"] == 10 and info["stats"]["images_read"] == 2
    assert info["stats"]["blank_answers_dropped"] == 1
    assert info["args"]["layout"] == "json"
    assert "read: images 2, questions 10" in result.output


def test_rebuild_is_byte_identical_and_loads(tmp_path, json_input):
    import datasets

    out1, _ = build_cli("docvqa", tmp_path, ["--json", json_input, "--format", "paligemma"], name="a")
    out2, _ = build_cli("docvqa", tmp_path, ["--json", json_input, "--format", "paligemma"], name="b")
    for sub in ("data", "rejects"):
        files1 = sorted(p.name for p in (out1 / sub).glob("*.parquet"))
        assert files1 and files1 == sorted(p.name for p in (out2 / sub).glob("*.parquet"))
        for name in files1:
            assert (out1 / sub / name).read_bytes() == (out2 / sub / name).read_bytes(), name
    ds = datasets.load_dataset(str(out1))
    assert list(ds) == ["val"] and ds["val"].num_rows == 3
    row = next(r for r in ds["val"] if r["target"] == "$ 4,500")
    assert row["prompt"] == "What is the total?"  # big_vision's DocVQA transfer: the bare question as prefix
    assert row["image"].size == (300, 420)  # decoded to PIL by the card's features
    assert json.loads(row["meta"])["answers"] == ["$ 4,500", "4,500"]


def write_parquet(path, rows, questionid_type):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [("questionId", questionid_type), ("question", pa.string()), ("question_types", pa.list_(pa.string())),
              ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("docId", pa.int64()),
              ("ucsf_document_id", pa.string()), ("ucsf_document_page_no", pa.string()),
              ("answers", pa.list_(pa.string()))]
    if "data_split" in rows[0]:
        fields.append(("data_split", pa.string()))
    schema = pa.schema(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_parquet_layouts_lmms_and_m4(tmp_path):
    doc = png_bytes(240, 300, "INVOICE 7731")
    other = png_bytes(200, 260, "AGENDA")
    lmms = [  # lmms-lab/DocVQA: questionId string, data_split column; the image repeated per question
        {"questionId": "337", "question": "what is the invoice number?", "question_types": ["layout"],
         "image": {"bytes": doc, "path": None}, "docId": 279, "ucsf_document_id": "yhlf0225",
         "ucsf_document_page_no": "1", "answers": ["7731"], "data_split": "train"},
        {"questionId": "338", "question": "Whom is it billed to?", "question_types": ["form"],
         "image": {"bytes": doc, "path": None}, "docId": 279, "ucsf_document_id": "yhlf0225",
         "ucsf_document_page_no": "1", "answers": ["Lorillard", "Lorillard Corp."], "data_split": "train"},
        {"questionId": "339", "question": "What is written at the top?", "question_types": ["layout"],
         "image": {"bytes": b"not an image", "path": None}, "docId": 280, "ucsf_document_id": "zzzz0000",
         "ucsf_document_page_no": "2", "answers": ["AGENDA"], "data_split": "train"},
    ]
    m4 = [  # HuggingFaceM4/DocumentVQA: int32 questionId, no data_split (the file name gives it)
        {"questionId": 57349, "question": "What is the title?", "question_types": ["layout"],
         "image": {"bytes": other, "path": "agenda.png"}, "docId": 1, "ucsf_document_id": "abcd0001",
         "ucsf_document_page_no": "3", "answers": ["AGENDA", "agenda"]},
        {"questionId": 57350, "question": "When?", "question_types": ["form"],
         "image": {"bytes": other, "path": "agenda.png"}, "docId": 1, "ucsf_document_id": "abcd0001",
         "ucsf_document_page_no": "3", "answers": None},  # the test split has no answers
    ]
    import pyarrow as pa

    write_parquet(tmp_path / "hf" / "train-00000-of-00001.parquet", lmms, pa.string())
    write_parquet(tmp_path / "hf" / "validation-00000-of-00001.parquet", m4, pa.int32())
    out, _ = build_cli("docvqa", tmp_path, ["--parquet", tmp_path / "hf" / "*.parquet", "--format", "kosmos2"])
    rows = {r["id"]: r for r in read_rows(out)}
    first = rows[record_id("docvqa", "train", "337", "vqa")]
    assert first["prompt"] == "Question: what is the invoice number? Answer:" and first["target"] == "7731"
    assert first["image"]["bytes"] == doc and first["image_id"] == "279"
    billed = rows[record_id("docvqa", "train", "338", "vqa")]
    assert billed["target"] == "Lorillard" and json.loads(billed["meta"])["answers"] == ["Lorillard", "Lorillard Corp."]
    title = rows[record_id("docvqa", "validation", "57349", "vqa")]
    assert title["split"] == "validation" and title["image"]["path"] == "agenda.png"
    assert json.loads(title["meta"])["layout"] == "hf"
    assert len(rows) == 3
    assert reasons(out) == [("image", "undecodable_image"), ("read", "no_answers")]
    info = info_of(out)
    assert info["stats"]["questions_read"] == 5 and info["stats"]["images_read"] == 2  # one decode per document


def test_unreadable_json_file_is_one_reject(tmp_path, json_input):
    (json_input.parent / "train_v1.0.json").write_text('[{"questionId": 1}]')  # rows, not the DocVQA object
    (json_input.parent / "test_v1.0.json").write_text('{"data": [')  # truncated
    out, _ = build_cli("docvqa", tmp_path, ["--json", json_input.parent / "*_v1.0.json"])
    assert len(read_rows(out)) == 3  # val_v1.0.json still builds
    bad = sorted((r["source"], r["detail"]) for r in read_rows(out, "rejects") if r["reason"] == "unreadable_file")
    assert [s for s, _ in bad] == ["test_v1.0.json", "train_v1.0.json"]
    assert bad[0][1].startswith("test_v1.0.json: not valid JSON")
    assert bad[1][1].startswith("train_v1.0.json: not a DocVQA annotation file")
    assert all(str(tmp_path) not in d for _, d in bad)


def test_configuration_errors(tmp_path, json_input):
    _, result = build_cli("docvqa", tmp_path, ["--json", json_input, "--parquet", "x.parquet"], expect_exit=2)
    assert "not both" in result.output
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad" / "train-0.parquet"
    bad.parent.mkdir()
    pq.write_table(pa.table({"question": ["q"], "answers": [["a"]]}), bad)
    _, result = build_cli("docvqa", tmp_path, ["--parquet", bad], expect_exit=1)
    assert "missing column(s) questionId, image" in result.output
    _, result = build_cli("docvqa", tmp_path, ["--json", tmp_path / "nothing*.json"], expect_exit=1)
    assert "no files match" in result.output


def test_row_item_rejects_and_splits():
    ok = question(1, " What  is it? ", ["a"], "documents/d.png", 5, "dddd0001", split="")
    item = row_item(ok, layout="json", source="f#0", file_split="val")
    assert item["split"] == "val" and item["image_key"] == "file:documents/d.png" and item["image_id"] == "5"
    assert row_item(ok, layout="json", source="f#0", split="train", file_split="val")["split"] == "train"
    bad = {"missing_field": {**ok, "questionId": None}, "bad_answers": {**ok, "answers": "a"},
           "no_answers": {**ok, "answers": ["", " "]}, "missing_image": {**ok, "image": None},
           "bad_split": {**ok, "data_split": "train/val"}, "bad_id": {**ok, "questionId": 1.5}}
    for reason, row in bad.items():
        out = row_item(row, layout="json", source="f#0", file_split="val")
        assert out.row["reason"] == reason and out.stage == "read", (reason, out)
    assert row_item({**ok, "docId": None}, layout="json", source="s", file_split="v")["image_id"] == "dddd0001_1"


def test_vqa_rendering_per_format_and_florence2_processor():
    from helpers import tiny_florence2_processor

    record = {"id": "q", "task": "vqa", "width": 100, "height": 120, "objects": [], "caption": "What is the date?",
              "meta": {"answers": ["March 3,\n1998", "3/3/98"]}}
    prompts = {fmt: render_record(record, fmt) for fmt in
               ("florence2", "kosmos2", "paligemma", "qwen2vl", "qwen25vl", "shikra")}
    assert {f: r.prompt for f, r in prompts.items()} == {
        "florence2": "<DocVQA>What is the date?", "kosmos2": "Question: What is the date? Answer:",
        "paligemma": "What is the date?", "qwen2vl": "What is the date?", "qwen25vl": "What is the date?",
        "shikra": "What is the date?"}
    assert {r.target for r in prompts.values()} == {"March 3, 1998"}
    processor = tiny_florence2_processor()
    # "<DocVQA>" is no task token of the released processor: the prompt reaches the tokenizer unchanged
    assert processor._construct_prompts([prompts["florence2"].prompt]) == ["<DocVQA>What is the date?"]
    generated = "</s><s>March 3, 1998</s><pad><pad>"
    # as andimarafioti/florence2-finetuning evaluate.py reads an answer: post-process, then drop "<pad>"
    want = processor.post_process_generation(generated, task="<DocVQA>", image_size=(100, 120))["<DocVQA>"]
    want = want.replace("<pad>", "")
    assert parse_output("vqa", "florence2", generated, 100, 120) == want == "March 3, 1998"
    with pytest.raises(ValueError) as err:
        render_record({**record, "meta": {"answers": []}}, "qwen2vl")
    assert err.value.reason == "bad_meta"
    with pytest.raises(ValueError) as err:
        render_record({**record, "caption": "Is <DocVQA> here?"}, "qwen2vl")
    assert err.value.reason == "control_tokens"


def test_image_mode_path_and_images_folder(tmp_path, json_input):
    out, _ = build_cli("docvqa", tmp_path, ["--json", json_input, "--images", json_input.parent,
                                            "--image-mode", "path", "--format", "qwen25vl"])
    rows = read_rows(out)
    assert len(rows) == 3
    assert {r["image"]["path"] for r in rows} == {"documents/xnbl0037_1.png", "documents/pybv0228_81.png"}
    assert all(r["image"]["bytes"] is None for r in rows)
    assert all(len(r["image_sha256"]) == 64 for r in rows)


def test_shipped_sample_regenerates_and_is_answerable(tmp_path):
    from groundforge.pipeline.sample import DOCVQA_DIR, DOCVQA_DOCS, generate_docvqa
    from PIL import Image

    generate_docvqa(tmp_path)
    for name in ("train_v1.0.json", "val_v1.0.json"):
        assert (tmp_path / name).read_bytes() == (DOCVQA_DIR / name).read_bytes()
    shipped = sorted(p.name for p in (DOCVQA_DIR / "documents").iterdir())
    assert shipped == sorted(p.name for p in (tmp_path / "documents").iterdir())
    assert {name.rsplit(".", 1)[1] for name in shipped} == {"png", "jpg"}
    for name in shipped:
        with Image.open(DOCVQA_DIR / "documents" / name) as a, Image.open(tmp_path / "documents" / name) as b:
            assert a.size == b.size == (400, 520) and a.format == b.format
    questions = 0
    for _split, _doc, _ucsf, _page, _ext, title, lines, qs in DOCVQA_DOCS:
        text = " ".join([title, *lines])
        for _qid, _q, answers, _types in qs:
            assert answers[0].lower() in text.lower(), answers  # the target is written on the page
            questions += 1
    assert questions == 12
