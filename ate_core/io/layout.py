"""Where checkpoints live: step folders of a run, the ``last`` pointer, and finding a checkpoint
from any path a user is likely to give.

::

    <output_dir>/checkpoints/
      000500/                 checkpoint_dir(output_dir, 500)
      001000/
      last -> 001000          a relative symlink (a text file naming it where links fail)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Union

from ate_core.io.durable import fsync_dir
from ate_core.io.files import CheckpointError

__all__ = ["CHECKPOINTS_DIR", "LAST_LINK", "checkpoint_dir", "point_last", "latest_checkpoint",
           "resolve_checkpoint_dir"]

CHECKPOINTS_DIR = "checkpoints"
LAST_LINK = "last"

PathLike = Union[str, os.PathLike]


def checkpoint_dir(output_dir: PathLike, step: int) -> Path:
    """The step folder of ``step`` in a run's output folder (zero-padded, so names sort by step)."""
    return Path(output_dir) / CHECKPOINTS_DIR / f"{step:06d}"


def point_last(step_dir: PathLike) -> None:
    """Make ``last`` beside ``step_dir`` name it, in one rename (a reader never sees it absent)."""
    target = Path(step_dir)
    link = target.parent / LAST_LINK
    tmp = target.parent / f".{LAST_LINK}.tmp-{os.getpid()}"
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    try:
        os.symlink(target.name, tmp, target_is_directory=True)
    except (OSError, NotImplementedError):
        tmp.write_text(target.name + "\n", encoding="utf-8")
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp, link)
    fsync_dir(target.parent)


def _has_last(base: Path) -> bool:
    return (base / LAST_LINK).exists() or (base / LAST_LINK).is_symlink()


def latest_checkpoint(checkpoints: PathLike) -> Optional[Path]:
    """The step folder ``last`` points at in a ``checkpoints`` folder (or a run's output folder);
    None when there is no ``last``."""
    base = Path(checkpoints)
    if not _has_last(base) and (base / CHECKPOINTS_DIR).is_dir():
        base = base / CHECKPOINTS_DIR
    link = base / LAST_LINK
    if link.is_symlink():
        target = base / os.readlink(link)
    elif link.is_file():
        name = link.read_text(encoding="utf-8").strip()
        if not name or "/" in name or name.startswith("."):
            raise CheckpointError(f"{link}: does not name a checkpoint folder")
        target = base / name
    elif link.is_dir():
        target = link
    else:
        return None
    if not target.is_dir():
        raise CheckpointError(f"{link}: points at {target.name}, which does not exist")
    return target


def resolve_checkpoint_dir(path: PathLike, config_file: str, inner: Optional[str] = None) -> Path:
    """The checkpoint folder (the one holding ``config_file``) that ``path`` names.

    ``path`` may be that folder, a step folder holding it as ``inner`` (a training run keeps
    ``pretrained_model/`` inside each step folder), ``last``, a ``checkpoints`` folder or a run's
    output folder (the latter two meaning the step ``last`` points at).
    """
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise CheckpointError(f"{p}: checkpoint not found")
    if p.name == LAST_LINK and (p.is_symlink() or p.is_file()):
        p = latest_checkpoint(p.parent) or p
    if (p / config_file).is_file():
        return p
    if inner is not None and (p / inner).is_dir():
        return p / inner
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a checkpoint directory")
    last = latest_checkpoint(p)
    if last is None:
        raise CheckpointError(f"{p / config_file}: file not found (not a checkpoint directory)")
    found = last / inner if inner is not None else last
    if not (found / config_file).is_file():
        raise CheckpointError(f"{found / config_file}: file not found (not a checkpoint directory)")
    return found
