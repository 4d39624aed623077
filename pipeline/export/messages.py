"""Hugging Face / TRL chat `messages` with image content parts, as Parquet with the images embedded.

DIR/data/{split}-00000-of-00001.parquet with columns id, messages, images: the user turn is
`[{"type": "image"}, {"type": "text", "text": prompt}]`, the assistant turn `[{"type": "text", "text": target}]`
(the record's rendered prompt/target), `images` a list of Hugging Face Image structs, as TRL's vision SFT
examples and `processor.apply_chat_template` expect. The `huggingface` schema metadata makes `datasets`
decode `images` to PIL. Rows are written one row group at a time.
"""
from __future__ import annotations

import json

from groundforge.pipeline.export.base import Image, Target, rendered_pair
from groundforge.pipeline.export.common import OutFile

ROWS_PER_GROUP = 1000
GROUP_BYTES = 32 * 1024 * 1024


def messages_schema():
    import pyarrow as pa

    part = pa.struct([("type", pa.string()), ("text", pa.string())])
    message = pa.struct([("role", pa.string()), ("content", pa.list_(part))])
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    value = {"dtype": "string", "_type": "Value"}
    features = {"id": value,
                "messages": [{"role": value, "content": [{"type": value, "text": value}]}],
                "images": [{"_type": "Image"}]}
    return pa.schema([("id", pa.string()), ("messages", pa.list_(message)), ("images", pa.list_(image))],
                     metadata={b"huggingface": json.dumps({"info": {"features": features}}).encode()})


class _ParquetOut:
    def __init__(self, out_dir: str, rel: str):
        import pyarrow.parquet as pq

        self.out = OutFile(out_dir, rel, mode="wb")
        self.schema = messages_schema()
        self.writer = pq.ParquetWriter(self.out.file, self.schema, compression="snappy", write_page_index=False)
        self.rows, self.size, self.count = [], 0, 0

    def add(self, row: dict, size: int) -> None:
        self.rows.append(row)
        self.size += size
        self.count += 1
        if len(self.rows) >= ROWS_PER_GROUP or self.size >= GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), row_group_size=len(self.rows))
        self.rows, self.size = [], 0

    def close(self) -> str:
        self.flush()
        if not self.count:
            self.writer.write_table(self.schema.empty_table())
        self.writer.close()
        return self.out.close()


class MessagesTarget(Target):
    name = "messages"
    embeds_images = True

    def entry(self, row: dict):
        return rendered_pair(row)

    def write(self, split: str, row: dict, entry, image: Image) -> None:
        prompt, target = entry
        rel = f"data/{split}-00000-of-00001.parquet"
        if rel not in self.files:
            self.files[rel] = _ParquetOut(self.out_dir, rel)
        messages = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": prompt}]},
                    {"role": "assistant", "content": [{"type": "text", "text": target}]}]
        img = {"bytes": image.data, "path": image.name} if image.data is not None else {"bytes": None, "path": image.ref}
        self.files[rel].add({"id": row["id"], "messages": messages, "images": [img]},
                            len(image.data or b"") + len(prompt) + len(target))

    def close(self) -> list[str]:
        files = super().close()
        splits = sorted(f.split("/", 1)[1].split("-00000-of-", 1)[0] for f in files)
        card = OutFile(self.out_dir, "README.md")
        card.write(dataset_card(splits))
        return files + [card.close()]


def dataset_card(splits: list[str]) -> str:
    configs = "\n".join(f"  - split: {s}\n    path: data/{s}-*" for s in splits)
    return f"""---
configs:
- config_name: default
  data_files:
{configs}
task_categories:
- image-text-to-text
tags:
- groundforge
---

# groundforge export (messages)

Chat `messages` with image content parts and an `images` column of embedded images, one row per record.

```python
from datasets import load_dataset
ds = load_dataset("path/to/this/folder")  # the configs above name every split
```
"""
