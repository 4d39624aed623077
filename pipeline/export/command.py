"""`groundforge export`: stream a groundforge output into a trainer's own dataset layout.

Shards are read one row group at a time in dataset_info order (split by split; within a shard, by id), so the
same input gives the same bytes. A record that cannot be exported becomes a row of DIR/rejects/ (stage
`export`) and is counted in the summary.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter

import click
from groundforge.pipeline.command import HELP, one_dataset
from groundforge.pipeline.export.common import STAGE, ExportError, OutFile
from groundforge.pipeline.export.images import ImageResolver
from groundforge.pipeline.export.llava import LlavaTarget
from groundforge.pipeline.export.maestro import DEFAULT_RENAMES, MaestroTarget
from groundforge.pipeline.export.messages import MessagesTarget
from groundforge.pipeline.export.swift import SwiftTarget

TARGETS = {t.name: t for t in (SwiftTarget, MaestroTarget, LlavaTarget, MessagesTarget)}
INFO = "export_info.json"
REJECTS = "rejects/rejects-00000-of-00001.parquet"
SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")


class ConfigError(ValueError):
    """A bad command line (one-line message, non-zero exit)."""


def check_dirs(src: str, out: str) -> None:
    """Refuse DIR == OUT or DIR inside OUT: the export would write into the dataset it reads."""
    if "://" in out:
        raise ConfigError("--out must be a local directory")
    if "://" in src:
        return
    real_src, real_out = os.path.realpath(src), os.path.realpath(out)
    if os.path.commonpath([real_src, real_out]) == real_src:
        raise ConfigError("--out must not be --in or a folder inside it")


def parse_renames(values, target: str) -> dict[str, str]:
    renames = dict(DEFAULT_RENAMES) if target == "maestro" else {}
    for value in values:
        old, sep, new = value.partition("=")
        if not sep or not SPLIT_NAME.match(old) or not SPLIT_NAME.match(new):
            raise ConfigError(f"--rename-split {value!r}: expected OLD=NEW split names")
        renames[old] = new
    return renames


class _Rejects:
    """Reject rows streamed into one Parquet file (encounter order, which is deterministic)."""

    def __init__(self, out_dir: str):
        import pyarrow.parquet as pq
        from groundforge.schemas import reject_arrow_schema

        self.schema = reject_arrow_schema()
        self.out = OutFile(out_dir, REJECTS, mode="wb")
        self.writer = pq.ParquetWriter(self.out.file, self.schema, compression="snappy", write_page_index=False)
        self.rows: list[dict] = []
        self.by_reason: Counter = Counter()

    def add(self, source: str, reason: str, detail: str) -> None:
        self.rows.append({"source": source, "stage": STAGE, "reason": reason, "detail": detail[:2000]})
        self.by_reason[f"{STAGE}/{reason}"] += 1
        if len(self.rows) >= 10_000:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
        self.rows = []

    def close(self) -> str:
        self._flush()
        if not self.by_reason:
            self.writer.write_table(self.schema.empty_table())
        self.writer.close()
        return self.out.close()


def export_dataset(src: str, out: str, target: str, *, image_mode: str = "embed", image_prefix: str = "",
                   images_root: str | None = None, renames: dict | None = None, seed: int = 0) -> dict:
    """Export the groundforge output `src` to `out` for `target`; returns the export info (also DIR/export_info.json)."""
    from groundforge.pipeline.shards import iter_rows, load_info, shard_paths

    check_dirs(src, out)
    info = load_info(src)
    os.makedirs(out, exist_ok=True)
    old_files = _old_files(out)
    exporter = TARGETS[target](out, seed)
    resolver = ImageResolver(exporter, out, image_mode, image_prefix, images_root)
    rejects = _Rejects(out)
    read, written = 0, Counter()
    renames = renames or {}
    for path in shard_paths(src, info):
        for row in iter_rows(path):
            read += 1
            split = renames.get(row["split"], row["split"])
            try:
                entry = exporter.entry(row)
                exporter.write(split, row, entry, resolver.resolve(row, split))
                written[split] += 1
            except ExportError as err:
                rejects.add(f"record:{row.get('id')}", err.reason, err.detail)
            except (KeyError, TypeError, ValueError) as err:  # a malformed row: never a traceback
                rejects.add(f"record:{row.get('id')}", "bad_record", f"{type(err).__name__}: {err}")
    files = exporter.close() + [rejects.close()]
    result = {"target": target, "image_mode": image_mode, "image_prefix": image_prefix, "seed": seed,
              "renamed_splits": dict(sorted(renames.items())), "source_dataset": info.get("dataset"),
              "source_builder": info.get("builder"), "read": read, "written": sum(written.values()),
              "splits": dict(sorted(written.items())),
              "rejects": {"rows": sum(rejects.by_reason.values()), "by_reason": dict(sorted(rejects.by_reason.items()))},
              "files": sorted(files)}
    _remove_stale(out, old_files, set(files))
    info_file = OutFile(out, INFO)
    info_file.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    info_file.close()
    result["images_written"], result["images_present"] = resolver.written, resolver.reused
    return result


def _old_files(out: str) -> list[str]:
    try:
        with open(os.path.join(out, INFO), encoding="utf-8") as f:
            return list(json.load(f).get("files") or [])
    except (OSError, ValueError, AttributeError):
        return []


def _remove_stale(out: str, old: list[str], keep: set[str]) -> None:
    """Files an earlier export to the same DIR wrote that this one did not (e.g. a split that is gone)."""
    for rel in old:
        if rel not in keep and ".." not in rel.split("/") and not rel.startswith("/"):
            path = os.path.join(out, *rel.split("/"))
            if os.path.isfile(path):
                os.remove(path)


def summary_text(result: dict) -> str:
    lines = [f"read: {result['read']} records",
             f"written: {result['written']} {result['target']} entries"]
    lines += [f"  {split}: {n}" for split, n in result["splits"].items()]
    if result["image_mode"] == "embed" and result["target"] != "messages":
        refs = result["images_written"] + result["images_present"]
        lines.append(f"image files: {result['images_written']} written, {refs} references")
    lines.append(f"rejected: {result['rejects']['rows']}")
    lines += [f"  {reason}: {n}" for reason, n in result["rejects"]["by_reason"].items()]
    return "\n".join(lines)


@click.command("export", context_settings=HELP)
@click.argument("dataset", required=False, metavar="DATASET")
@click.option("--in", "src", help="The groundforge output to read (local or gs://...): another spelling of DATASET.")
@click.option("--to", "target", required=True, type=click.Choice(tuple(TARGETS)),
              help="swift: ms-swift grounding JSONL; maestro: maestro/Roboflow JSONL per split; "
                   "llava: LLaVA conversation JSON; messages: HF/TRL chat messages as Parquet.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Export directory (local; not DATASET and not inside it).")
@click.option("--image-mode", type=click.Choice(("embed", "path")), default="embed", show_default=True,
              help="embed: write each image once as DIR/images/{image_sha256}.{ext} (maestro: beside each split's "
                   "annotations; messages: inside the Parquet); path: reference the record's stored image path.")
@click.option("--image-prefix", default="", help="Put before every image reference: e.g. an absolute DIR or a URL "
              "(embed), or the image root the dataset was built with (path).")
@click.option("--images", "images_root", type=click.Path(exists=True, file_okay=False), default=None,
              help="Image root to read from when records carry no bytes (a --image-mode path build).")
@click.option("--rename-split", "rename", multiple=True, metavar="OLD=NEW",
              help="Write split OLD as NEW (repeatable). maestro renames val=valid unless told otherwise.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the swift prompt paraphrase choice.")
def export_cmd(dataset, src, target, out, image_mode, image_prefix, images_root, rename, seed):
    """Export the records of DATASET for another trainer: ms-swift, maestro, LLaVA or HF/TRL messages."""
    src = one_dataset(dataset, src)
    try:
        result = export_dataset(src, out, target, image_mode=image_mode, image_prefix=image_prefix,
                                images_root=images_root, renames=parse_renames(rename, target), seed=seed)
    except (ConfigError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:  # e.g. a full disk under --out
        raise click.ClickException(f"cannot write the export: {err.strerror or err}") from None
    click.echo(summary_text(result))
    if result["read"] and not result["written"]:
        click.echo("error: no records were exported; see the rejects above", err=True)
        raise SystemExit(1)
