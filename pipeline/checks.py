"""`groundforge validate` and `groundforge preview`: check an output against its contract, and look at it."""
from __future__ import annotations

import base64
import hashlib
import heapq
import html
import io
import os
import sys

import click
from groundforge.pipeline import fs
from groundforge.pipeline.shards import iter_rows, load_info
from groundforge.schemas import record_arrow_schema, record_errors, reject_arrow_schema
from groundforge.transforms.paths import safe_join

MAX_LISTED = 50


def validate_output(out_dir: str) -> list[str]:
    """Every problem found: missing/stray/corrupt files, schema, row counts, sha256, keys, sort order."""
    try:
        info = load_info(out_dir)
    except (FileNotFoundError, ValueError) as err:
        return [str(err)]
    problems: list[str] = []
    tables = info.get("tables", {})  # extra tables such as grit's annotations/
    table_files = [f for table in tables.values() for f in table["files"]]
    listed = {s["file"] for s in info["shards"] + info["rejects"]["files"] + table_files}
    for sub in ("data", "rejects", *tables):
        for path in fs.match(fs.join(out_dir, sub, "*")):
            rel = f"{sub}/{os.path.basename(path)}"
            if rel not in listed:
                problems.append(f"{rel}: not listed in dataset_info.json")
    seen_ids: set[str] = set()
    for shard in info["shards"]:
        problems += _check_file(out_dir, shard, record_arrow_schema(), shard["split"], seen_ids)
    for shard in info["rejects"]["files"]:
        problems += _check_file(out_dir, shard, reject_arrow_schema(), None, None)
    for shard in table_files:
        problems += _check_file(out_dir, shard, None, None, None)
    total = sum(s["rows"] for s in info["shards"])
    if total != info["rows"]:
        problems.append(f"dataset_info.json: rows {info['rows']} != sum of shard rows {total}")
    return problems


def _check_file(out_dir, shard, schema, split, seen_ids) -> list[str]:
    import pyarrow.parquet as pq

    name = shard["file"]
    path = fs.join(out_dir, *name.split("/"))
    if not fs.exists(path):
        return [f"{name}: missing"]
    data = fs.read_bytes(path)
    problems = []
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        problems.append(f"{name}: sha256 differs from dataset_info.json")
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
    except Exception as exc:
        return problems + [f"{name}: not a Parquet file ({exc})"]
    if schema is not None and not pf.schema_arrow.equals(schema, check_metadata=False):
        problems.append(f"{name}: schema differs from the record schema")
    if pf.metadata.num_rows != shard["rows"]:
        problems.append(f"{name}: {pf.metadata.num_rows} rows, dataset_info.json says {shard['rows']}")
    if split is not None:
        problems += _check_rows(name, pf, split, seen_ids)
    return problems


def _check_rows(name, pf, split, seen_ids) -> list[str]:
    problems, last_id = [], ""
    for g in range(pf.num_row_groups):
        for row in pf.read_row_group(g).to_pylist():
            where = f"{name}: row {row.get('id')}"
            problems += [f"{where}: {e}" for e in record_errors(row)]
            if row["split"] != split:
                problems.append(f"{where}: split {row['split']!r} in a {split!r} shard")
            if row["id"] in seen_ids:
                problems.append(f"{where}: duplicate id")
            seen_ids.add(row["id"])
            if row["id"] <= last_id:
                problems.append(f"{where}: rows not sorted by id")
            last_id = row["id"]
            blob = (row.get("image") or {}).get("bytes")
            if blob is not None and hashlib.sha256(blob).hexdigest() != row["image_sha256"]:
                problems.append(f"{where}: image_sha256 does not match the image bytes")
            if len(problems) > MAX_LISTED:
                return problems
    return problems


