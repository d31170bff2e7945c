"""Configuration of the flow-matching policy: pi0's action expert on our observation tokens.

Defaults follow pi0 (Black et al. 2024) where it fixes a number: a 50-step chunk from the current
frame, 10 Euler steps at inference, flow times drawn from Beta(1.5, 1), and a sinusoidal time
embedding with periods from 4e-3 to 4.0. The expert is far smaller than pi0's 300M-parameter
Gemma expert so that it trains on one GPU and runs on a robot PC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from ate_core.config import Problem, checked, in_range, positive
from ate_core.policy.common import ChunkingPolicyConfig

__all__ = ["FlowConfig"]


def _positive_int(value: int) -> Optional[str]:
    return None if value > 0 else f"{value} must be > 0"


@dataclass(frozen=True)
class FlowConfig(ChunkingPolicyConfig):
    """A pi0-style flow-matching policy (see :mod:`ate_core.policy.flow.modeling_flow`)."""

    horizon: int = checked(50, check=_positive_int, doc="actions per chunk (pi0: 50)")
    n_obs_steps: int = checked(1, check=_positive_int, doc="pi0 conditions on the current frame")
    n_action_steps: int = checked(25, check=_positive_int)
    num_steps: int = checked(10, check=_positive_int, doc="Euler steps from tau=1 to tau=0 at inference")
    expert_d_model: int = checked(256, check=_positive_int, doc="width of the action expert")
    expert_n_layers: int = checked(6, check=_positive_int)
    expert_n_heads: int = checked(8, check=_positive_int)
    expert_mlp_ratio: float = checked(4.0, check=positive, doc="MLP hidden width / expert_d_model")
    dropout: float = checked(0.0, check=in_range(0.0, 0.9), doc="residual dropout in the expert")
    time_beta_alpha: float = checked(1.5, check=positive,
                                     doc="training tau ~ Beta(alpha, beta) * 0.999 + 0.001 (pi0)")
    time_beta_beta: float = checked(1.0, check=positive)
    min_period: float = checked(4e-3, check=positive, doc="shortest period of the time embedding")
    max_period: float = checked(4.0, check=positive, doc="longest period of the time embedding")

    def problems(self) -> Iterator[Problem]:
        yield from super().problems()
        if self.expert_d_model % self.expert_n_heads:
            yield "expert_n_heads", (f"{self.expert_n_heads} heads do not divide "
                                     f"expert_d_model {self.expert_d_model}")
        if self.expert_d_model < 2:
            yield "expert_d_model", f"{self.expert_d_model}: the sin/cos time embedding needs >= 2"
        if int(self.expert_d_model * self.expert_mlp_ratio) < 1:
            yield "expert_mlp_ratio", f"{self.expert_mlp_ratio} leaves the MLP without hidden units"
        if self.min_period >= self.max_period:
            yield "max_period", f"{self.max_period} must exceed min_period {self.min_period}"
        if self.state_width != self.action_width:
            # The sampler takes each sample's real action slots from obs.state_mask, which
            # only works when state and action share the unified layout.
            yield "state_width", (f"{self.state_width} differs from action_width {self.action_width}; "
                                  f"the flow policy needs one unified layout for both")
