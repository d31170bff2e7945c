"""Fine-tuning a pre-trained policy on a new robot's demonstrations: plainly, or steered by ATE.

A fine-tuning run is a training run (:func:`ate_core.train.trainer.train`, same loop,
checkpoints, resume and torchrun) with two more keys:

* ``method: plain`` regresses the policy's own denoising target, as ``ate_train --init-from``;
* ``method: ate`` (the default) adds ATE's latent guidance (stage 2, *steer*) to that loss:
  the adaptation VAE of stage 1 (``ate.vae``, written by ``ate_align``) scores each noisy
  chunk by how close its latent lies to the demonstration's, and the gradient of that score
  shifts the prediction before the regression (:mod:`ate_core.steer.guidance`).

The VAE has to see the policy's model space exactly (chunk length, unified slots, the
normalisation statistics of the fine-tuning data), so the run refuses to start when it does not.
Every checkpoint's ``config.json`` and ``train_summary.json`` record the method and, for ATE,
which VAE (path, SHA-256) and which ``scale``/``clamp`` shaped the weights
(:class:`~ate_core.steer.record.FinetuneRecord`); resuming with another method or another VAE is
refused for the same reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

from ate_core.align.checkpoint import load_vae
from ate_core.config import ConfigError, Problem, checked, one_of
from ate_core.data.spaces import NormStats, UnifiedActionSpace
from ate_core.io import latest_checkpoint
from ate_core.policy.pretrained import CONFIG_FILE, load_pretrained, read_pretrained_config
from ate_core.steer.config import GuidanceConfig
from ate_core.steer.guidance import LatentGuidance
from ate_core.steer.record import METHODS, RECORD_KEY, FinetuneRecord
from ate_core.train.config import TrainConfig, load_yaml_config, train_config_from_dict, train_config_to_dict
from ate_core.train.datasets import dataset_embodiment, open_datasets, stats_by_embodiment
from ate_core.train.trainer import TrainResult, check_policy_section, resolve_policy_source, train

__all__ = ["FinetuneConfig", "finetune_config_from_dict", "finetune_config_to_dict", "load_finetune_config",
           "finetune", "build_guidance", "finetune_record"]


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """A training config that starts from ``init_from`` (required) and says how to fine-tune.

    ``policy`` is normally left out: the model comes from the checkpoint (a section that
    disagrees with it is an error). ``ate`` is read only with ``method: ate``.
    """

    method: str = checked("ate", check=one_of(*METHODS), doc="plain | ate (latent-guided loss)")
    ate: GuidanceConfig = field(default_factory=GuidanceConfig)

    def problems(self) -> Iterator[Problem]:
        if not self.init_from:
            yield "init_from", "required key is missing: the pre-trained checkpoint to fine-tune (--init-from CKPT)"
        if self.method == "ate" and not self.ate.vae:
            yield "ate.vae", "required for method 'ate': the adaptation VAE checkpoint written by ate_align (--vae)"
        yield from super().problems()


# ---------------------------------------------------------------------------------------------
# Loading


def finetune_config_from_dict(data: Any, source: str = "<dict>") -> FinetuneConfig:
    """Build and validate a :class:`FinetuneConfig` from plain data (as YAML gives it)."""
    return train_config_from_dict(data, source, FinetuneConfig)


def finetune_config_to_dict(cfg: FinetuneConfig) -> Dict[str, Any]:
    """The plain-data form; :func:`finetune_config_from_dict` inverts it."""
    return train_config_to_dict(cfg)


def load_finetune_config(path: Union[str, os.PathLike], overrides: Optional[Mapping[str, Any]] = None,
                         override_source: str = "--set") -> FinetuneConfig:
    """Read a fine-tuning YAML and apply overrides (see :func:`~ate_core.train.config.load_yaml_config`)."""
    return load_yaml_config(path, finetune_config_from_dict, overrides, override_source)


# ---------------------------------------------------------------------------------------------
# The run


def _validate(cfg: FinetuneConfig, source: str) -> None:
    """The config's own checks again: a FinetuneConfig built in code skips :func:`from_dict`."""
    if not isinstance(cfg, FinetuneConfig):
        raise TypeError(f"finetune() takes a FinetuneConfig, got {type(cfg).__name__}")
    for key, message in cfg.problems():
        raise ConfigError(source, key, message)


