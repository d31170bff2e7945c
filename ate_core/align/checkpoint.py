"""Alignment-VAE checkpoints: safetensors tensors and one JSON file; loading never unpickles.

::

    <checkpoint>/
      vae_config.json              format "ate_vae", version, stage (pre | ada), the VAEConfig,
                                   norm mode, unified action layout, embodiments, training
                                   config
      vae.safetensors              the weights
      norm_stats.safetensors       "<embodiment>/<state|action>/<mean|std|min|max>", the policy's
                                   normalisation of the data the VAE was trained on
      latent_stats.safetensors     LatentStats of the training chunks (final checkpoints): for
                                   stage pre the KL reference of stage ada, for stage ada the
                                   adaptation latent distribution inference-time guidance uses
      reference.safetensors        stage ada: the KL reference "mean", "std" [L, d] it was trained with
      report.json                  stage ada: the latent-fit report, added by write_report
      manifest.json                SHA-256 and size of every other file (:mod:`ate_core.io.manifest`)

A training run keeps them under ``<output_dir>/checkpoints/<step>/`` with a ``last`` pointer,
as ``ate_train`` does. A checkpoint is written under a temporary name and renamed when
complete. Every problem on load raises :class:`CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ate_core.align.configuration_vae import VAEConfig
from ate_core.align.latent_stats import LatentStats, LatentStatsError
from ate_core.align.modeling_vae import ActionChunkVAE
from ate_core.config import ConfigError, from_dict
from ate_core.data.stats import stats_from_tensors, stats_to_tensors
from ate_core.io import (CheckpointError, action_space_dict, add_to_checkpoint, atomic_dir, json_bytes, json_safe,
                         read_json, read_tensors, replace_file, resolve_checkpoint_dir, verify_manifest, write_json,
                         write_manifest, write_tensors)
from ate_core.data.spaces import ActionSpaceError, NormStats, NormStatsError, UnifiedActionSpace

__all__ = [
    "VAE_FORMAT",
    "VAE_VERSION",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "NORM_STATS_FILE",
    "LATENT_STATS_FILE",
    "REFERENCE_FILE",
    "REPORT_FILE",
    "KLReference",
    "LoadedVAE",
    "save_vae",
    "load_vae",
    "write_report",
]

VAE_FORMAT = "ate_vae"
VAE_VERSION = 2
CONFIG_FILE = "vae_config.json"
WEIGHTS_FILE = "vae.safetensors"
NORM_STATS_FILE = "norm_stats.safetensors"
LATENT_STATS_FILE = "latent_stats.safetensors"
REFERENCE_FILE = "reference.safetensors"
REPORT_FILE = "report.json"
_STAGES = ("pre", "ada")
_NORM_MODES = ("mean_std", "min_max")


@dataclass(frozen=True, eq=False)
class KLReference:
    """The Gaussian N(mean, std^2) over latents ``[L, d]`` a VAE's KL term was taken against."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def standard(cls, shape: Tuple[int, int]) -> "KLReference":
        """N(0, I): stage pre's reference, and the baseline's."""
        return cls(torch.zeros(shape), torch.ones(shape))

    def to(self, device: Union[str, torch.device]) -> "KLReference":
        return KLReference(self.mean.to(device), self.std.to(device))


@dataclass
class LoadedVAE:
    """A VAE restored from a checkpoint with what is needed to feed it the policy's chunks.

    ``vae`` is in eval mode with every parameter frozen (``requires_grad`` False): the guidance
    differentiates through it w.r.t. its input, never w.r.t. its weights. ``norm_stats``,
    ``norm_mode`` and ``action_space`` define the model space its chunks live in.
    """

    vae: ActionChunkVAE
    config: VAEConfig
    stage: str
    norm_stats: Dict[str, Dict[str, NormStats]]
    norm_mode: str
    action_space: UnifiedActionSpace
    embodiments: Tuple[str, ...]
    latent_stats: Optional[LatentStats]
    reference: Optional[KLReference]
    path: Path
    sha256: str
    meta: Dict[str, Any] = field(default_factory=dict)
    report: Optional[Dict[str, Any]] = None


