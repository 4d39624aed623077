"""Records/s of `groundforge build counting` against a plain single-process pyarrow loop over the same COCO file.

The sample's 50 images are repeated (under new ids) to --images-total images. The baseline does the minimum a
notebook script would: read each image, get its size with PIL, count boxes per class, build counting rows
and write one Parquet file with pyarrow; no checks, no rejects, no sharding.

    python bench/counting.py [--images-total 2000,8000] [--runner-args "--direct_num_workers=2"]

Each size is run separately; the per-size figures include Beam's fixed start-up (worker processes, imports),
and the last line gives the marginal rate between the two largest sizes, where that cost cancels out.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from groundforge.pipeline.sample import SAMPLE_DIR  # noqa: E402


def scaled_coco(total: int, out: Path) -> Path:
    base = json.loads((SAMPLE_DIR / "instances.json").read_text())
    images, anns = [], []
    for k in range(total):
        src = base["images"][k % len(base["images"])]
        images.append({**src, "id": 10_000 + k})
        for a in base["annotations"]:
            if a["image_id"] == src["id"]:
                anns.append({**a, "id": len(anns) + 1, "image_id": 10_000 + k})
    path = out / "instances.json"
    path.write_text(json.dumps({**base, "images": images, "annotations": anns}))
    return path


def baseline(coco_path: Path, images_dir: Path, out: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    coco = json.loads(coco_path.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    classes = [names[k] for k in sorted(names)]
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    rows = []
    for img in coco["images"]:
        data = (images_dir / img["file_name"]).read_bytes()
        w, h = Image.open(io.BytesIO(data)).size
        counts = Counter(names[a["category_id"]] for a in by_image.get(img["id"], []) if not a.get("iscrowd"))
        base = {"image": {"bytes": data, "path": img["file_name"]}, "width": w, "height": h}
        rows.append({**base, "prompt": "Count: " + ", ".join(classes),
                     "target": json.dumps({c: counts[c] for c in classes if counts[c]})})
        for c in classes:
            rows.append({**base, "prompt": f"How many {c} are in the image?", "target": str(counts[c])})
    pq.write_table(pa.Table.from_pylist(rows), out / "baseline.parquet")
    return len(rows)


def run_size(total: int, runner_args: str) -> tuple[int, float, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        coco = scaled_coco(total, tmp)
        t0 = time.perf_counter()
        n_base = baseline(coco, SAMPLE_DIR / "images", tmp)
        t_base = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "groundforge.pipeline.cli", "build", "counting", "--coco", str(coco),
               "--images", str(SAMPLE_DIR / "images"), "--out", str(tmp / "gf"), *shlex.split(runner_args)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        t_gf = time.perf_counter() - t0
        n_gf = json.loads((tmp / "gf" / "dataset_info.json").read_text())["rows"]
    return n_base, t_base, n_gf, t_gf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images-total", default="2000,8000", help="comma-separated image counts")
    ap.add_argument("--runner-args", default="", help="extra Beam options for the groundforge run")
    a = ap.parse_args()
    sizes = [int(v) for v in a.images_total.split(",")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    results = []
    for total in sizes:
        n_base, t_base, n_gf, t_gf = run_size(total, a.runner_args)
        results.append((n_base, t_base, n_gf, t_gf))
        print(f"{total} images: baseline pyarrow loop {n_base} records in {t_base:.2f}s = {n_base / t_base:.0f} records/s; "
              f"groundforge {n_gf} records in {t_gf:.2f}s = {n_gf / t_gf:.0f} records/s; "
              f"ratio {(n_gf / t_gf) / (n_base / t_base):.2f}")
    if len(results) > 1:
        (b1, tb1, g1, tg1), (b2, tb2, g2, tg2) = results[-2], results[-1]
        base_rate, gf_rate = (b2 - b1) / (tb2 - tb1), (g2 - g1) / (tg2 - tg1)
        print(f"marginal ({sizes[-2]} -> {sizes[-1]} images): baseline {base_rate:.0f} records/s, "
              f"groundforge {gf_rate:.0f} records/s, ratio {gf_rate / base_rate:.2f}")


if __name__ == "__main__":
    main()
