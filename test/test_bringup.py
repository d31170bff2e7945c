"""The main job (`./run.sh` -> ate_bringup) brings the simulated robot up as one process per node,
supervises it, and reports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from conftest import REPO, free_port, free_udp_port, next_domain_id, next_loopback_ip

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too

#: Every process of the simulated stack: two emulators, two arm drivers, the aggregator, three
#: cameras and the supervisor.
PROCESSES = 9
#: Start-up of nine Python processes on two shared cores, plus the run and the stop.
DEADLINE_S = 150.0


def _config_on_free_endpoints(tmp_path: Path) -> Path:
    """The shipped config with the emulators moved to addresses and ports of their own (other
    tests of the session run emulators too)."""
    data = yaml.safe_load((REPO / "config/bimanual.yaml").read_text())
    for side in ("left", "right"):
        data["sim"]["arms"][side].update(ip=next_loopback_ip(), tcp_port=free_port(),
                                         udp_port=free_udp_port())
    path = tmp_path / "bimanual.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env(tag: str = "") -> dict:
    # The tag marks every process the bringup starts (they inherit the environment), so the
    # test can find them, and any left behind, in /proc.
    return {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ATE_TEST_TAG": tag}


def _tagged(tag: str) -> Dict[int, List[str]]:
    """Running processes whose environment carries the tag: pid -> command line."""
    mark = f"ATE_TEST_TAG={tag}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().decode().split("\0")[:-1]
        except OSError:
            continue  # gone meanwhile, or not ours
    return found


def _wait_until_gone(tag: str, timeout_s: float = 30.0) -> Dict[int, List[str]]:
    deadline = time.monotonic() + timeout_s
    while (left := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


class Bringup:
    """``ate_bringup`` as a subprocess, its output collected line by line."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.tag = uuid.uuid4().hex
        self.log_dir = tmp_path / "logs"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ate_ros.bringup", "--config", str(_config_on_free_endpoints(tmp_path)),
             "--domain-id", str(next_domain_id()), "--log-dir", str(self.log_dir), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(self.tag))
        self.lines: List[str] = []
        self._reader = threading.Thread(target=self._read, name="bringup-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = DEADLINE_S) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            assert self.proc.poll() is None or self._reader.is_alive(), \
                f"ate_bringup exited with {self.proc.returncode}:\n{self.output}"
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s:\n{self.output}")

    def children(self) -> Dict[int, List[str]]:
        """The bringup's own child processes (pid -> command line), found from outside."""
        out = {}
        for pid, cmd in _tagged(self.tag).items():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                out[pid] = cmd
        return out

    def wait(self, timeout_s: float = DEADLINE_S) -> int:
        code = self.proc.wait(timeout_s)
        self._reader.join(10)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(10)
        for pid in _tagged(self.tag):  # only when the bringup failed to stop them
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _arm_driver(children: Dict[int, List[str]], side: str) -> int:
    return next(pid for pid, cmd in children.items() if f"__ns:=/{side}_arm" in cmd)


def _check_report(out: str) -> None:
    for side in ("left", "right"):
        line = next(l for l in out.splitlines() if l.strip().startswith(f"controller {side}"))
        assert re.search(r"RM75-B emulated at 127\.0\.\d+\.\d+:\d+", line), line
        assert int(re.search(r"(\d+) packets sent", line).group(1)) > 100  # 100 Hz push
        # Reconnects and stale periods while up, and those of start-up if there were any (a
        # loaded machine can delay a push past the 50 ms timeout: stale for a moment).
        arm = next(l for l in out.splitlines() if l.strip().startswith(f"arm driver {side}"))
        assert re.match(rf"  arm driver {side}\s+link (ready|stale), \d+ reconnects?, \d+ stale "
                        rf"periods?(?: \(\+[^)]*while starting\))?, state push [\d.]+ Hz, no "
                        rf"commands \(pid \d+\)", arm), arm
        rate = float(re.search(rf"/{side}_arm/joint_states\s+([\d.]+) Hz", out).group(1))
        assert rate > 50, out  # 100 Hz push; the invariant is that states flow
    nodes = re.search(r"nodes: (.*)", out).group(1).split(", ")
    assert nodes == ["/left_arm/arm_driver", "/right_arm/arm_driver", "/joint_state_aggregator",
                     "/head_camera", "/left_wrist_camera", "/right_wrist_camera", "/supervisor"]
    assert "not in the ROS graph" not in out
    assert "left to `ros2 launch`: robot_state_publisher" in out
    assert re.search(r"left\s+TCP at \(\+0\.315, \+0\.300, \+0\.095\) m in base_link, measured", out), out
    for camera in ("head", "left_wrist", "right_wrist"):  # simulated cameras at 30 Hz
        assert float(re.search(rf"/cameras/{camera}/camera_info\s+([\d.]+) Hz", out).group(1)) > 5, out
    assert re.search(r"supervisor idle \(.*\); \d+ ticks, period p50", out), out
    # Nothing moves until engaged: the supervisor sends no command.
    assert float(re.search(r"/left_arm/command\s+([\d.]+) Hz", out).group(1)) == 0.0, out


def test_run_script_brings_up_the_emulated_robot_and_reports(tmp_path):
    config = _config_on_free_endpoints(tmp_path)
    result = subprocess.run(
        [str(REPO / "run.sh"), "--no-policy", "--config", str(config), "--duration", "2",
         "--domain-id", str(next_domain_id()), "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=DEADLINE_S, env=_env())
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr
    _check_report(out)
    codes = re.search(r"exit codes: (.*)", out).group(1).split(", ")
    assert len(codes) == PROCESSES and all(c.endswith(" 0") for c in codes), codes
    # One log per process, where the bringup said.
    assert f"their output goes to {tmp_path / 'logs'}" in out
    assert len(list((tmp_path / "logs").glob("*.log"))) == PROCESSES


def test_every_node_runs_in_a_process_of_its_own_and_ctrl_c_stops_them_all(tmp_path):
    bringup = Bringup(tmp_path, "--no-policy", "--duration", "0")
    try:
        bringup.wait_for(r"^ate_bringup: running; Ctrl-C to stop")
        children = bringup.children()
        assert len(children) == PROCESSES, children
        # What `ros2 launch` runs: the console scripts with the node's name and parameter file.
        nodes = {next(a.split(":=")[1] for a in cmd if a.startswith("__node:=")): cmd
                 for cmd in children.values() if "--ros-args" in cmd}
        assert sorted(nodes) == sorted(["arm_driver", "joint_state_aggregator", "head_camera",
                                        "left_wrist_camera", "right_wrist_camera", "supervisor"])
        left, right = _arm_driver(children, "left"), _arm_driver(children, "right")
        assert left != right  # each arm driver (one RealMan SDK each) in its own process
        assert sum("ate_realman_emulator" in " ".join(cmd) for cmd in children.values()) == 2
        # No process of the stack is in the bringup's session: a terminal's Ctrl-C reaches
        # only the bringup.
        assert all(os.getsid(pid) == pid for pid in children)

        time.sleep(2.0)  # a run to report on
        bringup.proc.send_signal(signal.SIGINT)
        code = bringup.wait()
    finally:
        bringup.close()
    out = bringup.output
    assert code == 0, out
    assert "Traceback" not in out
    assert "exited unexpectedly" not in out
    _check_report(out)
    assert re.search(rf"arm driver left .*\(pid {left}\)", out), out
    assert re.search(rf"arm driver right .*\(pid {right}\)", out), out
    codes = re.search(r"exit codes: (.*)", out).group(1).split(", ")
    assert len(codes) == PROCESSES and all(c.endswith(" 0") for c in codes), codes
    assert not _wait_until_gone(bringup.tag, 5.0)


def test_a_process_that_dies_is_reported_and_the_stack_stops_safely(tmp_path):
    bringup = Bringup(tmp_path, "--no-policy", "--duration", "0")
    try:
        bringup.wait_for(r"^ate_bringup: running; Ctrl-C to stop")
        right = _arm_driver(bringup.children(), "right")
        os.kill(right, signal.SIGKILL)
        code = bringup.wait()
    finally:
        bringup.close()
    out = bringup.output
    assert code == 1, out
    assert re.search(rf"right_arm/arm_driver \(pid {right}\) exited unexpectedly with code -9 "
                     rf"\(SIGKILL\); the end of .*right_arm\.arm_driver\.log:\n    \| ", out), out
    # The supervisor was still up: its e-stop latched before the rest was stopped.
    assert re.search(r"e-stop: e-stop latched", out), out
    assert out.index("e-stop latched") < out.index("exit codes:")
    codes = dict(c.rsplit(" ", 1) for c in re.sub(r" \(\w+\)", "", re.search(
        r"exit codes: (.*)", out).group(1)).split(", "))
    assert codes.pop("right_arm/arm_driver") == "-9"
    assert set(codes.values()) == {"0"}, codes
    assert not _wait_until_gone(bringup.tag, 5.0)


def test_a_bringup_killed_outright_leaves_no_process_behind(tmp_path):
    bringup = Bringup(tmp_path, "--no-policy", "--duration", "0")
    try:
        bringup.wait_for(r"^ate_bringup: running; Ctrl-C to stop")
        assert len(bringup.children()) == PROCESSES
        bringup.proc.kill()
        bringup.wait()
        # Each process gets SIGTERM when the bringup dies and ends as on Ctrl-C.
        left = _wait_until_gone(bringup.tag, 30.0)
    finally:
        bringup.close()
    assert not left, left


def test_bringup_rejects_a_bad_config_with_a_clear_error(tmp_path):
    data = yaml.safe_load((REPO / "config/bimanual.yaml").read_text())
    data["arms"]["left"]["udp_port"] = "eighty"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "ate_ros.bringup",
                             "--no-policy", "--config", str(bad), "--duration", "0.1"],
                            capture_output=True, text=True, timeout=60, env=_env())
    assert result.returncode == 2
    assert f"{bad}: arms.left.udp_port: expected an integer, got str 'eighty'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv,problem", [
    (["--no-policy", "--checkpoint", "x"], "--no-policy and --checkpoint contradict"),
    (["--checkpoint", "x", "--no-twin"], "episodes run on the twin: drop --no-twin"),
    (["--checkpoint", "x", "--duration", "3"], "--duration is for --no-policy and --episodes 0"),
    (["--checkpoint", "x", "--episodes", "-1"], "--episodes -1: must be >= 0"),
    (["--task", "handover"], "no policy ships for task handover"),
])
def test_contradicting_options_are_refused_before_anything_starts(tmp_path, argv, problem):
    result = subprocess.run([sys.executable, "-m", "ate_ros.bringup", "--log-dir",
                             str(tmp_path / "logs"), *argv],
                            capture_output=True, text=True, timeout=60, env=_env())
    assert result.returncode == 2, result.stdout + result.stderr
    assert problem in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "logs").exists()  # nothing started, nothing written



