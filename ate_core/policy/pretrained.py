"""Deployable policy checkpoints: safetensors weights, stats and a JSON config; never unpickled.

::

    pretrained_model/
      config.json          format, version, policy type and config, embodiment, norm mode,
                           unified action layout, training config, SHA-256 of the tensor files
      model.safetensors    the deployed weights (the EMA average when training used EMA)
      stats.safetensors    normalisation stats, "<embodiment>/<state|action>/<mean|std|min|max>"

This is what the robot loads (:func:`load_pretrained`); it lives beside the policies rather
than in ``train/`` so that inference never imports training code. A training run writes it
inside ``checkpoints/<step>/`` next to its resumable ``training_state/``
(:mod:`ate_core.train.checkpoint`). Every problem on load raises :class:`CheckpointError`
naming the file and, where it applies, the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from ate_core.durable_io import fsync_dir as _fsync_dir
from ate_core.config import ConfigError
from ate_core.data.stats import stats_from_tensors, stats_to_tensors
from ate_core.policy import factory
from ate_core.policy.base import Policy
from ate_core.data.spaces import (
    ActionSpaceError,
    NormStats,
    NormStatsError,
    UnifiedActionSpace,
    default_action_space,
)

__all__ = [
    "CheckpointError",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "LoadedPolicy",
    "save_pretrained",
    "load_pretrained",
    "read_pretrained_config",
    "latest_checkpoint",
    "PRETRAINED_DIR",
    "TRAINING_STATE_DIR",
]

CHECKPOINT_FORMAT = "ate_policy"
CHECKPOINT_VERSION = 1
PRETRAINED_DIR = "pretrained_model"
TRAINING_STATE_DIR = "training_state"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
STATS_FILE = "stats.safetensors"
LAST_LINK = "last"

StatsByEmbodiment = Mapping[str, Mapping[str, NormStats]]


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not fit; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Small file helpers


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj: Any) -> None:
    _write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n").encode())


def _write_tensors(path: Path, tensors: Mapping[str, torch.Tensor],
                   metadata: Optional[Mapping[str, str]] = None) -> None:
    from safetensors.torch import save

    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    _write_bytes(path, save(plain, metadata=dict(metadata) if metadata else None))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (incomplete checkpoint?)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _read_tensors(path: Path) -> Dict[str, torch.Tensor]:
    """A safetensors file as CPU tensors; any read or format problem names the file."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (incomplete checkpoint?)")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises SafetensorError, OSError, ValueError, ...
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({type(e).__name__}: {e})") from None


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete ``tmp`` to ``final``; an existing ``final`` is replaced, never merged."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _temp_dir_beside(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


# ---------------------------------------------------------------------------------------------
# The deployable part: pretrained_model/


def _action_space_dict(space: UnifiedActionSpace) -> Dict[str, Any]:
    return {"width": space.width,
            "embodiments": {name: list(slots) for name, slots in space.embodiments.items()}}


def _plain(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _write_pretrained(directory: Path, policy: Policy, stats: StatsByEmbodiment,
                      meta: Mapping[str, Any]) -> None:
    policy_type = getattr(policy, "policy_type", "")
    if policy_type not in factory.POLICY_TYPES:
        raise CheckpointError(f"cannot save a policy of unregistered type {policy_type!r}")
    embodiment = meta.get("embodiment")
    if not embodiment:
        raise CheckpointError("save_pretrained: meta['embodiment'] is required")
    space = meta.get("action_space") or default_action_space(getattr(policy.config, "action_width", 128))
    if isinstance(space, Mapping):
        space = UnifiedActionSpace(embodiments=space["embodiments"], width=space["width"])
    for emb in [embodiment, *stats]:
        space.slots(emb)  # every embodiment named must have a layout
    if embodiment not in stats or not {"state", "action"} <= set(stats[embodiment]):
        raise CheckpointError(f"save_pretrained: stats lack 'state'/'action' of embodiment {embodiment!r}")
    directory.mkdir(parents=True, exist_ok=True)
    state = policy.state_dict()
    _write_tensors(directory / MODEL_FILE, state)
    _write_tensors(directory / STATS_FILE,
                   {k: torch.from_numpy(np.array(v)) for k, v in stats_to_tensors(stats).items()})
    config = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "policy_type": policy_type,
        "policy": factory.config_to_dict(policy.config),
        "embodiment": embodiment,
        "embodiments": sorted(stats),
        "norm_mode": meta.get("norm_mode", "mean_std"),
        "action_space": _action_space_dict(space),
        "train": _plain(dict(meta.get("train") or {})),
        "files": {name: {"sha256": _sha256(directory / name), "bytes": (directory / name).stat().st_size}
                  for name in (MODEL_FILE, STATS_FILE)},
    }
    for key, value in meta.items():
        if key not in config and key not in ("action_space",):
            config[key] = _plain(value)
    _write_json(directory / CONFIG_FILE, config)
    _fsync_dir(directory)


