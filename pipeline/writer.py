"""Deterministic sharded Parquet output: data/, rejects/, dataset_info.json and the dataset card.

Rows are bucketed into shards by a hash of their key, so the same inputs give the same shard for every
row whatever the runner's parallelism; within a shard rows are sorted by image, then key (an image's records
adjacent, so its bytes are stored once); each file is written under a temporary name and renamed. The shard
count per split comes from a target size (or is given), so every `{split}-{i:05d}-of-{n:05d}.parquet` for
i < n exists, empty ones included. dataset_info.json is written
last and removed at the start of a run, so an interrupted output is recognisably incomplete; a restarted
run rewrites every shard and deletes files from earlier runs that are not part of the new output.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import platform
from collections import Counter
from typing import Any, Callable, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from groundforge.pipeline import fs, spill
from groundforge.pipeline.outdir import HOLDOUT_FILE, INFO_FILE  # noqa: F401 (re-exported)
from groundforge.schemas import record_arrow_schema, reject_arrow_schema
from groundforge.transforms.records import BUILDER_VERSION, bucket, reject, shard_order

MAX_ROWS_PER_GROUP = 1000
MAX_DENSE_GROUP = 128 * 1024 * 1024  # a row group read back, each row with its image: what a reader holds at once
MIN_DICTIONARY_PAGE = 1024 * 1024  # pyarrow's default dictionary page limit
REJECTS_PER_SHARD = 200_000


def record_size(row: dict) -> int:
    image = row.get("image") or {}
    size = len(image.get("bytes") or b"") + len(image.get("path") or "")
    for col in ("prompt", "target", "caption", "meta", "id"):
        size += len(row.get(col) or "")
    return size + 40 * len(row.get("objects") or ())


def image_groups(records) -> list[dict]:
    """Records that share one image (same split and image_sha256) -> elements carrying the image bytes once.

    Builders emit these rather than single records: image bytes then travel through Beam's shuffle once per
    image instead of once per record (a COCO image has ~9 counting records, a RefCOCO image ~18), and the
    shard writer puts the bytes back into each row. Each record keeps its own image path.
    """
    by_image: dict[tuple, list[dict]] = {}
    for r in records:
        by_image.setdefault((r["split"], r["image_sha256"]), []).append(r)
    return [{"split": split, "key": min(r["id"] for r in rs), "bytes": rs[0]["image"].get("bytes"),
             "records": [{**r, "image": {"bytes": None, "path": r["image"].get("path")}} for r in rs]}
            for (split, _), rs in by_image.items()]


def grouped_outputs(outputs):
    """A DoFn's outputs with the plain records collected into image groups (yielded last); tagged
    outputs (rejects, stats, ...) pass through as they come."""
    records = []
    for out in outputs:
        if isinstance(out, beam.pvalue.TaggedOutput):
            yield out
        else:
            records.append(out)
    yield from image_groups(records)


def group_size(group: dict) -> int:
    """Bytes a group adds to its shard: the image once (see `parquet_bytes`), the text of every record."""
    return len(group["bytes"] or b"") + sum(record_size(r) for r in group["records"])


def expand_group(group: dict) -> list[dict]:
    return [{**r, "image": {"bytes": group["bytes"], "path": r["image"]["path"]}} for r in group["records"]]


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def parquet_bytes(rows: list[dict], schema, row_group_bytes: int) -> bytes:
    """Encode rows as one Parquet file; row groups stay under `row_group_bytes` so image bytes never
    overflow an Arrow batch (binary arrays are limited to 2 GiB) and readers can stream.

    Records of one image are adjacent (see `_WriteShard`) and kept in one row group, and the dictionary page
    may hold a whole row group's images, so Parquet's dictionary encoding stores each image once per shard
    while every row still reads back with its own bytes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    groups = list(_row_groups(rows, row_group_bytes))
    dictionary = max([MIN_DICTIONARY_PAGE] + [stored + MIN_DICTIONARY_PAGE for _, stored in groups])
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema, compression="snappy", write_page_index=False,
                          dictionary_pagesize_limit=dictionary) as writer:
        for group, _ in groups:
            writer.write_table(pa.Table.from_pylist(group, schema=schema), row_group_size=len(group))
        if not rows:
            writer.write_table(schema.empty_table())
    return buf.getvalue()


