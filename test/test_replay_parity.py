"""Parity: the inputs the offline replay evaluation builds from a recorded take are exactly the
inputs the live inference node built while that take was recorded (frames, state, instruction,
at the same observation times), over real DDS with the real recorder and inference node."""

from __future__ import annotations

import time

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, JointState
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from ate_core.config import replace_in
from ate_core.eval.replay import replay_evaluate
from ate_core.robot.config import load_config
from ate_core.runtime.policy_runner import PolicyRunner
from ate_ros.conversions import ns_to_stamp, stamp_to_ns
from ate_ros.images import rgb_to_jpeg
from ate_ros.nodes.inference_node import InferenceNode
from ate_ros.nodes.recorder_node import RecorderNode
from test_inference_node import JOINTS, REPO, checkpoint  # noqa: F401 - the module's fixture

pytestmark = pytest.mark.ros  # real DDS: CI runs these with a core kept busy too

PERIOD_S = 1.0


def recording(policy, calls):
    """``policy`` whose every inference records its inputs."""
    infer = policy.infer

    def spy(images, state, stamp_ns, task, **kwargs):
        calls[int(stamp_ns)] = ({k: np.array(v) for k, v in images.items()}, np.array(state), task)
        return infer(images, state, stamp_ns, task, **kwargs)

    policy.infer = spy
    return policy


def test_offline_replay_builds_exactly_the_live_inputs(ros, checkpoint, tmp_path):  # noqa: F811
    # Inference every second; observations arrive in bursts half-way between two attempts, so
    # which burst an attempt saw never depends on a millisecond of delivery: both sides must
    # then agree exactly, or the offline path is not the live one.
    cfg = replace_in(load_config(REPO / "config/bimanual.yaml"), {
        "inference.checkpoint": str(checkpoint), "inference.device": "cpu",
        "inference.torch_threads": 1, "inference.warmup_runs": 1, "inference.task": "stack",
        "inference.period_s": PERIOD_S, "inference.image_transport": "compressed",
        "inference.joint_state_max_age_s": 3.0, "cameras.head.max_age_s": 3.0,
        "recorder.output_dir": str(tmp_path / "takes"), "recorder.min_free_disk_gb": 0.0}, "test")
    chunks = ros.subscribe(JointTrajectory, "/ate/action_chunk",
                           QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    ros.start(RecorderNode, config=cfg)
    node = ros.start(InferenceNode, config=cfg)
    live = {}
    recording(node.runner, live)
    image = ros.publisher(CompressedImage, "/cameras/head/image_raw/compressed", qos_profile_sensor_data)
    arms = {side: ros.publisher(JointState, f"/{side}_arm/joint_states", 10)  # as the arm node
            for side in ("left", "right")}
    for pub in (image, *arms.values()):
        ros.wait_for_subscribers(pub, count=2)  # the recorder and the inference node
    assert ros.call(Trigger, "/recorder/start").success
    rng = np.random.default_rng(0)
    clock = ros.probe.get_clock()

    def burst():
        stamp = clock.now().nanoseconds
        image.publish(rgb_to_jpeg(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), stamp, "head"))
        for side, pub in arms.items():
            msg = JointState(name=[n for n in JOINTS if n.startswith(side)])
            msg.header.stamp = ns_to_stamp(stamp)
            msg.position = rng.uniform(-0.5, 0.5, len(msg.name)).tolist()
            pub.publish(msg)

    burst()
    seen = 0
    while len(chunks) < 5:
        ros.wait_for(lambda: len(chunks) > seen, 30.0, f"chunk {seen + 1}")
        seen = len(chunks)
        last = stamp_to_ns(chunks.messages[-1].header.stamp)
        # Half a period after that attempt: the next one comes half a period after this burst.
        delay = last * 1e-9 + PERIOD_S / 2 - clock.now().nanoseconds * 1e-9
        time.sleep(max(0.0, delay))
        burst()
    answer = ros.call(SetBool, "/recorder/stop", SetBool.Request(data=True))
    assert answer.success, answer.message

    offline = {}
    runner = recording(PolicyRunner.from_config(cfg.inference), offline)
    report = replay_evaluate(tmp_path / "takes" / "episode_000000", runner, config=cfg,
                             action_from="state")  # no supervisor ran: no commands
    recorded = sorted(stamp_to_ns(m.header.stamp) for m in chunks.messages)
    assert report.chunks >= 4
    common = sorted(set(live) & set(offline))
    assert len(common) >= 4 and set(offline) <= set(recorded)
    for stamp in common:
        (live_images, live_state, live_task) = live[stamp]
        (off_images, off_state, off_task) = offline[stamp]
        assert live_task == off_task == "stack"
        np.testing.assert_array_equal(off_state, live_state)
        assert off_images.keys() == live_images.keys()
        for cam in live_images:
            np.testing.assert_array_equal(off_images[cam], live_images[cam])
