"""Training configuration: one YAML file -> a frozen :class:`TrainConfig`, validated at the edge.

Everything but the ``policy`` section is a plain typed dataclass loaded by
:func:`ate_core.config.from_dict`. The ``policy`` section is two-step: its ``type`` picks the
policy's own config class from the registry (:mod:`ate_core.policy.factory`), which then
validates the remaining keys. Command-line overrides (``--set steps=2000``) are applied to the
plain data and validated by the same rules, so an override can never produce a config the file
could not.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

from ate_core.config import ConfigError, Problem, checked, from_dict, in_range, nonempty, one_of, plain_data, read_yaml
from ate_core.policy import factory

__all__ = [
    "DatasetConfig",
    "EmaConfig",
    "PolicySection",
    "TrainConfig",
    "load_train_config",
    "train_config_from_dict",
    "train_config_to_dict",
    "parse_overrides",
    "apply_overrides",
    "overridden",
    "load_yaml_config",
    "positive_int",
    "non_negative_int",
    "non_negative",
    "learning_rate",
    "betas_in_range",
]

T = TypeVar("T")
TC = TypeVar("TC", bound="TrainConfig")


def positive_int(value: int) -> Optional[str]:
    return None if value > 0 else f"{value} must be > 0"


def non_negative_int(value: int) -> Optional[str]:
    return None if value >= 0 else f"{value} must be >= 0"


def non_negative(value: float) -> Optional[str]:
    return None if math.isfinite(value) and value >= 0 else f"{value} must be >= 0"


def learning_rate(value: float) -> Optional[str]:
    return None if math.isfinite(value) and 0 < value < 1 else f"{value} is not a learning rate in (0, 1)"


def betas_in_range(value: Tuple[float, float]) -> Optional[str]:
    for b in value:
        if not (math.isfinite(b) and 0 <= b < 1):
            return f"{b} is outside [0, 1)"
    return None


def _episodes(value: Tuple[int, ...]) -> Optional[str]:
    if any(e < 0 for e in value):
        return "episode indices must be >= 0"
    if len(set(value)) != len(value):
        return "episode indices repeat"
    return None


@dataclass(frozen=True)
class DatasetConfig:
    """Where the demonstrations are: one or more episode-dataset folders.

    Each root records its embodiment; roots of different embodiments train one cross-embodiment
    policy through the unified action vector, each with its own normalisation statistics.
    ``episodes`` (optional) keeps only those episode indices of every root.
    """

    roots: Tuple[str, ...] = checked(check=nonempty, doc="episode dataset folders")
    episodes: Optional[Tuple[int, ...]] = checked(None, check=_episodes)


@dataclass(frozen=True)
class EmaConfig:
    """Exponential moving average of the weights (Diffusion Policy's ``EMAModel`` schedule).

    decay(step) = 1 - (1 + step / inv_gamma) ** -power, clamped to [min_value, max_value], and
    0 (a plain copy) for the first ``update_after_step`` steps. power 0.75 reaches 0.999 at about
    10k steps and 0.9999 at about 215k. The averaged weights are what a checkpoint deploys.
    """

    enabled: bool = True
    update_after_step: int = checked(0, check=non_negative_int)
    inv_gamma: float = checked(1.0, check=in_range(1e-6, 1e9))
    power: float = checked(0.75, check=in_range(1e-3, 10.0))
    min_value: float = checked(0.0, check=in_range(0.0, 1.0))
    max_value: float = checked(0.9999, check=in_range(0.0, 1.0))

    def problems(self) -> Iterator[Problem]:
        if self.min_value > self.max_value:
            yield "min_value", f"{self.min_value} exceeds max_value {self.max_value}"


@dataclass(frozen=True)
class PolicySection:
    """The ``policy`` section: the registry type and that policy's own validated config."""

    type: str
    config: Any

    def to_dict(self) -> Dict[str, Any]:
        return {"type": self.type, **factory.config_to_dict(self.config)}


@dataclass(frozen=True)
class TrainConfig:
    """One training run: pre-training from scratch, or fine-tuning from ``init_from``.

    ``batch_size`` is the global batch: under torchrun each of the ``WORLD_SIZE`` processes
    takes ``batch_size / WORLD_SIZE`` samples per step, so the optimisation does not change with
    the number of GPUs. ``embodiment``: the robot the checkpoint is for (its processor's
    default); empty = the first dataset's. Every dataset is always read as the embodiment it
    recorded; its stats are stored under that name.
    """

    dataset: DatasetConfig
    policy: Optional[PolicySection] = None
    embodiment: str = ""
    norm_mode: str = checked("mean_std", check=one_of("mean_std", "min_max"))
    steps: int = checked(100_000, check=positive_int)
    batch_size: int = checked(64, check=positive_int)
    num_workers: int = checked(4, check=non_negative_int)
    lr: float = checked(1e-4, check=learning_rate)
    weight_decay: float = checked(1e-6, check=non_negative)
    betas: Tuple[float, float] = checked((0.95, 0.999), check=betas_in_range)
    eps: float = checked(1e-8, check=in_range(1e-12, 1e-2))
    warmup_steps: int = checked(500, check=non_negative_int)
    scheduler: str = checked("cosine", check=one_of("cosine", "constant"),
                             doc="after warm-up: cosine decay to 0 at `steps`, or constant")
    grad_clip_norm: float = checked(10.0, check=non_negative, doc="0 disables clipping")
    ema: EmaConfig = field(default_factory=EmaConfig)
    seed: int = checked(1000, check=non_negative_int)
    device: str = checked("auto", check=one_of("auto", "cpu", "cuda"))
    amp: bool = False
    log_every: int = checked(100, check=positive_int)
    save_every: int = checked(10_000, check=positive_int)
    output_dir: str = checked("outputs/train", check=nonempty)
    init_from: str = ""
    resume: bool = False

    def problems(self) -> Iterator[Problem]:
        if self.policy is None and not self.init_from and not self.resume:
            yield "policy", "required key is missing (or set init_from to fine-tune a checkpoint)"
        if self.warmup_steps > self.steps:
            yield "warmup_steps", f"{self.warmup_steps} exceeds steps {self.steps}"


# ---------------------------------------------------------------------------------------------
# Loading


def _policy_section(data: Any, source: str) -> PolicySection:
    if isinstance(data, PolicySection):
        return data
    if not isinstance(data, dict):
        raise ConfigError(source, "policy", "expected a mapping with a `type` key")
    rest = dict(data)
    policy_type = rest.pop("type", None)
    if policy_type is None:
        raise ConfigError(source, "policy.type", "required key is missing (expected one of: "
                                                 f"{', '.join(sorted(factory.POLICY_TYPES))})")
    if not isinstance(policy_type, str) or policy_type not in factory.POLICY_TYPES:
        raise ConfigError(source, "policy.type", f"unknown policy type {policy_type!r} "
                                                 f"(expected one of: {', '.join(sorted(factory.POLICY_TYPES))})")
    try:
        config = factory.make_config(policy_type, rest, source)
    except ConfigError as e:
        raise ConfigError(source, "policy." + e.key if e.key else "policy", e.message) from None
    return PolicySection(policy_type, config)


def train_config_from_dict(data: Any, source: str = "<dict>", cls: Type[TC] = TrainConfig) -> TC:
    """Build and validate a :class:`TrainConfig` (or a subclass ``cls``, e.g. the fine-tuning
    config) from plain data (as YAML gives it)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", "expected a mapping at the top level")
    data = dict(data)
    if data.get("policy") is not None:
        data["policy"] = _policy_section(data["policy"], source)
    return from_dict(cls, data, source)


def train_config_to_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """The plain-data form (JSON/YAML-able); :func:`train_config_from_dict` inverts it."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, PolicySection):
            out[f.name] = value.to_dict()
        elif dataclasses.is_dataclass(value):
            out[f.name] = plain_data(dataclasses.asdict(value))
        else:
            out[f.name] = plain_data(value)
    return out


def parse_overrides(items: Sequence[str], source: str = "--set") -> Dict[str, Any]:
    """``["steps=2000", "dataset.roots=[a, b]"]`` -> ``{"steps": 2000, "dataset.roots": ["a", "b"]}``.

    Values are YAML, so numbers, booleans and lists read as they would in the file.
    """
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(source, item, "expected key.path=value")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(source, key, f"invalid YAML value {text!r}: {getattr(e, 'problem', e)}") from None
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any],
                    source: str = "--set") -> Dict[str, Any]:
    """A deep copy of plain config data with dotted-key overrides written in."""
    out: Dict[str, Any] = copy.deepcopy(dict(data))
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(source, ".".join(parts[:i + 1]), "is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def overridden(key: str, overrides: Mapping[str, Any]) -> bool:
    """Whether the config value at ``key`` (``ate.vae``, ``dataset.roots[0]``) was set by one of
    ``overrides``: an error about it then names the command line, not the file."""
    return bool(key) and any(key == k or key.startswith(k + ".") or key.startswith(k + "[") for k in overrides)


def load_yaml_config(path: Union[str, os.PathLike], build: Callable[[Dict[str, Any], str], T],
                     overrides: Optional[Mapping[str, Any]] = None, override_source: str = "--set") -> T:
    """Read a YAML mapping, apply dotted-key overrides and ``build(data, source)`` the config.

    Every problem raises :class:`ConfigError` naming the file, or ``override_source`` when the
    offending key was overridden. Shared by the training, fine-tuning and alignment configs.
    """
    source = os.fspath(path)
    data = read_yaml(source)
    if not isinstance(data, dict):
        raise ConfigError(source, "", "expected a mapping at the top level")
    if not overrides:
        return build(data, source)
    merged = apply_overrides(data, overrides, override_source)
    try:
        return build(merged, source)
    except ConfigError as e:
        if overridden(e.key, overrides):
            raise ConfigError(override_source, e.key, e.message) from None
        raise


def load_train_config(path: Union[str, os.PathLike],
                      overrides: Optional[Mapping[str, Any]] = None,
                      override_source: str = "--set") -> TrainConfig:
    """Read a training YAML and apply overrides (see :func:`load_yaml_config`)."""
    return load_yaml_config(path, train_config_from_dict, overrides, override_source)
