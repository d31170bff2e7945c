"""One manifest for every checkpoint folder: what it holds, each file's SHA-256 and size.

``manifest.json`` is written last, so its presence says the folder was written to the end; it
lists every other file of the folder, configs included, so a loader can tell a complete,
untouched checkpoint from one that lost, gained or changed a file before it reads any of them::

    {"files": {"config.json": {"sha256": "9f2c...", "bytes": 1234}, ...}}

The rule has no exceptions: a missing manifest, a listed file missing or changed, and a file
present but not listed are all :class:`CheckpointError`. A file added after the fact (the VAE's
``report.json``) goes in with :func:`add_to_checkpoint`, which updates the manifest too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Union

from ate_core.io.durable import replace_file
from ate_core.io.files import CheckpointError, json_bytes, read_json, sha256_file, write_json

__all__ = ["MANIFEST_FILE", "write_manifest", "verify_manifest", "add_to_checkpoint"]

MANIFEST_FILE = "manifest.json"

PathLike = Union[str, os.PathLike]


def _entry(path: Path) -> Dict[str, object]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(directory: PathLike) -> Path:
    """List every file of ``directory`` in its manifest: the last write into a checkpoint folder
    that :func:`~ate_core.io.atomic_dir` is about to make visible."""
    directory = Path(directory)
    files = {}
    for path in sorted(directory.iterdir()):
        if path.name == MANIFEST_FILE:
            continue
        if path.is_symlink() or not path.is_file():
            raise CheckpointError(f"{path}: not a regular file; a checkpoint folder holds files only")
        files[path.name] = _entry(path)
    write_json(directory / MANIFEST_FILE, {"files": files})
    return directory / MANIFEST_FILE


def _read_manifest(directory: Path) -> Dict[str, Dict[str, object]]:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found: the checkpoint is incomplete (its save did not finish) "
                              f"or was written by an older version without manifests; save it again")
    raw = read_json(path)
    files = raw.get("files") if isinstance(raw, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: files: expected an object of file name -> sha256 and bytes")
    for name, entry in files.items():
        if "/" in name or name in ("", ".", "..", MANIFEST_FILE):
            raise CheckpointError(f"{path}: files.{name}: not a file of this folder")
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: files.{name}: expected an object with sha256 and bytes")
        digest, size = entry.get("sha256"), entry.get("bytes")
        if not isinstance(digest, str) or len(digest) != 64:
            raise CheckpointError(f"{path}: files.{name}.sha256: expected 64 hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise CheckpointError(f"{path}: files.{name}.bytes: expected a size in bytes")
    return files


def verify_manifest(directory: PathLike) -> Dict[str, str]:
    """Check ``directory`` against its manifest before anything in it is read; the SHA-256 of
    every file by name. Cheap checks first (missing, unlisted, size), then the digests."""
    directory = Path(directory)
    files = _read_manifest(directory)
    for name in sorted(files):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name}: file not found (incomplete checkpoint?)")
    for path in sorted(directory.iterdir()):
        if path.name != MANIFEST_FILE and path.name not in files:
            raise CheckpointError(f"{path}: not listed in {MANIFEST_FILE} (added after the checkpoint was written)")
    for name, entry in sorted(files.items()):
        size = (directory / name).stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{directory / name}: corrupt or truncated ({size} bytes, {MANIFEST_FILE} "
                                  f"records {entry['bytes']})")
    digests = {}
    for name, entry in sorted(files.items()):
        digest = sha256_file(directory / name)
        if digest != entry["sha256"]:
            raise CheckpointError(f"{directory / name}: checksum mismatch with {MANIFEST_FILE} "
                                  "(file corrupt or modified)")
        digests[name] = digest
    return digests


def add_to_checkpoint(directory: PathLike, name: str, data: bytes) -> Path:
    """Add (or replace) file ``name`` of a finished checkpoint folder and its manifest entry.

    Each of the two files is replaced in one rename; the temporary files lie beside the folder,
    never in it. A crash between the two renames leaves a checkpoint whose load names the file.
    """
    directory = Path(directory)
    if "/" in name or name.startswith(".") or name == MANIFEST_FILE:
        raise ValueError(f"add_to_checkpoint: {name!r} is not a plain file name")
    files = _read_manifest(directory)
    path = replace_file(directory / name, data, temp_dir=directory.parent)
    files[name] = _entry(path)
    replace_file(directory / MANIFEST_FILE, json_bytes({"files": dict(sorted(files.items()))}),
                 temp_dir=directory.parent)
    return path
