"""`groundforge build counting` against a single-process script that does the same work, in the same command.

The sample's 50 images are repeated (under new ids) to N images. The baseline is the script a user would write,
made fair: for each image it reads the file, runs the same integrity check as groundforge (PIL open, a JPEG
draft decode at 1/8 scale, as transforms.images.prepare_image does), the sha256 of the bytes and the claimed
size check, counts boxes per class, builds the counting and count_class rows (same prompts) and writes one
Parquet file with pyarrow. It does not shard, sort, keep rejects, render formats or write a card.

    python bench/counting.py [--fixed-size 50] [--sizes 2000,8000] [--repeats 3] [--rss-sizes 5000,20000]
                             [--runner-args "--direct_running_mode=multi_processing"]

Printed: the fixed cost (groundforge minus the script at --fixed-size images, whole process, interpreter
start-up included for both); the marginal records/s between the two --sizes, each run --repeats times
(min/median/max of the ratio); the peak RSS of the whole groundforge process tree (driver and worker processes,
polled from /proc) per --rss-sizes. The default runner is the CLI's automatic choice (in_memory for a small
input, which the CLI prints); pass --runner-args to force a mode. The groundforge run imports whatever
`python -m groundforge.pipeline.cli` imports (set PYTHONPATH to test a checkout).
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
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "pipeline" / "sample_data"

BASELINE = textwrap.dedent('''
    import hashlib, io, json, sys
    from collections import Counter
    import pyarrow as pa, pyarrow.parquet as pq
    from PIL import Image

    coco_path, images_dir, out = sys.argv[1:4]
    coco = json.load(open(coco_path))
    names = {c["id"]: c["name"] for c in coco["categories"]}
    classes = [names[k] for k in sorted(names)]
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    rows = []
    for img in coco["images"]:
        data = open(f"{images_dir}/{img['file_name']}", "rb").read()
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if im.format == "JPEG":
            im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
        im.load()                                         # the integrity check
        if (w, h) != (img["width"], img["height"]):       # the size check
            continue
        sha = hashlib.sha256(data).hexdigest()
        counts = Counter(names[a["category_id"]] for a in by_image.get(img["id"], []) if not a.get("iscrowd"))
        base = {"image": {"bytes": data, "path": img["file_name"]}, "width": w, "height": h, "image_sha256": sha,
                "image_id": str(img["id"])}
        rows.append({**base, "prompt": "Count: " + ", ".join(classes),
                     "target": json.dumps({c: counts[c] for c in classes if counts[c]})})
        for c in classes:
            rows.append({**base, "prompt": f"How many {c} are in the image?", "target": str(counts[c])})
    pq.write_table(pa.Table.from_pylist(rows), out)
    print(len(rows))
''')


def scaled_coco(total: int, out: Path) -> Path:
    base = json.loads((SAMPLE / "instances.json").read_text())
    anns_of: dict = {}
    for a in base["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)
    images, anns = [], []
    for k in range(total):
        src = base["images"][k % len(base["images"])]
        images.append({**src, "id": 10_000 + k})
        for a in anns_of.get(src["id"], []):
            anns.append({**a, "id": len(anns) + 1, "image_id": 10_000 + k})
    path = out / f"instances-{total}.json"
    path.write_text(json.dumps({**base, "images": images, "annotations": anns}))
    return path


class PeakRss:
    """Peak of the summed RSS of a process and all its descendants, polled from /proc."""

    def __init__(self, pid: int, every: float = 0.05):
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_rss(p) for p in _tree(self.pid)))
            time.sleep(self.every)


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def run_script(coco: Path, tmp: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", BASELINE, str(coco), str(SAMPLE / "images"), str(tmp / "base.parquet")],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return int(out.split()[-1]), time.perf_counter() - t0


def run_groundforge(coco: Path, tmp: Path, runner_args: str, rss: bool = False) -> tuple[int, float, int]:
    out = tmp / "gf"
    cmd = [sys.executable, "-m", "groundforge.pipeline.cli", "build", "counting", "--coco", str(coco),
           "--images", str(SAMPLE / "images"), "--out", str(out), *shlex.split(runner_args)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    peak = PeakRss(proc.pid) if rss else None
    _, err = proc.communicate()
    elapsed = time.perf_counter() - t0
    peak_bytes = peak.stop() if peak else 0
    if proc.returncode:
        raise SystemExit(f"groundforge failed:\n{err}")
    if err.strip():
        print(f"  (groundforge said: {err.strip().splitlines()[0]})")
    return json.loads((out / "dataset_info.json").read_text())["rows"], elapsed, peak_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixed-size", type=int, default=50, help="images for the fixed-cost figure (0: skip)")
    ap.add_argument("--sizes", default="2000,8000", help="two image counts for the marginal rate ('': skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rss-sizes", default="5000,20000", help="image counts for peak RSS ('': skip)")
    ap.add_argument("--runner-args", default="", help="extra Beam options for the groundforge run")
    a = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"groundforge runner args: {a.runner_args or '(automatic choice)'}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.fixed_size:
            coco = scaled_coco(a.fixed_size, tmp)
            runs = [(run_script(coco, tmp)[1], run_groundforge(coco, tmp, a.runner_args)[1]) for _ in range(a.repeats)]
            diffs = sorted(g - s for s, g in runs)
            print(f"fixed cost ({a.fixed_size} images): script {statistics.median(s for s, _ in runs):.2f} s, "
                  f"groundforge {statistics.median(g for _, g in runs):.2f} s (medians); groundforge - script "
                  f"min/median/max {diffs[0]:.2f}/{statistics.median(diffs):.2f}/{diffs[-1]:.2f} s (goal: <= 3 s)")
        if a.sizes:
            small, large = (int(v) for v in a.sizes.split(","))
            cocos = {n: scaled_coco(n, tmp) for n in (small, large)}
            ratios, rates = [], []
            for _ in range(a.repeats):
                (bs, ts), (bl, tl) = (run_script(cocos[n], tmp) for n in (small, large))
                (gs, us, _), (gl, ul, _) = (run_groundforge(cocos[n], tmp, a.runner_args) for n in (small, large))
                base_rate, gf_rate = (bl - bs) / (tl - ts), (gl - gs) / (ul - us)
                rates.append((base_rate, gf_rate))
                ratios.append(gf_rate / base_rate)
            ratios.sort()
            print(f"marginal ({small} -> {large} images, {a.repeats} runs): script "
                  f"{statistics.median(b for b, _ in rates):.0f} records/s, groundforge "
                  f"{statistics.median(g for _, g in rates):.0f} records/s (medians); ratio min/median/max "
                  f"{ratios[0]:.2f}/{statistics.median(ratios):.2f}/{ratios[-1]:.2f} (goal: >= 1.5)")
        if a.rss_sizes:
            peaks = []
            for n in (int(v) for v in a.rss_sizes.split(",")):
                coco = scaled_coco(n, tmp)
                rows, secs, peak = run_groundforge(coco, tmp, a.runner_args, rss=True)
                peaks.append(peak)
                print(f"peak RSS ({n} images, {rows} records, {secs:.1f} s): {peak / 2**20:.0f} MB (process tree)")
                coco.unlink()
            if len(peaks) > 1:
                print(f"peak RSS growth {a.rss_sizes.split(',')[0]} -> {a.rss_sizes.split(',')[-1]} images: "
                      f"{peaks[-1] / peaks[0] - 1:+.0%} (goal: within 20%)")


if __name__ == "__main__":
    main()
