"""Normalisation statistics of episode data sets, and their flat form inside a checkpoint.

Statistics are computed in each embodiment's native dims over every step of every episode
(not per sample window, which would weight an episode's ends by the window length) and travel
with the checkpoint as plain float32 tensors keyed ``"<embodiment>/<key>/<stat>"``, e.g.
``"rm75_bimanual/action/mean"``, so a safetensors file holds weights and statistics together.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from ate_core.data.episode import EpisodeReader, PathLike, list_episodes, read_info
from ate_core.data.spaces import NormStats, NormStatsError

__all__ = ["STAT_KEYS", "ENV_STATE_KEY", "compute_stats", "stats_to_tensors", "stats_from_tensors"]

#: The statistics a policy needs per embodiment.
STAT_KEYS = ("state", "action")
#: The statistics of a data set's low-dimensional scene state, where it has one.
ENV_STATE_KEY = "env_state"
_FIELDS = ("mean", "std", "min", "max")


def compute_stats(source: Union[PathLike, Any]) -> Dict[str, NormStats]:
    """``{"state": NormStats, "action": NormStats}`` over all steps of a data set, plus
    ``"env_state"`` for a data set with ``env_state_names``.

    ``source`` is a data set directory (every episode on disk) or an
    :class:`~ate_core.data.dataset.EpisodeDataset` (its selected episodes).
    """
    if hasattr(source, "states") and hasattr(source, "actions"):
        states, actions = source.states(), source.actions()
        env = source.env_states() if hasattr(source, "env_states") else None
    else:
        info = read_info(source)
        readers = [EpisodeReader(source, e, info=info, cameras=()) for e in list_episodes(source)]
        if not readers:
            raise NormStatsError(f"compute_stats: no episodes in {source}")
        states = np.concatenate([r.state for r in readers])
        actions = np.concatenate([r.action for r in readers])
        env = np.concatenate([r.env_state for r in readers]) if info.env_dim else None
    if len(states) == 0:
        raise NormStatsError(f"compute_stats: no episodes in {source}")
    out = {"state": NormStats.from_data(states), "action": NormStats.from_data(actions)}
    if env is not None:
        out[ENV_STATE_KEY] = NormStats.from_data(env)
    return out


def stats_to_tensors(stats_by_embodiment: Mapping[str, Mapping[str, NormStats]],
                     prefix: str = "") -> Dict[str, np.ndarray]:
    """Flat float32 arrays ``{prefix}{embodiment}/{key}/{mean|std|min|max}``."""
    out: Dict[str, np.ndarray] = {}
    for embodiment, stats in stats_by_embodiment.items():
        for key, s in stats.items():
            if "/" in embodiment or "/" in key:
                raise NormStatsError(f"stats_to_tensors: names may not contain '/': "
                                     f"{embodiment!r}, {key!r}")
            out.update(s.to_dict(prefix=f"{prefix}{embodiment}/{key}/"))
    return out


def stats_from_tensors(tensors: Mapping[str, Any], *, prefix: str = "",
                       embodiments: Optional[Sequence[str]] = None,
                       keys: Sequence[str] = STAT_KEYS) -> Dict[str, Dict[str, NormStats]]:
    """Inverse of :func:`stats_to_tensors`; other entries of ``tensors`` are ignored.

    ``embodiments`` defaults to every embodiment found under ``prefix``; each must have all of
    ``keys`` with all four statistics, else :class:`NormStatsError` names the missing tensor;
    ``env_state`` statistics come along where they are stored.
    Values may be numpy arrays or torch tensors (``safetensors.torch.load_file``).
    """
    if embodiments is None:
        found = []
        for name in tensors:
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            if len(parts) == 3 and parts[2] in _FIELDS and parts[0] not in found:
                found.append(parts[0])
        if not found:
            raise NormStatsError(f"stats_from_tensors: no statistics under prefix {prefix!r} "
                                 f"(expected keys like {prefix}<embodiment>/action/mean)")
        embodiments = found
    out: Dict[str, Dict[str, NormStats]] = {}
    for embodiment in embodiments:
        out[embodiment] = {key: NormStats.from_dict(tensors, prefix=f"{prefix}{embodiment}/{key}/")
                           for key in keys}
        env_prefix = f"{prefix}{embodiment}/{ENV_STATE_KEY}/"
        if ENV_STATE_KEY not in keys and any(name.startswith(env_prefix) for name in tensors):
            out[embodiment][ENV_STATE_KEY] = NormStats.from_dict(tensors, prefix=env_prefix)
    return out
