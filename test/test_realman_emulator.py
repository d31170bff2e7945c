"""RealMan's own SDK against the emulator on loopback: what the driver will rely on.

Every emulator gets its own loopback address (127.0.x.y), and all of them push to one UDP port
per test process: the SDK's realtime callback is one per process, and the SDK listens on at
most five distinct push ports per process and never releases one (the sixth gets
"udp add port ... result: -2" and no callbacks). The process-wide SDK access of the driver
(`ate_ros.drivers.realman_sdk`) files each packet under the arm IP it came from.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest

from Robotic_Arm.rm_robot_interface import (
    rm_frame_t,
    rm_realtime_push_config_t,
    rm_udp_custom_config_t,
)

from conftest import free_udp_port, next_loopback_ip, sdk_push_port
from ate_core.robot.models import RM65_B, RM75_B, arm_model
from ate_ros.drivers.realman_sdk import PushSample as SdkPush
from ate_ros.drivers.realman_sdk import SdkArm, sdk
from ate_ros.sim.realman_emulator import RealManEmulator

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too

REPO_ROOT = Path(__file__).resolve().parents[1]

# ---- SDK plumbing: the process-wide SDK access the driver uses (one rm_init, one callback) -----


def sdk_arm() -> SdkArm:
    return sdk().new_arm()


@dataclass
class PushSample:
    t: float
    err_code: int
    joints_deg: List[float]
    errors: List[int]
    status: int


_push_lock = threading.Lock()


def _sink_into(sink: List[PushSample]):
    def on_push(push: SdkPush) -> None:
        with _push_lock:
            sink.append(PushSample(time.monotonic(), push.parse_error,
                                   [math.degrees(q) for q in push.positions_rad],
                                   list(push.errors), push.status_code))
    return on_push


@dataclass
class Rig:
    emulator: RealManEmulator
    arm: SdkArm
    handle_id: int
    pushes: List[PushSample] = field(default_factory=list)

    def pushes_since(self, t: float) -> List[PushSample]:
        with _push_lock:
            return [p for p in self.pushes if p.t >= t]


@contextlib.contextmanager
def connected(model: str = "RM75-B", **kwargs) -> Iterator[Rig]:
    ip = next_loopback_ip()
    emulator = RealManEmulator(model=model, ip=ip, tcp_port=0, push_port=sdk_push_port(), **kwargs)
    sink: List[PushSample] = []
    sdk().subscribe(ip, arm_model(model).dof, _sink_into(sink))
    emulator.start()
    arm = None
    try:
        arm = sdk_arm()
        handle = arm.rm_create_robot_arm(ip, emulator.tcp_port)
        yield Rig(emulator, arm, handle.id, sink)
    finally:
        if arm is not None:
            arm.rm_delete_robot_arm()
        emulator.stop()
        sdk().unsubscribe(ip)


def wait_for(predicate, timeout: float = 2.0, period: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


def emulator_threads() -> List[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("realman-emu-")]


# ---- connect ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, sdk_model_name", [(RM75_B, "RM_75"), (RM65_B, "RM_65")],
                         ids=["RM75-B", "RM65-B"])
def test_sdk_connects_and_reads_the_model_from_the_controller(model, sdk_model_name):
    with connected(model.name) as rig:
        arm = rig.arm
        assert rig.handle_id >= 1
        assert arm.arm_dof == model.dof
        assert arm.robot_controller_version == 3
        assert arm.rm_get_robot_info()[1]["arm_model"] == sdk_model_name
        ret, lower = arm.rm_get_joint_min_pos()
        assert ret == 0
        np.testing.assert_allclose(lower, np.degrees(model.lower_rad), atol=1e-3)
        ret, upper = arm.rm_get_joint_max_pos()
        np.testing.assert_allclose(upper, np.degrees(model.upper_rad), atol=1e-3)
        ret, speed = arm.rm_get_joint_max_speed()
        np.testing.assert_allclose(speed, np.degrees(model.max_velocity_rad_s), rtol=1e-4)
        ret, acc = arm.rm_get_joint_max_acc()
        np.testing.assert_allclose(acc, np.degrees(model.max_acceleration_rad_s2), rtol=1e-4)
        ret, dh = arm.rm_get_DH_data()
        assert ret == 0
        n = model.dof
        np.testing.assert_allclose(dh["d"][:n], [j.d_m for j in model.mdh], atol=1e-6)
        np.testing.assert_allclose(dh["a"][:n], [j.a_m for j in model.mdh], atol=1e-6)
        np.testing.assert_allclose(dh["alpha"][:n], [math.degrees(j.alpha_rad) for j in model.mdh], atol=1e-3)
        np.testing.assert_allclose(dh["offset"][:n], [math.degrees(j.offset_rad) for j in model.mdh], atol=1e-3)
        ret, state = arm.rm_get_current_arm_state()
        assert ret == 0 and state["err"]["err"] == ["0"]
        assert state["pose"][2] == pytest.approx(0.8505, abs=1e-6)
        ret, info = arm.rm_get_arm_software_info()
        assert ret == 0 and info["product_version"] == model.name
        ret, power = arm.rm_get_arm_power_state()
        assert (ret, power) == (0, 1)
        assert arm.rm_get_arm_all_state()[0] == 0
        assert arm.rm_get_joint_degree() == (0, [0.0] * n)


def test_connect_sends_the_documented_sequence_and_the_log_records_it(tmp_path):
    log = tmp_path / "commands.jsonl"
    with connected(log_path=str(log)) as rig:
        names = [c.name for c in rig.emulator.commands()]
    assert names[:11] == [
        "get_arm_software_info", "get_arm_current_trajectory", "get_realtime_push",
        "get_current_work_frame", "get_current_tool_frame", "get_install_pose",
        "get_joint_min_pos", "get_joint_max_pos", "get_joint_max_acc", "get_joint_max_speed",
        "get_DH_data"]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry["name"] for entry in lines] == names
    assert all(entry["payload"]["command"] == entry["name"] for entry in lines)
    assert all(entry["mono_s"] > 0 and entry["wall_s"] > 1e9 and entry["handled"] for entry in lines)


@contextlib.contextmanager
def signal_storm(signum: int, period_s: float = 0.001) -> Iterator[None]:
    """A handler for ``signum`` (as torch's DataLoader installs for SIGCHLD) and another process
    sending it to this one every ``period_s``: any thread may be the one it lands on."""
    previous = signal.signal(signum, lambda *_: None)
    sender = subprocess.Popen([sys.executable, "-c",
                               "import os, sys, time\n"
                               f"while True:\n    os.kill({os.getpid()}, {int(signum)}); time.sleep({period_s})"])
    try:
        time.sleep(0.2)
        yield
    finally:
        sender.kill()
        sender.wait()
        signal.signal(signum, previous)


def test_sdk_calls_survive_a_storm_of_signals():
    """An interrupted connect/recv is a failure to the SDK; its calls run with signals deferred."""
    with signal_storm(signal.SIGCHLD):
        for _ in range(30):
            with connected(initial_joints_deg=[1, 2, 3, 4, 5, 6, 7]) as rig:
                assert rig.handle_id >= 1
                for _ in range(20):
                    ret, joints = rig.arm.rm_get_joint_degree()
                    assert ret == 0 and joints == pytest.approx([1, 2, 3, 4, 5, 6, 7], abs=1e-3)
                t0 = time.monotonic()
                time.sleep(0.15)
                assert len(rig.pushes_since(t0)) >= 20


# ---- realtime push -----------------------------------------------------------------------------------
def test_realtime_push_reaches_the_sdk_at_200_hz_without_parse_errors():
    with connected(initial_joints_deg=[1, 2, 3, 4, 5, 6, 7]) as rig:
        time.sleep(0.1)
        t0 = time.monotonic()
        time.sleep(2.0)
        t1 = time.monotonic()
        samples = [p for p in rig.pushes_since(t0) if p.t <= t1]
    rate = len(samples) / (t1 - t0)
    assert rate >= 190, f"{rate:.1f} callbacks/s"
    assert all(p.err_code == 0 for p in samples)
    assert samples[-1].joints_deg == pytest.approx([1, 2, 3, 4, 5, 6, 7], abs=1e-3)
    assert samples[-1].errors == [] and samples[-1].status == 0  # err [0]: no active error; idle


def test_set_realtime_push_changes_cycle_and_enable_and_get_reports_them():
    with connected() as rig:
        port = rig.emulator.push_port
        config = rm_realtime_push_config_t(4, True, port, 0, "127.0.0.1", rm_udp_custom_config_t())
        assert rig.arm.rm_set_realtime_push(config) == 0
        ret, reported = rig.arm.rm_get_realtime_push()
        assert ret == 0 and (reported["cycle"], reported["port"], reported["enable"]) == (4, port, True)
        time.sleep(0.1)
        t0 = time.monotonic()
        time.sleep(1.0)
        rate = len(rig.pushes_since(t0)) / (time.monotonic() - t0)
        assert 40 <= rate <= 55  # 20 ms period
        config = rm_realtime_push_config_t(1, False, port, 0, "127.0.0.1", rm_udp_custom_config_t())
        assert rig.arm.rm_set_realtime_push(config) == 0
        assert rig.arm.rm_get_realtime_push()[1]["enable"] is False
        time.sleep(0.05)
        t1 = time.monotonic()
        time.sleep(0.2)
        assert rig.pushes_since(t1) == []


# ---- motion ----------------------------------------------------------------------------------------------
def test_100hz_canfd_stream_is_tracked_to_a_tenth_of_a_degree_and_logged_once_per_tick():
    amplitude = np.array([20.0, -15.0, 10.0, 25.0, -10.0, 15.0, 30.0])
    duration_s, hold_s, period_s = 1.5, 0.4, 0.01

    def trajectory(t: float) -> np.ndarray:
        s = min(max(t / duration_s, 0.0), 1.0)
        return amplitude * (1 - math.cos(math.pi * s)) / 2

    with connected() as rig:
        rig.emulator.clear_commands()
        ticks = int((duration_s + hold_s) / period_s)
        start = time.monotonic()
        sent = []
        worst_in_motion = 0.0
        for k in range(ticks):
            target = trajectory(k * period_s)
            sent.append(target)
            assert rig.arm.rm_movej_canfd(target.tolist(), False) == 0
            if 20 <= k < duration_s / period_s:
                lagged = trajectory((k - 3) * period_s)
                worst_in_motion = max(worst_in_motion,
                                      np.max(np.abs(np.array(rig.emulator.joints_deg()) - lagged)))
            delay = start + (k + 1) * period_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        time.sleep(0.05)
        settled = rig.pushes_since(time.monotonic() - 0.02)
        logged = rig.emulator.commands("movej_canfd")
    assert settled, "no push after the stream"
    assert np.max(np.abs(np.array(settled[-1].joints_deg) - amplitude)) < 0.1
    assert worst_in_motion < 1.0  # followed along the way, a period or two behind
    assert len(logged) == ticks
    np.testing.assert_allclose([c.payload["joint"] for c in logged],
                               np.trunc(np.array(sent) * 1000 + 1e-6), atol=1)


def test_out_of_limit_target_is_refused_reported_as_4098_and_the_arm_stays():
    with connected(initial_joints_deg=[5, 0, 0, 0, 0, 0, 0]) as rig:
        assert rig.arm.rm_movej_canfd([5, 131, 0, 0, 0, 0, 0], False) == 0  # J2 limit 130
        time.sleep(0.1)
        ret, state = rig.arm.rm_get_current_arm_state()
        assert ret == 0 and state["err"]["err"] == ["4098"]
        assert state["joint"] == pytest.approx([5, 0, 0, 0, 0, 0, 0], abs=1e-3)
        assert rig.pushes_since(time.monotonic() - 0.02)[-1].errors == [4098]
        # A blocking movej sees the latched error and the SDK gives up at once.
        assert rig.arm.rm_movej([0] * 7, 50, 0, 0, 1) == 1
        assert rig.arm.rm_clear_system_err() == 0
        assert rig.arm.rm_get_current_arm_state()[1]["err"]["err"] == ["0"]


def test_blocking_movej_returns_0_at_the_target_and_reports_movej_while_running():
    target = [30.0, -20.0, 15.0, 40.0, -10.0, 20.0, 45.0]
    with connected() as rig:
        t0 = time.monotonic()
        assert rig.arm.rm_movej(target, 80, 0, 0, 1) == 0
        elapsed = time.monotonic() - t0
        assert rig.arm.rm_get_current_arm_state()[1]["joint"] == pytest.approx(target, abs=1e-3)
        assert elapsed >= 45 / (0.8 * 225) * 0.9  # J7 paces this move
        # Non-blocking: the controller reports a joint-space plan until the move ends.
        assert rig.arm.rm_movej([0.0] * 7, 50, 0, 0, 0) == 0
        assert rig.arm.rm_get_arm_current_trajectory()["trajectory_type"] == 1
        assert wait_for(lambda: rig.emulator.arm_status == "idle", 3.0)
        assert rig.arm.rm_get_arm_current_trajectory()["trajectory_type"] == 0


def test_movej_refused_outside_limits_and_an_unreachable_pose_refused_quickly():
    with connected() as rig:
        assert rig.arm.rm_movej([0, 0, 0, 0, 0, 0, 361], 50, 0, 0, 0) == 1
        rig.arm.rm_clear_system_err()
        t0 = time.monotonic()
        assert rig.arm.rm_movej_p([1.5, 0, 0.3, 3.14, 0, 0], 20, 0, 0, 1) == 1
        assert rig.arm.rm_movel([1.5, 0, 0.3, 3.14, 0, 0], 20, 0, 0, 1) == 1
        assert time.monotonic() - t0 < 0.5
        assert rig.arm.rm_get_current_arm_state()[1]["err"]["err"] == ["0"]


def test_cartesian_moves_through_the_sdk_reach_their_poses_and_report_their_planning_type():
    with connected() as rig:
        arm = rig.arm
        assert arm.rm_movej([0, 20, 0, 70, 0, 90, 0], 50, 0, 0, 1) == 0
        assert arm.rm_movel([0.2, 0.0, 0.337, 3.142, 0, 3.142], 20, 0, 0, 0) == 0
        assert wait_for(lambda: arm.rm_get_arm_current_trajectory()["trajectory_type"] == 2, 1.0)
        assert wait_for(lambda: arm.rm_get_arm_current_trajectory()["trajectory_type"] == 0, 10.0)
        pose = arm.rm_get_current_arm_state()[1]["pose"]
        np.testing.assert_allclose(pose[:3], [0.2, 0.0, 0.337], atol=1e-5)
        # movec arrives pretty-printed over many lines; it is parsed, planned and run.
        assert arm.rm_movec([0.25, 0.05, 0.337, 3.142, 0, 3.142], [0.25, -0.05, 0.337, 3.142, 0, 3.142],
                            50, 0, 0, 0, 1) == 0
        np.testing.assert_allclose(arm.rm_get_current_arm_state()[1]["pose"][:3], [0.25, -0.05, 0.337],
                                   atol=1e-5)
        frame = rm_frame_t("probe", [0, 0, 0.1, 0, 0, 0], 0.5, 0, 0, 0.05)
        assert arm.rm_set_manual_tool_frame(frame) == 0
        assert arm.rm_change_tool_frame("probe") == 0
        assert arm.rm_get_current_tool_frame()[1]["name"] == "probe"
        np.testing.assert_allclose(arm.rm_get_current_arm_state()[1]["pose"][:3], [0.25, -0.05, 0.237],
                                   atol=1e-4)
        assert "movec" in [c.name for c in rig.emulator.commands()]


def test_gripper_position_pick_and_release_reach_their_openings():
    with connected() as rig:
        arm = rig.arm
        assert arm.rm_set_gripper_position(300, True, 5) == 0
        ret, g = arm.rm_get_gripper_state()
        assert ret == 0 and g["actpos"] == 300 and g["mode"] == 3
        assert arm.rm_set_gripper_pick(1000, 200, True, 5) == 0
        assert arm.rm_get_gripper_state()[1]["actpos"] == 1
        assert arm.rm_get_gripper_state()[1]["mode"] == 2
        assert arm.rm_set_gripper_release(1000, True, 5) == 0
        assert arm.rm_get_gripper_state()[1]["actpos"] == 1000
        assert arm.rm_get_gripper_state()[1]["mode"] == 1
        # Non-blocking: accepted at once, gets there later, no stale completion left behind.
        assert arm.rm_set_gripper_pick_on(500, 200, False, 1) == 0
        assert wait_for(lambda: rig.emulator.gripper_position() == 1, 2.0)
        assert arm.rm_set_gripper_position(1001, False, 1) == 1


def test_set_arm_stop_halts_motion_immediately():
    with connected() as rig:
        assert rig.arm.rm_movej([90, 0, 0, 0, 0, 0, 0], 100, 0, 0, 0) == 0
        time.sleep(0.25)
        assert rig.arm.rm_set_arm_stop() == 0
        halted = rig.emulator.joints_deg()
        assert 5 < halted[0] < 89
        time.sleep(0.2)
        assert rig.emulator.joints_deg() == halted
        assert rig.arm.rm_get_current_arm_state()[1]["joint"][0] == pytest.approx(halted[0], abs=1e-3)
        assert rig.pushes_since(time.monotonic() - 0.02)[-1].status == 9  # stop
        assert rig.arm.rm_get_arm_current_trajectory()["trajectory_type"] == 0


def test_set_arm_slow_stop_brings_the_arm_to_rest():
    with connected() as rig:
        assert rig.arm.rm_movej([90, 0, 0, 0, 0, 0, 0], 100, 0, 0, 0) == 0
        time.sleep(0.25)
        assert rig.arm.rm_set_arm_slow_stop() == 0
        at_call = rig.emulator.joints_deg()[0]
        assert wait_for(lambda: rig.emulator.arm_status == "idle", 1.0)
        rest = rig.emulator.joints_deg()[0]
        assert at_call < rest < 90  # braked over a distance, stopped short of the goal


# ---- fault injection ---------------------------------------------------------------------------------
def test_dropped_connection_makes_sdk_calls_fail():
    with connected() as rig:
        assert rig.emulator.drop_connections() == 1
        assert wait_for(lambda: rig.emulator.connection_count() == 0)
        assert rig.arm.rm_get_current_arm_state()[0] != 0
        assert rig.arm.rm_movej_canfd([0.0] * 7, False) == -1  # the SDK knows the socket is dead


def test_arms_of_dropped_controllers_are_deleted_without_silencing_the_other_arms():
    """The SDK's one reply thread exits when its ``select`` fails; closing a dropped
    controller's socket while that thread polls it used to end every reply in the process."""
    with connected() as rig:
        ip, push = next_loopback_ip(), free_udp_port()
        for i in range(40):
            dropped = RealManEmulator(ip=ip, tcp_port=0, push_port=push).start()
            arm = sdk_arm()
            assert arm.rm_create_robot_arm(ip, dropped.tcp_port).id != -1
            fd = arm.connection_fd
            assert fd is not None
            with socket.socket(fileno=os.dup(fd)) as sock:
                assert sock.getpeername() == (ip, dropped.tcp_port)
            dropped.stop()
            time.sleep(0.02)  # the reply thread now polls a socket at end-of-file
            arm.rm_delete_robot_arm()
            assert rig.arm.rm_get_joint_degree()[0] == 0, f"no replies after {i + 1} drops"


def test_paused_push_stops_callbacks_and_resume_restarts_them():
    with connected() as rig:
        assert wait_for(lambda: len(rig.pushes) > 10)
        rig.emulator.pause_push()
        time.sleep(0.05)
        t0 = time.monotonic()
        time.sleep(0.3)
        assert rig.pushes_since(t0) == []
        rig.emulator.resume_push()
        t1 = time.monotonic()
        assert wait_for(lambda: len(rig.pushes_since(t1)) >= 20, 1.0)


def test_push_delay_shows_as_a_gap_then_the_rate_returns():
    with connected() as rig:
        assert wait_for(lambda: len(rig.pushes) > 10)
        t0 = time.monotonic()
        rig.emulator.set_push_delay_ms(150)
        time.sleep(0.5)
        samples = rig.pushes_since(t0 - 0.05)
    gaps = np.diff([p.t for p in samples])
    assert 0.12 < gaps.max() < 0.2
    late = [p for p in samples if p.t > t0 + 0.3]
    assert len(late) >= 30


def test_injected_error_code_appears_in_err_until_cleared():
    with connected() as rig:
        rig.emulator.raise_error(0x5003)
        # Each query is checked for its return code too: a reply the SDK did not match (-2)
        # carries no err list, and that is not what this test is about.
        def reported() -> bool:
            rc, state = rig.arm.rm_get_current_arm_state()
            return rc == 0 and state["err"]["err"] == ["20483"]

        assert wait_for(reported)
        rc, state = rig.arm.rm_get_arm_all_state()
        assert (rc, state["err"]["err"]) == (0, ["20483"])
        assert wait_for(lambda: rig.pushes[-1].errors == [0x5003])
        assert rig.arm.rm_clear_system_err() == 0
        assert rig.emulator.errors == ()


def test_unresponsive_controller_times_out_then_recovers():
    with connected() as rig:
        rig.emulator.set_unresponsive(True)
        t0 = time.monotonic()
        assert rig.arm.rm_get_current_arm_state()[0] == -2
        assert 0.3 < time.monotonic() - t0 < 1.5
        assert rig.emulator.commands()[-1].handled is False
        rig.emulator.set_unresponsive(False)
        assert rig.arm.rm_get_current_arm_state()[0] == 0


def test_an_unresponsive_controller_delays_the_other_arms_calls_but_not_their_state():
    """The SDK runs one request/reply at a time per process, and a call left waiting inside it
    stalls every arm's state pushes; SdkArm queues such calls outside the SDK instead."""
    with connected() as slow, connected() as other:
        slow.emulator.set_unresponsive(True)
        timed_out = threading.Thread(target=slow.arm.rm_get_current_arm_state)
        t0 = time.monotonic()
        timed_out.start()
        time.sleep(0.05)
        assert other.arm.rm_set_arm_stop() == 0  # waits its turn...
        waited = time.monotonic() - t0
        timed_out.join()
        pushes = [p.t for p in other.pushes_since(t0)]
        assert waited > 0.3 and pushes[-1] > t0 + 0.3
        # ...while the other arm's state kept coming at the push rate.
        assert max(b - a for a, b in zip(pushes, pushes[1:])) < 0.05


# ---- lifecycle, command line ---------------------------------------------------------------------
def test_stop_joins_every_thread_and_frees_the_port():
    before = set(emulator_threads())
    emulator = RealManEmulator(ip="127.0.0.1", tcp_port=0, push_port=free_udp_port(),
                               control_port=0).start()
    clients = [socket.create_connection(("127.0.0.1", emulator.tcp_port)) for _ in range(2)]
    assert wait_for(lambda: emulator.connection_count() == 2)
    assert len(set(emulator_threads()) - before) == 5  # accept, tick, control, 2 connections
    emulator.stop()
    for c in clients:
        c.close()
    assert set(emulator_threads()) - before == set()
    with socket.socket() as s:  # no listener left on the port (TIME_WAIT is fine)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", emulator.tcp_port))
        s.listen(1)


def test_unknown_command_is_logged_and_answered_with_a_refusal():
    with RealManEmulator(ip="127.0.0.1", tcp_port=0, push_port=free_udp_port()) as emulator:
        with socket.create_connection(("127.0.0.1", emulator.tcp_port), timeout=2) as s:
            s.sendall(b'{"command":"set_teleport","where":"mars"}\r\n')
            reply = json.loads(s.recv(4096).decode())
        assert reply["command"] == "set_teleport" and reply["set_state"] is False
        assert emulator.commands("set_teleport")[0].payload["where"] == "mars"


def _start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ate_ros.sim.realman_emulator", *args], cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def _control(ip: str, port: int, line: str) -> dict:
    with socket.create_connection((ip, port), timeout=2) as s:
        s.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            data += s.recv(65536)
    return json.loads(data)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_command_line_emulator_is_controllable_and_exits_cleanly(tmp_path, sig):
    log = tmp_path / "log.jsonl"
    ip = next_loopback_ip()
    proc = _start_cli("--ip", ip, "--port", "0", "--push-port", str(free_udp_port()),
                      "--model", "RM65-B", "--control-port", "0", "--log", str(log),
                      "--initial-joints-deg", "1", "2", "3", "4", "5", "6")
    try:
        line = proc.stdout.readline()
        assert "listening" in line, proc.stderr.read()
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        assert fields["model"] == "RM65-B"
        control = int(fields["control_port"])
        assert _control(ip, control, "ping") == {"ok": True}
        assert _control(ip, control, "error 0x1002") == {"ok": True}
        state = _control(ip, control, "state")["state"]
        assert state["errors"] == [4098]
        assert state["joints_deg"] == pytest.approx([1, 2, 3, 4, 5, 6])
        assert _control(ip, control, "bogus")["ok"] is False
        # The teach pendant's drag button, and a hand on the arm.
        assert _control(ip, control, "drag off")["ok"] is False
        assert _control(ip, control, "drag on") == {"ok": True}
        assert _control(ip, control, "state")["state"]["status"] == "current_drag"
        assert _control(ip, control, "hand 1 2 3 4 5 7") == {"ok": True}
        assert _control(ip, control, "drag off") == {"ok": True}
        assert _control(ip, control, "hand 1 2 3 4 5 6")["ok"] is False
        with socket.create_connection((ip, int(fields["tcp_port"])), timeout=2) as s:
            s.sendall(b'{"command":"get_joint_degree"}\r\n')
            assert json.loads(s.recv(4096))["joint"] == [1000, 2000, 3000, 4000, 5000, 6000]
        assert _control(ip, control, "commands get_joint_degree")["commands"][0]["name"] == "get_joint_degree"
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert json.loads(log.read_text().splitlines()[0])["name"] == "get_joint_degree"


def test_command_line_rejects_a_wrong_joint_count():
    proc = _start_cli("--port", "0", "--model", "RM75-B", "--initial-joints-deg", "1", "2")
    try:
        assert proc.wait(timeout=10) == 2
        assert "need 7 values" in proc.stderr.read()
    finally:
        proc.stdout.close()
        proc.stderr.close()


def test_model_lookup_is_by_realman_product_name():
    assert arm_model("RM65-B").dof == 6
    with pytest.raises(KeyError):
        RealManEmulator(model="RM99")