def _stats_for_run(cfg: FinetuneConfig,
                   source: str) -> Tuple[Any, UnifiedActionSpace, Dict[str, Dict[str, NormStats]]]:
    """(policy config, action space, stats by embodiment) as the trainer will use them: the
    checkpoint's, plus (unless resuming, where the checkpoint already has them) the stats of the
    fine-tuning data, which the VAE must have been trained with."""
    kind, path = resolve_policy_source(cfg)
    loaded = load_pretrained(path)
    stats = {emb: dict(s) for emb, s in loaded.stats.items()}
    if kind != "resume":
        datasets = open_datasets(cfg, loaded.config, source)
        stats.update(stats_by_embodiment(datasets, [dataset_embodiment(ds) for ds in datasets]))
    return loaded.config, loaded.action_space, stats


def build_guidance(cfg: FinetuneConfig, source: str = "finetune config") -> LatentGuidance:
    """The latent guidance of ``cfg.ate``, checked against the policy and data it will steer
    (a mismatch is a :class:`ConfigError`, before any training)."""
    if not cfg.ate.vae:
        raise ConfigError(source, "ate.vae", "required for method 'ate': the adaptation VAE checkpoint (--vae)")
    if not Path(cfg.ate.vae).exists():
        raise ConfigError(source, "ate.vae", f"{cfg.ate.vae}: no such VAE checkpoint")
    guidance = LatentGuidance.from_checkpoint(load_vae(cfg.ate.vae), cfg.ate)
    policy_config, action_space, stats = _stats_for_run(cfg, source)
    guidance.check_compatible(policy_config, action_space, stats, cfg.norm_mode, source)
    return guidance


def finetune_record(cfg: FinetuneConfig, guidance: Optional[LatentGuidance] = None) -> FinetuneRecord:
    """What the checkpoints of this run say about how it was fine-tuned."""
    return FinetuneRecord(method=cfg.method, ate=None if guidance is None else guidance.record())


def _check_resume(cfg: FinetuneConfig, record: FinetuneRecord, source: str) -> None:
    """A resumed run continues the same fine-tuning: same method, same VAE (by content)."""
    if not cfg.resume:
        return
    last = latest_checkpoint(Path(cfg.output_dir) / "checkpoints")
    if last is None:
        return  # the trainer says there is nothing to resume
    pdir, raw, _, _ = read_pretrained_config(last)
    before = FinetuneRecord.from_meta(raw, pdir / CONFIG_FILE)
    if before is None:
        raise ConfigError(source, "resume", f"{last}: not a fine-tuning run (no {RECORD_KEY!r} record); "
                                            "resume it with ate_train")
    if before.method != record.method:
        raise ConfigError(source, "method", f"{record.method!r} here, but the run being resumed ({last}) "
                                            f"used {before.method!r}")
    had, now = before.ate, record.ate
    if had is not None and now is not None and had.sha256 != now.sha256:
        raise ConfigError(source, "ate.vae", f"{cfg.ate.vae} (sha256 {now.sha256[:12]}) is not the VAE the run "
                                             f"being resumed was guided by (sha256 {had.sha256[:12]}, {had.path})")


def finetune(cfg: FinetuneConfig, *, progress: bool = True, source: str = "finetune config") -> TrainResult:
    """Fine-tune ``cfg.init_from`` on ``cfg.dataset`` by ``cfg.method``. Config, checkpoint and
    VAE problems raise :class:`ConfigError` / :class:`CheckpointError` before the first step."""
    _validate(cfg, source)
    check_policy_section(cfg, source)
    guidance = build_guidance(cfg, source) if cfg.method == "ate" else None
    record = finetune_record(cfg, guidance)
    _check_resume(cfg, record, source)
    return train(cfg, progress=progress, source=source, meta_extra={RECORD_KEY: record.to_dict()},
                 loss_fn=None if guidance is None else guidance.loss)
