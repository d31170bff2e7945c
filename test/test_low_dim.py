"""Policies of low-dimensional observations: the scene's state (``env_state``, LeRobot's
``observation.environment_state``) from the twin's demonstrations through the data set, the
processor and the encoder, to an episode in closed loop through the robot's own runtime; and
the robot's inference node refuses such a policy, since no robot topic carries that state."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from ate_core.data.dataset import EpisodeDataset
from ate_core.data.episode import (DatasetInfo, Episode, EpisodeFormatError, EpisodeReader,
                                   default_joint_names, episode_dir, write_episode)
from ate_core.data.spaces import NormStats, NormStatsError, default_action_space
from ate_core.data.stats import compute_stats
from ate_core.eval import evaluate
from ate_core.policy.base import Observation
from ate_core.policy.encoder import ObservationEncoder
from ate_core.policy.pretrained import load_pretrained
from ate_core.policy.processor import PolicyProcessor, ProcessorInputError
from ate_core.robot.config import load_config
from ate_core.train.config import train_config_from_dict
from ate_core.train.trainer import train
from ate_core.twin import demos
from ate_core.twin.model import TwinRobot
from ate_core.twin.tasks import get_task
from ate_core.twin.twin import Twin

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "bimanual.yaml"
ENV_NAMES = ("cube.x", "cube.y", "target.x")
LOW_DIM_DP = {"type": "diffusion", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "cameras": [],
              "env_state_dim": 7, "num_inference_steps": 3, "unet_down_dims": [16, 32],
              "unet_kernel_size": 3, "step_embed_dim": 16,
              "encoder": {"d_model": 16, "text_encoder": "hashed", "text_dim": 8, "text_buckets": 64}}


def _info(env=ENV_NAMES) -> DatasetInfo:
    return DatasetInfo(embodiment="rm65_single", fps=10.0, joint_names=default_joint_names("rm65_single"),
                       env_state_names=env)


def _episode(length=6, env_cols=3) -> Episode:
    t = np.arange(length, dtype=np.float32)[:, None]
    return Episode(task="push", state=0.1 * t + np.zeros((1, 7), np.float32), action=0.1 * t + 0.05 + np.zeros((1, 7)),
                   timestamp_s=np.arange(length) / 10.0,
                   env_state=None if env_cols is None else t + np.arange(env_cols, dtype=np.float32)[None] * 10)


def test_env_state_round_trips_and_info_names_its_columns(tmp_path):
    write_episode(tmp_path, 0, _episode(), _info())
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["env_state_names"] == list(ENV_NAMES) and info["cameras"] == {}
    reader = EpisodeReader(tmp_path, 0)
    np.testing.assert_array_equal(reader.env_state, _episode().env_state)
    assert reader.load().env_state.shape == (6, 3)
    # a data set without env_state names says so by leaving the key out, and has none
    write_episode(tmp_path / "plain", 0, _episode(env_cols=None), _info(env=()))
    assert "env_state_names" not in json.loads((tmp_path / "plain" / "info.json").read_text())
    assert EpisodeReader(tmp_path / "plain", 0).env_state is None


@pytest.mark.parametrize("cols, message", [(2, "2 columns, the dataset has 3"), (None, "0 columns")])
def test_an_episode_whose_env_state_does_not_fit_the_dataset_is_refused(tmp_path, cols, message):
    with pytest.raises(EpisodeFormatError, match=message):
        write_episode(tmp_path, 0, _episode(env_cols=cols), _info())


def test_bad_env_state_is_named(tmp_path):
    bad = _episode().env_state.copy()
    bad[2, 1] = np.nan
    with pytest.raises(EpisodeFormatError, match="env_state"):
        Episode(task="x", state=np.zeros((6, 7)), action=np.zeros((6, 7)), timestamp_s=np.arange(6.0), env_state=bad)
    write_episode(tmp_path, 0, _episode(), _info())
    path = episode_dir(tmp_path, 0) / "data.safetensors"
    arrays = load_file(str(path))
    arrays["env_state"] = arrays["env_state"][:, :2].copy()
    save_file(arrays, str(path))
    with pytest.raises(EpisodeFormatError, match=r"env_state: expected finite \[6, 3\]"):
        EpisodeReader(tmp_path, 0)


def test_dataset_windows_and_stats_carry_env_state(tmp_path):
    for i in range(2):
        write_episode(tmp_path, i, _episode(), _info())
    ds = EpisodeDataset(tmp_path, horizon=4, n_obs_steps=2)
    sample = ds[7]  # episode 1, step 1: observation steps 0 and 1
    np.testing.assert_array_equal(sample.env_state, _episode().env_state[[0, 1]])
    stats = compute_stats(ds)
    np.testing.assert_allclose(stats["env_state"].mean, _episode().env_state.mean(axis=0), rtol=1e-6)


def test_the_processor_normalises_env_state_and_asks_for_it():
    stats = {"state": NormStats.from_data(np.random.default_rng(0).normal(size=(50, 7))),
             "action": NormStats.from_data(np.random.default_rng(1).normal(size=(50, 7))),
             "env_state": NormStats.from_data(np.array([[0.0, 10.0, 5.0], [2.0, 30.0, 5.0]]))}
    proc = PolicyProcessor(action_space=default_action_space(), embodiment="rm65_single", stats=stats,
                           cameras=(), image_size=(16, 16), env_state_dim=3)
    obs = proc.observation({}, np.zeros((2, 7)), "push", env_state=np.array([[1.0, 20.0, 5.0]] * 2))
    assert obs.images.shape == (2, 0, 3, 16, 16)
    np.testing.assert_allclose(obs.env_state[0, :2], [0.0, 0.0], atol=1e-6)  # at the mean
    with pytest.raises(ProcessorInputError, match="env_state: the policy reads 3 columns"):
        proc.observation({}, np.zeros((2, 7)), "push")
    with pytest.raises(ProcessorInputError, match=r"expected finite \[2, 3\]"):
        proc.observation({}, np.zeros((2, 7)), "push", env_state=np.zeros((2, 4)))
    with pytest.raises(NormStatsError, match="no 'env_state' entry"):
        PolicyProcessor(action_space=default_action_space(), embodiment="rm65_single",
                        stats={k: stats[k] for k in ("state", "action")}, cameras=(), image_size=(16, 16),
                        env_state_dim=3)


def test_the_encoder_without_cameras_gives_a_state_and_a_scene_token_per_step():
    from ate_core.config import from_dict
    from ate_core.policy.encoder import EncoderConfig
    cfg = from_dict(EncoderConfig, {"d_model": 16, "text_encoder": "none"})
    torch.manual_seed(0)
    enc = ObservationEncoder(cfg, cameras=(), n_obs_steps=2, image_size=(16, 16), state_width=128,
                             env_state_dim=3).eval()
    assert len(enc.image_tokenizers) == 0 and enc.n_tokens == 4
    mask = torch.zeros(1, 128, dtype=torch.bool)
    mask[:, :7] = True
    obs = Observation(images=torch.zeros(1, 2, 0, 3, 16, 16, dtype=torch.uint8), state=torch.zeros(1, 2, 128),
                      state_mask=mask, task=("push",), env_state=torch.zeros(1, 2, 3))
    moved = Observation(**{**obs.__dict__, "env_state": torch.ones(1, 2, 3)})
    with torch.no_grad():
        a, b = enc(obs), enc(moved)
    assert a.shape == (1, 4, 16)
    changed = (a - b).abs().sum(-1)[0] > 1e-6
    assert changed.tolist() == [False, True, False, True]  # only the scene tokens
    with pytest.raises(ValueError, match="env_state"):
        enc(Observation(**{**obs.__dict__, "env_state": None}))


def test_the_twins_demonstrations_record_the_scene_state_without_frames(tmp_path):
    cfg = load_config(CONFIG)
    task = get_task("push")
    report = demos.write_demonstrations(tmp_path, task, "rm65_single", 1, robot=TwinRobot.from_config(cfg),
                                        cameras=(), env_state=True, progress=False)
    assert report.written == 1
    reader = EpisodeReader(tmp_path, 0)
    assert reader.info.env_state_names == task.env_state_names and reader.info.cameras == {}
    twin = Twin(TwinRobot.from_config(cfg), task.scene())
    try:
        task.reset(twin, reader.extra["seed"])
        expected = task.env_state(twin)
    finally:
        twin.close()
    np.testing.assert_allclose(reader.env_state[0], expected, atol=1e-4)  # the reset scene at step 0
    assert math.isclose(float(np.hypot(*reader.env_state[0, 3:5])), 1.0, rel_tol=1e-5)  # cos, sin of the yaw


@pytest.fixture(scope="module")
def low_dim_checkpoint(tmp_path_factory) -> Path:
    """A tiny diffusion policy of low-dimensional observations, two training steps on one push
    demonstration of the pair."""
    root = tmp_path_factory.mktemp("lowdim")
    demos.write_demonstrations(root / "data", get_task("push"), "rm75_bimanual", 1,
                               robot=TwinRobot.from_config(load_config(CONFIG)), cameras=(), env_state=True,
                               progress=False)
    run = {"dataset": {"roots": [str(root / "data")]}, "policy": dict(LOW_DIM_DP), "steps": 2, "batch_size": 4,
           "num_workers": 0, "lr": 1e-3, "warmup_steps": 1, "log_every": 1, "save_every": 2,
           "output_dir": str(root / "run"), "device": "cpu", "seed": 0}
    train(train_config_from_dict(run, "test"), progress=False)
    return root / "run"


def test_a_low_dim_policy_runs_in_closed_loop_reading_the_scene(low_dim_checkpoint):
    loaded = load_pretrained(low_dim_checkpoint)
    assert loaded.cameras == () and loaded.config.env_state_dim == 7
    assert "env_state" in loaded.stats["rm75_bimanual"]
    report = evaluate(low_dim_checkpoint, get_task("push"), [1000], config=load_config(CONFIG),
                      time_limit_s=1.0, torch_threads=1)
    episode = report.episodes[0]
    # n_obs_steps 2: only the very first attempt waits, for the window's older step
    assert episode.chunks >= 3 and sum(episode.blocks.values()) <= 1 and not episode.faults
    assert "env_state" not in episode.blocks


def test_a_low_dim_policy_on_a_task_with_another_scene_is_refused(low_dim_checkpoint):
    from ate_core.eval import EvalError
    with pytest.raises(EvalError, match="7 env_state columns; task lift_box has 5"):
        evaluate(low_dim_checkpoint, get_task("lift_box"), [1000], config=load_config(CONFIG), time_limit_s=0.5)


@pytest.mark.ros
def test_the_robots_inference_node_refuses_a_policy_that_reads_the_scene(ros, low_dim_checkpoint):
    """No robot topic carries object poses: the node says so at start instead of blocking."""
    from ate_core.config import ConfigError, replace_in
    from ate_ros.nodes.inference_node import InferenceNode

    cfg = replace_in(load_config(CONFIG), {"inference.checkpoint": str(low_dim_checkpoint),
                                           "inference.device": "cpu", "inference.warmup_runs": 0}, "test")
    with pytest.raises(ConfigError, match="reads the scene's state .7 env_state columns"):
        ros.start(InferenceNode, config=cfg)
