"""The supervisor's state machine, tick by tick, on the shipped config (pure: time is an argument)."""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ate_core.robot.config import load_config
from ate_core.robot.from_config import layout_from_config
from ate_core.runtime.chunk import make_chunk
from ate_core.runtime.supervisor import Mode, Supervisor, TickOutput
from conftest import REPO

CFG = load_config(REPO / "config/bimanual.yaml")
LAYOUT = layout_from_config(CFG)
MS = 1_000_000
TICK = 10 * MS
HOME = np.array([*CFG.arms.left.home_rad, 0.05, *CFG.arms.right.home_rad, 0.05])


class Rig:
    """A supervisor with arms that track every command exactly and report at every tick."""

    def __init__(self, cameras=("head",), **supervisor) -> None:
        sup_cfg = dataclasses.replace(CFG.supervisor, **supervisor) if supervisor else CFG.supervisor
        self.sup = Supervisor(LAYOUT, sup_cfg, CFG.gripper.max_opening_m, cameras=cameras)
        self.cameras = cameras
        self.now = 1_000_000 * MS
        self.measured = HOME.copy()
        self.report = {arm: True for arm in self.sup.arms}
        self.camera_alive = True
        self.outputs: List[TickOutput] = []
        self.inputs()

    def inputs(self) -> None:
        for arm in self.sup.arms:
            if self.report[arm]:
                self.sup.on_joint_state(arm, self.measured[self.sup.arm_slice(arm)], self.now)
        if self.camera_alive:
            for cam in self.cameras:
                self.sup.on_camera(cam, self.now)

    def step(self, n: int = 1) -> TickOutput:
        for _ in range(n):
            self.now += TICK
            self.inputs()
            out = self.sup.tick(self.now)
            if out.positions is not None:
                self.measured = out.positions.copy()  # perfect tracking
            self.outputs.append(out)
        return out

    def chunk(self, offset: np.ndarray, points: int = 30, dt_ms: int = 33,
              stamp_ns: Optional[int] = None) -> None:
        """A chunk from the current pose to pose + offset, stamped now (or at stamp_ns)."""
        stamp = self.now if stamp_ns is None else stamp_ns
        alpha = np.linspace(0.0, 1.0, points)[:, None]
        positions = self.measured[None, :] + alpha * offset[None, :]
        chunk = make_chunk(self.sup.joint_names, stamp, np.arange(points) * dt_ms * MS, positions,
                           self.sup.joint_names)
        assert self.sup.on_chunk(chunk, self.now) is None


def commanded(outputs: List[TickOutput]) -> np.ndarray:
    return np.array([o.positions for o in outputs if o.positions is not None])


def small_offset(scale: float = 0.1) -> np.ndarray:
    offset = np.zeros(16)
    offset[[0, 3, 8, 11]] = scale
    return offset


def test_engage_is_refused_before_every_arm_has_reported() -> None:
    rig = Rig()
    rig.report["right"] = False
    rig.sup = Supervisor(LAYOUT, CFG.supervisor, CFG.gripper.max_opening_m)
    rig.inputs()
    answer = rig.sup.engage(rig.now)
    assert not answer.success and "right" in answer.message or "no joint state" in answer.message
    assert rig.step().positions is None


def test_idle_commands_nothing() -> None:
    rig = Rig()
    rig.chunk(small_offset())
    assert all(rig.step().positions is None for _ in range(10))


def test_engage_ramps_from_the_measured_state_to_the_chunk() -> None:
    rig = Rig()
    assert rig.sup.engage(rig.now).success
    target = HOME + small_offset(0.2)
    rig.chunk(small_offset(0.2), points=2, dt_ms=10)  # reaches the target at once, then holds
    first = rig.step()
    cap = rig.sup.safety.max_velocity * rig.sup.period_s
    assert np.all(np.abs(first.positions - HOME) <= cap + 1e-12)
    rig.step(int(CFG.supervisor.ramp_s * 100) + 50)
    np.testing.assert_allclose(rig.measured, target, atol=1e-6)
    path = commanded(rig.outputs)
    steps = np.abs(np.diff(np.vstack([HOME, path]), axis=0))
    assert np.all(steps <= cap + 1e-12)


