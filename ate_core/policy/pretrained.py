"""Deployable policy checkpoints: safetensors weights, stats and a JSON config; never unpickled.

::

    pretrained_model/
      config.json          format, version, policy type and config, embodiment, norm mode,
                           unified action layout, training config
      model.safetensors    the deployed weights (the EMA average when training used EMA)
      stats.safetensors    normalisation stats, "<embodiment>/<state|action>/<mean|std|min|max>"
      manifest.json        SHA-256 and size of the three files above, written last
                           (:mod:`ate_core.io.manifest`)

This is what the robot loads (:func:`load_pretrained`); it lives beside the policies rather
than in ``train/`` so that inference never imports training code. A training run writes it
inside ``checkpoints/<step>/`` next to its resumable ``training_state/``
(:mod:`ate_core.train.checkpoint`). Every problem on load raises :class:`CheckpointError`
naming the file and, where it applies, the key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ate_core.config import ConfigError
from ate_core.data.stats import stats_from_tensors, stats_to_tensors
from ate_core.io import (CheckpointError, action_space_dict, atomic_dir, json_safe, read_json, read_tensors,
                         resolve_checkpoint_dir, verify_manifest, write_json, write_manifest, write_tensors)
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
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "LoadedPolicy",
    "save_pretrained",
    "load_pretrained",
    "read_pretrained_config",
    "load_weights",
    "PRETRAINED_DIR",
    "CONFIG_FILE",
    "StatsByEmbodiment",
]

CHECKPOINT_FORMAT = "ate_policy"
CHECKPOINT_VERSION = 2
PRETRAINED_DIR = "pretrained_model"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
STATS_FILE = "stats.safetensors"

StatsByEmbodiment = Mapping[str, Mapping[str, NormStats]]


# ---------------------------------------------------------------------------------------------
# The deployable part: pretrained_model/


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
    write_tensors(directory / MODEL_FILE, policy.state_dict())
    write_tensors(directory / STATS_FILE,
                  {k: torch.from_numpy(np.array(v)) for k, v in stats_to_tensors(stats).items()})
    config = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "policy_type": policy_type,
        "policy": factory.config_to_dict(policy.config),
        "embodiment": embodiment,
        "embodiments": sorted(stats),
        "norm_mode": meta.get("norm_mode", "mean_std"),
        "action_space": action_space_dict(space),
        "train": json_safe(dict(meta.get("train") or {})),
    }
    for key, value in meta.items():
        if key not in config and key not in ("action_space",):
            config[key] = json_safe(value)
    write_json(directory / CONFIG_FILE, config)
    write_manifest(directory)


def save_pretrained(directory: Union[str, os.PathLike], policy: Policy, stats_by_embodiment: StatsByEmbodiment,
                    meta: Mapping[str, Any]) -> Path:
    """Write ``policy`` (its current weights), the stats and ``meta`` as a pretrained-model dir.

    ``meta``: ``embodiment`` (required: the robot the checkpoint is meant for), ``norm_mode``
    ("mean_std"), ``action_space`` (a :class:`UnifiedActionSpace` or its dict; default the
    project layout), ``train`` (the training config, for the record); other keys are stored
    as given. Atomic: the directory appears only once complete.
    """
    final = Path(directory)
    with atomic_dir(final) as tmp:
        _write_pretrained(tmp, policy, stats_by_embodiment, meta)
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
                               cameras=self.cameras, image_size=self.image_size, norm_mode=self.norm_mode,
                               env_state_dim=self.config.env_state_dim)


def read_pretrained_config(directory: Union[str, os.PathLike]) -> Tuple[Path, Dict[str, Any], str, Any]:
    """(pretrained dir, raw config.json, policy type, validated policy config) of a checkpoint,
    after checking its manifest. ``directory`` is any path :func:`load_pretrained` accepts."""
    pdir = resolve_checkpoint_dir(directory, CONFIG_FILE, inner=PRETRAINED_DIR)
    verify_manifest(pdir)
    cfg_path = pdir / CONFIG_FILE
    raw = read_json(cfg_path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object")
    if raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{cfg_path}: format: {raw.get('format')!r} is not an "
                              f"{CHECKPOINT_FORMAT!r} checkpoint")
    version = raw.get("version")
    if version != CHECKPOINT_VERSION:
        older = isinstance(version, int) and version < CHECKPOINT_VERSION
        raise CheckpointError(f"{cfg_path}: version: unsupported checkpoint version {version!r} (this code reads "
                              f"version {CHECKPOINT_VERSION})" + ("; written by an older version: save it again"
                                                                  if older else ""))
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


def load_weights(path: Path, module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` (read from ``path``) into ``module``, strictly, once it is known to fit:
    names, shapes, dtype kinds and finiteness are checked first so that an error names the file
    and the tensor instead of torch's message about the module."""
    _check_state(path, state, module.state_dict())
    module.load_state_dict(state, strict=True)


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


def load_pretrained(directory: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                    *, embodiment: Optional[str] = None) -> LoadedPolicy:
    """Load a checkpoint for inference: a fresh policy from the stored config + the stored weights.

    ``directory`` may be the ``pretrained_model`` folder, a step folder, a ``checkpoints`` folder
    or a run's output folder (then the newest checkpoint). Never unpickles, never changes the
    caller's RNG state. The manifest is checked before any file is read. The policy is returned
    in eval mode on ``device``.
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

    state = read_tensors(pdir / MODEL_FILE)
    stats_tensors = read_tensors(pdir / STATS_FILE)
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
    load_weights(pdir / MODEL_FILE, policy, state)
    policy.to(device)
    policy.eval()
    return LoadedPolicy(policy=policy, policy_type=policy_type, config=config, stats=stats, embodiment=emb,
                        norm_mode=str(raw["norm_mode"]), action_space=space, path=pdir, meta=raw)

