"""The action-chunk Info-VAE: a transformer encoder with distribution tokens, a Gaussian
posterior, and a transformer decoder back to the chunk.

Encoder (MLD's motion VAE, as in ATE): the chunk's ``H`` unified action vectors are embedded as
tokens; ``2 L`` learned *distribution tokens* are put in front; after the transformer the first
``L`` outputs give the posterior mean and the next ``L`` its log-variance, so ``q(z | a)`` is a
diagonal Gaussian over ``L x d`` values. Decoder: ``H`` learned step queries cross-attend to
the ``L`` latent tokens and are projected back to the unified width.

Padded slots (``action_mask`` False) are multiplied by zero on the way in and set to zero on
the way out, so they carry no information, no reconstruction error and no gradient (the
guidance's gradient w.r.t. a chunk is therefore zero there by construction). The mask itself is
embedded and added to every token: the same network encodes several embodiments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ate_core.align.configuration_vae import VAEConfig

__all__ = ["Posterior", "VAEOutput", "ActionChunkVAE"]


@dataclass(frozen=True)
class Posterior:
    """A diagonal Gaussian ``N(mean, std^2)`` over latents ``[B, L, d]``."""

    mean: torch.Tensor
    std: torch.Tensor

    def sample(self, noise: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Reparameterised ``mean + std * noise`` (noise drawn when not given)."""
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device,
                                dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def flat(self) -> "Posterior":
        """The same distribution over ``[B, L * d]``."""
        return Posterior(self.mean.flatten(1), self.std.flatten(1))


@dataclass(frozen=True)
class VAEOutput:
    reconstruction: torch.Tensor  # [B, H, W], zero in padded slots
    posterior: Posterior
    z: torch.Tensor               # the latent the decoder saw [B, L, d]


def _check_chunk(actions: torch.Tensor, action_mask: torch.Tensor, cfg: VAEConfig) -> None:
    if actions.dim() != 3 or tuple(actions.shape[1:]) != (cfg.horizon, cfg.action_width):
        raise ValueError(f"action chunk has shape {tuple(actions.shape)}; the VAE expects "
                         f"[B, {cfg.horizon}, {cfg.action_width}] (horizon x unified width)")
    if tuple(action_mask.shape) != (actions.shape[0], cfg.action_width):
        raise ValueError(f"action mask has shape {tuple(action_mask.shape)}; expected "
                         f"[{actions.shape[0]}, {cfg.action_width}]")


class ActionChunkVAE(nn.Module):
    """``encode(a, mask) -> Posterior``, ``decode(z, mask) -> a``; see the module docstring."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        d, L, H = config.latent_dim, config.latent_tokens, config.horizon
        self.action_embedding = nn.Linear(config.action_width, d)
        self.mask_embedding = nn.Linear(config.action_width, d, bias=False)
        self.distribution_tokens = nn.Parameter(torch.randn(2 * L, d) * 0.02)
        self.encoder_pos = nn.Parameter(torch.randn(2 * L + H, d) * 0.02)
        enc_layer = nn.TransformerEncoderLayer(d, config.num_heads, config.ff_size, config.dropout,
                                               activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(enc_layer, config.num_layers, norm=nn.LayerNorm(d),
                                             enable_nested_tensor=False)
        self.mean_head = nn.Linear(d, d)
        self.logvar_head = nn.Linear(d, d)
        self.latent_pos = nn.Parameter(torch.randn(L, d) * 0.02)
        self.step_queries = nn.Parameter(torch.randn(H, d) * 0.02)
        dec_layer = nn.TransformerDecoderLayer(d, config.num_heads, config.ff_size, config.dropout,
                                               activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(dec_layer, config.num_layers, norm=nn.LayerNorm(d))
        self.output = nn.Linear(d, config.action_width)

    def _mask_token(self, action_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mask_embedding(action_mask.to(dtype))[:, None, :]

    def encode(self, actions: torch.Tensor, action_mask: torch.Tensor) -> Posterior:
        """``q(z | a)`` for normalised unified chunks ``[B, H, W]`` with real slots ``[B, W]``."""
        cfg = self.config
        _check_chunk(actions, action_mask, cfg)
        keep = action_mask.to(actions.dtype)[:, None, :]
        tokens = self.action_embedding(actions * keep)
        b = actions.shape[0]
        dist = self.distribution_tokens[None].expand(b, -1, -1)
        x = torch.cat([dist, tokens], dim=1) + self.encoder_pos + self._mask_token(action_mask, actions.dtype)
        out = self.encoder(x)[:, : 2 * cfg.latent_tokens]
        mean = self.mean_head(out[:, : cfg.latent_tokens])
        logvar = self.logvar_head(out[:, cfg.latent_tokens:]).clamp(cfg.logvar_min, cfg.logvar_max)
        return Posterior(mean, torch.exp(0.5 * logvar))

    def decode(self, z: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
        """The chunk ``[B, H, W]`` a latent ``[B, L, d]`` stands for (padded slots zero)."""
        b = z.shape[0]
        queries = self.step_queries[None].expand(b, -1, -1) + self._mask_token(action_mask, z.dtype)
        out = self.output(self.decoder(tgt=queries, memory=z + self.latent_pos))
        return out * action_mask.to(out.dtype)[:, None, :]

    def forward(self, actions: torch.Tensor, action_mask: torch.Tensor, *,
                noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> VAEOutput:
        posterior = self.encode(actions, action_mask)
        z = posterior.sample(noise, generator)
        return VAEOutput(self.decode(z, action_mask), posterior, z)
