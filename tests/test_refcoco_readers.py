"""RefCOCO readers: refer pickles (restricted unpickler), lmms-lab and jxu124 exports, dedupe, holdout."""
from __future__ import annotations

import collections
import io
import json
import os
import pathlib
import pickle
import re

import fixtures_refcoco as fx
import pytest
from groundforge.pipeline.readers.refcoco_parquet import (
    detect_file_layout,
    detect_layout,
    file_columns,
    input_files,
    jxu124_row_to_item,
    lmms_row_to_item,
    read_refcoco_file,
    read_refcoco_files,
    split_from_path,
)
from groundforge.pipeline.readers.refer import (
    ReaderError,
    UnsafePickleError,
    canonical_image_id,
    dedupe_sentences,
    holdout_image_ids,
    holdout_text,
    image_id_from_file_name,
    load_instances,
    make_reject,
    read_exclude_images,
    read_refer,
    ref_to_item,
    safe_load_pickle,
)
from helpers import reader_view

ITEM_KEYS = ["dataset", "split", "ref_id", "ann_id", "image_id", "file_name", "image_bytes", "width", "height",
             "bbox_xyxy", "sentences", "source"]


def _split(results):
    items = [r for r in results if not r.get("reject")]
    rejects = [r for r in results if r.get("reject")]
    return items, rejects


def _reasons(rejects):
    return [(r["source"].rsplit("#", 1)[1], r["reason"]) for r in rejects]


# ---------------------------------------------------------------- restricted unpickler

class _OpenForWrite:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _refuse(data: bytes, target: pathlib.Path, names: str) -> str:
    with pytest.raises(UnsafePickleError) as err:
        safe_load_pickle(io.BytesIO(data))
    assert not target.exists()
    message = str(err.value)
    assert "\n" not in message
    assert f"refusing to unpickle {names}: only plain containers and scalars are allowed" in message
    return message


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_reduce_to_open_refused_nothing_created(tmp_path, protocol):
    target = tmp_path / "pwned"
    data = pickle.dumps({"refs": [_OpenForWrite(str(target))]}, protocol=protocol)
    _refuse(data, target, "io.open")


def test_reduce_to_os_system_refused(tmp_path):
    target = tmp_path / "pwned"
    _refuse(pickle.dumps([_System(f"touch {target}")], protocol=2), target, f"{os.system.__module__}.system")


def test_reduce_to_path_touch_refused(tmp_path):
    target = tmp_path / "pwned"
    # Pickling looks up pathlib.Path.touch / PosixPath first: whichever global comes first is refused.
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle pathlib\.(Path\.touch|PosixPath)"):
        safe_load_pickle(io.BytesIO(pickle.dumps(_Touch(str(target)), protocol=4)))
    assert not target.exists()


def _crafted_pickles(target: pathlib.Path) -> list[tuple[str, bytes]]:
    """Hand-written opcode streams; each would create `target` if unpickled by the stock pickle module."""
    cmd = f"touch {target}".encode()
    code = f"open({str(target)!r}, 'w').close()".encode()
    return [
        ("os.system", b"cos\nsystem\n(S'" + cmd + b"'\ntR."),                       # protocol 0 GLOBAL + REDUCE
        ("posix.system", b"(S'" + cmd + b"'\niposix\nsystem\n."),                    # protocol 0 INST
        ("__builtin__.exec", b"\x80\x02(c__builtin__\nexec\nS'" + code + b"'\no."),   # protocol 2 OBJ
        ("builtins.exec", b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93\x8c" + bytes([len(code)]) + code
         + b"\x85R."),                                                                # protocol 4 STACK_GLOBAL
        ("collections.OrderedDict", b"\x80\x02ccollections\nOrderedDict\n)R}b."),   # BUILD on a refused global
    ]


def test_crafted_opcodes_refused(tmp_path):
    target = tmp_path / "pwned"
    for name, data in _crafted_pickles(target):
        _refuse(data, target, name)