@click.command("validate")
@click.argument("out_dir")
def validate_cmd(out_dir):
    """Check every shard of OUT_DIR against the schema and dataset_info.json; exit 1 listing each problem."""
    problems = validate_output(out_dir)
    if problems:
        for p in problems[:MAX_LISTED]:
            click.echo(f"FAIL {p}", err=True)
        if len(problems) > MAX_LISTED:
            click.echo(f"... and {len(problems) - MAX_LISTED} more", err=True)
        sys.exit(1)
    info = load_info(out_dir)
    click.echo(f"ok: {info['rows']} records in {len(info['shards'])} shards, {info['rejects']['rows']} rejects")


def sample_rows(out_dir: str, n: int, seed: int) -> list[dict]:
    """n records spread over the output, chosen by a seeded hash of their key (deterministic); only the
    n best candidates are kept in memory while the key column is scanned."""
    info = load_info(out_dir)

    def ranked():
        for shard in info["shards"]:
            for row in iter_rows(fs.join(out_dir, *shard["file"].split("/")), columns=["id"]):
                yield hashlib.sha256(f"{seed}:{row['id']}".encode()).hexdigest(), shard["file"], row["id"]

    chosen = heapq.nsmallest(n, ranked())
    wanted = {(f, i) for _, f, i in chosen}
    rows = {}
    for file in sorted({f for _, f, _ in chosen}):
        for row in iter_rows(fs.join(out_dir, *file.split("/"))):
            if (file, row["id"]) in wanted:
                rows[row["id"]] = row
    return [rows[i] for _, _, i in chosen]


PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]


def draw_boxes(image_bytes: bytes, objects: list[dict]) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    draw = ImageDraw.Draw(img)
    labels = sorted({o["label"] for o in objects})
    for obj in objects:
        color = PALETTE[labels.index(obj["label"]) % len(PALETTE)]
        x1, y1, x2, y2 = obj["bbox"]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=3)
        draw.text((x1 + 3, max(0, y1 - 12)), obj["label"][:40], fill=color)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def preview_html(rows: list[dict], title: str, image_root: str | None) -> str:
    cards = []
    for row in rows:
        data = (row.get("image") or {}).get("bytes")
        if data is None and image_root and row["image"].get("path"):
            data = fs.read_bytes(safe_join(image_root, row["image"]["path"]))  # PathError if it escapes
        img = (f'<img src="data:image/jpeg;base64,{base64.b64encode(draw_boxes(data, row["objects"])).decode()}">'
               if data else "<p>(image not embedded; pass --image-root)</p>")
        cards.append(f"""<div class="card">{img}
<p class="meta">{html.escape(row['dataset'])} / {html.escape(row['split'])} / {html.escape(row['task'])} / {html.escape(row['format'])} / image {html.escape(row['image_id'])} / {len(row['objects'])} boxes</p>
<p><b>prompt</b> <code>{html.escape(row['prompt'])}</code></p>
<p><b>target</b> <code>{html.escape(row['target'])}</code></p></div>""")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} .grid{{display:flex;flex-wrap:wrap;gap:12px}}
.card{{width:340px;border:1px solid #ccc;padding:6px}} .card img{{max-width:100%}} code{{word-break:break-all}}
.meta{{color:#666;font-size:small}}</style></head><body><h1>{html.escape(title)}</h1>
<p>{len(rows)} sampled records; boxes are the canonical pixel boxes in <code>objects</code>.</p>
<div class="grid">{''.join(cards)}</div></body></html>
"""


@click.command("preview")
@click.argument("out_dir")
@click.option("--out", "html_path", default="preview.html", show_default=True, type=click.Path(dir_okay=False))
@click.option("--n", type=click.IntRange(1), default=24, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--image-root", default=None, help="Where image paths resolve for --image-mode path outputs.")
def preview_cmd(out_dir, html_path, n, seed, image_root):
    """Write an HTML gallery of N sampled records with their boxes drawn and prompt/target under each."""
    try:
        rows = sample_rows(out_dir, n, seed)
    except FileNotFoundError as err:
        raise click.BadParameter(str(err), param_hint="OUT_DIR") from None
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(preview_html(rows, f"groundforge preview: {out_dir}", image_root))
    click.echo(f"wrote {html_path} ({len(rows)} records)")
