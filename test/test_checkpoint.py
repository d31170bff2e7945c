"""Checkpoints: bit-exact round trips, clear errors for every kind of damage, never unpickling."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ate_core.io import CheckpointError, latest_checkpoint, write_manifest
from ate_core.policy import factory
from ate_core.policy.base import Observation
from ate_core.data.spaces import NormStats
from ate_core.train import checkpoint as ckpt
from ate_core.policy.pretrained import load_pretrained, save_pretrained

ENCODER = {"backbone": "resnet10_small", "d_model": 32, "pool": "avg", "text_dim": 8, "text_buckets": 64}
TINY = {
    "diffusion": {"horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "cameras": ["head", "left_wrist"],
                  "image_size": [32, 32], "encoder": ENCODER, "unet_down_dims": [32, 64],
                  "step_embed_dim": 16, "num_inference_steps": 4},
    "flow": {"horizon": 8, "n_obs_steps": 1, "n_action_steps": 4, "cameras": ["head"], "image_size": [32, 32],
             "encoder": ENCODER, "expert_d_model": 32, "expert_n_layers": 1, "expert_n_heads": 2, "num_steps": 4},
}


def tiny_policy(policy_type: str = "flow", seed: int = 0):
    torch.manual_seed(seed)
    policy = factory.make_policy(policy_type, factory.make_config(policy_type, TINY[policy_type]))
    with torch.no_grad():  # weights unlike any fresh initialisation
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return policy.eval()


def tiny_stats(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "rm75_bimanual": {"state": NormStats.from_data(rng.normal(size=(50, 16))),
                          "action": NormStats.from_data(rng.normal(size=(50, 16)))},
        "rm65_single": {"state": NormStats.from_data(rng.normal(size=(50, 7))),
                        "action": NormStats.from_data(rng.normal(size=(50, 7)))},
    }


def observation(policy, batch: int = 2) -> Observation:
    cfg = policy.config
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (batch, cfg.n_obs_steps, len(cfg.cameras), 3, *cfg.image_size),
                           dtype=torch.uint8, generator=g)
    mask = torch.zeros(batch, cfg.state_width, dtype=torch.bool)
    mask[:, :16] = True
    return Observation(images=images, state=torch.randn(batch, cfg.n_obs_steps, cfg.state_width, generator=g) * mask[:, None],
                       state_mask=mask, task=("pick up the cube",) * batch)


@pytest.fixture
def saved(tmp_path: Path):
    policy = tiny_policy("flow")
    path = save_pretrained(tmp_path / "model", policy, tiny_stats(), {"embodiment": "rm75_bimanual",
                                                                     "train": {"steps": 3}})
    return policy, path


# The damage below is sealed into the manifest again: these tests are about what the loader
# finds inside files that a writer got wrong, past the manifest check (test_checkpoint_io.py).


def _edit_config(path: Path, edit) -> None:
    cfg_file = path / "config.json"
    raw = json.loads(cfg_file.read_text())
    edit(raw)
    cfg_file.write_text(json.dumps(raw))
    write_manifest(path)


def _rewrite_tensors(path: Path, name: str, tensors) -> None:
    save_file(tensors, str(path / name))
    write_manifest(path)


@pytest.mark.parametrize("policy_type", ["diffusion", "flow"])
def test_round_trip_is_bit_exact_and_samples_identically(tmp_path: Path, policy_type: str) -> None:
    policy = tiny_policy(policy_type)
    stats = tiny_stats()
    save_pretrained(tmp_path / "m", policy, stats, {"embodiment": "rm75_bimanual"})
    loaded = load_pretrained(tmp_path / "m")

    assert loaded.policy_type == policy_type and loaded.embodiment == "rm75_bimanual"
    assert loaded.config == policy.config
    original, restored = policy.state_dict(), loaded.policy.state_dict()
    assert original.keys() == restored.keys()
    for key, value in original.items():
        assert value.dtype == restored[key].dtype and torch.equal(value, restored[key]), key
    assert set(loaded.stats) == set(stats)
    for emb, kinds in stats.items():
        for kind, s in kinds.items():
            for name in ("mean", "std", "min", "max"):
                assert np.array_equal(getattr(s, name), getattr(loaded.stats[emb][kind], name)), (emb, kind, name)

    obs = observation(policy)
    noise = torch.randn(2, policy.config.horizon, policy.config.action_width, generator=torch.Generator().manual_seed(1))
    assert torch.equal(policy.sample(obs, noise=noise), loaded.policy.sample(obs, noise=noise))


def test_loaded_policy_builds_the_matching_processor(saved) -> None:
    _, path = saved
    loaded = load_pretrained(path)
    proc = loaded.processor()
    assert proc.embodiment == "rm75_bimanual" and proc.cameras == loaded.cameras
    assert proc.image_size == loaded.image_size and proc.norm_mode == "mean_std"
    assert loaded.processor("rm65_single").dim == 7


def test_load_accepts_the_run_folder_and_follows_last(tmp_path: Path) -> None:
    policy = tiny_policy()
    opt = torch.optim.AdamW(policy.parameters())
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, deploy_model=policy, online_model=policy, optimizer=opt, scheduler=None,
                             stats=tiny_stats(), meta={"embodiment": "rm75_bimanual"},
                             rng_by_rank={0: ckpt.capture_rng_state()}, info={})
    assert latest_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints" / "000002"
    assert load_pretrained(tmp_path).path == tmp_path / "checkpoints" / "000002" / "pretrained_model"
    assert load_pretrained(tmp_path / "checkpoints" / "last").path.parent.name == "000002"


def test_truncated_weights_name_the_file(saved) -> None:
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or truncated"):
        load_pretrained(path)


def test_flipped_header_bytes_name_the_file(saved) -> None:
    _, path = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    for i in range(8, 24):  # the start of the JSON header
        data[i] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_pretrained(path)


def test_changed_weight_bytes_fail_the_checksum(saved) -> None:
    _, path = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-3] ^= 0x01  # a low mantissa bit of the last weight: still finite, still loads
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: checksum mismatch"):
        load_pretrained(path)


def test_deleted_stats_name_the_file(saved) -> None:
    _, path = saved
    (path / "stats.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"stats\.safetensors: file not found"):
        load_pretrained(path)


def test_stats_without_the_embodiment_are_refused(saved) -> None:
    _, path = saved
    stats = load_file(str(path / "stats.safetensors"))
    _rewrite_tensors(path, "stats.safetensors", {k: v for k, v in stats.items() if not k.startswith("rm75_bimanual/")})
    with pytest.raises(CheckpointError, match=r"stats\.safetensors: no normalisation stats for embodiment 'rm75_bimanual'"):
        load_pretrained(path)


def test_stats_missing_one_tensor_name_the_key(saved) -> None:
    _, path = saved
    stats = load_file(str(path / "stats.safetensors"))
    del stats["rm75_bimanual/action/std"]
    _rewrite_tensors(path, "stats.safetensors", stats)
    with pytest.raises(CheckpointError, match=r"stats\.safetensors: .*rm75_bimanual/action/std"):
        load_pretrained(path)


def test_shape_change_in_config_names_mismatched_keys(saved) -> None:
    _, path = saved
    _edit_config(path, lambda raw: raw["policy"].update(expert_mlp_ratio=2.0))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: shape mismatch with the policy config: expert\.[a-z_.0-9]+: \[\d+"):
        load_pretrained(path)


def test_unknown_policy_type_is_refused(saved) -> None:
    _, path = saved
    _edit_config(path, lambda raw: raw.update(policy_type="vqbet"))
    with pytest.raises(CheckpointError, match=r"config\.json: policy_type: unknown policy type 'vqbet'"):
        load_pretrained(path)


def test_unsupported_version_is_refused(saved) -> None:
    _, path = saved
    _edit_config(path, lambda raw: raw.update(version=3))
    with pytest.raises(CheckpointError, match=r"config\.json: version: unsupported checkpoint version 3"):
        load_pretrained(path)


def test_a_version_1_checkpoint_is_refused_with_the_advice_to_save_it_again(saved) -> None:
    _, path = saved
    _edit_config(path, lambda raw: raw.update(version=1))
    with pytest.raises(CheckpointError, match=r"config\.json: version: unsupported checkpoint version 1 .*older "
                                              r"version: save it again"):
        load_pretrained(path)


def test_foreign_format_is_refused(saved) -> None:
    _, path = saved
    _edit_config(path, lambda raw: raw.update(format="lerobot"))
    with pytest.raises(CheckpointError, match=r"config\.json: format: 'lerobot'"):
        load_pretrained(path)


def test_invalid_policy_config_carries_the_config_error(saved) -> None:
    _, path = saved
    _edit_config(path, lambda raw: raw["policy"].update(horizon=-3))
    with pytest.raises(CheckpointError, match=r"config\.json: policy\.horizon: -3 must be > 0"):
        load_pretrained(path)


def test_missing_and_unexpected_weights_are_named(saved) -> None:
    _, path = saved
    state = load_file(str(path / "model.safetensors"))
    first = sorted(state)[0]
    state["extra.weight"] = state.pop(first)
    _rewrite_tensors(path, "model.safetensors", state)
    with pytest.raises(CheckpointError, match=rf"missing keys \['{first}'\]; unexpected keys \['extra.weight'\]"):
        load_pretrained(path)


def test_non_finite_weights_name_the_tensor(saved) -> None:
    _, path = saved
    state = load_file(str(path / "model.safetensors"))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key][0] = float("nan")
    _rewrite_tensors(path, "model.safetensors", state)
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: {key}: non-finite"):
        load_pretrained(path)


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere: checkpoint not found"):
        load_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty/config\.json: file not found"):
        load_pretrained(tmp_path / "empty")


def test_loading_never_unpickles(saved, tmp_path: Path, monkeypatch) -> None:
    _, path = saved
    policy = tiny_policy()
    opt = torch.optim.AdamW(policy.parameters())
    state_dir = ckpt.save_training_state(tmp_path / "state", model=policy, optimizer=opt, scheduler=None, step=1)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_pretrained(path)
    ckpt.load_training_state(state_dir, model=policy, optimizer=opt)


def test_load_leaves_the_callers_rng_alone(saved) -> None:
    _, path = saved
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_pretrained(path)
    assert torch.equal(torch.rand(3), expected)


def test_failed_save_leaves_no_directory(tmp_path: Path, monkeypatch) -> None:
    from ate_core.policy import pretrained

    policy = tiny_policy()
    real = pretrained.write_tensors

    def fail_on_stats(path, tensors, metadata=None):
        if Path(path).name == "stats.safetensors":
            raise OSError("disk full")
        real(path, tensors, metadata)

    monkeypatch.setattr(pretrained, "write_tensors", fail_on_stats)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(tmp_path / "m", policy, tiny_stats(), {"embodiment": "rm75_bimanual"})
    assert list(tmp_path.iterdir()) == []


def test_training_state_round_trip_restores_optimizer_scheduler_and_rng(tmp_path: Path) -> None:
    policy = tiny_policy()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    for _ in range(2):
        loss = sum((p ** 2).sum() for p in params)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    torch.manual_seed(11), np.random.seed(11), random.seed(11)
    ckpt.save_training_state(tmp_path / "ts", model=policy, optimizer=opt, scheduler=sched, step=2,
                             info={"epoch": 0})
    expected = (torch.rand(2), np.random.rand(2), random.random())

    fresh = tiny_policy(seed=5)
    fresh_params = [p for p in fresh.parameters() if p.requires_grad]
    opt2 = torch.optim.AdamW(fresh_params, lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5 ** s)
    state = ckpt.load_training_state(tmp_path / "ts", model=fresh, optimizer=opt2, scheduler=sched2)
    assert state.step == 2 and state.info["epoch"] == 0
    for a, b in zip(policy.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    for pa, pb in zip(params, fresh_params):
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[pa][name], opt2.state[pb][name])
    assert sched2.get_last_lr() == sched.get_last_lr() and sched2.last_epoch == 2
    ckpt.restore_rng_state(state.rng_by_rank[0])
    got = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
