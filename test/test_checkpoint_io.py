"""One manifest for every checkpoint format, and the run layout they share (ate_core.io).

Each format (the policy's pretrained_model/, the alignment VAE, training_state/) is written for
real and then damaged; every damage is the same CheckpointError, naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import pytest
import torch

from ate_core.align.checkpoint import WEIGHTS_FILE, KLReference, load_vae, save_vae, write_report
from ate_core.align.configuration_vae import VAEConfig
from ate_core.align.modeling_vae import ActionChunkVAE
from ate_core.data.spaces import NormStats, default_action_space
from ate_core.io import (MANIFEST_FILE, CheckpointError, atomic_dir, checkpoint_dir, latest_checkpoint, point_last,
                         resolve_checkpoint_dir, sha256_file, verify_manifest)
from ate_core.policy.pretrained import load_pretrained, save_pretrained
from ate_core.train import checkpoint as ckpt

from test_checkpoint import tiny_policy, tiny_stats

VAE = {"horizon": 8, "latent_dim": 32, "num_layers": 2, "ff_size": 64, "num_heads": 2}


def _norm_stats(dim: int) -> Dict[str, NormStats]:
    data = np.random.default_rng(0).normal(size=(50, dim)).astype(np.float32)
    return {"state": NormStats.from_data(data), "action": NormStats.from_data(data)}


def _save_vae(path: Path, stage: str = "pre") -> Path:
    torch.manual_seed(0)
    vae = ActionChunkVAE(VAEConfig(**VAE))
    reference = KLReference.standard((vae.config.latent_tokens, vae.config.latent_dim)) if stage == "ada" else None
    return save_vae(path, vae, stage=stage, norm_stats={"rm65_single": _norm_stats(7)}, norm_mode="mean_std",
                    action_space=default_action_space(), embodiments=["rm65_single"], reference=reference)


def _policy(tmp_path: Path) -> Tuple[Path, Callable[[Path], object], str]:
    path = save_pretrained(tmp_path / "policy", tiny_policy(), tiny_stats(), {"embodiment": "rm75_bimanual"})
    return path, load_pretrained, "config.json"


def _vae(tmp_path: Path) -> Tuple[Path, Callable[[Path], object], str]:
    return _save_vae(tmp_path / "vae"), load_vae, "vae_config.json"


def _training_state(tmp_path: Path) -> Tuple[Path, Callable[[Path], object], str]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    path = ckpt.save_training_state(tmp_path / "state", model=model, optimizer=optimizer, scheduler=None, step=1)
    return path, lambda p: ckpt.load_training_state(p, model=model, optimizer=optimizer), "training_step.json"


FORMATS = {"policy": _policy, "vae": _vae, "training_state": _training_state}


@pytest.fixture(params=sorted(FORMATS))
def written(request, tmp_path: Path):
    return FORMATS[request.param](tmp_path)


def _flip_one_character(path: Path) -> None:
    """Same size, other bytes: only the checksum can tell."""
    text = path.read_text()
    i = text.index(":") + 1
    path.write_text(text[:i] + ("\t" if text[i] != "\t" else " ") + text[i + 1:])


def test_the_manifest_lists_every_other_file_with_its_digest_and_size(written) -> None:
    path, load, config = written
    manifest = json.loads((path / MANIFEST_FILE).read_text())["files"]
    assert config in manifest
    assert sorted(manifest) == sorted(p.name for p in path.iterdir() if p.name != MANIFEST_FILE)
    for name, entry in manifest.items():
        assert entry == {"sha256": sha256_file(path / name), "bytes": (path / name).stat().st_size}, name
    load(path)


def test_a_missing_manifest_is_an_error_naming_it_for_every_format(written) -> None:
    path, load, _ = written
    (path / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match=rf"{path.name}/manifest\.json: file not found: the checkpoint is "
                                              r"incomplete .* older version"):
        load(path)


def test_a_changed_config_file_fails_its_checksum(written) -> None:
    path, load, config = written
    _flip_one_character(path / config)
    with pytest.raises(CheckpointError, match=rf"{config}: checksum mismatch with manifest\.json"):
        load(path)


def test_a_truncated_file_is_named_before_it_is_read(written) -> None:
    path, load, config = written
    (path / config).write_text("{")
    with pytest.raises(CheckpointError, match=rf"{config}: corrupt or truncated \(1 bytes, manifest\.json records"):
        load(path)


def test_a_deleted_file_is_named(written) -> None:
    path, load, config = written
    (path / config).unlink()
    with pytest.raises(CheckpointError, match=rf"{config}: file not found"):
        load(path)


def test_a_file_not_in_the_manifest_is_an_error(written) -> None:
    path, load, _ = written
    (path / "notes.txt").write_text("added by hand\n")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not listed in manifest\.json"):
        load(path)


def test_a_malformed_manifest_names_the_entry(written) -> None:
    path, load, config = written
    raw = json.loads((path / MANIFEST_FILE).read_text())
    raw["files"][config]["sha256"] = 7
    (path / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=rf"manifest\.json: files\.{config}\.sha256: expected 64 hex digits"):
        load(path)


def test_save_checkpoint_seals_both_parts_of_the_step(tmp_path: Path) -> None:
    policy = tiny_policy()
    step = ckpt.save_checkpoint(tmp_path, 3, deploy_model=policy, online_model=policy,
                                optimizer=torch.optim.AdamW(policy.parameters()), scheduler=None,
                                stats=tiny_stats(), meta={"embodiment": "rm75_bimanual"},
                                rng_by_rank={0: ckpt.capture_rng_state()}, info={})
    assert step == checkpoint_dir(tmp_path, 3) and latest_checkpoint(tmp_path) == step
    assert sorted(p.name for p in step.iterdir()) == ["pretrained_model", "training_state"]
    for part in ("pretrained_model", "training_state"):
        assert set(verify_manifest(step / part)) == {p.name for p in (step / part).iterdir()} - {MANIFEST_FILE}


# ------------------------------------------------------------------------------- the VAE's report


def test_write_report_adds_the_report_to_the_manifest(tmp_path: Path) -> None:
    path = _save_vae(tmp_path / "vae", stage="ada")
    write_report(path, {"chunks": 3, "kl": float("inf")})
    assert "report.json" in json.loads((path / MANIFEST_FILE).read_text())["files"]
    loaded = load_vae(path)
    assert loaded.report == {"chunks": 3, "kl": "inf"}
    assert loaded.sha256 == sha256_file(path / WEIGHTS_FILE)  # the weights' digest, as fine-tuning records it
    write_report(path, {"chunks": 4})  # replacing it keeps the manifest true
    assert load_vae(path).report == {"chunks": 4}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_write_report_outside_a_checkpoint_just_writes_the_file(tmp_path: Path) -> None:
    write_report(tmp_path, {"chunks": 3})
    assert json.loads((tmp_path / "report.json").read_text()) == {"chunks": 3}
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_a_report_added_by_hand_is_an_unlisted_file(tmp_path: Path) -> None:
    path = _save_vae(tmp_path / "vae")
    (path / "report.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"report\.json: not listed in manifest\.json"):
        load_vae(path)


# ------------------------------------------------------------------------- the layout of a run


def test_an_atomic_dir_that_fails_leaves_the_old_folder_alone(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(final) as tmp:
            (tmp / "a").write_text("new")
            raise OSError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"] and (final / "a").read_text() == "old"


def test_last_falls_back_to_a_text_file_where_links_fail(tmp_path: Path, monkeypatch) -> None:
    step = checkpoint_dir(tmp_path, 500)
    step.mkdir(parents=True)
    (step / "config.json").write_text("{}")

    def no_links(*args, **kwargs):
        raise OSError("symlinks not supported")

    monkeypatch.setattr(os, "symlink", no_links)
    point_last(step)
    last = tmp_path / "checkpoints" / "last"
    assert not last.is_symlink() and last.read_text() == "000500\n"
    for given in (tmp_path, tmp_path / "checkpoints", last, step):
        assert resolve_checkpoint_dir(given, "config.json") == step, given


def test_a_step_folder_resolves_to_the_part_inside_it(tmp_path: Path) -> None:
    step = checkpoint_dir(tmp_path, 2)
    (step / "pretrained_model").mkdir(parents=True)
    (step / "pretrained_model" / "config.json").write_text("{}")
    point_last(step)
    for given in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "last", step):
        assert resolve_checkpoint_dir(given, "config.json", inner="pretrained_model") == step / "pretrained_model"


def test_last_pointing_nowhere_is_named(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last").write_text("000007\n")
    with pytest.raises(CheckpointError, match=r"checkpoints/last: points at 000007, which does not exist"):
        resolve_checkpoint_dir(tmp_path, "config.json")
