"""pipeline/card.py on synthetic dataset_info dicts: Hub metadata as huggingface_hub and datasets parse it, licenses
and citations per builder, the build command without local paths, and the CardInfo JSON round trip."""
from __future__ import annotations

import json

import pytest
from groundforge.pipeline import card as cardmod
from groundforge.pipeline.card import (
    COUNTING,
    GRIT,
    REFCOCO,
    CardInfo,
    card_for,
    card_from_json,
    card_info_from,
    card_to_json,
    dataset_card,
    display_command,
    grit_card,
    refcoco_card,
    size_category,
)


def _info(splits: dict, fmt: str = "florence2", builder: str = "refcoco", dataset: str = "refcoco", tables=None,
          **extra) -> dict:
    """A dataset_info.json as WriteDataset._info writes it: splits {name: {task: rows}}, one shard per split."""
    info = {
        "builder": builder, "builder_version": "0.1.0", "dataset": dataset,
        "splits": {s: {"rows": sum(t.values()), "shards": 1, "tasks": t} for s, t in splits.items()},
        "rows": sum(sum(t.values()) for t in splits.values()),
        "shards": [{"file": f"data/{s}-00000-of-00001.parquet", "split": s, "rows": sum(t.values()),
                    "sha256": "0" * 64, "bytes": 1000 + i} for i, (s, t) in enumerate(sorted(splits.items()))],
        "rejects": {"rows": 3, "by_reason": {"image/missing_image": 2, "read/bad_bbox": 1}, "files": []},
        "stats": {"images_read": 10},
        "args": {"fmt": fmt, "images": "/home/someone/coco/train2014", "seed": 0},
        "versions": {"groundforge": "0.1.0"},
    }
    if tables is not None:
        info["tables"] = tables
    info.update(extra)
    return info


REFCOCO_INFO = _info({"train": {"rec": 10, "reg": 10}, "val": {"rec": 3, "reg": 3}, "testA": {"rec": 2, "reg": 2},
                      "testB": {"rec": 1, "reg": 1}})


def _parsed(text: str, tmp_path):
    """The card as huggingface_hub loads it from a README.md file."""
    from huggingface_hub import DatasetCard

    path = tmp_path / "README.md"
    path.write_text(text)
    return DatasetCard.load(path)


def test_metadata_parses_with_huggingface_hub_and_datasets(tmp_path):
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    loaded = _parsed(dataset_card(REFCOCO_INFO, REFCOCO["refcoco"]), tmp_path)
    data = loaded.data
    assert data.license == "other"
    assert data.license_name == "apache-2.0-and-coco-images"
    assert data.license_link == "https://cocodataset.org/#termsofuse"
    assert data.language == ["en"] and data.size_categories == ["n<1K"]
    assert data.pretty_name == "groundforge RefCOCO (rec / reg)"
    configs = MetadataConfigs.from_dataset_card_data(data)
    assert list(configs) == ["default"]
    assert configs["default"]["data_files"] == [{"split": s, "path": f"data/{s}-*"}
                                                for s in ("testA", "testB", "train", "val")]
    infos = DatasetInfosDict.from_dataset_card_data(data)
    splits = infos["default"].splits
    assert {name: s.num_examples for name, s in splits.items()} == {"testA": 4, "testB": 2, "train": 20, "val": 6}
    assert loaded.text.lstrip().startswith("# groundforge RefCOCO")


def test_extra_table_is_its_own_config_with_its_own_counts(tmp_path):
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    tables = {"annotations": {"rows": 7, "files": [
        {"file": "annotations/train-00000-of-00002.parquet", "rows": 4, "sha256": "1" * 64, "bytes": 10},
        {"file": "annotations/train-00001-of-00002.parquet", "rows": 3, "sha256": "2" * 64, "bytes": 20}]}}
    info = _info({"train": {"grounded_caption": 7, "rec": 9}}, builder="grit", dataset="grit", tables=tables)
    data = _parsed(dataset_card(info, GRIT), tmp_path).data
    configs = MetadataConfigs.from_dataset_card_data(data)
    assert configs["annotations"]["data_files"] == [{"split": "train", "path": "annotations/train-*"}]
    infos = DatasetInfosDict.from_dataset_card_data(data)
    assert infos["annotations"].splits["train"].num_examples == 7
    assert infos["default"].splits["train"].num_examples == 16
    text = dataset_card(info, GRIT)
    assert 'load_dataset("OUT", "annotations")' in text


def test_empty_table_gets_no_config(tmp_path):
    from datasets.utils.metadata import MetadataConfigs

    empty = {"annotations": {"rows": 0, "files": []}}
    info = _info({"train": {"rec": 1}}, builder="grit", dataset="grit", tables=empty)
    configs = MetadataConfigs.from_dataset_card_data(_parsed(dataset_card(info, GRIT), tmp_path).data)
    assert list(configs) == ["default"]


