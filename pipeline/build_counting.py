"""`groundforge build counting`: counting and count_class records from COCO detection annotations."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from groundforge.pipeline.readers.coco import REJECTS, STATS, ExpandCoco, load_image
from groundforge.pipeline.readers.refer import canonical_image_id
from groundforge.pipeline.writer import WriteDataset, image_groups, start_output
from groundforge.transforms.counting import Categories, count_image, counting_records
from groundforge.transforms.images import ImageError
from groundforge.transforms.paths import PathError
from groundforge.transforms.records import reject, rendered


class CountingFn(beam.DoFn):
    """One COCO image element -> image groups of rendered counting/count_class records, rejects and stats."""

    def __init__(self, images_root: str, fmt: str, split: str, seed: int, dataset: str,
                 exclude: frozenset, max_pixels: int, image_mode: str = "embed"):
        self.images_root = images_root
        self.fmt = fmt
        self.split = split
        self.seed = seed
        self.dataset = dataset
        self.exclude = exclude
        self.max_pixels = max_pixels
        self.image_mode = image_mode
        self.images_read = Metrics.counter("groundforge", "images_read")
        self.rejected = Metrics.counter("groundforge", "rejected")

    def process(self, item):
        entry = item["image"]
        image_id = str(entry["id"])
        yield beam.pvalue.TaggedOutput(STATS, ("images_read", 1))
        self.images_read.inc()
        if canonical_image_id(entry["id"]) in self.exclude:
            yield beam.pvalue.TaggedOutput(STATS, ("excluded_holdout_images", 1))
            return
        source = f"image:{image_id}:{entry['file_name']}"
        try:
            data, info = load_image(self.images_root, entry["file_name"], self.max_pixels)
        except (ImageError, PathError) as err:
            yield self._reject(reject(source, "image", err.reason, err.detail))
            return
        if (info.width, info.height) != (int(entry["width"]), int(entry["height"])):
            yield self._reject(reject(source, "image", "size_mismatch",
                                      f"annotation {entry['width']}x{entry['height']}, image {info.width}x{info.height}"))
            return
        cats = Categories(item["classes"], item["category_names"])
        counts = count_image(item["annotations"], cats, info.width, info.height)
        for row in counts.rejects:
            yield self._reject(row)
        base = {"split": self.split, "image_id": image_id, "width": info.width, "height": info.height,
                "image_sha256": info.sha256, "image": self._image(data, entry["file_name"])}
        meta = {"source": item["source"], "file_name": entry["file_name"], "builder": "counting",
                "license": entry.get("license")}
        records, skipped = counting_records(base, counts, cats.classes, self.dataset, meta)
        for row in skipped:
            yield self._reject(row)
        done = []
        for record in records:
            try:
                done.append(rendered(record, self.fmt, self.seed))
            except ValueError as err:  # templates.RenderError (control_tokens, ...) or BoxError, with .reason
                reason = getattr(err, "reason", "render_error")
                yield self._reject(reject(f"record:{record['id']}", "render", reason, str(err)))
        yield from image_groups(done)

    def _image(self, data: bytes, file_name: str) -> dict:
        if self.image_mode == "path":
            return {"bytes": None, "path": file_name}
        return {"bytes": data, "path": file_name}

    def _reject(self, row):
        self.rejected.inc()
        return beam.pvalue.TaggedOutput(REJECTS, row)


def build_counting(*, coco: str, images: str, out: str, fmt: str, split: str, seed: int, dataset: str,
                   exclude: frozenset, max_pixels: int, num_shards: int | None, shard_size_mb: float,
                   options, args: dict, image_mode: str = "embed") -> None:
    """`image_mode`: "embed" stores image bytes, "path" only file names relative to `images`."""
    start_output(out)
    with beam.Pipeline(options=options) as p:
        expanded = (p | "CocoFile" >> beam.Create([coco])
                    | "ExpandCoco" >> beam.ParDo(ExpandCoco()).with_outputs(REJECTS, main="images"))
        built = (expanded.images
                 | "Spread" >> beam.Reshuffle()
                 | "Count" >> beam.ParDo(CountingFn(images, fmt, split, seed, dataset, exclude, max_pixels,
                                                   image_mode))
                 .with_outputs(REJECTS, STATS, main="groups"))
        rejects = (expanded[REJECTS], built[REJECTS]) | "Rejects" >> beam.Flatten()
        _ = {"groups": built.groups, "rejects": rejects, "stats": built[STATS]} | WriteDataset(
            out, builder="counting", dataset=dataset, args=args, num_shards=num_shards,
            shard_size_mb=shard_size_mb, license="other",
            card_notes="Counting questions from COCO-style boxes. Image licenses follow the source images.")
