"""Image groups spilled to local disk before the shard shuffle, so the local runner shuffles only references.

Beam's local runners hold every element of a GroupByKey in memory until the group is read: with whole image
groups (image bytes and ~9 record dicts each) the shard writer's shuffle made peak memory grow with the dataset
(~63 KB per image). On a local runner with a local OUT, `SpillGroups` appends each pickled group to a file of
its bundle under OUT/data/.tmp-groups/ and passes on a small reference {split, key, size, ref}; the shard writer
reads the groups of its shard back (`load_all`), so memory is bounded by the shard size. The folder is removed when
the output is finalized (and with any earlier output at the start of a run). The output bytes do not change: the
writer sees the same groups, keys and sizes.
"""
from __future__ import annotations

import os
import pickle
import shutil
import uuid

import apache_beam as beam

SPILL_DIR = ".tmp-groups"


def spill_dir(data_dir: str) -> str:
    return os.path.join(data_dir, SPILL_DIR)


def is_ref(item: dict) -> bool:
    return "ref" in item


class SpillGroups(beam.DoFn):
    """image group -> {split, key, size, ref: (file, offset, length)}; the group itself goes to a file."""

    def __init__(self, directory: str, size_of):
        self.directory = directory
        self.size_of = size_of

    def start_bundle(self):
        self._file = None
        self._name = None

    def process(self, group):
        if self._file is None:
            os.makedirs(self.directory, exist_ok=True)
            self._name = f"{uuid.uuid4().hex}.pkl"
            self._file = open(os.path.join(self.directory, self._name), "wb")  # noqa: SIM115 (closed in finish_bundle)
        data = pickle.dumps(group, protocol=pickle.HIGHEST_PROTOCOL)
        offset = self._file.tell()
        self._file.write(data)
        yield {"split": group["split"], "key": group["key"], "size": self.size_of(group),
               "ref": (self._name, offset, len(data))}

    def finish_bundle(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def teardown(self):
        self.finish_bundle()


def load_all(directory: str | None, items: list[dict]) -> list[dict]:
    """The image groups of one shard's items: references read back with one open per spill file, in file order;
    image groups (no spilling) pass through. The writer sorts the rows, so the order of groups does not matter."""
    groups, spans = [], {}
    for item in items:
        if is_ref(item):
            name, offset, length = item["ref"]
            spans.setdefault(name, []).append((offset, length))
        else:
            groups.append(item)
    for name, parts in sorted(spans.items()):
        with open(os.path.join(directory, name), "rb") as f:
            for offset, length in sorted(parts):
                f.seek(offset)
                groups.append(pickle.loads(f.read(length)))
    return groups


def remove(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
