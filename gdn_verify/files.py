"""Atomic file writes: a path holds either its old content or all of the new one.

The one helper behind every file the harness writes: reports (JSON, Markdown), mutation
results, and the golden store's case files and manifest."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    """Make the names in `directory` durable (after a rename into it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: str | bytes, tmp_name: str | None = None,
                 mode: int | None = None) -> None:
    """Write data (text as UTF-8) so that path holds either its old content or all of data.

    The temporary file is a fresh one beside path (its parent directories created), or, with
    `tmp_name`, that name in path's directory, opened without following a symlink (the golden
    store names its temporary files so that a later writer knows them for its own; its writers
    hold the store's lock, so the name is not shared). The file gets `mode`, by default the mode
    open() would give it (0644 under the usual umask 022), not mkstemp's 0600."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    if tmp_name is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        tmp = Path(tmp)
    else:
        tmp = path.with_name(tmp_name)
        fd = None
    try:
        if fd is None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o666 if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask() if mode is None else mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(tmp).st_mode):
                os.unlink(tmp)
        raise
