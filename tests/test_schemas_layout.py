"""Schema derivation and the dependency rules of DESIGN.md (transforms/ free of Beam; nothing imports pipeline)."""
import json
from pathlib import Path

import pyarrow as pa
from groundforge import schemas

ROOT = Path(__file__).resolve().parents[1]


def test_arrow_schema_derived_from_json_schema():
    s = schemas.record_arrow_schema()
    assert s.names == list(schemas.RECORD_COLUMNS)
    assert s.field("width").type == pa.int32()
    assert s.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    obj = s.field("objects").type.value_type
    assert obj.field("bbox").type == pa.list_(pa.float32(), 4)
    assert obj.field("span").type == pa.list_(pa.int32())
    features = json.loads(s.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}


def test_datasets_reads_image_feature_from_metadata():
    import datasets

    features = datasets.Features.from_arrow_schema(schemas.record_arrow_schema())
    assert isinstance(features["image"], datasets.Image)
    assert features["width"] == datasets.Value("int32")


def test_record_errors_flag_schema_and_box_problems():
    row = {"id": "0" * 20, "dataset": "d", "split": "train", "task": "rec", "format": "florence2", "prompt": "p",
           "target": "t", "image": {"bytes": b"x", "path": None}, "image_id": "1", "width": 10, "height": 10,
           "image_sha256": "a" * 64, "objects": [{"label": "x", "bbox": [0, 0, 5, 5], "score": 1.0, "span": []}],
           "caption": None, "meta": "{}"}
    assert schemas.record_errors(row) == []
    assert schemas.record_errors({**row, "task": "ocr"})[0].startswith("task:")
    bad = {**row, "objects": [{"label": "x", "bbox": [0, 0, 50, 5], "score": 1.0, "span": []}]}
    assert schemas.record_errors(bad) == ["objects/0/bbox: [0, 0, 50, 5] not inside 10x10 or empty"]
    assert schemas.record_errors({**row, "meta": "{"})[0].startswith("meta: not JSON")
