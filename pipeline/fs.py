"""File access through Beam's FileSystems, so local paths, gs:// and s3:// work the same on every runner.

Local reads open only regular files (transforms.paths.open_regular): a FIFO, a device or a directory is
refused (NotAFileError) instead of blocking or reading forever. `read_bytes(path, max_bytes)` reads at most
`max_bytes` (FileTooLargeError beyond), locally and remotely.
"""
from __future__ import annotations

import os
import posixpath

from groundforge.transforms.paths import (
    FileTooLargeError,
    NotAFileError,
    open_regular,
    read_capped,
    read_regular,
)

__all__ = ["FileTooLargeError", "NotAFileError", "delete", "exists", "join", "match", "open_read", "read_bytes",
           "write_bytes"]


def join(base: str, *parts: str) -> str:
    if _local(base):  # what Beam's LocalFileSystem.join does, without importing Beam (validate stays light)
        return os.path.join(base, *parts)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(base, *parts)


def _local(path: str) -> bool:
    return "://" not in path


def open_read(path: str):
    """A binary file object to read. Local paths open directly (the hot path for image files: no FileSystems
    dispatch per call; a missing file raises FileNotFoundError, anything but a regular file NotAFileError);
    others through Beam's FileSystems."""
    if _local(path):
        return open_regular(path)[0]
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type="uncompressed")


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """The whole file; with `max_bytes`, FileTooLargeError for a larger one, never reading more than
    max_bytes + 1 bytes (a file that grows after its size was checked, or a remote one, is cut off there)."""
    if _local(path):
        return read_regular(path, max_bytes)
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read() if max_bytes is None else read_capped(f, path, max_bytes)


def size(path: str) -> int:
    """The file's size in bytes (OSError / FileNotFoundError when it cannot be read)."""
    if _local(path):
        return os.path.getsize(path)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.match([path])[0].metadata_list[0].size_in_bytes


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
    """Files matching a glob, sorted (local ones without importing Beam)."""
    if _local(pattern):
        import glob

        return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
    from apache_beam.io.filesystems import FileSystems

    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def delete(paths: list[str]) -> None:
    from apache_beam.io.filesystems import FileSystems

    if paths:
        FileSystems.delete(paths)
