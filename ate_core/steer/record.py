"""What a fine-tuned checkpoint says about how it was fine-tuned (``config.json: finetune``).

The fine-tuning run writes it into every checkpoint and ``train_summary.json``; inference reads
it to guide with the VAE and settings that shaped the weights (and to refuse another VAE), and
a resumed run reads it to continue the same fine-tuning. It is read with
:func:`ate_core.config.from_dict` like every config: a record that is not what this code writes
is a :class:`CheckpointError` naming the checkpoint's ``config.json`` and the key. A checkpoint
without ``finetune`` (pre-trained, or continued with ``ate_train --init-from``) has no record.
"""

from __future__ import annotations

import dataclasses
import os
import string
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Union

from ate_core.align.configuration_vae import VAEConfig
from ate_core.config import ConfigError, Problem, checked, from_dict, nonempty, one_of, plain_data
from ate_core.io import CheckpointError
from ate_core.steer.config import GuidanceConfig

__all__ = ["METHODS", "RECORD_KEY", "FinetuneRecord", "GuidanceRecord"]

#: plain: the policy's own loss; ate: the loss steered by the adaptation VAE's latent space.
METHODS = ("plain", "ate")
#: The key of the record in a checkpoint's ``config.json`` and in ``train_summary.json``.
RECORD_KEY = "finetune"


def _sha256_hex(value: str) -> Optional[str]:
    if len(value) == 64 and all(c in string.hexdigits for c in value):
        return None
    return f"{value!r} is not a SHA-256 digest (64 hex digits)"


@dataclass(frozen=True, kw_only=True)
class GuidanceRecord(GuidanceConfig):
    """The guidance that shaped the weights: the run's ``ate:`` settings (``vae`` as the config
    gave it) and the adaptation VAE they steered with, by the folder it was loaded from and by
    content (``sha256``: a copy at another path is the same VAE, a retrained one is not)."""

    path: str = checked(check=nonempty, doc="the VAE checkpoint folder as loaded")
    sha256: str = checked(check=_sha256_hex, doc="the VAE weights' SHA-256")
    stage: str = checked(check=one_of("ada"), doc="guidance steers with the adaptation VAE")
    vae_config: VAEConfig

    def settings(self) -> GuidanceConfig:
        """The ``ate:`` settings alone, as the run was configured."""
        return GuidanceConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GuidanceConfig)})


@dataclass(frozen=True)
class FinetuneRecord:
    """How a checkpoint was fine-tuned: ``method``, and for ``ate`` the guidance (:class:`GuidanceRecord`)."""

    method: str = checked(check=one_of(*METHODS))
    ate: Optional[GuidanceRecord] = None

    def problems(self) -> Iterator[Problem]:
        if self.method == "ate" and self.ate is None:
            yield "ate", "required for method 'ate': the guidance that shaped the weights"
        if self.method != "ate" and self.ate is not None:
            yield "ate", f"method {self.method!r} is not guided, only method 'ate' records guidance"

    def to_dict(self) -> Dict[str, Any]:
        """The plain-data form written into ``config.json``; :meth:`from_meta` reads it back."""
        out: Dict[str, Any] = {"method": self.method}
        if self.ate is not None:
            out["ate"] = plain_data(dataclasses.asdict(self.ate))
        return out

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any],
                  config_json: Union[str, os.PathLike]) -> Optional["FinetuneRecord"]:
        """The record in a checkpoint's ``config.json`` (parsed as ``meta``), None without one."""
        if RECORD_KEY not in meta:
            return None
        try:
            return from_dict(cls, meta[RECORD_KEY], os.fspath(config_json))
        except ConfigError as e:
            key = f"{RECORD_KEY}.{e.key}" if e.key else RECORD_KEY
            raise CheckpointError(f"{e.source}: {key}: {e.message}") from None