def save_pretrained(directory: Union[str, os.PathLike], policy: Policy, stats_by_embodiment: StatsByEmbodiment,
                    meta: Mapping[str, Any]) -> Path:
    """Write ``policy`` (its current weights), the stats and ``meta`` as a pretrained-model dir.

    ``meta``: ``embodiment`` (required: the robot the checkpoint is meant for), ``norm_mode``
    ("mean_std"), ``action_space`` (a :class:`UnifiedActionSpace` or its dict; default the
    project layout), ``train`` (the training config, for the record); other keys are stored
    as given. Atomic: the directory appears only once complete.
    """
    final = Path(directory)
    tmp = _temp_dir_beside(final)
    try:
        _write_pretrained(tmp, policy, stats_by_embodiment, meta)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclass
class LoadedPolicy:
    """A policy restored from a checkpoint, with what a processor needs to feed it.

    ``stats[embodiment]["state"|"action"]`` are the normalisation statistics in native units;
    ``embodiment`` is the robot the checkpoint was trained (or fine-tuned) for.
    """

    policy: Policy
    policy_type: str
    config: Any
    stats: Dict[str, Dict[str, NormStats]]
    embodiment: str
    norm_mode: str
    action_space: UnifiedActionSpace
    path: Path
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def cameras(self) -> Tuple[str, ...]:
        return tuple(self.config.cameras)

    @property
    def image_size(self) -> Tuple[int, int]:
        return tuple(self.config.image_size)  # type: ignore[return-value]

    def processor(self, embodiment: Optional[str] = None) -> Any:
        """The :class:`~ate_core.policy.processor.PolicyProcessor` matching this checkpoint."""
        from ate_core.policy.processor import PolicyProcessor

        emb = embodiment or self.embodiment
        if emb not in self.stats:
            raise CheckpointError(f"{self.path}: no normalisation stats for embodiment {emb!r} "
                                  f"(has: {sorted(self.stats)})")
        return PolicyProcessor(action_space=self.action_space, embodiment=emb, stats=self.stats[emb],
                               cameras=self.cameras, image_size=self.image_size, norm_mode=self.norm_mode)


