"""LLaVA conversation JSON: DIR/{split}.json, a list of `{"id", "image", "conversations"}`, images under DIR/images.

LLaVA's LazySupervisedDataset (haotian-liu/LLaVA, llava/train/train.py) json.loads the whole --data_path file,
opens os.path.join(--image_folder, entry["image"]) and moves the `<image>` token of the first human turn to its
start; the first human turn here is `<image>\\n` + the record's rendered prompt, the gpt turn its target. The
file is written entry by entry (the list is never held in memory).
"""
from __future__ import annotations

from groundforge.pipeline.export.base import Image, Target, rendered_pair
from groundforge.pipeline.export.common import dumps


class LlavaTarget(Target):
    name = "llava"

    def entry(self, row: dict):
        return rendered_pair(row)

    def write(self, split: str, row: dict, entry, image: Image) -> None:
        prompt, target = entry
        item = {"id": row["id"], "image": image.ref,
                "conversations": [{"from": "human", "value": "<image>\n" + prompt}, {"from": "gpt", "value": target}]}
        out = self.file(f"{split}.json", header="[\n")
        out.write((",\n" if getattr(out, "count", 0) else "") + dumps(item))
        out.count = getattr(out, "count", 0) + 1

    def close(self) -> list[str]:
        for out in self.files.values():
            out.write("\n]\n")
        return super().close()