def _image_of(row: dict) -> str | None:
    """The image a record embeds (its sha256), None for path-mode records and rows of other tables."""
    image = row.get("image")
    return row.get("image_sha256") if image and image.get("bytes") else None


def _sizes(row: dict) -> tuple[int, int]:
    """(bytes the row adds besides its image, bytes of its image)."""
    if "image" not in row:
        return len(json.dumps(row)), 0
    image = len(row["image"].get("bytes") or b"")
    return record_size(row) - image, image


def _row_groups(rows: list[dict], limit: int):
    """Consecutive rows cut into row groups of at most `limit` bytes stored (an image counted once per group),
    `MAX_ROWS_PER_GROUP` rows and `MAX_DENSE_GROUP` bytes read back (every row with its image). A group ends
    between two images when it can, so an image's records share one row group and its bytes are stored once.
    Yields (rows, bytes stored)."""
    group, stored, dense, seen = [], 0, 0, set()
    for row in rows:
        text, image = _sizes(row)
        key = _image_of(row)
        new = key is None or key not in seen
        add_stored, add_dense = text + (image if new else 0), text + image
        if group and (dense + add_dense > MAX_DENSE_GROUP or len(group) >= MAX_ROWS_PER_GROUP or (
                stored + add_stored > limit and (key is None or key != _image_of(group[-1])))):
            yield group, stored
            group, stored, dense, seen = [], 0, 0, set()
            add_stored = text + image
        group.append(row)
        stored += add_stored
        dense += add_dense
        seen.add(key)
    if group:
        yield group, stored


