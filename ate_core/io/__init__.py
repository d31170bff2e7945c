"""Checkpoint and data-file I/O shared by every format: durable writes, one manifest, one layout.

Each checkpoint format stays beside its model (the policy's ``pretrained_model/`` in
:mod:`ate_core.policy.pretrained`, the alignment VAE in :mod:`ate_core.align.checkpoint`, the
resumable ``training_state/`` in :mod:`ate_core.train.checkpoint`) and is built from these parts
only, so that the three cannot drift apart again:

- :mod:`.durable`: fsync'd writes, single-file replacement and folders that appear complete or
  not at all (:func:`atomic_dir`); the episode writer uses them too.
- :mod:`.files`: JSON and safetensors reading and writing whose errors name the file,
  SHA-256, JSON-safe plain data, and :class:`CheckpointError`.
- :mod:`.manifest`: ``manifest.json``, written last in every checkpoint folder and verified
  first on every load, with one strictness for all formats.
- :mod:`.layout`: ``checkpoints/<step>/`` folders, the ``last`` pointer, and resolving the path
  a user gives (a checkpoint, a step, ``last``, ``checkpoints``, a run's output folder).

It sits at the bottom of ``ate_core`` beside :mod:`ate_core.config` and imports no other package
of it.
"""

from ate_core.io.durable import atomic_dir, fsync_dir, fsync_file, replace_file, write_bytes
from ate_core.io.files import (CheckpointError, action_space_dict, json_bytes, json_safe, read_json, read_tensors,
                               sha256_file, write_json, write_tensors)
from ate_core.io.layout import (CHECKPOINTS_DIR, LAST_LINK, checkpoint_dir, latest_checkpoint, point_last,
                                resolve_checkpoint_dir)
from ate_core.io.manifest import MANIFEST_FILE, add_to_checkpoint, verify_manifest, write_manifest

__all__ = [
    "atomic_dir",
    "fsync_dir",
    "fsync_file",
    "replace_file",
    "write_bytes",
    "CheckpointError",
    "action_space_dict",
    "json_bytes",
    "json_safe",
    "read_json",
    "read_tensors",
    "sha256_file",
    "write_json",
    "write_tensors",
    "CHECKPOINTS_DIR",
    "LAST_LINK",
    "checkpoint_dir",
    "latest_checkpoint",
    "point_last",
    "resolve_checkpoint_dir",
    "MANIFEST_FILE",
    "add_to_checkpoint",
    "verify_manifest",
    "write_manifest",
]
