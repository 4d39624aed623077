"""File access through Beam's FileSystems, so local paths, gs:// and s3:// work the same on every runner.

Local reads open only regular files: the file is stat'ed before it is opened and fstat'ed after a non-blocking
open, so a FIFO, a device or a directory is refused (NotAFileError) instead of blocking or reading forever.
`read_bytes(path, max_bytes)` reads at most `max_bytes` (FileTooLargeError beyond), locally and remotely.
"""
from __future__ import annotations

import os
import posixpath
import stat


class NotAFileError(OSError):
    """A local path that exists but is not a regular file (`kind`: directory, FIFO, character device, ...)."""

    def __init__(self, path: str, kind: str):
        super().__init__(f"{path}: a {kind}, not a regular file")
        self.path, self.kind = path, kind


class FileTooLargeError(OSError):
    """A file over the byte cap. `size` is what was seen: the file size, or max_bytes + 1 for a stream."""

    def __init__(self, path: str, size: int, max_bytes: int):
        super().__init__(f"{path}: {size} bytes > {max_bytes}")
        self.path, self.size, self.max_bytes = path, size, max_bytes


_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def join(base: str, *parts: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(base, *parts)


def _local(path: str) -> bool:
    return "://" not in path


def _open_regular(path: str, max_bytes: int | None):
    """A local regular file opened for binary reading, and its size. Nothing else is opened (opening a device
    can have side effects, opening a FIFO blocks); the non-blocking open and fstat close the race of a swap
    after the stat."""
    st = os.stat(path)  # FileNotFoundError, PermissionError, ... as they are
    if not stat.S_ISREG(st.st_mode):
        raise NotAFileError(path, _kind(st.st_mode))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFileError(path, _kind(st.st_mode))
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileTooLargeError(path, st.st_size, max_bytes)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def open_read(path: str):
    """A binary file object to read. Local paths open directly (the hot path for image files: no FileSystems
    dispatch per call; a missing file raises FileNotFoundError, anything but a regular file NotAFileError);
    others through Beam's FileSystems."""
    if _local(path):
        return _open_regular(path, None)[0]
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type="uncompressed")


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """The whole file; with `max_bytes`, FileTooLargeError for a larger one, never reading more than
    max_bytes + 1 bytes (a file that grows after its size was checked, or a remote one, is cut off there)."""
    if max_bytes is None:
        with open_read(path) as f:
            return f.read()
    if _local(path):
        f, size = _open_regular(path, max_bytes)
        first = size + 1  # one read for the whole file (and one more that finds its end)
    else:
        from apache_beam.io.filesystems import FileSystems

        f, first = FileSystems.open(path, compression_type="uncompressed"), _CHUNK
    with f:
        return _read_capped(f, path, max_bytes, first)


_CHUNK = 1 << 20


def _read_capped(f, path: str, max_bytes: int, first: int) -> bytes:
    """Read to the end in chunks (a read of max_bytes at once would allocate that much for a tiny file)."""
    chunks, total, want = [], 0, first
    while True:
        chunk = f.read(min(want, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise FileTooLargeError(path, total, max_bytes)
        want = _CHUNK


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