def test_crafted_pickles_do_run_under_stock_pickle(tmp_path):
    """The hostile fixtures are real: the unrestricted unpickler creates the file."""
    target = tmp_path / "pwned"
    for name, data in _crafted_pickles(target)[:4]:
        pickle.loads(data)
        assert target.exists(), name
        target.unlink()
    pickle.loads(pickle.dumps([_OpenForWrite(str(target))], protocol=2))[0].close()
    assert target.exists()


def test_codecs_encode_only_latin1(tmp_path):
    data = pickle.dumps(b"\x00\xffabc", protocol=2)  # _codecs.encode('\x00\xffabc', 'latin1')
    assert safe_load_pickle(io.BytesIO(data)) == b"\x00\xffabc"
    assert safe_load_pickle(io.BytesIO(pickle.dumps([b""], protocol=2))) == [b""]  # builtins.bytes()
    rot13 = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UnsafePickleError, match=r"_codecs\.encode other than \(str, 'latin1'\)"):
        safe_load_pickle(io.BytesIO(rot13))


def _admitted_state_pickles() -> list[tuple[str, bytes]]:
    """Pickles that only use the admitted `_codecs.encode`, but not as a call with checked arguments."""
    defaults = (b"N}X\x0c\x00\x00\x00__defaults__X\x04\x00\x00\x00evilX\x06\x00\x00\x00latin1\x86s\x86b")
    return [
        # the helper itself as the result: an object other than plain data
        ("refusing to unpickle _codecs.encode as a value", b"\x80\x02c_codecs\nencode\n."),
        ("refusing to unpickle _codecs.encode as a value", b"\x80\x02]c_codecs\nencode\na."),
        # BUILD with slot state: setattr(helper, "__defaults__", ("evil", "latin1")), then a bare call
        ("refusing to unpickle state for _codecs.encode",
         b"\x80\x02c_codecs\nencode\n" + defaults + b"0c_codecs\nencode\n)R."),
        # BUILD with a dict state: helper.__dict__.update(...)
        ("refusing to unpickle state for _codecs.encode", b"\x80\x02c_codecs\nencode\n}X\x01\x00\x00\x00aK\x01sb0N."),
        # no global at all: protocol 5 READONLY_BUFFER turns a bytearray into a memoryview
        ("refusing to unpickle a builtins.memoryview as a value", b"\x80\x05\x96\x03\x00\x00\x00\x00\x00\x00\x00abc\x98."),
    ]


def test_admitted_globals_never_leak_or_change_state():
    for message, data in _admitted_state_pickles():
        with pytest.raises(UnsafePickleError) as err:
            safe_load_pickle(io.BytesIO(data))
        assert str(err.value) == f"<pickle data>: {message}: only plain containers and scalars are allowed"
    # no load above changed what `_codecs.encode` does for the next pickle
    assert safe_load_pickle(io.BytesIO(pickle.dumps([b"\xffok"], protocol=2))) == [b"\xffok"]
    with pytest.raises(UnsafePickleError, match=r"_codecs\.encode other than \(str, 'latin1'\)"):
        safe_load_pickle(io.BytesIO(b"\x80\x02c_codecs\nencode\n)R."))


def test_shared_and_cyclic_plain_data_loads():
    shared = ["x"]
    deep = shared
    for _ in range(64):  # 2**64 paths through the structure: the plain-data check must visit each list once
        deep = [deep, deep]
    cyclic = {"self": []}
    cyclic["self"].append(cyclic)
    assert safe_load_pickle(io.BytesIO(pickle.dumps(deep, protocol=2)))[0][1][0][0] is not None
    loaded = safe_load_pickle(io.BytesIO(pickle.dumps(cyclic, protocol=4)))
    assert loaded["self"][0] is loaded


def test_plain_data_round_trips_all_protocols():
    obj = {"a": [1, 2.5, None, True, False, ("t", b"by")], "b": {"nested": "ü"}, 3: -2**70}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert safe_load_pickle(io.BytesIO(pickle.dumps(obj, protocol=protocol))) == obj


