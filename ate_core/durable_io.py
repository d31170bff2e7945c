"""Durable writes: what the episode writer and the checkpoint writer both need so that a crash
never leaves a file or folder that looks complete but is not (write, fsync, rename, fsync dir)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

__all__ = ["fsync_file", "fsync_dir"]


def fsync_file(path: Union[str, os.PathLike]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Union[str, os.PathLike, Path]) -> None:
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
