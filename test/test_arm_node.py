"""The arm nodes end to end: real rclpy, RealMan's SDK, the controller emulator on loopback."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from ate_core.robot.models import push_period_s
from ate_ros.drivers.realman_arm import Link
from ate_ros.nodes.arm_node import ArmNode
from ate_ros.sim.realman_emulator import RealManEmulator
from conftest import free_port, next_loopback_ip, sdk_push_port

from arm_rig import SIDES, Rig, command_msg, emulated_arms, home_deg, measured, robot_config  # noqa: F401

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too


def test_both_arms_publish_joint_states_at_the_push_rate_for_10_s(ros):
    with emulated_arms(ros) as rig:
        for inbox in rig.states.values():
            inbox.clear()
        t0 = time.monotonic()
        time.sleep(10.0)
        elapsed = time.monotonic() - t0
        for side in SIDES:
            times = [t for t in rig.states[side].times if t <= t0 + elapsed]
            rate = len(times) / elapsed
            arm = getattr(rig.cfg.arms, side)
            nominal = 1.0 / push_period_s(arm.push_cycle)
            assert rate >= 0.9 * nominal, f"{side}: {rate:.1f} Hz of {nominal:.0f}"
            msg = rig.states[side].messages[-1]
            assert list(msg.name) == [*arm.joint_names, arm.gripper_joint]
            np.testing.assert_allclose(msg.position[:7], arm.home_rad, atol=1e-4)
            assert 0.0 <= msg.position[7] <= 0.070


def test_100hz_command_stream_is_tracked_and_every_tick_reaches_the_controller(ros):
    with emulated_arms(ros) as rig:
        pubs = {s: ros.publisher(JointState, f"/{s}_arm/command") for s in SIDES}
        for pub in pubs.values():
            ros.wait_for_subscribers(pub)
        start = {s: measured(rig, s) for s in SIDES}
        for emulator in rig.emulators.values():
            emulator.clear_commands()
        ticks = 200
        t_next = time.monotonic()
        targets = {}
        for k in range(ticks):
            phase = min(1.0, k / 150)  # a smooth 0.2 rad excursion on every joint, then hold
            offset = 0.2 * (1 - math.cos(math.pi * phase)) / 2
            for side in SIDES:
                arm = getattr(rig.cfg.arms, side)
                targets[side] = start[side] + offset * np.array([1, -1, 1, -1, 1, -1, 1])
                pubs[side].publish(command_msg(arm.joint_names, targets[side]))
            t_next += 0.01
            time.sleep(max(0.0, t_next - time.monotonic()))
        for side in SIDES:
            ros.wait_for(lambda s=side: len(rig.emulators[s].commands("movej_canfd")) >= ticks,
                         5.0, f"{side}: all {ticks} commands at the controller")
        time.sleep(0.3)  # settle
        for side in SIDES:
            error_deg = np.degrees(np.abs(measured(rig, side) - targets[side]))
            assert error_deg.max() < 0.1, f"{side}: {error_deg}"
            logged = rig.emulators[side].commands("movej_canfd")
            assert len(logged) == ticks  # one movej_canfd per tick, none lost, none extra
            last = np.array(logged[-1].payload["joint"]) / 1000.0
            # Rounded to the controller's 0.001 degree, not truncated by the SDK.
            np.testing.assert_array_equal(last, np.round(np.degrees(targets[side]), 3))


def _diagnostics_for(inbox, side: str) -> List[DiagnosticStatus]:
    return [s for m in inbox.messages for s in m.status if s.name.startswith(f"{side}_arm:")]


def test_malformed_commands_never_reach_the_controller(ros):
    with emulated_arms(ros, sides=("left",)) as rig:
        diagnostics = ros.subscribe(DiagnosticArray, "/diagnostics")
        pub = ros.publisher(JointState, "/left_arm/command")
        ros.wait_for_subscribers(pub)
        arm = rig.cfg.arms.left
        q = measured(rig, "left")
        rig.emulators["left"].clear_commands()
        over = q.copy()
        over[1] = 2.5  # J2 limit is 130 deg = 2.269 rad
        nan = q.copy()
        nan[3] = float("nan")
        jump = q.copy()
        jump[0] += 0.5  # 0.5 rad in one command: 16 x what J1 may move in 0.1 s
        bad = [
            command_msg(arm.joint_names, over),
            command_msg(arm.joint_names, nan),
            command_msg(arm.joint_names[:6], q[:6]),                       # wrong length
            command_msg(arm.joint_names, list(q) + [0.1]),                 # names != positions
            command_msg([*arm.joint_names[:6], "right_joint7"], q),        # wrong arm's joint
            command_msg([arm.joint_names[0]] * 7, q),                      # duplicate names
            command_msg(arm.joint_names, jump),
            command_msg([*arm.joint_names, arm.gripper_joint], [*q, 0.2]),  # gripper > 70 mm
            command_msg([*arm.joint_names, arm.gripper_joint], [*q, float("inf")]),
        ]
        for msg in bad:
            pub.publish(msg)
        ros.wait_for(lambda: any(
            sum(int(kv.value) for kv in s.values if kv.key.startswith("rejected.")) == len(bad)
            for s in _diagnostics_for(diagnostics, "left")), 5.0, "all rejections counted")
        time.sleep(0.1)
        assert rig.emulators["left"].commands("movej_canfd") == []
        assert rig.emulators["left"].commands("set_gripper_position") == []
        counts = {kv.key: int(kv.value) for kv in _diagnostics_for(diagnostics, "left")[-1].values
                  if kv.key.startswith("rejected.")}
        assert counts == {"rejected.limit": 2, "rejected.non_finite": 2, "rejected.length": 2,
                          "rejected.names": 2, "rejected.jump": 1}
        # And a well-formed command right after still goes through.
        pub.publish(command_msg(arm.joint_names, q))
        ros.wait_for(lambda: len(rig.emulators["left"].commands("movej_canfd")) == 1, 5.0,
                     "the good command at the controller")


def test_controller_errors_and_slow_stop_show_on_diagnostics_and_the_arm(ros):
    with emulated_arms(ros, sides=("left",)) as rig:
        diagnostics = ros.subscribe(DiagnosticArray, "/diagnostics")
        rig.emulators["left"].raise_error(0x1002)

        def reported():
            for status in _diagnostics_for(diagnostics, "left"):
                if status.level == DiagnosticStatus.ERROR and "0x1002 target angle over limit" \
                        in status.message:
                    return status
            return None

        status = ros.wait_for(reported, 5.0, "the controller error on /diagnostics")
        assert dict((kv.key, kv.value) for kv in status.values)["link"] == "ready"
        assert ros.call(Trigger, "/left_arm/slow_stop").success
        assert rig.emulators["left"].commands("set_arm_slow_stop")


def test_a_short_push_silence_stops_commands_and_resumes_without_a_reconnect(ros):
    with emulated_arms(ros, sides=("left",)) as rig:
        diagnostics = ros.subscribe(DiagnosticArray, "/diagnostics")
        pub = ros.publisher(JointState, "/left_arm/command")
        ros.wait_for_subscribers(pub)
        node, emulator = rig.nodes["left"], rig.emulators["left"]
        names, q = rig.cfg.arms.left.joint_names, measured(rig, "left")
        emulator.pause_push()
        ros.wait_for(lambda: node.driver.link is Link.STALE, 1.0, "the link stale")
        ros.wait_for(lambda: any(s.level == DiagnosticStatus.ERROR and "silent" in s.message
                                 for s in _diagnostics_for(diagnostics, "left")), 2.0,
                     "the silence on /diagnostics")
        emulator.clear_commands()
        rig.states["left"].clear()
        for _ in range(20):  # 0.2 s of commands into the silence: none may reach the arm
            pub.publish(command_msg(names, q))
            time.sleep(0.01)
        assert emulator.commands("movej_canfd") == []
        assert len(rig.states["left"]) == 0  # not commandable, so no joint states either
        emulator.resume_push()
        ros.wait_for(lambda: node.driver.link is Link.READY, 1.0, "the link ready again")
        assert node.driver.stats.reconnects == 0 and node.driver.stats.stale_periods >= 1
        pub.publish(command_msg(names, q))
        ros.wait_for(lambda: len(emulator.commands("movej_canfd")) == 1, 2.0,
                     "a command after the silence")


def test_a_silence_past_the_link_timeout_reconnects(ros):
    with emulated_arms(ros, sides=("left",)) as rig:
        node, emulator = rig.nodes["left"], rig.emulators["left"]
        emulator.pause_push()
        ros.wait_for(lambda: node.driver.link is Link.LOST, 3.0, "the link lost")
        assert "link timeout" in node.driver.stats.last_fault
        emulator.resume_push()
        ros.wait_for(lambda: node.driver.link is Link.READY and node.driver.stats.reconnects >= 1,
                     10.0, "reconnected")


def test_gripper_services_and_gripper_commands_work_end_to_end(ros):
    with emulated_arms(ros, sides=("left",)) as rig:
        def opening():
            return rig.states["left"].messages[-1].position[7]

        assert ros.call(Trigger, "/left_arm/gripper_close").success
        ros.wait_for(lambda: opening() < 0.001, 5.0, "gripper closed")
        assert ros.call(Trigger, "/left_arm/gripper_open").success
        ros.wait_for(lambda: opening() > 0.069, 5.0, "gripper open")
        arm = rig.cfg.arms.left
        pub = ros.publisher(JointState, "/left_arm/command")
        ros.wait_for_subscribers(pub)
        q = measured(rig, "left")
        pub.publish(command_msg([*arm.joint_names, arm.gripper_joint], [*q, 0.035]))
        ros.wait_for(lambda: abs(opening() - 0.035) < 0.0005, 5.0, "gripper at 35 mm")
        sent = rig.emulators["left"].commands("set_gripper_position")
        assert [c.payload["position"] for c in sent] == [500]


def test_a_stop_right_after_a_gripper_command_is_not_held_up_by_it(ros):
    """The SDK runs one request at a time for all arms of a process; a gripper command must
    take no longer than the controller's acknowledgement, or a stop waits behind it."""
    with emulated_arms(ros, sides=("left",)) as rig:
        arm, emulator = rig.cfg.arms.left, rig.emulators["left"]
        pub = ros.publisher(JointState, "/left_arm/command")
        ros.wait_for_subscribers(pub)
        q = measured(rig, "left")
        for i, opening in enumerate((0.030, 0.050, 0.020)):
            pub.publish(command_msg([*arm.joint_names, arm.gripper_joint], [*q, opening]))
            ros.wait_for(lambda: len(emulator.commands("set_gripper_position")) == i + 1, 2.0,
                         "the gripper command at the controller")
            assert ros.call(Trigger, "/left_arm/stop").success
            sent = emulator.commands("set_gripper_position")[-1].mono_s
            stopped = emulator.commands("set_arm_stop")[-1].mono_s
            assert stopped - sent < 0.2, f"the stop came {1000 * (stopped - sent):.0f} ms later"


