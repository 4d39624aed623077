"""Reading groundforge outputs back: dataset_info.json (checked before anything it lists is opened) and shard
rows, streamed by row group.

Every file dataset_info.json lists must be `<folder>/<name>.parquet` inside OUT (data/, rejects/ or a table's
folder), and on a local OUT must not be a link that leads outside it: a tampered info file never makes
validate, preview or render read anything else.
"""
from __future__ import annotations

import io
import json
import re

from groundforge.pipeline import fs
from groundforge.pipeline.outdir import INFO_FILE
from groundforge.transforms.paths import safe_join

MAX_INFO_BYTES = 64 * 1024 * 1024
_TABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class InfoError(ValueError):
    """dataset_info.json cannot be used. `problems`: one line each, the first is the message."""

    def __init__(self, problems: list[str]):
        super().__init__(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        self.problems = problems


def load_info(out_dir: str) -> dict:
    """dataset_info.json of an output, checked for the shape every reader relies on.

    Raises FileNotFoundError when it is missing (no output, or an unfinished build) and InfoError when it is
    not JSON, not an object, or lists a file badly (outside its folder, a `..`, a missing field).
    """
    path = fs.join(out_dir, INFO_FILE)
    if not fs.exists(path):
        raise FileNotFoundError(f"{path} not found: not a groundforge output, or its build did not finish")
    try:
        info = json.loads(fs.read_bytes(path, MAX_INFO_BYTES))
    except OSError as err:  # not a regular file, over the cap, unreadable
        raise InfoError([f"{INFO_FILE}: cannot be read ({err})"]) from None
    except ValueError as err:  # JSON or UTF-8
        raise InfoError([f"{INFO_FILE}: not JSON ({err})"]) from None
    problems = info_problems(info)
    if problems:
        raise InfoError([f"{INFO_FILE}: {p}" for p in problems])
    return info


def info_problems(info) -> list[str]:
    """What is wrong with the shape of a parsed dataset_info.json (empty when it is usable)."""
    if not isinstance(info, dict):
        return [f"not a JSON object (a {type(info).__name__})"]
    problems = []
    if not _count(info.get("rows")):
        problems.append(f"rows must be a count, got {info.get('rows')!r}")
    for key in ("builder", "dataset"):
        if not isinstance(info.get(key), str):
            problems.append(f"{key} must be a string, got {info.get(key)!r}")
    problems += _files_problems(info.get("shards"), "shards", "data", split=True)
    rejects = info.get("rejects")
    if not isinstance(rejects, dict):
        problems.append(f"rejects must be an object, got {rejects!r}"[:200])
    else:
        if not _count(rejects.get("rows")):
            problems.append(f"rejects.rows must be a count, got {rejects.get('rows')!r}")
        problems += _files_problems(rejects.get("files"), "rejects.files", "rejects")
    tables = info.get("tables", {})
    if not isinstance(tables, dict):
        problems.append("tables must be an object")
    else:
        for name, table in tables.items():
            if not _TABLE_NAME.fullmatch(name) or name in ("data", "rejects"):
                problems.append(f"tables: {name!r} is not a table folder name")
            elif not isinstance(table, dict):
                problems.append(f"tables.{name} must be an object")
            else:
                problems += _files_problems(table.get("files"), f"tables.{name}.files", name)
    return problems


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _files_problems(files, where: str, folder: str, split: bool = False) -> list[str]:
    if not isinstance(files, list):
        return [f"{where} must be a list, got {type(files).__name__}"]
    problems, seen = [], set()
    for i, entry in enumerate(files):
        if not isinstance(entry, dict):
            problems.append(f"{where}[{i}] must be an object")
            continue
        name = entry.get("file")
        if not listed_name_ok(name, folder):
            problems.append(f"{where}[{i}].file {name!r} is not a {folder}/<name>.parquet file of this output"[:300])
        elif name in seen:
            problems.append(f"{where}[{i}].file {name!r} is listed twice")
        seen.add(name if isinstance(name, str) else None)
        if not _count(entry.get("rows")):
            problems.append(f"{where}[{i}].rows must be a count, got {entry.get('rows')!r}"[:200])
        if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
            problems.append(f"{where}[{i}].sha256 must be 64 lower-case hex digits")
        if split and not (isinstance(entry.get("split"), str) and entry["split"]):
            problems.append(f"{where}[{i}].split must be a non-empty string")
    return problems


def listed_name_ok(name, folder: str) -> bool:
    """`folder/base.parquet`, with one plain file name (no `..`, backslash, colon or NUL) as the base."""
    if not isinstance(name, str) or "/" not in name:
        return False
    head, base = name.split("/", 1)
    return (head == folder and base.endswith(".parquet") and base not in (".parquet",)
            and not base.startswith(".") and not any(c in base for c in "/\\:\x00"))


def listed_path(out_dir: str, name: str) -> str:
    """The path of a listed file (already checked by load_info). Raises PathError (link_escapes_root) when on
    a local OUT it is a link that leads outside OUT."""
    return safe_join(out_dir, name)


def iter_rows(path: str, columns: list[str] | None = None):
    """Rows of one Parquet file as dicts, one row group in memory at a time."""
    import pyarrow.parquet as pq

    with fs.open_read(path) as raw:
        pf = pq.ParquetFile(io.BytesIO(raw.read()) if "://" in path else raw)
        for i in range(pf.num_row_groups):
            yield from pf.read_row_group(i, columns=columns).to_pylist()


def shard_paths(out_dir: str, info: dict) -> list[str]:
    """Paths of the data shards. Raises PathError when one is a link leading outside a local OUT."""
    return [listed_path(out_dir, s["file"]) for s in info["shards"]]

