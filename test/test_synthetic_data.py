"""The synthetic reaching data set: deterministic, and the image decides where the arms go."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ate_core.data.episode import EpisodeReader, list_episodes, read_info
from ate_core.data.synthetic import (COLOURS, GRIPPER_CLOSED_M, GRIPPER_OPEN_M, HOME_ARM_RAD,
                                     generate_synthetic_dataset, goal_joints, home_joints, main)
from ate_core.robot.models import RM75_B

N = 6
LENGTH = 24


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_episodes=N,
                                      length=LENGTH, image_size=(48, 64))


@pytest.fixture(scope="module")
def readers(root):
    return [EpisodeReader(root, e) for e in list_episodes(root)]


def _files(root: Path):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_same_seed_writes_identical_bytes(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", n_episodes=2, length=10, image_size=(32, 32))
    b = generate_synthetic_dataset(tmp_path / "b", n_episodes=2, length=10, image_size=(32, 32))
    c = generate_synthetic_dataset(tmp_path / "c", n_episodes=2, length=10, image_size=(32, 32),
                                   seed=1)
    files_a = _files(a)
    assert len(files_a) == 1 + 2 * 5  # info + (meta, data, 3 cameras) per episode
    assert files_a == _files(b)
    assert files_a != _files(c)


def test_info_describes_the_bimanual_robot(root):
    info = read_info(root)
    assert info.embodiment == "rm75_bimanual" and info.dim == 16 and info.fps == 10.0
    assert info.cameras == {"head": (48, 64), "left_wrist": (48, 64), "right_wrist": (48, 64)}


def test_every_episode_starts_at_home_with_open_grippers(readers):
    home = home_joints("rm75_bimanual")
    np.testing.assert_allclose(home[:7], HOME_ARM_RAD, atol=1e-7)
    for r in readers:
        np.testing.assert_array_equal(r.state[0], home)


def test_the_goal_is_set_by_the_target_in_the_image(readers):
    finals = []
    for r in readers:
        u, v = r.extra["target_px"]
        goal = goal_joints((u, v), (48, 64))
        arm = np.r_[0:7, 8:15]
        np.testing.assert_allclose(r.state[-1][arm], goal[arm], atol=1e-6)
        finals.append(r.state[-1])
        # The head camera shows the target, in the colour the instruction names, at that pixel.
        colour = r.extra["target_color"]
        assert r.task == f"reach the {colour} target"
        pixel = r.frame("head", 0)[v, u].astype(int)
        assert np.abs(pixel - COLOURS[colour]).max() <= 40
    finals = np.array(finals)
    targets = np.array([r.extra["target_px"] for r in readers])
    assert len(np.unique(targets, axis=0)) == N
    assert len(np.unique(finals.round(4), axis=0)) == N  # different targets, different goals
    # The reach is substantial: the image is worth reading.
    assert np.abs(finals[:, :7] - HOME_ARM_RAD).max(axis=1).min() > 0.1


def test_goal_joints_move_several_joints_smoothly_with_the_target():
    a = goal_joints((20, 30), (96, 96))
    b = goal_joints((21, 30), (96, 96))
    far = goal_joints((80, 80), (96, 96))
    assert np.abs(b - a).max() < 0.02  # a pixel moves the goal a little
    assert np.count_nonzero(np.abs(far - a) > 0.05) >= 6  # several joints take part
    assert 0.3 <= np.abs(far - a).max() <= 1.2


def test_grippers_close_near_the_end(readers):
    for r in readers:
        for g in (7, 15):
            assert r.state[0, g] == pytest.approx(GRIPPER_OPEN_M)
            assert r.state[-1, g] == pytest.approx(GRIPPER_CLOSED_M)
            assert r.state[LENGTH // 2, g] == pytest.approx(GRIPPER_OPEN_M)


def test_action_is_the_next_state(readers):
    for r in readers:
        np.testing.assert_array_equal(r.action[:-1], r.state[1:])
        np.testing.assert_array_equal(r.action[-1], r.state[-1])


def test_motion_is_smooth_and_within_joint_limits(readers):
    lower, upper = np.array(RM75_B.lower_rad), np.array(RM75_B.upper_rad)
    for r in readers:
        for arm in (slice(0, 7), slice(8, 15)):
            q = r.state[:, arm]
            assert np.all(q >= lower) and np.all(q <= upper)
            step = np.abs(np.diff(q, axis=0))
            assert step.max() < 0.15  # no jumps
            assert step[0].max() < 0.01  # starts at rest (minimum-jerk)
        assert np.all(np.diff(r.timestamp_s) > 0)


def test_camera_streams_change_over_time_and_wrists_differ_between_arms(readers):
    r = readers[0]
    # The wrist views zoom in on the target; the head view only shows the gripper moving.
    for cam, min_change in (("left_wrist", 5), ("right_wrist", 5), ("head", 1)):
        first, last = r.frame(cam, 0).astype(int), r.frame(cam, LENGTH - 1).astype(int)
        assert np.abs(first - last).mean() > min_change
    assert np.abs(r.frame("left_wrist", 0).astype(int)
                  - r.frame("right_wrist", 0).astype(int)).mean() > 1


def test_with_distractors_the_instruction_picks_the_target(tmp_path):
    root = generate_synthetic_dataset(tmp_path, n_episodes=4, length=8, image_size=(64, 64),
                                      distractors=2)
    for e in list_episodes(root):
        r = EpisodeReader(root, e)
        others = r.extra["distractors"]
        assert len(others) == 2
        assert r.extra["target_color"] not in {d["color"] for d in others}
        head = r.frame("head", 0)
        for d in others:
            u, v = d["px"]
            assert np.abs(head[v, u].astype(int) - COLOURS[d["color"]]).max() <= 40


def test_single_arm_embodiment(tmp_path):
    root = generate_synthetic_dataset(tmp_path, n_episodes=1, length=8, embodiment="rm65_single",
                                      cameras=("head", "wrist"), image_size=(32, 32))
    r = EpisodeReader(root, 0)
    assert r.state.shape == (8, 7) and read_info(root).embodiment == "rm65_single"
    assert r.state[-1, 6] == pytest.approx(GRIPPER_CLOSED_M)


def test_command_line_writes_a_dataset(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--episodes", "2", "--length", "6",
                 "--image-size", "24", "32", "--cameras", "head,left_wrist"]) == 0
    assert list_episodes(tmp_path / "cli") == [0, 1]
    assert read_info(tmp_path / "cli").cameras == {"head": (24, 32), "left_wrist": (24, 32)}
    assert "wrote 2 episodes" in capsys.readouterr().out
    # Running it again into the same directory would overwrite episodes: refused, exit code 2.
    assert main([str(tmp_path / "cli"), "--episodes", "1", "--length", "6",
                 "--image-size", "24", "32", "--cameras", "head,left_wrist"]) == 2
    assert "already exists" in capsys.readouterr().err
