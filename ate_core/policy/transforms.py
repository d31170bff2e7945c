"""Small typed transforms between a robot's native actions and the policy's normalised ones.

Normalisation with a data set's :class:`~ate_core.data.spaces.NormStats` and padding into the
slots of the :class:`~ate_core.data.spaces.UnifiedActionSpace` (both described in
:mod:`ate_core.data.spaces`, since data sets and checkpoints carry them too). Training, inference and
replay all build the same :class:`Compose` pipeline from these pieces, so the robot never sees
data prepared differently from training (openpi ``transforms.py``).

Every transform accepts a numpy array or a torch tensor and returns the same kind, keeping dtype
and device; the torch path is differentiable (guidance back-propagates through it). torch is
imported lazily: the numpy path (dataset conversion, the supervisor) never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Sequence, Tuple, Union

import numpy as np

from ate_core.data.spaces import NormStats, UnifiedActionSpace, torch_module

if TYPE_CHECKING:
    import torch

__all__ = [
    "STD_EPS",
    "RANGE_EPS",
    "Normalize",
    "Unnormalize",
    "PadActions",
    "UnpadActions",
    "Compose",
]

Array = Union[np.ndarray, "torch.Tensor"]
Transform = Callable[[Array], Array]

#: A std below this is a constant dim: divide by 1 instead, so it maps to 0 rather than inf/nan.
STD_EPS = 1e-6
#: A max - min below this is a constant dim in min_max mode: shift only, as Diffusion Policy does.
RANGE_EPS = 1e-6
# Unnormalize returns a constant dim's value whatever the model says: the data never moved it
# (the idle arm of a one-arm task), so nothing learnt can say where else to put it, and a
# model's usual error in normalised units would otherwise come back undivided, in radians.


# ------------------------------------------------------------------------------------ transforms

_MODES = ("mean_std", "min_max")


def _affine(stats: NormStats, mode: str) -> Tuple[np.ndarray, ...]:
    """(sub, den, mul, off, keep) with normalised = mul * (x - sub) / den - off, and
    native = (y + off) * den * keep / mul + sub (``keep`` 0 on constant dims, else 1).

    mean_std: (x - mean) / std, std < STD_EPS treated as 1. min_max: 2 (x - min) / (max - min) - 1
    into [-1, 1] (Diffusion Policy); written this way, not as a precomputed scale, so the data's
    own min and max land exactly on -1 and 1. A constant dim (range < RANGE_EPS) is only shifted,
    x - min, so its value maps to 0, as Diffusion Policy's ``range_eps`` does.
    """
    if mode == "mean_std":
        const = stats.std < STD_EPS
        den = np.where(const, np.float32(1), stats.std)
        return stats.mean, den, np.ones_like(den), np.zeros_like(den), _keep(const)
    rng = stats.max - stats.min
    const = rng < RANGE_EPS
    den = np.where(const, np.float32(1), rng)
    mul = np.where(const, np.float32(1), np.float32(2))
    off = np.where(const, np.float32(0), np.float32(1))
    return stats.min, den, mul, off, _keep(const)


def _keep(const: np.ndarray) -> np.ndarray:
    return np.where(const, np.float32(0), np.float32(1))


@dataclass(frozen=True, eq=False)
class _AffineBase:
    stats: NormStats
    mode: str = "mean_std"
    _params: Tuple[np.ndarray, ...] = field(init=False, repr=False)
    _torch_params: Dict[Any, Tuple[Any, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"{type(self).__name__}.mode: {self.mode!r}, "
                             f"expected one of {_MODES}")
        # Writable private copies: torch refuses to wrap read-only numpy memory without a warning.
        params = tuple(np.array(p) for p in _affine(self.stats, self.mode))
        object.__setattr__(self, "_params", params)
        object.__setattr__(self, "_torch_params", {})

    def _prepare(self, x: Array) -> Tuple[Array, Tuple[Array, ...]]:
        """``x`` as an array or tensor, and (sub, den, mul, off, keep) in its dtype and on its
        device."""
        torch = torch_module(x)
        if torch is None:
            x = np.asarray(x)
        shape = tuple(x.shape)
        k = len(self.stats.shape)
        if len(shape) < k or shape[len(shape) - k:] != self.stats.shape:
            raise ValueError(f"{type(self).__name__}: expected data of shape "
                             f"[..., {', '.join(map(str, self.stats.shape))}], got {list(shape)}")
        if torch is not None:
            if not torch.is_floating_point(x):
                raise ValueError(f"{type(self).__name__}: expected a floating tensor, "
                                 f"got {x.dtype}")
            key = (x.dtype, x.device)
            if key not in self._torch_params:  # built once per dtype/device, not per call
                self._torch_params[key] = tuple(torch.as_tensor(p, dtype=x.dtype, device=x.device)
                                                for p in self._params)
            return x, self._torch_params[key]
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{type(self).__name__}: expected a floating array, got {x.dtype}")
        return x, tuple(p.astype(x.dtype, copy=False) for p in self._params)


@dataclass(frozen=True, eq=False)
class Normalize(_AffineBase):
    """Data units -> the policy's normalised space (``mode`` "mean_std" or "min_max")."""

    def __call__(self, x: Array) -> Array:
        x, (sub, den, mul, off, _) = self._prepare(x)
        return mul * (x - sub) / den - off

    def inverse(self) -> "Unnormalize":
        return Unnormalize(self.stats, self.mode)


@dataclass(frozen=True, eq=False)
class Unnormalize(_AffineBase):
    """Inverse of :class:`Normalize` with the same stats and mode: exact on varying dims; a
    constant dim (std < STD_EPS, or range < RANGE_EPS) comes back as its constant, whatever
    ``y`` holds there (see RANGE_EPS)."""

    def __call__(self, y: Array) -> Array:
        y, (sub, den, mul, off, keep) = self._prepare(y)
        return (y + off) * (den * keep) / mul + sub

    def inverse(self) -> Normalize:
        return Normalize(self.stats, self.mode)


@dataclass(frozen=True)
class PadActions:
    """Native [..., d] -> unified [..., width] for one embodiment."""

    space: UnifiedActionSpace
    embodiment: str

    def __post_init__(self) -> None:
        self.space.slots(self.embodiment)  # an unknown embodiment fails when the pipeline is built

    def __call__(self, actions: Array) -> Array:
        return self.space.pad(actions, self.embodiment)

    def inverse(self) -> "UnpadActions":
        return UnpadActions(self.space, self.embodiment)


@dataclass(frozen=True)
class UnpadActions:
    """Unified [..., width] -> native [..., d] for one embodiment."""

    space: UnifiedActionSpace
    embodiment: str

    def __post_init__(self) -> None:
        self.space.slots(self.embodiment)

    def __call__(self, unified: Array) -> Array:
        return self.space.unpad(unified, self.embodiment)

    def inverse(self) -> PadActions:
        return PadActions(self.space, self.embodiment)


@dataclass(frozen=True, eq=False)
class Compose:
    """Apply ``transforms`` left to right; :meth:`inverse` undoes them right to left."""

    transforms: Sequence[Transform]

    def __post_init__(self) -> None:
        object.__setattr__(self, "transforms", tuple(self.transforms))

    def __call__(self, x: Array) -> Array:
        for t in self.transforms:
            x = t(x)
        return x

    def inverse(self) -> "Compose":
        """The output pipeline of an input pipeline; every step must have an ``inverse()``."""
        for t in self.transforms:
            if not hasattr(t, "inverse"):
                raise TypeError(f"Compose.inverse: {type(t).__name__} has no inverse()")
        return Compose(tuple(t.inverse() for t in reversed(self.transforms)))
