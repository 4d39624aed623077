"""Reading groundforge outputs back: dataset_info.json and shard rows, streamed by row group."""
from __future__ import annotations

import io
import json

from groundforge.pipeline import fs
from groundforge.pipeline.writer import INFO_FILE


def load_info(out_dir: str) -> dict:
    path = fs.join(out_dir, INFO_FILE)
    if not fs.exists(path):
        raise FileNotFoundError(f"{path} not found: not a groundforge output, or its build did not finish")
    return json.loads(fs.read_bytes(path))


def iter_rows(path: str, columns: list[str] | None = None):
    """Rows of one Parquet file as dicts, one row group in memory at a time."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as raw:
        pf = pq.ParquetFile(io.BytesIO(raw.read()) if "://" in path else raw)
        for i in range(pf.num_row_groups):
            yield from pf.read_row_group(i, columns=columns).to_pylist()


def shard_paths(out_dir: str, info: dict) -> list[str]:
    return [fs.join(out_dir, *s["file"].split("/")) for s in info["shards"]]
