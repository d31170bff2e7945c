"""Exponential moving average of a policy's weights, on Diffusion Policy's schedule.

Diffusion Policy (Chi et al., 2023) evaluates the EMA weights, not the raw ones; its
``EMAModel`` warms the decay up as 1 - (1 + step / inv_gamma) ** -power (power 3/4 from
Karras et al.'s "power function" EMA), so early averages are not dominated by the random init.
Parameters that do not train (frozen batch norm, frozen backbones) and all buffers are copied,
not averaged, so the averaged model always runs the same statistics as the raw one.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["EMAModel", "ema_decay"]


def ema_decay(step: int, *, update_after_step: int = 0, inv_gamma: float = 1.0,
              power: float = 0.75, min_value: float = 0.0, max_value: float = 0.9999) -> float:
    """The decay used at optimisation step ``step`` (0-based count of updates so far)."""
    s = max(0, step - update_after_step - 1)
    if s <= 0:
        return 0.0
    value = 1.0 - (1.0 + s / inv_gamma) ** -power
    return max(min_value, min(value, max_value))


class EMAModel:
    """Owns an averaged copy of ``model``; :meth:`step` folds the model's current weights in."""

    def __init__(self, model: nn.Module, *, update_after_step: int = 0, inv_gamma: float = 1.0,
                 power: float = 0.75, min_value: float = 0.0, max_value: float = 0.9999) -> None:
        self.averaged_model = copy.deepcopy(model)
        self.averaged_model.eval()
        self.averaged_model.requires_grad_(False)
        self.update_after_step = update_after_step
        self.inv_gamma = inv_gamma
        self.power = power
        self.min_value = min_value
        self.max_value = max_value
        self.optimization_step = 0
        self.decay = 0.0
        self._pairs: Optional[Tuple[int, List[torch.Tensor], List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]] = None

    def get_decay(self, step: int) -> float:
        return ema_decay(step, update_after_step=self.update_after_step, inv_gamma=self.inv_gamma,
                         power=self.power, min_value=self.min_value, max_value=self.max_value)

    def _match(self, model: nn.Module) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """(averaged, their sources, copied, their sources), matched by name once per model."""
        if self._pairs is None or self._pairs[0] != id(model):
            params = dict(model.named_parameters())
            buffers = dict(model.named_buffers())
            averaged, current, copied, sources = [], [], [], []
            for name, ema_param in self.averaged_model.named_parameters():
                if params[name].requires_grad:
                    averaged.append(ema_param)
                    current.append(params[name])
                else:
                    copied.append(ema_param)
                    sources.append(params[name])
            for name, ema_buffer in self.averaged_model.named_buffers():
                copied.append(ema_buffer)
                sources.append(buffers[name])
            self._pairs = (id(model), averaged, current, copied, sources)
        return self._pairs[1:]

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        self.decay = self.get_decay(self.optimization_step)
        averaged, current, copied, sources = self._match(model)
        if averaged:
            # ema <- decay * ema + (1 - decay) * param, as Diffusion Policy's EMAModel, batched.
            torch._foreach_mul_(averaged, self.decay)
            torch._foreach_add_(averaged, [p.detach().to(e.dtype) for e, p in zip(averaged, current)],
                                alpha=1.0 - self.decay)
        for dst, src in zip(copied, sources):
            dst.copy_(src.detach())
        self.optimization_step += 1

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.averaged_model.state_dict()

    def load_state_dict(self, state: Dict[str, torch.Tensor], optimization_step: int) -> None:
        self.averaged_model.load_state_dict(state, strict=True)
        self.optimization_step = int(optimization_step)
