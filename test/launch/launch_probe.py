"""What the launch_testing files in this folder share: the launch they start, the node graph they
expect, a probe that listens and calls over DDS, and a stand-in policy that streams chunks.

Those files run under `launch_test` (started by test/test_launch.py with a colcon-built
workspace and a ROS domain of their own); pytest does not collect them itself.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import psutil
import rclpy
from ament_index_python.packages import get_package_share_directory
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from rcl_interfaces.srv import ListParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ate_core.robot.config import BimanualConfig, load_config
from ate_ros.graph import NodeSpec, robot_graph

#: What test/test_launch.py hands over.
CONFIG_FILE = os.environ.get("ATE_LAUNCH_TEST_CONFIG", "")
EMULATOR_LOG_DIR = os.environ.get("ATE_LAUNCH_TEST_EMULATOR_LOG_DIR", "")

SIDES = ("left", "right")
#: Every wait of these tests: generous for a slow, busy 2-core machine. A passing run
#: takes a fraction of it; only a failure waits it out.
DEADLINE_S = 45.0
#: A stand-in policy publishes a chunk this often, each spanning CHUNK_SPAN_S.
CHUNK_PERIOD_S = 0.2
CHUNK_SPAN_S = 1.5
CHUNK_STEP_S = 0.1


def config() -> BimanualConfig:
    return load_config(CONFIG_FILE)


def bimanual_launch(file: str = "bimanual.launch.py", **arguments: str) -> IncludeLaunchDescription:
    """An installed launch file of the package (found through the ament index, as `ros2 launch`
    does): `bimanual.launch.py` by default."""
    path = os.path.join(get_package_share_directory("ate_ros"), "launch", file)
    return IncludeLaunchDescription(PythonLaunchDescriptionSource(path),
                                    launch_arguments=sorted(arguments.items()))


def full_name(spec: NodeSpec) -> str:
    return f"{spec.namespace.rstrip('/')}/{spec.name}" if spec.namespace else f"/{spec.name}"


def expected_nodes(cfg: BimanualConfig, with_urdf: bool, record: bool = False,
                   teleop: bool = False) -> List[str]:
    urdf = "<robot/>" if with_urdf else None
    return sorted(full_name(s) for s in robot_graph(cfg, CONFIG_FILE, urdf_xml=urdf, sim=True,
                                                    record=record, teleop=teleop))


def joint_names(cfg: BimanualConfig) -> Dict[str, Tuple[str, ...]]:
    """Each arm's joints then its gripper, as the arm's joint states name them."""
    return {side: (*getattr(cfg.arms, side).joint_names, getattr(cfg.arms, side).gripper_joint)
            for side in SIDES}


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str,
             poll_s: float = 0.01) -> Any:
    """Poll ``predicate`` until it is true (and return its value), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


class Topic:
    """The newest message of a topic, how many came, and when the recent ones came."""

    def __init__(self, keep: int = 4000) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.last = None
        self.times: Deque[float] = deque(maxlen=keep)
        self.recording: Optional[List] = None

    def put(self, msg) -> None:
        now = time.monotonic()
        with self._lock:
            self.count += 1
            self.last = msg
            self.times.append(now)
            if self.recording is not None:
                self.recording.append(msg)

    def since(self, t0: float) -> int:
        with self._lock:
            return sum(1 for t in self.times if t >= t0)

    def record(self) -> List:
        """Start keeping every message from now on (the list returned grows)."""
        with self._lock:
            self.recording = []
            return self.recording

    def stop_recording(self) -> None:
        with self._lock:
            self.recording = None


