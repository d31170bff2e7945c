"""Alignment-VAE checkpoints: safetensors tensors and one JSON file; loading never unpickles.

::

    <checkpoint>/
      vae_config.json              format "ate_vae", version, stage (pre | ada), the VAEConfig,
                                   norm mode, unified action layout, embodiments, training
                                   config, SHA-256 of every tensor file
      vae.safetensors              the weights
      norm_stats.safetensors       "<embodiment>/<state|action>/<mean|std|min|max>", the policy's
                                   normalisation of the data the VAE was trained on
      latent_stats.safetensors     LatentStats of the training chunks (final checkpoints): for
                                   stage pre the KL reference of stage ada, for stage ada the
                                   adaptation latent distribution inference-time guidance uses
      reference.safetensors        stage ada: the KL reference "mean", "std" [L, d] it was trained with
      report.json                  stage ada with a baseline: the latent-fit report

A training run keeps them under ``<output_dir>/checkpoints/<step>/`` with a ``last`` pointer,
as ``ate_train`` does. A checkpoint is written under a temporary name and renamed when
complete. Every problem on load raises :class:`CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ate_core.align.configuration_vae import VAEConfig
from ate_core.align.latent_stats import LatentStats, LatentStatsError
from ate_core.align.modeling_vae import ActionChunkVAE
from ate_core.config import ConfigError, from_dict, plain_data
from ate_core.data.stats import stats_from_tensors, stats_to_tensors
from ate_core.durable_io import fsync_dir as _fsync_dir
from ate_core.policy.pretrained import (LAST_LINK, CheckpointError, _plain, _read_json, _read_tensors,
                                        _replace_dir, _sha256, _temp_dir_beside, _write_json, _write_tensors,
                                        latest_checkpoint)
from ate_core.data.spaces import ActionSpaceError, NormStats, NormStatsError, UnifiedActionSpace

__all__ = [
    "CheckpointError",
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
    "resolve_vae_dir",
]

VAE_FORMAT = "ate_vae"
VAE_VERSION = 1
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


def _action_space_dict(space: UnifiedActionSpace) -> Dict[str, Any]:
    return {"width": space.width, "embodiments": {k: list(v) for k, v in space.embodiments.items()}}


def _config_dict(cfg: Any) -> Dict[str, Any]:
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg):
        return _plain(plain_data(dataclasses.asdict(cfg)))
    return _plain(dict(cfg))


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

    directory.mkdir(parents=True, exist_ok=True)
    files = [WEIGHTS_FILE, NORM_STATS_FILE]
    _write_tensors(directory / WEIGHTS_FILE, vae.state_dict())
    _write_tensors(directory / NORM_STATS_FILE,
                   {k: torch.from_numpy(np.array(v)) for k, v in
                    stats_to_tensors({e: norm_stats[e] for e in embodiments}).items()})
    if latent_stats is not None:
        _write_tensors(directory / LATENT_STATS_FILE, latent_stats.to_tensors())
        files.append(LATENT_STATS_FILE)
    if reference is not None:
        _write_tensors(directory / REFERENCE_FILE, {"mean": reference.mean.float(), "std": reference.std.float()})
        files.append(REFERENCE_FILE)
    meta: Dict[str, Any] = {
        "format": VAE_FORMAT,
        "version": VAE_VERSION,
        "stage": stage,
        "vae": _config_dict(cfg),
        "norm_mode": norm_mode,
        "action_space": _action_space_dict(action_space),
        "embodiments": list(embodiments),
        "files": {name: {"sha256": _sha256(directory / name), "bytes": (directory / name).stat().st_size}
                  for name in files},
        "train": _config_dict(train_config),
    }
    for key, value in (extra or {}).items():
        if key in meta:
            raise CheckpointError(f"save_vae: extra key {key!r} would replace a reserved entry")
        meta[key] = _plain(value)
    _write_json(directory / CONFIG_FILE, meta)
    if report is not None:
        _write_json(directory / REPORT_FILE, _plain(dict(report)))
    _fsync_dir(directory)


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
    tmp = _temp_dir_beside(final)
    try:
        _write_vae_dir(tmp, vae, stage=stage, norm_stats=norm_stats, norm_mode=norm_mode, action_space=action_space,
                       embodiments=embodiments, latent_stats=latent_stats, reference=reference,
                       train_config=train_config, report=report, extra=extra)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_report(directory: Union[str, os.PathLike], report: Mapping[str, Any]) -> Path:
    """Add (or replace) ``report.json`` in a checkpoint directory, atomically."""
    path = Path(directory) / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.tmp-{os.getpid()}")
    try:
        _write_json(tmp, _plain(dict(report)))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


# ---------------------------------------------------------------------------------------------
# Loading


def resolve_vae_dir(path: Union[str, os.PathLike]) -> Path:
    """The checkpoint directory ``path`` names: itself, the ``last`` of a ``checkpoints`` folder,
    or the ``checkpoints/last`` of a run's output folder."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise CheckpointError(f"{p}: checkpoint not found")
    if p.name == LAST_LINK and (p.is_symlink() or p.is_file()):
        target = latest_checkpoint(p.parent)
        if target is not None:
            p = target
    if (p / CONFIG_FILE).is_file():
        return p
    if p.is_dir():
        last = latest_checkpoint(p)
        if last is not None:
            if (last / CONFIG_FILE).is_file():
                return last
            raise CheckpointError(f"{last / CONFIG_FILE}: file not found (not a VAE checkpoint)")
        raise CheckpointError(f"{p / CONFIG_FILE}: file not found (not a VAE checkpoint directory)")
    raise CheckpointError(f"{p}: not a VAE checkpoint directory")


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


