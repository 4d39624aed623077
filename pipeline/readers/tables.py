"""Table files for the readers: Parquet, CSV, JSON (an array of rows) and JSON Lines.

Plain Python, no Beam transforms. Files are matched and opened through `pipeline.fs`, so local paths,
gs:// and s3:// work alike. A whole-file problem (no file matches, an unsupported type, a Parquet or CSV file
that does not read, JSON that is not rows) raises `ReaderError` naming the file. A JSON Lines line that does
not parse (bad JSON, or bytes that are not UTF-8) is yielded as a `BadRow` in its place, so a reader turns it
into one `bad_json` reject and goes on. A leading UTF-8 byte order mark is skipped in every text format.
"""
from __future__ import annotations

import contextlib
import csv
import glob
import io
import os
from typing import Any, Iterator, NamedTuple, Sequence

from groundforge.pipeline import fs
from groundforge.pipeline.readers.common import ReaderError, loads_json

EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".json": "json"}
KINDS = ("parquet", "csv", "json", "jsonl")
_BATCH_ROWS = 64  # Parquet rows per batch: rows may embed images
_BOM_AND_SPACE = b"\xef\xbb\xbf \t\r\n"


class BadRow(NamedTuple):
    """Yielded in place of a row that does not parse; the reader makes it a reject with this reason."""
    reason: str
    detail: str


# ---------------------------------------------------------------- files

def match_files(pattern: str, option: str, none_match: str = "no files match") -> list[str]:
    """Sorted files matching a glob: local ones with `glob` (`**` recursive; Beam's local match walks the whole
    tree under the pattern's folder), others through Beam's FileSystems. ReaderError `{option}: {none_match}
    {pattern}` when none match, or naming the option for a pattern Beam refuses."""
    if "://" in pattern:
        try:
            files = fs.match(pattern)
        except Exception as exc:  # Beam raises BeamIOError / ValueError for unknown schemes and bad patterns
            raise ReaderError(f"{option} {pattern}: {exc}") from None
    else:
        files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not files:
        raise ReaderError(f"{option}: {none_match} {pattern}")
    return files


def table_kind(path: str, allowed: Sequence[str] = KINDS) -> str:
    """"parquet", "csv", "json" or "jsonl" from the file name; ReaderError for a type not in `allowed`."""
    lower = path.lower()
    kind = next((k for ext, k in EXTENSIONS.items() if lower.endswith(ext)), None)
    if kind not in allowed:
        expected = ", ".join(sorted(ext for ext, k in EXTENSIONS.items() if k in allowed))
        raise ReaderError(f"{path}: unsupported file type (expected {expected})")
    return kind


def table_columns(path: str) -> list[str]:
    """Column names of a Parquet file (its schema), a CSV file (its header) or a JSON/JSONL file (keys of its
    first object row)."""
    kind = table_kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        with _parquet_errors(path), fs.open_read(path) as f:
            return list(pq.ParquetFile(f).schema_arrow.names)
    if kind == "csv":
        with _csv_errors(path), fs.open_read(path) as f:
            return next(csv.reader(_csv_text(f)), [])
    return next((list(row) for row in _iter_json(path) if isinstance(row, dict)), [])


# ---------------------------------------------------------------- rows

def iter_table_rows(path: str, columns: Sequence[str] | None = None) -> Iterator[Any]:
    """Rows of a table file in file order, streamed (a JSON array file is loaded whole). Parquet reads only the
    `columns` the file has (all when None): released datasets carry many columns a build never uses; other
    formats give whole rows. Rows are dicts, except what a JSON file holds (a reader rejects non-objects) and
    `BadRow`s."""
    kind = table_kind(path)
    if kind == "parquet":
        return _iter_parquet(path, columns)
    if kind == "csv":
        return _iter_csv(path)
    return _iter_json(path)


@contextlib.contextmanager
def _parquet_errors(path: str):
    """A corrupt or truncated Parquet file is a ReaderError (one unreadable_file reject), not a crash."""
    import pyarrow as pa

    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        raise ReaderError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None


@contextlib.contextmanager
def _csv_errors(path: str):
    """CSV rows may span lines, so a bad byte or quote fails the file (rows before it were read), not one row."""
    try:
        yield
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ReaderError(f"{path}: not a readable CSV file ({type(exc).__name__}: {exc})") from None


def _csv_text(f) -> io.TextIOWrapper:
    return io.TextIOWrapper(f, encoding="utf-8-sig", newline="")


def _iter_parquet(path: str, columns: Sequence[str] | None) -> Iterator[dict]:
    import pyarrow.parquet as pq

    with _parquet_errors(path), fs.open_read(path) as f:
        pf = pq.ParquetFile(f)
        read = [c for c in columns if c in pf.schema_arrow.names] if columns else None
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=read):
            yield from batch.to_pylist()


def _iter_csv(path: str) -> Iterator[dict]:
    with _csv_errors(path), fs.open_read(path) as f:
        yield from csv.DictReader(_csv_text(f))


def _iter_json(path: str) -> Iterator[Any]:
    """Rows of a JSON array file (loaded whole) or a JSON Lines file (streamed); a line that does not parse
    yields a `BadRow("bad_json", ...)`. A .json file holding one JSON object is a ReaderError."""
    with fs.open_read(path) as f:
        first = f.read(4096).lstrip(_BOM_AND_SPACE)[:1]
        if first == b"[" or (first == b"{" and path.lower().endswith(".json") and _whole_json_object(f)):
            yield from _json_array(path, f)
            return
        f.seek(0)
        for line in f:
            if not line.strip():
                continue
            try:
                yield loads_json(line)  # bytes: json detects UTF-8 (with or without BOM), -16, -32
            except ValueError as exc:  # UnicodeDecodeError included
                yield BadRow("bad_json", f"{exc}: {line.decode('utf-8', 'replace').strip()[:80]!r}")


def _json_array(path: str, f) -> list:
    f.seek(0)
    try:
        rows = loads_json(f.read())
    except ValueError as exc:
        raise ReaderError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(rows, list):
        raise ReaderError(f"{path}: expected a JSON array of rows or JSON Lines, got a JSON object")
    return rows


def _whole_json_object(f) -> bool:
    """True when a .json file starting with `{` is one JSON document rather than JSON Lines."""
    f.seek(0)
    first_line = f.readline()
    try:
        loads_json(first_line)
        return False
    except ValueError:
        return True
