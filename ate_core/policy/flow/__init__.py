"""pi0-style flow-matching policy: configuration, action expert, policy (LeRobot's split by role)."""

from ate_core.policy.flow.configuration_flow import FlowConfig
from ate_core.policy.flow.modeling_flow import FlowCondition, FlowPolicy

__all__ = ["FlowConfig", "FlowPolicy", "FlowCondition"]