def _verify_files(directory: Path, files: Any, cfg_path: Path) -> Dict[str, str]:
    if not isinstance(files, dict):
        raise CheckpointError(f"{cfg_path}: files: expected an object of file name -> sha256")
    for required in (WEIGHTS_FILE, NORM_STATS_FILE):
        if required not in files:
            raise CheckpointError(f"{cfg_path}: files.{required}: required entry is missing")
    digests: Dict[str, str] = {}
    for name, entry in files.items():
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(expected, str):
            raise CheckpointError(f"{cfg_path}: files.{name}.sha256: missing")
        if "/" in name or name.startswith("."):
            raise CheckpointError(f"{cfg_path}: files.{name}: not a file of this directory")
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"{file}: file not found (incomplete checkpoint?)")
        actual = _sha256(file)
        if actual != expected:
            raise CheckpointError(f"{file}: checksum mismatch with {CONFIG_FILE} (file corrupt or modified)")
        digests[name] = actual
    return digests


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
    (then ``checkpoints/last``). Never unpickles, never changes the caller's RNG state. Every
    file listed in ``vae_config.json`` is checked against its SHA-256 before it is read.
    """
    directory = resolve_vae_dir(path)
    cfg_path = directory / CONFIG_FILE
    raw = _read_json(cfg_path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object")
    if raw.get("format") != VAE_FORMAT:
        raise CheckpointError(f"{cfg_path}: format: {raw.get('format')!r} is not an {VAE_FORMAT!r} checkpoint")
    if raw.get("version") != VAE_VERSION:
        raise CheckpointError(f"{cfg_path}: version: unsupported version {raw.get('version')!r} "
                              f"(this code reads version {VAE_VERSION})")
    for key in ("stage", "vae", "norm_mode", "action_space", "embodiments", "files"):
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
    digests = _verify_files(directory, raw["files"], cfg_path)

    # -- weights
    state = _read_tensors(directory / WEIGHTS_FILE)
    with torch.random.fork_rng(devices=[]):
        vae = ActionChunkVAE(config)
    _check_weights(directory / WEIGHTS_FILE, state, vae.state_dict())
    vae.load_state_dict(state, strict=True)

    # -- normalisation statistics of every embodiment
    stats_path = directory / NORM_STATS_FILE
    try:
        norm_stats = stats_from_tensors(_read_tensors(stats_path), embodiments=embodiments)
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
            latent_stats = LatentStats.from_tensors(_read_tensors(lpath))
        except LatentStatsError as e:
            raise CheckpointError(f"{lpath}: {e}") from None
        if latent_stats.shape != latent_shape:
            raise CheckpointError(f"{lpath}: mean: latent shape {list(latent_stats.shape)}, the VAE's is "
                                  f"{list(latent_shape)}")
    reference = None
    if REFERENCE_FILE in digests:
        rpath = directory / REFERENCE_FILE
        tensors = _read_tensors(rpath)
        reference = KLReference(_latent_tensor(rpath, tensors, "mean", latent_shape, positive=False),
                                _latent_tensor(rpath, tensors, "std", latent_shape, positive=True))
    elif stage == "ada":
        raise CheckpointError(f"{cfg_path}: files.{REFERENCE_FILE}: a stage-ada checkpoint must list its KL reference")

    report = None
    if (directory / REPORT_FILE).is_file():
        report = _read_json(directory / REPORT_FILE)
        if not isinstance(report, dict):
            raise CheckpointError(f"{directory / REPORT_FILE}: expected a JSON object")

    vae.to(device)
    vae.eval()
    vae.requires_grad_(False)
    return LoadedVAE(vae=vae, config=config, stage=stage, norm_stats=norm_stats, norm_mode=norm_mode,
                     action_space=space, embodiments=tuple(embodiments), latent_stats=latent_stats,
                     reference=reference, path=directory, sha256=digests[WEIGHTS_FILE], meta=raw, report=report)
