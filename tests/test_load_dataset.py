"""Outputs of the current CLI, with README.md rewritten by pipeline/card.py's dataset_card, load with
`datasets.load_dataset(OUT)`: every split under its own name with the row counts of dataset_info.json, images
decoded to PIL, grit's `annotations` config, and a clean error (not a TypeError) for an output without records."""
from __future__ import annotations

import json

import pytest
from groundforge.pipeline.card import COUNTING, GRIT, REFCOCO, dataset_card
from helpers import build_cli, info_of, write_coco


def _recard(out, card, command: str) -> dict:
    info = info_of(out)
    (out / "README.md").write_text(dataset_card(info, card, command=command))
    return info


def _load(out, tmp_path, *config, **kwargs):
    import datasets

    return datasets.load_dataset(str(out), *config, cache_dir=str(tmp_path / "hf-cache"), **kwargs)


def _check_loaded(ds, info):
    from PIL import Image

    assert sorted(ds) == sorted(info["splits"])
    for split, entry in info["splits"].items():
        assert ds[split].num_rows == entry["rows"]
        assert set(ds[split]["split"]) == {split}  # each split's rows, not another's
        row = ds[split][0]
        assert isinstance(row["image"], Image.Image)
        assert row["image"].size == (row["width"], row["height"])


def _check_yaml(out, configs: list[str]):
    """huggingface_hub's own loader parses the front matter; datasets reads the configs from it."""
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    data = DatasetCard.load(out / "README.md").data
    assert data.license == "other" and data.license_name and data.license_link
    assert sorted(MetadataConfigs.from_dataset_card_data(data)) == sorted(configs)


def test_refcoco_sample_loads_every_split_by_name(tmp_path):
    out, _ = build_cli("refcoco", tmp_path, [])
    info = _recard(out, REFCOCO["refcoco"], "groundforge build refcoco --out out")
    assert sorted(info["splits"]) == ["testA", "testB", "train", "val"]
    _check_yaml(out, ["default"])
    _check_loaded(_load(out, tmp_path), info)
    assert "holdout_image_ids.txt" in (out / "README.md").read_text()
    # Why the card says load_dataset(OUT), not DESIGN's load_dataset("parquet", data_dir=OUT/data): without the
    # card's configs, datasets infers splits from file names, renames val and silently drops testA/testB.
    import datasets

    inferred = datasets.load_dataset("parquet", data_dir=str(out / "data"), cache_dir=str(tmp_path / "hf-cache"))
    assert sorted(inferred) == ["train", "validation"]


def test_split_counts_in_the_card_are_checked_by_datasets(tmp_path):
    """dataset_info in the card is not decoration: a wrong num_examples makes load_dataset fail."""
    from datasets.exceptions import NonMatchingSplitsSizesError

    out, _ = build_cli("refcoco", tmp_path, [])
    info = _recard(out, REFCOCO["refcoco"], "groundforge build refcoco --out out")
    n = info["splits"]["val"]["rows"]
    text = (out / "README.md").read_text()
    assert text.count(f"num_examples: {n}\n") == 1
    (out / "README.md").write_text(text.replace(f"num_examples: {n}\n", f"num_examples: {n + 1}\n"))
    with pytest.raises(NonMatchingSplitsSizesError):
        _load(out, tmp_path)


def test_counting_sample_loads(tmp_path):
    out, _ = build_cli("counting", tmp_path, ["--format", "qwen2vl"])
    info = _recard(out, COUNTING, "groundforge build counting --format qwen2vl --out out")
    _check_yaml(out, ["default"])
    ds = _load(out, tmp_path)
    _check_loaded(ds, info)
    assert set(ds["train"]["format"]) == {"qwen2vl"}
    assert "**Qwen2-VL** (`--format qwen2vl`)" in (out / "README.md").read_text()


def test_grit_sample_loads_records_and_annotations(tmp_path):
    out, _ = build_cli("grit", tmp_path, [])
    info = _recard(out, GRIT, "groundforge build grit --out out")
    _check_yaml(out, ["default", "annotations"])
    _check_loaded(_load(out, tmp_path), info)
    ann = _load(out, tmp_path, "annotations")
    assert sorted(ann) == ["train"]
    assert ann["train"].num_rows == info["tables"]["annotations"]["rows"] > 0
    row = ann["train"][0]
    assert row["noun_chunks"] and len(row["noun_chunks"][0]) == 7
    assert "caption" in row and "image" not in row  # the annotation table, not the records


def test_output_without_records_fails_cleanly(tmp_path):
    """Every image missing: the CLI exits 1 saying so; the card parses and load_dataset(OUT) raises datasets'
    FileNotFoundError about missing data files (not a TypeError, and rejects/ is not loaded as data)."""
    from datasets.exceptions import DataFilesNotFoundError

    root = tmp_path / "in"
    coco = write_coco(root, [{"id": 7, "file_name": "missing.jpg", "width": 64, "height": 48, "skip_file": True}],
                      [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 2, 10, 10], "area": 100, "iscrowd": 0}])
    out, result = build_cli("counting", tmp_path, ["--coco", coco, "--images", root / "images"], expect_exit=1)
    assert "no records were written" in result.output
    info = _recard(out, COUNTING, "groundforge build counting --coco in/instances.json --out out")
    assert info["rows"] == 0 and info["rejects"]["rows"] == 1
    assert list((out / "rejects").glob("*.parquet"))
    _check_yaml(out, ["default"])
    assert "This build wrote no records" in (out / "README.md").read_text()
    with pytest.raises(DataFilesNotFoundError):
        _load(out, tmp_path)


def test_render_keeps_the_source_card(tmp_path):
    """What the lead's render needs: the CardInfo of an existing output, stored in dataset_info.json."""
    from groundforge.pipeline.card import card_info_from, card_to_json

    out, _ = build_cli("refcoco", tmp_path, ["--dataset", "refcoco"])
    assert card_info_from(str(out)) == REFCOCO["refcoco"]  # builder default while the writer stores none
    info = info_of(out)
    info["card"] = card_to_json(REFCOCO["refcocog"])
    (out / "dataset_info.json").write_text(json.dumps(info))
    assert card_info_from(str(out)) == REFCOCO["refcocog"]
