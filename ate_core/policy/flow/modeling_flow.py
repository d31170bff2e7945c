r"""A pi0-style flow-matching policy: observation tokens as the prefix, an action expert, Euler sampling.

Convention (pi0 / openpi, Black et al. 2024, Sec. 3): a demonstrated chunk ``a`` (normalised,
unified, ``[B, H, W]``) and Gaussian noise ``eps`` are joined by the straight path

    x_tau = tau * eps + (1 - tau) * a,        tau in [0, 1]   (tau = 1: noise, tau = 0: data)

whose velocity is constant along the path,

    u = d x_tau / d tau = eps - a.

Training regresses the network ``v(x_tau, tau, obs)`` on ``u`` (the flow-matching loss
``|| v - u ||^2`` over real slots and real steps), with ``tau ~ Beta(1.5, 1) * 0.999 + 0.001``
so that noisier times, where the field is hardest to learn, are drawn more often. Sampling
starts from ``x_1 = eps`` and integrates the ODE backwards with ``num_steps`` Euler steps,

    x_{tau + dt} = x_tau + dt * v(x_tau, tau, obs),    dt = -1 / num_steps,

at ``tau = 1, 1 - 1/n, ..., 1/n``, ending at ``tau = 0``. Since the steps sum to ``-1``, a
constant ``c`` added to every step's velocity moves the sample by exactly ``-c``; and the exact
velocity of the straight path to a chunk ``a*``, ``(x_tau - a*) / tau``, lands on ``a*``.

In :class:`~ate_core.policy.base.TrainingTerms` and :class:`~ate_core.policy.base.DenoiseStep`
``t`` is tau (``[B]``), ``alpha_bar`` is None and ``kind`` is ``"velocity"``. Guidance from
outside steers through ``step_hook`` (a replacement velocity per step) or differentiates
:meth:`FlowPolicy.predict` with respect to ``x_tau``.

Padded slots: the expert sees ``x_tau`` with padded slots zeroed and predicts 0 there, so the
values a sampler leaves in those slots never reach the network; the returned chunk holds 0 in
them, and the loss weight excludes them (and padded steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ate_core.policy.base import Batch, DenoiseStep, Observation, Policy, StepHook, TrainingTerms
from ate_core.policy.encoder import ObservationEncoder
from ate_core.policy.flow.action_expert import ActionExpert, PrefixCache
from ate_core.policy.flow.configuration_flow import FlowConfig

__all__ = ["FlowPolicy", "FlowCondition", "sample_beta"]

#: pi0 keeps tau away from 0, where the straight-path velocity (x_tau - a) / tau is singular.
TAU_FLOOR = 0.001


@dataclass(frozen=True)
class FlowCondition:
    """Everything one observation contributes to every integration step, computed once.

    ``tokens``: the encoder's tokens ``[B, n_tokens, encoder d_model]``; ``prefix``: the action
    expert's per-layer keys/values of them; ``action_mask``: bool ``[B, W]`` real slots.
    """

    tokens: torch.Tensor
    prefix: PrefixCache
    action_mask: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])


def _uniform(shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _normal(shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device,
            dtype: torch.dtype) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _sample_gamma(shape_k: float, n: int, generator: Optional[torch.Generator],
                  device: torch.device) -> torch.Tensor:
    """Gamma(k, 1) by Marsaglia & Tsang (2000), drawing only through ``generator``.

    torch's own Gamma/Beta samplers take no generator, and a seeded batch must be reproducible.
    """
    boost = shape_k < 1.0  # Gamma(k) = Gamma(k + 1) * U^(1/k)
    d = (shape_k + 1.0 if boost else shape_k) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    while pending.numel():  # acceptance >= 95 % per round
        m = pending.numel()
        x = _normal((m,), generator, device, torch.float64)
        u = _uniform((m,), generator, device, torch.float64)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[pending[ok]] = (d * v)[ok]
        pending = pending[~ok]
    if boost:
        out = out * _uniform((n,), generator, device, torch.float64) ** (1.0 / shape_k)
    return out


def sample_beta(alpha: float, beta: float, n: int, *, generator: Optional[torch.Generator] = None,
                device: Union[torch.device, str] = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` draws from Beta(alpha, beta), reproducible under ``generator``.

    Beta(alpha, 1) (pi0's case) is ``U^(1/alpha)`` by inverting its CDF ``x^alpha``; other shapes
    go through two Gamma draws.
    """
    device = torch.device(device)
    if beta == 1.0:
        out = _uniform((n,), generator, device, torch.float64) ** (1.0 / alpha)
    elif alpha == 1.0:
        out = 1.0 - _uniform((n,), generator, device, torch.float64) ** (1.0 / beta)
    else:
        x = _sample_gamma(alpha, n, generator, device)
        y = _sample_gamma(beta, n, generator, device)
        out = x / (x + y)
    return out.to(dtype)


