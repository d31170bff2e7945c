"""The supervisor's teleop mode, tick by tick: the followers track the leaders through the same
ramp, safety filter and e-stop as the policy's chunks, and hold when a leader jumps or goes
silent (pure: time is an argument)."""

from __future__ import annotations

import numpy as np

from ate_core.runtime.supervisor import POLICY, TELEOP, Mode
from test_supervisor import CFG, HOME, TICK, Rig, commanded, small_offset

LEADER = CFG.supervisor.leader


class TeleopRig(Rig):
    """The supervisor's rig with a leader pair reporting at every tick (``leader`` is where)."""

    def __init__(self, **supervisor) -> None:
        self.leader = HOME.copy()
        self.leader_alive = {"left": True, "right": True}
        super().__init__(cameras=("head",), **supervisor)
        self.camera_alive = False  # teleop does not watch the cameras

    def inputs(self) -> None:
        super().inputs()
        for arm in self.sup.arms:
            if getattr(self, "leader_alive", {}).get(arm):
                self.sup.on_leader(arm, self.leader[self.sup.arm_slice(arm)], self.now)


def caps():
    sup = TeleopRig().sup
    return sup.safety.max_velocity * sup.period_s


def test_followers_ramp_to_the_leaders_and_then_track_them() -> None:
    rig = TeleopRig(ramp_s=0.5)
    rig.leader = HOME + small_offset(0.15)  # the leaders stand away from the followers
    rig.step()
    answer = rig.sup.engage(rig.now, TELEOP)
    assert answer.success, answer.message
    rig.step(100)  # 1 s: the ramp is over
    np.testing.assert_allclose(rig.measured, rig.leader, atol=1e-6)
    steps = np.diff(commanded(rig.outputs), axis=0)
    assert np.all(np.abs(steps) <= caps() + 1e-12)
    for k in range(50):  # a leader moving smoothly (0.2 rad/s) is followed closely
        rig.leader = rig.leader + small_offset(0.002)
        rig.step()
        # The lag that lets the follower stop where the leader stops: v dt + v^2 / 2a.
        assert np.max(np.abs(rig.measured - rig.leader)) < 0.005
    assert not any(o.holding for o in rig.outputs[-50:])
    rig.step(30)
    np.testing.assert_allclose(rig.measured, rig.leader, atol=1e-9)


def test_teleop_does_not_engage_without_every_leader() -> None:
    rig = TeleopRig()
    rig.leader_alive["right"] = False
    rig.step(int(LEADER.timeout_s * 1e9 / TICK) + 2)
    answer = rig.sup.engage(rig.now, TELEOP)
    assert not answer.success and "stale_leader (right: silent for" in answer.message
    assert rig.sup.mode is Mode.IDLE
    assert rig.sup.engage(rig.now, POLICY).success  # the policy does not need leaders


def test_a_leader_jump_below_the_jump_limit_is_limited_by_the_caps() -> None:
    rig = TeleopRig(ramp_s=0.2)
    rig.step()
    assert rig.sup.engage(rig.now, TELEOP).success
    rig.step(30)
    rig.outputs.clear()
    jump = small_offset(0.9 * LEADER.max_jump_rad)
    rig.leader = rig.leader + jump
    rig.step(150)
    np.testing.assert_allclose(rig.measured, rig.leader, atol=1e-6)
    path = commanded(rig.outputs)
    steps = np.diff(path, axis=0)
    assert np.all(np.abs(steps) <= caps() + 1e-12)
    acc = rig.sup.safety.max_acceleration * rig.sup.period_s ** 2
    assert np.all(np.abs(np.diff(steps, axis=0)) <= acc + 1e-12)
    moved = [0, 3, 8, 11]  # towards the leader all the way: no overshoot
    assert np.all(steps[:, moved] >= 0.0) and np.all(path[:, moved] <= rig.leader[moved] + 1e-12)
    assert len(path) > 25  # spread over many ticks, not taken in one


