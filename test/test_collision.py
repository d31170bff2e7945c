"""Segment distances and the dual-arm capsule model."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ate_core.robot.config import load_config
from ate_core.robot.collision import (CapsuleModel, LinkChain, arm_points, arm_segments,
                                      capsule_clearance_below_m, capsule_clearance_m,
                                      segment_distance)
from ate_core.robot.layout import default_bimanual_layout

CFG = load_config("config/bimanual.yaml")
LAYOUT = default_bimanual_layout()  # flange = TCP: the bare arm chain
LEFT, RIGHT = LAYOUT.arms
HOME = np.array(CFG.arms.left.home_rad)
RADIUS = CFG.supervisor.safety.link_radius_m


def point_segment_distance(x: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> float:
    d = q1 - q0
    length2 = float(d @ d)
    t = 0.0 if length2 == 0.0 else min(1.0, max(0.0, float((x - q0) @ d) / length2))
    return float(np.linalg.norm(x - (q0 + t * d)))


def brute_force_distance(p0, p1, q0, q1, samples: int = 2001):
    """Dense samples along p against exact point-segment distances to q, and its resolution."""
    s = np.linspace(0.0, 1.0, samples)
    best = min(point_segment_distance(p0 + si * (p1 - p0), q0, q1) for si in s)
    # The distance to q is 1-Lipschitz along p: the true minimum lies within half a sample.
    return best, 0.5 * float(np.linalg.norm(p1 - p0)) / (samples - 1)


coordinate = st.floats(-1.0, 1.0, allow_nan=False)
point = st.tuples(coordinate, coordinate, coordinate).map(np.array)


@st.composite
def segment_pairs(draw):
    p0, p1, q0, q1 = draw(point), draw(point), draw(point), draw(point)
    kind = draw(st.sampled_from(["general", "parallel", "antiparallel", "p_point", "q_point",
                                 "both_points", "touching", "tiny"]))
    if kind == "parallel":
        q1 = q0 + draw(st.floats(0.1, 2.0)) * (p1 - p0)
    elif kind == "antiparallel":
        q1 = q0 - draw(st.floats(0.1, 2.0)) * (p1 - p0)
    elif kind == "p_point":
        p1 = p0.copy()
    elif kind == "q_point":
        q1 = q0.copy()
    elif kind == "both_points":
        p1, q1 = p0.copy(), q0.copy()
    elif kind == "tiny":
        p1 = p0 + draw(st.floats(1e-12, 1e-6)) * (q1 - q0)
    elif kind == "touching":
        q0 = p0 + draw(st.floats(0.0, 1.0)) * (p1 - p0)
    return p0, p1, q0, q1


@settings(max_examples=150, deadline=None)
@given(segment_pairs())
def test_segment_distance_matches_dense_sampling(pair):
    p0, p1, q0, q1 = pair
    got = float(segment_distance(p0, p1, q0, q1))
    best, resolution = brute_force_distance(p0, p1, q0, q1)
    assert best - resolution - 1e-12 <= got <= best + 1e-12


@settings(max_examples=100, deadline=None)
@given(segment_pairs())
def test_segment_distance_is_symmetric_in_the_segments_and_their_directions(pair):
    p0, p1, q0, q1 = pair
    d = segment_distance(p0, p1, q0, q1)
    for other in (segment_distance(q0, q1, p0, p1), segment_distance(p1, p0, q1, q0)):
        assert other == pytest.approx(d, abs=1e-12)


def test_parallel_overlapping_segments_are_their_offset_apart():
    got = segment_distance(np.array([0.0, 0, 0]), np.array([1.0, 0, 0]),
                           np.array([0.5, 0.3, 0]), np.array([2.0, 0.3, 0]))
    assert got == pytest.approx(0.3, abs=1e-15)


def test_parallel_segments_without_overlap_meet_at_the_nearest_ends():
    got = segment_distance(np.array([0.0, 0, 0]), np.array([1.0, 0, 0]),
                           np.array([1.4, 0.3, 0]), np.array([2.0, 0.3, 0]))
    assert got == pytest.approx(0.5, abs=1e-15)  # (1, 0, 0) to (1.4, 0.3, 0)


def test_antiparallel_collinear_overlapping_segments_touch():
    got = segment_distance(np.array([0.0, 0, 0]), np.array([1.0, 0, 0]),
                           np.array([0.8, 0, 0]), np.array([-0.5, 0, 0]))
    assert got == pytest.approx(0.0, abs=1e-15)


def test_crossing_segments_are_their_common_perpendicular_apart():
    got = segment_distance(np.array([-1.0, 0, 0]), np.array([1.0, 0, 0]),
                           np.array([0.2, -1, 0.25]), np.array([0.2, 1, 0.25]))
    assert got == pytest.approx(0.25, abs=1e-15)


def test_zero_length_segments_reduce_to_point_distances():
    a, b = np.array([0.0, 0, 0]), np.array([0.0, 2, 0])
    x = np.array([0.3, 0.4, 0.0])
    assert segment_distance(x, x, a, b) == pytest.approx(0.3, abs=1e-15)
    assert segment_distance(a, b, x, x) == pytest.approx(0.3, abs=1e-15)
    assert segment_distance(x, x, a, a) == pytest.approx(0.5, abs=1e-15)
    beyond = np.array([0.0, 3.0, 0.0])
    assert segment_distance(beyond, beyond, a, b) == pytest.approx(1.0, abs=1e-15)


def test_segment_distance_broadcasts_over_leading_dimensions():
    rng = np.random.default_rng(3)
    p0, p1 = rng.normal(size=(5, 1, 3)), rng.normal(size=(5, 1, 3))
    q0, q1 = rng.normal(size=(1, 4, 3)), rng.normal(size=(1, 4, 3))
    got = segment_distance(p0, p1, q0, q1)
    assert got.shape == (5, 4)
    for i in range(5):
        for j in range(4):
            assert got[i, j] == pytest.approx(
                float(segment_distance(p0[i, 0], p1[i, 0], q0[0, j], q1[0, j])), abs=1e-15)


# ------------------------------------------------------------------------------ arm chains


def test_rm75_chain_is_mount_shoulder_elbow_wrist_flange():
    # Frames 1/2, 3/4 and 5/6 coincide (a = d = 0 between them) and the TCP is the flange.
    starts, ends = arm_segments(LEFT, HOME)
    assert starts.shape == ends.shape == (4, 3)
    np.testing.assert_allclose(starts[0], LEFT.mount.xyz_m, atol=1e-15)
    np.testing.assert_allclose(ends[-1], LEFT.tcp_pose(HOME)[:3, 3], atol=1e-12)
    np.testing.assert_array_equal(starts[1:], ends[:-1])


def test_link_lengths_do_not_depend_on_the_configuration():
    rng = np.random.default_rng(4)
    q = rng.uniform(LEFT.model.lower_rad, LEFT.model.upper_rad, size=(50, 7))
    starts, ends = arm_segments(LEFT, q)
    assert starts.shape == (50, 4, 3)
    lengths = np.linalg.norm(ends - starts, axis=-1)
    np.testing.assert_allclose(lengths, np.broadcast_to([0.2405, 0.256, 0.210, 0.144], (50, 4)),
                               atol=1e-12)


def test_batched_chain_points_equal_one_by_one():
    rng = np.random.default_rng(5)
    q = rng.uniform(RIGHT.model.lower_rad, RIGHT.model.upper_rad, size=(6, 7))
    batch = LinkChain.of_arm(RIGHT).points(q)
    for i in range(6):
        np.testing.assert_allclose(batch[i], arm_points(RIGHT, q[i]), atol=1e-14)


def test_chain_points_are_the_layouts_frame_origins():
    rng = np.random.default_rng(8)
    q = rng.uniform(LEFT.model.lower_rad, LEFT.model.upper_rad, size=(10, 7))
    origins = LEFT.link_poses(q)[..., :3, 3]  # frames 1..7
    points = arm_points(LEFT, q)
    np.testing.assert_allclose(points[:, 1:], origins[:, [0, 2, 4, 6]], atol=1e-12)
    np.testing.assert_allclose(points[:, -1], LEFT.tcp_pose(q)[..., :3, 3], atol=1e-12)


def test_one_chain_evaluates_several_mounts_of_a_model_at_once():
    rng = np.random.default_rng(9)
    q = rng.uniform(LEFT.model.lower_rad, LEFT.model.upper_rad, size=(5, 2, 7))
    both = LinkChain(LEFT.model, np.stack([LEFT.mount.matrix(), RIGHT.mount.matrix()]),
                     LEFT.tcp.matrix())
    points = both.points(q)
    assert points.shape == (5, 2, 5, 3)
    np.testing.assert_allclose(points[:, 0], arm_points(LEFT, q[:, 0]), atol=1e-14)
    np.testing.assert_allclose(points[:, 1], arm_points(RIGHT, q[:, 1]), atol=1e-14)


def test_a_tool_offset_adds_a_segment_to_the_tcp():
    from ate_core.robot.layout import ArmPlacement, MountPose

    arm = ArmPlacement("left", LEFT.model, LEFT.mount, MountPose((0.0, 0.0, 0.12)))
    starts, ends = arm_segments(arm, HOME)
    assert starts.shape == (5, 3)
    np.testing.assert_allclose(ends[-1], arm.tcp_pose(HOME)[:3, 3], atol=1e-12)
    assert np.linalg.norm(ends[-1] - starts[-1]) == pytest.approx(0.12, abs=1e-12)


# ------------------------------------------------------------------------------ clearance


def test_clearance_at_home_is_the_mount_spacing_minus_both_radii():
    # At home both arms lie in their own x-z plane, y = +-0.3.
    clearance = CapsuleModel(RADIUS).clearance_m(LAYOUT, {"left": HOME, "right": HOME})
    assert clearance == pytest.approx(0.6 - 2 * RADIUS, abs=1e-12)
    assert clearance > 0


def test_an_arm_reaching_through_the_other_gives_negative_clearance():
    # Left arm turned to -y and laid flat at shoulder height: its forearm passes through the
    # right arm's shoulder (0, -0.3, 0.2405).
    reach = np.zeros(7)
    reach[0], reach[1] = -math.pi / 2, math.pi / 2
    clearance = CapsuleModel(RADIUS).clearance_m(LAYOUT, {"left": reach, "right": HOME})
    assert clearance == pytest.approx(-2 * RADIUS, abs=1e-12)


def test_clearance_is_the_least_distance_over_all_link_pairs():
    rng = np.random.default_rng(6)
    q = rng.uniform(LEFT.model.lower_rad, LEFT.model.upper_rad, size=(20, 2, 7))
    model = CapsuleModel(RADIUS)
    batch = model.clearances_m(LAYOUT, {"left": q[:, 0], "right": q[:, 1]})
    for i in range(20):
        sa, ea = arm_segments(LEFT, q[i, 0])
        sb, eb = arm_segments(RIGHT, q[i, 1])
        pairs = [float(segment_distance(sa[j], ea[j], sb[k], eb[k]))
                 for j in range(len(sa)) for k in range(len(sb))]
        assert batch[i] == pytest.approx(min(pairs) - 2 * RADIUS, abs=1e-12)
        assert model.clearance_m(LAYOUT, {"left": q[i, 0], "right": q[i, 1]}) == \
            pytest.approx(batch[i], abs=1e-12)


def test_clearance_does_not_depend_on_which_chain_comes_first():
    rng = np.random.default_rng(7)
    q = rng.uniform(LEFT.model.lower_rad, LEFT.model.upper_rad, size=(10, 2, 7))
    a, b = arm_points(LEFT, q[:, 0]), arm_points(RIGHT, q[:, 1])
    np.testing.assert_allclose(capsule_clearance_m(a, b, RADIUS),
                               capsule_clearance_m(b, a, RADIUS), atol=1e-12)


@pytest.mark.parametrize("threshold", [-0.05, 0.05, 0.3])
def test_clearance_below_a_threshold_is_exact_there_and_above_it_elsewhere(threshold):
    rng = np.random.default_rng(8)
    q = rng.uniform(LEFT.model.lower_rad, LEFT.model.upper_rad, size=(400, 2, 7))
    a, b = arm_points(LEFT, q[:, 0]), arm_points(RIGHT, q[:, 1])
    exact = capsule_clearance_m(a, b, RADIUS)
    got = capsule_clearance_below_m(a, b, RADIUS, threshold)
    below = exact < threshold
    assert below.any() and (~below).any()  # both cases drawn
    np.testing.assert_array_equal(got[below], exact[below])  # bit for bit: the filter's decisions
    assert np.all(got[~below] >= threshold) and np.all(got[~below] <= exact[~below] + 1e-12)
    one = capsule_clearance_below_m(a[0], b[0], RADIUS, threshold)  # unbatched too
    assert (one == exact[0]) if exact[0] < threshold else (threshold <= one <= exact[0] + 1e-12)


def test_clearance_needs_both_arms():
    with pytest.raises(KeyError, match="right"):
        CapsuleModel(RADIUS).clearance_m(LAYOUT, {"left": HOME})
    with pytest.raises(ValueError, match="radius_m"):
        CapsuleModel(-0.1)
