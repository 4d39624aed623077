"""Caption inputs of `groundforge build grit`, as caption items (plain Python, no Beam).

Readers follow the item protocol of readers/common.py: per input caption an item or a `Rejected` (stage "read");
the COCO reader also yields a `Rejected` of stage "annotation" for an unusable box of the instances file, which is
not a caption. A caption item is a dict:

    source       reject source ("file#row", "shard.tar#key", "caption:<id>")
    key          stable identity of the (image, caption) pair within the dataset: record ids and balancing
    image_id     source image id (string; --exclude-images compares canonical ids)
    caption      the caption (stripped; GRIT-20M captions are kept verbatim, their spans index them)
    file_name    image path relative to --images (or None); alt_file_names: further candidates, in order
    image_bytes  embedded image bytes (or None)
    width/height size the input claims (or None): checked against the decoded image
    annotations  [(coco category name, pixel xyxy)] for the `annotations` grounder (COCO instances), or None
    grit         {"noun_chunks", "ref_exps"} of a GRIT-20M row, or None
    meta         small dict for the record meta (url, input file, ...)

Inputs: caption tables (Parquet, CSV, JSONL/JSON) with a caption column and an image column (path, bytes or a
Hugging Face `{"bytes", "path"}` struct); img2dataset webdataset tar shards ({key}.jpg + {key}.txt +
{key}.json); COCO captions JSON (+ instances JSON for boxes); GRIT-20M parquet. Tables are read with
`pipeline.readers.tables` and files open through `pipeline.fs`, so local paths, gs:// and s3:// work alike.
"""
from __future__ import annotations

import hashlib
import posixpath
import tarfile
from collections.abc import Iterator
from typing import Any

from groundforge.pipeline import fs
from groundforge.pipeline.readers.common import (
    ReaderError,
    Rejected,
    id_str,
    image_field,
    loads_json,
    positive_int,
    rejected,
)
from groundforge.pipeline.readers.tables import BadRow, iter_table_rows, table_columns
from groundforge.transforms.boxes import xywh_to_xyxy
from groundforge.transforms.grit import RowError, parse_grit_row
from groundforge.transforms.records import reject

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
GRIT20M_COLUMNS = ("caption", "width", "height", "noun_chunks", "ref_exps")
GRIT20M_IMAGE_COLUMNS = ("file_name", "image_path", "image", "key")
ID_COLUMNS = ("image_id", "key", "id")  # a caption table's image id, first present wins
GRIT20M_READ_COLUMNS = GRIT20M_COLUMNS + GRIT20M_IMAGE_COLUMNS + ("image_id", "id", "url")
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # a tar member larger than this is not an image we would keep


# ---------------------------------------------------------------- items

def make_item(*, source: str, key: str, image_id: str, caption: str | None, file_name: str | None = None,
              alt_file_names: tuple = (), image_bytes: bytes | None = None, width: int | None = None,
              height: int | None = None, annotations: list | None = None, grit: dict | None = None,
              meta: dict | None = None) -> dict:
    return {"source": source, "key": key, "image_id": str(image_id), "caption": caption, "file_name": file_name,
            "alt_file_names": tuple(alt_file_names), "image_bytes": image_bytes, "width": width, "height": height,
            "annotations": annotations, "grit": grit, "meta": meta or {}}


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _caption(value: Any) -> str | None:
    text = _text(value)
    return text.strip() if text is not None else None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- --captions tables

def caption_row_to_item(row: Any, *, source: str, caption_column: str, image_column: str) -> tuple[str, dict]:
    """One caption-table row -> an item or a `Rejected`.

    The image id is the row's `image_id` (or `key`/`id`) column, else the image path, else the first 16 hex
    digits of the image bytes' sha256. The pair key is (image path or bytes hash, caption): a row repeated
    verbatim gives the same records, which the writer reports as duplicates. Width/height columns are not read:
    a caption has no boxes that depend on them (metadata often gives the size before a resize).
    """
    if not isinstance(row, dict):
        return rejected(source, "bad_row", f"row is a {type(row).__name__}, not an object")
    caption = _caption(row.get(caption_column))
    data, path = image_field(row.get(image_column))
    if data is None and path is None:
        return rejected(source, "missing_image", f"column {image_column!r} has no path or bytes")
    digest = None if data is None else _sha(data)
    image_ref = path if digest is None else "sha256:" + digest
    image_id = next((v for v in (id_str(row.get(c)) for c in ID_COLUMNS) if v), None)
    image_id = image_id or path or digest[:16]
    meta = {"url": _text(row.get("url"))} if row.get("url") else {}
    return make_item(source=source, key=f"{image_ref}\x1f{caption}", image_id=image_id, caption=caption,
                             file_name=path if data is None else None, image_bytes=data, meta=meta)


