"""Bytes stored per image: a counting build's data/ against the source JPEGs it embeds.

Every counting record of an image embeds that image; the writer keeps an image's records in one row group
and lets Parquet's dictionary store the bytes once there. This prints the output's data/ bytes per distinct
image against the source bytes per image (ratio 1.0: each image stored once, plus the text).

    python bench/image_storage.py [--images 60] [--size 640x480] [--classes 8]

Images are photo-sized synthetic JPEGs (smooth gradients with noise, quality 90), so they compress like photos
and not like flat colour; each has a few boxes of several classes, as a COCO instances file would.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, n: int, size: tuple[int, int], classes: int, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    w, h = size
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:h, 0:w]
    images, anns = [], []
    for i in range(n):
        base = (np.sin(xx / (20 + i)) * 60 + np.cos(yy / (15 + i % 7)) * 60 + 128)[..., None] * np.ones(3)
        pixels = np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype("uint8")
        name = f"{i:012d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for _ in range(pick.randint(1, 6)):
            bw, bh = pick.randint(10, w // 3), pick.randint(10, h // 3)
            x, y = pick.randint(0, w - bw), pick.randint(0, h - bh)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": pick.randint(1, classes),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    cats = [{"id": k, "name": f"class-{k}", "supercategory": "thing"} for k in range(1, classes + 1)]
    coco = folder.parent / "instances.json"
    coco.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return coco


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--classes", type=int, default=8)
    a = ap.parse_args()
    size = tuple(int(v) for v in a.size.split("x"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        coco = make_images(tmp / "images", a.images, size, a.classes)
        out = tmp / "out"
        subprocess.run([sys.executable, "-m", "groundforge.pipeline.cli", "-q", "build", "counting", "--coco",
                        str(coco), "--images", str(tmp / "images"), "--out", str(out),
                        "--direct_running_mode=in_memory"], check=True, cwd=ROOT)
        info = json.loads((out / "dataset_info.json").read_text())
        source = folder_bytes(tmp / "images", "*.jpg")
        stored = folder_bytes(out / "data", "*.parquet")
        print(f"{a.images} images of {a.size}, {info['rows']} records ({info['rows'] / a.images:.1f} per image)")
        print(f"source {source / a.images / 1024:.1f} KiB per image; data/ {stored / a.images / 1024:.1f} KiB per "
              f"image; ratio {stored / source:.2f} (1.00 = each image stored once)")


if __name__ == "__main__":
    main()