def test_output_without_records_points_at_data_not_rejects(tmp_path):
    """No split: the default config still names data/ (so load_dataset reports missing data files rather than
    loading rejects/ as data, or failing with a TypeError on an empty data_files list), and no dataset_info."""
    from datasets.utils.metadata import MetadataConfigs

    info = _info({})
    text = dataset_card(info, COUNTING)
    data = _parsed(text, tmp_path).data
    configs = MetadataConfigs.from_dataset_card_data(data)
    assert configs["default"]["data_files"] == [{"split": "train", "path": "data/*.parquet"}]
    assert "dataset_info" not in data.to_dict()
    assert "This build wrote no records" in text
    assert "| image/missing_image | 2 |" in text


def test_body_names_model_counts_rejects_and_render(tmp_path):
    text = dataset_card(REFCOCO_INFO, REFCOCO["refcoco"])
    assert "**Florence-2** (`--format florence2`)" in text
    assert "groundforge render --in OUT --out OUT2 --format paligemma" in text
    assert "| testA | 4 | rec: 2, reg: 2 |" in text
    assert "| read/bad_bbox | 1 |" in text
    assert "holdout_image_ids.txt" in text
    assert "| `image_sha256` |" in text and "| `objects` |" in text
    assert 'load_dataset("OUT")' in text
    assert "data_dir" not in text.replace('`data_dir="OUT/data"` would bypass them', "")


def test_format_citation_follows_the_rendered_format():
    florence = dataset_card(REFCOCO_INFO, REFCOCO["refcoco"])
    pali = dataset_card(_info({"train": {"rec": 1}}, fmt="paligemma"), REFCOCO["refcoco"])
    assert "xiao2024florence2" in florence and "beyer2024paligemma" not in florence
    assert "beyer2024paligemma" in pali and "xiao2024florence2" not in pali
    assert "**PaliGemma**" in pali
    for fmt, name in cardmod.MODEL_NAMES.items():
        text = dataset_card(_info({"train": {"rec": 1}}, fmt=fmt), COUNTING)
        assert f"**{name}** (`--format {fmt}`)" in text
        assert cardmod.BIBTEX[fmt] in text


def test_refcoco_cards_cite_their_papers_and_license_annotations_apache():
    assert "kazemzadeh2014referitgame" in "".join(REFCOCO["refcoco"].citations)
    assert "yu2016modeling" in "".join(REFCOCO["refcoco+"].citations)
    g = "".join(REFCOCO["refcocog"].citations)
    assert "mao2016generation" in g and "kazemzadeh2014referitgame" not in g
    for name, card in REFCOCO.items():
        assert "lin2014coco" in "".join(card.citations)
        assert "Apache-2.0" in card.annotation_license and "github.com/lichengunc/refer" in card.annotation_license
        assert "Flickr" in card.image_license
        assert card.license == "other"
        assert f"extended|{name}" in card.source_datasets
    with pytest.raises(ValueError, match="unknown RefCOCO dataset"):
        refcoco_card("refclef")


def test_grit_license_depends_on_input():
    assert GRIT.license_name == "coco-terms-of-use" and "CC BY 4.0" in GRIT.annotation_license
    g20 = grit_card("grit20m")
    # zzliang/GRIT's dataset card declares `license: ms-pl` (https://huggingface.co/datasets/zzliang/GRIT)
    assert "MS-PL" in g20.annotation_license and g20.license_link == cardmod.GRIT_URL
    assert "peng2023kosmos2" in "".join(g20.citations)
    assert grit_card("captions").license_name == "source-licenses"
    with pytest.raises(ValueError, match="unknown GRIT input kind"):
        grit_card("laion")


def test_command_shows_no_local_absolute_path():
    cmd = ("groundforge build refcoco --refer-dir /home/u/data/refer --images=/home/u/coco/train2014/ "
           "--out out/refcoco --exclude-images ~/holdout_image_ids.txt --parquet gs://bucket/refcoco/*.parquet "
           "--label 'a b' --x C:\\data\\imgs --y '/srv/my data/x.json' \"--z=/a b\"")
    shown = display_command(cmd)
    assert shown == ("groundforge build refcoco --refer-dir refer --images=train2014 --out out/refcoco "
                     "--exclude-images holdout_image_ids.txt --parquet gs://bucket/refcoco/*.parquet "
                     "--label 'a b' --x imgs --y 'x.json' \"--z=a b\"")
    text = dataset_card(REFCOCO_INFO, REFCOCO["refcoco"], command=cmd)
    assert "/home/" not in text and shown in text


