"""Configuration of the Diffusion Policy (Chi et al., RSS 2023): denoiser, noise schedule, sampler.

Defaults follow the paper's CNN variant (down dims 256/512/1024, kernel 5, FiLM with scale,
100 training steps on the squared-cosine schedule, 10 DDIM steps at inference) and its
transformer variant (8 layers, 4 heads, width 256, causal self-attention). One deliberate
difference: actions here are mean/std normalised rather than scaled to [-1, 1], so the clean
estimate is clipped at +-5 standard deviations instead of +-1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

from ate_core.config import Problem, checked, in_range, one_of, positive
from ate_core.policy.common import ChunkingPolicyConfig
from ate_core.policy.diffusion.scheduler import BETA_SCHEDULES, PREDICTION_TYPES

__all__ = ["DiffusionConfig", "DENOISERS"]

DENOISERS = ("unet", "transformer")


def _positive_int(value: int) -> Optional[str]:
    return None if value > 0 else f"{value} must be > 0"


def _odd_positive(value: int) -> Optional[str]:
    # "same" padding (k // 2 on each side) keeps the sequence length only for odd kernels
    return None if value > 0 and value % 2 == 1 else f"{value} must be a positive odd number"


def _channel_list(value: Tuple[int, ...]) -> Optional[str]:
    if not value:
        return "must not be empty"
    bad = [v for v in value if v <= 0]
    return f"{bad[0]} must be > 0" if bad else None


@dataclass(frozen=True)
class DiffusionConfig(ChunkingPolicyConfig):
    """A chunking policy whose chunks come from a conditional DDPM, sampled with DDIM.

    The UNet halves the chunk ``len(unet_down_dims) - 1`` times; a ``horizon`` that is not a
    multiple of ``2 ** (len(unet_down_dims) - 1)`` is zero-padded at the end inside the
    network and cropped back, so every horizon works.
    """

    denoiser: str = checked("unet", check=one_of(*DENOISERS),
                            doc="unet (ConditionalUnet1D) or transformer (TransformerForDiffusion)")
    prediction_type: str = checked("epsilon", check=one_of(*PREDICTION_TYPES),
                                   doc="the network predicts the noise (epsilon) or the clean chunk (sample)")

    # noise schedule
    num_train_timesteps: int = checked(100, check=_positive_int)
    beta_schedule: str = checked("squaredcos_cap_v2", check=one_of(*BETA_SCHEDULES))
    beta_start: float = checked(1e-4, check=in_range(0.0, 1.0), doc="linear schedules only")
    beta_end: float = checked(0.02, check=in_range(0.0, 1.0), doc="linear schedules only")
    num_inference_steps: int = checked(10, check=_positive_int, doc="DDIM steps at inference")
    clip_sample: bool = True
    clip_sample_range: float = checked(5.0, check=positive,
                                       doc="clip the clean estimate to +-this many (normalised) std")

    # ConditionalUnet1D
    unet_down_dims: Tuple[int, ...] = checked((256, 512, 1024), check=_channel_list)
    unet_kernel_size: int = checked(5, check=_odd_positive)
    unet_n_groups: int = checked(8, check=_positive_int, doc="GroupNorm groups")
    step_embed_dim: int = checked(128, check=_positive_int, doc="diffusion step embedding width")
    film_scale_modulation: bool = True

    # TransformerForDiffusion
    tf_n_layers: int = checked(8, check=_positive_int)
    tf_n_heads: int = checked(4, check=_positive_int)
    tf_d_model: int = checked(256, check=_positive_int)
    tf_dropout: float = checked(0.1, check=in_range(0.0, 0.9))
    tf_causal_attn: bool = True

    def problems(self) -> Iterator[Problem]:
        yield from super().problems()
        if self.num_inference_steps > self.num_train_timesteps:
            yield ("num_inference_steps", f"{self.num_inference_steps} exceeds num_train_timesteps "
                                          f"{self.num_train_timesteps}")
        if self.beta_schedule != "squaredcos_cap_v2" and not 0.0 < self.beta_start < self.beta_end < 1.0:
            yield ("beta_end", f"{self.beta_schedule} needs 0 < beta_start < beta_end < 1, got "
                               f"{self.beta_start} and {self.beta_end}")
        for i, dim in enumerate(self.unet_down_dims):
            if dim % self.unet_n_groups:
                yield (f"unet_down_dims[{i}]", f"{dim} channels do not split into "
                                               f"unet_n_groups={self.unet_n_groups} groups")
        if self.tf_d_model % self.tf_n_heads:
            yield ("tf_d_model", f"{self.tf_d_model} is not divisible by tf_n_heads={self.tf_n_heads}")
