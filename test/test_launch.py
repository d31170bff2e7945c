"""`ros2 launch ate_ros bimanual.launch.py sim:=true`, for real: the package colcon-built into a
workspace as on a robot PC, the launch file run by `launch_test` in a ROS domain of its own, the
checks made over loopback DDS by the launch_testing files in test/launch/ (named so that pytest
does not collect them itself; each says what it checks).

One launch per file: building the workspace once and starting the whole graph twice keeps this
to about a minute on a 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("launch_testing", reason="launch_testing is not installed: it comes with a "
                    "ROS 2 install, and scripts/bootstrap.sh puts it into the venv where the "
                    "launch wheelhouse is available")

from conftest import REPO, free_port, free_udp_port, next_domain_id, next_loopback_ip  # noqa: E402

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too

VENV = Path(sys.prefix)
LAUNCH_TESTS = Path(__file__).resolve().with_name("launch")
#: A launch_test run that has not ended by then is hung; a passing run takes well under a minute.
LAUNCH_TEST_TIMEOUT_S = 240

STANDIN_ROBOT_STATE_PUBLISHER = '''\
"""Stand-in for robot_state_publisher in tests: publishes its robot_description parameter on
/robot_description (transient local, as the real one does), and nothing else."""
import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import String

rclpy.init(args=sys.argv)
node = Node("robot_state_publisher")
description = node.declare_parameter("robot_description", "").value
latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
node.create_publisher(String, "robot_description", latched).publish(String(data=description))
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
except Exception:
    if rclpy.ok():  # SIGINT shuts the context down under the spin: that is no error
        raise
finally:
    node.destroy_node()
    rclpy.try_shutdown()
'''


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """A colcon workspace with this repository as its one package, built once per session."""
    ws = tmp_path_factory.mktemp("colcon_ws")
    (ws / "src").mkdir()
    (ws / "src" / "ate_ros").symlink_to(REPO, target_is_directory=True)
    colcon = VENV / "bin" / "colcon"
    result = subprocess.run(
        [str(colcon), "--log-base", str(ws / "log"), "build", "--base-paths", str(ws / "src"),
         "--build-base", str(ws / "build"), "--install-base", str(ws / "install"),
         "--event-handlers", "console_direct-"],
        cwd=ws, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout}\n{result.stderr}"
    return ws


def _config_on_free_endpoints(path: Path) -> Path:
    """The shipped config with the emulated controllers on loopback endpoints of their own, so
    that other tests (or a bringup) running on this machine cannot answer in their place."""
    data = yaml.safe_load((REPO / "config" / "bimanual.yaml").read_text())
    for side in ("left", "right"):
        data["sim"]["arms"][side] = {"ip": next_loopback_ip(), "tcp_port": free_port(),
                                     "udp_port": free_udp_port()}
    data["recorder"].update(output_dir=str(path.parent / "takes"), min_free_disk_gb=0.0)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run_launch_test(ws: Path, name: str, tmp_path: Path, prefixes=(), **env_extra) -> str:
    """`launch_test test/launch/<name>` with the workspace sourced as `install/setup.bash` does,
    in a fresh ROS domain; its output (stdout and stderr), asserting it passed."""
    env = dict(os.environ)
    env.update(env_extra)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env.update({
        "ROS_DOMAIN_ID": str(next_domain_id()),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOG_DIR": str(tmp_path / "ros_log"),
        "TMPDIR": str(tmp_path / "tmp"),  # launch_ros leaves a parameter file per node there
        "PYTHONUNBUFFERED": "1",
        "PATH": os.pathsep.join([str(VENV / "bin"), env.get("PATH", "")]),
        # The venv is a prefix too: launch finds its own share files through the ament index.
        "AMENT_PREFIX_PATH": os.pathsep.join(
            [*map(str, prefixes), str(VENV)]
            + [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]),
    })
    env.pop("ROS_LOCALHOST_ONLY", None)
    command = ['source "$1" && shift && exec "$@"', "bash", str(ws / "install" / "setup.bash"),
               "launch_test", str(LAUNCH_TESTS / name)]
    started = time.monotonic()
    result = subprocess.run(["bash", "-c", *command], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=LAUNCH_TEST_TIMEOUT_S)
    print(f"launch_test {name}: {time.monotonic() - started:.1f} s, exit {result.returncode}")
    (tmp_path / "launch_test.log").write_text(result.stdout)
    tail = "\n".join(result.stdout.splitlines()[-200:])
    assert result.returncode == 0, f"launch_test {name} failed:\n{tail}"
    return result.stdout


@pytest.mark.timeout(LAUNCH_TEST_TIMEOUT_S + 60)
def test_sim_launch_runs_the_robot_and_stops_it_on_sigint(workspace, tmp_path):
    """Graph, topics, engage, e-stop and SIGINT (test/launch/bimanual_sim_launch.py), where
    robot_state_publisher and rviz2 are not installed: the launch says so for each and runs
    everything else."""
    out = _run_launch_test(
        workspace, "bimanual_sim_launch.py", tmp_path,
        ATE_LAUNCH_TEST_CONFIG=str(_config_on_free_endpoints(tmp_path / "robot.yaml")),
        ATE_LAUNCH_TEST_EMULATOR_LOG_DIR=str(tmp_path / "emulators"))
    skip = [line for line in out.splitlines() if "not starting robot_state_publisher" in line]
    assert skip, "the launch did not say that it skipped robot_state_publisher"
    assert "package 'robot_state_publisher' is not installed" in skip[0]
    assert "sudo apt install ros-" in skip[0] and "-robot-state-publisher" in skip[0]
    assert "not starting rviz2: package 'rviz2' is not installed" in out  # rviz:=true
    assert "Traceback" not in out
    _check_the_recorded_take(tmp_path / "takes" / "episode_000000", tmp_path / "dataset")


def _check_the_recorded_take(bag: Path, dataset: Path) -> None:
    """The take recorded while the launch's arms moved: it opens with rosbags and with MCAP's
    reader, holds every stream, and converts with as-of aligned, monotone timestamps."""
    from mcap.reader import make_reader

    from ate_core.data.bag import BagReader
    from ate_core.data.convert import bag_to_episode, convert_bags

    with BagReader(bag) as reader:
        assert reader.info["status"] == "saved" and reader.info["success"] is True
        streams = reader.info["contract"]["streams"]
        for topic, stream in streams.items():
            if stream["role"] in ("state", "command", "image", "joint_states"):
                assert reader.counts.get(topic, 0) > 0, f"nothing recorded on {topic}"
    with open(bag / f"{bag.name}.mcap", "rb") as f:
        summary = make_reader(f).get_summary()
        assert {c.topic for c in summary.channels.values()} == set(streams)
    converted = bag_to_episode(bag, fps=10.0)
    assert converted.episode.length >= 5  # the arms moved for a second or two
    assert all((used <= converted.times_ns).all() for used in converted.used_stamps_ns.values())
    assert (converted.episode.timestamp_s[1:] > converted.episode.timestamp_s[:-1]).all()
    report = convert_bags([bag], dataset)
    assert len(report.written) == 1 and not report.failed


@pytest.mark.timeout(LAUNCH_TEST_TIMEOUT_S + 60)
def test_sim_launch_starts_robot_state_publisher_where_it_is_installed(workspace, tmp_path):
    """With a robot_state_publisher package on AMENT_PREFIX_PATH (a stand-in), the launch starts
    it with the config's URDF (test/launch/robot_state_publisher_launch.py)."""
    prefix = tmp_path / "standin"
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages"
    marker.mkdir(parents=True)
    (marker / "robot_state_publisher").write_text("")
    executable = prefix / "lib" / "robot_state_publisher" / "robot_state_publisher"
    executable.parent.mkdir(parents=True)
    executable.write_text(f"#!{sys.executable}\n" + STANDIN_ROBOT_STATE_PUBLISHER)
    executable.chmod(0o755)
    out = _run_launch_test(
        workspace, "robot_state_publisher_launch.py", tmp_path, prefixes=[prefix],
        ATE_LAUNCH_TEST_CONFIG=str(_config_on_free_endpoints(tmp_path / "robot.yaml")))
    assert "not starting robot_state_publisher" not in out
    assert "Traceback" not in out


@pytest.mark.timeout(LAUNCH_TEST_TIMEOUT_S + 60)
def test_teleop_launch_follows_a_leader_and_stops_on_sigint(workspace, tmp_path):
    """teleop.launch.py (test/launch/teleop_sim_launch.py): the teleop graph, a leader device
    moving the followers through the supervisor, the e-stop, and SIGINT."""
    out = _run_launch_test(
        workspace, "teleop_sim_launch.py", tmp_path,
        ATE_LAUNCH_TEST_CONFIG=str(_config_on_free_endpoints(tmp_path / "robot.yaml")))
    assert "Traceback" not in out