def test_home_moves_to_the_configured_pose_and_stop_halts_it(ros):
    with emulated_arms(ros, sides=("left",)) as rig:
        results = ros.subscribe(Bool, "/left_arm/home_result")
        home = np.array(rig.cfg.arms.left.home_rad)
        # Stand far from home first: a planned move the arm takes seconds to finish.
        rig.emulators["left"].stop()
        emulator = RealManEmulator(ip=rig.cfg.arms.left.ip, tcp_port=rig.cfg.arms.left.tcp_port,
                                   push_port=rig.cfg.arms.left.udp_port,
                                   initial_joints_deg=[60, -40, 30, -60, 30, -40, 60]).start()
        rig.emulators["left"] = emulator
        node = rig.nodes["left"]
        # The TCP link to the old controller is dead; the next SDK call finds out and the
        # driver reconnects (a push timeout may not fire: the new controller pushes at once).
        ros.wait_for(lambda: node.driver.stats.reconnects >= 1 and node.driver.wait_ready(0),
                     10.0, "the node reconnected to the new controller")
        ros.wait_for(lambda: abs(measured(rig, "left")[0] - math.radians(60)) < 1e-3, 5.0,
                     "the new controller's state")

        answer = ros.call(Trigger, "/left_arm/home")
        assert answer.success, answer.message
        ros.wait_for(lambda: emulator.arm_status == "move_J", 2.0, "the arm moving home")
        time.sleep(0.3)
        assert ros.call(Trigger, "/left_arm/stop").success
        ros.wait_for(lambda: len(results) > 0, 5.0, "the home result")
        assert results.messages[-1].data is False  # interrupted by stop

        def at_rest() -> bool:  # the newest state here may lag the arm on a loaded machine
            before = measured(rig, "left")
            time.sleep(0.2)
            return bool(np.allclose(measured(rig, "left"), before, atol=1e-6))

        ros.wait_for(at_rest, 5.0, "the arm at rest after the stop")
        stopped = measured(rig, "left")
        assert np.abs(stopped - home).max() > 0.1  # halted on the way, not at home

        results.clear()
        assert ros.call(Trigger, "/left_arm/home").success
        ros.wait_for(lambda: len(results) > 0, 30.0, "the home result")
        assert results.messages[-1].data is True
        ros.wait_for(lambda: np.allclose(measured(rig, "left"), home, rtol=0,
                                         atol=math.radians(0.002)), 2.0, "the arm at home")


