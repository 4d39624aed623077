"""Resolve annotation file names inside an image root, refusing anything that escapes it; open local files
only when they are regular files (no FIFO, device or directory), up to a byte cap.

The file primitives live here, not in pipeline/fs.py, so that train/ (which may not import pipeline) reads
local files by the same rule.
"""
from __future__ import annotations

import os
import posixpath
import re
import stat

from groundforge.transforms.errors import ReasonError

# `C:/x`, `C:\x`, `C:` (after backslashes became slashes): a Windows drive. `x:y.jpg` and `C:x.jpg` are plain
# relative POSIX names (a colon is a legal file-name character), resolved inside the root like any other.
_DRIVE = re.compile(r"[A-Za-z]:(/|$)")


class PathError(ReasonError):
    """An image path that is refused or cannot be read (absolute, traversal, link escape, ...)."""


def _is_remote(root: str) -> bool:
    return "://" in root


def safe_join(root: str, name: str) -> str:
    """Join `name` under `root`.

    Raises PathError: `bad_path` (empty, NUL byte), `absolute_path` (`/x`, `\\\\server\\share`, a drive such as
    `C:/x` or `C:\\x`, a URL), `path_traversal` (a `..` component), `link_escapes_root` (a symlink that leads
    outside the root; local roots only).
    """
    if not name or "\x00" in name:
        raise PathError("bad_path", repr(name))
    norm = name.replace("\\", "/")
    if norm.startswith("/") or "://" in norm or _DRIVE.match(norm):
        raise PathError("absolute_path", name)
    if ".." in norm.split("/"):
        raise PathError("path_traversal", name)
    if _is_remote(root):
        return posixpath.join(root.rstrip("/"), norm)
    path = os.path.join(root, *norm.split("/"))
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise PathError("link_escapes_root", f"{name} -> {real}")
    return path


# ---------------------------------------------------------------------------------------------------------
# local files: regular files only, up to a byte cap

class NotAFileError(OSError):
    """A local path that exists but is not a regular file (`kind`: directory, FIFO, character device, ...)."""

    def __init__(self, path: str, kind: str):
        super().__init__(f"{path}: a {kind}, not a regular file")
        self.path, self.kind = path, kind


class FileTooLargeError(OSError):
    """A file over the byte cap. `size` is what was seen: the file size, or what was read of a stream."""

    def __init__(self, path: str, size: int, max_bytes: int):
        super().__init__(f"{path}: {size} bytes > {max_bytes}")
        self.path, self.size, self.max_bytes = path, size, max_bytes


_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))
_CHUNK = 1 << 20


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def open_regular(path: str, max_bytes: int | None = None):
    """(binary file object, size) of a local regular file. Nothing else is opened: opening a device can have
    side effects and opening a FIFO blocks, so the path is stat'ed first; the open is non-blocking and is
    fstat'ed again, so a file swapped in between is refused too. Raises NotAFileError, FileTooLargeError (size
    over `max_bytes`), or the OSError of the stat/open (FileNotFoundError, PermissionError, ...)."""
    st = os.stat(path)
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


def read_regular(path: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a local regular file (see open_regular), never more than max_bytes + 1 of them read."""
    f, size = open_regular(path, max_bytes)
    with f:
        if max_bytes is None:
            return f.read()
        return read_capped(f, path, max_bytes, size + 1)  # one read for the file, one that finds its end


def read_capped(f, path: str, max_bytes: int, first: int = _CHUNK) -> bytes:
    """Read a file object to its end, in chunks (one read of max_bytes would allocate that much for a tiny
    file); FileTooLargeError as soon as more than max_bytes arrived (a file that grew, or a remote stream)."""
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