def test_python2_strings_decode_utf8_then_latin1(tmp_path):
    path = tmp_path / "p2.p"
    path.write_bytes(fx.py2_pickle({"raw": "woman in a café", "n": 3}))
    assert safe_load_pickle(str(path)) == {"raw": "woman in a café", "n": 3}
    # Not valid UTF-8: decoded as latin-1, byte for byte.
    assert safe_load_pickle(io.BytesIO(fx.py2_pickle({"raw": b"caf\xe9"}))) == {"raw": "café"}


def test_corrupt_pickle_is_reader_error_not_unsafe(tmp_path):
    path = tmp_path / "bad.p"
    path.write_bytes(b"\x80\x02]q\x00(K\x01")
    with pytest.raises(ReaderError, match=r"bad\.p: not a readable pickle") as err:
        safe_load_pickle(str(path))
    assert not isinstance(err.value, UnsafePickleError)


def test_hostile_refs_pickle_stops_read_refer(tmp_path):
    target = tmp_path / "pwned"
    refer_dir, _ = fx.write_refer(str(tmp_path), refs_bytes=pickle.dumps([_OpenForWrite(str(target))], protocol=2))
    with pytest.raises(UnsafePickleError) as err:
        reader_view(read_refer(refer_dir, "refcoco", "unc"))
    assert str(err.value) == (f"{refer_dir}/refcoco/refs(unc).p: refusing to unpickle io.open: "
                              "only plain containers and scalars are allowed")
    assert not target.exists()


# ---------------------------------------------------------------- refer layout

def test_refer_items_exact(tmp_path):
    refer_dir, _ = fx.write_refer(str(tmp_path))
    refs = f"{refer_dir}/refcoco/refs(unc).p"
    items, rejects = _split(reader_view(read_refer(refer_dir, "refcoco", "unc")))
    assert [list(i) for i in items] == [ITEM_KEYS] * 4
    assert items[0] == {
        "dataset": "refcoco", "split": "train", "ref_id": "0", "ann_id": "1001", "image_id": "581857",
        "file_name": "COCO_train2014_000000581857.jpg",  # from instances.json, not refs' _1001 suffixed name
        "image_bytes": None, "width": 8, "height": 6, "bbox_xyxy": [1.0, 1.0, 4.0, 3.0],
        "sentences": ["man on the left", "Man on the  LEFT ", "woman in a café"], "source": f"{refs}#ref_id=0",
    }
    assert items[1]["bbox_xyxy"] == [4.5, 0.0, 8.0, 6.0]
    assert items[3] == {
        "dataset": "refcoco", "split": "testB", "ref_id": "3", "ann_id": "3001", "image_id": "200",
        "file_name": "COCO_train2014_000000000200.jpg", "image_bytes": None, "width": 6, "height": 10,
        "bbox_xyxy": [2.0, 3.0, 4.0, 8.0], "sentences": ["small dog"],  # blank raw -> sent
        "source": f"{refs}#ref_id=3",
    }
    assert collections.Counter(i["split"] for i in items) == {"train": 2, "val": 1, "testB": 1}
    assert _reasons(rejects) == [("ref_id=4", "bad_bbox"), ("ref_id=5", "unknown_annotation"),
                                 ("ref_id=6", "unknown_image"), ("ref_id=7", "no_sentences"),
                                 ("ref_id=8", "missing_field")]
    assert rejects[0] == {"reject": True, "source": f"{refs}#ref_id=4", "stage": "read", "reason": "bad_bbox",
                          "detail": "not a list of 4 numbers: [1, 2, 3]"}
    assert rejects[4]["detail"] == "split is missing or empty (got None)"
    deduped = [dedupe_sentences(i["sentences"]) for i in items]
    assert [n for _, n in deduped] == [1, 0, 1, 0]
    assert deduped[0][0] == ["man on the left", "woman in a café"]
    assert holdout_image_ids(read_refer(refer_dir, "refcoco", "unc")) == ["100", "200"]  # rejects ignored


def test_refer_python3_pickle_and_bytes_keys(tmp_path):
    refs = fx.refer_refs()[:1]
    refs[0] = {k.encode(): v for k, v in refs[0].items()}  # keys as Python 2 str read with encoding="bytes"
    refer_dir, _ = fx.write_refer(str(tmp_path), refs_bytes=pickle.dumps(refs, protocol=3))
    (item,) = reader_view(read_refer(refer_dir, "refcoco", "unc"))
    assert (item["ref_id"], item["bbox_xyxy"], item["sentences"][0]) == ("0", [1.0, 1.0, 4.0, 3.0], "man on the left")