def test_estop_latches_through_new_chunks_until_rearm() -> None:
    rig = Rig()
    rig.sup.engage(rig.now)
    rig.chunk(small_offset(0.3), points=60)
    rig.step(50)
    at_estop = rig.sup.measured()  # the last state the arms reported, not the last command
    assert not np.array_equal(at_estop, rig.measured)
    assert rig.sup.estop(rig.now).success
    out = rig.step()
    assert out.mode is Mode.ESTOPPED
    np.testing.assert_array_equal(out.positions, at_estop)
    for _ in range(5):  # chunks keep coming: nothing moves
        rig.chunk(small_offset(-0.3))
        rig.step(20)
        np.testing.assert_array_equal(rig.outputs[-1].positions, at_estop)
    assert not rig.sup.engage(rig.now).success  # engage cannot release it
    assert rig.sup.rearm(rig.now).success
    assert rig.step(10).positions is None  # re-armed: idle until engaged


def test_estop_asks_every_controller_to_stop_once() -> None:
    rig = Rig()
    rig.sup.estop(rig.now)
    stops = [o.stop_arms for o in (rig.step() for _ in range(5))]
    assert stops[0] == ("left", "right") and all(s == () for s in stops[1:])


def test_reengage_after_rearm_starts_from_the_measured_state_without_a_jump() -> None:
    rig = Rig()
    rig.sup.engage(rig.now)
    rig.chunk(small_offset(0.3), points=60)
    rig.step(60)
    rig.sup.estop(rig.now)
    rig.step(3)
    rig.measured = rig.measured + 0.01  # the arm settled a little away from the hold
    rig.sup.rearm(rig.now)
    rig.step(3)
    start = rig.measured.copy()
    rig.sup.engage(rig.now)
    rig.chunk(small_offset(-0.2), points=60)
    first = rig.step()
    cap = rig.sup.safety.max_velocity * rig.sup.period_s
    assert np.all(np.abs(first.positions - start) <= cap + 1e-12)
    # The smoothstep ramp starts at rest: the first step is tiny, not a cap-sized jump.
    assert np.abs(first.positions - start).max() < 0.25 * cap.max()


def test_stale_chunk_holds_and_decelerates_to_rest() -> None:
    rig = Rig(ramp_s=0.0)
    rig.sup.engage(rig.now)
    rig.chunk(small_offset(1.0), points=100, dt_ms=33)  # a long, fast motion
    rig.step(30)
    assert not rig.outputs[-1].holding
    timeout_ticks = int(CFG.supervisor.watchdog.chunk_timeout_s * 100)
    rig.step(timeout_ticks)  # no chunk since
    out = rig.step(100)
    assert out.holding and any(f.rule == "stale_chunk" for f in out.faults)
    assert np.all(out.velocities == 0.0)
    assert rig.sup.counts[("stale_chunk", "policy")] == 1


def test_stale_joint_state_holds_and_resumes_when_it_returns() -> None:
    rig = Rig()
    rig.sup.engage(rig.now)
    rig.chunk(small_offset(0.5), points=100)
    rig.step(20)
    rig.report["left"] = False
    rig.step(10)
    out = rig.step()
    assert out.holding and [f.rule for f in out.faults] == ["stale_joint_state"]
    assert out.faults[0].source == "left"
    rig.report["left"] = True
    rig.chunk(small_offset(0.5), points=100)
    rig.step(5)
    assert not rig.outputs[-1].holding


def test_stale_camera_holds() -> None:
    rig = Rig()
    rig.sup.engage(rig.now)
    rig.chunk(small_offset(0.5), points=100)
    rig.step(10)
    rig.camera_alive = False
    rig.step(int(CFG.supervisor.watchdog.camera_timeout_s * 100) + 2)
    out = rig.outputs[-1]
    assert out.holding and any(f.rule == "stale_camera" and f.source == "head" for f in out.faults)


def test_lost_controller_stops_both_arms_and_disengages() -> None:
    rig = Rig()
    rig.sup.engage(rig.now)
    rig.chunk(small_offset(0.5), points=100)
    rig.step(10)
    rig.report["right"] = False
    rig.step(int(CFG.supervisor.watchdog.controller_timeout_s * 100) + 2)
    stops = [o.stop_arms for o in rig.outputs if o.stop_arms]
    assert stops == [("left", "right")]
    assert rig.outputs[-1].mode is Mode.IDLE and rig.outputs[-1].positions is None
    assert "controller lost (right)" in rig.sup.reason