def _emulator_process(ip: str, tcp: int, udp: int, joints_deg, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ate_ros.sim.realman_emulator", "--ip", ip, "--port", str(tcp),
         "--push-port", str(udp), "--log", str(log), "--initial-joints-deg",
         *(str(q) for q in joints_deg)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert "listening" in proc.stdout.readline()
    return proc


def _logged(log: Path, name: str) -> list:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()
            if json.loads(line).get("name") == name]


def test_killed_controller_is_reported_within_100ms_and_the_node_reconnects(ros, tmp_path):
    ip, tcp, udp = next_loopback_ip(), free_port(), sdk_push_port(1)
    cfg = robot_config({"left": (ip, tcp, udp)})
    first_log, second_log = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    proc = _emulator_process(ip, tcp, udp, home_deg(cfg, "left"), first_log)
    try:
        states = ros.subscribe(JointState, "/left_arm/joint_states")
        diagnostics = ros.subscribe(DiagnosticArray, "/diagnostics")
        node = ros.start(ArmNode, "left", config=cfg)
        ros.wait_for(lambda: node.driver.wait_ready(0) and len(states) > 0, 10.0, "arm ready")
        pub = ros.publisher(JointState, "/left_arm/command")
        ros.wait_for_subscribers(pub)
        names = cfg.arms.left.joint_names
        q = np.array(states.messages[-1].position[:7])

        def stream(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pub.publish(command_msg(names, q))
                time.sleep(0.01)

        stream(0.5)
        assert len(_logged(first_log, "movej_canfd")) > 0
        diagnostics.clear()
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.wait()
        ros.wait_for(lambda: any(s.level == DiagnosticStatus.ERROR
                                 for s in _diagnostics_for(diagnostics, "left")), 2.0,
                     "the fault on /diagnostics")
        reported = next(t for t, m in zip(diagnostics.times, diagnostics.messages)
                        if any(s.level == DiagnosticStatus.ERROR and s.name.startswith("left_arm:")
                               for s in m.status))
        print(f"controller loss reported after {1000 * (reported - killed):.0f} ms")
        assert reported - killed < 0.100, f"reported after {1000 * (reported - killed):.0f} ms"
        sent = node.driver.stats.commands_sent
        stream(0.5)  # the stream goes on; the node must not command a lost controller
        assert node.driver.stats.commands_sent == sent

        # A new controller, with the arm somewhere else: the node must publish that, fresh.
        moved = [10.0, 20.0, 0.0, 30.0, 0.0, 20.0, 0.0]
        states.clear()
        proc = _emulator_process(ip, tcp, udp, moved, second_log)
        ros.wait_for(lambda: node.driver.wait_ready(0), 10.0, "reconnected")
        ros.wait_for(lambda: len(states) > 0, 5.0, "joint states again")
        np.testing.assert_allclose(states.messages[-1].position[:7], np.radians(moved), atol=1e-4)
        assert node.driver.stats.reconnects >= 1
        # The old stream target is 10+ degrees away from the fresh state: it is not forwarded.
        stream(0.3)
        assert _logged(second_log, "movej_canfd") == []
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
