"""Policy registry: a policy type name -> its config class and model class.

Adding a policy means adding a folder (``configuration_<kind>.py``, ``modeling_<kind>.py``) and
one line here; checkpoints record the type name, so loading needs nothing else. Imports are lazy
so that naming one policy never imports the others.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Dict, Tuple, Type

from ate_core.config import ConfigError, from_dict, plain_data
from ate_core.policy.base import Policy

__all__ = ["POLICY_TYPES", "config_class", "policy_class", "make_config", "make_policy", "config_to_dict"]

#: type name -> ("module:ConfigClass", "module:PolicyClass")
POLICY_TYPES: Dict[str, Tuple[str, str]] = {
    "diffusion": ("ate_core.policy.diffusion.configuration_diffusion:DiffusionConfig",
                  "ate_core.policy.diffusion.modeling_diffusion:DiffusionPolicy"),
    "flow": ("ate_core.policy.flow.configuration_flow:FlowConfig",
             "ate_core.policy.flow.modeling_flow:FlowPolicy"),
}


def _resolve(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _entry(policy_type: str, source: str = "policy") -> Tuple[str, str]:
    try:
        return POLICY_TYPES[policy_type]
    except KeyError:
        raise ConfigError(source, "type", f"unknown policy type {policy_type!r} "
                                          f"(expected one of: {', '.join(sorted(POLICY_TYPES))})") from None


def config_class(policy_type: str) -> Type[Any]:
    return _resolve(_entry(policy_type)[0])


def policy_class(policy_type: str) -> Type[Policy]:
    return _resolve(_entry(policy_type)[1])


def make_config(policy_type: str, data: Any = None, source: str = "policy") -> Any:
    """A validated config of ``policy_type`` from plain data (YAML/JSON); defaults when None."""
    _entry(policy_type, source)
    return from_dict(config_class(policy_type), {} if data is None else data, source)


def make_policy(policy_type: str, config: Any = None) -> Policy:
    """A freshly initialised policy of ``policy_type`` (default config when None)."""
    if config is None or isinstance(config, dict):
        config = make_config(policy_type, config)
    return policy_class(policy_type)(config)


def config_to_dict(config: Any) -> Dict[str, Any]:
    """The plain-data form of a policy config (tuples as lists), for JSON next to the weights."""
    return plain_data(dataclasses.asdict(config))
