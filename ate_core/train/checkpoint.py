"""Training checkpoints: the deployable policy plus what resuming needs, in LeRobot's layout.

The ``pretrained_model/`` part and its loader live in :mod:`ate_core.policy.pretrained` (the
robot loads it without importing training code); this module adds ``training_state/`` and the
``last`` pointer. Safetensors and JSON only; loading never unpickles.

::

    <output_dir>/checkpoints/
      000500/
        pretrained_model/              what a robot loads (load_pretrained)
          config.json                  format, version, policy type and config, embodiment,
                                       norm mode, unified action layout, training config
          model.safetensors            the deployed weights (the EMA average when EMA is on)
          stats.safetensors            normalisation stats, "<embodiment>/<state|action>/<mean|std|min|max>"
          manifest.json                SHA-256 and size of every other file, written last
        training_state/                what resuming needs (load_training_state)
          online_model.safetensors     the raw weights the optimiser updates
          optimizer.safetensors        optimiser state tensors, "state/<param index>/<name>"
          optimizer_param_groups.json  hyper-parameters per group
          scheduler.json               learning-rate scheduler state
          rng_state.safetensors        torch / numpy / python RNG states of every rank
          training_step.json           step, epoch position, EMA step, world size, batch size
          manifest.json                as in pretrained_model/ (:mod:`ate_core.io.manifest`)
      last -> 000500                   a relative symlink (a text file naming it where links fail)

A checkpoint directory is written under a temporary name and renamed when complete, so a crash
mid-save never leaves a directory that looks complete. Every problem on load raises
:class:`CheckpointError` naming the file and, where it applies, the key.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ate_core.io import (CheckpointError, atomic_dir, checkpoint_dir, json_safe, point_last,
                         read_json, read_tensors, verify_manifest, write_json, write_manifest, write_tensors)
from ate_core.policy.base import Policy
from ate_core.policy.pretrained import PRETRAINED_DIR, StatsByEmbodiment, load_weights, save_pretrained

__all__ = [
    "TrainingStateInfo",
    "save_training_state",
    "load_training_state",
    "save_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "TRAINING_STATE_DIR",
]

TRAINING_STATE_DIR = "training_state"

ONLINE_MODEL_FILE = "online_model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
PARAM_GROUPS_FILE = "optimizer_param_groups.json"
SCHEDULER_FILE = "scheduler.json"
RNG_FILE = "rng_state.safetensors"
STEP_FILE = "training_step.json"

# ---------------------------------------------------------------------------------------------
# RNG state (every rank), as tensors only


def capture_rng_state() -> Dict[str, torch.Tensor]:
    """This process's torch (CPU and CUDA), numpy and python RNG states as plain tensors."""
    out: Dict[str, torch.Tensor] = {"torch_cpu": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = torch.stack([s.clone() for s in torch.cuda.get_rng_state_all()])
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    out["numpy_scalars"] = torch.tensor([float(pos), float(has_gauss), float(cached)], dtype=torch.float64)
    version, internal, gauss_next = random.getstate()
    out["python_state"] = torch.tensor([version, *internal], dtype=torch.int64)
    out["python_gauss"] = torch.tensor([0.0 if gauss_next is None else 1.0,
                                        0.0 if gauss_next is None else float(gauss_next)], dtype=torch.float64)
    return out


def restore_rng_state(state: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch_cpu"].to(torch.uint8).cpu())
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["torch_cuda"].to(torch.uint8).cpu())
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    pos, has_gauss, cached = state["numpy_scalars"].tolist()
    np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), float(cached)))
    py = state["python_state"].tolist()
    flag, gauss = state["python_gauss"].tolist()
    random.setstate((int(py[0]), tuple(int(x) for x in py[1:]), gauss if flag else None))


# ---------------------------------------------------------------------------------------------
# The resumable part: training_state/


@dataclass(frozen=True)
class TrainingStateInfo:
    """What :func:`load_training_state` read besides the tensors it loaded in place."""

    step: int
    info: Dict[str, Any]
    rng_by_rank: Dict[int, Dict[str, torch.Tensor]]
    ema_state: Optional[Dict[str, torch.Tensor]] = None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Any] = {}
    for pid, pstate in sd["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{pid}/{name}"] = value
            else:
                scalars[f"state/{pid}/{name}"] = value
    groups = [json_safe(g) for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "state_scalars": scalars}


