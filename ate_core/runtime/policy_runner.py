"""The policy as the robot runs it: native observation in, a timed action chunk out.

A :class:`PolicyRunner` owns one loaded checkpoint and everything that has to match training
for its output to mean anything: the processor (normalisation, camera resizing, unified slots),
the native joint order of the embodiment, the time between chunk points (the training data's
frame rate: dataset sample t pairs observation t with actions t .. t+H-1, so point i is due
``i / fps`` after the observation) and, optionally, ATE's inference-time latent guidance.

No ROS, no clock: the caller stamps each observation and the chunk carries that stamp, so the
inference node, offline replay and tests all run this same code. Not thread-safe: one thread
(the node's inference worker) owns a runner.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from ate_core.config import ConfigError
from ate_core.robot.config import InferenceConfig
from ate_core.data.episode import EpisodeFormatError, default_joint_names
from ate_core.policy.base import StepHook
from ate_core.policy.pretrained import CONFIG_FILE, LoadedPolicy, load_pretrained
from ate_core.runtime.chunk import ActionChunk, make_chunk

if TYPE_CHECKING:  # loaded only when guidance is on
    from ate_core.steer.guidance import LatentGuidance

__all__ = ["PolicyRunner", "resolve_device"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(kind: str, source: str = "config") -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; ``cuda`` without one is an error."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(source, "inference.device", "cuda requested but no CUDA device is available")
        return torch.device("cuda", torch.cuda.current_device())
    if kind != "cpu":
        raise ConfigError(source, "inference.device", f"{kind!r} is not one of ['auto', 'cpu', 'cuda']")
    return torch.device("cpu")


class PolicyRunner:
    """One checkpoint ready to act: ``infer(images, state, stamp_ns, task) -> ActionChunk``.

    ``dtype`` is what the network really computes in (autocast on CUDA; float32 on the CPU
    whatever was asked, see ``notes``). ``num_steps`` None means the policy's own.
    """

    def __init__(self, loaded: LoadedPolicy, *, action_period_ns: int, device: torch.device,
                 dtype: torch.dtype = torch.float32, num_steps: Optional[int] = None,
                 step_hook: Optional[StepHook] = None, guidance: Optional[LatentGuidance] = None,
                 notes: Tuple[str, ...] = ()) -> None:
        if action_period_ns <= 0:
            raise ValueError(f"PolicyRunner: action_period_ns must be > 0, got {action_period_ns}")
        if dtype != torch.float32 and device.type != "cuda":
            raise ValueError(f"PolicyRunner: {dtype} autocast needs a CUDA device, this one is {device}")
        self.loaded = loaded
        self.policy = loaded.policy
        self.processor = loaded.processor()
        try:
            names = default_joint_names(loaded.embodiment)
        except EpisodeFormatError as e:
            raise ConfigError(str(loaded.path), "embodiment", f"{loaded.embodiment!r}: {e.message}") from None
        if len(names) != self.processor.dim:
            raise ConfigError(str(loaded.path), "embodiment",
                              f"{loaded.embodiment!r} has {self.processor.dim} action dims but "
                              f"{len(names)} known joint names")
        self.joint_names: Tuple[str, ...] = tuple(names)
        self.cameras: Tuple[str, ...] = tuple(loaded.cameras)
        self.image_size: Tuple[int, int] = tuple(loaded.image_size)  # type: ignore[assignment]
        self.n_obs_steps: int = int(loaded.config.n_obs_steps)
        self.horizon: int = int(loaded.config.horizon)
        self.n_action_steps: int = int(loaded.config.n_action_steps)
        #: Columns of the scene's state the policy reads (0: none; see InferenceLoop).
        self.env_state_dim: int = int(loaded.config.env_state_dim)
        self.action_period_ns = int(action_period_ns)
        self.device = device
        self.dtype = dtype
        self.num_steps = num_steps
        self.step_hook = step_hook
        self.guidance = guidance
        self.notes = tuple(notes)
        self._times_ns = np.arange(self.horizon, dtype=np.int64) * self.action_period_ns

    # ------------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, cfg: InferenceConfig, source: str = "config") -> "PolicyRunner":
        """Load ``cfg.checkpoint`` and set it up as ``cfg`` says; every problem is a
        :class:`ConfigError` (or the loader's ``CheckpointError``) naming what is wrong."""
        if not cfg.checkpoint:
            raise ConfigError(source, "inference.checkpoint", "empty: no policy checkpoint to run")
        # Explicit: on a robot PC shared with drivers and DDS, torch's default takes every core.
        torch.set_num_threads(int(cfg.torch_threads))
        device = resolve_device(cfg.device, source)
        notes = []
        dtype = _DTYPES[cfg.dtype]
        if dtype != torch.float32 and device.type != "cuda":
            notes.append(f"inference.dtype {cfg.dtype} runs as float32 on the CPU "
                         "(reduced precision is CUDA autocast only)")
            dtype = torch.float32
        loaded = load_pretrained(cfg.checkpoint, device)
        loaded.policy.trace_for_inference(cfg.trace)
        period_ns = _action_period_ns(cfg, loaded, source)
        guidance, hook = (None, None)
        if cfg.guidance:
            guidance, hook = _inference_guidance(cfg, loaded, device, source)
        return cls(loaded, action_period_ns=period_ns, device=device, dtype=dtype,
                   num_steps=cfg.num_steps or None, step_hook=hook, guidance=guidance, notes=tuple(notes))

    # ------------------------------------------------------------------------ running

    def describe(self) -> Dict[str, str]:
        """What diagnostics and logs report about this runner."""
        return {"checkpoint": str(self.loaded.path), "policy": self.loaded.policy_type,
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "guidance": "on" if self.step_hook is not None else "off",
                "traced": "on" if self.policy.inference_trace is not None else "off",
                "cameras": ",".join(self.cameras), "n_obs_steps": str(self.n_obs_steps),
                "horizon": str(self.horizon), "n_action_steps": str(self.n_action_steps),
                "action_period_ms": f"{self.action_period_ns / 1e6:g}"}

    def warmup(self, runs: int) -> None:
        """Run ``runs`` inferences on a synthetic observation (mid-range state, black frames),
        so kernel selection and allocator growth happen before the first real chunk."""
        h, w = self.image_size
        images = {cam: np.zeros((self.n_obs_steps, h, w, 3), dtype=np.uint8) for cam in self.cameras}
        mean = np.asarray(self.processor.stats["state"].mean, dtype=np.float32)
        state = np.broadcast_to(mean, (self.n_obs_steps, mean.shape[0])).copy()
        env = None
        if self.env_state_dim:
            env_mean = np.asarray(self.processor.stats["env_state"].mean, dtype=np.float32)
            env = np.broadcast_to(env_mean, (self.n_obs_steps, self.env_state_dim)).copy()
        for _ in range(int(runs)):
            self.infer(images, state, 0, "", env_state=env)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def infer(self, images: Mapping[str, np.ndarray], state: np.ndarray, stamp_ns: int, task: str,
              generator: Optional[torch.Generator] = None,
              env_state: Optional[np.ndarray] = None) -> ActionChunk:
        """One chunk for one observation.

        ``images``: camera -> uint8 RGB ``[T, H, W, 3]`` (any size: the processor resizes);
        ``state``: native ``[T, D]`` in :attr:`joint_names` order; ``T`` = :attr:`n_obs_steps`;
        ``env_state``: native ``[T, E]`` for a policy that reads the scene's state
        (:attr:`env_state_dim` > 0).
        Point i of the chunk is due at ``stamp_ns + i * action_period_ns``. A non-finite
        prediction raises :class:`~ate_core.runtime.chunk.ChunkRejected`.
        """
        state = np.asarray(state, dtype=np.float32)
        expected = (self.n_obs_steps, len(self.joint_names))
        if state.shape != expected:
            raise ValueError(f"state: expected {list(expected)} (n_obs_steps x joints), got {list(state.shape)}")
        obs = self.processor.batch_observation([self.processor.observation(images, state, task, env_state)])
        obs = obs.to(self.device, non_blocking=self.device.type == "cuda")
        autocast = self.device.type == "cuda" and self.dtype != torch.float32
        with torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=autocast):
            unified = self.policy.sample(obs, num_steps=self.num_steps, generator=generator,
                                         step_hook=self.step_hook)
        positions = self.processor.action_chunk(unified)[0]
        return make_chunk(self.joint_names, int(stamp_ns), self._times_ns, positions, self.joint_names)