def test_ref_annotation_on_other_image_rejected(tmp_path):
    refer_dir, _ = fx.write_refer(str(tmp_path))
    index = load_instances(f"{refer_dir}/refcoco/instances.json")
    ref = fx.refer_refs()[0] | {"image_id": 100}
    (out,) = reader_view([ref_to_item(ref, index, dataset="refcoco", source="s")])
    assert out == {"reject": True, "source": "s", "stage": "read", "reason": "annotation_image_mismatch",
                   "detail": "ref image_id 100 but annotation 1001 is on image 581857"}
    assert reader_view([ref_to_item("junk", index, dataset="refcoco", source="s")])[0]["reason"] == "bad_row"


@pytest.mark.parametrize("dataset,split_by,message", [
    ("refcoco+", "google", "refcoco+ has no split_by 'google' (refer provides refcoco: unc|google; "
                           "refcoco+: unc; refcocog: google|umd)"),
    ("refcocog", "unc", "refcocog has no split_by 'unc'"),
    ("refclef", "unc", "unknown dataset 'refclef': expected one of refcoco, refcoco+, refcocog"),
])
def test_refer_invalid_combination(tmp_path, dataset, split_by, message):
    with pytest.raises(ReaderError, match=re.escape(message)):
        reader_view(read_refer(str(tmp_path), dataset, split_by))


def test_refer_missing_files(tmp_path):
    with pytest.raises(ReaderError, match=r"refer file not found: .*refcocog/refs\(umd\)\.p"):
        reader_view(read_refer(str(tmp_path), "refcocog", "umd"))


# ---------------------------------------------------------------- lmms-lab parquet

def test_lmms_parquet_items(tmp_path):
    path = fx.write_lmms_parquet(str(tmp_path / "data" / "testA-00000-of-00001.parquet"))
    assert detect_file_layout(path) == "lmms"
    items, rejects = _split(reader_view(read_refcoco_file(path, dataset="refcoco")))
    rows = fx.lmms_rows()
    assert items[0] == {
        "dataset": "refcoco", "split": "testA", "ref_id": "0", "ann_id": None, "image_id": "100",
        "file_name": None, "image_bytes": rows[0]["image"]["bytes"], "width": 10, "height": 8,
        "bbox_xyxy": [1.5, 1.0, 4.5, 3.5], "sentences": ["left man", "Left  Man", "tall one"],
        "source": f"{path}#row=0",
    }
    # EXIF orientation 6: stored 8x6, displayed 6x8
    assert (items[1]["width"], items[1]["height"], items[1]["image_id"]) == (6, 8, "200")
    assert items[2] | {"source": ""} == {
        "dataset": "refcoco", "split": "testA", "ref_id": "2", "ann_id": None, "image_id": "581857",
        "file_name": "COCO_train2014_000000581857.jpg", "image_bytes": None, "width": None, "height": None,
        "bbox_xyxy": [1.0, 1.0, 2.0, 2.0], "sentences": ["by path"], "source": "",
    }
    assert _reasons(rejects) == [("row=3", "no_sentences"), ("row=4", "bad_bbox"), ("row=5", "missing_field")]
    assert dedupe_sentences(items[0]["sentences"]) == (["left man", "tall one"], 1)


def test_lmms_split_from_option_and_bbox_override(tmp_path):
    path = fx.write_lmms_parquet(str(tmp_path / "refcoco.parquet"))
    with pytest.raises(ReaderError, match=r"refcoco\.parquet: cannot tell the split from the file name; pass --split"):
        reader_view(read_refcoco_file(path, dataset="refcoco"))
    items, _ = _split(reader_view(read_refcoco_file(path, dataset="refcoco", split="val", bbox_format="xyxy")))
    assert {i["split"] for i in items} == {"val"}
    assert items[0]["bbox_xyxy"] == [1.5, 1.0, 3.0, 2.5]
    with pytest.raises(ReaderError, match="--bbox-format must be xywh or xyxy, got 'cxcywh'"):
        reader_view(read_refcoco_file(path, dataset="refcoco", split="val", bbox_format="cxcywh"))


