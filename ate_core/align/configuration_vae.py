"""Configuration of the action-chunk Info-VAE that ATE's alignment stage trains twice.

Defaults follow the official ATE VAE (an MLD-style motion VAE): one latent token of width 512,
four attention heads, feed-forward width 1024, no dropout, chunks of 50 unified 128-wide
actions. The official encoder stacks 9 skip-connected layers; a plain pre-norm stack of
``num_layers`` does the same job here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from ate_core.config import Problem, checked, in_range
from ate_core.data.spaces import UNIFIED_ACTION_WIDTH

__all__ = ["VAEConfig"]


def _positive_int(value: int) -> Optional[str]:
    return None if value > 0 else f"{value} must be > 0"


@dataclass(frozen=True)
class VAEConfig:
    """Shape of one action-chunk VAE.

    ``horizon`` and ``action_width`` must equal the policy's chunk length and unified width: the
    guidance encodes the policy's own noisy chunks. The latent of one chunk is
    ``latent_tokens x latent_dim`` values (``[1, 512]`` officially).
    """

    horizon: int = checked(50, check=_positive_int)
    action_width: int = checked(UNIFIED_ACTION_WIDTH, check=_positive_int)
    latent_dim: int = checked(512, check=_positive_int, doc="width of each latent token (= model width)")
    latent_tokens: int = checked(1, check=_positive_int)
    num_layers: int = checked(9, check=_positive_int, doc="encoder layers; the decoder has as many")
    num_heads: int = checked(4, check=_positive_int)
    ff_size: int = checked(1024, check=_positive_int)
    dropout: float = checked(0.0, check=in_range(0.0, 0.9))
    logvar_min: float = checked(-20.0, check=in_range(-50.0, 0.0), doc="posterior log-variance floor")
    logvar_max: float = checked(10.0, check=in_range(0.0, 20.0), doc="posterior log-variance ceiling")

    def problems(self) -> Iterator[Problem]:
        if self.latent_dim % self.num_heads:
            yield "num_heads", f"{self.num_heads} does not divide latent_dim {self.latent_dim}"

    @property
    def latent_size(self) -> int:
        """Number of latent values per chunk (tokens x width)."""
        return self.latent_tokens * self.latent_dim
