"""Unified action vector, normalisation statistics and the transforms composed from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import load_file, save_file

from ate_core.policy.transforms import Compose, Normalize, PadActions, Unnormalize, UnpadActions
from ate_core.data.spaces import NormStats, UnifiedActionSpace, default_action_space

SPACE = default_action_space()
DIMS = {"rm75_bimanual": 16, "rm65_single": 7}
MODES = ("mean_std", "min_max")


def _rng_actions(embodiment: str, shape=(4, 5), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape + (DIMS[embodiment],)).astype(np.float32)


# ------------------------------------------------------------------------ unified action space


@pytest.mark.parametrize("embodiment", sorted(DIMS))
def test_pad_then_unpad_returns_the_native_actions(embodiment):
    a = _rng_actions(embodiment)
    u = SPACE.pad(a, embodiment)
    assert u.shape == (4, 5, 128) and u.dtype == np.float32
    np.testing.assert_array_equal(SPACE.unpad(u, embodiment), a)


@pytest.mark.parametrize("embodiment", sorted(DIMS))
def test_padding_slots_are_exactly_zero_and_mask_marks_the_real_ones(embodiment):
    u = SPACE.pad(_rng_actions(embodiment) + 10.0, embodiment)  # no real value is 0
    m = SPACE.mask(embodiment)
    assert m.dtype == bool and m.shape == (128,) and m.sum() == DIMS[embodiment]
    assert np.all(u[..., ~m] == 0.0)
    assert np.all(u[..., m] != 0.0)


def test_default_layout_shares_slots_by_role_across_embodiments():
    # Right arm = arm A (slots 0-7), like a single arm; the RM65 skips the RM75's joint3 slot.
    bi = SPACE.slots("rm75_bimanual")
    right_joints, right_gripper = bi[8:15], bi[15]
    left_joints, left_gripper = bi[0:7], bi[7]
    assert right_joints == tuple(range(7)) and right_gripper == 7
    assert left_joints == tuple(range(8, 15)) and left_gripper == 15
    single = SPACE.slots("rm65_single")
    assert single == (0, 1, 3, 4, 5, 6, 7)
    assert set(single) <= set(bi)


@pytest.mark.parametrize("embodiment", sorted(DIMS))
def test_wrong_action_width_names_the_embodiment(embodiment):
    wrong = np.zeros((3, DIMS[embodiment] + 1), np.float32)
    with pytest.raises(ValueError, match=embodiment):
        SPACE.pad(wrong, embodiment)
    with pytest.raises(ValueError, match=embodiment):
        SPACE.unpad(np.zeros((3, 127), np.float32), embodiment)


def test_unknown_embodiment_is_rejected_with_its_name():
    with pytest.raises(ValueError, match="ur5"):
        SPACE.pad(np.zeros(7, np.float32), "ur5")
    with pytest.raises(ValueError, match="ur5"):
        PadActions(SPACE, "ur5")


@pytest.mark.parametrize("slots, problem", [((0, 1, 1), "duplicate"), ((0, 128), "outside"),
                                            ((-1, 2), "outside"), ((), "no action slots")])
def test_bad_layout_names_the_embodiment(slots, problem):
    with pytest.raises(ValueError, match=f"'my_arm'.*{problem}"):
        UnifiedActionSpace({"my_arm": slots})


@pytest.mark.parametrize("embodiment", sorted(DIMS))
def test_torch_pad_matches_numpy_keeps_dtype_and_is_differentiable(embodiment):
    a = _rng_actions(embodiment)
    t = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    u = SPACE.pad(t, embodiment)
    assert u.dtype == torch.float64 and u.device == t.device
    np.testing.assert_array_equal(u.detach().numpy(), SPACE.pad(a.astype(np.float64), embodiment))
    np.testing.assert_array_equal(SPACE.unpad(u, embodiment).detach().numpy(), a)
    u.sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), np.ones_like(a))
    m = SPACE.mask(embodiment, like=t)
    assert m.dtype == torch.bool and m.device == t.device
    np.testing.assert_array_equal(m.numpy(), SPACE.mask(embodiment))


# --------------------------------------------------------------------------------- NormStats


def test_stats_from_data_match_numpy():
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(500, 16)).astype(np.float32)
    s = NormStats.from_data(x)
    np.testing.assert_allclose(s.mean, x.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.std, x.std(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(s.min, x.min(axis=0))
    np.testing.assert_array_equal(s.max, x.max(axis=0))
    assert all(a.dtype == np.float32 for a in (s.mean, s.std, s.min, s.max))
    torch_s = NormStats.from_data(torch.from_numpy(x))
    np.testing.assert_array_equal(torch_s.mean, s.mean)


@pytest.mark.parametrize("mode", MODES)
def test_constant_dims_normalise_to_zero_without_inf_or_nan(mode):
    x = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    x[:, 1] = 0.1  # e.g. a gripper never moved in this data set
    x[:, 3] = 0.0
    y = Normalize(NormStats.from_data(x), mode)(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[:, [1, 3]], 0.0, atol=1e-6)
    np.testing.assert_allclose(Unnormalize(NormStats.from_data(x), mode)(y), x, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_a_constant_dim_comes_back_as_its_constant_whatever_the_model_says(mode):
    # The idle arm of a one-arm task: a model's usual error in normalised units must not come
    # back as radians of motion; the varying dims keep the exact inverse.
    x = np.random.default_rng(3).normal(size=(50, 3)).astype(np.float32)
    x[:, 1] = 1.6
    stats = NormStats.from_data(x)
    y = Normalize(stats, mode)(x) + np.float32(0.2)
    back = Unnormalize(stats, mode)(y)
    np.testing.assert_array_equal(back[:, 1], np.float32(1.6))
    assert np.all(np.abs(back[:, [0, 2]] - x[:, [0, 2]]) > 1e-3)  # moved by the 0.2
    t = Unnormalize(stats, mode)(torch.from_numpy(y))
    np.testing.assert_array_equal(t.numpy(), back)


def test_stats_dict_round_trip_is_bit_exact(tmp_path):
    s = NormStats.from_data(np.random.default_rng(3).normal(size=(20, 7)).astype(np.float32))
    back = NormStats.from_dict(s.to_dict())
    path = tmp_path / "stats.safetensors"
    save_file({**s.to_dict("action."), "other": np.zeros(3, np.float32)}, str(path))
    loaded = NormStats.from_dict(load_file(str(path)), prefix="action.")
    for name in ("mean", "std", "min", "max"):
        assert getattr(back, name).tobytes() == getattr(s, name).tobytes()
        assert getattr(loaded, name).tobytes() == getattr(s, name).tobytes()


def _good() -> dict:
    return dict(mean=np.zeros(3), std=np.ones(3), min=-np.ones(3), max=np.ones(3))


@pytest.mark.parametrize("field, value", [("std", np.ones(4)), ("max", np.ones((3, 1))),
                                          ("mean", np.array([0.0, np.nan, 0.0])),
                                          ("min", np.array([-np.inf, 0.0, 0.0])),
                                          ("std", -np.ones(3)), ("min", 2 * np.ones(3))])
def test_bad_stats_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"NormStats.{field}"):
        NormStats(**{**_good(), field: value})


def test_missing_stats_key_is_named():
    d = NormStats(**_good()).to_dict()
    del d["std"]
    with pytest.raises(ValueError, match="std"):
        NormStats.from_dict(d)


# -------------------------------------------------------------------------------- transforms

_data = hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=20),
                   elements=st.floats(-1e3, 1e3, width=32))


@settings(max_examples=60, deadline=None)
@given(x=_data, mode=st.sampled_from(MODES))
def test_normalize_then_unnormalize_round_trips(x, mode):
    stats = NormStats.from_data(x)
    y = Normalize(stats, mode)(x)
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    back = Unnormalize(stats, mode)(y)
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-5 * (1.0 + np.abs(x).max()))


@settings(max_examples=60, deadline=None)
@given(x=_data)
def test_min_max_maps_its_own_data_into_unit_interval(x):
    y = Normalize(NormStats.from_data(x), "min_max")(x)
    assert np.all(y >= -1.0) and np.all(y <= 1.0)


@pytest.mark.parametrize("mode", MODES)
def test_torch_normalize_matches_numpy_keeps_dtype_and_is_differentiable(mode):
    x = _rng_actions("rm75_bimanual")
    n = Normalize(NormStats.from_data(x.reshape(-1, 16)), mode)
    t = torch.tensor(x, requires_grad=True)
    y = n(t)
    assert y.dtype == torch.float32 and y.device == t.device
    np.testing.assert_allclose(y.detach().numpy(), n(x), rtol=1e-6, atol=1e-6)
    y.sum().backward()
    assert t.grad is not None and torch.all(torch.isfinite(t.grad))
    with pytest.raises(ValueError, match="shape"):
        n(np.zeros((2, 7), np.float32))


def test_composed_pipeline_and_its_inverse_round_trip_on_numpy_and_torch():
    a = _rng_actions("rm65_single", shape=(8, 50))
    stats = NormStats.from_data(a.reshape(-1, 7))
    to_policy = Compose([Normalize(stats, "min_max"), PadActions(SPACE, "rm65_single")])
    to_robot = to_policy.inverse()
    assert isinstance(to_robot.transforms[0], UnpadActions)
    u = to_policy(a)
    assert u.shape == (8, 50, 128) and np.all(u[..., ~SPACE.mask("rm65_single")] == 0.0)
    np.testing.assert_allclose(to_robot(u), a, rtol=1e-6, atol=1e-6)
    ut = to_policy(torch.from_numpy(a))
    np.testing.assert_allclose(ut.numpy(), u, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_robot(ut).numpy(), a, rtol=1e-6, atol=1e-6)


def test_action_space_survives_pickling_for_dataloader_workers():
    import pickle
    space = default_action_space()
    copy = pickle.loads(pickle.dumps(space))
    assert copy == space and hash(copy) == hash(space)
    assert copy.slots("rm65_single") == space.slots("rm65_single")