# ---------------------------------------------------------------------------------------------
# Saving


def _check_latent_shape(what: str, shape: Sequence[int], cfg: VAEConfig) -> None:
    expected = (cfg.latent_tokens, cfg.latent_dim)
    if tuple(shape) != expected:
        raise CheckpointError(f"save_vae: {what} has latent shape {list(shape)}, the VAE's is {list(expected)}")


def _write_vae_dir(directory: Path, vae: ActionChunkVAE, *, stage: str, norm_stats: Mapping[str, Mapping[str, NormStats]],
                   norm_mode: str, action_space: UnifiedActionSpace, embodiments: Sequence[str],
                   latent_stats: Optional[LatentStats], reference: Optional[KLReference], train_config: Any,
                   report: Optional[Mapping[str, Any]], extra: Optional[Mapping[str, Any]]) -> None:
    cfg: VAEConfig = vae.config
    if stage not in _STAGES:
        raise CheckpointError(f"save_vae: stage {stage!r} is not one of {list(_STAGES)}")
    if norm_mode not in _NORM_MODES:
        raise CheckpointError(f"save_vae: norm_mode {norm_mode!r} is not one of {list(_NORM_MODES)}")
    if action_space.width != cfg.action_width:
        raise CheckpointError(f"save_vae: action space width {action_space.width}, the VAE's is {cfg.action_width}")
    embodiments = tuple(embodiments)
    if not embodiments:
        raise CheckpointError("save_vae: no embodiments given")
    for emb in embodiments:
        action_space.slots(emb)
        if emb not in norm_stats or not {"state", "action"} <= set(norm_stats[emb]):
            raise CheckpointError(f"save_vae: norm_stats lack 'state'/'action' of embodiment {emb!r}")
    if stage == "ada" and reference is None:
        raise CheckpointError("save_vae: a stage-ada VAE needs the KL reference it was trained with")
    if latent_stats is not None:
        _check_latent_shape("latent_stats", latent_stats.shape, cfg)
    if reference is not None:
        _check_latent_shape("reference", tuple(reference.mean.shape), cfg)
        _check_latent_shape("reference std", tuple(reference.std.shape), cfg)

    write_tensors(directory / WEIGHTS_FILE, vae.state_dict())
    write_tensors(directory / NORM_STATS_FILE,
                  {k: torch.from_numpy(np.array(v)) for k, v in
                   stats_to_tensors({e: norm_stats[e] for e in embodiments}).items()})
    if latent_stats is not None:
        write_tensors(directory / LATENT_STATS_FILE, latent_stats.to_tensors())
    if reference is not None:
        write_tensors(directory / REFERENCE_FILE, {"mean": reference.mean.float(), "std": reference.std.float()})
    meta: Dict[str, Any] = {
        "format": VAE_FORMAT,
        "version": VAE_VERSION,
        "stage": stage,
        "vae": json_safe(cfg),
        "norm_mode": norm_mode,
        "action_space": action_space_dict(action_space),
        "embodiments": list(embodiments),
        "train": {} if train_config is None else json_safe(train_config),
    }
    for key, value in (extra or {}).items():
        if key in meta:
            raise CheckpointError(f"save_vae: extra key {key!r} would replace a reserved entry")
        meta[key] = json_safe(value)
    write_json(directory / CONFIG_FILE, meta)
    if report is not None:
        write_json(directory / REPORT_FILE, json_safe(report))
    write_manifest(directory)


