"""How data is described: the unified action space and normalisation statistics.

ATE (like RDT) trains one policy across embodiments by writing every robot's action dims into
fixed slots of one wide vector (128 in the official configs), with a per-embodiment mask marking
the real slots (:class:`UnifiedActionSpace`). :class:`NormStats` are a data set's per-feature
statistics; they travel with every checkpoint. Data sets, policies, the alignment VAEs and the
runtime all speak these two types, so they live at the bottom of the learning stack; the
transforms that apply them are :mod:`ate_core.policy.transforms`.

Both accept numpy arrays or torch tensors and return the same kind; torch is never imported
here (the numpy path, dataset conversion and the supervisor, never loads it).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["ActionSpaceError", "NormStatsError", "UnifiedActionSpace", "default_action_space",
           "UNIFIED_ACTION_WIDTH", "NormStats", "torch_module"]

Array = Union[np.ndarray, "torch.Tensor"]

#: Width of the unified action vector in the official ATE / RDT configs.
UNIFIED_ACTION_WIDTH = 128


class ActionSpaceError(ValueError):
    """A unified-action layout, embodiment name or action shape is wrong."""


class NormStatsError(ValueError):
    """Normalisation statistics are malformed (shape, finiteness, ordering, missing key)."""


def torch_module(x: Any) -> Optional[Any]:
    """torch, if ``x`` is a tensor; checked via sys.modules so numpy callers never import torch."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return torch
    return None


# ------------------------------------------------------------------------- unified action space


