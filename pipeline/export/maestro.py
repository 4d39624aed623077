"""maestro / Roboflow JSONL: DIR/{split}/annotations.jsonl of `{"image", "prefix", "suffix"}`, images beside it.

maestro's loader (roboflow/maestro: maestro/trainer/common/datasets.py `load_split_dataset` and
`RoboflowJSONLDataset` in the 1.0.0 release; datasets/core.py and datasets/jsonl.py `JSONLDataset` on main) reads `{location}/{split}/annotations.jsonl`, requires the keys image, prefix
and suffix, and opens `os.path.join({location}/{split}, entry["image"])`; it looks for the splits train, valid
and test, so the split `val` is written as `valid` unless --rename-split says otherwise. prefix/suffix are the
record's rendered prompt/target (the format it was built or re-rendered for).
"""
from __future__ import annotations

from groundforge.pipeline.export.base import Image, Target, rendered_pair
from groundforge.pipeline.export.common import dumps

ANNOTATIONS = "annotations.jsonl"
DEFAULT_RENAMES = {"val": "valid"}


class MaestroTarget(Target):
    name = "maestro"

    def image_dir(self, split: str) -> str:
        return split

    def image_ref(self, split: str, name: str) -> str:
        return name

    def entry(self, row: dict):
        return rendered_pair(row)

    def write(self, split: str, row: dict, entry, image: Image) -> None:
        prefix, suffix = entry
        self.file(f"{split}/{ANNOTATIONS}").write(dumps({"image": image.ref, "prefix": prefix, "suffix": suffix}) + "\n")
