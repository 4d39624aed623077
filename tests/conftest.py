"""Shared fixtures: tiny COCO datasets written to tmp dirs, and a CLI runner."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

FAST_BEAM = ["--direct_running_mode=in_memory"]

logging.getLogger("apache_beam").setLevel(logging.ERROR)


def jpeg_bytes(width: int, height: int, color=(200, 30, 30), exif_orientation: int | None = None) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (width, height), color)
    img.paste((20, 20, 220), (0, 0, width // 2, height // 2))  # top-left quadrant blue: orientation is visible
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    img.save(buf, format="JPEG", quality=90, **kwargs)
    return buf.getvalue()


def write_coco(root: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None,
               name: str = "instances.json") -> Path:
    """images: [{id, file_name, width, height, bytes?}]; writes the image bytes under root/images."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for img in images:
        data = img.pop("bytes", None)
        if data is None and not img.get("skip_file"):
            data = jpeg_bytes(img["width"], img["height"])
        img.pop("skip_file", None)
        if data is not None:
            path = root / "images" / img["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        entries.append(img)
    categories = categories or [{"id": 1, "name": "dog", "supercategory": "animal"},
                                {"id": 2, "name": "cat", "supercategory": "animal"}]
    path = root / name
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return path


def run_cli(args: list[str], expect_exit: int | None = 0):
    from click.testing import CliRunner

    from pipeline.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if expect_exit is not None:
        assert result.exit_code == expect_exit, result.output
    return result


def build_cli(builder: str, tmp_path: Path, args, name: str = "out", expect_exit: int | None = 0):
    """Run `groundforge build <builder> ... --out tmp_path/name` on the in-memory runner -> (out, result)."""
    out = tmp_path / name
    result = run_cli(["build", builder, *args, "--out", out, *FAST_BEAM], expect_exit=expect_exit)
    return out, result


def info_of(out: Path) -> dict:
    return json.loads((out / "dataset_info.json").read_text())


def read_rows(out: Path, sub: str = "data") -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for path in sorted((out / sub).glob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


@pytest.fixture
def coco_dir(tmp_path):
    return tmp_path
