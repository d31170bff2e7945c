"""Diffusion Policy (Chi et al., RSS 2023): a conditional DDPM over action chunks, sampled with DDIM.

The observation is encoded once per chunk (:meth:`DiffusionPolicy.encode`); the denoiser, a
FiLM-conditioned 1-D UNet or a cross-attending transformer, is then run once per DDIM step on
the noisy chunk (:meth:`DiffusionPolicy.predict`), and the scheduler moves the chunk one step
towards the data (:meth:`DiffusionPolicy.denoise_step`). :meth:`sample` is exactly that loop;
guidance code can run the same pieces itself with autograd on.

Padded slots of the unified action vector (outside the embodiment's mask) carry no
information: the demonstration is 0 there, the denoiser's input is zeroed there (so the noise
in those slots cannot distract it), and its output there is replaced by the output a clean
value of 0 implies (``eps = x_t / sqrt(1 - abar)``, or ``x0 = 0``). The noisy chunk's padded
slots therefore stay on the noise level of the current step, and the final chunk has them at
exactly 0. The mask travels inside the condition (:class:`DiffusionCondition`), so code that
calls :meth:`DiffusionPolicy.predict` directly gets the same treatment.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from ate_core.policy.base import Batch, DenoiseStep, Observation, Policy, StepHook, TrainingTerms
from ate_core.policy.diffusion.configuration_diffusion import DiffusionConfig
from ate_core.policy.diffusion.scheduler import DDIMScheduler, DDIMStep
from ate_core.policy.diffusion.transformer import TransformerForDiffusion
from ate_core.policy.diffusion.unet1d import ConditionalUnet1D
from ate_core.policy.encoder import ObservationEncoder

__all__ = ["DiffusionPolicy", "DiffusionCondition"]

Timestep = Union[int, torch.Tensor]


class DiffusionCondition(NamedTuple):
    """What every denoising step of one chunk conditions on: computed once per observation."""

    tokens: torch.Tensor  # [B, n_tokens, d_model] from the observation encoder
    action_mask: torch.Tensor  # [B, action_width] bool, the embodiment's real slots


def _randn(shape: Tuple[int, ...], generator: Optional[torch.Generator], device: torch.device,
           dtype: torch.dtype) -> torch.Tensor:
    """Normal noise drawn on the generator's own device (so a CPU generator also seeds GPU runs)."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where, dtype=dtype).to(device)