def _table_items(path: str, columns: tuple, to_item, **kwargs) -> Iterator[tuple[str, dict]]:
    """`to_item(row, source=..., **kwargs)` for each row of a table; a row that does not parse is a reject."""
    for index, row in enumerate(iter_table_rows(path, columns)):
        source = f"{path}#{index}"
        if isinstance(row, BadRow):
            yield rejected(source, row.reason, row.detail)
        else:
            yield to_item(row, source=source, **kwargs)


def read_caption_table(path: str, *, caption_column: str, image_column: str) -> Iterator[tuple[str, dict]]:
    columns = (caption_column, image_column, *ID_COLUMNS, "url")
    return _table_items(path, columns, caption_row_to_item, caption_column=caption_column,
                        image_column=image_column)


def check_caption_columns(path: str, caption_column: str, image_column: str) -> None:
    columns = table_columns(path)
    missing = [c for c in (caption_column, image_column) if c not in columns]
    if missing and columns:
        raise ReaderError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(columns)}); "
                         "set --caption-column / --image-column")


# ---------------------------------------------------------------- --webdataset (img2dataset tar shards)

def _member_key(name: str) -> tuple[str, str]:
    """webdataset convention: the key is the path up to the first dot of the base name."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def _sample_to_item(path: str, key: str, files: dict[str, bytes], too_large: list[str],
                    not_files: list[str] = ()) -> dict | Rejected:
    """The members of one sample -> item, or one reject (`member_too_large`, `not_a_file`, `missing_image`).
    Symbolic links and other non-file members are never followed."""
    source = f"{path}#{key}"
    if too_large:
        return rejected(source, "member_too_large", "; ".join(too_large))
    info: dict = {}
    if "json" in files:
        try:
            info = loads_json(files["json"].decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            info = {}
        info = info if isinstance(info, dict) else {}
    image = next((files[e] for e in IMAGE_EXTS if e in files), None)
    if image is None:
        if not_files:
            return rejected(source, "not_a_file", "; ".join(not_files))
        return rejected(source, "missing_image", f"no {'/'.join(IMAGE_EXTS)} member for {key}")
    caption = _caption(files["txt"]) if "txt" in files else _caption(info.get("caption"))
    image_id = id_str(info.get("key")) or posixpath.basename(key)
    meta = {"url": info["url"]} if isinstance(info.get("url"), str) else {}
    return make_item(source=source, key=f"wds:{key}\x1f{caption}", image_id=image_id, caption=caption,
                             image_bytes=image, meta=meta)


def read_webdataset(path: str) -> Iterator[tuple[str, dict]]:
    """Samples of one tar shard, streamed (members of a sample are consecutive, as webdataset writes them):
    one item or one reject per sample. A shard that is not a tar, or breaks off (inside a member or a
    header), ends with one `unreadable_file` reject, which also covers the sample it broke off in (its
    members may be missing)."""
    key, files, too_large, not_files = None, {}, [], []
    try:
        with fs.open_read(path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                member_key, ext = _member_key(member.name)
                if member_key != key:
                    if key is not None:
                        yield _sample_to_item(path, key, files, too_large, not_files)
                    key, files, too_large, not_files = member_key, {}, [], []
                if not member.isfile():  # a symlink, hard link or device member: never followed
                    not_files.append(f"{member.name}: not a regular file")
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    too_large.append(f"{member.name}: {member.size} bytes")
                    continue
                files[ext] = tar.extractfile(member).read()
            if _cut_short(tar):
                raise tarfile.ReadError("the archive ends without its end-of-archive block (cut short)")
            if key is not None:
                yield _sample_to_item(path, key, files, too_large, not_files)
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield rejected(path, "unreadable_file", f"{type(exc).__name__}: {exc}")


def _cut_short(tar: tarfile.TarFile) -> bool:
    """Whether a stream-mode tar ended early. tarfile takes a header cut off (or missing) after the first
    member for the end of the archive and raises nothing; a whole archive ends with a 512-byte zero block,
    read past the last member's end (`offset`) by the stream (`fileobj.pos`, after decompression)."""
    return tar.fileobj.pos - tar.offset < tarfile.BLOCKSIZE