def _pretrained_dir(path: Path) -> Path:
    """Accept a pretrained_model dir, a step dir, a checkpoints dir or a run's output dir."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.name == LAST_LINK and (path.is_symlink() or path.is_file()):
        target = latest_checkpoint(path.parent)
        if target is not None:
            path = target
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / PRETRAINED_DIR).is_dir():
        return path / PRETRAINED_DIR
    for base in (path, path / "checkpoints"):
        last = latest_checkpoint(base) if (base / LAST_LINK).exists() or (base / LAST_LINK).is_symlink() \
            else None
        if last is not None:
            return last / PRETRAINED_DIR
    if path.is_dir():
        raise CheckpointError(f"{path / CONFIG_FILE}: file not found (not a checkpoint directory)")
    raise CheckpointError(f"{path}: not a checkpoint directory")


def read_pretrained_config(directory: Union[str, os.PathLike]) -> Tuple[Path, Dict[str, Any], str, Any]:
    """(pretrained dir, raw config.json, policy type, validated policy config) of a checkpoint."""
    pdir = _pretrained_dir(Path(directory))
    cfg_path = pdir / CONFIG_FILE
    raw = _read_json(cfg_path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object")
    if raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{cfg_path}: format: {raw.get('format')!r} is not an "
                              f"{CHECKPOINT_FORMAT!r} checkpoint")
    if raw.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{cfg_path}: version: unsupported checkpoint version {raw.get('version')!r} "
                              f"(this code reads version {CHECKPOINT_VERSION})")
    policy_type = raw.get("policy_type")
    if policy_type not in factory.POLICY_TYPES:
        raise CheckpointError(f"{cfg_path}: policy_type: unknown policy type {policy_type!r} "
                              f"(known: {', '.join(sorted(factory.POLICY_TYPES))})")
    for key in ("policy", "embodiment", "norm_mode", "action_space"):
        if key not in raw:
            raise CheckpointError(f"{cfg_path}: {key}: required key is missing")
    try:
        config = factory.make_config(policy_type, raw["policy"], f"{cfg_path}")
    except ConfigError as e:
        where = f"policy.{e.key}" if e.key else "policy"
        raise CheckpointError(f"{cfg_path}: {where}: {e.message} (invalid policy config: {e})") from None
    return pdir, raw, policy_type, config


def _check_state(path: Path, state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}" + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}"
                         + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""))
        raise CheckpointError(f"{path}: weights do not fit the policy config: {'; '.join(parts)}")
    bad = [f"{k}: {list(state[k].shape)} vs config {list(v.shape)}"
           for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch with the policy config: {'; '.join(bad[:4])}"
                              + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""))
    for k, v in state.items():
        if v.is_floating_point() != expected[k].is_floating_point():
            raise CheckpointError(f"{path}: {k}: dtype {v.dtype}, expected {expected[k].dtype}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: {k}: non-finite weights (NaN or inf)")


def _verify_files(pdir: Path, raw: Mapping[str, Any]) -> None:
    files = raw.get("files")
    if not isinstance(files, dict):
        return
    for name, entry in files.items():
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if expected and _sha256(pdir / name) != expected:
            raise CheckpointError(f"{pdir / name}: checksum mismatch with {CONFIG_FILE} "
                                  "(file corrupt or modified)")


def load_pretrained(directory: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                    *, embodiment: Optional[str] = None) -> LoadedPolicy:
    """Load a checkpoint for inference: a fresh policy from the stored config + the stored weights.

    ``directory`` may be the ``pretrained_model`` folder, a step folder, a ``checkpoints`` folder
    or a run's output folder (then the newest checkpoint). Never unpickles, never changes the
    caller's RNG state. The policy is returned in eval mode on ``device``.
    """
    pdir, raw, policy_type, config = read_pretrained_config(directory)
    cfg_path = pdir / CONFIG_FILE
    try:
        space_raw = raw["action_space"]
        space = UnifiedActionSpace(embodiments={k: tuple(v) for k, v in space_raw["embodiments"].items()},
                                   width=int(space_raw["width"]))
    except (ActionSpaceError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: action_space: malformed ({e})") from None
    emb = embodiment or raw["embodiment"]

    state = _read_tensors(pdir / MODEL_FILE)
    stats_tensors = _read_tensors(pdir / STATS_FILE)
    try:
        stats = stats_from_tensors(stats_tensors)
    except NormStatsError as e:
        raise CheckpointError(f"{pdir / STATS_FILE}: {e}") from None
    if emb not in stats:
        raise CheckpointError(f"{pdir / STATS_FILE}: no normalisation stats for embodiment {emb!r} "
                              f"(has: {sorted(stats) or 'none'})")
    for name, kinds in stats.items():
        for kind in ("state", "action"):
            if kind not in kinds:
                raise CheckpointError(f"{pdir / STATS_FILE}: {name}/{kind}: missing")
        if name in space.embodiments:
            dim = space.dim(name)
            if kinds["action"].shape != (dim,):
                raise CheckpointError(f"{pdir / STATS_FILE}: {name}/action: shape {list(kinds['action'].shape)}, "
                                      f"the embodiment has {dim} action dims")

    # Weights come from the file: never read the backbone's initial weights from disk again.
    build_cfg = config
    enc = getattr(config, "encoder", None)
    if enc is not None and getattr(enc, "pretrained_path", ""):
        build_cfg = dataclasses.replace(config, encoder=dataclasses.replace(enc, pretrained_path=""))
    with torch.random.fork_rng(devices=[]):
        policy = factory.make_policy(policy_type, build_cfg)
    expected = policy.state_dict()
    _check_state(pdir / MODEL_FILE, state, expected)
    _verify_files(pdir, raw)
    policy.load_state_dict(state, strict=True)
    policy.to(device)
    policy.eval()
    return LoadedPolicy(policy=policy, policy_type=policy_type, config=config, stats=stats, embodiment=emb,
                        norm_mode=str(raw["norm_mode"]), action_space=space, path=pdir, meta=raw)


def latest_checkpoint(checkpoints: Union[str, os.PathLike]) -> Optional[Path]:
    """The step folder ``last`` points at in a ``checkpoints`` folder (or a run's output folder)."""
    base = Path(checkpoints)
    if not (base / LAST_LINK).exists() and not (base / LAST_LINK).is_symlink() \
            and (base / "checkpoints").is_dir():
        base = base / "checkpoints"
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
