"""Training samples from an episode data set: observation windows and action chunks.

One sample per (episode, step t), as Diffusion Policy samples its replay buffer: the
observation is steps ``t - n_obs_steps + 1 .. t`` with indices clamped at 0 (the first frame
repeated at the start of an episode), the action chunk is steps ``t .. t + horizon - 1`` with
the last action repeated past the end and flagged in ``action_is_pad`` so the loss skips it.
Values stay in native units; :mod:`ate_core.policy.processor` turns them into model space.

States and actions of every selected episode are held in memory (kilobytes per episode); JPEG
frames are read and decoded per sample, so worker processes share nothing but paths.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch.utils.data

from ate_core.data.episode import (DatasetInfo, EpisodeFormatError, EpisodeReader, PathLike,
                                   list_episodes, read_info)

__all__ = ["RawSample", "EpisodeDataset", "observation_steps", "action_steps"]


@dataclass(frozen=True)
class RawSample:
    """One training sample in native units (numpy).

    ``images``: camera -> uint8 RGB ``[n_obs_steps, H, W, 3]``; ``state``: float32
    ``[n_obs_steps, D]``; ``action``: float32 ``[horizon, D]``; ``action_is_pad``: bool
    ``[horizon]``, True for steps past the episode's end (their action repeats the last one).
    ``env_state``: float32 ``[n_obs_steps, E]`` of a data set with ``env_state_names``, else None.
    """

    images: Dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    action_is_pad: np.ndarray
    task: str
    embodiment: str
    env_state: Optional[np.ndarray] = None


def observation_steps(t: int, n_obs_steps: int) -> np.ndarray:
    """Steps ``t - n_obs_steps + 1 .. t``, clamped at 0 (the first frame repeats)."""
    return np.maximum(np.arange(t - n_obs_steps + 1, t + 1), 0)


def action_steps(t: int, horizon: int, length: int) -> Tuple[np.ndarray, np.ndarray]:
    """Steps ``t .. t + horizon - 1`` clamped to the last step, and which of them are padding."""
    steps = np.arange(t, t + horizon)
    is_pad = steps >= length
    return np.minimum(steps, length - 1), is_pad


class EpisodeDataset(torch.utils.data.Dataset):
    """Every step of every selected episode of the data set at ``root``, as a :class:`RawSample`.

    ``cameras``: which cameras to load, in this order (default: all, in info.json's order).
    ``episodes``: which episode indices (default: all on disk). Several data sets of the same or
    different embodiments combine with ``torch.utils.data.ConcatDataset``.
    """

    def __init__(self, root: PathLike, *, horizon: int, n_obs_steps: int,
                 cameras: Optional[Sequence[str]] = None,
                 episodes: Optional[Sequence[int]] = None) -> None:
        for name, value in (("horizon", horizon), ("n_obs_steps", n_obs_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EpisodeDataset.{name}: expected a positive int, got {value!r}")
        self.root = Path(root)
        self.horizon = horizon
        self.n_obs_steps = n_obs_steps
        self.info: DatasetInfo = read_info(self.root)
        if cameras is None:
            cameras = tuple(self.info.cameras)
        if isinstance(cameras, str):
            raise ValueError("EpisodeDataset.cameras: expected a sequence of names, got a string")
        unknown = [c for c in cameras if c not in self.info.cameras]
        if unknown:
            raise EpisodeFormatError(self.root / "info.json",
                                     f"cameras {unknown} requested, the dataset has "
                                     f"{list(self.info.cameras)}")
        self.cameras: Tuple[str, ...] = tuple(cameras)
        on_disk = list_episodes(self.root)
        if episodes is None:
            episodes = on_disk
        missing = sorted(set(int(e) for e in episodes) - set(on_disk))
        if missing:
            raise EpisodeFormatError(self.root, f"episodes {missing} requested but not on disk")
        self.episode_indices: Tuple[int, ...] = tuple(int(e) for e in episodes)
        self._readers: List[EpisodeReader] = [
            EpisodeReader(self.root, e, info=self.info, cameras=self.cameras)
            for e in self.episode_indices]
        starts = [0]
        for r in self._readers:
            starts.append(starts[-1] + r.length)
        self._starts = starts

    @property
    def embodiment(self) -> str:
        return self.info.embodiment

    @property
    def episode_bounds(self) -> Tuple[Tuple[int, int], ...]:
        """Per selected episode, its ``(start, stop)`` range of sample indices."""
        return tuple(zip(self._starts[:-1], self._starts[1:]))

    @property
    def readers(self) -> Tuple[EpisodeReader, ...]:
        return tuple(self._readers)

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, index: int) -> Tuple[int, int]:
        """``(position among the selected episodes, step t)`` of sample ``index``."""
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"sample index must be an int, got {index!r}")
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"sample {index} outside [0, {n})")
        k = bisect.bisect_right(self._starts, int(index)) - 1
        return k, int(index) - self._starts[k]

    def __getitem__(self, index: int) -> RawSample:
        k, t = self.locate(index)
        reader = self._readers[k]
        obs = observation_steps(t, self.n_obs_steps)
        act, is_pad = action_steps(t, self.horizon, reader.length)
        return RawSample(
            images={cam: reader.frames(cam, obs) for cam in self.cameras},
            state=reader.state[obs].copy(),
            action=reader.action[act].copy(),
            action_is_pad=is_pad,
            task=reader.task,
            embodiment=self.info.embodiment,
            env_state=None if reader.env_state is None else reader.env_state[obs].copy(),
        )

    def states(self) -> np.ndarray:
        """float32 [N, D]: the state of every step of every selected episode."""
        return np.concatenate([r.state for r in self._readers]) if self._readers \
            else np.zeros((0, self.info.dim), dtype=np.float32)

    def env_states(self) -> Optional[np.ndarray]:
        """float32 [N, E]: the env_state of every step of every selected episode; None in a
        data set without ``env_state_names``."""
        if not self.info.env_dim:
            return None
        return np.concatenate([r.env_state for r in self._readers]) if self._readers \
            else np.zeros((0, self.info.env_dim), dtype=np.float32)

    def actions(self) -> np.ndarray:
        """float32 [N, D]: the action of every step of every selected episode."""
        return np.concatenate([r.action for r in self._readers]) if self._readers \
            else np.zeros((0, self.info.dim), dtype=np.float32)
