r"""ATE stage 2, *steer*: latent classifier guidance that attaches to any policy from outside.

The guidance needs nothing from a policy but :meth:`~ate_core.policy.base.Policy.training_terms`
(fine-tuning) and the ``step_hook`` of :meth:`~ate_core.policy.base.Policy.sample` (inference),
so the architecture is untouched ("plug and play").

Fine-tuning loss, for a demonstrated chunk ``a0`` noised to ``x_t``::

    z_x = mu(x_t) + sigma(x_t) * e,   z_0 = mu(a0) + sigma(a0) * e     (adaptation encoder, same e)
    y   = -mean_k (z_x - z_0)_k^2                                     (a log-likelihood, per sample)
    g   = clamp(coef(t) * dy/dx_t, -c, c)                              (zero in padded slots)
    L   = || prediction + lambda * g - target ||^2                     (the policy's own regression)

``coef`` turns a score (gradient of a log-density w.r.t. ``x_t``) into the policy's output kind,
as classifier guidance does (Dhariwal & Nichol 2021):

* epsilon prediction: ``eps~ = eps - sqrt(1 - abar) * score``, so ``coef = -sqrt(1 - abar)``;
* sample prediction: ``x0~ = (x_t - sqrt(1 - abar) eps~) / sqrt(abar)``, so
  ``coef = (1 - abar) / sqrt(abar)``;
* flow velocity, with the path of :mod:`ate_core.policy.flow.modeling_flow`
  (``x_tau = tau eps + (1 - tau) a``, ``u = eps - a``). Given ``x_tau``,
  ``E[a] = (x_tau - tau E[eps]) / (1 - tau)``, so the predicted velocity is
  ``v = E[eps] - E[a] = (E[eps] - x_tau) / (1 - tau)``. The marginal score is
  ``s = -E[eps] / tau`` (Tweedie, noise std tau), hence ``v = -(x_tau + tau s) / (1 - tau)``
  and a guided score ``s + grad`` gives ``v~ = v - tau / (1 - tau) * grad``:
  ``coef = -tau / (1 - tau)`` (the denominator is floored at 1e-3; the clamp bounds the rest).
  Sampling integrates tau from 1 to 0 (``x += dt v``, ``dt < 0``), so ``-coef * grad`` moves the
  sample along ``+grad``, toward the target latent.

These signs and scales are those of the official code (Diffusion Policy: epsilon; RDT:
sample). One deliberate difference: ``y`` is a per-sample mean by default; the official code
takes the mean over the whole batch (``-F.mse_loss(z_x, z_0)``), which divides every sample's
gradient by the batch size B and so makes the guidance depend on it. ``y_reduction: batch``
(:class:`~ate_core.steer.config.GuidanceConfig`) is the official form: the same gradient over B,
before the clamp.

Because ``g`` does not depend on the policy's parameters, the loss trains the network's output
toward ``target - lambda g``: the *guided* output matches the data. Inference-time guidance
(:meth:`LatentGuidance.step_hook`, an extension, off by default) adds ``lambda g`` back while
sampling, toward the adaptation latent modes since no demonstration exists at run time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from ate_core.align.checkpoint import LoadedVAE
from ate_core.align.latent_stats import LatentStats
from ate_core.align.modeling_vae import ActionChunkVAE
from ate_core.config import ConfigError
from ate_core.data.spaces import NormStats, UnifiedActionSpace
from ate_core.policy.base import Batch, DenoiseStep, Policy, StepHook, TrainingTerms, denoising_loss
from ate_core.steer.config import GuidanceConfig
from ate_core.steer.record import GuidanceRecord

__all__ = ["LatentGuidance", "guidance_coefficient", "latent_log_likelihood", "latent_gradient",
           "VELOCITY_DENOMINATOR_FLOOR"]

#: Floor of ``1 - tau`` in the velocity coefficient (tau reaches 1 at the pure-noise end).
VELOCITY_DENOMINATOR_FLOOR = 1e-3


def guidance_coefficient(kind: str, t: torch.Tensor, alpha_bar: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-sample ``[B]`` factor that maps a score to an output of ``kind`` (module docstring)."""
    if kind == "epsilon":
        if alpha_bar is None:
            raise ValueError("epsilon guidance needs alpha_bar")
        return -torch.sqrt(1.0 - alpha_bar)
    if kind == "sample":
        if alpha_bar is None:
            raise ValueError("sample guidance needs alpha_bar")
        return (1.0 - alpha_bar) / torch.sqrt(alpha_bar)
    if kind == "velocity":
        tau = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
        return -tau / (1.0 - tau).clamp_min(VELOCITY_DENOMINATOR_FLOOR)
    raise ValueError(f"no guidance coefficient for prediction kind {kind!r} "
                     "(expected epsilon, sample or velocity)")


