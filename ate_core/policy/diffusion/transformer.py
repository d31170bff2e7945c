"""Diffusion Policy's transformer denoiser (TransformerForDiffusion, Chi et al. 2023, sec. 3.2).

Action tokens (one per chunk step) are decoded by a pre-norm ``nn.TransformerDecoder`` whose
cross-attention reads a memory of ``[diffusion-step token ; observation tokens]``. The memory goes
through a small MLP first (the original's ``n_cond_layers = 0`` case). With ``causal_attn`` each
action token attends only to itself and earlier ones, which the paper found to help; every action
token sees the whole memory (the observation tokens here are per camera and step, not aligned
with chunk steps, so the original's memory mask has no counterpart).
"""

from __future__ import annotations

import torch
from torch import nn

from ate_core.policy.encoder import sinusoidal_embedding

__all__ = ["TransformerForDiffusion"]


class TransformerForDiffusion(nn.Module):
    """``(x_t [B, H, W], t [B], obs_tokens [B, N, d_obs]) -> [B, H, W]``."""

    def __init__(self, input_dim: int, horizon: int, n_obs_tokens: int, obs_dim: int, d_model: int = 256,
                 n_layers: int = 8, n_heads: int = 4, dropout: float = 0.1, causal_attn: bool = True) -> None:
        super().__init__()
        self.d_model = d_model
        self.horizon = horizon
        self.input_emb = nn.Linear(input_dim, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, d_model))
        self.obs_proj: nn.Module = nn.Identity() if obs_dim == d_model else nn.Linear(obs_dim, d_model)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, 1 + n_obs_tokens, d_model))
        self.drop = nn.Dropout(dropout)
        self.cond_encoder = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.Mish(),
                                          nn.Linear(4 * d_model, d_model))
        layer = nn.TransformerDecoderLayer(d_model, n_heads, dim_feedforward=4 * d_model, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers=n_layers)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, input_dim)
        self.causal_attn = causal_attn
        if causal_attn:
            mask = torch.triu(torch.full((horizon, horizon), float("-inf")), diagonal=1)
            self.register_buffer("causal_mask", mask, persistent=False)
        else:
            self.causal_mask = None
        self.apply(self._init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cond_pos_emb, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2 style initialisation, as the original TransformerForDiffusion
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                weight = getattr(module, name)
                if weight is not None:
                    nn.init.normal_(weight, std=0.02)
            for name in ("in_proj_bias", "bias_k", "bias_v"):
                bias = getattr(module, name)
                if bias is not None:
                    nn.init.zeros_(bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, obs_tokens: torch.Tensor) -> torch.Tensor:
        b, h = x_t.shape[:2]
        if h != self.horizon:
            raise ValueError(f"chunk has {h} steps; the transformer was built for horizon {self.horizon}")
        t = t.reshape(-1).expand(b)
        time_token = sinusoidal_embedding(t, self.d_model).to(x_t.dtype)[:, None, :]
        memory = torch.cat([time_token, self.obs_proj(obs_tokens.to(x_t.dtype))], dim=1)
        memory = self.cond_encoder(self.drop(memory + self.cond_pos_emb))
        x = self.drop(self.input_emb(x_t) + self.pos_emb)
        x = self.decoder(tgt=x, memory=memory, tgt_mask=self.causal_mask, tgt_is_causal=self.causal_attn)
        return self.head(self.ln_f(x))