# ---------------------------------------------------------------- --coco-captions [+ --coco-instances]

def coco_boxes(instances: dict) -> tuple[dict, list[dict]]:
    """-> (image id -> [(category name, pixel xyxy)], rejects). Crowd regions are skipped (one is not an
    object); an annotation with an unknown category or a bbox that is not 4 numbers becomes an `annotation`
    stage reject. Box values are checked against the image by the grounding filters."""
    names = {c.get("id"): c.get("name") for c in instances.get("categories") or [] if isinstance(c, dict)}
    out: dict = {}
    rejects, seen = [], set()
    for ann in instances.get("annotations") or []:
        if not isinstance(ann, dict):
            rejects.append(reject(f"annotation:{ann!r}"[:200], "annotation", "bad_row", "not an object"))
            continue
        if ann.get("id") is not None and _hashable(ann["id"]):
            if ann["id"] in seen:  # the first one in file order counts, whatever the runner
                rejects.append(reject(f"annotation:{ann['id']}", "annotation", "duplicate_annotation_id",
                                      f"annotation id {ann['id']!r} appears more than once; the first is used"))
                continue
            seen.add(ann["id"])
        if ann.get("iscrowd"):
            continue
        where, name = f"annotation:{ann.get('id')}", names.get(ann.get("category_id"))
        if name is None:
            rejects.append(reject(where, "annotation", "unknown_category", f"category_id={ann.get('category_id')}"))
            continue
        box = _xyxy(ann.get("bbox"))
        if box is None:
            rejects.append(reject(where, "annotation", "bad_box", f"bbox={ann.get('bbox')!r}"[:200]))
            continue
        out.setdefault(ann.get("image_id"), []).append((name, box))
    return out, rejects


def _hashable(value: Any) -> bool:
    return isinstance(value, (int, str, float)) and not isinstance(value, bool)