def test_an_arm_that_something_else_has_cannot_be_engaged() -> None:
    rig = Rig()
    rig.sup.on_arm_busy("left", "drag teaching")
    answer = rig.sup.engage(rig.now)
    assert not answer.success and "the left arm is drag teaching" in answer.message
    assert rig.step().positions is None and rig.sup.mode is Mode.IDLE
    rig.sup.on_arm_busy("left", "")
    assert rig.sup.engage(rig.now).success
    assert rig.step().positions is not None


def test_an_arm_taken_over_while_engaged_drops_to_idle_and_only_the_others_are_stopped() -> None:
    rig = Rig()
    rig.sup.engage(rig.now)
    rig.chunk(small_offset(0.5), points=100)
    rig.step(10)
    rig.sup.on_arm_busy("right", "drag teaching")
    out = rig.step()
    assert out.mode is Mode.IDLE and out.positions is None
    assert out.stop_arms == ("left",)  # a stop would end the hand's drag teaching on the right
    assert "taken over (right: drag teaching)" in rig.sup.reason
    assert rig.sup.counts[("taken_over", "right")] == 1
    assert all(rig.step().positions is None for _ in range(5))
    with pytest.raises(ValueError, match="middle"):
        rig.sup.on_arm_busy("middle", "x")


def test_disengage_decelerates_to_rest_then_stops_commanding() -> None:
    rig = Rig(ramp_s=0.0)
    rig.sup.engage(rig.now)
    rig.chunk(small_offset(1.0), points=100)
    rig.step(20)
    moving = rig.outputs[-1].velocities
    assert np.abs(moving).max() > 0.1
    rig.sup.disengage(rig.now)
    rig.step(200)
    assert rig.outputs[-1].mode is Mode.IDLE and rig.outputs[-1].positions is None
    velocities = np.array([o.velocities for o in rig.outputs if o.velocities is not None])
    accel = np.abs(np.diff(velocities, axis=0)) / rig.sup.period_s
    assert np.all(accel <= rig.sup.safety.max_acceleration + 1e-6)


def test_a_chunk_with_a_bad_stamp_order_is_counted_and_ignored() -> None:
    rig = Rig()
    rig.chunk(small_offset(0.1))
    old = make_chunk(rig.sup.joint_names, rig.now - 5 * TICK, [0, 33 * MS], [HOME, HOME],
                     rig.sup.joint_names)
    assert rig.sup.on_chunk(old, rig.now) is not None
    assert rig.sup.counts[("chunk_order", "policy")] == 1


EVENTS = st.lists(st.tuples(st.sampled_from(["chunk", "tick", "estop", "rearm", "engage",
                                             "disengage", "drop_left", "restore", "take_right",
                                             "free_right"]),
                            st.floats(-3.0, 3.0), st.integers(1, 40)),
                  min_size=5, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS)
def test_commands_never_jump_nor_leave_the_limits_whatever_happens(events) -> None:
    rig = Rig()
    sf = rig.sup.safety
    cap = sf.max_velocity * rig.sup.period_s
    previous = None
    for kind, value, n in events:
        if kind == "chunk":
            offset = np.full(16, value)
            rig.chunk(offset, points=n + 1)
        elif kind == "estop":
            rig.sup.estop(rig.now)
        elif kind == "rearm":
            rig.sup.rearm(rig.now)
        elif kind == "engage":
            rig.sup.engage(rig.now)
        elif kind == "disengage":
            rig.sup.disengage(rig.now)
        elif kind == "drop_left":
            rig.report["left"] = False
        elif kind == "restore":
            rig.report["left"] = True
        elif kind == "take_right":
            rig.sup.on_arm_busy("right", "moving to a pose")
        elif kind == "free_right":
            rig.sup.on_arm_busy("right", "")
        for _ in range(n if kind == "tick" else 1):
            out = rig.step()
            if out.positions is None:
                previous = None
                continue
            assert np.isfinite(out.positions).all()
            if out.mode is not Mode.ESTOPPED:
                assert np.all(out.positions >= sf.lower - 1e-9) and np.all(out.positions <= sf.upper + 1e-9)
                if previous is not None:
                    assert np.all(np.abs(out.positions - previous) <= cap + 1e-9)
            previous = out.positions


