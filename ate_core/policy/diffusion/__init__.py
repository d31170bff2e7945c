"""Diffusion Policy: configuration, noise schedule and DDIM sampler, UNet and transformer denoisers."""

from ate_core.policy.diffusion.configuration_diffusion import DiffusionConfig
from ate_core.policy.diffusion.modeling_diffusion import DiffusionCondition, DiffusionPolicy
from ate_core.policy.diffusion.scheduler import DDIMScheduler, DDIMStep

__all__ = ["DiffusionConfig", "DiffusionPolicy", "DiffusionCondition", "DDIMScheduler", "DDIMStep"]