@dataclass(frozen=True)
class UnifiedActionSpace:
    """Where each embodiment's native action dims live in the shared ``width``-wide vector.

    ``embodiments[name][k]`` is the unified slot of native dim ``k``. Slots not listed are padding:
    zero on the way in, ignored on the way out, and ``False`` in :meth:`mask` (the loss and the
    guidance use the mask so padding never carries gradient or signal).
    """

    embodiments: Mapping[str, Tuple[int, ...]]
    width: int = UNIFIED_ACTION_WIDTH
    _indices: Dict[str, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width <= 0:
            raise ActionSpaceError(f"width must be a positive int, got {self.width!r}")
        layout: Dict[str, Tuple[int, ...]] = {}
        indices: Dict[str, np.ndarray] = {}
        for name, slots in self.embodiments.items():
            if not isinstance(name, str) or not name:
                raise ActionSpaceError(f"embodiment names must be non-empty strings, got {name!r}")
            slots = tuple(slots)
            if not slots:
                raise ActionSpaceError(f"embodiment {name!r}: no action slots")
            for s in slots:
                if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
                    raise ActionSpaceError(f"embodiment {name!r}: slot {s!r} is not an int")
                if not 0 <= s < self.width:
                    raise ActionSpaceError(f"embodiment {name!r}: slot {s} outside "
                                           f"[0, {self.width})")
            dup = sorted({int(s) for s in slots if slots.count(s) > 1})
            if dup:
                raise ActionSpaceError(f"embodiment {name!r}: duplicate slots {dup}")
            layout[name] = tuple(int(s) for s in slots)
            idx = np.asarray(layout[name], dtype=np.intp)
            idx.setflags(write=False)
            indices[name] = idx
        object.__setattr__(self, "embodiments", MappingProxyType(layout))
        object.__setattr__(self, "_indices", indices)

    def __hash__(self) -> int:  # the mapping is not hashable; its frozen contents are
        return hash((self.width, tuple(sorted(self.embodiments.items()))))

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        # DataLoader workers pickle it; a mappingproxy cannot be, its plain contents can.
        return (UnifiedActionSpace, (dict(self.embodiments), self.width))

    def dim(self, embodiment: str) -> int:
        """Native action dimension of ``embodiment``."""
        return len(self.slots(embodiment))

    def slots(self, embodiment: str) -> Tuple[int, ...]:
        """Unified slots of ``embodiment``'s native dims, in native order."""
        try:
            return self.embodiments[embodiment]
        except KeyError:
            raise ActionSpaceError(f"unknown embodiment {embodiment!r}; "
                                   f"known: {sorted(self.embodiments)}") from None

    def mask(self, embodiment: str, like: Optional[Array] = None) -> Array:
        """Bool [width], True on ``embodiment``'s real slots; on ``like``'s device if given."""
        m = np.zeros(self.width, dtype=bool)
        m[list(self.slots(embodiment))] = True
        torch = torch_module(like)
        if torch is not None:
            return torch.as_tensor(m, device=like.device)
        return m

    def pad(self, actions: Array, embodiment: str) -> Array:
        """Native [..., d] -> unified [..., width], exact zeros in every other slot."""
        slots = self.slots(embodiment)
        torch = torch_module(actions)
        if torch is None:
            actions = np.asarray(actions)
        self._check_last_dim(actions, len(slots), embodiment, "native")
        shape = tuple(actions.shape[:-1]) + (self.width,)
        if torch is not None:
            out = torch.zeros(shape, dtype=actions.dtype, device=actions.device)
            # index_copy (out of place) keeps the autograd graph through to ``actions``.
            return out.index_copy(-1, torch.as_tensor(slots, device=actions.device), actions)
        out = np.zeros(shape, dtype=actions.dtype)
        out[..., self._indices[embodiment]] = actions
        return out

    def unpad(self, unified: Array, embodiment: str) -> Array:
        """Unified [..., width] -> native [..., d]; padding is dropped, whatever it holds."""
        slots = self.slots(embodiment)
        torch = torch_module(unified)
        if torch is None:
            unified = np.asarray(unified)
        self._check_last_dim(unified, self.width, embodiment, "unified")
        if torch is not None:
            return unified.index_select(-1, torch.as_tensor(slots, device=unified.device))
        return unified[..., self._indices[embodiment]]

    @staticmethod
    def _check_last_dim(x: Array, expected: int, embodiment: str, what: str) -> None:
        shape = tuple(x.shape)
        if not shape or shape[-1] != expected:
            raise ActionSpaceError(f"embodiment {embodiment!r}: expected {what} actions of shape "
                                   f"[..., {expected}], got {list(shape)}")


def default_action_space(width: int = UNIFIED_ACTION_WIDTH) -> UnifiedActionSpace:
    """The project's layout: slots 0-6 arm A joints, 7 arm A gripper, 8-14 arm B, 15 arm B gripper.

    * Arm A is the *right* arm. A single-arm robot is treated as a right arm (RDT's convention),
      so single-arm pre-training data and the bimanual robot's right arm share slots.
    * ``rm75_bimanual`` keeps the project's native joint order (left_joint1..7, left_gripper,
      right_joint1..7, right_gripper, see ``ate_core.robot.layout``): native dims 0-7 go to
      slots 8-15 and native dims 8-15 to slots 0-7.
    * ``rm65_single`` (joint1..6, gripper) is aligned by kinematic role, not by joint number:
      the RM65's chain is the RM75's without the redundant upper-arm roll (RM75 joint3). RM65
      joints 1, 2 (base yaw, shoulder pitch) -> slots 0, 1; RM65 joints 3-6 (elbow, forearm roll,
      wrist pitch, wrist roll) -> slots 3-6, where the RM75's joints 4-7 sit; slot 2 stays
      padding; gripper -> slot 7. Sharing slots by role is what lets a latent prior learned on
      one arm mean the same motion on the other. Slots 16.. are free for future embodiments.
    """
    arm_a_joints = tuple(range(0, 7))
    arm_b_joints = tuple(range(8, 15))
    return UnifiedActionSpace(
        embodiments={
            "rm75_bimanual": arm_b_joints + (15,) + arm_a_joints + (7,),
            "rm65_single": (0, 1, 3, 4, 5, 6, 7),
        },
        width=width,
    )


# --------------------------------------------------------------------------- normalisation stats

_STAT_FIELDS = ("mean", "std", "min", "max")


@dataclass(frozen=True, eq=False)
class NormStats:
    """Per-feature statistics of a data set, float32, stored raw (no epsilon baked in).

    ``std`` may be 0 (a constant dim, e.g. a gripper never used in a data set); the flooring to
    1 happens in :class:`Normalize` (see :data:`STD_EPS`), so the checkpoint records the data as
    it was. Arrays are read-only. Equality is identity (arrays have no single truth value).
    """

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def __post_init__(self) -> None:
        shape = None
        for name in _STAT_FIELDS:
            try:
                arr = np.array(getattr(self, name), dtype=np.float32)  # a private copy
            except (TypeError, ValueError) as e:
                raise NormStatsError(f"NormStats.{name}: not numeric ({e})") from None
            if arr.ndim == 0:
                raise NormStatsError(f"NormStats.{name}: needs one value per feature, "
                                     "got a scalar")
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise NormStatsError(f"NormStats.{name}: shape {list(arr.shape)} disagrees with "
                                     f"mean's {list(shape)}")
            if not np.all(np.isfinite(arr)):
                bad = np.argwhere(~np.isfinite(arr))[0].tolist()
                raise NormStatsError(f"NormStats.{name}: non-finite value at index {bad}")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        if np.any(self.std < 0):
            raise NormStatsError(f"NormStats.std: negative at "
                                 f"{np.argwhere(self.std < 0)[0].tolist()}")
        if np.any(self.min > self.max):
            raise NormStatsError(f"NormStats.min: above max at "
                                 f"{np.argwhere(self.min > self.max)[0].tolist()}")

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.mean.shape)

    @classmethod
    def from_data(cls, x: Array) -> "NormStats":
        """Statistics over the first axis of ``x`` [N, ...]; summed in float64, stored float32."""
        torch = torch_module(x)
        if torch is not None:
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if x.ndim < 2 or x.shape[0] == 0:
            raise NormStatsError(f"NormStats.from_data: need data of shape [N>0, d], got "
                                 f"{list(x.shape)}")
        if not np.all(np.isfinite(x)):
            raise NormStatsError("NormStats.from_data: data contains non-finite values")
        x64 = x.astype(np.float64)
        # min/max from the data's own values: exact, so min_max maps the data into [-1, 1] exactly.
        return cls(mean=x64.mean(axis=0), std=x64.std(axis=0),
                   min=x.min(axis=0), max=x.max(axis=0))

    def to_dict(self, prefix: str = "") -> Dict[str, np.ndarray]:
        """Plain contiguous float32 arrays keyed ``{prefix}mean`` etc., for a safetensors file."""
        return {prefix + name: np.ascontiguousarray(getattr(self, name)).copy()
                for name in _STAT_FIELDS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], prefix: str = "") -> "NormStats":
        """Inverse of :meth:`to_dict`; other keys are ignored (a checkpoint holds more tensors)."""
        missing = [prefix + n for n in _STAT_FIELDS if prefix + n not in d]
        if missing:
            raise NormStatsError(f"NormStats.from_dict: missing keys {missing}")
        values = {}
        for name in _STAT_FIELDS:
            v = d[prefix + name]
            torch = torch_module(v)
            values[name] = v.detach().cpu().numpy() if torch is not None else v
        return cls(**values)
