"""Recorded demonstrations: the episode format, training samples, normalisation statistics.

``ate_core.data.episode`` and ``ate_core.data.stats`` need only numpy, OpenCV and safetensors;
the torch-based :class:`EpisodeDataset` is imported on first use, so a recorder or a
conversion tool importing this package does not load torch.
"""

from __future__ import annotations

from typing import Any

from ate_core.data.episode import (DatasetInfo, Episode, EpisodeFormatError, EpisodeReader,
                                   EpisodeWriter, create_dataset, default_joint_names,
                                   list_episodes, read_info, write_episode)
from ate_core.data.stats import compute_stats, stats_from_tensors, stats_to_tensors

__all__ = [
    "DatasetInfo",
    "Episode",
    "EpisodeFormatError",
    "EpisodeReader",
    "EpisodeWriter",
    "create_dataset",
    "default_joint_names",
    "list_episodes",
    "read_info",
    "write_episode",
    "compute_stats",
    "stats_from_tensors",
    "stats_to_tensors",
    "EpisodeDataset",
    "RawSample",
    "generate_synthetic_dataset",
]

_LAZY = {
    "EpisodeDataset": "ate_core.data.dataset",
    "RawSample": "ate_core.data.dataset",
    "generate_synthetic_dataset": "ate_core.data.synthetic",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ate_core.data' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(module), name)
