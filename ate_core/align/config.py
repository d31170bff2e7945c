"""The alignment stage's configuration: one YAML file -> a frozen :class:`AlignConfig`.

The same file serves both VAEs: ``stage: pre`` trains the pre-training VAE on the pre-training
robot's data, ``stage: ada`` the adaptation VAE on the new robot's data with its KL reference
taken from ``pre_checkpoint``. Loaded and validated by :func:`ate_core.config.from_dict` (an
unknown key is an error); command-line overrides are applied to the plain data first
(:func:`ate_core.train.config.apply_overrides`), so an override is checked like the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

from ate_core.align.configuration_vae import VAEConfig
from ate_core.align.latent_stats import DEFAULT_BANK_SIZE
from ate_core.align.losses import DEFAULT_MMD_SCALES, InfoVAELoss, KL_DIRECTIONS, MMD_KERNELS, RECON_KINDS
from ate_core.config import ConfigError, Problem, checked, from_dict, in_range, one_of, plain_data
from ate_core.train.config import (DatasetConfig, betas_in_range, learning_rate, load_yaml_config, non_negative,
                                   non_negative_int, positive_int)

__all__ = ["STAGES", "LossConfig", "AlignConfig", "align_config_from_dict", "align_config_to_dict",
           "load_align_config"]

STAGES = ("pre", "ada")


def _scales(value: Tuple[float, ...]) -> Optional[str]:
    if not value:
        return "must not be empty"
    for s in value:
        if not (math.isfinite(s) and s > 0):
            return f"{s} must be > 0"
    return None


@dataclass(frozen=True)
class LossConfig:
    """Weights and kinds of the Info-VAE terms (see :class:`ate_core.align.losses.InfoVAELoss`).

    The weights are the official VAE's: SmoothL1 reconstruction, KL weight 7.5e-5, MMD weight 1.
    The MMD kernel is a multi-scale IMQ by default; ``official_imq`` is the official one.
    """

    recon: str = checked("smooth_l1", check=one_of(*RECON_KINDS))
    recon_weight: float = checked(1.0, check=non_negative)
    kl_weight: float = checked(7.5e-5, check=non_negative)
    kl_direction: str = checked("posterior_to_reference", check=one_of(*KL_DIRECTIONS),
                                doc="KL(q || p) (the paper's reverse KL) or KL(p || q) (the official code)")
    mmd_weight: float = checked(1.0, check=non_negative)
    mmd_kernel: str = checked("imq", check=one_of(*MMD_KERNELS),
                              doc="imq (multi-scale, on the summed squared distance), rbf, or "
                                  "official_imq (the official code's single IMQ on the mean "
                                  "squared difference: ~900x weaker at a 512-wide latent)")
    mmd_scales: Tuple[float, ...] = checked(DEFAULT_MMD_SCALES, check=_scales)

    def build(self) -> InfoVAELoss:
        return InfoVAELoss(recon_weight=self.recon_weight, kl_weight=self.kl_weight, mmd_weight=self.mmd_weight,
                           recon_kind=self.recon, kl_direction=self.kl_direction, mmd_kernel=self.mmd_kernel,
                           mmd_scales=self.mmd_scales)


@dataclass(frozen=True)
class AlignConfig:
    """One VAE training run of the alignment stage.

    ``stage``: ``pre`` (KL to N(0, I)) or ``ada`` (KL to N(mu_pre, std_pre^2) of
    ``pre_checkpoint``'s latent statistics, which is then required). ``baseline`` (stage ada
    only, ignored in stage pre): also train, with the same seed, steps and data, a VAE whose KL
    goes to N(0, I) instead, and report how the two place the adaptation chunks relative to the
    pre-training latent distribution. ``output_dir`` empty: ``outputs/align_<stage>``.
    ``stats_noise_level``: the input noise of the latent statistics (0 = clean chunks), see
    :func:`ate_core.align.latent_stats.noise_chunks`. Steps, not epochs, as in ``ate_train``.
    """

    dataset: DatasetConfig
    stage: str = checked("pre", check=one_of(*STAGES))
    vae: VAEConfig = field(default_factory=VAEConfig)
    pre_checkpoint: str = ""
    loss: LossConfig = field(default_factory=LossConfig)
    norm_mode: str = checked("mean_std", check=one_of("mean_std", "min_max"))
    steps: int = checked(20_000, check=positive_int)
    batch_size: int = checked(64, check=positive_int)
    lr: float = checked(1e-4, check=learning_rate)
    weight_decay: float = checked(1e-4, check=non_negative)
    betas: Tuple[float, float] = checked((0.9, 0.999), check=betas_in_range)
    warmup_steps: int = checked(500, check=non_negative_int)
    grad_clip_norm: float = checked(1.0, check=non_negative, doc="0 disables clipping")
    seed: int = checked(1000, check=non_negative_int)
    device: str = checked("auto", check=one_of("auto", "cpu", "cuda"))
    log_every: int = checked(100, check=positive_int)
    save_every: int = checked(5_000, check=positive_int)
    output_dir: str = ""
    stats_noise_level: float = checked(0.1, check=in_range(0.0, 1.0))
    stats_batch_size: int = checked(256, check=positive_int)
    bank_size: int = checked(DEFAULT_BANK_SIZE, check=positive_int)
    baseline: bool = False

    def problems(self) -> Iterator[Problem]:
        if self.stage == "ada" and not self.pre_checkpoint:
            yield "pre_checkpoint", "required for stage ada (the stage-pre VAE whose latent statistics " \
                                    "define the KL reference)"
        if self.warmup_steps > self.steps:
            yield "warmup_steps", f"{self.warmup_steps} exceeds steps {self.steps}"

    @property
    def run_dir(self) -> Path:
        """Where this run writes: ``output_dir``, or ``outputs/align_<stage>`` when it is empty."""
        return Path(self.output_dir) if self.output_dir else Path("outputs") / f"align_{self.stage}"


def align_config_from_dict(data: Any, source: str = "<dict>") -> AlignConfig:
    """Build and validate an :class:`AlignConfig` from plain data (as YAML gives it)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", "expected a mapping at the top level")
    return from_dict(AlignConfig, data, source)


def align_config_to_dict(cfg: AlignConfig) -> Dict[str, Any]:
    """The plain-data form (JSON/YAML-able); :func:`align_config_from_dict` inverts it."""
    return plain_data(dataclasses.asdict(cfg))


def load_align_config(path: Union[str, os.PathLike], overrides: Optional[Mapping[str, Any]] = None,
                      override_source: str = "--set") -> AlignConfig:
    """Read an alignment YAML and apply overrides (see :func:`~ate_core.train.config.load_yaml_config`)."""
    return load_yaml_config(path, align_config_from_dict, overrides, override_source)
