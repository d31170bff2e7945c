"""Teleop's pure parts: reading a leader's JointState as a follower's joints, and the jog."""

from __future__ import annotations

import numpy as np
import pytest

from ate_core.runtime.teleop import Jog, LeaderMap, LeaderMismatch

NAMES = [f"left_joint{i}" for i in range(1, 8)] + ["left_gripper"]
SHORT = [f"joint{i}" for i in range(1, 8)] + ["gripper"]
VALUES = np.arange(8) * 0.1


def test_a_leader_is_read_by_name_in_any_order():
    leader = LeaderMap(NAMES, "left_")
    order = [3, 0, 7, 1, 6, 2, 5, 4]
    got = leader([NAMES[i] for i in order] + ["extra"], [*VALUES[order], 9.0])
    np.testing.assert_array_equal(got, VALUES)


@pytest.mark.parametrize("names", [SHORT, [f"leader_{n}" for n in SHORT]])
def test_realman_names_and_other_prefixes_map_by_their_tail(names):
    got = LeaderMap(NAMES, "left_")(names[::-1], VALUES[::-1])
    np.testing.assert_array_equal(got, VALUES)


def test_nameless_values_map_by_position_when_the_count_is_right():
    np.testing.assert_array_equal(LeaderMap(NAMES, "left_")([], VALUES), VALUES)
    with pytest.raises(LeaderMismatch, match="exactly 8 values"):
        LeaderMap(NAMES, "left_")([], VALUES[:7])


def test_a_leader_missing_a_joint_is_refused_with_the_reason():
    with pytest.raises(LeaderMismatch, match=r"not \['left_joint1'"):
        LeaderMap(NAMES, "left_")(SHORT[:7] + ["finger"], VALUES)
    with pytest.raises(LeaderMismatch, match="8 names but 7 positions"):
        LeaderMap(NAMES, "left_")(NAMES, VALUES[:7])


def limits():
    lo = np.array([-3.0] * 7 + [0.0])
    hi = np.array([3.0] * 7 + [0.07])
    return {"left": (lo, hi), "right": (lo, hi)}


def test_the_jog_moves_one_joint_of_the_selected_arm_within_its_limits():
    jog = Jog(limits(), 0.02)
    assert jog.key("+") == "left: no joint state yet"
    jog.reset({"left": np.zeros(8), "right": np.full(8, 0.05)})
    assert jog.ready()
    for ch in "3++-":
        jog.key(ch)
    np.testing.assert_allclose(jog.targets["left"], [0, 0, 0.02, 0, 0, 0, 0, 0])
    jog.key("\t")
    assert jog.arm == "right"
    jog.key("g")
    jog.key("+")  # the gripper moves by a tenth of the step
    assert jog.targets["right"][7] == pytest.approx(0.052)
    for _ in range(15):
        jog.key("+")  # and stops at its range
    assert jog.targets["right"][7] == pytest.approx(0.07)
    jog.key("]")
    assert jog.step == pytest.approx(0.04)
    assert jog.key("x") is None
    np.testing.assert_allclose(jog.targets["left"], [0, 0, 0.02, 0, 0, 0, 0, 0])


def test_the_jog_starts_inside_the_limits():
    jog = Jog(limits(), 0.02)
    jog.reset({"left": np.full(8, 5.0), "right": np.zeros(8)})
    assert jog.targets["left"].max() == 3.0 and jog.targets["left"][7] == 0.07
