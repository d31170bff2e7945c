"""What a take records, and what each recorded topic is: the robot contract's streams.

One function, :func:`recorded_streams`, derives from the robot config every topic the recorder
subscribes to and its role (an arm's measured state, an arm's command, a camera's frames, the
policy's chunks, diagnostics), with the joint names and the rate it should arrive at. The
recorder writes this map into each bag (episode.yaml's ``contract``), and conversion and
offline evaluation read the bag through it, so a bag says by itself how it is to be read, and
recording, conversion and serving agree on one description of the robot (rosetta's contract).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

from ate_core.robot.config import BimanualConfig
from ate_core.robot.models import push_period_s

__all__ = ["ROLES", "BEST_EFFORT_ROLES", "Stream", "recorded_streams", "streams_to_dict"]

#: state: an arm's measured joints (+ gripper); command: the supervisor's target for an arm;
#: leader: the teleop leader's joints for an arm (what the operator asked; the command is what
#: the supervisor allowed); image: a camera's JPEG frames; chunk: the policy's action chunks;
#: joint_states: both arms, for RViz; diagnostics.
ROLES = ("state", "command", "leader", "image", "chunk", "joint_states", "diagnostics")
#: Roles whose publishers are best-effort (sensor data): the recorder subscribes to match. The
#: leader targets are published reliably (the supervisor takes them best-effort, the newest
#: first; the recorder keeps every one).
BEST_EFFORT_ROLES = ("image",)


@dataclass(frozen=True)
class Stream:
    topic: str
    msgtype: str
    role: str
    #: The arm (state, command, leader) or camera (image) it belongs to; "" otherwise.
    source: str = ""
    #: Joint names in the arm's order (state, command, leader).
    joints: Tuple[str, ...] = ()
    #: The rate it must keep while recording (state, image); None: not audited.
    expected_hz: Optional[float] = None


def recorded_streams(cfg: BimanualConfig) -> Dict[str, Stream]:
    """Every topic a take records, by topic name, for this robot config."""
    t = cfg.topics
    out: Dict[str, Stream] = {}
    for side, arm in cfg.arms.items():
        joints = (*arm.joint_names, arm.gripper_joint)
        state = f"/{side}_arm/{t.arm_joint_states}"
        out[state] = Stream(state, "sensor_msgs/msg/JointState", "state", side, joints,
                            1.0 / push_period_s(arm.push_cycle))
        command = f"/{side}_arm/{t.arm_command}"
        out[command] = Stream(command, "sensor_msgs/msg/JointState", "command", side, joints)
        leader = f"/{side}_arm/{t.teleop_target}"
        out[leader] = Stream(leader, "sensor_msgs/msg/JointState", "leader", side, joints)
    out[t.joint_states] = Stream(t.joint_states, "sensor_msgs/msg/JointState", "joint_states")
    for name, cam in cfg.cameras.items():
        topic = f"{t.cameras.rstrip('/')}/{name}/image_raw/compressed"
        out[topic] = Stream(topic, "sensor_msgs/msg/CompressedImage", "image", name,
                            expected_hz=float(cam.fps))
    if cfg.recorder.record_chunks:
        out[t.action_chunk] = Stream(t.action_chunk, "trajectory_msgs/msg/JointTrajectory", "chunk")
    if cfg.recorder.record_diagnostics:
        out[t.diagnostics] = Stream(t.diagnostics, "diagnostic_msgs/msg/DiagnosticArray",
                                    "diagnostics")
    return out


def streams_to_dict(streams: Dict[str, Stream]) -> Dict[str, Dict[str, Any]]:
    """As the contract stores them (plain YAML types)."""
    return {topic: {k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in asdict(s).items() if k != "topic"}
            for topic, s in streams.items()}