def save_vae(directory: Union[str, os.PathLike], vae: ActionChunkVAE, *, stage: str,
             norm_stats: Mapping[str, Mapping[str, NormStats]], norm_mode: str, action_space: UnifiedActionSpace,
             embodiments: Sequence[str], latent_stats: Optional[LatentStats] = None,
             reference: Optional[KLReference] = None, train_config: Any = None,
             report: Optional[Mapping[str, Any]] = None, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``vae`` (its current weights) and what it needs as a checkpoint directory.

    ``stage`` "ada" requires ``reference``. ``train_config``: an :class:`AlignConfig` or plain
    dict, for the record. ``extra``: further JSON entries (e.g. the step). Atomic: the directory
    appears only once complete, replacing any earlier one.
    """
    final = Path(directory)
    with atomic_dir(final) as tmp:
        _write_vae_dir(tmp, vae, stage=stage, norm_stats=norm_stats, norm_mode=norm_mode, action_space=action_space,
                       embodiments=embodiments, latent_stats=latent_stats, reference=reference,
                       train_config=train_config, report=report, extra=extra)
    return final


def write_report(directory: Union[str, os.PathLike], report: Mapping[str, Any]) -> Path:
    """Add (or replace) ``report.json`` in ``directory``, atomically.

    The latent-fit report is computed after the final checkpoint is written, so it joins it
    afterwards: in a VAE checkpoint folder its manifest entry is updated with it
    (:func:`~ate_core.io.add_to_checkpoint`); any other folder (a run's output folder, which
    keeps a copy) just gets the file.
    """
    directory = Path(directory)
    data = json_bytes(json_safe(report))
    if (directory / CONFIG_FILE).is_file():
        return add_to_checkpoint(directory, REPORT_FILE, data)
    return replace_file(directory / REPORT_FILE, data)


# ---------------------------------------------------------------------------------------------
# Loading


def _check_weights(path: Path, state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: {missing[0]}: missing key{more}; the weights do not fit the VAE config")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        more = f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{path}: {unexpected[0]}: unexpected key{more}; the weights do not fit the VAE config")
    for k, v in expected.items():
        got = state[k]
        if tuple(got.shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: {k}: shape {list(got.shape)}, the VAE config needs {list(v.shape)}")
        if got.is_floating_point() != v.is_floating_point():
            raise CheckpointError(f"{path}: {k}: dtype {got.dtype}, expected {v.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise CheckpointError(f"{path}: {k}: non-finite weights (NaN or inf)")


def _latent_tensor(path: Path, tensors: Mapping[str, torch.Tensor], key: str, shape: Tuple[int, int],
                   positive: bool) -> torch.Tensor:
    if key not in tensors:
        raise CheckpointError(f"{path}: {key}: missing")
    value = tensors[key]
    if tuple(value.shape) != shape:
        raise CheckpointError(f"{path}: {key}: shape {list(value.shape)}, the VAE's latent is {list(shape)}")
    if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
        raise CheckpointError(f"{path}: {key}: not finite floating-point values")
    if positive and not bool((value > 0).all()):
        raise CheckpointError(f"{path}: {key}: standard deviations must be > 0")
    return value.float()


def load_vae(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> LoadedVAE:
    """Load a VAE checkpoint: a fresh :class:`ActionChunkVAE` from the stored config + weights.

    ``path`` may be the checkpoint directory, a ``checkpoints`` folder or a run's output folder
    (then ``checkpoints/last``). Never unpickles, never changes the caller's RNG state. The
    manifest is checked before any file is read.
    """
    directory = resolve_checkpoint_dir(path, CONFIG_FILE)
    digests = verify_manifest(directory)
    cfg_path = directory / CONFIG_FILE
    raw = read_json(cfg_path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object")
    if raw.get("format") != VAE_FORMAT:
        raise CheckpointError(f"{cfg_path}: format: {raw.get('format')!r} is not an {VAE_FORMAT!r} checkpoint")
    version = raw.get("version")
    if version != VAE_VERSION:
        older = isinstance(version, int) and version < VAE_VERSION
        raise CheckpointError(f"{cfg_path}: version: unsupported version {version!r} (this code reads version "
                              f"{VAE_VERSION})" + ("; written by an older version: save it again" if older else ""))
    for key in ("stage", "vae", "norm_mode", "action_space", "embodiments"):
        if key not in raw:
            raise CheckpointError(f"{cfg_path}: {key}: required key is missing")
    stage = raw["stage"]
    if stage not in _STAGES:
        raise CheckpointError(f"{cfg_path}: stage: {stage!r} is not one of {list(_STAGES)}")
    try:
        config = from_dict(VAEConfig, raw["vae"], str(cfg_path))
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: vae.{e.key}: {e.message}" if e.key else f"{cfg_path}: vae: {e.message}") \
            from None
    norm_mode = raw["norm_mode"]
    if norm_mode not in _NORM_MODES:
        raise CheckpointError(f"{cfg_path}: norm_mode: {norm_mode!r} is not one of {list(_NORM_MODES)}")
    try:
        space_raw = raw["action_space"]
        space = UnifiedActionSpace(embodiments={k: tuple(v) for k, v in space_raw["embodiments"].items()},
                                   width=int(space_raw["width"]))
    except (ActionSpaceError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: action_space: malformed ({e})") from None
    if space.width != config.action_width:
        raise CheckpointError(f"{cfg_path}: action_space.width: {space.width}, vae.action_width is "
                              f"{config.action_width}")
    embodiments = raw["embodiments"]
    if not isinstance(embodiments, list) or not embodiments or not all(isinstance(e, str) for e in embodiments):
        raise CheckpointError(f"{cfg_path}: embodiments: expected a non-empty list of names")
    for emb in embodiments:
        if emb not in space.embodiments:
            raise CheckpointError(f"{cfg_path}: embodiments: {emb!r} has no slots in action_space")

    # -- weights
    state = read_tensors(directory / WEIGHTS_FILE)
    with torch.random.fork_rng(devices=[]):
        vae = ActionChunkVAE(config)
    _check_weights(directory / WEIGHTS_FILE, state, vae.state_dict())
    vae.load_state_dict(state, strict=True)

    # -- normalisation statistics of every embodiment
    stats_path = directory / NORM_STATS_FILE
    try:
        norm_stats = stats_from_tensors(read_tensors(stats_path), embodiments=embodiments)
    except NormStatsError as e:
        raise CheckpointError(f"{stats_path}: {e}") from None
    for emb in embodiments:
        dim = space.dim(emb)
        if norm_stats[emb]["action"].shape != (dim,):
            raise CheckpointError(f"{stats_path}: {emb}/action/mean: shape {list(norm_stats[emb]['action'].shape)}, "
                                  f"the embodiment has {dim} action dims")

    # -- latent statistics and KL reference
    latent_shape = (config.latent_tokens, config.latent_dim)
    latent_stats = None
    if LATENT_STATS_FILE in digests:
        lpath = directory / LATENT_STATS_FILE
        try:
            latent_stats = LatentStats.from_tensors(read_tensors(lpath))
        except LatentStatsError as e:
            raise CheckpointError(f"{lpath}: {e}") from None
        if latent_stats.shape != latent_shape:
            raise CheckpointError(f"{lpath}: mean: latent shape {list(latent_stats.shape)}, the VAE's is "
                                  f"{list(latent_shape)}")
    reference = None
    if REFERENCE_FILE in digests:
        rpath = directory / REFERENCE_FILE
        tensors = read_tensors(rpath)
        reference = KLReference(_latent_tensor(rpath, tensors, "mean", latent_shape, positive=False),
                                _latent_tensor(rpath, tensors, "std", latent_shape, positive=True))
    elif stage == "ada":
        raise CheckpointError(f"{directory / REFERENCE_FILE}: file not found (a stage-ada checkpoint holds the "
                              "KL reference it was trained with)")

    report = None
    if REPORT_FILE in digests:
        report = read_json(directory / REPORT_FILE)
        if not isinstance(report, dict):
            raise CheckpointError(f"{directory / REPORT_FILE}: expected a JSON object")

    vae.to(device)
    vae.eval()
    vae.requires_grad_(False)
    return LoadedVAE(vae=vae, config=config, stage=stage, norm_stats=norm_stats, norm_mode=norm_mode,
                     action_space=space, embodiments=tuple(embodiments), latent_stats=latent_stats,
                     reference=reference, path=directory, sha256=digests[WEIGHTS_FILE], meta=raw, report=report)
