"""The policy processor: native observations and actions <-> model space, and batching."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ate_core.data.dataset import EpisodeDataset, RawSample
from ate_core.data.stats import compute_stats
from ate_core.data.synthetic import generate_synthetic_dataset
from ate_core.policy import base
from ate_core.policy.processor import (PolicyProcessor, ProcessedDataset, ProcessorInputError,
                                      collate)
from ate_core.data.spaces import NormStats, NormStatsError, default_action_space

SPACE = default_action_space()
EMB = "rm75_bimanual"
D, W = 16, 128
CAMERAS = ("head", "left_wrist", "right_wrist")


def stats(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, D)) * rng.uniform(0.1, 2.0, size=D) + rng.normal(size=D)
    return {"state": NormStats.from_data(x), "action": NormStats.from_data(1.5 * x - 0.2)}


def processor(norm_mode="mean_std", image_size=(8, 12), cameras=CAMERAS) -> PolicyProcessor:
    return PolicyProcessor(action_space=SPACE, embodiment=EMB, stats=stats(), cameras=cameras,
                           image_size=image_size, norm_mode=norm_mode)


def frames(t=2, size=(16, 24), value=0):
    out = np.zeros((t,) + size + (3,), dtype=np.uint8)
    out[..., 0] = value
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_episodes=3, length=12,
                                      image_size=(32, 32))


# ------------------------------------------------------------------------------------- images


def test_images_are_resized_to_chw_uint8_in_the_processors_camera_order():
    p = processor(cameras=("right_wrist", "head"))
    obs = p.observation({"head": frames(value=10), "right_wrist": frames(value=200),
                         "left_wrist": frames(value=99)}, np.zeros((2, D)), "reach")
    assert obs.images.shape == (2, 2, 3, 8, 12) and obs.images.dtype == np.uint8
    assert obs.images[:, 0, 0].min() == 200 and obs.images[:, 1, 0].max() == 10  # RGB kept
    assert obs.images[:, :, 1:].max() == 0


def test_shrinking_averages_over_the_source_area():
    stripes = np.zeros((1, 8, 48, 3), dtype=np.uint8)
    stripes[:, :, ::4] = 255  # one bright column in four
    p = processor(image_size=(8, 12))
    out = p.observation({c: stripes for c in CAMERAS}, np.zeros((1, D)), "").images
    assert np.all(np.abs(out.astype(int) - 64) <= 1)  # the area mean, not a sampled column


def test_enlarging_interpolates_smoothly():
    ramp = np.repeat(np.linspace(0, 240, 6).astype(np.uint8)[None, None, :, None], 3, axis=3)
    ramp = np.repeat(ramp, 4, axis=1)
    out = processor(image_size=(8, 12)).images({c: ramp for c in CAMERAS})[0, 0, 0]
    assert out.shape == (8, 12) and np.all(np.diff(out[0].astype(int)) >= 0)
    assert len(np.unique(out[0])) > 6  # new intermediate values, not repeated pixels


def test_a_single_step_observation_gets_a_time_axis():
    obs = processor().observation({c: frames(1)[0] for c in CAMERAS}, np.zeros(D), "reach")
    assert obs.images.shape == (1, 3, 3, 8, 12) and obs.state.shape == (1, W)


@pytest.mark.parametrize("bad,message", [
    (None, "camera 'left_wrist': missing"),
    (frames().astype(np.float32), "camera 'left_wrist': expected uint8"),
    (frames()[..., :1], "camera 'left_wrist': expected uint8 RGB"),
    (frames(3), "camera 'left_wrist': 3 frames, 'head' has 2"),
])
def test_bad_camera_input_names_the_camera(bad, message):
    images = {c: frames() for c in CAMERAS}
    if bad is None:
        del images["left_wrist"]
    else:
        images["left_wrist"] = bad
    with pytest.raises(ProcessorInputError, match=message):
        processor().observation(images, np.zeros((2, D)), "reach")


def test_state_length_must_match_the_frames():
    with pytest.raises(ProcessorInputError, match=r"state: expected \[T, 16\] with T = 2"):
        processor().observation({c: frames() for c in CAMERAS}, np.zeros((3, D)), "reach")


# --------------------------------------------------------------------------- state and action


@pytest.mark.parametrize("norm_mode", ["mean_std", "min_max"])
def test_state_is_normalised_into_the_embodiments_slots_and_padding_is_zero(norm_mode):
    p = processor(norm_mode)
    s = stats()["state"]
    native = np.random.default_rng(1).normal(size=(2, D)).astype(np.float32)
    obs = p.observation({c: frames() for c in CAMERAS}, native, "reach")
    mask = SPACE.mask(EMB)
    np.testing.assert_array_equal(obs.state_mask, mask)
    assert obs.state.dtype == np.float32 and np.all(obs.state[:, ~mask] == 0)
    if norm_mode == "mean_std":
        want = (native - s.mean) / s.std
    else:
        want = 2 * (native - s.min) / (s.max - s.min) - 1
    np.testing.assert_allclose(SPACE.unpad(obs.state, EMB), want, rtol=1e-5, atol=1e-5)
    # rm75_bimanual's left arm (native 0-7) sits in unified slots 8-15.
    np.testing.assert_allclose(obs.state[:, 8:16], want[:, 0:8], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_mode", ["mean_std", "min_max"])
def test_action_chunk_inverts_the_action_transform(norm_mode):
    p = processor(norm_mode)
    native = np.random.default_rng(2).normal(size=(3, 16, D)).astype(np.float32)
    unified = p.action(native)
    assert unified.shape == (3, 16, W)
    np.testing.assert_allclose(p.action_chunk(unified), native, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.action_chunk(unified[0]), native[0], rtol=1e-5, atol=1e-5)
    from_torch = p.action_chunk(torch.from_numpy(unified).double().requires_grad_())
    assert from_torch.dtype == np.float32 and from_torch.shape == (3, 16, D)
    np.testing.assert_allclose(from_torch, native, rtol=1e-5, atol=1e-5)


def test_action_chunk_ignores_whatever_the_padding_slots_hold():
    p = processor()
    unified = p.action(np.ones((16, D), np.float32))
    noisy = unified.copy()
    noisy[:, ~SPACE.mask(EMB)] = 1e6
    np.testing.assert_array_equal(p.action_chunk(noisy), p.action_chunk(unified))


def test_stats_must_have_the_embodiments_width():
    wrong = {"state": stats()["state"], "action": NormStats.from_data(np.zeros((3, 7)))}
    with pytest.raises(NormStatsError, match=r"stats\['action'\] has shape \[7\].*16"):
        PolicyProcessor(action_space=SPACE, embodiment=EMB, stats=wrong, cameras=CAMERAS,
                        image_size=(8, 8))


def test_sample_processes_a_raw_sample():
    raw = RawSample(images={c: frames() for c in CAMERAS}, state=np.zeros((2, D), np.float32),
                    action=np.ones((4, D), np.float32),
                    action_is_pad=np.array([False, False, False, True]), task="reach",
                    embodiment=EMB)
    s = processor().sample(raw)
    assert s.action.shape == (4, W) and s.action.dtype == np.float32
    np.testing.assert_array_equal(s.action_is_pad, raw.action_is_pad)
    np.testing.assert_array_equal(s.action_mask, SPACE.mask(EMB))
    with pytest.raises(ProcessorInputError, match="embodiment 'rm65_single'"):
        processor().sample(RawSample(raw.images, raw.state, raw.action, raw.action_is_pad,
                                     "reach", "rm65_single"))


# ------------------------------------------------------------------------------------ batching


def _check_batch(batch: base.Batch, b: int, horizon: int, t_obs: int, hw) -> None:
    assert isinstance(batch, base.Batch)
    obs = batch.obs
    assert obs.images.shape == (b, t_obs, 3, 3) + hw and obs.images.dtype == torch.uint8
    assert obs.state.shape == (b, t_obs, W) and obs.state.dtype == torch.float32
    assert obs.state_mask.shape == (b, W) and obs.state_mask.dtype == torch.bool
    assert isinstance(obs.task, tuple) and len(obs.task) == b and isinstance(obs.task[0], str)
    assert batch.action.shape == (b, horizon, W) and batch.action.dtype == torch.float32
    assert batch.action_mask.shape == (b, W) and batch.action_mask.dtype == torch.bool
    assert batch.action_is_pad.shape == (b, horizon) and batch.action_is_pad.dtype == torch.bool


def test_batch_observation_stacks_processed_observations():
    p = processor()
    one = p.observation({c: frames() for c in CAMERAS}, np.zeros((2, D)), "a")
    two = p.observation({c: frames(value=5) for c in CAMERAS}, np.ones((2, D)), "b")
    obs = p.batch_observation([one, two])
    assert isinstance(obs, base.Observation) and obs.batch_size == 2
    assert obs.images.shape == (2, 2, 3, 3, 8, 12) and obs.task == ("a", "b")
    np.testing.assert_array_equal(obs.state[1].numpy(), two.state)


def test_dataloader_with_two_workers_collates_batches(synthetic):
    ds = EpisodeDataset(synthetic, horizon=16, n_obs_steps=2)
    p = PolicyProcessor.from_dataset(ds, SPACE, image_size=(24, 24))
    processed = ProcessedDataset(ds, p)
    loader = DataLoader(processed, batch_size=8, num_workers=2, collate_fn=collate)
    batches = list(loader)
    del loader
    assert sum(b.batch_size for b in batches) == len(ds) == 36
    _check_batch(batches[0], 8, 16, 2, (24, 24))
    # Workers produce exactly what the main process would.
    here = collate([processed[i] for i in range(8)])
    torch.testing.assert_close(batches[0].action, here.action)
    assert torch.equal(batches[0].obs.images, here.obs.images)
    # The last steps of an episode are padded; their padding flags arrive in the batch.
    assert batches[0].action_is_pad[0].sum() == 16 - 12
    assert bool(batches[0].loss_weight()[:, :, ~torch.from_numpy(SPACE.mask(EMB))].sum() == 0)


def test_from_dataset_uses_the_datasets_statistics(synthetic):
    ds = EpisodeDataset(synthetic, horizon=4, n_obs_steps=1)
    p = PolicyProcessor.from_dataset(ds, SPACE, cameras=["head"], image_size=(16, 16))
    want = compute_stats(synthetic)
    np.testing.assert_array_equal(p.stats["action"].mean, want["action"].mean)
    assert p.cameras == ("head",) and p.embodiment == EMB
    # Normalised over the data set, the demonstrated actions have zero mean in every moving dim.
    all_actions = p.action(ds.actions())
    moving = SPACE.unpad(all_actions, EMB)[:, want["action"].std > 0]
    np.testing.assert_allclose(moving.mean(axis=0), 0.0, atol=1e-4)


def test_the_processor_pickles_for_spawned_workers():
    p = processor("min_max")
    copy = pickle.loads(pickle.dumps(p))
    x = np.random.default_rng(3).normal(size=(4, D)).astype(np.float32)
    np.testing.assert_array_equal(copy.action(x), p.action(x))
    assert copy.cameras == p.cameras and copy.image_size == p.image_size
