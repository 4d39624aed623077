"""File access through Beam's FileSystems, so local paths, gs:// and s3:// work the same on every runner."""
from __future__ import annotations

import os
import posixpath


def join(base: str, *parts: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(base, *parts)


def _local(path: str) -> bool:
    return "://" not in path


def open_read(path: str):
    """A binary file object to read. Local paths open directly (the hot path for image files: no FileSystems
    dispatch per call; a missing file raises FileNotFoundError); others through Beam's FileSystems."""
    if _local(path):
        return open(path, "rb")
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type="uncompressed")


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def exists(path: str) -> bool:
    if _local(path):
        return os.path.exists(path)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def write_bytes(path: str, data: bytes) -> None:
    """Write to a temporary name, then rename: readers never see a partial file."""
    from apache_beam.io.filesystems import FileSystems

    tmp = _tmp_name(path)
    with FileSystems.create(tmp) as f:
        f.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def _tmp_name(path: str) -> str:
    head, tail = posixpath.split(path) if "://" in path else os.path.split(path)
    return join(head, f".tmp-{tail}")


def match(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def delete(paths: list[str]) -> None:
    from apache_beam.io.filesystems import FileSystems

    if paths:
        FileSystems.delete(paths)


def mkdirs(path: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.mkdirs(path)
    except OSError:
        pass  # exists already