def test_a_far_future_chunk_is_rejected_and_the_next_valid_chunk_is_accepted() -> None:
    rig = Rig()
    assert rig.sup.engage(rig.now).success
    rig.chunk(small_offset(0.1))
    rig.step(5)
    ahead = make_chunk(rig.sup.joint_names, rig.now + 10_000 * MS, [0, 33 * MS],
                       [HOME, HOME], rig.sup.joint_names)
    reason = rig.sup.on_chunk(ahead, rig.now)
    assert reason is not None and reason.startswith("future")
    assert rig.sup.counts[("chunk_future", "policy")] == 1
    assert rig.sup.last_chunk_age_ns == -10_000 * MS  # the skew, for /diagnostics
    rig.step()
    rig.chunk(small_offset(0.2))  # asserts it is accepted
    # ... and after an e-stop and re-arm as well: the refused stamp never became the reference.
    rig.sup.estop(rig.now)
    rig.step(2)
    rig.sup.rearm(rig.now)
    rig.step()
    rig.chunk(small_offset(0.1))


class ArmsThatStopWhenUnheard(Rig):
    """Arms that follow each command exactly, except that an arm that is not reporting (its
    driver's link is stale) also receives no commands: it stands where it was, while the
    supervisor keeps deciding. Ticks come at the times the test gives."""

    def tick_at(self, now_ns: int) -> TickOutput:
        self.now = now_ns
        self.inputs()
        out = self.sup.tick(now_ns)
        if out.positions is not None:
            for arm in self.sup.arms:
                if self.report[arm]:
                    idx = self.sup.arm_slice(arm)
                    self.measured[idx] = out.positions[idx]
        self.outputs.append(out)
        return out


STAMPED_EVENTS = st.lists(
    st.tuples(st.sampled_from(["ticks", "late_tick", "chunk", "future_chunk", "estop", "rearm",
                               "engage", "disengage", "stale_left", "stale_right", "restore"]),
              st.floats(-1.5, 1.5), st.integers(1, 30)),
    min_size=5, max_size=30)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STAMPED_EVENTS, st.randoms(use_true_random=False))
