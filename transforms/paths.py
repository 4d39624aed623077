"""Resolve annotation file names inside an image root, refusing anything that escapes it."""
from __future__ import annotations

import os
import posixpath
import re

# `C:/x`, `C:\x`, `C:` (after backslashes became slashes): a Windows drive. `x:y.jpg` and `C:x.jpg` are plain
# relative POSIX names (a colon is a legal file-name character), resolved inside the root like any other.
_DRIVE = re.compile(r"[A-Za-z]:(/|$)")


class PathError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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