def test_lmms_answer_as_string_and_row_function():
    row = {"question_id": 7, "image": {"bytes": None, "path": "x/COCO_val2014_000000000042.jpg"},
           "answer": "a dog", "bbox": [0, 0, 2, 2]}
    item = lmms_row_to_item(row, dataset="refcoco+", split="val", source="s")
    assert (item["ref_id"], item["image_id"], item["file_name"], item["sentences"], item["bbox_xyxy"]) == \
        ("7", "42", "x/COCO_val2014_000000000042.jpg", ["a dog"], [0.0, 0.0, 2.0, 2.0])


# ---------------------------------------------------------------- jxu124 parquet / JSON / JSONL

def _jxu124_expected(path, images_dir=None):
    first = "COCO_train2014_000000581857.jpg" if images_dir else "coco/train2014/COCO_train2014_000000581857.jpg"
    return [
        {"dataset": "refcoco", "split": "train", "ref_id": "10", "ann_id": "1001", "image_id": "581857",
         "file_name": first, "image_bytes": None, "width": 8, "height": 6, "bbox_xyxy": [1.0, 1.0, 4.0, 3.0],
         "sentences": ["man on the left", "MAN on the left"], "source": f"{path}#row=0"},
        {"dataset": "refcoco", "split": "val", "ref_id": "11", "ann_id": "2001", "image_id": "100",
         "file_name": ("COCO_train2014_000000000100.jpg" if images_dir
                       else "coco/train2014/COCO_train2014_000000000100.jpg"),
         "image_bytes": None, "width": 10, "height": 8, "bbox_xyxy": [0.0, 0.0, 10.0, 8.0],
         "sentences": ["the whole thing"], "source": f"{path}#row=1"},
        # no image_path / raw_image_info: refs' suffixed file_name with _<ann_id> removed, size unknown
        {"dataset": "refcoco", "split": "testA", "ref_id": "12", "ann_id": "3001", "image_id": "200",
         "file_name": "COCO_train2014_000000000200.jpg", "image_bytes": None, "width": None, "height": None,
         "bbox_xyxy": [2.0, 3.0, 4.0, 8.0], "sentences": ["small dog"], "source": f"{path}#row=2"},
    ]


@pytest.mark.parametrize("writer,name", [
    (fx.write_jxu124_parquet, "refcoco.parquet"),
    (fx.write_jxu124_jsonl, "refcoco.jsonl"),
    (fx.write_jxu124_json, "refcoco.json"),
])
def test_jxu124_items(tmp_path, writer, name):
    path = writer(str(tmp_path / "in" / name))
    assert detect_file_layout(path) == "jxu124"
    items, rejects = _split(reader_view(read_refcoco_file(path, dataset="refcoco")))
    assert items == _jxu124_expected(path)
    assert _reasons(rejects) == [("row=3", "bad_bbox"), ("row=4", "missing_field"), ("row=5", "no_sentences")]
    assert rejects[1]["detail"] == "split is missing and no --split was given"
    assert [dedupe_sentences(i["sentences"])[1] for i in items] == [1, 0, 0]
    assert collections.Counter(i["split"] for i in items) == {"train": 1, "val": 1, "testA": 1}


def test_jxu124_images_dir_resolves_base_name(tmp_path):
    images_dir = str(tmp_path / "images" / "train2014")
    fx.write_images(images_dir)
    path = fx.write_jxu124_parquet(str(tmp_path / "refcoco.parquet"))
    items, _ = _split(reader_view(read_refcoco_file(path, dataset="refcoco", images_dir=images_dir)))
    assert items == _jxu124_expected(path, images_dir)


