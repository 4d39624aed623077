"""Each image is stored once per shard: an image's records share a row group, Parquet's dictionary holds its bytes
once, and every row still reads back (and loads in `datasets`) with its own image."""
import hashlib
import io
import random

import pyarrow.parquet as pq
import pytest
from groundforge.pipeline import writer
from groundforge.pipeline.writer import parquet_bytes
from groundforge.schemas import record_arrow_schema
from groundforge.transforms.records import make_record, rendered, shard_order
from helpers import build_cli, info_of, write_coco


def photo_jpeg(width: int, height: int, seed: int) -> bytes:
    """A JPEG that compresses like a photo (noise over a gradient), unlike a flat colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.linspace(40, 210, width)[None, :, None] * np.ones((height, 1, 3))
    pixels = np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def records(n_images: int, per_image: int, size=(96, 64), seed=0) -> list[dict]:
    rows = []
    for i in range(n_images):
        data = photo_jpeg(*size, seed=seed + i)
        sha = hashlib.sha256(data).hexdigest()
        for k in range(per_image):
            rec = make_record(id=hashlib.sha256(f"{i}/{k}".encode()).hexdigest()[:20], dataset="t", split="train",
                              task="count_class", image={"bytes": data, "path": f"{i}.jpg"}, image_id=str(i),
                              width=size[0], height=size[1], image_sha256=sha, objects=[], caption=None,
                              meta={"class": f"class-{k}"}, prompt=f"How many class-{k} are there?", target=str(k))
            rows.append(rendered(rec, "florence2", 0))
    return sorted(rows, key=shard_order)


def row_groups(data: bytes):
    pf = pq.ParquetFile(io.BytesIO(data))
    return pf, [pf.read_row_group(g).to_pylist() for g in range(pf.num_row_groups)]


def test_each_image_is_stored_once_and_reads_back_in_every_row():
    rows = records(n_images=12, per_image=8)
    distinct = sum({r["image_sha256"]: len(r["image"]["bytes"]) for r in rows}.values())
    data = parquet_bytes(rows, record_arrow_schema(), row_group_bytes=3 * distinct // 12)  # ~3 images a group
    pf, groups = row_groups(data)
    assert pf.num_row_groups >= 4
    images_in = [{r["image_sha256"] for r in g} for g in groups]
    assert sum(len(s) for s in images_in) == 12  # no image split over two row groups
    paths = [pf.metadata.schema.column(i).path for i in range(pf.metadata.num_columns)]
    image_chunks = [pf.metadata.row_group(g).column(paths.index("image.bytes")) for g in range(pf.num_row_groups)]
    assert all(c.has_dictionary_page for c in image_chunks)
    assert sum(c.total_compressed_size for c in image_chunks) < distinct * 1.05  # 8 records an image, bytes once
    back = [r for g in groups for r in g]
    assert [r["id"] for r in back] == [r["id"] for r in rows]
    assert all(hashlib.sha256(r["image"]["bytes"]).hexdigest() == r["image_sha256"] for r in back)


def test_the_earlier_layout_took_several_times_the_bytes():
    """The measure behind the layout: rows in id order (the earlier writer) spread an image's records over several
    row groups, and each row group stored the image again."""
    import pyarrow as pa

    rows = records(n_images=12, per_image=8, size=(160, 120))
    distinct = sum({r["image_sha256"]: len(r["image"]["bytes"]) for r in rows}.values())
    by_id = pa.Table.from_pylist(sorted(rows, key=lambda r: r["id"]), schema=record_arrow_schema())
    buf = io.BytesIO()
    pq.write_table(by_id, buf, compression="snappy", row_group_size=12)  # 12 rows a group, as a byte budget cut
    ours = parquet_bytes(rows, record_arrow_schema(), row_group_bytes=distinct // 8)
    assert len(buf.getvalue()) > 3 * len(ours)


def test_an_image_larger_than_the_row_group_budget_keeps_its_records_together():
    rows = records(n_images=3, per_image=5, size=(200, 150))
    _, groups = row_groups(parquet_bytes(rows, record_arrow_schema(), row_group_bytes=1000))
    assert [len({r["image_sha256"] for r in g}) for g in groups] == [1, 1, 1]
    assert [len(g) for g in groups] == [5, 5, 5]


def test_hard_limits_still_split_an_image(monkeypatch):
    """Rows per group and the size read back (each row with its image) bound a group even inside one image."""
    rows = records(n_images=1, per_image=7)
    monkeypatch.setattr(writer, "MAX_ROWS_PER_GROUP", 3)
    _, groups = row_groups(parquet_bytes(rows, record_arrow_schema(), row_group_bytes=32 << 20))
    assert [len(g) for g in groups] == [3, 3, 1]
    monkeypatch.setattr(writer, "MAX_ROWS_PER_GROUP", 1000)
    monkeypatch.setattr(writer, "MAX_DENSE_GROUP", 2 * len(rows[0]["image"]["bytes"]) + 2000)
    _, groups = row_groups(parquet_bytes(rows, record_arrow_schema(), row_group_bytes=32 << 20))
    assert [len(g) for g in groups] == [2, 2, 2, 1]


def test_path_mode_records_are_cut_by_their_text():
    rows = records(n_images=4, per_image=3)
    for r in rows:
        r["image"] = {"bytes": None, "path": r["image"]["path"]}
    groups = list(writer._row_groups(rows, limit=3 * max(writer.record_size(r) for r in rows)))
    assert [len(g) for g, _ in groups] == [3, 3, 3, 3]
    assert [stored for _, stored in groups] == [sum(writer.record_size(r) for r in g) for g, _ in groups]


def test_counting_build_stores_each_image_once_and_datasets_loads_every_row(tmp_path):
    """A COCO export with photo-like images: data/ is about the size of the images, not records x images."""
    datasets = pytest.importorskip("datasets")
    pick = random.Random(3)
    images, anns = [], []
    for i in range(1, 9):
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": 160, "height": 120,
                       "bytes": photo_jpeg(160, 120, seed=i)})
        for _ in range(4):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": pick.randint(1, 4),
                         "bbox": [pick.randint(0, 80), pick.randint(0, 60), 30, 20], "iscrowd": 0})
    cats = [{"id": k, "name": name, "supercategory": "thing"}
            for k, name in enumerate(["traffic light", "t-shirt", "7up can", "person"], start=1)]
    source = sum(len(img["bytes"]) for img in images)
    coco = write_coco(tmp_path, images, anns, cats)
    out, _ = build_cli("counting", tmp_path, ["--coco", coco, "--images", tmp_path / "images",
                                              "--max-zero-ratio", "1"])
    info = info_of(out)
    assert info["rows"] >= 8 * 4  # several records per image
    stored = sum(f["bytes"] for f in info["shards"])
    assert stored < source * 1.15 + 30_000
    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    by_sha = {}
    for row in ds:
        buf = io.BytesIO()
        row["image"].save(buf, format="PNG")
        by_sha.setdefault(row["image_sha256"], set()).add(hashlib.sha256(buf.getvalue()).hexdigest())
    assert len(by_sha) == 8 and all(len(v) == 1 for v in by_sha.values())
