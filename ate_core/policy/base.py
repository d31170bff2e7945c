"""The one interface every policy exposes: batches in, a denoising loop that can be steered.

A policy works entirely in the *model space*: normalised actions written into the unified,
padded action vector (:mod:`ate_core.policy.transforms`), camera frames as uint8 tensors. The
processor (:mod:`ate_core.policy.processor`) converts between that space and a robot's native
joint values, so a policy never sees radians and the robot never sees normalised values.

Both generative policies, diffusion (DDPM/DDIM) and flow matching, share two hooks that ATE's
guidance needs without touching the architecture:

- :meth:`Policy.training_terms` returns the pieces of the denoising loss (noisy sample, the
  network's prediction, the regression target, the noise level). The plain loss is
  :func:`denoising_loss` of them; a guided fine-tuning loss adds a term to ``prediction``
  before the same regression (ATE stage 2).
- :meth:`Policy.sample` calls ``step_hook`` at every denoising step with the noisy sample and
  the model output; a hook may return a replacement model output (inference-time guidance).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

__all__ = [
    "Observation",
    "Batch",
    "TrainingTerms",
    "DenoiseStep",
    "StepHook",
    "Policy",
    "InferenceTrace",
    "denoising_loss",
    "PREDICTION_KINDS",
]

#: What a network predicts: the noise (DDPM epsilon), the clean chunk (sample), or a flow velocity.
PREDICTION_KINDS = ("epsilon", "sample", "velocity")


@dataclass(frozen=True)
class Observation:
    """What a policy conditions on, batched, in model space.

    ``images``: uint8 ``[B, T_obs, N_cam, 3, H, W]`` RGB, cameras in the policy config's order.
    ``state``: float ``[B, T_obs, W]`` normalised proprioception in the unified layout (padding 0).
    ``state_mask``: bool ``[B, W]``, the real slots of each sample's embodiment.
    ``task``: the instruction text of each sample (a task id is just a short text).
    ``env_state``: float ``[B, T_obs, E]`` normalised scene state (object poses), for a policy
    configured with ``env_state_dim`` > 0; None otherwise.
    """

    images: torch.Tensor
    state: torch.Tensor
    state_mask: torch.Tensor
    task: Tuple[str, ...]
    env_state: Optional[torch.Tensor] = None

    @property
    def batch_size(self) -> int:
        return int(self.state.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Observation":
        return replace(self, images=self.images.to(device, non_blocking=non_blocking),
                       state=self.state.to(device, non_blocking=non_blocking),
                       state_mask=self.state_mask.to(device, non_blocking=non_blocking),
                       env_state=None if self.env_state is None
                       else self.env_state.to(device, non_blocking=non_blocking))


@dataclass(frozen=True)
class Batch:
    """A training batch: observations plus the demonstrated action chunk, in model space.

    ``action``: float ``[B, H, W]``; ``action_mask``: bool ``[B, W]`` (real slots);
    ``action_is_pad``: bool ``[B, H]``, steps past the end of the episode (repeat the last
    action; excluded from the loss).
    """

    obs: Observation
    action: torch.Tensor
    action_mask: torch.Tensor
    action_is_pad: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.action.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(obs=self.obs.to(device, non_blocking),
                     action=self.action.to(device, non_blocking=non_blocking),
                     action_mask=self.action_mask.to(device, non_blocking=non_blocking),
                     action_is_pad=self.action_is_pad.to(device, non_blocking=non_blocking))

    def loss_weight(self) -> torch.Tensor:
        """``[B, H, W]`` float: 1 where a value takes part in the loss (real slot, real step)."""
        step = (~self.action_is_pad).to(self.action.dtype)[:, :, None]
        slot = self.action_mask.to(self.action.dtype)[:, None, :]
        return step * slot


@dataclass(frozen=True)
class TrainingTerms:
    """One denoising-loss evaluation, exposed so guidance can adjust ``prediction``.

    ``x_t``: the noisy chunk fed to the network ``[B, H, W]``. ``t``: the noise level per
    sample ``[B]``: the integer DDPM timestep for diffusion, the flow time tau in [0, 1] for flow
    matching (the policy documents its convention). ``alpha_bar``: for diffusion, the cumulative
    signal level of ``t`` ``[B]``; None for flow. ``prediction``/``target``: what the loss
    regresses, of kind ``kind``. ``weight``: ``[B, H, W]`` loss weight (padding excluded).
    """

    x_t: torch.Tensor
    t: torch.Tensor
    alpha_bar: Optional[torch.Tensor]
    prediction: torch.Tensor
    target: torch.Tensor
    kind: str
    weight: torch.Tensor
    clean: torch.Tensor  # the demonstrated chunk a0 [B, H, W] (guidance's latent target)


def denoising_loss(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted MSE over real slots and steps; the mean over values that take part."""
    sq = (prediction - target).pow(2) * weight
    return sq.sum() / weight.sum().clamp_min(1.0)


