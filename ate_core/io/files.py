"""The files a checkpoint is made of: JSON and safetensors, read and written, and their digests.

Every read problem raises :class:`CheckpointError` naming the file, so that a robot refusing a
checkpoint says which file of which folder to look at. Nothing here unpickles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Union

from ate_core.io.durable import write_bytes

if TYPE_CHECKING:
    import torch

__all__ = [
    "CheckpointError",
    "read_json",
    "write_json",
    "json_bytes",
    "json_safe",
    "read_tensors",
    "write_tensors",
    "sha256_file",
    "action_space_dict",
]

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not fit; the message names the file."""


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses as objects, tuples as lists, keys as strings,
    and non-finite floats as strings (JSON has no NaN or inf, and :func:`json_bytes` refuses them)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, (tuple, list)):
        return [json_safe(x) for x in value]
    if isinstance(value, Mapping):
        return {str(k): json_safe(x) for k, x in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n").encode()


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` (already :func:`json_safe`) in place; see :func:`~ate_core.io.write_bytes`."""
    write_bytes(path, json_bytes(obj))


def read_json(path: PathLike) -> Any:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found (incomplete checkpoint?)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def write_tensors(path: PathLike, tensors: Mapping[str, "torch.Tensor"],
                  metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write CPU copies of ``tensors`` in place (safetensors refuses shared or strided storage)."""
    from safetensors.torch import save

    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    write_bytes(path, save(plain, metadata=dict(metadata) if metadata else None))


def read_tensors(path: PathLike) -> Dict[str, "torch.Tensor"]:
    """A safetensors file as CPU tensors; any read or format problem names the file."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found (incomplete checkpoint?)")
    try:
        return load_file(os.fspath(path), device="cpu")
    except Exception as e:  # safetensors raises SafetensorError, OSError, ValueError, ...
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({type(e).__name__}: {e})") from None


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def action_space_dict(space: Any) -> Dict[str, Any]:
    """A :class:`~ate_core.data.spaces.UnifiedActionSpace` as the JSON a checkpoint stores."""
    return {"width": space.width, "embodiments": {name: list(slots) for name, slots in space.embodiments.items()}}
