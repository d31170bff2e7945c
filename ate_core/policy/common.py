"""Configuration every chunking policy shares: horizons, cameras, image size, unified width."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Tuple

from ate_core.config import Problem, checked
from ate_core.policy.encoder import EncoderConfig, encoder_input_problem
from ate_core.data.spaces import UNIFIED_ACTION_WIDTH

__all__ = ["ChunkingPolicyConfig"]


def _positive_int(value: int) -> Optional[str]:
    return None if value > 0 else f"{value} must be > 0"


def _non_negative_int(value: int) -> Optional[str]:
    return None if value >= 0 else f"{value} must be >= 0"


def _image_size(value: Tuple[int, int]) -> Optional[str]:
    return None if all(v >= 16 for v in value) else f"{list(value)}: each side must be >= 16 pixels"


@dataclass(frozen=True)
class ChunkingPolicyConfig:
    """Fields shared by the diffusion and flow policies (defaults: Diffusion Policy's horizons).

    ``horizon`` actions are predicted per chunk from ``n_obs_steps`` observations;
    ``n_action_steps`` of them are meant to be executed before the next chunk is due.
    ``cameras`` may be empty: a policy of low-dimensional observations (proprioception and
    ``env_state_dim`` columns of the scene's state, LeRobot's ``observation.environment_state``,
    which a data set with ``env_state_names`` holds; 0: the policy does not read it).
    """

    horizon: int = checked(16, check=_positive_int)
    n_obs_steps: int = checked(2, check=_positive_int)
    n_action_steps: int = checked(8, check=_positive_int)
    action_width: int = checked(UNIFIED_ACTION_WIDTH, check=_positive_int)
    state_width: int = checked(UNIFIED_ACTION_WIDTH, check=_positive_int)
    cameras: Tuple[str, ...] = ("head", "left_wrist", "right_wrist")
    env_state_dim: int = checked(0, check=_non_negative_int)
    image_size: Tuple[int, int] = checked((224, 224), check=_image_size)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def problems(self) -> Iterator[Problem]:
        if self.n_action_steps > self.horizon:
            yield "n_action_steps", f"{self.n_action_steps} exceeds horizon {self.horizon}"
        if len(set(self.cameras)) != len(self.cameras):
            yield "cameras", "camera names repeat"
        problem = encoder_input_problem(self.encoder, self.image_size) if self.cameras else None
        if problem:
            yield "image_size", problem
