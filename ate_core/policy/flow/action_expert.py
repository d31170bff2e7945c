"""pi0's action expert: a transformer over [prefix tokens ; action tokens] with block-causal attention.

The prefix (here the observation encoder's tokens, in pi0 PaliGemma's image and text tokens)
attends only to itself; the ``horizon`` action tokens attend to the prefix and to each other.
So the prefix's keys and values at every layer depend on the observation alone, not on the flow
time tau or the noisy chunk x_tau: :meth:`ActionExpert.prefix_cache` computes them once per
observation and :meth:`ActionExpert.velocity` reuses them at every integration step, which is
what makes 10 Euler steps cost little more than one encoder pass (openpi's ``sample_actions``
fills a KV cache with the prefix the same way). :meth:`ActionExpert.forward` is the single
masked pass over the whole sequence, the definition the cached path must reproduce.

Action tokens follow pi0: ``Linear(x_tau)`` concatenated with a sinusoidal embedding of tau
(periods ``min_period`` .. ``max_period``), through a two-layer MLP with swish; learned positions
stand in for the RoPE that Gemma applies inside attention. Unlike pi0, whose prefix runs through
the VLM's own weights, one set of weights serves both streams here: the prefix is a handful of
encoder tokens, not a 2B-parameter model's sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ActionExpert", "PrefixCache", "flow_time_embedding", "block_causal_mask"]


def flow_time_embedding(tau: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """pi0's ``posemb_sincos``: ``[B] -> [B, dim]``, periods spaced geometrically in [min, max].

    Short periods resolve small differences in tau near 0, where the velocity field of a
    straight path changes fastest relative to the sample.
    """
    half = dim // 2
    fraction = torch.linspace(0.0, 1.0, half, dtype=torch.float64)  # on the CPU: not every device has float64
    period = min_period * (max_period / min_period) ** fraction
    scale = (2.0 * math.pi / period).to(device=tau.device, dtype=torch.float32)
    args = tau.to(torch.float32)[:, None] * scale[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def block_causal_mask(n_prefix: int, n_actions: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """``[P + A, P + A]`` bool, True where a query row may attend to a key column.

    Prefix rows see the prefix only; action rows see everything (pi0's ``ar_mask``: the first
    action token opens a new causal block, the rest share it).
    """
    n = n_prefix + n_actions
    mask = torch.ones(n, n, dtype=torch.bool, device=device)
    mask[:n_prefix, n_prefix:] = False
    return mask


@dataclass(frozen=True)
class PrefixCache:
    """Per-layer keys and values of the prefix tokens, each ``[B, heads, P, head_dim]``."""

    keys: Tuple[torch.Tensor, ...]
    values: Tuple[torch.Tensor, ...]

    @property
    def batch_size(self) -> int:
        return int(self.keys[0].shape[0])

    @property
    def n_prefix(self) -> int:
        return int(self.keys[0].shape[2])


class ExpertBlock(nn.Module):
    """Pre-norm transformer block whose attention inputs can come from a cache."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.RMSNorm(d_model, eps=1e-6)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.RMSNorm(d_model, eps=1e-6)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, d_model))
        self.dropout = nn.Dropout(dropout)

    def project(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values ``[B, heads, T, head_dim]`` of tokens ``h`` ``[B, T, d]``."""
        b, t, d = h.shape
        qkv = self.qkv(self.norm1(h)).view(b, t, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def finish(self, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The residual updates of ``h`` given its queries and the keys/values it attends to."""
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        a = a.transpose(1, 2).reshape(h.shape)
        h = h + self.dropout(self.out(a))
        return h + self.dropout(self.mlp(self.norm2(h)))


class ActionExpert(nn.Module):
    """Flow velocity ``v(x_tau, tau | prefix)`` for a chunk ``[B, horizon, action_width]``."""

    def __init__(self, *, prefix_dim: int, action_width: int, horizon: int, d_model: int,
                 n_layers: int, n_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 min_period: float = 4e-3, max_period: float = 4.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"{n_heads} heads do not divide d_model {d_model}")
        self.horizon = horizon
        self.action_width = action_width
        self.d_model = d_model
        self.min_period = min_period
        self.max_period = max_period
        self.prefix_proj: nn.Module = nn.Identity() if prefix_dim == d_model else nn.Linear(prefix_dim, d_model)
        self.action_in = nn.Linear(action_width, d_model)
        self.action_time_in = nn.Linear(2 * d_model, d_model)
        self.action_time_out = nn.Linear(d_model, d_model)
        self.action_pos = nn.Parameter(torch.zeros(horizon, d_model))
        self.blocks = nn.ModuleList([ExpertBlock(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers)])
        self.final_norm = nn.RMSNorm(d_model, eps=1e-6)
        self.action_out = nn.Linear(d_model, action_width)
        self.apply(self._init)
        nn.init.normal_(self.action_pos, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    # -------------------------------------------------------------------------------- tokens

    def action_tokens(self, x_tau: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``[B, H, W]`` noisy chunk and ``[B]`` times -> ``[B, H, d]`` (pi0's action-time MLP)."""
        if x_tau.shape[1:] != (self.horizon, self.action_width):
            raise ValueError(f"x_tau has shape {tuple(x_tau.shape)}, expected "
                             f"[B, {self.horizon}, {self.action_width}]")
        b = x_tau.shape[0]
        tau = tau.reshape(-1).expand(b) if tau.numel() == 1 else tau.reshape(b)
        a = self.action_in(x_tau)
        t = flow_time_embedding(tau, self.d_model, self.min_period, self.max_period).to(a.dtype)
        h = torch.cat([a, t[:, None, :].expand_as(a)], dim=-1)
        h = self.action_time_out(F.silu(self.action_time_in(h)))
        return h + self.action_pos

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.action_out(self.final_norm(h))

    # -------------------------------------------------------------------------------- passes

    def forward(self, prefix: torch.Tensor, x_tau: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """One pass over [prefix ; actions] with the block-causal mask: ``[B, H, W]`` velocity."""
        p = self.prefix_proj(prefix)
        a = self.action_tokens(x_tau, tau)
        n_prefix = p.shape[1]
        mask = block_causal_mask(n_prefix, a.shape[1], device=a.device)
        h = torch.cat([p, a], dim=1)
        for block in self.blocks:
            q, k, v = block.project(h)
            h = block.finish(h, q, k, v, attn_mask=mask)
        return self._head(h[:, n_prefix:])

    def prefix_cache(self, prefix: torch.Tensor) -> PrefixCache:
        """Every layer's prefix keys/values ``[B, heads, P, head_dim]``, computed once per observation."""
        h = self.prefix_proj(prefix)
        keys: List[torch.Tensor] = []
        values: List[torch.Tensor] = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            q, k, v = block.project(h)
            keys.append(k)
            values.append(v)
            if i < last:  # the last layer's prefix outputs feed nothing
                h = block.finish(h, q, k, v)
        return PrefixCache(tuple(keys), tuple(values))

    def velocity(self, cache: PrefixCache, x_tau: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The action tokens' pass against a :class:`PrefixCache`: equal to :meth:`forward`."""
        if cache.batch_size != x_tau.shape[0]:
            raise ValueError(f"prefix cache holds {cache.batch_size} observations, x_tau {x_tau.shape[0]}")
        h = self.action_tokens(x_tau, tau)
        for block, pk, pv in zip(self.blocks, cache.keys, cache.values):
            q, k, v = block.project(h)
            h = block.finish(h, q, torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2))
        return self._head(h)