def _write_training_state(directory: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                          scheduler: Any, step: int, rng_by_rank: Mapping[int, Mapping[str, torch.Tensor]],
                          info: Mapping[str, Any]) -> None:
    write_tensors(directory / ONLINE_MODEL_FILE, model.state_dict())
    tensors, groups = _optimizer_tensors(optimizer)
    write_tensors(directory / OPTIMIZER_FILE, tensors)
    write_json(directory / PARAM_GROUPS_FILE, groups)
    sched = {} if scheduler is None else {k: json_safe(v) for k, v in scheduler.state_dict().items()}
    write_json(directory / SCHEDULER_FILE, sched)
    write_tensors(directory / RNG_FILE, {f"rank{r}/{k}": v for r, s in rng_by_rank.items() for k, v in s.items()})
    write_json(directory / STEP_FILE, {"step": int(step), **json_safe(dict(info))})
    write_manifest(directory)


def save_training_state(directory: Union[str, os.PathLike], *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, step: int,
                        rng_by_rank: Optional[Mapping[int, Mapping[str, torch.Tensor]]] = None,
                        info: Optional[Mapping[str, Any]] = None) -> Path:
    """Write the resumable state (atomic). ``rng_by_rank`` defaults to this process's RNG as rank 0."""
    final = Path(directory)
    with atomic_dir(final) as tmp:
        _write_training_state(tmp, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                              rng_by_rank=rng_by_rank if rng_by_rank is not None else {0: capture_rng_state()},
                              info=info or {})
    return final


def load_training_state(directory: Union[str, os.PathLike], *, model: nn.Module,
                        optimizer: torch.optim.Optimizer, scheduler: Any = None) -> TrainingStateInfo:
    """Load weights, optimiser and scheduler state in place from a ``training_state`` dir.

    ``directory`` may also be the step folder that holds it. The RNG states are returned (the
    caller restores its own rank's, see :func:`restore_rng_state`), not applied. The manifest is
    checked before any file is read.
    """
    path = Path(directory)
    if (path / TRAINING_STATE_DIR).is_dir():
        path = path / TRAINING_STATE_DIR
    if not path.is_dir():
        raise CheckpointError(f"{path}: training state not found")
    verify_manifest(path)
    step_info = read_json(path / STEP_FILE)
    if not isinstance(step_info, dict) or not isinstance(step_info.get("step"), int):
        raise CheckpointError(f"{path / STEP_FILE}: step: missing or not an integer")
    load_weights(path / ONLINE_MODEL_FILE, model, read_tensors(path / ONLINE_MODEL_FILE))

    tensors = read_tensors(path / OPTIMIZER_FILE)
    groups = read_json(path / PARAM_GROUPS_FILE)
    if not isinstance(groups, dict) or not isinstance(groups.get("param_groups"), list):
        raise CheckpointError(f"{path / PARAM_GROUPS_FILE}: param_groups: missing")
    state: Dict[int, Dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(groups.get("state_scalars", {}).items()):
        parts = key.split("/")
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
            raise CheckpointError(f"{path / OPTIMIZER_FILE}: {key}: unexpected key")
        state.setdefault(int(parts[1]), {})[parts[2]] = value
    param_groups = []
    for g in groups["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        param_groups.append(g)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path / OPTIMIZER_FILE}: does not fit the optimiser ({e})") from None

    if scheduler is not None:
        sched = read_json(path / SCHEDULER_FILE)
        if not isinstance(sched, dict):
            raise CheckpointError(f"{path / SCHEDULER_FILE}: expected a JSON object")
        try:
            scheduler.load_state_dict(sched)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path / SCHEDULER_FILE}: does not fit the scheduler ({e})") from None

    rng_raw = read_tensors(path / RNG_FILE)
    rng_by_rank: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, value in rng_raw.items():
        rank, _, name = key.partition("/")
        if not rank.startswith("rank") or not rank[4:].isdigit():
            raise CheckpointError(f"{path / RNG_FILE}: {key}: unexpected key")
        rng_by_rank.setdefault(int(rank[4:]), {})[name] = value
    info = {k: v for k, v in step_info.items() if k != "step"}
    return TrainingStateInfo(step=int(step_info["step"]), info=info, rng_by_rank=rng_by_rank)


# ---------------------------------------------------------------------------------------------
# A whole training checkpoint


def save_checkpoint(output_dir: Union[str, os.PathLike], step: int, *, deploy_model: Policy, online_model: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, stats: StatsByEmbodiment,
                    meta: Mapping[str, Any], rng_by_rank: Mapping[int, Mapping[str, torch.Tensor]],
                    info: Mapping[str, Any]) -> Path:
    """Write ``checkpoints/<step>/{pretrained_model,training_state}`` atomically, then move ``last``."""
    final = checkpoint_dir(output_dir, step)
    with atomic_dir(final) as tmp:
        save_pretrained(tmp / PRETRAINED_DIR, deploy_model, stats, meta)
        save_training_state(tmp / TRAINING_STATE_DIR, model=online_model, optimizer=optimizer, scheduler=scheduler,
                            step=step, rng_by_rank=rng_by_rank, info=info)
    point_last(final)
    return final
