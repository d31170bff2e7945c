"""Training samples from episodes: observation windows, action chunks, statistics."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from safetensors.torch import load_file as load_file_torch

from ate_core.data.dataset import EpisodeDataset
from ate_core.data.episode import (DatasetInfo, Episode, EpisodeFormatError, default_joint_names,
                                   write_episode)
from ate_core.data.stats import compute_stats, stats_from_tensors, stats_to_tensors
from ate_core.data.spaces import NormStats, NormStatsError

SIZE = (16, 16)
GREY_STEP = 40  # frame t of an episode is a uniform grey of level GREY_STEP * t + 10


def info(cameras=("head", "wrist")) -> DatasetInfo:
    return DatasetInfo(embodiment="rm65_single", fps=10.0,
                       joint_names=default_joint_names("rm65_single"),
                       cameras={c: SIZE for c in cameras})


def hand_made(length: int, base: float = 0.0, task: str = "pick") -> Episode:
    """state[t] = base + t in every dim, action[t] = base + 100 + t; frames grey by step."""
    t = np.arange(length, dtype=np.float32)
    state = np.repeat((base + t)[:, None], 7, axis=1)
    grey = (GREY_STEP * t + 10).astype(np.uint8)
    frames = np.broadcast_to(grey[:, None, None, None], (length,) + SIZE + (3,)).copy()
    return Episode(task=task, state=state, action=state + 100.0,
                   timestamp_s=np.arange(length) / 10.0,
                   frames={"head": frames, "wrist": frames})


@pytest.fixture
def root(tmp_path) -> Path:
    write_episode(tmp_path, 0, hand_made(5), info())
    write_episode(tmp_path, 1, hand_made(3, base=50.0, task="place"), info())
    return tmp_path


def grey_level(frames: np.ndarray) -> np.ndarray:
    """The step encoded in each uniform grey frame [n, H, W, 3]."""
    return np.round((frames.reshape(len(frames), -1).mean(axis=1) - 10) / GREY_STEP).astype(int)


def test_one_sample_per_step_of_every_episode(root):
    ds = EpisodeDataset(root, horizon=4, n_obs_steps=2)
    assert len(ds) == 8
    assert ds.episode_bounds == ((0, 5), (5, 8))
    assert ds.embodiment == "rm65_single" and ds.info.dim == 7
    s = ds[5]  # episode 1, step 0
    assert s.task == "place" and s.embodiment == "rm65_single"
    np.testing.assert_array_equal(s.state[:, 0], [50.0, 50.0])


def test_observation_window_repeats_the_first_frame_at_the_episode_start(root):
    ds = EpisodeDataset(root, horizon=2, n_obs_steps=3)
    for t, steps in [(0, [0, 0, 0]), (1, [0, 0, 1]), (4, [2, 3, 4])]:
        s = ds[t]
        np.testing.assert_array_equal(s.state[:, 0], steps)
        for cam in ("head", "wrist"):
            assert s.images[cam].shape == (3,) + SIZE + (3,) and s.images[cam].dtype == np.uint8
            np.testing.assert_array_equal(grey_level(s.images[cam]), steps)


def test_action_chunk_repeats_the_last_action_past_the_end_and_flags_it(root):
    ds = EpisodeDataset(root, horizon=4, n_obs_steps=1)
    s = ds[3]  # episode 0 has steps 0..4
    np.testing.assert_array_equal(s.action[:, 0], [103.0, 104.0, 104.0, 104.0])
    np.testing.assert_array_equal(s.action_is_pad, [False, False, True, True])
    assert s.action.dtype == np.float32 and s.action_is_pad.dtype == bool
    first = ds[0]
    np.testing.assert_array_equal(first.action[:, 0], [100.0, 101.0, 102.0, 103.0])
    assert not first.action_is_pad.any()


def test_a_chunk_never_crosses_into_the_next_episode(root):
    ds = EpisodeDataset(root, horizon=6, n_obs_steps=2)
    s = ds[4]  # the last step of episode 0
    np.testing.assert_array_equal(s.action[:, 0], [104.0] * 6)
    np.testing.assert_array_equal(s.action_is_pad, [False] + [True] * 5)


def test_episode_and_camera_selection(root):
    ds = EpisodeDataset(root, horizon=2, n_obs_steps=1, episodes=[1], cameras=["wrist"])
    assert len(ds) == 3 and ds.cameras == ("wrist",)
    assert set(ds[0].images) == {"wrist"} and ds[0].task == "place"
    with pytest.raises(EpisodeFormatError, match=r"cameras \['left'\] requested"):
        EpisodeDataset(root, horizon=2, n_obs_steps=1, cameras=["left"])
    with pytest.raises(EpisodeFormatError, match=r"episodes \[7\] requested but not on disk"):
        EpisodeDataset(root, horizon=2, n_obs_steps=1, episodes=[0, 7])


def test_negative_and_out_of_range_indices(root):
    ds = EpisodeDataset(root, horizon=2, n_obs_steps=1)
    np.testing.assert_array_equal(ds[-1].state[0, 0], 52.0)
    with pytest.raises(IndexError):
        ds[8]


def test_datasets_of_several_roots_concatenate(root, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    write_episode(other, 0, hand_made(4, base=20.0), info())
    both = torch.utils.data.ConcatDataset([
        EpisodeDataset(root, horizon=2, n_obs_steps=1),
        EpisodeDataset(other, horizon=2, n_obs_steps=1)])
    assert len(both) == 12
    np.testing.assert_array_equal(both[8].state[0, 0], 20.0)


def test_the_dataset_pickles_for_spawned_workers(root):
    ds = EpisodeDataset(root, horizon=3, n_obs_steps=2)
    copy = pickle.loads(pickle.dumps(ds))
    a, b = ds[6], copy[6]
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.images["head"], b.images["head"])


def test_horizon_and_obs_steps_must_be_positive(root):
    with pytest.raises(ValueError, match="horizon"):
        EpisodeDataset(root, horizon=0, n_obs_steps=1)


# ------------------------------------------------------------------------------------- stats


def test_stats_cover_every_step_of_every_episode(root):
    stats = compute_stats(root)
    steps = np.array([0, 1, 2, 3, 4, 50, 51, 52], dtype=np.float64)
    np.testing.assert_allclose(stats["state"].mean, np.full(7, steps.mean()), rtol=1e-6)
    np.testing.assert_allclose(stats["state"].std, np.full(7, steps.std()), rtol=1e-6)
    np.testing.assert_array_equal(stats["action"].min, np.full(7, 100.0))
    np.testing.assert_array_equal(stats["action"].max, np.full(7, 152.0))


def test_stats_of_a_dataset_use_only_its_selected_episodes(root):
    stats = compute_stats(EpisodeDataset(root, horizon=2, n_obs_steps=1, episodes=[1]))
    np.testing.assert_allclose(stats["state"].mean, np.full(7, 51.0))


def _stats(seed: int, dim: int):
    x = np.random.default_rng(seed).normal(size=(50, dim))
    return {"state": NormStats.from_data(x), "action": NormStats.from_data(2 * x + 1)}


def test_stats_survive_a_safetensors_file_round_trip(tmp_path):
    by_embodiment = {"rm75_bimanual": _stats(0, 16), "rm65_single": _stats(1, 7)}
    flat = stats_to_tensors(by_embodiment)
    assert "rm75_bimanual/action/mean" in flat and flat["rm65_single/state/std"].shape == (7,)
    path = tmp_path / "checkpoint.safetensors"
    save_file({**flat, "model/weight": np.zeros(3, np.float32)}, str(path))
    for loaded in (load_file(str(path)), load_file_torch(str(path))):
        back = stats_from_tensors(loaded)
        assert sorted(back) == ["rm65_single", "rm75_bimanual"]
        for emb, stats in by_embodiment.items():
            for key in ("state", "action"):
                for field in ("mean", "std", "min", "max"):
                    np.testing.assert_array_equal(getattr(back[emb][key], field),
                                                  getattr(stats[key], field))


def test_a_missing_statistic_is_named(tmp_path):
    flat = stats_to_tensors({"rm75_bimanual": _stats(0, 16)})
    del flat["rm75_bimanual/action/std"]
    with pytest.raises(NormStatsError, match="rm75_bimanual/action/std"):
        stats_from_tensors(flat)
    with pytest.raises(NormStatsError, match="rm65_single/state/mean"):
        stats_from_tensors(stats_to_tensors({"rm75_bimanual": _stats(0, 16)}),
                           embodiments=["rm65_single"])


def test_stats_can_live_under_a_prefix_next_to_weights():
    flat = stats_to_tensors({"rm65_single": _stats(2, 7)}, prefix="norm/")
    assert all(k.startswith("norm/rm65_single/") for k in flat)
    back = stats_from_tensors({**flat, "encoder/bn/mean": np.zeros(4, np.float32)}, prefix="norm/")
    assert list(back) == ["rm65_single"]
