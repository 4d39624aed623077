"""Shard reader: a torch IterableDataset over Parquet record shards (local or any fsspec URL).

The unit of work is one row group of one shard file. Units are dealt to "slots" (one slot per DataLoader
worker per DDP rank) once, greedily by row count, so every row belongs to exactly one slot. Each slot
walks its units in an order shuffled per epoch and passes rows through a seeded shuffle buffer.

The stream is first computed as references (unit, row) from Parquet metadata alone; rows are read only
when a reference leaves the shuffle buffer, a row group at a time, and image bytes are decoded then, in the
worker. Because references cost nothing to compute, resuming at position N of a slot replays N references
without reading any data and continues with exactly the rows an uninterrupted run would have produced.

A record whose image cannot be read is skipped, never fatal: it is counted in the worker and the count
travels downstream on the next sample (`_skipped`), or on a trailing marker (`TAIL`) when the stream ends,
so the main process can report it even when the skip happened in a DataLoader worker.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ("id", "task", "format", "prompt", "target", "image", "width", "height")
EVAL_COLUMNS = TRAIN_COLUMNS + ("dataset", "split", "objects", "caption", "meta")
DEFAULT_SOURCE = "default"
HOLDOUT_SKIP = "holdout_image"
TAIL = "_tail"              # key of the marker sample that carries the skip counts of a stream's end
_WARN_PER_REASON = 5        # skipped records logged one by one per reason and stream; the rest only counted
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Unit:
    """One row group of one shard file."""

    source: str
    file: str
    row_group: int
    rows: int


# ---------------------------------------------------------------- shard specs and discovery

def parse_shard_spec(spec: str) -> tuple[str, str]:
    """`NAME=GLOB` -> (NAME, GLOB); a bare GLOB -> ('default', GLOB).

    The part before the first `=` is a name only if it looks like one (no `/` or `:`), so hive-style
    paths such as `gs://b/lang=en/*.parquet` stay globs.
    """
    head, sep, tail = spec.partition("=")
    if sep and _NAME.match(head) and tail:
        return head, tail
    return DEFAULT_SOURCE, spec


def parse_mix(text: str) -> dict[str, float]:
    """`refcoco=0.5,counting=0.5` -> {'refcoco': 0.5, 'counting': 0.5}."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not _NAME.match(name.strip()):
            raise ValueError(f"--mix expects NAME=WEIGHT[,NAME=WEIGHT...], got {part!r}")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"--mix weight for {name!r} is not a number: {value!r}") from None
        if not w > 0:
            raise ValueError(f"--mix weight for {name!r} must be > 0, got {value}")
        if name.strip() in weights:
            raise ValueError(f"--mix names {name.strip()!r} twice")
        weights[name.strip()] = w
    if not weights:
        raise ValueError("--mix is empty")
    return weights


def check_mix(weights: dict[str, float] | None, sources: dict[str, list]) -> None:
    """--mix must name exactly the --shards NAME=GLOB sets, each with rows (an empty one would silently
    hand its share to the others)."""
    if weights is None:
        return
    unmatched = sorted(set(weights) ^ set(sources))
    if unmatched:
        raise ValueError(f"--mix and --shards NAME=GLOB name different sources; unmatched: {unmatched}")
    empty = sorted(name for name in weights if not sources[name])
    if empty:
        raise ValueError(f"--mix sources with no rows: {empty}")


def _fs(url: str):
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def expand_pattern(pattern: str) -> list[str]:
    """Parquet files for a glob, a file, a directory, or a dataset output dir (its `data/` folder)."""
    fs, path = _fs(pattern)
    if not any(c in path for c in _GLOB_CHARS):
        if fs.isdir(path):
            sub = posixpath.join(path, "data")
            path = posixpath.join(sub if fs.isdir(sub) else path, "*.parquet")
        elif fs.isfile(path):
            return [_unstrip(fs, pattern, path)]
        else:
            return []
    found = [p for p in fs.glob(path) if not posixpath.basename(p).startswith((".", "_"))]
    return sorted(_unstrip(fs, pattern, p) for p in found if fs.isfile(p))


def _unstrip(fs, original: str, path: str) -> str:
    return fs.unstrip_protocol(path) if _is_remote(original) else path


_SHARD_NAME = re.compile(r"^(?P<split>.+)-\d{5}-of-\d{5}\.parquet$")
TRAIN_SPLIT = "train"


