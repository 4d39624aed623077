"""One meaning per name: a command that reads a groundforge output takes it as DATASET (its first argument; render
and export also take `--in`), and `--out` is what the command writes."""
import json
import re
import subprocess
import sys

import pytest
from helpers import FAST_BEAM, info_of, read_rows, run_cli, write_coco

READERS = ["validate", "preview", "render", "export"]


@pytest.mark.parametrize("command", READERS)
def test_every_reader_names_the_dataset_first(command):
    result = run_cli([command, "--help"])
    usage = result.output.splitlines()[0]
    assert re.match(rf"Usage: \S+ {command} \[OPTIONS\] DATASET", usage), usage


@pytest.fixture(scope="module")
def small_output(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    images = [{"id": i, "file_name": f"{i:03d}.jpg", "width": 64, "height": 48} for i in (1, 2, 3)]
    anns = [{"id": 10 + i, "image_id": i, "category_id": 1 + i % 2, "bbox": [4, 4, 20, 16], "iscrowd": 0}
            for i in (1, 2, 3)]
    coco = write_coco(root, images, anns)
    out = root / "out"
    run_cli(["build", "counting", "--coco", coco, "--images", root / "images", "--out", out, *FAST_BEAM])
    return out


def test_render_takes_the_dataset_as_argument_or_as_in(small_output, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_cli(["render", small_output, "--format", "paligemma", "--out", a, *FAST_BEAM])
    run_cli(["render", "--in", small_output, "--format", "paligemma", "--out", b, *FAST_BEAM])
    assert read_rows(a) == read_rows(b) and {r["format"] for r in read_rows(a)} == {"paligemma"}
    assert info_of(a)["shards"] == info_of(b)["shards"]


def test_the_card_shows_the_render_command_with_its_dataset(small_output, tmp_path):
    out = tmp_path / "r"
    run_cli(["render", small_output, "--format", "kosmos2", "--out", out, *FAST_BEAM])
    card = (out / "README.md").read_text()
    # an absolute local path is cut to its name in the card
    assert f"groundforge render {small_output.name} --out OUT --format kosmos2" in card


@pytest.mark.parametrize("args, message", [
    ([], "missing DATASET"),
    (["--in", "elsewhere"], "two datasets given"),
])
def test_render_needs_exactly_one_dataset(small_output, tmp_path, args, message):
    positional = [] if not args else [small_output]
    result = run_cli(["render", *positional, *args, "--format", "kosmos2", "--out", tmp_path / "x", *FAST_BEAM],
                     expect_exit=2)
    assert message in result.output


def test_render_accepts_quiet_after_the_command(small_output, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "groundforge.pipeline.cli", "render", str(small_output), "-q",
                           "--format", "shikra", "--out", str(tmp_path / "q"), *FAST_BEAM],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("done in ") and len(proc.stdout.strip().splitlines()) == 1


def test_export_takes_the_dataset_as_argument(small_output, tmp_path):
    run_cli(["export", small_output, "--to", "swift", "--out", tmp_path / "swift"])
    lines = (tmp_path / "swift" / "train.jsonl").read_text().splitlines()
    assert lines and all("images" in json.loads(line) for line in lines)
    result = run_cli(["export", "--to", "swift", "--out", tmp_path / "none"], expect_exit=2)
    assert "missing DATASET" in result.output