@dataclass(frozen=True)
class DenoiseStep:
    """The state of the sampling loop at one step, handed to a :data:`StepHook`.

    ``index`` counts 0..num_steps-1 in sampling order. ``t`` is the step's noise level ``[B]``
    (DDPM timestep or flow time), ``alpha_bar`` its signal level (diffusion only). ``x_t`` is the
    current noisy chunk and ``model_output`` the network's output for it, of kind ``kind``.
    ``action_mask`` marks real slots; a hook must leave padded slots alone.
    """

    index: int
    num_steps: int
    t: torch.Tensor
    alpha_bar: Optional[torch.Tensor]
    x_t: torch.Tensor
    model_output: torch.Tensor
    kind: str
    action_mask: torch.Tensor


#: Called at every denoising step; returns a replacement model output, or None to keep it.
StepHook = Callable[[DenoiseStep], Optional[torch.Tensor]]


class Policy(nn.Module):
    """Base class of every policy: a conditional generator of normalised unified action chunks.

    Subclasses set ``config`` (a frozen dataclass with at least ``horizon``, ``n_obs_steps``,
    ``action_width``, ``cameras``, ``image_size``) and implement :meth:`training_terms` and
    :meth:`sample`. ``policy_type`` names the registry entry (``"diffusion"``, ``"flow"``).
    """

    policy_type: str = ""
    config: object
    #: Set by :meth:`trace_for_inference`; subclasses route their per-step network through it.
    inference_trace: Optional["InferenceTrace"] = None

    def trace_for_inference(self, on: bool = True) -> None:
        """Run the per-step network of :meth:`sample` as a frozen TorchScript trace (``on``) or
        eagerly. The trace is taken at the first step of each input shape and is a snapshot of
        the weights: :meth:`train` drops it, so a policy that is trained again is traced again.
        Only sampling in eval mode with grad off takes it (a guidance hook that differentiates
        the network runs it eagerly)."""
        self.inference_trace = InferenceTrace() if on else None

    def train(self, mode: bool = True) -> "Policy":
        if mode and self.inference_trace is not None:
            self.inference_trace.clear()
        return super().train(mode)

    def _step_network(self, module: nn.Module, *inputs: Any) -> Any:
        """``module(*inputs)``, through the inference trace when it applies."""
        trace = self.inference_trace
        if trace is None or self.training or torch.is_grad_enabled() or torch.is_autocast_enabled():
            return module(*inputs)
        return trace(module, inputs)

    def training_terms(self, batch: Batch, *, generator: Optional[torch.Generator] = None) -> TrainingTerms:
        raise NotImplementedError

    def compute_loss(self, batch: Batch, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        terms = self.training_terms(batch, generator=generator)
        return denoising_loss(terms.prediction, terms.target, terms.weight)

    def forward(self, batch: Batch) -> torch.Tensor:  # what DistributedDataParallel wraps
        return self.compute_loss(batch)

    @torch.no_grad()
    def sample(self, obs: Observation, *, num_steps: Optional[int] = None,
               noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
               step_hook: Optional[StepHook] = None) -> torch.Tensor:
        """A normalised unified action chunk ``[B, H, W]`` for each observation."""
        raise NotImplementedError


def _signature(value: Any) -> Any:
    if torch.is_tensor(value):
        return (tuple(value.shape), value.dtype, value.device)
    if isinstance(value, (tuple, list)):
        return tuple(_signature(v) for v in value)
    raise TypeError(f"a traced network takes tensors or tuples of tensors, not {type(value).__name__}")


class InferenceTrace:
    """Frozen TorchScript traces of one module, one per input signature (shapes, dtypes,
    devices), taken on first use. A denoising network is called ``num_steps`` times per chunk
    with the same shapes; as a trace its ~200 module calls per step run without Python in
    between: the cross-embodiment benchmark's UNet took 1.4 ms a step instead of 2.9 and its
    flow expert 0.7 instead of 1.7 (one CPU thread), with the same outputs to float rounding.

    TorchScript is deprecated in favour of ``torch.compile``, which at these sizes on the CPU
    compiled for 42 s and then ran 2.3 ms a step, and ``torch.export``, which ran as eager; the
    deprecation notices and the tracer's warnings about shapes taken as constants (they are
    fixed per signature) are silenced. A module that cannot be traced runs eagerly, with one
    warning saying why (:attr:`failures`)."""

    def __init__(self) -> None:
        self._traces: Dict[Any, Optional[torch.jit.ScriptModule]] = {}
        #: Why a module could not be traced, by module class name.
        self.failures: Dict[str, str] = {}

    def clear(self) -> None:
        self._traces.clear()

    def __len__(self) -> int:
        return sum(t is not None for t in self._traces.values())

    def __call__(self, module: nn.Module, inputs: Tuple[Any, ...]) -> Any:
        key = (id(module), _signature(inputs))
        if key not in self._traces:
            self._traces[key] = self._trace(module, inputs)
        traced = self._traces[key]
        return module(*inputs) if traced is None else traced(*inputs)

    def _trace(self, module: nn.Module, inputs: Tuple[Any, ...]) -> Optional[torch.jit.ScriptModule]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message=r".*`torch\.jit\.")
                return torch.jit.freeze(torch.jit.trace(module.eval(), inputs, check_trace=False))
        except Exception as e:  # whatever the tracer raises: eager still works
            name = type(module).__name__
            self.failures[name] = f"{type(e).__name__}: {e}"
            warnings.warn(f"{name} could not be traced ({self.failures[name]}); it runs eagerly",
                          RuntimeWarning, stacklevel=3)
            return None
