"""Durable writes: a crash never leaves a file or folder that looks complete but is not.

The recipe is POSIX's: write, fsync the file, rename it into place, fsync the folder that holds
it (the rename is only on disk once the folder is). Episodes and checkpoints are both written
this way: the robot PC loses power mid-recording, and a training node gets preempted mid-save.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

__all__ = ["fsync_file", "fsync_dir", "write_bytes", "replace_file", "atomic_dir"]

PathLike = Union[str, os.PathLike]


def fsync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write and fsync ``path`` in place: for a file inside a folder that is not visible yet
    (see :func:`atomic_dir`); anywhere else use :func:`replace_file`."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_file(path: PathLike, data: bytes, *, temp_dir: Optional[PathLike] = None) -> Path:
    """Replace (or create) ``path`` with ``data`` in one rename: readers see the old bytes or the new.

    The temporary file lies in ``temp_dir`` (default: beside ``path``; it must be on the same
    filesystem), so a folder whose every file is accounted for never holds a stray one.
    """
    final = Path(path)
    where = Path(temp_dir) if temp_dir is not None else final.parent
    tmp = where / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:  # not mkstemp: the file gets the usual umask mode, not 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    return final


@contextmanager
def atomic_dir(final: PathLike) -> Iterator[Path]:
    """A new empty folder beside ``final`` to write into; it becomes ``final`` when the block
    ends, replacing (never merging with) any earlier ``final``, and is removed if the block raises.

    The folder is created beside ``final`` so that the last step is a rename on one filesystem.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        fsync_dir(tmp)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, final: Path) -> None:
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
