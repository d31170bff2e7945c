"""A run's demonstrations: the episode data sets its config names, the embodiment each records,
and the normalisation statistics per embodiment.

The trainer normalises with these statistics, and fine-tuning with guidance checks the
adaptation VAE against the very same ones before the first step, so both compute them here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from ate_core.config import ConfigError
from ate_core.data.dataset import EpisodeDataset
from ate_core.data.spaces import NormStats
from ate_core.data.stats import ENV_STATE_KEY, compute_stats
from ate_core.train.config import TrainConfig
from ate_core.train.stage import TrainingError

__all__ = ["open_datasets", "dataset_embodiment", "stats_by_embodiment"]


def open_datasets(cfg: TrainConfig, policy_cfg: Any, source: str) -> List[EpisodeDataset]:
    """One data set per ``cfg.dataset.roots``, windowed as the policy (``policy_cfg``) reads it."""
    out = []
    for root in cfg.dataset.roots:
        if not Path(root).exists():
            raise ConfigError(source, "dataset.roots", f"{root}: no such dataset folder")
        out.append(EpisodeDataset(root, horizon=policy_cfg.horizon, n_obs_steps=policy_cfg.n_obs_steps,
                                  cameras=tuple(policy_cfg.cameras),
                                  episodes=list(cfg.dataset.episodes) if cfg.dataset.episodes else None))
    return out


def dataset_embodiment(dataset: EpisodeDataset) -> str:
    """The embodiment a data set recorded: its statistics and unified slots are chosen by it."""
    if dataset.embodiment:
        return dataset.embodiment
    raise TrainingError(f"{dataset.root}: the dataset does not record its embodiment")


def stats_by_embodiment(datasets: Sequence[EpisodeDataset],
                        embodiments: Sequence[str]) -> Dict[str, Dict[str, NormStats]]:
    """Normalisation stats per embodiment, over every step of every dataset of that embodiment."""
    by_emb: Dict[str, List[EpisodeDataset]] = {}
    for ds, emb in zip(datasets, embodiments):
        by_emb.setdefault(emb, []).append(ds)
    out: Dict[str, Dict[str, NormStats]] = {}
    for emb, group in by_emb.items():
        if len(group) == 1:
            out[emb] = dict(compute_stats(group[0]))
        else:  # the same statistics compute_stats takes, over the union of the datasets
            out[emb] = {"state": NormStats.from_data(np.concatenate([ds.states() for ds in group])),
                        "action": NormStats.from_data(np.concatenate([ds.actions() for ds in group]))}
            envs = [ds.env_states() for ds in group]
            if all(e is not None for e in envs) and len({e.shape[1] for e in envs}) == 1:
                out[emb][ENV_STATE_KEY] = NormStats.from_data(np.concatenate(envs))
    return out
