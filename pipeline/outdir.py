"""The output folder a build owns: checked before anything runs, locked while a build writes it, and cleared of
an earlier output's files so nothing of it survives into the new one.

Local folders only: a remote OUT (gs://, s3://) is neither locked nor checked for writability here (its
object store has no exclusive create through Beam's FileSystems); the writer still replaces every file it owns.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket

import click

LOCK_FILE = ".groundforge.lock"
INFO_FILE = "dataset_info.json"
HOLDOUT_FILE = "holdout_image_ids.txt"  # refcoco: image ids of every val/test split, for --exclude-images
OUTPUT_FILES = (INFO_FILE, "README.md", HOLDOUT_FILE)
OUTPUT_DIRS = ("data", "rejects")


def is_local(path: str) -> bool:
    return "://" not in path


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output(out: str, inputs: list[str] = ()) -> None:
    """Refuse, before anything runs, an OUT that cannot be written, that holds files of something other than a
    groundforge output, or that contains one of the inputs (a glob matching the build's own shards)."""
    if not is_local(out):
        return
    for path in inputs:
        if path and is_local(path) and (_inside(path, out) or _inside(out, path) and os.path.isdir(path)):
            raise click.BadParameter(f"{out} would contain the input {path}: write the output elsewhere",
                                     param_hint="--out")
    if os.path.exists(out) and not os.path.isdir(out):
        raise click.BadParameter(f"{out} exists and is not a folder", param_hint="--out")
    existing = out
    while not os.path.exists(existing):
        parent = os.path.dirname(os.path.abspath(existing))
        if parent == existing:
            break
        existing = parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise click.BadParameter(f"cannot write to {out} ({existing} is not writable)", param_hint="--out")
    if os.path.isdir(out):
        foreign = sorted(set(os.listdir(out)) - set(OUTPUT_FILES) - set(OUTPUT_DIRS) - {LOCK_FILE}
                         - set(_tables(out)))
        if foreign and not os.path.exists(os.path.join(out, "dataset_info.json")):
            raise click.BadParameter(f"{out} is not empty and holds no groundforge output ({', '.join(foreign[:3])}"
                                     f"{', ...' if len(foreign) > 3 else ''}): choose an empty or new folder",
                                     param_hint="--out")


def _tables(out: str) -> list[str]:
    """Extra table folders of the output already in OUT (grit's annotations/), from its dataset_info.json."""
    try:
        with open(os.path.join(out, "dataset_info.json"), encoding="utf-8") as f:
            tables = json.load(f).get("tables") or {}
        return [name for name in tables if isinstance(name, str) and "/" not in name and not name.startswith(".")]
    except (OSError, ValueError, AttributeError):
        return ["annotations"] if os.path.isdir(os.path.join(out, "annotations")) else []


def clear_previous(out: str) -> None:
    """Remove every file an earlier output left in OUT (its shards, rejects, tables, card, info, holdout ids)."""
    if not is_local(out) or not os.path.isdir(out):
        return
    for name in (*OUTPUT_DIRS, *_tables(out)):
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    for name in OUTPUT_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: set[str] = set()  # lock files this process holds, released by the CLI's Ctrl-C handler too


def release_locks() -> None:
    for path in list(_HELD):
        with contextlib.suppress(OSError):
            os.remove(path)
        _HELD.discard(path)


@contextlib.contextmanager
def output_lock(out: str):
    """Hold OUT/.groundforge.lock while a build writes OUT: a second build into the same folder fails at once with
    one line. A lock left by a process that no longer runs on this machine is taken over."""
    if not is_local(out):
        yield
        return
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise click.BadParameter(f"cannot create {out}: {err.strerror}", param_hint="--out") from None
    path = os.path.join(out, LOCK_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _read_lock(path)
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)  # stale: its process is gone
                continue
            raise click.ClickException(f"{out} is being written by another groundforge build (pid {holder.get('pid')} "
                                       f"on {holder.get('host')}); wait for it or use another --out") from None
        except OSError as err:
            raise click.BadParameter(f"cannot write to {out}: {err.strerror}", param_hint="--out") from None
    else:
        raise click.ClickException(f"{out}: could not take the build lock {path}")
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    _HELD.add(path)
    try:
        yield
    finally:
        _HELD.discard(path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _read_lock(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
