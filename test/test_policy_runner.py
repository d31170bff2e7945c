"""The policy runner: a checkpoint as the robot runs it, from native observation to timed chunk.

A tiny flow policy is trained on synthetic two-arm data recorded at 20 Hz (so the chunk spacing
can only come from the checkpoint), then fine-tuned with ATE for the guidance tests.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from ate_core.align.checkpoint import KLReference, save_vae
from ate_core.align.configuration_vae import VAEConfig
from ate_core.align.latent_stats import LatentStats
from ate_core.align.modeling_vae import ActionChunkVAE
from ate_core.config import ConfigError
from ate_core.io import CheckpointError, write_manifest
from ate_core.robot.config import InferenceConfig
from ate_core.data.episode import default_joint_names
from ate_core.data.stats import compute_stats
from ate_core.data.synthetic import generate_synthetic_dataset
from ate_core.data.spaces import default_action_space
from ate_core.runtime.policy_runner import PolicyRunner
from ate_core.steer.config import GuidanceConfig
from ate_core.steer.finetune import finetune, finetune_config_from_dict
from ate_core.train.config import train_config_from_dict
from ate_core.train.trainer import train

ENCODER = {"backbone": "resnet10_small", "d_model": 32, "pool": "avg", "text_dim": 8, "text_buckets": 64}
HORIZON = 8
FLOW = {"type": "flow", "horizon": HORIZON, "n_obs_steps": 2, "n_action_steps": 4, "cameras": ["head"],
        "image_size": [32, 32], "encoder": ENCODER, "expert_d_model": 32, "expert_n_layers": 1,
        "expert_n_heads": 2, "num_steps": 4}
FPS = 20.0
PERIOD_NS = 50_000_000


def make_data(root: Path, fps: float = FPS, seed: int = 1) -> Path:
    return generate_synthetic_dataset(root, n_episodes=2, length=10, cameras=("head",), image_size=(32, 32),
                                      fps=fps, seed=seed)


def train_tiny_policy(base: Path, data: Path, steps: int = 2) -> Path:
    """A few optimiser steps of the tiny flow policy; returns the checkpoint folder."""
    result = train(train_config_from_dict({
        "dataset": {"roots": [str(data)]}, "policy": dict(FLOW), "steps": steps, "batch_size": 4,
        "num_workers": 0, "lr": 1e-3, "warmup_steps": 1, "log_every": 1, "save_every": steps,
        "output_dir": str(base), "device": "cpu", "seed": 3}, "test"), progress=False)
    assert result.last_checkpoint is not None
    return result.last_checkpoint


def save_tiny_vae(directory: Path, data: Path, seed: int = 0) -> Path:
    """An untrained adaptation VAE with the data's normalisation and some latent statistics (what
    inference guidance pulls toward); the guidance only needs a differentiable encoder."""
    torch.manual_seed(seed)
    config = VAEConfig(horizon=HORIZON, latent_dim=32, num_layers=1, ff_size=64, num_heads=2)
    shape = (config.latent_tokens, config.latent_dim)
    gen = torch.Generator().manual_seed(seed)
    stats = LatentStats(mean=torch.randn(shape, generator=gen), std=torch.ones(shape),
                        aggregate_std=torch.ones(shape), count=4,
                        bank_mean=torch.randn((4, *shape), generator=gen), bank_std=torch.ones((4, *shape)))
    return save_vae(directory, ActionChunkVAE(config), stage="ada", reference=KLReference.standard(shape),
                    latent_stats=stats, norm_stats={"rm75_bimanual": compute_stats(data)}, norm_mode="mean_std",
                    action_space=default_action_space(), embodiments=["rm75_bimanual"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Dict[str, Path]:
    base = tmp_path_factory.mktemp("runner")
    data = make_data(base / "rm75")
    pre = train_tiny_policy(base / "pre", data)
    vae = save_tiny_vae(base / "vae", data)
    tuned = finetune(finetune_config_from_dict({
        "dataset": {"roots": [str(data)]}, "init_from": str(pre), "method": "ate", "ate": {"vae": str(vae)},
        "steps": 1, "batch_size": 4, "num_workers": 0, "lr": 1e-3, "warmup_steps": 0, "log_every": 1,
        "save_every": 1, "output_dir": str(base / "ate"), "device": "cpu", "seed": 5}, "test"), progress=False)
    return {"base": base, "data": data, "pre": pre, "ate": tuned.last_checkpoint, "vae": vae}


def inference(checkpoint: Path, **overrides) -> InferenceConfig:
    return dataclasses.replace(InferenceConfig(checkpoint=str(checkpoint), device="cpu", torch_threads=1),
                               **overrides)


def observation(runner: PolicyRunner, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = {cam: rng.integers(0, 256, (runner.n_obs_steps, 48, 64, 3), dtype=np.uint8) for cam in runner.cameras}
    state = rng.normal(0.0, 0.3, (runner.n_obs_steps, len(runner.joint_names))).astype(np.float32)
    return images, state


def test_the_checkpoint_records_its_training_frame_rate(setup) -> None:
    for name in ("pre", "ate"):
        meta = json.loads((setup[name] / "pretrained_model" / "config.json").read_text())
        assert meta["fps"] == FPS


def test_data_sets_of_one_robot_at_different_rates_are_refused(setup, tmp_path: Path) -> None:
    other = make_data(tmp_path / "rm75_10hz", fps=10.0, seed=2)
    cfg = train_config_from_dict({"dataset": {"roots": [str(setup["data"]), str(other)]}, "policy": dict(FLOW),
                                  "steps": 1, "warmup_steps": 0, "batch_size": 4, "num_workers": 0, "output_dir": str(tmp_path / "o"),
                                  "device": "cpu"}, "test")
    with pytest.raises(ConfigError, match=r"dataset\.roots: the 'rm75_bimanual' data sets disagree on the frame "
                                          r"rate \(.* at 20 Hz, .* at 10 Hz\)"):
        train(cfg, progress=False)
    assert not (tmp_path / "o").exists()


def test_chunk_names_the_sixteen_joints_and_times_points_by_the_recorded_fps(setup) -> None:
    runner = PolicyRunner.from_config(inference(setup["pre"]))
    assert runner.joint_names == default_joint_names("rm75_bimanual") and len(runner.joint_names) == 16
    assert runner.cameras == ("head",) and runner.n_obs_steps == 2 and runner.horizon == HORIZON
    assert runner.action_period_ns == PERIOD_NS and runner.device == torch.device("cpu")
    images, state = observation(runner)
    chunk = runner.infer(images, state, 123_000_000_000, "pick up the cube")
    assert chunk.joint_names == runner.joint_names and chunk.stamp_ns == 123_000_000_000
    assert chunk.times_ns.tolist() == [i * PERIOD_NS for i in range(HORIZON)]
    assert chunk.positions.shape == (HORIZON, 16) and np.isfinite(chunk.positions).all()


def test_an_explicit_action_period_overrides_the_checkpoint(setup) -> None:
    runner = PolicyRunner.from_config(inference(setup["pre"], action_period_s=0.04))
    assert runner.action_period_ns == 40_000_000
    chunk = runner.infer(*observation(runner), 0, "")
    assert chunk.times_ns[1] == 40_000_000 and chunk.times_ns[-1] == (HORIZON - 1) * 40_000_000


def test_chunk_is_the_policy_sample_in_native_units_for_the_same_noise(setup) -> None:
    runner = PolicyRunner.from_config(inference(setup["pre"]))
    images, state = observation(runner, seed=4)
    chunk = runner.infer(images, state, 0, "stack", generator=torch.Generator().manual_seed(11))

    processor = runner.loaded.processor()
    obs = processor.batch_observation([processor.observation(images, state, "stack")])
    unified = runner.policy.sample(obs, generator=torch.Generator().manual_seed(11))
    expected = processor.action_chunk(unified)[0]
    np.testing.assert_array_equal(chunk.positions, expected.astype(np.float64))

    again = runner.infer(images, state, 0, "stack", generator=torch.Generator().manual_seed(11))
    np.testing.assert_array_equal(again.positions, chunk.positions)
    other = runner.infer(images, state, 0, "stack", generator=torch.Generator().manual_seed(12))
    assert not np.allclose(other.positions, chunk.positions)


def test_the_traced_network_gives_the_eager_chunk_and_can_be_switched_off(setup) -> None:
    traced = PolicyRunner.from_config(inference(setup["pre"]))
    eager = PolicyRunner.from_config(inference(setup["pre"], trace=False))
    assert traced.describe()["traced"] == "on" and eager.describe()["traced"] == "off"
    images, state = observation(traced, seed=5)
    a = traced.infer(images, state, 0, "", generator=torch.Generator().manual_seed(2)).positions
    b = eager.infer(images, state, 0, "", generator=torch.Generator().manual_seed(2)).positions
    assert len(traced.policy.inference_trace) == 1 and not traced.policy.inference_trace.failures
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_num_steps_zero_uses_the_policy_s_own_and_a_number_overrides_it(setup) -> None:
    images, state = observation(PolicyRunner.from_config(inference(setup["pre"])))
    runs = {}
    for steps in (0, 4, 1):
        runner = PolicyRunner.from_config(inference(setup["pre"], num_steps=steps))
        runs[steps] = runner.infer(images, state, 0, "", generator=torch.Generator().manual_seed(0)).positions
    np.testing.assert_array_equal(runs[0], runs[4])  # the checkpoint's num_steps is 4
    assert not np.allclose(runs[1], runs[4])


def test_reduced_precision_is_float32_on_the_cpu_and_says_so(setup) -> None:
    for dtype in ("float16", "bfloat16"):
        runner = PolicyRunner.from_config(inference(setup["pre"], dtype=dtype))
        assert runner.dtype == torch.float32
        assert any(dtype in note and "float32" in note for note in runner.notes)
        assert runner.describe()["dtype"] == "float32"
    assert PolicyRunner.from_config(inference(setup["pre"])).notes == ()


def test_warmup_runs_without_touching_the_caller_s_chunks(setup) -> None:
    runner = PolicyRunner.from_config(inference(setup["pre"]))
    images, state = observation(runner)
    before = runner.infer(images, state, 0, "", generator=torch.Generator().manual_seed(3)).positions
    runner.warmup(2)
    after = runner.infer(images, state, 0, "", generator=torch.Generator().manual_seed(3)).positions
    np.testing.assert_array_equal(before, after)


def test_a_state_of_the_wrong_shape_is_refused_with_the_expected_shape(setup) -> None:
    runner = PolicyRunner.from_config(inference(setup["pre"]))
    images, state = observation(runner)
    with pytest.raises(ValueError, match=r"state: expected \[2, 16\].*got \[1, 16\]"):
        runner.infer(images, state[:1], 0, "")


def test_an_empty_checkpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"inference\.checkpoint: empty"):
        PolicyRunner.from_config(InferenceConfig(checkpoint="", device="cpu", torch_threads=1))


def test_a_checkpoint_without_fps_needs_an_explicit_action_period(setup, tmp_path: Path) -> None:
    copy = tmp_path / "no_fps"
    shutil.copytree(setup["pre"] / "pretrained_model", copy)
    meta = json.loads((copy / "config.json").read_text())
    del meta["fps"]
    (copy / "config.json").write_text(json.dumps(meta))
    write_manifest(copy)
    with pytest.raises(ConfigError, match=r"inference\.action_period_s: 0 .*records no usable fps"):
        PolicyRunner.from_config(inference(copy))
    assert PolicyRunner.from_config(inference(copy, action_period_s=0.1)).action_period_ns == 100_000_000


def test_guidance_uses_the_vae_the_checkpoint_records_and_changes_the_chunk(setup) -> None:
    plain = PolicyRunner.from_config(inference(setup["ate"]))
    guided = PolicyRunner.from_config(inference(setup["ate"], guidance=True, guidance_scale=5.0))
    assert plain.describe()["guidance"] == "off" and guided.describe()["guidance"] == "on"
    assert guided.guidance.record().sha256 == json.loads(
        (setup["ate"] / "pretrained_model" / "config.json").read_text())["finetune"]["ate"]["sha256"]
    images, state = observation(plain, seed=7)
    a = plain.infer(images, state, 0, "", generator=torch.Generator().manual_seed(1)).positions
    b = guided.infer(images, state, 0, "", generator=torch.Generator().manual_seed(1)).positions
    c = guided.infer(images, state, 0, "", generator=torch.Generator().manual_seed(1)).positions
    assert np.isfinite(b).all()
    assert np.abs(a - b).max() > 1e-4
    np.testing.assert_array_equal(b, c)


def _copy_with_record(setup, tmp_path: Path, change) -> Path:
    """The fine-tuned checkpoint's deployable folder with its config.json's record changed."""
    copy = tmp_path / "ckpt"
    shutil.copytree(setup["ate"] / "pretrained_model", copy)
    meta = json.loads((copy / "config.json").read_text())
    change(meta)
    (copy / "config.json").write_text(json.dumps(meta))
    write_manifest(copy)
    return copy


def test_a_checkpoint_without_a_record_runs_plain_and_guides_with_the_given_vae(setup, tmp_path: Path) -> None:
    copy = _copy_with_record(setup, tmp_path, lambda meta: meta.pop("finetune"))
    assert PolicyRunner.from_config(inference(copy)).describe()["guidance"] == "off"
    guided = PolicyRunner.from_config(inference(copy, guidance=True, guidance_vae=str(setup["vae"])))
    assert guided.step_hook is not None and guided.guidance.config.scale == GuidanceConfig().scale


def test_a_malformed_record_is_an_error_naming_the_config_json_and_the_key(setup, tmp_path: Path) -> None:
    copy = _copy_with_record(setup, tmp_path, lambda meta: meta["finetune"]["ate"].update(clamp="wide"))
    assert PolicyRunner.from_config(inference(copy)).step_hook is None  # the record is read for guidance only
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(copy / 'config.json'))}: finetune\.ate\.clamp: "
                                              r"expected a number"):
        PolicyRunner.from_config(inference(copy, guidance=True))


def test_guidance_without_a_vae_is_a_clear_error(setup, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"inference\.guidance_vae: guidance is on but no VAE is given .*"
                                          r"records none"):
        PolicyRunner.from_config(inference(setup["pre"], guidance=True))
    with pytest.raises(ConfigError, match=r"inference\.guidance_vae: .*nowhere: no such VAE checkpoint"):
        PolicyRunner.from_config(inference(setup["ate"], guidance=True, guidance_vae=str(tmp_path / "nowhere")))


def test_guidance_with_another_vae_than_the_recorded_one_is_refused(setup, tmp_path: Path) -> None:
    other = save_tiny_vae(tmp_path / "other_vae", setup["data"], seed=1)
    with pytest.raises(ConfigError, match=r"is not the VAE this checkpoint was fine-tuned with"):
        PolicyRunner.from_config(inference(setup["ate"], guidance=True, guidance_vae=str(other)))
    # The same VAE at another path (a copy on the robot PC) is fine.
    copy = tmp_path / "vae_copy"
    shutil.copytree(setup["vae"], copy)
    runner = PolicyRunner.from_config(inference(setup["ate"], guidance=True, guidance_vae=str(copy)))
    assert runner.step_hook is not None
