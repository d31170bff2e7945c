"""Between a robot's native observations/actions and a policy's model space.

The processor owns the one definition of how data enters and leaves the model: camera frames
resized to the model's input size (uint8, CHW), state and action normalised with the data
set's native-dim statistics and written into the unified action vector, and the inverse for
predicted chunks. Training (through :class:`ProcessedDataset` and :func:`collate`), inference
and replay all call it, so the robot never sees data prepared differently from training
(LeRobot's processors; the pieces are :mod:`ate_core.policy.transforms`' small transforms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.utils.data

from ate_core.policy import base
from ate_core.policy.transforms import Compose, Normalize, PadActions
from ate_core.data.spaces import NormStats, NormStatsError, UnifiedActionSpace

if TYPE_CHECKING:
    from ate_core.data.dataset import EpisodeDataset, RawSample

__all__ = [
    "ProcessorInputError",
    "ProcessedObservation",
    "ProcessedSample",
    "PolicyProcessor",
    "ProcessedDataset",
    "collate",
    "resize_frame",
]


class ProcessorInputError(ValueError):
    """An observation handed to the processor is malformed (missing camera, wrong dtype/shape)."""


@dataclass(frozen=True)
class ProcessedObservation:
    """One observation in model space (numpy).

    ``images``: uint8 ``[T_obs, N_cam, 3, H, W]``; ``state``: float32 ``[T_obs, W]``;
    ``state_mask``: bool ``[W]``; ``task``: the instruction; ``env_state``: float32
    ``[T_obs, E]`` normalised, for a policy that reads the scene's state (else None).
    """

    images: np.ndarray
    state: np.ndarray
    state_mask: np.ndarray
    task: str
    env_state: Optional[np.ndarray] = None


@dataclass(frozen=True)
class ProcessedSample:
    """One training sample in model space: ``action`` float32 ``[H, W]``, masks as in base.Batch."""

    obs: ProcessedObservation
    action: np.ndarray
    action_mask: np.ndarray
    action_is_pad: np.ndarray


def resize_frame(rgb: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """uint8 [h, w, 3] -> [H, W, 3]; area averaging when shrinking (no aliasing), else bilinear."""
    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    shrink = h <= rgb.shape[0] and w <= rgb.shape[1]
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class PolicyProcessor:
    """Native <-> model space for one embodiment, one camera set and one image size.

    ``stats`` holds ``"state"`` and ``"action"`` :class:`NormStats` in the embodiment's native
    dims (:func:`ate_core.data.stats.compute_stats`). ``norm_mode`` is ``"mean_std"`` or
    ``"min_max"`` (Diffusion Policy's [-1, 1]). ``cameras`` may be empty (a policy of
    low-dimensional observations). ``env_state_dim`` > 0: the policy also reads that many
    columns of the scene's state (``env_state``), normalised with ``stats["env_state"]`` and
    never padded (it describes the scene, not the embodiment).
    """

    def __init__(self, *, action_space: UnifiedActionSpace, embodiment: str,
                 stats: Mapping[str, NormStats], cameras: Sequence[str],
                 image_size: Tuple[int, int], norm_mode: str = "mean_std",
                 env_state_dim: int = 0) -> None:
        dim = action_space.dim(embodiment)  # unknown embodiment -> ActionSpaceError
        for key in ("state", "action"):
            if key not in stats:
                raise NormStatsError(f"PolicyProcessor: stats has no {key!r} entry "
                                     f"(has {sorted(stats)})")
            if stats[key].shape != (dim,):
                raise NormStatsError(f"PolicyProcessor: stats[{key!r}] has shape "
                                     f"{list(stats[key].shape)}, embodiment {embodiment!r} has "
                                     f"{dim} native dims")
        if isinstance(cameras, str):
            raise ValueError(f"PolicyProcessor.cameras: expected a sequence of names, "
                             f"got {cameras!r}")
        if env_state_dim:
            env = stats.get("env_state")
            if env is None:
                raise NormStatsError(f"PolicyProcessor: the policy reads {env_state_dim} env_state "
                                     f"columns but stats has no 'env_state' entry (has {sorted(stats)}): "
                                     f"was it trained on a data set with env_state_names?")
            if env.shape != (env_state_dim,):
                raise NormStatsError(f"PolicyProcessor: stats['env_state'] has shape "
                                     f"{list(env.shape)}, the policy reads {env_state_dim} columns")
        try:
            h, w = image_size
        except (TypeError, ValueError):
            raise ValueError(f"PolicyProcessor.image_size: expected (height, width), "
                             f"got {image_size!r}") from None
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                   for v in (h, w)):
            raise ValueError(f"PolicyProcessor.image_size: expected positive ints, "
                             f"got {image_size!r}")
        self.action_space = action_space
        self.embodiment = embodiment
        self.stats: Dict[str, NormStats] = {"state": stats["state"], "action": stats["action"]}
        self.env_state_dim = int(env_state_dim)
        self.env_transform = None
        if self.env_state_dim:
            self.stats["env_state"] = stats["env_state"]
            self.env_transform = Normalize(self.stats["env_state"], norm_mode)
        self.cameras: Tuple[str, ...] = tuple(cameras)
        self.image_size: Tuple[int, int] = (int(h), int(w))
        self.norm_mode = norm_mode
        pad = PadActions(action_space, embodiment)
        self.state_transform = Compose([Normalize(self.stats["state"], norm_mode), pad])
        self.action_transform = Compose([Normalize(self.stats["action"], norm_mode), pad])
        self.action_output = self.action_transform.inverse()
        mask = action_space.mask(embodiment)
        mask.setflags(write=False)
        self.mask: np.ndarray = mask

    def __repr__(self) -> str:
        return (f"PolicyProcessor(embodiment={self.embodiment!r}, cameras={self.cameras}, "
                f"image_size={self.image_size}, norm_mode={self.norm_mode!r})")

    @property
    def dim(self) -> int:
        return self.action_space.dim(self.embodiment)

    @classmethod
    def from_dataset(cls, dataset: "EpisodeDataset", action_space: UnifiedActionSpace,
                     cameras: Optional[Sequence[str]] = None,
                     image_size: Tuple[int, int] = (96, 96),
                     norm_mode: str = "mean_std", env_state_dim: int = 0) -> "PolicyProcessor":
        """A processor for ``dataset``'s embodiment with statistics computed over it."""
        from ate_core.data.stats import compute_stats
        return cls(action_space=action_space, embodiment=dataset.embodiment,
                   stats=compute_stats(dataset),
                   cameras=dataset.cameras if cameras is None else cameras,
                   image_size=image_size, norm_mode=norm_mode, env_state_dim=env_state_dim)

    # ------------------------------------------------------------------------ native -> model

    def images(self, images: Mapping[str, np.ndarray]) -> np.ndarray:
        """camera -> uint8 RGB [T, h, w, 3] (or one [h, w, 3]) to uint8 [T, N_cam, 3, H, W]."""
        per_cam = []
        steps = None
        for cam in self.cameras:
            if cam not in images:
                raise ProcessorInputError(f"camera {cam!r}: missing from the observation "
                                          f"(has {sorted(images)})")
            frames = np.asarray(images[cam])
            if frames.ndim == 3:
                frames = frames[None]
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise ProcessorInputError(f"camera {cam!r}: expected uint8 RGB [T, H, W, 3], "
                                          f"got {frames.dtype} {list(frames.shape)}")
            if steps is None:
                steps = frames.shape[0]
            elif frames.shape[0] != steps:
                raise ProcessorInputError(f"camera {cam!r}: {frames.shape[0]} frames, "
                                          f"{self.cameras[0]!r} has {steps}")
            resized = np.stack([resize_frame(f, self.image_size) for f in frames])
            per_cam.append(resized.transpose(0, 3, 1, 2))
        return np.ascontiguousarray(np.stack(per_cam, axis=1))

    def state(self, state: np.ndarray) -> np.ndarray:
        """Native float [..., D] -> normalised unified float32 [..., W] (padding 0)."""
        return self.state_transform(np.asarray(state, dtype=np.float32))

    def action(self, action: np.ndarray) -> np.ndarray:
        """Native float [..., D] -> normalised unified float32 [..., W] (padding 0)."""
        return self.action_transform(np.asarray(action, dtype=np.float32))

    def observation(self, images: Mapping[str, np.ndarray], state: np.ndarray,
                    task: str, env_state: Optional[np.ndarray] = None) -> ProcessedObservation:
        """One observation: frames [T, h, w, 3] per camera, state [T, D] and, for a policy that
        reads it, env_state [T, E] (or one step each)."""
        st = np.asarray(state, dtype=np.float32)
        if st.ndim == 1:
            st = st[None]
        if self.cameras:
            imgs = self.images(images)
        else:
            imgs = np.zeros((st.shape[0] if st.ndim == 2 else 1, 0, 3, *self.image_size), np.uint8)
        if st.ndim != 2 or st.shape[0] != imgs.shape[0]:
            raise ProcessorInputError(f"state: expected [T, {self.dim}] with T = "
                                      f"{imgs.shape[0]} (the frames per camera), "
                                      f"got {list(st.shape)}")
        env = None
        if self.env_transform is not None:
            if env_state is None:
                raise ProcessorInputError(f"env_state: the policy reads {self.env_state_dim} columns "
                                          f"of the scene's state; the observation has none")
            env = np.asarray(env_state, dtype=np.float32)
            if env.ndim == 1:
                env = env[None]
            if env.shape != (st.shape[0], self.env_state_dim) or not np.all(np.isfinite(env)):
                raise ProcessorInputError(f"env_state: expected finite [{st.shape[0]}, "
                                          f"{self.env_state_dim}], got {list(env.shape)}")
            env = self.env_transform(env).astype(np.float32, copy=False)
        return ProcessedObservation(images=imgs, state=self.state(st), state_mask=self.mask.copy(),
                                    task=str(task), env_state=env)

    def sample(self, raw: "RawSample") -> ProcessedSample:
        """A :class:`RawSample` of this processor's embodiment in model space."""
        if raw.embodiment != self.embodiment:
            raise ProcessorInputError(f"sample of embodiment {raw.embodiment!r} given to the "
                                      f"processor of {self.embodiment!r}")
        obs = self.observation(raw.images, raw.state, raw.task, raw.env_state)
        return ProcessedSample(obs=obs, action=self.action(raw.action),
                               action_mask=self.mask.copy(),
                               action_is_pad=np.asarray(raw.action_is_pad, dtype=bool))

    def batch_observation(self, obs: Sequence[ProcessedObservation]) -> base.Observation:
        """Processed observations stacked into a torch :class:`base.Observation`."""
        return _stack_observations(obs)

    # ------------------------------------------------------------------------ model -> native

    def action_chunk(self, unified: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        """Normalised unified [H, W] or [B, H, W] -> native float32 [H, D] / [B, H, D]."""
        if isinstance(unified, torch.Tensor):
            unified = unified.detach().to("cpu", torch.float32).numpy()
        unified = np.asarray(unified, dtype=np.float32)
        if unified.ndim not in (2, 3):
            raise ProcessorInputError(f"action chunk: expected [H, W] or [B, H, W], "
                                      f"got {list(unified.shape)}")
        return np.ascontiguousarray(self.action_output(unified), dtype=np.float32)

    def dataset(self, dataset: "EpisodeDataset") -> "ProcessedDataset":
        return ProcessedDataset(dataset, self)


class ProcessedDataset(torch.utils.data.Dataset):
    """An episode data set seen through a processor: yields :class:`ProcessedSample`.

    Use with ``DataLoader(..., collate_fn=collate)``; wrap each data set with its own
    embodiment's processor and ``ConcatDataset`` them to train across embodiments.
    """

    def __init__(self, dataset: "EpisodeDataset", processor: PolicyProcessor) -> None:
        if getattr(dataset, "embodiment", processor.embodiment) != processor.embodiment:
            raise ProcessorInputError(f"dataset of embodiment {dataset.embodiment!r} given to "
                                      f"the processor of {processor.embodiment!r}")
        self.dataset = dataset
        self.processor = processor

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> ProcessedSample:
        return self.processor.sample(self.dataset[index])


def _stack_observations(obs: Sequence[ProcessedObservation]) -> base.Observation:
    if not obs:
        raise ValueError("cannot batch zero observations")
    envs = [o.env_state for o in obs]
    if any(e is None for e in envs) and not all(e is None for e in envs):
        raise ValueError("cannot batch observations with and without env_state")
    return base.Observation(
        images=torch.from_numpy(np.stack([o.images for o in obs])),
        state=torch.from_numpy(np.stack([o.state for o in obs]).astype(np.float32, copy=False)),
        state_mask=torch.from_numpy(np.stack([o.state_mask for o in obs])),
        task=tuple(o.task for o in obs),
        env_state=None if envs[0] is None else torch.from_numpy(np.stack(envs)),
    )


def collate(samples: Sequence[ProcessedSample]) -> base.Batch:
    """``DataLoader`` ``collate_fn``: processed samples -> a torch :class:`base.Batch`."""
    if not samples:
        raise ValueError("cannot collate zero samples")
    return base.Batch(
        obs=_stack_observations([s.obs for s in samples]),
        action=torch.from_numpy(np.stack([s.action for s in samples]).astype(np.float32,
                                                                              copy=False)),
        action_mask=torch.from_numpy(np.stack([s.action_mask for s in samples])),
        action_is_pad=torch.from_numpy(np.stack([s.action_is_pad for s in samples])),
    )