def test_a_leader_jump_makes_the_followers_hold_then_ramp_to_the_leader() -> None:
    rig = TeleopRig(ramp_s=0.3)
    rig.step()
    assert rig.sup.engage(rig.now, TELEOP).success
    rig.step(40)
    before = rig.measured.copy()
    rig.leader = rig.leader + small_offset(2.0 * LEADER.max_jump_rad)
    out = rig.step()
    assert out.holding and any(f.rule == "leader_jump" for f in out.faults)
    hold_ticks = int(round(LEADER.jump_hold_s * 1e9 / TICK))
    rig.step(hold_ticks - 2)
    assert all(o.holding for o in rig.outputs[-hold_ticks + 1:])
    np.testing.assert_allclose(rig.measured, before, atol=1e-12)  # held from at rest
    assert rig.sup.counts[("leader_jump", "left")] == 1
    rig.step(3)
    assert not rig.outputs[-1].holding
    rig.outputs.clear()
    rig.step(150)  # the ramp to the leader's new place
    np.testing.assert_allclose(rig.measured, rig.leader, atol=1e-6)
    assert np.all(np.abs(np.diff(commanded(rig.outputs), axis=0)) <= caps() + 1e-12)


def test_a_silent_leader_makes_the_followers_hold() -> None:
    rig = TeleopRig(ramp_s=0.2)
    rig.step()
    assert rig.sup.engage(rig.now, TELEOP).success
    rig.step(30)
    rig.leader_alive["left"] = False
    silent_ticks = int(LEADER.timeout_s * 1e9 / TICK) + 2
    rig.leader = rig.leader + small_offset(0.05)  # the right leader still moves
    rig.step(silent_ticks)
    out = rig.outputs[-1]
    assert out.holding and [f.rule for f in out.faults] == ["stale_leader"]
    rig.step(30)  # braked to rest
    held = rig.measured.copy()
    rig.step(20)
    np.testing.assert_allclose(rig.measured, held, atol=1e-12)
    assert np.max(np.abs(held - rig.leader)) > 0.01  # the right leader moved on: not followed
    rig.leader_alive["left"] = True
    rig.step(150)
    np.testing.assert_allclose(rig.measured, rig.leader, atol=1e-6)


def test_an_estop_during_teleop_latches_and_a_leader_cannot_move_the_arms() -> None:
    rig = TeleopRig(ramp_s=0.2)
    rig.step()
    assert rig.sup.engage(rig.now, TELEOP).success
    rig.step(30)
    rig.sup.estop(rig.now)
    held = rig.measured.copy()
    for _ in range(20):
        rig.leader = rig.leader + small_offset(0.01)
        out = rig.step()
        assert out.mode is Mode.ESTOPPED
        np.testing.assert_array_equal(out.positions, held)
    assert not rig.sup.engage(rig.now, TELEOP).success
    assert rig.sup.rearm(rig.now).success
    assert rig.step().positions is None  # idle after re-arm: nothing until a new engage


def test_one_source_at_a_time() -> None:
    rig = TeleopRig()
    rig.step()
    assert rig.sup.engage(rig.now, TELEOP).success
    answer = rig.sup.engage(rig.now, POLICY)
    assert not answer.success and "disengage" in answer.message
    rig.chunk(small_offset(0.3))  # chunks arriving while teleoperating do not steer
    rig.step(50)
    np.testing.assert_allclose(rig.measured, rig.leader, atol=1e-6)


def test_malformed_leader_samples_are_counted_and_ignored() -> None:
    rig = TeleopRig()
    rig.step()
    sup = rig.sup
    sup.on_leader("left", [float("nan")] * 8, rig.now)
    sup.on_leader("left", [0.0] * 3, rig.now)
    assert sup.counts[("bad_leader", "left")] == 2
    np.testing.assert_array_equal(sup.leader(), rig.leader)