# ---------------------------------------------------------------------------------------------
# Pieces of from_config


def _action_period_ns(cfg: InferenceConfig, loaded: LoadedPolicy, source: str) -> int:
    if cfg.action_period_s > 0:
        return int(round(cfg.action_period_s * 1e9))
    fps = loaded.meta.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ConfigError(source, "inference.action_period_s",
                          f"0 (take the training data's frame rate), but {loaded.path / CONFIG_FILE} records "
                          f"no usable fps ({fps!r}); set the time between chunk points explicitly")
    return int(round(1e9 / float(fps)))


def _inference_guidance(cfg: InferenceConfig, loaded: LoadedPolicy, device: torch.device,
                        source: str) -> Tuple[LatentGuidance, StepHook]:
    """ATE latent guidance while sampling: the adaptation VAE that shaped the checkpoint (or
    ``cfg.guidance_vae``, which must be that same VAE when the checkpoint records one), with
    the settings it was fine-tuned with."""
    from ate_core.align.checkpoint import load_vae
    from ate_core.steer.config import GuidanceConfig
    from ate_core.steer.guidance import LatentGuidance
    from ate_core.steer.record import FinetuneRecord

    config_json = loaded.path / CONFIG_FILE
    record = FinetuneRecord.from_meta(loaded.meta, config_json)
    recorded = record.ate if record is not None else None
    path = cfg.guidance_vae or (recorded.path if recorded is not None else "")
    if not path:
        raise ConfigError(source, "inference.guidance_vae",
                          f"guidance is on but no VAE is given and {config_json} records none (the checkpoint "
                          f"was not fine-tuned with method 'ate'); set inference.guidance_vae")
    if not Path(path).exists():
        where = "" if cfg.guidance_vae else f" (recorded in {config_json} finetune.ate.path)"
        raise ConfigError(source, "inference.guidance_vae",
                          f"{path}: no such VAE checkpoint{where}; copy it here and set inference.guidance_vae")
    vae = load_vae(path, device)
    if recorded is not None and vae.sha256 != recorded.sha256:
        raise ConfigError(source, "inference.guidance_vae",
                          f"{path} (sha256 {vae.sha256[:12]}) is not the VAE this checkpoint was fine-tuned with "
                          f"(sha256 {recorded.sha256[:12]}, {recorded.path})")
    settings = recorded.settings() if recorded is not None else GuidanceConfig()
    gcfg = dataclasses.replace(settings, vae=path, inference=dataclasses.replace(
        settings.inference, enabled=True, scale=float(cfg.guidance_scale)))
    guidance = LatentGuidance.from_checkpoint(vae, gcfg)
    guidance.check_compatible(loaded.config, loaded.action_space, loaded.stats, loaded.norm_mode,
                              "inference.guidance_vae")
    hook = guidance.step_hook()
    assert hook is not None  # enabled above
    return guidance.to(device), hook