def _xyxy(bbox: Any) -> list[float] | None:
    """COCO [x, y, w, h] -> xyxy floats; None unless it is a list of 4 numbers."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        return xywh_to_xyxy(bbox)
    except (TypeError, ValueError):
        return None


def instance_image_ids(instances: dict) -> set:
    """The image ids an instances file covers: those in its `images` list (an image listed without boxes has
    none to give) and those its annotations name (crowd regions and rejected boxes included)."""
    listed = [img.get("id") for img in instances.get("images") or [] if isinstance(img, dict)]
    named = [ann.get("image_id") for ann in instances.get("annotations") or [] if isinstance(ann, dict)]
    return {i for i in listed + named if _hashable(i)}


def read_coco_captions(captions: dict, instances: dict | None, source: str) -> Iterator[tuple[str, dict]]:
    """COCO captions (`images` + `annotations` with `caption`) -> one item per caption; with `instances`,
    each item carries its image's boxes for the annotations grounder ([] for an image the instances file lists
    without boxes; None for an image it does not cover at all, e.g. captions of train2017 with instances of
    val2017: the annotations grounder counts those as `captions_without_instances`). A caption without an
    `id` is keyed by its position in the file, so captions never share a record id."""
    images = {}
    for img in captions.get("images") or []:
        if isinstance(img, dict) and {"id", "file_name"} <= set(img) and _hashable(img["id"]):
            if img["id"] in images:
                yield rejected(f"{source}#image:{img['id']}", "duplicate_image_id",
                               f"image id {img['id']!r} appears more than once; the first entry is used")
                continue
            images[img["id"]] = img
    caption_ids: set = set()
    boxes, covered = None, set()
    if instances is not None:
        boxes, bad = coco_boxes(instances)
        covered = instance_image_ids(instances)
        for row in bad:
            yield Rejected(row)
    for index, ann in enumerate(captions.get("annotations") or []):
        if not isinstance(ann, dict) or "caption" not in ann:
            yield rejected(f"{source}#{index}", "missing_field", "caption annotation "
                                   "without a caption")
            continue
        entry = images.get(ann.get("image_id")) if _hashable(ann.get("image_id")) else None
        ident = ann["id"] if ann.get("id") is not None else f"#{index}"
        where = f"caption:{ident}"
        if ann.get("id") is not None:
            if not _hashable(ann["id"]) or ann["id"] in caption_ids:
                yield rejected(where, "duplicate_caption_id", "caption id appears more than once (or is not an id); "
                               "the first caption with it is used")
                continue
            caption_ids.add(ann["id"])
        if entry is None:
            yield rejected(where, "unknown_image", f"image_id={ann.get('image_id')}")
            continue
        yield make_item(
            source=f"{where}:{entry['file_name']}", key=f"coco:{ident}\x1f{ann.get('image_id')}",
            image_id=str(entry["id"]), caption=_caption(ann["caption"]), file_name=str(entry["file_name"]),
            width=positive_int(entry.get("width")), height=positive_int(entry.get("height")),
            annotations=boxes.get(entry["id"], []) if boxes is not None and entry["id"] in covered else None,
            meta={"caption_id": ann.get("id"), "file_name": entry["file_name"],
                  **({"license": entry["license"]} if "license" in entry else {})})


# ---------------------------------------------------------------- --grit20m

def grit20m_row_to_item(row: Any, *, source: str) -> tuple[str, dict]:
    """One GRIT-20M row -> item; its noun_chunks/ref_exps are checked here (reject reasons of
    `transforms.grit.parse_grit_row`) and re-read against the real image size later.

    Image: an `image` column (bytes or struct), else a `file_name`/`image_path` column, else the
    img2dataset `key`: `{key}.jpg` or `{key[:5]}/{key}.jpg` (the `files` output layout) under --images.
    Image id: the `image_id` column (as groundforge's annotations/ write it), else `key`, else the image path.
    """
    if not isinstance(row, dict):
        return rejected(source, "bad_row", f"row is a {type(row).__name__}, not an object")
    try:
        parse_grit_row(row)
    except RowError as err:
        return rejected(source, err.reason, err.detail)
    data, path = image_field(row.get("image"))
    path = path or _text(row.get("file_name")) or _text(row.get("image_path"))
    key = id_str(row.get("key"))
    alt: tuple = ()
    if data is None and not path and key:
        path, alt = f"{key}.jpg", (f"{key[:5]}/{key}.jpg",)
    url = _text(row.get("url"))
    image_id = (id_str(row.get("image_id")) or key or path or id_str(row.get("id"))
                or (url and hashlib.sha256(url.encode()).hexdigest()[:16]))
    if data is None and not path:
        return rejected(source, "missing_image", "no image bytes, file_name, image_path or key")
    ref = key or path or url or ("sha256:" + _sha(data) if data else "")
    return make_item(
        source=source, key=f"grit20m:{ref}\x1f{row['caption']}", image_id=str(image_id), caption=row["caption"],
        file_name=None if data is not None else path, alt_file_names=alt, image_bytes=data,
        width=int(row["width"]), height=int(row["height"]),
        grit={"noun_chunks": row.get("noun_chunks") or [], "ref_exps": row.get("ref_exps") or []},
        meta={"url": url} if url else {})


def read_grit20m(path: str) -> Iterator[tuple[str, dict]]:
    return _table_items(path, GRIT20M_READ_COLUMNS, grit20m_row_to_item)


def check_grit20m_columns(path: str, images: str | None) -> None:
    columns = table_columns(path)
    missing = [c for c in GRIT20M_COLUMNS if c not in columns]
    if missing:
        raise ReaderError(f"{path}: not in the GRIT-20M layout, missing {', '.join(missing)} "
                         f"(columns: {', '.join(columns)})")
    if "image" not in columns and not images:
        raise ReaderError(f"{path}: GRIT-20M rows have no image bytes; download the images (img2dataset) and pass "
                         "--images DIR (files named by the key, file_name or image_path column)")
    if "image" not in columns and not any(c in columns for c in GRIT20M_IMAGE_COLUMNS):
        raise ReaderError(f"{path}: no column to find the image by ({', '.join(GRIT20M_IMAGE_COLUMNS)})")