def test_args_shown_without_local_paths_when_no_command():
    info = json.loads(json.dumps(REFCOCO_INFO))
    info["args"]["beam_args"] = ["--temp_location=/home/someone/tmp", "--runner", "DirectRunner"]
    text = dataset_card(info, REFCOCO["refcoco"])
    assert "/home/someone" not in text
    assert '"images": "train2014"' in text and '"--temp_location=tmp"' in text


def test_exclude_images_is_reported():
    info = _info({"train": {"count_class": 4}}, builder="counting", dataset="counting")
    info["stats"]["excluded_holdout_images"] = 5
    info["args"]["exclude_images"] = "/tmp/r/holdout_image_ids.txt"
    text = dataset_card(info, COUNTING)
    assert "Built with `--exclude-images holdout_image_ids.txt`: 5 images" in text
    assert "/tmp/r" not in text
    plain = dataset_card(_info({"train": {"count_class": 4}}, builder="counting", dataset="counting"), COUNTING)
    assert "Built without `--exclude-images`." in plain


def test_card_is_deterministic():
    assert dataset_card(REFCOCO_INFO, REFCOCO["refcoco"], command="groundforge build refcoco --out o") == \
        dataset_card(json.loads(json.dumps(REFCOCO_INFO)), card_from_json(card_to_json(REFCOCO["refcoco"])),
                     command="groundforge build refcoco --out o")


@pytest.mark.parametrize("rows,category", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (12_345_678, "10M<n<100M")])
def test_size_category(rows, category):
    assert size_category(rows) == category


def test_card_json_round_trip_and_checks():
    for card in (COUNTING, GRIT, grit_card("grit20m"), *REFCOCO.values()):
        data = json.loads(json.dumps(card_to_json(card)))
        assert card_from_json(data) == card
    with pytest.raises(ValueError, match="unknown CardInfo fields: colour"):
        card_from_json({**card_to_json(COUNTING), "colour": "red"})
    with pytest.raises(ValueError, match="license_name"):
        CardInfo(pretty_name="x", description="y", license="other")
    with pytest.raises(TypeError, match="sequence of strings"):
        CardInfo(pretty_name="x", description="y", license="mit", tags="grounding")


def test_card_info_from_output(tmp_path):
    """render recovers the source's CardInfo: the stored "card" first, else the builder's defaults."""
    stored = grit_card("grit20m")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "dataset_info.json").write_text(json.dumps({**REFCOCO_INFO, "builder": "grit",
                                                                  "card": card_to_json(stored)}))
    assert card_info_from(str(tmp_path / "a")) == stored
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "dataset_info.json").write_text(json.dumps({**REFCOCO_INFO, "builder": "render(refcoco)",
                                                                  "dataset": "refcocog"}))
    assert card_info_from(str(tmp_path / "b")) == REFCOCO["refcocog"]
    with pytest.raises(FileNotFoundError, match="not a groundforge output"):
        card_info_from(str(tmp_path / "missing"))


def test_card_for_builders():
    assert card_for({"builder": "counting"}) == COUNTING
    assert card_for({"builder": "render(grit)", "args": {"input_kind": "grit20m"}}) == grit_card("grit20m")
    assert card_for({"builder": "grit", "args": {}}).license_name == "source-licenses"
    assert card_for({"builder": "other", "dataset": "docvqa"}).pretty_name == "groundforge docvqa"


def _parsed_context(builder: str, args: list[str]):
    """The click context `groundforge build <builder> ARGS` would run with, parsed without running it."""
    import click
    from groundforge.pipeline.cli import main

    root = click.Context(main, info_name="groundforge")
    build = main.get_command(root, "build")
    return build.get_command(root, builder).make_context(builder, args, parent=click.Context(build, info_name="build",
                                                                                    parent=root))


def test_command_line_from_the_real_cli():
    from groundforge.pipeline.card import command_line

    ctx = _parsed_context("refcoco", ["--dataset", "refcocog", "--out", "out/g", "--format", "kosmos2",
                                      "--exclude-images", __file__, "--tasks", "rec",
                                      "--runner", "DirectRunner", "--direct_running_mode=in_memory"])
    line = command_line(ctx)
    assert line == (f"groundforge build refcoco --out OUT --format kosmos2 --exclude-images {__file__} "
                    f"--dataset refcocog --tasks rec --runner DirectRunner --direct_running_mode=in_memory")
    assert display_command(line).endswith("--exclude-images test_card.py --dataset refcocog --tasks rec "
                                          "--runner DirectRunner --direct_running_mode=in_memory")
    grit = command_line(_parsed_context("grit", ["--out", "o", "--balance-concepts", "--nms-iou", "0.4"]))
    assert grit == "groundforge build grit --out OUT --nms-iou 0.4 --balance-concepts"
