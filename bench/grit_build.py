"""Captions/s of a whole `groundforge build grit` (COCO captions, the annotations grounder) against a plain
spaCy + loop script over the same files, run in the same command.

The script does the same work with the same pure functions, without Beam: load the spaCy model, read both COCO
files, read and decode-check each image once with a sha256, extract chunks and referring expressions for every
caption (`transforms.nounphrases.extract`, same model and batch), ground them on the image's COCO boxes
(`transforms.grounding.ground_with_annotations`), keep captions with a box and write one Parquet file. It does not
render a model format, apply the Kosmos-2 filters, shard, sort, keep rejects or write a card. Both sides include the
spaCy model load and Python start-up.

    python bench/grit_build.py [--images 400] [--repeats 3] [--runner-args=--direct_running_mode=in_memory]

The sample's 50 images and captions are repeated under new ids to --images images (one caption each).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))

SCRIPT = r'''
import hashlib, io, json, sys
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from PIL import Image
from groundforge.transforms.nounphrases import extract, load_spacy
from groundforge.transforms.grounding import ground_with_annotations

captions_path, instances_path, images_dir, out = sys.argv[1:5]
nlp = load_spacy()
caps = json.loads(Path(captions_path).read_text())
inst = json.loads(Path(instances_path).read_text())
names = {c["id"]: c["name"] for c in inst["categories"]}
files = {im["id"]: im["file_name"] for im in caps["images"]}
boxes = {}
for a in inst["annotations"]:
    x, y, w, h = a["bbox"]
    boxes.setdefault(a["image_id"], []).append((names[a["category_id"]], [x, y, x + w, y + h]))
images = {}
for image_id, name in files.items():
    data = (Path(images_dir) / name).read_bytes()
    im = Image.open(io.BytesIO(data))
    im.load()
    images[image_id] = (data, hashlib.sha256(data).hexdigest(), im.size)
anns = caps["annotations"]
rows = []
for ann, phrases in zip(anns, extract([a["caption"] for a in anns], nlp, batch_size=256)):
    found = ground_with_annotations(phrases.chunks, boxes.get(ann["image_id"], []))
    if not found:
        continue
    data, sha, (w, h) = images[ann["image_id"]]
    rows.append({"image": data, "image_sha256": sha, "width": w, "height": h, "caption": ann["caption"],
                 "objects": [{"label": phrases.chunks[d.chunk].text, "bbox": d.box} for d in found]})
pq.write_table(pa.Table.from_pylist(rows), out)
print(len(anns))
'''


def scaled_inputs(total: int, out: Path) -> tuple[Path, Path]:
    from groundforge.pipeline.sample import SAMPLE_DIR

    caps = json.loads((SAMPLE_DIR / "captions.json").read_text())
    inst = json.loads((SAMPLE_DIR / "instances.json").read_text())
    base_images = caps["images"]
    caption_of = {a["image_id"]: a for a in caps["annotations"]}
    images, captions, anns = [], [], []
    for k in range(total):
        src = base_images[k % len(base_images)]
        new_id = 1_000_000 + k
        images.append({**src, "id": new_id})
        captions.append({**caption_of[src["id"]], "id": 2_000_000 + k, "image_id": new_id})
        for a in inst["annotations"]:
            if a["image_id"] == src["id"]:
                anns.append({**a, "id": 3_000_000 + len(anns), "image_id": new_id})
    cap_path, inst_path = out / "captions.json", out / "instances.json"
    cap_path.write_text(json.dumps({**caps, "images": images, "annotations": captions}))
    inst_path.write_text(json.dumps({**inst, "images": images, "annotations": anns}))
    return cap_path, inst_path


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd="/tmp")
    return time.perf_counter() - t0


def main() -> None:
    from groundforge.pipeline.sample import SAMPLE_DIR

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400, help="images (one caption each)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runner-args", default="", help="extra Beam options for the groundforge run")
    a = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        caps, inst = scaled_inputs(a.images, tmp)
        script = tmp / "script.py"
        script.write_text(SCRIPT)
        t_script, t_gf = [], []
        for r in range(a.repeats):
            t_script.append(timed([sys.executable, str(script), str(caps), str(inst), str(SAMPLE_DIR / "images"),
                                   str(tmp / "script.parquet")]))
            t_gf.append(timed([sys.executable, "-m", "groundforge.pipeline.cli", "-q", "build", "grit",
                               "--coco-captions", str(caps), "--coco-instances", str(inst),
                               "--images", str(SAMPLE_DIR / "images"), "--out", str(tmp / f"gf{r}"),
                               *shlex.split(a.runner_args)]))
        info = json.loads((tmp / "gf0" / "dataset_info.json").read_text())
    n = a.images
    ratios = sorted((n / g) / (n / s) for s, g in zip(t_script, t_gf))
    print(f"{n} captions: script {n / statistics.median(t_script):.0f} captions/s "
          f"({statistics.median(t_script):.2f} s), groundforge {n / statistics.median(t_gf):.0f} captions/s "
          f"({statistics.median(t_gf):.2f} s, {info['rows']} records); ratio min/median/max "
          f"{ratios[0]:.2f}/{statistics.median(ratios):.2f}/{ratios[-1]:.2f}")


if __name__ == "__main__":
    main()