class DiffusionPolicy(Policy):
    """Observation -> normalised unified action chunk ``[B, horizon, action_width]``.

    Conventions for :class:`~ate_core.policy.base.TrainingTerms` and
    :class:`~ate_core.policy.base.DenoiseStep`: ``t`` is the integer DDPM timestep ``[B]``
    (0 = least noisy), ``alpha_bar`` its cumulative signal level, ``kind`` the configured
    ``prediction_type``.
    """

    policy_type = "diffusion"

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        if not isinstance(config, DiffusionConfig):
            raise TypeError(f"DiffusionPolicy needs a DiffusionConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = ObservationEncoder(config.encoder, cameras=config.cameras, n_obs_steps=config.n_obs_steps,
                                          image_size=config.image_size, state_width=config.state_width,
                                          env_state_dim=config.env_state_dim)
        n_tokens, d_obs = self.encoder.n_tokens, self.encoder.d_model
        self.denoiser: nn.Module
        if config.denoiser == "unet":
            self.denoiser = ConditionalUnet1D(
                config.action_width, n_tokens * d_obs, down_dims=config.unet_down_dims,
                kernel_size=config.unet_kernel_size, n_groups=config.unet_n_groups,
                step_embed_dim=config.step_embed_dim, film_scale=config.film_scale_modulation)
        else:
            self.denoiser = TransformerForDiffusion(
                config.action_width, config.horizon, n_tokens, d_obs, d_model=config.tf_d_model,
                n_layers=config.tf_n_layers, n_heads=config.tf_n_heads, dropout=config.tf_dropout,
                causal_attn=config.tf_causal_attn)
        self.scheduler = DDIMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
            beta_start=config.beta_start, beta_end=config.beta_end, clip_sample=config.clip_sample,
            clip_sample_range=config.clip_sample_range, set_alpha_to_one=True)

    # ------------------------------------------------------------------------- building blocks

    @property
    def chunk_shape(self) -> Tuple[int, int]:
        return self.config.horizon, self.config.action_width

    def encode(self, obs: Observation, action_mask: Optional[torch.Tensor] = None) -> DiffusionCondition:
        """The condition of every denoising step of one chunk; the image encoder runs here only.

        ``action_mask`` defaults to ``obs.state_mask`` (the embodiment's slots).
        """
        tokens = self.encoder(obs)
        mask = obs.state_mask if action_mask is None else action_mask
        mask = mask.to(device=tokens.device, dtype=torch.bool)
        if mask.shape != (tokens.shape[0], self.config.action_width):
            raise ValueError(f"action mask has shape {tuple(mask.shape)}; expected "
                             f"[{tokens.shape[0]}, {self.config.action_width}]")
        return DiffusionCondition(tokens, mask)

    def predict(self, x_t: torch.Tensor, t: Timestep, cond: DiffusionCondition) -> torch.Tensor:
        """The model output (of kind ``config.prediction_type``) for noisy chunks ``x_t [B, H, W]``.

        ``t``: an int or ``[B]`` timesteps; ``cond``: from :meth:`encode`. Differentiable in
        ``x_t`` and ``cond.tokens`` when grad is enabled. Padded slots are handled as the module
        docstring says.
        """
        dtype = self.encoder.camera_embed.dtype
        t = self._timesteps_for(t, x_t)
        mask = cond.action_mask[:, None, :]
        x_in = torch.where(mask, x_t, torch.zeros_like(x_t)).to(dtype)
        if isinstance(self.denoiser, ConditionalUnet1D):
            out = self._step_network(self.denoiser, x_in, t, cond.tokens.flatten(1))
        else:
            out = self._step_network(self.denoiser, x_in, t, cond.tokens)
        return self.padding_consistent(out.to(x_t.dtype), x_t, t, cond.action_mask)

    def padding_consistent(self, model_output: torch.Tensor, x_t: torch.Tensor, t: Timestep,
                           action_mask: torch.Tensor) -> torch.Tensor:
        """``model_output`` with padded slots set to what a clean value of 0 implies at ``(x_t, t)``."""
        mask = action_mask.to(device=x_t.device, dtype=torch.bool)[:, None, :]
        if self.config.prediction_type == "sample":
            implied = torch.zeros_like(x_t)
        else:
            abar = self.scheduler.alpha_bar(self._timesteps_for(t, x_t), dtype=x_t.dtype)
            implied = x_t / (1.0 - abar).sqrt()[:, None, None]
        return torch.where(mask, model_output, implied)

    def timesteps(self, num_steps: Optional[int] = None,
                  device: Union[torch.device, str, None] = None) -> torch.Tensor:
        """The DDIM timesteps of a ``num_steps`` (default: the config's) sampling run, noisiest first."""
        device = self.encoder.camera_embed.device if device is None else device
        return self.scheduler.timesteps(num_steps or self.config.num_inference_steps, device=device)

    def denoise_step(self, x_t: torch.Tensor, t: Timestep, model_output: torch.Tensor,
                     cond: DiffusionCondition, *, num_steps: Optional[int] = None) -> DDIMStep:
        """One DDIM update of a ``num_steps``-step run: ``(x_prev, clean estimate)``.

        ``model_output`` is :meth:`predict`'s, possibly adjusted (guidance); its padded slots
        are reset to the padding-consistent values first.
        """
        t = self._timesteps_for(t, x_t)
        model_output = self.padding_consistent(model_output, x_t, t, cond.action_mask)
        return self.scheduler.step(model_output, t, x_t, self.config.prediction_type,
                                   num_inference_steps=num_steps or self.config.num_inference_steps)

    # ------------------------------------------------------------------------- training

    def training_terms(self, batch: Batch, *, generator: Optional[torch.Generator] = None) -> TrainingTerms:
        """Noise a demonstrated chunk at a uniform random timestep and predict the noise (or chunk).

        Padded slots of the demonstration are treated as 0 and carry no loss (``weight``);
        padded steps (``action_is_pad``) are seen by the network but carry no loss either.
        """
        cfg = self.config
        action = batch.action
        if tuple(action.shape[1:]) != self.chunk_shape:
            raise ValueError(f"batch.action has shape {tuple(action.shape)}; the policy expects "
                             f"[B, {cfg.horizon}, {cfg.action_width}]")
        cond = self.encode(batch.obs, action_mask=batch.action_mask)
        clean = torch.where(cond.action_mask[:, None, :], action, torch.zeros_like(action))
        noise = _randn(tuple(action.shape), generator, action.device, action.dtype)
        where = generator.device if generator is not None else action.device
        t = torch.randint(0, cfg.num_train_timesteps, (action.shape[0],), generator=generator,
                          device=where).to(action.device)
        x_t = self.scheduler.add_noise(clean, noise, t)
        return TrainingTerms(x_t=x_t, t=t, alpha_bar=self.scheduler.alpha_bar(t, dtype=action.dtype),
                             prediction=self.predict(x_t, t, cond),
                             target=self.scheduler.target(clean, noise, cfg.prediction_type),
                             kind=cfg.prediction_type, weight=batch.loss_weight(), clean=clean)

    # ------------------------------------------------------------------------- inference

    @torch.no_grad()
    def sample(self, obs: Observation, *, num_steps: Optional[int] = None,
               noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
               step_hook: Optional[StepHook] = None) -> torch.Tensor:
        """DDIM from ``noise`` (default: standard normal from ``generator``) to a chunk ``[B, H, W]``.

        ``step_hook`` sees every step (``index`` 0 is the noisiest) and may return a replacement
        model output; padded slots of a replacement are reset as for the network's own.
        Padded slots of the result are exactly 0.
        """
        n = int(num_steps or self.config.num_inference_steps)
        b = obs.batch_size
        device = self.encoder.camera_embed.device
        dtype = self.encoder.camera_embed.dtype
        shape = (b,) + self.chunk_shape
        if noise is None:
            x = _randn(shape, generator, device, dtype)
        else:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {list(shape)}")
            x = noise.to(device=device, dtype=dtype)
        cond = self.encode(obs)  # once per chunk: the image encoder never runs per step
        kind = self.config.prediction_type
        for index, step_t in enumerate(self.timesteps(n, device)):
            t = step_t.expand(b)
            output = self.predict(x, t, cond)
            if step_hook is not None:
                replaced = step_hook(DenoiseStep(index=index, num_steps=n, t=t,
                                                 alpha_bar=self.scheduler.alpha_bar(t, dtype=dtype),
                                                 x_t=x, model_output=output, kind=kind,
                                                 action_mask=cond.action_mask))
                if replaced is not None:
                    if replaced.shape != output.shape:
                        raise ValueError(f"step_hook returned shape {tuple(replaced.shape)}; "
                                         f"expected {tuple(output.shape)}")
                    output = replaced.to(dtype)
            x = self.denoise_step(x, t, output, cond, num_steps=n).prev_sample
        return torch.where(cond.action_mask[:, None, :], x, torch.zeros_like(x))

    # ------------------------------------------------------------------------- helpers

    @staticmethod
    def _timesteps_for(t: Timestep, x_t: torch.Tensor) -> torch.Tensor:
        """An int or tensor timestep as a ``[B]`` long tensor on ``x_t``'s device."""
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(int(t))
        return t.to(device=x_t.device, dtype=torch.long).reshape(-1).expand(x_t.shape[0])
