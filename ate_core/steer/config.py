"""Configuration of ATE's latent guidance (the ``ate:`` section of a fine-tuning config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ate_core.config import checked, in_range, one_of

__all__ = ["GuidanceConfig", "InferenceGuidanceConfig", "LATENT_TARGETS", "INFERENCE_TARGETS", "Y_REDUCTIONS"]

#: What the guidance pulls a noisy chunk's latent toward during fine-tuning.
LATENT_TARGETS = ("clean", "regression_target")
#: Where inference-time guidance pulls (no demonstration exists at run time).
INFERENCE_TARGETS = ("mean", "nearest")
#: Over what ``y`` is averaged: each sample (the guidance of a sample does not depend on the batch
#: it is in) or the whole batch (the official code's ``-F.mse_loss``: 1/B of the former).
Y_REDUCTIONS = ("sample", "batch")


@dataclass(frozen=True)
class InferenceGuidanceConfig:
    """Guidance while sampling on the robot (an extension of ATE; off by default).

    Each denoising step's model output gets ``scale * clamp(coef * grad)`` with ``grad`` the
    gradient of ``-MSE(z(x_t), z*)``: ``z*`` is the mean adaptation latent (``mean``) or the
    adaptation-latent bank entry nearest to ``z(x_t)`` (``nearest``). ``last_fraction`` limits it
    to the final part of the loop: near pure noise ``z(x_t)`` says little about the chunk, and
    the velocity coefficient ``tau / (1 - tau)`` saturates the clamp there, so the default 0.5
    guides only the second half of the steps (1.0: every step).
    """

    enabled: bool = False
    scale: float = checked(1.0, check=in_range(0.0, 100.0))
    target: str = checked("nearest", check=one_of(*INFERENCE_TARGETS))
    last_fraction: float = checked(0.5, check=in_range(0.0, 1.0))


@dataclass(frozen=True)
class GuidanceConfig:
    """ATE stage 2: latent classifier guidance of the denoising loss.

    ``scale`` is the paper's lambda (3.0 in the official Diffusion Policy config) and ``clamp``
    the bound on each element of the scaled gradient (0.1). ``latent_target``: ``clean``
    encodes the demonstrated chunk ``a0`` (the paper's intent, default); ``regression_target``
    encodes the loss's own target, which for epsilon prediction is the noise (what the official
    Diffusion Policy code does; kept to reproduce it; meaningless for flow velocities).
    ``y_reduction``: ``sample`` averages the latent log-likelihood ``y`` over each sample's
    latent (default); ``batch`` over the whole batch as the official code does, which divides
    every sample's gradient by the batch size B before the clamp (the official strength: at
    B = 128 and the same ``scale``/``clamp`` a far weaker, rarely clamped guidance).
    ``vae``: the adaptation (stage ``ada``) VAE checkpoint.
    """

    vae: str = ""
    scale: float = checked(3.0, check=in_range(0.0, 1000.0))
    clamp: float = checked(0.1, check=in_range(0.0, 1000.0))
    latent_target: str = checked("clean", check=one_of(*LATENT_TARGETS))
    y_reduction: str = checked("sample", check=one_of(*Y_REDUCTIONS))
    inference: InferenceGuidanceConfig = field(default_factory=InferenceGuidanceConfig)