def latent_log_likelihood(vae: ActionChunkVAE, x: torch.Tensor, target_latent: torch.Tensor,
                          action_mask: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
    """``y = -mean_k (z(x) - z*)_k^2`` per sample ``[B]``; ``z(x) = mu + sigma * noise``
    (the posterior mean when ``noise`` is None)."""
    posterior = vae.encode(x, action_mask)
    z = posterior.mean if noise is None else posterior.sample(noise)
    return -(z - target_latent).pow(2).flatten(1).mean(dim=1)


def latent_gradient(vae: ActionChunkVAE, x: torch.Tensor, target_latent: torch.Tensor,
                    action_mask: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``dy/dx`` ``[B, H, W]`` through the (frozen) encoder only; exactly zero in padded slots."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = latent_log_likelihood(vae, x, target_latent.detach(), action_mask, noise)
        (grad,) = torch.autograd.grad(y.sum(), x)
    return grad * action_mask.to(grad.dtype)[:, None, :]


class LatentGuidance:
    """The adaptation VAE plus the guidance settings; attaches to a policy from outside.

    ``loss(policy, batch)`` is the guided fine-tuning loss (a ``loss_fn`` for
    :func:`ate_core.train.trainer.train`); ``step_hook()`` the optional inference-time guidance.
    """

    def __init__(self, vae: ActionChunkVAE, config: GuidanceConfig, *,
                 latent_stats: Optional[LatentStats] = None, checkpoint: Optional[LoadedVAE] = None) -> None:
        self.vae = vae.eval()
        for p in self.vae.parameters():
            p.requires_grad_(False)
        self.config = config
        self.latent_stats = latent_stats
        self.checkpoint = checkpoint
        # The model space the VAE's chunks live in, checked against the policy's (None: unknown).
        self.norm_stats: Optional[Dict[str, Dict[str, NormStats]]] = None
        self.norm_mode: Optional[str] = None
        self.action_space: Optional[UnifiedActionSpace] = None
        if checkpoint is not None:
            self.norm_stats, self.norm_mode = checkpoint.norm_stats, checkpoint.norm_mode
            self.action_space = checkpoint.action_space

    @classmethod
    def from_checkpoint(cls, loaded: LoadedVAE, config: GuidanceConfig) -> "LatentGuidance":
        """From :func:`ate_core.align.checkpoint.load_vae`'s result (an adaptation VAE)."""
        if loaded.stage != "ada":
            raise ConfigError(str(loaded.path), "stage", f"guidance needs the adaptation VAE (stage 'ada'), "
                                                         f"this one is stage {loaded.stage!r}")
        return cls(loaded.vae, config, latent_stats=loaded.latent_stats, checkpoint=loaded)

    def to(self, device: torch.device | str) -> "LatentGuidance":
        self.vae.to(device)
        return self

    # ------------------------------------------------------------------------ compatibility

    def check_compatible(self, policy_config: Any, action_space: Optional[UnifiedActionSpace],
                         stats_by_embodiment: Mapping[str, Mapping[str, NormStats]], norm_mode: str,
                         source: str = "ate.vae") -> None:
        """The VAE must see exactly the policy's model space: chunk shape, slot layout and the
        normalisation of every embodiment both know. Raises :class:`ConfigError` naming the part."""
        vcfg = self.vae.config
        where = source if self.checkpoint is None else str(self.checkpoint.path)
        if (vcfg.horizon, vcfg.action_width) != (policy_config.horizon, policy_config.action_width):
            raise ConfigError(where, "horizon", f"the VAE encodes chunks of {vcfg.horizon} x {vcfg.action_width}; "
                                                f"the policy's are {policy_config.horizon} x "
                                                f"{policy_config.action_width}")
        mine = self.action_space
        if mine is not None and action_space is not None:
            for emb in set(mine.embodiments) & set(action_space.embodiments):
                if tuple(mine.slots(emb)) != tuple(action_space.slots(emb)):
                    raise ConfigError(where, "action_space", f"embodiment {emb!r} uses other unified slots "
                                                             "in the VAE than in the policy")
        if self.norm_mode is not None and self.norm_mode != norm_mode:
            raise ConfigError(where, "norm_mode", f"the VAE was trained on {self.norm_mode!r} normalised chunks, "
                                                  f"the policy uses {norm_mode!r}")
        for emb, stats in (self.norm_stats or {}).items():
            if emb not in stats_by_embodiment:
                continue
            ours, theirs = stats["action"], stats_by_embodiment[emb]["action"]
            for name in ("mean", "std", "min", "max"):
                a, b = getattr(ours, name), getattr(theirs, name)
                if a is None or b is None:
                    continue
                a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
                if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-6):
                    raise ConfigError(where, "norm_stats", f"action {name} of {emb!r} differs from the "
                                                           "fine-tuning data's: train the VAE on the same data")

    def record(self) -> GuidanceRecord:
        """What a fine-tuned checkpoint stores about the guidance that shaped it."""
        if self.checkpoint is None:
            raise ValueError("only guidance loaded from a VAE checkpoint (from_checkpoint) can be recorded")
        settings = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(GuidanceConfig)}
        return GuidanceRecord(**settings, path=str(self.checkpoint.path), sha256=self.checkpoint.sha256,
                              stage=self.checkpoint.stage, vae_config=self.checkpoint.config)

    # ------------------------------------------------------------------------ fine-tuning

    def guidance_term(self, terms: TrainingTerms, action_mask: torch.Tensor,
                      noise: Optional[torch.Tensor] = None,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``clamp(coef * dy/dx_t, -c, c)`` ``[B, H, W]``, zero in padded slots."""
        cfg = self.config
        chunk = terms.clean if cfg.latent_target == "clean" else terms.target
        x_t = terms.x_t.detach()
        dtype = next(self.vae.parameters()).dtype
        x_t, chunk = x_t.to(dtype), chunk.detach().to(dtype)
        with torch.no_grad():
            target_posterior = self.vae.encode(chunk, action_mask)
        if noise is None:
            noise = torch.randn(target_posterior.mean.shape, generator=generator,
                                device=target_posterior.mean.device, dtype=dtype)
        target_latent = target_posterior.sample(noise)
        grad = latent_gradient(self.vae, x_t, target_latent, action_mask, noise)
        if cfg.y_reduction == "batch":
            grad = grad / grad.shape[0]
        coef = guidance_coefficient(terms.kind, terms.t, terms.alpha_bar).to(grad.dtype)
        g = (coef[:, None, None] * grad).clamp(-cfg.clamp, cfg.clamp)
        return g.to(terms.prediction.dtype)

    def loss(self, policy: Policy, batch: Batch) -> torch.Tensor:
        """The guided denoising loss: the policy's own regression of ``prediction + lambda g``."""
        terms = policy.training_terms(batch)
        g = self.guidance_term(terms, batch.action_mask)
        return denoising_loss(terms.prediction + self.config.scale * g, terms.target, terms.weight)

    __call__ = loss

    # ------------------------------------------------------------------------ inference

    def step_hook(self) -> Optional[StepHook]:
        """The inference-time guidance hook, or None when ``inference.enabled`` is off."""
        icfg = self.config.inference
        if not icfg.enabled:
            return None
        stats = self.latent_stats
        if stats is None:
            where = "ate.vae" if self.checkpoint is None else str(self.checkpoint.path)
            raise ConfigError(where, "latent_stats",
                              "inference guidance needs the adaptation latent statistics in the VAE checkpoint")
        clamp = self.config.clamp

        def hook(step: DenoiseStep) -> Optional[torch.Tensor]:
            if step.index < math.floor(step.num_steps * (1.0 - icfg.last_fraction)):
                return None
            dtype = next(self.vae.parameters()).dtype
            x = step.x_t.to(dtype)
            mask = step.action_mask.to(x.device)
            target = self._inference_target(x, mask, stats, icfg.target)
            grad = latent_gradient(self.vae, x, target, mask)
            coef = guidance_coefficient(step.kind, step.t.to(x.device).expand(x.shape[0]),
                                        None if step.alpha_bar is None else
                                        step.alpha_bar.to(x.device).expand(x.shape[0])).to(dtype)
            g = (coef[:, None, None] * grad).clamp(-clamp, clamp)
            return step.model_output + (icfg.scale * g).to(step.model_output.dtype)

        return hook

    def _inference_target(self, x: torch.Tensor, mask: torch.Tensor, stats: LatentStats, kind: str) -> torch.Tensor:
        mean = stats.mean.to(x.device, x.dtype)
        if kind == "mean":
            return mean.expand(x.shape[0], *mean.shape)
        bank = stats.bank_mean.to(x.device, x.dtype)  # [N, L, d]
        with torch.no_grad():
            z = self.vae.encode(x, mask).mean
        nearest = torch.cdist(z.flatten(1), bank.flatten(1)).argmin(dim=1)
        return bank[nearest]