def split_of(path: str) -> str | None:
    """The split in a groundforge shard name (`{split}-00000-of-00004.parquet`); None for other names."""
    m = _SHARD_NAME.match(posixpath.basename(path))
    return m.group("split") if m else None


def parse_splits(text: str | None, default: str) -> tuple[set | None, set]:
    """--split value -> (include, exclude). `all`: everything; `-train` or `!train`: all but those;
    `a,b`: only those. None uses `default`."""
    text = (text if text is not None else default).strip()
    if text == "all":
        return None, set()
    names = [t.strip() for t in text.split(",") if t.strip()]
    neg = {n[1:] for n in names if n[:1] in "-!"}
    pos = {n for n in names if n[:1] not in "-!"}
    if neg and pos:
        raise ValueError(f"--split mixes splits to keep and to leave out: {text!r}")
    if not names:
        raise ValueError("--split is empty")
    return (None, neg) if neg else (pos, set())


def select_splits(files: list[str], include: set | None, exclude: set) -> list[str]:
    """Files of the wanted splits; files without a split in their name are kept (their split is unknown)."""
    return [f for f in files if split_of(f) is None
            or ((include is None or split_of(f) in include) and split_of(f) not in exclude)]


def discover(specs: Sequence[str], splits: str = "all") -> dict[str, list[str]]:
    """--shards values -> {source name: sorted file list}, limited to `splits` (see parse_splits; train
    defaults to `train`, eval to `-train`). Fails at once on a pattern matching nothing."""
    include, exclude = parse_splits(splits, "all")
    sources: dict[str, list[str]] = {}
    for spec in specs:
        name, pattern = parse_shard_spec(spec)
        found = expand_pattern(pattern)
        if not found:
            raise FileNotFoundError(f"--shards {spec!r}: no Parquet files match {pattern!r}")
        files = select_splits(found, include, exclude)
        if not files:
            present = sorted({split_of(f) for f in found})
            raise FileNotFoundError(f"--shards {spec!r}: {len(found)} files, none of split {splits!r} "
                                    f"(found: {', '.join(present)}); choose with --split")
        sources.setdefault(name, [])
        sources[name] = sorted(set(sources[name]) | set(files))
    return sources


HOLDOUT_FILE = "holdout_image_ids.txt"


def dataset_root(path: str) -> str | None:
    """OUT for a shard OUT/data/x.parquet (where a build writes holdout_image_ids.txt); else None."""
    folder = posixpath.dirname(path) if _is_remote(path) else os.path.dirname(os.path.abspath(path))
    if posixpath.basename(folder.rstrip("/")) != "data":
        return None
    return posixpath.dirname(folder) if _is_remote(path) else os.path.dirname(folder)


def holdout_ids(files: Sequence[str]) -> tuple[set, list[str]]:
    """Image ids listed in the holdout_image_ids.txt of the builds the files come from, and those files."""
    ids, found = set(), []
    for root in sorted({r for r in map(dataset_root, files) if r}):
        path = posixpath.join(root, HOLDOUT_FILE) if _is_remote(root) else os.path.join(root, HOLDOUT_FILE)
        fs, p = _fs(path)
        if not fs.isfile(p):
            continue
        with fs.open(p, "r") as f:
            ids.update(line.strip() for line in f if line.strip() and not line.startswith("#"))
        found.append(path)
    return ids, found


def column_values(files: Sequence[str], column: str) -> Iterator[tuple[str, list]]:
    """(file, values) of one column, a row group at a time (no images read)."""
    for path in files:
        with open_parquet(path) as pf:
            if column not in pf.schema_arrow.names:
                continue
            for rg in range(pf.metadata.num_row_groups):
                yield path, pf.read_row_group(rg, columns=[column]).column(0).to_pylist()


def image_overlap(train_files: Sequence[str], eval_files: Sequence[str]) -> dict:
    """Images (by image_sha256) of the eval shards that the train shards hold too."""
    eval_images = {v for _, vals in column_values(eval_files, "image_sha256") for v in vals if v}
    shared, rows = set(), 0
    for _, vals in column_values(train_files, "image_sha256"):
        for v in vals:
            if v in eval_images:
                shared.add(v)
                rows += 1
    return {"eval_images": len(eval_images), "shared_images": len(shared), "train_rows_with_eval_images": rows}


@contextlib.contextmanager
def open_parquet(path: str):
    """A pyarrow ParquetFile for a local path or fsspec URL, closed (with its remote file) on exit."""
    import pyarrow.parquet as pq

    if _is_remote(path):
        import fsspec

        with fsspec.open(path, "rb") as f, pq.ParquetFile(f) as pf:
            yield pf
    else:
        with pq.ParquetFile(path) as pf:
            yield pf


