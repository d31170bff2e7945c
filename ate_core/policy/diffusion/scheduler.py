"""DDPM noise schedule and the deterministic DDIM sampler (Ho et al. 2020; Song et al. 2021).

The same formulas as diffusers' ``DDPMScheduler`` (training noise) and ``DDIMScheduler``
with its defaults (``timestep_spacing="leading"``, ``steps_offset=0``, ``eta=0``,
``set_alpha_to_one=True``, ``use_clipped_model_output=False``), which is what Diffusion Policy
and LeRobot run, so weights trained against either schedule sample the same way here.

The tables are built once in float64 on the CPU; :meth:`DDIMScheduler.alpha_bar` hands them out
on the caller's device and dtype (cached), so the scheduler never needs ``.to(device)``.
"""

from __future__ import annotations

import math
from typing import Dict, NamedTuple, Tuple, Union

import torch

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "make_betas",
    "DDIMStep",
    "DDIMScheduler",
]

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "sample")

Timestep = Union[int, torch.Tensor]


def _cosine_alpha_bar(s: float) -> float:
    # Nichol & Dhariwal 2021, eq. 17, with their offset 0.008 (diffusers' "cosine" transform).
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def make_betas(schedule: str, num_train_timesteps: int, beta_start: float = 1e-4,
               beta_end: float = 0.02, max_beta: float = 0.999) -> torch.Tensor:
    """Per-step noise variances ``[N]`` (float64) for one of :data:`BETA_SCHEDULES`.

    ``squaredcos_cap_v2`` is the cosine schedule: ``beta_i = 1 - abar((i+1)/N) / abar(i/N)``
    capped at ``max_beta`` (0.999, so the last step is not pure noise by a division by ~0).
    ``beta_start``/``beta_end`` apply to the linear schedules only.
    """
    n = int(num_train_timesteps)
    if n < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {n}")
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if schedule == "scaled_linear":  # latent-diffusion's schedule: linear in sqrt(beta)
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2
    if schedule == "squaredcos_cap_v2":
        betas = [min(1.0 - _cosine_alpha_bar((i + 1) / n) / _cosine_alpha_bar(i / n), max_beta)
                 for i in range(n)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {schedule!r} (expected one of {list(BETA_SCHEDULES)})")


class DDIMStep(NamedTuple):
    """One DDIM update: the less noisy sample and the clean-chunk estimate it was built from."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` (or scalar) -> broadcastable against ``like`` ``[B, ...]``."""
    return values.reshape(values.shape + (1,) * (like.dim() - values.dim()))


class DDIMScheduler:
    """The forward noising process and the eta = 0 DDIM reverse step.

    ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with ``abar_t = prod_{i<=t} (1 - beta_i)``.
    A network predicts either ``eps`` (``"epsilon"``) or ``x_0`` (``"sample"``); both become an
    ``x_0`` estimate (clipped to ``+-clip_sample_range`` when ``clip_sample``) and an ``eps``
    estimate, and DDIM moves to ``x_prev = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev) eps``.
    Below step 0 the signal level is 1 (``set_alpha_to_one``), so the last step returns the
    clean estimate itself.
    """

    def __init__(self, num_train_timesteps: int = 100, beta_schedule: str = "squaredcos_cap_v2",
                 beta_start: float = 1e-4, beta_end: float = 0.02, clip_sample: bool = True,
                 clip_sample_range: float = 1.0, set_alpha_to_one: bool = True) -> None:
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = beta_schedule
        self.clip_sample = bool(clip_sample)
        self.clip_sample_range = float(clip_sample_range)
        self.betas = make_betas(beta_schedule, self.num_train_timesteps, beta_start, beta_end)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])
        # index 0 holds the level "below step 0", so alpha_bar(-1) needs no special case
        self._table = torch.cat([torch.tensor([self.final_alpha_cumprod], dtype=torch.float64),
                                 self.alphas_cumprod])
        self._cache: Dict[Tuple[torch.device, torch.dtype], torch.Tensor] = {}

    # ------------------------------------------------------------------------- noise levels

    def _table_on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (torch.device(device), dtype)
        table = self._cache.get(key)
        if table is None:
            table = self._table.to(device=device, dtype=dtype)
            self._cache[key] = table
        return table

    def alpha_bar(self, t: Timestep, *, device: Union[torch.device, str] = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``abar_t`` for integer timestep(s) ``t`` (a negative ``t`` is the final level).

        A tensor ``t`` keeps its device; an int gets ``device``.
        """
        if isinstance(t, torch.Tensor):
            device = t.device
            index = t.long()
        else:
            index = torch.tensor(int(t), device=device)
        return self._table_on(device, dtype)[index.clamp(min=-1) + 1]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t`` for clean samples ``x0 [B, ...]``, noise of the same shape and ``t [B]``."""
        abar = _per_sample(self.alpha_bar(t.to(x0.device), dtype=x0.dtype), x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, prediction_type: str) -> torch.Tensor:
        """What a network of ``prediction_type`` regresses for this ``(x0, noise)`` pair."""
        _check_prediction_type(prediction_type)
        return noise if prediction_type == "epsilon" else x0

    # ------------------------------------------------------------------------- sampling

    def timesteps(self, num_inference_steps: int, device: Union[torch.device, str] = "cpu") -> torch.Tensor:
        """The DDIM timesteps, noisiest first, with "leading" spacing.

        ``k * (N // n)`` for ``k = n-1 .. 0``: for N = 100 and n = 10 that is 90, 80, ..., 0
        (diffusers' DDIMScheduler default; the first step is not the noisiest trained level).
        """
        n = self._check_steps(num_inference_steps)
        ratio = self.num_train_timesteps // n
        return (torch.arange(n - 1, -1, -1, device=device) * ratio).long()

    def prev_timestep(self, t: Timestep, num_inference_steps: int) -> Timestep:
        """The timestep DDIM moves to from ``t`` (negative after the last step)."""
        return t - self.num_train_timesteps // self._check_steps(num_inference_steps)

    def split(self, model_output: torch.Tensor, t: Timestep, x_t: torch.Tensor,
              prediction_type: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)`` implied by a network output at ``(x_t, t)`` (no clipping)."""
        _check_prediction_type(prediction_type)
        abar = _per_sample(self._abar_like(t, x_t), x_t)
        if prediction_type == "epsilon":
            eps = model_output
            x0 = (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()
        else:
            x0 = model_output
            eps = (x_t - abar.sqrt() * x0) / (1.0 - abar).sqrt()
        return x0, eps

    def step(self, model_output: torch.Tensor, t: Timestep, x_t: torch.Tensor,
             prediction_type: str = "epsilon", *, num_inference_steps: int) -> DDIMStep:
        """One deterministic DDIM update from ``x_t`` at timestep ``t`` (int or ``[B]``).

        As in diffusers, the clipped ``x_0`` estimate enters the update but the ``eps``
        estimate is the unclipped one (``use_clipped_model_output=False``).
        """
        x0, eps = self.split(model_output, t, x_t, prediction_type)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        prev = self.prev_timestep(t, num_inference_steps)
        abar_prev = _per_sample(self._abar_like(prev, x_t), x_t)
        x_prev = abar_prev.sqrt() * x0 + (1.0 - abar_prev).sqrt() * eps
        return DDIMStep(x_prev, x0)

    # ------------------------------------------------------------------------- helpers

    def _abar_like(self, t: Timestep, like: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.Tensor):
            t = t.to(like.device)
        return self.alpha_bar(t, device=like.device, dtype=like.dtype)

    def _check_steps(self, num_inference_steps: int) -> int:
        n = int(num_inference_steps)
        if not 1 <= n <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {n}")
        return n


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {list(PREDICTION_TYPES)}")
