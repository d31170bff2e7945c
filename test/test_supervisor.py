"""The supervisor's state machine, tick by tick, on the shipped config (pure: time is an argument)."""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ate_core.config import load_config
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
                                             "disengage", "drop_left", "restore"]),
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