def test_caps_hold_by_the_stamps_across_late_ticks_stale_periods_rearm_engage_and_disengage(
        events, rnd) -> None:
    """Between consecutive commands of a series, by their stamps: every step within the
    velocity cap (grippers included), every change of velocity within the acceleration cap
    (unless a workspace or clearance rule had to shorten the step, which may brake harder),
    velocities that are the steps divided by the stamps' difference, and strictly increasing
    stamps. A series starts at the measured state; the e-stop's hold is the one exception."""
    rig = ArmsThatStopWhenUnheard(ramp_s=0.3)
    sf = rig.sup.safety
    period_ns = int(rig.sup.period_s * 1e9)
    last: Optional[TickOutput] = None
    last_stamp = None
    rig.sup.engage(rig.now)  # start engaged on a long motion: the events interrupt it
    rig.chunk(small_offset(rnd.uniform(-2.0, 2.0)), points=60)
    for kind, value, n in events:
        if kind == "chunk":
            alpha = np.linspace(0.0, 1.0, n + 1)[:, None]
            positions = rig.measured + alpha * np.full(16, value) * rnd.random()
            stamp = rig.now - rnd.randrange(0, 200) * MS
            rig.sup.on_chunk(make_chunk(rig.sup.joint_names, stamp, np.arange(n + 1) * 33 * MS,
                                        positions, rig.sup.joint_names), rig.now)  # or late
        elif kind == "future_chunk":
            ahead = make_chunk(rig.sup.joint_names, rig.now + (1 + n) * 100 * MS, [0, 33 * MS],
                               [rig.measured, rig.measured], rig.sup.joint_names)
            assert rig.sup.on_chunk(ahead, rig.now).startswith("future")
        elif kind in ("estop", "rearm", "engage", "disengage"):
            getattr(rig.sup, kind)(rig.now)
        elif kind.startswith("stale_"):
            rig.report[kind[len("stale_"):]] = False
        elif kind == "restore":
            rig.report = {arm: True for arm in rig.sup.arms}
        for _ in range(n if kind in ("ticks", "late_tick") else 1):
            # On schedule, a little early or late, or (late_tick) up to 8 periods late; after a
            # late tick the next deadline comes sooner, so short gaps follow long ones.
            if kind == "late_tick":
                gap = period_ns + rnd.randrange(0, 8 * period_ns)
            else:
                gap = max(1000, period_ns + rnd.randrange(-period_ns + 1, period_ns // 2))
            measured_before = rig.measured.copy()
            out = rig.tick_at(rig.now + gap)
            if out.positions is None:
                last = None
                continue
            assert np.isfinite(out.positions).all()
            if last_stamp is not None:
                assert out.now_ns > last_stamp, "command stamps must strictly increase"
            last_stamp = out.now_ns
            if out.mode is Mode.ESTOPPED:
                last = out
                continue
            assert np.all(out.positions >= sf.lower - 1e-9) and np.all(out.positions <= sf.upper + 1e-9)
            if last is None or last.mode in (Mode.ESTOPPED, Mode.IDLE):
                # A new series: it starts at rest where the arm is measured, within one step;
                # right after a disengage came to rest, also within the caps of that command.
                step = np.abs(out.positions - measured_before)
                assert np.all(step <= sf.max_velocity * rig.sup.period_s + 1e-9), step
                if last is not None and last.mode is Mode.IDLE:
                    dt = (out.now_ns - last.now_ns) * 1e-9
                    assert np.all(np.abs(out.positions - last.positions)
                                  <= sf.max_velocity * dt + 1e-9)
            else:
                dt = (out.now_ns - last.now_ns) * 1e-9
                step = out.positions - last.positions
                assert np.all(np.abs(step) <= sf.max_velocity * dt + 1e-9), \
                    (dt, np.abs(step) / dt, sf.max_velocity)
                np.testing.assert_allclose(out.velocities, step / dt, rtol=1e-9, atol=1e-9)
                cartesian = any(i.rule in ("workspace", "arm_distance") for i in out.interventions)
                if not cartesian:
                    dv = np.abs(out.velocities - last.velocities)
                    assert np.all(dv <= sf.max_acceleration * dt * (1 + 1e-9) + 1e-9), \
                        (dt, dv / dt, sf.max_acceleration)
            last = out


def test_after_a_stale_period_the_commands_return_to_the_arm_without_a_jump() -> None:
    """The arm stops where its driver stopped forwarding; the supervisor kept deciding. When the
    state returns, the commands move back to the arm within the caps, then on along the chunk."""
    rig = ArmsThatStopWhenUnheard(ramp_s=0.0)
    rig.sup.engage(rig.now)
    rig.chunk(small_offset(1.0), points=100)
    for _ in range(40):
        rig.tick_at(rig.now + TICK)
    rig.report["left"] = False
    for _ in range(30):
        rig.tick_at(rig.now + TICK)
    left = rig.sup.arm_slice("left")
    gap = np.abs(rig.outputs[-1].positions[left] - rig.measured[left]).max()
    assert gap > 0.0  # the commands went on (decelerating) while the arm stood
    rig.report["left"] = True
    rig.chunk(small_offset(1.0), points=100)
    outs = [rig.tick_at(rig.now + TICK) for _ in range(100)]
    path = np.array([o.positions for o in [rig.outputs[-101], *outs]])
    cap = rig.sup.safety.max_velocity * rig.sup.period_s
    assert np.all(np.abs(np.diff(path, axis=0)) <= cap + 1e-9)
    assert not outs[-1].holding


def test_the_gripper_cap_holds_by_the_stamps_when_ticks_come_close_together() -> None:
    """A late tick and the early one after it: the gripper moves by its speed cap times the time
    between the two stamps, not a whole period's worth in a few milliseconds."""
    rig = ArmsThatStopWhenUnheard(ramp_s=0.0)
    rig.sup.engage(rig.now)
    offset = np.zeros(16)
    offset[[7, 15]] = -0.05  # both grippers close from 0.05 m to 0.0 m at once
    rig.chunk(offset, points=2, dt_ms=10)
    gaps_ms = [10, 16, 4, 10, 25, 1, 3, 10, 6, 14]
    outs = [rig.tick_at(rig.now + g * MS) for g in gaps_ms]
    cap = rig.sup.safety.max_velocity
    grippers = [7, 15]
    assert cap[7] == CFG.supervisor.safety.gripper_velocity_m_s
    for a, b in zip(outs, outs[1:]):
        dt = (b.now_ns - a.now_ns) * 1e-9
        speed = np.abs(b.positions[grippers] - a.positions[grippers]) / dt
        assert np.all(speed <= cap[grippers] * (1 + 1e-9)), (dt, speed)
    assert outs[-1].positions[7] < 0.05 - 0.005  # and it did move