def test_the_main_job_runs_an_episode_of_the_shipped_policy_through_the_stack_on_the_twin(
        tmp_path):
    """`./run.sh`'s default, cut to one episode: the twin, the shipped policy, the episode
    through the supervisor, and the report with its pictures. Whether the box comes up is the
    README's measurement over ten episodes; here the episode must run and be reported."""
    logs = tmp_path / "logs"
    tag = uuid.uuid4().hex
    result = subprocess.run(
        [sys.executable, "-m", "ate_ros.bringup", "--episodes", "1", "--seed", "1000",
         "--config", str(_config_on_free_endpoints(tmp_path)), "--domain-id",
         str(next_domain_id()), "--log-dir", str(logs)],
        capture_output=True, text=True, timeout=DEADLINE_S + 60, env=_env(tag))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr
    assert f"policy {REPO / 'policies' / 'twin_lift_box'}" in out
    # The twin host instead of the emulators, and the inference node among the nodes.
    assert re.search(r"nodes: .*/inference", out), out
    assert re.search(r"controller left .*", out), out
    episode = re.search(r"^\s+1\s+seed 1000\s+(success|FAILED)\s+([\d.]+) s\s+(\d+) chunks\s+(.+)$",
                        out, re.MULTILINE)
    assert episode is not None, out
    assert int(episode.group(3)) > 0  # the policy drove this episode
    assert re.search(r"success [01]/1 = \d+ % \(95 % interval \d+-\d+ %\), seeds 1000-1000", out)
    states = re.search(r"safety rules in the measured motion: (\d+) states checked, "
                       r"0 violations", out)
    assert states is not None and int(states.group(1)) > 20, out
    # The supervisor commanded the arms during the episode.
    assert float(re.search(r"supervisor published \S+ commands per arm, at ([\d.]+) Hz",
                           out).group(1)) > 50, out
    for name in ("head_strip.png", "joint_paths.png"):
        picture = logs / "episodes" / name
        assert f": {picture}" in out
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not _wait_until_gone(tag)
