"""Offline replay evaluation: on a take with known commands and a policy with known output,
the errors per horizon step, the boundary jumps and the attempt times are exactly the expected
ones; the safety filter sees the chunks; plots and JSON are written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from ate_core.config import flatten
from ate_core.data.bag import EpisodeBagWriter
from ate_core.data.episode import default_joint_names
from ate_core.eval.replay import ReplayEvalError, replay_evaluate, write_plots
from ate_core.robot.config import load_config
from ate_core.robot.recording import recorded_streams, streams_to_dict
from ate_core.runtime.chunk import make_chunk

S = 1_000_000_000
MS = 1_000_000
BASE = 1_700_000_000 * S
CFG = load_config(__import__("pathlib").Path(__file__).resolve().parents[1] / "config/bimanual.yaml")
NAMES = default_joint_names("rm75_bimanual")


class AlternatingPolicy:
    """Chunks of 8 points, 100 ms apart, every joint at 0.1 then 1.1 then 0.1...: known output."""

    cameras = ()
    joint_names = NAMES
    n_obs_steps = 1
    n_action_steps = 4
    action_period_ns = 100 * MS
    env_state_dim = 0

    def __init__(self):
        self.calls = []

    def warmup(self, runs):
        pass

    def infer(self, images, state, stamp_ns, task):
        value = 0.1 + (len(self.calls) % 2)
        self.calls.append((stamp_ns, task, state.copy()))
        times = np.arange(8) * self.action_period_ns
        return make_chunk(NAMES, stamp_ns, times, np.full((8, len(NAMES)), value), NAMES)


def home(side):
    arm = CFG.arms.left if side == "left" else CFG.arms.right
    return [*arm.home_rad, 0.07]


def command_value(stamp):
    return 0.2 * (stamp - BASE) / S  # a ramp: each point's recorded action differs


def write_take(path, *, chunk_stamps=(), seconds=3.0):
    streams = {t: s for t, s in recorded_streams(CFG).items()
               if s.role in ("state", "command", "chunk")}
    writer = EpisodeBagWriter(path, {"task": "pour", "contract": {
        "config": flatten(CFG), "streams": streams_to_dict(streams)}})
    for topic, s in streams.items():
        writer.add_topic(topic, s.msgtype)
    commands = {}
    for k in range(int(seconds * 100)):
        stamp = BASE + k * 10 * MS
        for topic, s in streams.items():
            if s.role not in ("state", "command"):
                continue
            m = JointState(name=list(s.joints))
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, S)
            if s.role == "state":
                m.position = home(s.source)
            else:
                m.position = [command_value(stamp)] * len(s.joints)
                commands.setdefault(s.source, []).append((stamp, command_value(stamp)))
            writer.write(topic, stamp + 2 * MS, serialize_message(m))
    for stamp in chunk_stamps:
        m = JointTrajectory()
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, S)
        writer.write("/ate/action_chunk", stamp + 30 * MS, serialize_message(m))
    writer.close({})
    return path, commands


def test_errors_per_horizon_step_and_boundary_jumps_are_exactly_the_expected(tmp_path):
    bag, commands = write_take(tmp_path / "episode_000000")
    policy = AlternatingPolicy()
    report = replay_evaluate(bag, policy, latency_ms=100.0)
    assert report.chunks == len(policy.calls) >= 6
    stamps = [c[0] for c in policy.calls]
    # Attempts every n_action_steps points (0.4 s), the first one period after the first message.
    assert stamps[0] == BASE + 2 * MS + 400 * MS
    assert np.all(np.diff(stamps) == 400 * MS)
    assert all(task == "pour" for _, task, _ in policy.calls)
    # The policy saw the recorded state (home), in its joint order.
    np.testing.assert_allclose(policy.calls[0][2][0], home("left") + home("right"))

    cmd = np.array(commands["left"])
    sq = np.zeros(8)
    n = np.zeros(8)
    for c, stamp in enumerate(stamps):
        value = 0.1 + (c % 2)
        for i in range(8):
            due = stamp + i * 100 * MS
            if due > cmd[-1, 0]:
                continue
            recorded = cmd[cmd[:, 0] <= due][-1, 1]
            sq[i] += (value - recorded) ** 2
            n[i] += 1
    np.testing.assert_allclose(report.mse[:, 0], sq / n, rtol=1e-12)
    np.testing.assert_allclose(report.mse[:, 9], sq / n, rtol=1e-12)  # right arm, same values
    np.testing.assert_array_equal(report.points, n)
    assert report.boundary_jumps == pytest.approx([1.0] * (len(stamps) - 1))
    # A 1-rad step every chunk, every joint alike (the arms into each other and out of their
    # boxes): the safety filter steps in, as it would on the robot.
    assert sum(report.interventions.values()) > 0 and not report.faults
    assert len(report.inference_ms) == report.chunks

    paths = write_plots(report, tmp_path / "plots")
    assert [p.name for p in paths] == ["error_per_step.png", "boundary_jumps.png", "inference_ms.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    blob = json.loads(json.dumps(report.to_json()))
    assert blob["chunks"] == report.chunks and len(blob["per_step"]["mse"]) == 8


def test_attempts_follow_the_recorded_chunks_of_a_policy_run(tmp_path):
    recorded = [BASE + 500 * MS, BASE + 930 * MS, BASE + 1700 * MS]
    bag, _ = write_take(tmp_path / "episode_000001", chunk_stamps=recorded)
    policy = AlternatingPolicy()
    replay_evaluate(bag, policy)
    assert [c[0] for c in policy.calls] == recorded


def test_a_take_without_commands_needs_action_from_state(tmp_path):
    path = tmp_path / "episode_000002"
    streams = {t: s for t, s in recorded_streams(CFG).items() if s.role == "state"}
    writer = EpisodeBagWriter(path, {"contract": {"config": flatten(CFG),
                                                  "streams": streams_to_dict(streams)}})
    for topic, s in streams.items():
        writer.add_topic(topic, s.msgtype)
        for k in range(100):
            m = JointState(name=list(s.joints), position=home(s.source))
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(BASE + k * 10 * MS, S)
            writer.write(topic, BASE + k * 10 * MS, serialize_message(m))
    writer.close({})
    with pytest.raises(ReplayEvalError, match="no recorded commands"):
        replay_evaluate(path, AlternatingPolicy())
    report = replay_evaluate(path, AlternatingPolicy(), action_from="state")
    assert report.chunks >= 1 and np.isfinite(report.mse[0, 0])