def list_units(sources: dict[str, list[str]]) -> dict[str, list[Unit]]:
    """Row groups of every file, from Parquet footers only (read in parallel for remote stores)."""
    from concurrent.futures import ThreadPoolExecutor

    def footer(item):
        name, path = item
        with open_parquet(path) as pf:
            md = pf.metadata
        return [Unit(name, path, rg, md.row_group(rg).num_rows) for rg in range(md.num_row_groups)]

    items = [(name, path) for name, files in sources.items() for path in files]
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(items)))) as pool:
        groups = list(pool.map(footer, items))
    out: dict[str, list[Unit]] = {name: [] for name in sources}
    for units in groups:
        for u in units:
            if u.rows:
                out[u.source].append(u)
    return out


def assign_units(units: Sequence[Unit], n_slots: int, ranks: int = 1) -> list[list[Unit]]:
    """Deal units to slots, each to the slot with the fewest rows so far.

    Slot s is worker s % W of rank s // W (W = n_slots // ranks). Ties go to the lowest worker index,
    then the lowest rank, so every rank gets a unit as soon as there are as many units as ranks.
    Deterministic, and every unit goes to exactly one slot.
    """
    per_rank = max(1, n_slots // max(1, ranks))
    slots: list[list[Unit]] = [[] for _ in range(n_slots)]
    totals = [0] * n_slots
    for u in sorted(units, key=lambda u: (u.file, u.row_group)):
        i = min(range(n_slots), key=lambda s: (totals[s], s % per_rank, s // per_rank))
        slots[i].append(u)
        totals[i] += u.rows
    return slots


# ---------------------------------------------------------------- reference streams

class Ref(NamedTuple):
    """One row of one unit; `last`: no other row of this unit is still pending in the shuffle buffer."""

    unit: Unit
    row: int
    last: bool


def unit_refs(units: Sequence[Unit], rng_key: str, epochs: int | None, buffer: int,
              shuffle: bool) -> Iterator[Ref]:
    """References for one slot of one source, epoch after epoch (forever when `epochs` is None)."""
    if not units:
        return
    epoch = 0
    while epochs is None or epoch < epochs:
        rng = random.Random(f"{rng_key}/epoch={epoch}")
        order = list(units)
        if shuffle:
            rng.shuffle(order)
        pending: dict[Unit, int] = {}
        buf: list[tuple[Unit, int]] = []
        size = max(1, buffer) if shuffle else 1
        for u in order:
            pending[u] = u.rows
            for r in range(u.rows):
                buf.append((u, r))
                if len(buf) >= size:
                    yield _pop(buf, rng, pending, shuffle)
        while buf:
            yield _pop(buf, rng, pending, shuffle)
        epoch += 1


def _pop(buf: list, rng: random.Random, pending: dict, shuffle: bool) -> Ref:
    if shuffle and len(buf) > 1:
        i = rng.randrange(len(buf))
        buf[i], buf[-1] = buf[-1], buf[i]
    u, r = buf.pop()
    pending[u] -= 1
    last = pending[u] == 0
    if last:
        del pending[u]
    return Ref(u, r, last)


def mixed_refs(streams: dict[str, Iterator[Ref]], weights: dict[str, float] | None,
               rng_key: str) -> Iterator[Ref]:
    """Weighted random choice of the source for every sample (an exhausted source drops out);
    without weights there must be a single stream, which passes through."""
    if weights is None:
        (stream,) = streams.values()
        yield from stream
        return
    rng = random.Random(f"{rng_key}/mix")
    active = list(streams)
    while active:
        name = rng.choices(active, weights=[weights[n] for n in active])[0]
        try:
            yield next(streams[name])
        except StopIteration:
            active.remove(name)


# ---------------------------------------------------------------- the dataset

class _ShardStream:
    """torch IterableDataset of decoded records (use `ShardStream`, which adds the torch base class).

    sources: {name: [Unit]}; weights: {name: weight} to mix sources (None: one pool, each row once per
    epoch); epochs: None streams forever (training), an int stops (evaluation, tests);
    start: {slot: position} to resume; worker_offset rotates which DataLoader worker plays which slot,
    so the resumed loader hands out batches in the same worker order as the interrupted one.
    Each yielded dict has the requested columns (image as an RGB PIL image) plus `_slot` and `_pos`
    (references consumed by that slot so far, the value to resume from), and `_skipped` ({reason: n},
    records skipped since the previous sample) when there were any. Iterated by a DataLoader, a finite
    stream that ends with skips yields a last `{TAIL: True, "_skipped": ...}` marker, which the collator
    drops.
    """

    def __init__(self, sources: dict[str, list[Unit]], *, weights: dict[str, float] | None = None,
                 seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 1000, epochs: int | None = None,
                 rank: int = 0, world_size: int = 1, columns: Sequence[str] = TRAIN_COLUMNS,
                 image_root: str | None = None, start: dict[int, int] | None = None,
                 worker_offset: int = 0, decode_images: bool = True,
                 exclude_image_ids: frozenset | None = None, family=None):
        check_mix(weights, sources)
        self.sources = sources
        self.weights = weights
        self.seed = seed
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.epochs = epochs
        self.rank = rank
        self.world_size = world_size
        self.exclude_image_ids = frozenset(exclude_image_ids or ())
        self.family = family          # train.families.Family whose format the records must have
        self.columns = tuple(columns) + (("image_id",) if self.exclude_image_ids and "image_id" not in columns
                                         else ())
        self.image_root = image_root
        self.start = {int(k): int(v) for k, v in (start or {}).items()}
        self.worker_offset = worker_offset
        self.decode_images = decode_images
        self.skipped: Counter = Counter()     # this process's skips (DataLoader workers count their own)

    # slot bookkeeping -------------------------------------------------------
    def slot_for(self, worker_id: int, num_workers: int) -> int:
        return self.rank * num_workers + (worker_id + self.worker_offset) % num_workers

    def _worker(self) -> tuple[int, int]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def slot_units(self, slot: int, n_slots: int) -> dict[str, list[Unit]]:
        """The units of one slot, per pool. Without weights all sources form one pool, dealt so that every
        row belongs to one slot. With weights each source is dealt on its own, and a source with fewer
        row groups than there are slots is shared by the slots it could not reach: otherwise those
        slots would never draw from it and the mix would drift towards the other sources."""
        if self.weights is None:
            pools = {"*": [u for name in sorted(self.sources) for u in self.sources[name]]}
        else:
            pools = {name: self.sources[name] for name in sorted(self.sources)}
        mine = {}
        for name, units in pools.items():
            mine[name] = assign_units(units, n_slots, self.world_size)[slot]
            if not mine[name] and self.weights is not None:
                log.warning("--mix source %r has %d row groups for %d loader slots: slot %d reads all of them",
                            name, len(units), n_slots, slot)
                mine[name] = list(units)
        return mine

    def refs(self, slot: int, n_slots: int) -> Iterator[Ref]:
        """References of one slot, from position 0."""
        streams = {}
        for name, units in self.slot_units(slot, n_slots).items():
            key = f"{self.seed}/{name}/{slot}/{n_slots}"
            streams[name] = unit_refs(units, key, self.epochs, self.shuffle_buffer, self.shuffle)
        return mixed_refs(streams, self.weights, f"{self.seed}/{slot}/{n_slots}")

    def __iter__(self):
        worker_id, num_workers = self._worker()
        n_slots = self.world_size * num_workers
        slot = self.slot_for(worker_id, num_workers)
        return self.iter_slot(slot, n_slots, tail=True)

    def iter_slot(self, slot: int, n_slots: int, tail: bool = False) -> Iterator[dict]:
        """Samples of one slot from its start position; `tail`: end with the skip-count marker if needed."""
        pos = self.start.get(slot, 0)
        # More consecutive skips than the slot has rows: every record is unreadable, and an endless
        # stream would spin without ever yielding (a silent hang of the DataLoader).
        limit = sum(u.rows for units in self.slot_units(slot, n_slots).values() for u in units)
        cache: dict[Unit, list] = {}
        unsent: Counter = Counter()
        in_a_row = 0
        for i, ref in enumerate(self.refs(slot, n_slots)):
            if i < pos:
                continue  # replaying a resumed stream: references only, nothing is read
            row = self._take(ref, cache)
            if self.exclude_image_ids and row.get("image_id") in self.exclude_image_ids:
                reason = HOLDOUT_SKIP      # an image a build set aside for evaluation (holdout_image_ids.txt)
                self.skipped[reason] += 1
            else:
                reason = self._decode(row, ref.unit)
            if reason:
                unsent[reason] += 1
                in_a_row += 1
                if in_a_row > limit:
                    raise RuntimeError(f"slot {slot}: none of its {limit} records has a readable image "
                                       f"(skipped: {dict(self.skipped)})")
                continue
            in_a_row = 0
            row["_slot"] = slot
            row["_pos"] = i + 1
            if unsent:
                row["_skipped"] = dict(unsent)
                unsent.clear()
            yield row
        if unsent and tail:
            yield {TAIL: True, "_skipped": dict(unsent)}

    # reading ------------------------------------------------------------------
    def _take(self, ref: Ref, cache: dict) -> dict:
        """The row of a reference. Its row group is read on first use and dropped after its last row, so
        at most the shuffle buffer's rows (plus one row group) are held."""
        unit = ref.unit
        rows = cache.get(unit)
        if rows is None:
            with open_parquet(unit.file) as pf:
                missing = [c for c in self.columns if c not in pf.schema_arrow.names]
                if missing:
                    raise ValueError(f"{unit.file}: no column {', '.join(missing)}; is it a groundforge shard?")
                rows = pf.read_row_group(unit.row_group, columns=list(self.columns)).to_pylist()
            cache[unit] = rows
        row, rows[ref.row] = rows[ref.row], None
        if ref.last:
            del cache[unit]
        return row

    def _decode(self, row: dict, unit: Unit) -> str | None:
        """Decode the row's image in place; returns the skip reason when it cannot be read."""
        from groundforge.train.families import FAMILIES, check_format

        check_format(self.family or FAMILIES["florence2"], row.get("format"), f"{unit.file}: record {row.get('id')}")
        if not self.decode_images or "image" not in row:
            return None
        try:
            row["image"] = load_image(row["image"], unit.file, self.image_root)
        except Exception as exc:  # noqa: BLE001 - a bad image skips its record, it does not stop training
            reason = type(exc).__name__
            self.skipped[reason] += 1
            if self.skipped[reason] <= _WARN_PER_REASON:
                more = " (further ones are only counted)" if self.skipped[reason] == _WARN_PER_REASON else ""
                log.warning("skipping record %s from %s: image unreadable (%s)%s", row.get("id"), unit.file,
                            exc, more)
            return reason
        return None


def load_image(image: dict, shard_file: str, image_root: str | None = None):
    """PIL RGB image from the record's {bytes, path}; a bare path resolves inside `image_root`
    (or the shard's directory) and may not escape it."""
    from PIL import Image

    if not image:
        raise ValueError("record has no image")
    data = image.get("bytes")
    if not data:
        path = image.get("path")
        if not path:
            raise ValueError("image has neither bytes nor path")
        data = _read_under(image_root or _dirname(shard_file), path)
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def _dirname(path: str) -> str:
    return posixpath.dirname(path) if _is_remote(path) else os.path.dirname(os.path.abspath(path))


def _read_under(root: str, name: str) -> bytes:
    from groundforge.transforms.paths import safe_join

    full = safe_join(root, name)
    if _is_remote(full):
        import fsspec

        with fsspec.open(full, "rb") as f:
            return f.read()
    with open(full, "rb") as f:
        return f.read()


def shard_formats(files: Sequence[str]) -> dict[str, list[str]]:
    """{format: files} from the `format` column of each file's first row group (a cheap early check)."""
    out: dict[str, list[str]] = {}
    for path in files:
        with open_parquet(path) as pf:
            if "format" not in pf.schema_arrow.names or not pf.metadata.num_row_groups:
                continue
            values = set(pf.read_row_group(0, columns=["format"]).column(0).to_pylist())
        for v in values:
            out.setdefault(v, []).append(path)
    return out


def check_shard_formats(files: Sequence[str], family) -> None:
    """Fail at once, naming a file, when the shards were rendered for another model family."""
    from groundforge.train.families import check_format

    for fmt, paths in sorted(shard_formats(files).items(), key=lambda kv: str(kv[0])):
        check_format(family, fmt, f"{paths[0]}" + (f" (and {len(paths) - 1} more files)" if len(paths) > 1 else ""))


def total_rows(sources: dict[str, list[Unit]]) -> int:
    return sum(u.rows for units in sources.values() for u in units)


def __getattr__(name: str):
    """`ShardStream` subclasses torch's IterableDataset; it is built on first use so that importing this
    module does not import torch. It keeps its module-level name, so it pickles for spawned workers."""
    if name == "ShardStream":
        from torch.utils.data import IterableDataset

        cls = type("ShardStream", (_ShardStream, IterableDataset), {"__module__": __name__})
        globals()["ShardStream"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