def test_jxu124_split_fallback_and_file_split(tmp_path):
    path = fx.write_jxu124_parquet(str(tmp_path / "validation-00000-of-00001.parquet"))
    results = reader_view(read_refcoco_file(path, dataset="refcoco"))
    assert [r.get("split", r.get("reason")) for r in results] == \
        ["train", "val", "testA", "bad_bbox", "validation", "no_sentences"]  # row split wins over file name
    results = reader_view(read_refcoco_file(path, dataset="refcoco", split="testB"))
    assert results[4]["split"] == "testB"


def test_jsonl_bad_line_rejected(tmp_path):
    path = fx.write_jxu124_jsonl(str(tmp_path / "r.jsonl"), extra_lines=["{not json", "[1, 2]"])
    results = reader_view(read_refcoco_file(path, dataset="refcocog"))
    assert len(results) == 8
    assert results[6] == {"reject": True, "source": f"{path}#row=6", "stage": "read", "reason": "bad_json",
                          "detail": "Expecting property name enclosed in double quotes: line 1 column 2 (char 1): "
                                    "'{not json'"}
    assert results[7]["reason"] == "bad_row"
    assert {r["dataset"] for r in results if not r.get("reject")} == {"refcocog"}


def test_jsonl_line_not_utf8_rejected(tmp_path):
    path = tmp_path / "r.jsonl"
    bad = b'{"ref_id": 1, "sentences": ["caf\xe9"]}'  # latin-1, not UTF-8
    path.write_bytes("\ufeff".encode() + json.dumps(fx.jxu124_rows()[1]).encode() + b"\n" + bad + b"\n")
    results = reader_view(read_refcoco_file(str(path), dataset="refcoco", layout="jxu124"))
    assert [r.get("reason", r.get("ref_id")) for r in results] == ["11", "bad_json"]  # BOM line read too
    assert results[1]["detail"] == ("'utf-8' codec can't decode byte 0xe9 in position 32: invalid continuation "
                                    "byte: '{\"ref_id\": 1, \"sentences\": [\"caf\ufffd\"]}'")


def test_corrupt_parquet_is_reader_error(tmp_path):
    good = fx.write_lmms_parquet(str(tmp_path / "val-00000-of-00001.parquet"))
    for name, data in [("junk.parquet", b"not parquet at all"),
                       ("cut.parquet", pathlib.Path(good).read_bytes()[:-200])]:
        path = tmp_path / name
        path.write_bytes(data)
        for read in (lambda p: file_columns(p), lambda p: reader_view(read_refcoco_file(p, dataset="refcoco", split="val"))):
            with pytest.raises(ReaderError, match=rf"^{re.escape(str(path))}: not a readable Parquet file \("):
                read(str(path))


def test_json_object_file_is_config_error(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"train": []}, indent=1))
    with pytest.raises(ReaderError, match="expected a JSON array of rows or JSON Lines, got a JSON object"):
        reader_view(read_refcoco_file(str(path), dataset="refcoco", layout="jxu124"))


def test_jxu124_row_function_direct():
    row = {"ref_id": 5, "image_id": "000000000042", "split": "val", "sentences": ["a", {"raw": "b"}],
           "bbox": "[0, 0, 3, 4]", "image_path": "val2014/COCO_val2014_000000000042.jpg",
           "raw_image_info": {"width": 640, "height": 480}}
    item = jxu124_row_to_item(row, dataset="refcoco", source="s", bbox_format="xywh")
    assert (item["image_id"], item["sentences"], item["bbox_xyxy"], item["width"], item["height"], item["ann_id"]) == \
        ("42", ["a", "b"], [0.0, 0.0, 3.0, 4.0], 640, 480, None)


# ---------------------------------------------------------------- layout detection, files, splits

def test_detect_layout():
    assert detect_layout(["question_id", "image", "question", "answer", "segmentation", "bbox", "iscrowd",
                          "file_name"]) == "lmms"
    assert detect_layout(fx.JXU124_SCHEMA.names) == "jxu124"
    with pytest.raises(ReaderError) as err:
        detect_layout(["id", "caption", "bbox"])
    assert str(err.value) == ("cannot detect the RefCOCO layout (lmms needs question_id, image, answer, bbox; "
                              "jxu124 needs ref_id, sentences, bbox); columns found: bbox, caption, id")
    with pytest.raises(ReaderError, match="columns match both RefCOCO layouts, pass --input-layout lmms|jxu124"):
        detect_layout(["question_id", "image", "answer", "bbox", "ref_id", "sentences"])