class _CachedVelocity(nn.Module):
    """``expert.velocity`` with the prefix cache passed as tuples of tensors."""

    def __init__(self, expert: ActionExpert) -> None:
        super().__init__()
        self.expert = expert

    def forward(self, x_tau: torch.Tensor, tau: torch.Tensor, keys: Tuple[torch.Tensor, ...],
                values: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.expert.velocity(PrefixCache(tuple(keys), tuple(values)), x_tau, tau)


class FlowPolicy(Policy):
    """Observation encoder + action expert, trained by flow matching, sampled by Euler steps."""

    policy_type = "flow"

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ObservationEncoder(config.encoder, cameras=config.cameras, n_obs_steps=config.n_obs_steps,
                                          image_size=config.image_size, state_width=config.state_width,
                                          env_state_dim=config.env_state_dim)
        self.expert = ActionExpert(prefix_dim=self.encoder.d_model, action_width=config.action_width,
                                   horizon=config.horizon, d_model=config.expert_d_model,
                                   n_layers=config.expert_n_layers, n_heads=config.expert_n_heads,
                                   mlp_ratio=config.expert_mlp_ratio, dropout=config.dropout,
                                   min_period=config.min_period, max_period=config.max_period)

    # ------------------------------------------------------------------------------- helpers

    def _dtype(self) -> torch.dtype:
        return self.expert.action_pos.dtype

    def _check_mask(self, mask: torch.Tensor, batch_size: int, what: str) -> torch.Tensor:
        expected = (batch_size, self.config.action_width)
        if tuple(mask.shape) != expected:
            raise ValueError(f"{what} has shape {tuple(mask.shape)}, expected {list(expected)}")
        return mask.to(torch.bool)

    def sample_tau(self, batch_size: int, *, generator: Optional[torch.Generator] = None,
                   device: Union[torch.device, str] = "cpu") -> torch.Tensor:
        """Training flow times ``[B]``: Beta(alpha, beta) * (1 - floor) + floor, as pi0 draws them."""
        cfg = self.config
        beta = sample_beta(cfg.time_beta_alpha, cfg.time_beta_beta, batch_size, generator=generator,
                           device=device, dtype=self._dtype())
        return beta * (1.0 - TAU_FLOOR) + TAU_FLOOR

    @staticmethod
    def _real_slots(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` with padded slots exactly 0 (whatever they held, inf and nan included)."""
        return torch.where(mask[:, None, :], x, torch.zeros((), device=x.device, dtype=x.dtype))

    # ------------------------------------------------------------------------ guidance surface

    def encode(self, obs: Observation, action_mask: Optional[torch.Tensor] = None) -> FlowCondition:
        """Run the encoder once and cache the expert's prefix keys/values (differentiable).

        ``action_mask`` (bool ``[B, W]``) defaults to ``obs.state_mask``, the embodiment's slots.
        """
        mask = obs.state_mask if action_mask is None else action_mask
        mask = self._check_mask(mask, obs.batch_size, "action mask")
        tokens = self.encoder(obs)
        return FlowCondition(tokens=tokens, prefix=self.expert.prefix_cache(tokens),
                             action_mask=mask.to(tokens.device))

    def predict(self, x_tau: torch.Tensor, tau: Union[torch.Tensor, float], cond: FlowCondition) -> torch.Tensor:
        """The velocity ``v(x_tau, tau, obs)`` ``[B, H, W]``; autograd flows to ``x_tau`` and ``tau``.

        ``tau`` is ``[B]`` or one number for the whole batch. Padded slots of ``x_tau`` are not
        seen and the velocity there is 0.
        """
        if not torch.is_tensor(tau):
            tau = torch.full((x_tau.shape[0],), float(tau), device=x_tau.device, dtype=x_tau.dtype)
        x_in = self._real_slots(x_tau, cond.action_mask)
        if self.inference_trace is None:
            v = self.expert.velocity(cond.prefix, x_in, tau)
        else:
            v = self._step_network(self._velocity_step(), x_in, tau, cond.prefix.keys, cond.prefix.values)
        return self._real_slots(v, cond.action_mask)

    def _velocity_step(self) -> nn.Module:
        """:meth:`ActionExpert.velocity` as a module of tensors (what a trace takes). Kept out of
        the module tree (``__dict__``): its parameters are the expert's, saved once."""
        step = self.__dict__.get("_velocity_module")
        if step is None or step.expert is not self.expert:
            step = self.__dict__["_velocity_module"] = _CachedVelocity(self.expert)
        return step

    # -------------------------------------------------------------------------------- training

    def training_terms(self, batch: Batch, *, generator: Optional[torch.Generator] = None) -> TrainingTerms:
        cfg = self.config
        a = batch.action.to(self._dtype())
        expected = (batch.batch_size, cfg.horizon, cfg.action_width)
        if tuple(a.shape) != expected:
            raise ValueError(f"batch.action has shape {tuple(a.shape)}, expected {list(expected)}")
        mask = self._check_mask(batch.action_mask, batch.batch_size, "batch.action_mask")
        noise = _normal(a.shape, generator, a.device, a.dtype)
        tau = self.sample_tau(a.shape[0], generator=generator, device=a.device)
        t = tau[:, None, None]
        x_tau = t * noise + (1.0 - t) * a
        target = noise - a
        tokens = self.encoder(batch.obs)
        mask = mask.to(a.device)
        v = self._real_slots(self.expert(tokens, self._real_slots(x_tau, mask), tau), mask)
        return TrainingTerms(x_t=x_tau, t=tau, alpha_bar=None, prediction=v, target=target,
                             kind="velocity", weight=batch.loss_weight().to(a.dtype), clean=a)

    # -------------------------------------------------------------------------------- sampling

    @torch.no_grad()
    def sample(self, obs: Observation, *, num_steps: Optional[int] = None,
               noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
               step_hook: Optional[StepHook] = None) -> torch.Tensor:
        """Integrate from noise at tau = 1 to a chunk at tau = 0; padded slots come back as 0.

        A hook runs under no_grad like the loop; one that needs gradients wraps its own work in
        ``torch.enable_grad()`` and calls :meth:`predict` on a detached ``x_t`` that requires grad.
        """
        cfg = self.config
        n = cfg.num_steps if num_steps is None else int(num_steps)
        if n < 1:
            raise ValueError(f"num_steps must be >= 1, got {n}")
        cond = self.encode(obs)
        b = obs.batch_size
        shape = (b, cfg.horizon, cfg.action_width)
        device, dtype = cond.tokens.device, self._dtype()
        if noise is None:
            x = _normal(shape, generator, device, dtype)
        else:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {list(shape)}")
            x = noise.to(device=device, dtype=dtype)
        dt = -1.0 / n
        for k in range(n):
            tau = torch.full((b,), 1.0 - k / n, device=device, dtype=dtype)
            v = self.predict(x, tau, cond)
            if step_hook is not None:
                replaced = step_hook(DenoiseStep(index=k, num_steps=n, t=tau, alpha_bar=None, x_t=x,
                                                 model_output=v, kind="velocity",
                                                 action_mask=cond.action_mask))
                if replaced is not None:
                    if replaced.shape != v.shape:
                        raise ValueError(f"step_hook returned shape {tuple(replaced.shape)}, "
                                         f"expected {tuple(v.shape)}")
                    v = replaced
            x = x + dt * v
        return self._real_slots(x, cond.action_mask)
