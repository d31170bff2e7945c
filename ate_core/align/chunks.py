"""Action chunks of episode data sets, in the policy's model space, for the alignment VAEs.

The VAEs must see chunks exactly as the policy does, because the guidance later encodes the
policy's own (noisy) chunks: the same chunking as :class:`~ate_core.data.dataset.EpisodeDataset`
(one chunk per start step, the last action repeated past the episode's end), the same
per-embodiment normalisation statistics as ``ate_train`` computes
(:func:`ate_core.data.stats.compute_stats` over every step of the embodiment's data), the same
normalisation mode, and the same slots of the unified action vector.

Only actions are read (``EpisodeReader(..., cameras=())``): no frame is ever decoded, so a data
set of thousands of episodes loads in seconds and fits in memory as one array.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.utils.data

from ate_core.data.episode import EpisodeFormatError, EpisodeReader, PathLike, list_episodes, read_info
from ate_core.data.stats import compute_stats
from ate_core.policy.transforms import Normalize
from ate_core.data.spaces import NormStats, NormStatsError, UnifiedActionSpace

__all__ = ["ActionChunkDataset"]


@dataclass(frozen=True)
class _Steps:
    """The per-step arrays :func:`compute_stats` reads, over several episodes of one embodiment."""

    state: np.ndarray
    action: np.ndarray

    def states(self) -> np.ndarray:
        return self.state

    def actions(self) -> np.ndarray:
        return self.action


class ActionChunkDataset(torch.utils.data.Dataset):
    """Every action chunk of the selected episodes of ``roots``, normalised and unified.

    Items are ``(chunk float32 [horizon, width], mask bool [width])``; :meth:`get_batch` builds
    many at once. ``stats`` (embodiment -> ``{"state", "action"}`` :class:`NormStats`) is used
    for the embodiments it covers and computed from the data for the others; ``episodes``
    keeps only those episode indices of every root. Roots may be of different embodiments.
    """

    def __init__(self, roots: Union[PathLike, Sequence[PathLike]], *, horizon: int,
                 action_space: UnifiedActionSpace, norm_mode: str = "mean_std",
                 stats: Optional[Mapping[str, Mapping[str, NormStats]]] = None,
                 episodes: Optional[Sequence[int]] = None) -> None:
        if isinstance(roots, (str, Path)):
            roots = [roots]
        if not roots:
            raise ValueError("ActionChunkDataset: no dataset roots given")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"ActionChunkDataset.horizon: expected a positive int, got {horizon!r}")
        self.roots: Tuple[Path, ...] = tuple(Path(r) for r in roots)
        self.horizon = horizon
        self.action_space = action_space
        self.norm_mode = norm_mode

        # -- read every episode's states and actions (no camera files are opened)
        per_root: List[Tuple[str, List[EpisodeReader]]] = []
        for root in self.roots:
            info = read_info(root)
            action_space.slots(info.embodiment)  # an embodiment without slots fails here
            on_disk = list_episodes(root)
            chosen = on_disk if episodes is None else [int(e) for e in episodes]
            missing = sorted(set(chosen) - set(on_disk))
            if missing:
                raise EpisodeFormatError(root, f"episodes {missing} requested but not on disk")
            readers = [EpisodeReader(root, e, info=info, cameras=()) for e in chosen]
            if not readers:
                raise EpisodeFormatError(root, "no episodes to read")
            per_root.append((info.embodiment, readers))

        embodiments: List[str] = []
        for emb, _ in per_root:
            if emb not in embodiments:
                embodiments.append(emb)
        self.embodiments: Tuple[str, ...] = tuple(embodiments)

        # -- statistics: given ones first, the rest as ate_train computes them
        self.stats: Dict[str, Dict[str, NormStats]] = {}
        for emb in self.embodiments:
            given = None if stats is None else stats.get(emb)
            if given is not None:
                if "action" not in given or "state" not in given:
                    raise NormStatsError(f"ActionChunkDataset: stats of {emb!r} lack 'state'/'action' "
                                         f"(has {sorted(given)})")
                self.stats[emb] = {"state": given["state"], "action": given["action"]}
                continue
            readers = [r for e, rs in per_root if e == emb for r in rs]
            steps = _Steps(np.concatenate([r.state for r in readers]), np.concatenate([r.action for r in readers]))
            self.stats[emb] = dict(compute_stats(steps))
        for emb in self.embodiments:
            dim = action_space.dim(emb)
            if self.stats[emb]["action"].shape != (dim,):
                raise NormStatsError(f"ActionChunkDataset: action stats of {emb!r} have shape "
                                     f"{list(self.stats[emb]['action'].shape)}, the embodiment has {dim} dims")

        # -- one array of normalised unified actions, and where each chunk starts and stops
        rows: List[np.ndarray] = []
        starts: List[np.ndarray] = []
        lasts: List[np.ndarray] = []
        emb_ids: List[np.ndarray] = []
        offset = 0
        for emb, readers in per_root:
            norm = Normalize(self.stats[emb]["action"], norm_mode)
            k = self.embodiments.index(emb)
            for r in readers:
                unified = action_space.pad(norm(np.asarray(r.action, dtype=np.float32)), emb)
                rows.append(unified.astype(np.float32, copy=False))
                length = unified.shape[0]
                starts.append(offset + np.arange(length, dtype=np.int64))
                lasts.append(np.full(length, offset + length - 1, dtype=np.int64))
                emb_ids.append(np.full(length, k, dtype=np.int64))
                offset += length
        self._actions = torch.from_numpy(np.ascontiguousarray(np.concatenate(rows)))
        self._start = torch.from_numpy(np.concatenate(starts))
        self._last = torch.from_numpy(np.concatenate(lasts))
        self._embodiment_id = torch.from_numpy(np.concatenate(emb_ids))
        self._masks = torch.stack([torch.from_numpy(action_space.mask(e)) for e in self.embodiments])
        self._steps = torch.arange(horizon, dtype=torch.int64)

    @property
    def width(self) -> int:
        return self.action_space.width

    def __len__(self) -> int:
        return int(self._start.shape[0])

    def get_batch(self, indices: Union[Sequence[int], torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(chunks float32 [B, horizon, width], masks bool [B, width])`` of these chunk indices."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"chunk index outside [0, {n})")
        idx = torch.where(idx < 0, idx + n, idx)
        rows = torch.minimum(self._start[idx, None] + self._steps[None], self._last[idx, None])
        return self._actions[rows], self._masks[self._embodiment_id[idx]]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"chunk index must be an int, got {index!r}")
        chunk, mask = self.get_batch([int(index)])
        return chunk[0], mask[0]