def test_forced_layout_and_unknown_layout(tmp_path):
    path = fx.write_jxu124_parquet(str(tmp_path / "x.parquet"))
    results = reader_view(read_refcoco_file(path, dataset="refcoco", layout="lmms", split="val"))
    assert {r["reason"] for r in results} == {"missing_field"}  # no question_id in a jxu124 file
    with pytest.raises(ReaderError, match="unknown input layout 'coco': expected auto, lmms or jxu124"):
        reader_view(read_refcoco_file(path, dataset="refcoco", layout="coco"))
    with pytest.raises(ReaderError, match="unknown dataset 'RefCOCO'"):
        reader_view(read_refcoco_file(path, dataset="RefCOCO"))


def test_split_from_path():
    assert split_from_path("data/val-00000-of-00004.parquet") == "val"
    assert split_from_path("data/testA-00000-of-00001.parquet") == "testA"
    assert split_from_path("default/testB/0000.parquet") == "testB"
    assert split_from_path("x/validation-00000-of-00001.parquet") == "validation"
    assert split_from_path("x/test_refcoco.jsonl") == "test"
    assert split_from_path("x/refcoco.parquet") is None


def test_input_files_sorted_and_glob(tmp_path):
    b = fx.write_lmms_parquet(str(tmp_path / "data" / "val-00001-of-00002.parquet"))
    a = fx.write_lmms_parquet(str(tmp_path / "data" / "val-00000-of-00002.parquet"))
    assert input_files(str(tmp_path / "data" / "*.parquet")) == [a, b]
    results = reader_view(read_refcoco_files(str(tmp_path / "data" / "*.parquet"), dataset="refcoco"))
    assert [r["source"] for r in results][:2] == [f"{a}#row=0", f"{a}#row=1"]
    assert len(results) == 12
    with pytest.raises(ReaderError, match="no input files match .*nothing"):
        input_files(str(tmp_path / "nothing*.parquet"))


# ---------------------------------------------------------------- dedupe, ids, holdout

def test_dedupe_sentences():
    assert dedupe_sentences(["A man", "a  MAN ", "a woman", "\ta man\n", "", "  ", "A Woman", "dog"]) == \
        (["A man", "a woman", "dog"], 5)
    assert dedupe_sentences([]) == ([], 0)


def test_image_ids():
    assert canonical_image_id("000000581857") == "581857"
    assert canonical_image_id(581857.0) == "581857"
    assert canonical_image_id("flickr_abc") == "flickr_abc"
    assert canonical_image_id("0000") == "0"
    assert image_id_from_file_name("COCO_train2014_000000581857.jpg") == "581857"
    assert image_id_from_file_name("train2017/000000000139.jpg") == "139"
    assert image_id_from_file_name("COCO_train2014_000000581857_16.jpg") == "COCO_train2014_000000581857_16"


def test_holdout_and_exclude_file(tmp_path):
    items = [{"split": s, "image_id": i} for s, i in
             [("train", "5"), ("val", "100"), ("testA", "20"), ("testB", "100"), ("test", "abc"), ("train", "20"),
              ("validation", "3")]]
    items.append(make_reject("x", "bad_bbox", ""))
    ids = holdout_image_ids(items)
    assert ids == ["3", "20", "100", "abc"]
    path = tmp_path / "holdout_image_ids.txt"
    path.write_text(holdout_text(ids))
    assert path.read_text().splitlines()[1:] == ids
    assert read_exclude_images(str(path)) == frozenset(ids)
    path.write_text("# header\n\n 000000000042 \n7  # inline comment\n#99\nabc\n\n")
    assert read_exclude_images(str(path)) == frozenset({"42", "7", "abc"})
    with pytest.raises(ReaderError, match="--exclude-images file not found: .*missing.txt"):
        read_exclude_images(str(tmp_path / "missing.txt"))
