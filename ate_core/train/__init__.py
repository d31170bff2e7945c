"""Training: pre-training and fine-tuning from YAML, checkpoints, EMA, resume, torchrun.

``ate_train --config config/train_diffusion.yaml`` (:mod:`ate_core.train.cli`) is the entry
point; :func:`train` is the same loop as a function. ``ate_finetune`` (:mod:`.finetune_cli`,
:mod:`.finetune`) runs it on a pre-trained checkpoint with the plain or the ATE-guided loss. Checkpoints (:mod:`.checkpoint`) are
safetensors + JSON in LeRobot's layout, and :func:`load_pretrained` is how inference and replay
get a policy back. Runtime code imports only :mod:`.checkpoint`, which needs no training code.
"""

from ate_core.policy.pretrained import CheckpointError, LoadedPolicy, load_pretrained, save_pretrained
from ate_core.train.config import DatasetConfig, EmaConfig, PolicySection, TrainConfig, load_train_config

__all__ = [
    "CheckpointError",
    "LoadedPolicy",
    "load_pretrained",
    "save_pretrained",
    "DatasetConfig",
    "EmaConfig",
    "PolicySection",
    "TrainConfig",
    "load_train_config",
    "train",
    "TrainResult",
]


def __getattr__(name: str):  # the loop (DataLoader, tqdm, matplotlib) loads only when asked for
    if name in ("train", "TrainResult"):
        from ate_core.train import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
