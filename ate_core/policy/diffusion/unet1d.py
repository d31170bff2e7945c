"""Diffusion Policy's ConditionalUnet1D: a 1-D temporal UNet over the action chunk, FiLM-conditioned.

The chunk is a sequence of ``horizon`` action vectors; channels are the action dims. Every
residual block is conditioned on one global vector, ``[diffusion step embedding ; observation
condition]``, through FiLM (Perez et al. 2018): a per-channel scale and bias, or a bias only when
``film_scale_modulation`` is off (Chi et al. 2023, sec. 3.3 and their ``conditional_unet1d.py``).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ate_core.policy.encoder import sinusoidal_embedding

__all__ = ["Conv1dBlock", "ConditionalResidualBlock1D", "ConditionalUnet1D"]


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, length preserving."""

    def __init__(self, cin: int, cout: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(cin, cout, kernel_size, padding=kernel_size // 2),
                                   nn.GroupNorm(n_groups, cout), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM between them, plus a (1x1-projected) residual."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel_size: int, n_groups: int,
                 film_scale: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Conv1dBlock(cin, cout, kernel_size, n_groups),
                                     Conv1dBlock(cout, cout, kernel_size, n_groups)])
        self.out_channels = cout
        self.film_scale = film_scale
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout if film_scale else cout))
        self.residual_conv: nn.Module = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.blocks[0](x)
        film = self.cond_encoder(cond).unsqueeze(-1)  # [B, C or 2C, 1]
        if self.film_scale:
            scale, bias = film[:, :self.out_channels], film[:, self.out_channels:]
            out = scale * out + bias
        else:
            out = out + film
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """``(x_t [B, H, W], t [B], global_cond [B, G]) -> [B, H, W]``.

    The down path runs two residual blocks per entry of ``down_dims`` and halves the length
    after each but the last; the up path mirrors it with skip connections. A length that is not
    a multiple of ``2 ** (len(down_dims) - 1)`` is zero-padded at the end and cropped back.
    """

    def __init__(self, input_dim: int, global_cond_dim: int, down_dims: Sequence[int] = (256, 512, 1024),
                 kernel_size: int = 5, n_groups: int = 8, step_embed_dim: int = 128,
                 film_scale: bool = True) -> None:
        super().__init__()
        self.step_embed_dim = step_embed_dim
        self.step_encoder = nn.Sequential(nn.Linear(step_embed_dim, 4 * step_embed_dim), nn.Mish(),
                                          nn.Linear(4 * step_embed_dim, step_embed_dim))
        cond_dim = step_embed_dim + global_cond_dim
        all_dims = [input_dim] + list(down_dims)
        in_out = list(zip(all_dims[:-1], all_dims[1:]))

        def block(cin: int, cout: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(cin, cout, cond_dim, kernel_size, n_groups, film_scale)

        self.down_modules = nn.ModuleList()
        for i, (cin, cout) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.down_modules.append(nn.ModuleList([
                block(cin, cout), block(cout, cout),
                nn.Identity() if last else nn.Conv1d(cout, cout, 3, 2, 1)]))
        mid = all_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.up_modules = nn.ModuleList()
        for cin, cout in reversed(in_out[1:]):
            self.up_modules.append(nn.ModuleList([
                block(2 * cout, cin), block(cin, cin), nn.ConvTranspose1d(cin, cin, 4, 2, 1)]))
        start = down_dims[0]
        self.final_conv = nn.Sequential(Conv1dBlock(start, start, kernel_size, n_groups),
                                        nn.Conv1d(start, input_dim, 1))
        self.length_multiple = 2 ** (len(in_out) - 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        horizon = x_t.shape[1]
        pad = -horizon % self.length_multiple
        x = x_t.transpose(1, 2)  # [B, W, H]: action dims are the channels
        if pad:
            x = F.pad(x, (0, pad))
        t = t.reshape(-1).expand(x.shape[0])  # one timestep for all, or one per sample
        step = self.step_encoder(sinusoidal_embedding(t, self.step_embed_dim).to(x.dtype))
        cond = torch.cat([step, global_cond.to(x.dtype)], dim=-1)
        skips: List[torch.Tensor] = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for res in self.mid_modules:
            x = res(x, cond)
        for res1, res2, up in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(res2(res1(x, cond), cond))
        x = self.final_conv(x)
        return x[..., :horizon].transpose(1, 2)