def write_shard(directory: str, sub: str, shard: tuple, rows: list[dict], schema, row_group_bytes: int) -> dict:
    """Encode and write one shard file (temp name, then rename) -> its entry for dataset_info.json."""
    split, index, count = shard
    data = parquet_bytes(rows, schema, row_group_bytes)
    name = shard_name(split, index, count)
    fs.write_bytes(fs.join(directory, name), data)
    return {"file": f"{sub}/{name}", "split": split, "rows": len(rows), "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data)}


class _WriteShard(beam.DoFn):
    """((split, index, count), image groups or reject rows) -> shard info; duplicate keys become rejects."""

    DUPES = "duplicates"

    def __init__(self, directory: str, kind: str, row_group_bytes: int, spilled: str | None = None):
        self.directory = directory
        self.kind = kind  # "data" or "rejects"
        self.row_group_bytes = row_group_bytes
        self.spilled = spilled  # the folder of spilled image groups (pipeline/spill.py), when items are references
        self.rows_written = Metrics.counter("groundforge", f"{kind}_rows_written")

    def process(self, element):
        (split, index, count), items = element
        items = [item for item in items if item is not None]
        if self.kind == "data":
            rows = [row for group in spill.load_all(self.spilled, items) for row in expand_group(group)]
            rows.sort(key=lambda r: r["id"])
            rows, dupes = self._drop_duplicates(rows)
            rows.sort(key=shard_order)
            for row in dupes:
                yield beam.pvalue.TaggedOutput(self.DUPES, row)
            schema = record_arrow_schema()
        else:
            rows = sorted(items, key=lambda r: (r["stage"], r["reason"], r["source"], r["detail"]))
            schema = reject_arrow_schema()
        info = write_shard(self.directory, self.kind, (split, index, count), rows, schema, self.row_group_bytes)
        self.rows_written.inc(len(rows))
        info["tasks"] = dict(Counter(r["task"] for r in rows)) if self.kind == "data" else {}
        yield info

    def _drop_duplicates(self, rows):
        """Rows sorted by id -> (one row per id, a reject per dropped row). Of rows sharing an id the smallest by
        content is kept, so the result does not depend on the order a runner delivered them in."""
        kept, dupes = [], []
        for same_id in _runs(rows, lambda r: r["id"]):
            if len(same_id) > 1:
                same_id.sort(key=_content_key)
            kept.append(same_id[0])
            for row in same_id[1:]:
                same = row == same_id[0]
                dupes.append(reject(f"record:{row['id']}", "write", "duplicate_record" if same else "duplicate_key",
                                    "identical record produced twice" if same else "two records share a key"))
        return kept, dupes


class Table(NamedTuple):
    """An extra Parquet table written as OUT/<name>/<split>-{i:05d}-of-{n:05d}.parquet beside data/ (e.g. the
    GRIT-20M style annotations/), sharded, sorted and deduplicated by `key` like the records."""
    schema: Any                    # pyarrow schema
    key: Callable[[dict], str]     # unique row key: shard bucket and sort order
    split: str = "train"           # file name prefix


def _runs(rows: list, key) -> list[list]:
    """Consecutive rows with the same key, as lists (rows are sorted by that key)."""
    runs: list[list] = []
    for row in rows:
        if runs and key(runs[-1][0]) == key(row):
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


def _content_key(row: dict) -> str:
    """A total order on rows by content (image bytes stand in through image_sha256 and path)."""
    return json.dumps({k: (v if k != "image" else (v or {}).get("path")) for k, v in row.items()},
                      sort_keys=True, default=repr)


class _WriteTableShard(beam.DoFn):
    """((split, index, count), rows) of one extra table -> shard info; of rows with a repeated key the smallest by
    content is kept and each other one becomes a `write/duplicate_key` reject (tagged DUPES)."""

    def __init__(self, directory: str, name: str, table: Table, row_group_bytes: int):
        self.directory = directory
        self.name = name
        self.table = table
        self.row_group_bytes = row_group_bytes

    def process(self, element):
        (split, index, count), items = element
        rows = []
        for same_key in _runs(sorted((r for r in items if r is not None), key=self.table.key), self.table.key):
            same_key.sort(key=_content_key)
            rows.append(same_key[0])
            for row in same_key[1:]:
                same = row == same_key[0]
                yield beam.pvalue.TaggedOutput(_WriteShard.DUPES, reject(
                    f"{self.name}:{self.table.key(row)}", "write", "duplicate_record" if same else "duplicate_key",
                    f"{self.name} row produced twice" if same else f"two {self.name} rows share a key"))
        info = write_shard(self.directory, self.name, (split, index, count), rows, self.table.schema,
                           self.row_group_bytes)
        yield {**info, "table": self.name}


def _shard_counts(totals, fixed: int | None, target_bytes: int):
    split, total = totals
    n = fixed if fixed else max(1, math.ceil(total / target_bytes))
    return split, n


def _sharded(rows, key_of, size_of, split_of, fixed, target_bytes, label):
    """Key rows by (split, shard index, shard count), with one empty marker per shard so none is missing."""
    by_split = rows | f"{label}BySplit" >> beam.Map(lambda r: (split_of(r), r))
    totals = (by_split | f"{label}Sizes" >> beam.Map(lambda kv: (kv[0], size_of(kv[1])))
              | f"{label}Total" >> beam.CombinePerKey(sum))
    counts = totals | f"{label}Count" >> beam.Map(_shard_counts, fixed, target_bytes)
    keyed = by_split | f"{label}Key" >> beam.Map(
        lambda kv, n: ((kv[0], bucket(key_of(kv[1]), n[kv[0]]), n[kv[0]]), kv[1]), n=beam.pvalue.AsDict(counts))
    empties = counts | f"{label}Empties" >> beam.FlatMap(lambda sn: [((sn[0], i, sn[1]), None) for i in range(sn[1])])
    return (keyed, empties) | f"{label}Flatten" >> beam.Flatten() | f"{label}Group" >> beam.GroupByKey()


def _reject_key(r: dict) -> str:
    return "\x1f".join((r["stage"], r["reason"], r["source"], r["detail"]))


class WriteDataset(beam.PTransform):
    """Write {"groups", "rejects", "stats"} PCollections as a groundforge output directory.

    groups are `image_groups(...)` elements: rendered records, image bytes once per image.
    stats is a PCollection of (name, int) pairs (e.g. ("read", 1)) summed into dataset_info.json.
    `tables` names extra PCollections of the input dict written as OUT/<name>/ (see `Table`); they are listed
    under "tables" in dataset_info.json and as extra configs in the dataset card.
    """

    def __init__(self, out_dir: str, *, builder: str, dataset: str, args: dict, num_shards: int | None = None,
                 shard_size_mb: float = 256, row_group_mb: float = 32, card=None,
                 tables: dict[str, Table] | None = None, spill_groups: bool = False):
        super().__init__()
        self.spill_groups = spill_groups  # a local runner writing a local OUT: shuffle references (pipeline/spill.py)
        self.out_dir = out_dir
        self.builder = builder
        self.dataset = dataset
        self.args = args
        self.num_shards = num_shards
        self.target_bytes = int(shard_size_mb * 1024 * 1024)
        self.row_group_bytes = int(row_group_mb * 1024 * 1024)
        self.card = card  # pipeline.card.CardInfo (None: the builder's defaults, from card_for)
        self.tables = dict(sorted((tables or {}).items()))

    def expand(self, pcolls):
        groups, rejects, stats = pcolls["groups"], pcolls["rejects"], pcolls["stats"]
        data_dir = fs.join(self.out_dir, "data")
        rejects_dir = fs.join(self.out_dir, "rejects")
        spilled = spill.spill_dir(data_dir) if self.spill_groups else None
        if spilled:
            groups = groups | "SpillGroups" >> beam.ParDo(spill.SpillGroups(spilled, group_size))
        grouped = _sharded(groups, lambda g: g["key"], _spilled_size if spilled else group_size, lambda g: g["split"],
                           self.num_shards, self.target_bytes, "Data")
        written = grouped | "WriteData" >> beam.ParDo(
            _WriteShard(data_dir, "data", self.row_group_bytes, spilled)).with_outputs(_WriteShard.DUPES, main="shards")
        table_files, table_dupes = [], []
        for name, table in self.tables.items():
            table_groups = _sharded(pcolls[name], table.key, _json_size, lambda r, s=table.split: s,
                                    None, self.target_bytes, f"Table_{name}_")
            done = table_groups | f"WriteTable_{name}" >> beam.ParDo(_WriteTableShard(
                fs.join(self.out_dir, name), name, table, self.row_group_bytes)).with_outputs(_WriteShard.DUPES,
                                                                                              main="shards")
            table_files.append(done.shards)
            table_dupes.append(done[_WriteShard.DUPES])
        all_rejects = (rejects, written[_WriteShard.DUPES], *table_dupes) | "AllRejects" >> beam.Flatten()
        reject_groups = _sharded(all_rejects, _reject_key, lambda r: 1, lambda r: "rejects",
                                 None, REJECTS_PER_SHARD, "Rej")
        reject_files = reject_groups | "WriteRejects" >> beam.ParDo(
            _WriteShard(rejects_dir, "rejects", self.row_group_bytes))
        reasons = (all_rejects | "ReasonKey" >> beam.Map(lambda r: (f"{r['stage']}/{r['reason']}", 1))
                   | "ReasonSum" >> beam.CombinePerKey(sum))
        stat_sums = stats | "StatSum" >> beam.CombinePerKey(sum)
        tables = (beam.pvalue.AsList(table_files | "AllTables" >> beam.Flatten(pipeline=groups.pipeline))
                  if table_files else [])
        return (
            groups.pipeline
            | "FinalizeStart" >> beam.Create([None])
            | "Finalize" >> beam.Map(
                self._finalize,
                shards=beam.pvalue.AsList(written["shards"]),
                reject_files=beam.pvalue.AsList(reject_files),
                reasons=beam.pvalue.AsList(reasons),
                stats=beam.pvalue.AsList(stat_sums),
                tables=tables)
        )

    def _finalize(self, _, shards, reject_files, reasons, stats, tables=()):
        shards = sorted(shards, key=lambda s: s["file"])
        reject_files = sorted(reject_files, key=lambda s: s["file"])
        if self.spill_groups:
            spill.remove(spill.spill_dir(fs.join(self.out_dir, "data")))
        _remove_stale(self.out_dir, "data", {s["file"] for s in shards})
        _remove_stale(self.out_dir, "rejects", {s["file"] for s in reject_files})
        info = self._info(shards, reject_files, dict(reasons), dict(stats))
        if self.tables:
            tables = sorted(tables, key=lambda s: s["file"])
            info["tables"] = {}
            for name in self.tables:
                files = [s for s in tables if s["table"] == name]
                _remove_stale(self.out_dir, name, {s["file"] for s in files})
                info["tables"][name] = {"rows": sum(s["rows"] for s in files),
                                        "files": [{k: s[k] for k in ("file", "rows", "sha256", "bytes")}
                                                  for s in files]}
        from groundforge.pipeline.card import card_for, card_to_json, dataset_card

        card = self.card or card_for(info)
        info["card"] = card_to_json(card)
        fs.write_bytes(fs.join(self.out_dir, "README.md"),
                       dataset_card(info, card, command=self.args.get("command")).encode())
        fs.write_bytes(fs.join(self.out_dir, INFO_FILE), (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
        return info

    def _info(self, shards, reject_files, reasons, stats):
        splits: dict[str, dict] = {}
        for s in shards:
            entry = splits.setdefault(s["split"], {"rows": 0, "shards": 0, "tasks": {}})
            entry["rows"] += s["rows"]
            entry["shards"] += 1
            for task, n in s["tasks"].items():
                entry["tasks"][task] = entry["tasks"].get(task, 0) + n
        return {
            "builder": self.builder, "builder_version": BUILDER_VERSION, "dataset": self.dataset,
            "splits": splits,
            "rows": sum(s["rows"] for s in shards),
            "shards": [{k: s[k] for k in ("file", "split", "rows", "sha256", "bytes")} for s in shards],
            "rejects": {"rows": sum(s["rows"] for s in reject_files), "by_reason": dict(sorted(reasons.items())),
                        "files": [{k: s[k] for k in ("file", "rows", "sha256", "bytes")} for s in reject_files]},
            "stats": dict(sorted(stats.items())),
            "schema": {"record": "schemas/record.schema.json", "columns": record_arrow_schema().names},
            "args": self.args,
            "versions": versions(),
        }


def _spilled_size(ref: dict) -> int:
    return ref["size"]


def _json_size(row: dict) -> int:
    return len(json.dumps(row, default=str))


def versions() -> dict:
    import pyarrow

    return {"groundforge": BUILDER_VERSION, "apache_beam": beam.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version()}


def _remove_stale(out_dir: str, sub: str, keep: set[str]) -> None:
    directory = fs.join(out_dir, sub)
    stale = [p for p in fs.match(fs.join(directory, "*.parquet")) + fs.match(fs.join(directory, ".tmp-*"))
             if f"{sub}/{_basename(p)}" not in keep]
    fs.delete(stale)


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def start_output(out_dir: str) -> None:
    """Mark the output incomplete until this run's finalize writes dataset_info.json again."""
    info = fs.join(out_dir, INFO_FILE)
    if fs.exists(info):
        fs.delete([info])