class Probe:
    """The test's node in the launch's ROS domain (ROS_DOMAIN_ID), spun by one named thread.

    The thread spins in short waits and ends between two callbacks when asked: shutting an
    executor down while it runs a callback of a busy subscription can end its thread with an
    InvalidHandle, and shutting the context down under it makes a take fail.
    """

    wait_for = staticmethod(wait_for)

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=int(os.environ.get("ROS_DOMAIN_ID", "0")))
        self.probe = Node("launch_test_probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.probe)
        self.topics: Dict[str, Topic] = {}
        self._clients: Dict[str, object] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="launch-test-probe", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.executor.shutdown(timeout_sec=0)
        self.probe.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def publisher(self, msg_type, topic: str, qos=10):
        return self.probe.create_publisher(msg_type, topic, qos)

    def call(self, srv_type, name: str, request=None, timeout_s: float = DEADLINE_S):
        """Call a service and return its answer. Clients are kept for the next call: destroying
        one while the executor waits on it can end the executor's thread (InvalidHandle)."""
        if name not in self._clients:
            self._clients[name] = self.probe.create_client(srv_type, name)
        client = self._clients[name]
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise AssertionError(f"service {name} did not appear in {timeout_s} s")
        future = client.call_async(request if request is not None else srv_type.Request())
        self.wait_for(future.done, timeout_s, f"the answer of {name}")
        return future.result()

    def listen(self, msg_type, topic: str, qos=qos_profile_sensor_data) -> Topic:
        if topic not in self.topics:
            self.topics[topic] = Topic()
            self.probe.create_subscription(msg_type, topic, self.topics[topic].put, qos)
        return self.topics[topic]

    def node_names(self) -> List[str]:
        return sorted(f"{ns.rstrip('/')}/{name}"
                      for name, ns in self.probe.get_node_names_and_namespaces())

    def now_ns(self) -> int:
        return self.probe.get_clock().now().nanoseconds

    def wait_for_graph(self, expected: Sequence[str]) -> None:
        """Every node in ``expected`` is in the graph and answers a call: its executor spins, so
        it is past its start-up (a node that is still starting dies of a SIGINT)."""
        self.wait_for(lambda: set(expected) <= set(self.node_names()), DEADLINE_S,
                      f"the nodes {list(expected)}", poll_s=0.2)
        for name in expected:
            self.call(ListParameters, f"{name}/list_parameters", timeout_s=DEADLINE_S)


def measured(topic: Topic, names: Sequence[str]) -> List[float]:
    """The newest joint state of an arm, in `names` order."""
    msg: JointState = topic.last
    index = {n: i for i, n in enumerate(msg.name)}
    return [msg.position[index[n]] for n in names]


class ChunkStream:
    """A stand-in policy: from ``aim`` on, one chunk every CHUNK_PERIOD_S, stamped with the time
    it is sent, its points sampling one ramp from ``start`` to ``target`` (by absolute time, so
    every chunk agrees with the one before it), over ``ramp_s``."""

    def __init__(self, probe: Probe, topic: str, names: Sequence[str]) -> None:
        self._probe = probe
        self._names = list(names)
        self._pub = probe.publisher(JointTrajectory, topic)
        self._lock = threading.Lock()
        self._ramp: Optional[Tuple[List[float], List[float], int, float]] = None
        self._aimed = 0  # how many times aimed; the ramp of the newest aim is the one sent
        self._sent_aim = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-chunk-stream", daemon=True)
        self._thread.start()

    def aim(self, start: Sequence[float], target: Sequence[float], ramp_s: float) -> None:
        """Ramp from now on; returns once the first chunk of this ramp is out."""
        with self._lock:
            self._ramp = (list(start), list(target), self._probe.now_ns(), ramp_s)
            self._aimed += 1
            aimed = self._aimed
        self._wake.set()
        wait_for(lambda: self._sent_aim >= aimed, DEADLINE_S, "a chunk of the new ramp")

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5.0)

    def _chunk(self, now_ns: int) -> Tuple[Optional[JointTrajectory], int]:
        with self._lock:
            if self._ramp is None:
                return None, self._aimed
            (start, target, t0_ns, ramp_s), aimed = self._ramp, self._aimed
        msg = JointTrajectory()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
        msg.joint_names = self._names
        for k in range(int(round(CHUNK_SPAN_S / CHUNK_STEP_S)) + 1):
            t_ns = int(round(k * CHUNK_STEP_S * 1e9))
            w = min(1.0, max(0.0, (now_ns + t_ns - t0_ns) * 1e-9 / ramp_s))
            point = JointTrajectoryPoint(positions=[a + w * (b - a) for a, b in zip(start, target)])
            point.time_from_start.sec, point.time_from_start.nanosec = divmod(t_ns, 1_000_000_000)
            msg.points.append(point)
        return msg, aimed

    def _run(self) -> None:
        while not self._stop.is_set():
            msg, aimed = self._chunk(self._probe.now_ns())
            if msg is not None:
                self._pub.publish(msg)
                self._sent_aim = aimed
            self._wake.wait(CHUNK_PERIOD_S)
            self._wake.clear()


def processes_left(proc_info) -> List[str]:
    """Processes of the launch that still run (by the pid each had), and children of this one."""
    left = []
    for info in proc_info:
        if getattr(info, "returncode", None) is None:
            left.append(f"{info.process_name}: its exit was never reported")
            continue
        try:
            proc = psutil.Process(info.pid)
            command = proc.cmdline()
            # The same program under that pid: not a pid reused by another process since.
            if proc.status() != psutil.STATUS_ZOMBIE and info.cmd[0] in command:
                left.append(f"{info.process_name} (pid {info.pid}): {' '.join(command)}")
        except psutil.NoSuchProcess:
            pass
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                left.append(f"child pid {child.pid}: {' '.join(child.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return left
