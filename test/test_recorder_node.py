"""The episode recorder over real DDS: takes start, stop with an outcome and an audit, are
discarded without a trace, and are refused when they cannot be recorded safely."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, JointState
from std_srvs.srv import SetBool, Trigger

from ate_core.data.bag import EPISODE_FILE, BagReader
from ate_core.robot.config import load_config
from ate_ros.nodes.recorder_node import RecorderNode
from ate_ros.nodes.teleop_node import TARGET_QOS

pytestmark = pytest.mark.ros  # real DDS: CI runs these with a core kept busy too

RELIABLE = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture
def cfg(repo, tmp_path):
    base = load_config(repo / "config/bimanual.yaml")
    return dataclasses.replace(base, recorder=dataclasses.replace(
        base.recorder, output_dir=str(tmp_path / "takes"), min_free_disk_gb=0.0))


def state(i: int) -> JointState:
    msg = JointState()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 100, i * 1000
    msg.name = [f"left_joint{k}" for k in range(1, 8)] + ["left_gripper"]
    msg.position = [i * 0.01] * 8
    return msg


def publish_and_wait(ros, recorder, pub, msgs):
    ros.wait_for_subscribers(pub)
    for m in msgs:
        pub.publish(m)
    ros.wait_for(lambda: recorder._take is not None and recorder._take.queued >= len(msgs),
                 15.0, f"{len(msgs)} messages taken by the recorder")


def test_a_take_holds_what_was_sent_with_its_outcome_and_audit(ros, cfg, repo):
    recorder = ros.start(RecorderNode, config=cfg, config_file=str(repo / "config/bimanual.yaml"))
    recorder.set_parameters([Parameter("task", value="stack the cups"),
                             Parameter("operator", value="ana")])
    answer = ros.call(Trigger, "/recorder/start")
    assert answer.success, answer.message
    assert answer.message.endswith("episode_000000")
    pub = ros.publisher(JointState, "/left_arm/joint_states", RELIABLE)
    sent = [state(i) for i in range(40)]
    publish_and_wait(ros, recorder, pub, sent)
    image = ros.publisher(CompressedImage, "/cameras/head/image_raw/compressed", RELIABLE)
    publish_and_wait(ros, recorder, image,
                     [CompressedImage(format="jpeg", data=b"\xff\xd8jpeg\xff\xd9")])
    # The teleop leader's targets, with the QoS the teleop node and the jog send them.
    leader = ros.publisher(JointState, "/left_arm/teleop_target", TARGET_QOS)
    ros.wait_for_subscribers(leader)
    ros.wait_for(lambda: leader.publish(state(7)) or recorder._take.queued >= 42, 15.0,
                 "a leader target taken by the recorder")
    answer = ros.call(SetBool, "/recorder/stop", SetBool.Request(data=True))
    assert answer.success, answer.message
    assert "saved episode_000000: success=True, audit flagged" in answer.message
    # Nothing came from the right arm or two of the cameras: named in the audit.
    assert "/right_arm/joint_states: nothing received" in answer.message

    bag = cfg.recorder.output_dir + "/episode_000000"
    info = yaml.safe_load(open(f"{bag}/{EPISODE_FILE}").read())
    assert info["status"] == "saved" and info["success"] is True
    assert info["task"] == "stack the cups" and info["operator"] == "ana"
    assert info["audit"]["verdict"] == "flagged"
    assert info["audit"]["topics"]["/left_arm/joint_states"]["count"] == 40
    assert info["audit"]["topics"]["/cameras/head/image_raw/compressed"]["count"] == 1
    contract = info["contract"]
    assert contract["streams"]["/left_arm/joint_states"]["role"] == "state"
    assert contract["streams"]["/left_arm/joint_states"]["expected_hz"] == 100.0
    assert contract["urdf"].startswith("<?xml") and "left_joint7" in contract["urdf"]
    assert contract["config"]["arms.left.model"] == "RM75-B"
    assert "robot_name: ate_bimanual" in contract["config_text"]
    assert contract["cameras"]["head"]["k"][0] > 0
    with BagReader(bag) as reader:
        got = [m for _, _, m in reader.messages(["/left_arm/joint_states"])]
        assert [round(float(m.position[0]), 6) for m in got] == [round(i * 0.01, 6) for i in range(40)]
        assert [m.header.stamp.nanosec for m in got] == [i * 1000 for i in range(40)]
        assert set(reader.topics) == set(contract["streams"])
        assert contract["streams"]["/left_arm/teleop_target"]["role"] == "leader"
        leaders = [m for _, _, m in reader.messages(["/left_arm/teleop_target"])]
        assert leaders and all(m.position[0] == 0.07 for m in leaders)


def test_takes_are_refused_when_they_cannot_be_recorded(ros, cfg):
    recorder = ros.start(RecorderNode, config=cfg)
    answer = ros.call(SetBool, "/recorder/stop", SetBool.Request(data=True))
    assert not answer.success and answer.message == "no take is recording"
    assert ros.call(Trigger, "/recorder/start").success
    answer = ros.call(Trigger, "/recorder/start")
    assert not answer.success and answer.message == "already recording episode_000000"
    assert ros.call(Trigger, "/recorder/discard").success
    recorder.rec = dataclasses.replace(recorder.rec, min_free_disk_gb=1e6)
    answer = ros.call(Trigger, "/recorder/start")
    assert not answer.success and "below recorder.min_free_disk_gb 1e+06 GB" in answer.message


def test_a_discarded_take_leaves_no_folder_and_the_next_take_reuses_its_number(ros, cfg):
    recorder = ros.start(RecorderNode, config=cfg)
    assert ros.call(Trigger, "/recorder/start").success
    pub = ros.publisher(JointState, "/right_arm/joint_states", RELIABLE)
    publish_and_wait(ros, recorder, pub, [state(i) for i in range(5)])
    answer = ros.call(Trigger, "/recorder/discard")
    assert answer.success and answer.message == "discarded episode_000000"
    assert list(Path(cfg.recorder.output_dir).iterdir()) == []
    assert ros.call(Trigger, "/recorder/start").message.endswith("episode_000000")
    assert ros.call(SetBool, "/recorder/stop", SetBool.Request(data=False)).success
    info = yaml.safe_load((Path(cfg.recorder.output_dir) / "episode_000000" / EPISODE_FILE).read_text())
    assert info["success"] is False and info["status"] == "saved"


def test_a_rejecting_audit_keeps_the_take_and_marks_it(ros, cfg):
    cfg = dataclasses.replace(cfg, recorder=dataclasses.replace(cfg.recorder, reject_on_audit=True))
    ros.start(RecorderNode, config=cfg)
    assert ros.call(Trigger, "/recorder/start").success
    answer = ros.call(SetBool, "/recorder/stop", SetBool.Request(data=True))
    assert answer.success and "audit rejected" in answer.message
    info = yaml.safe_load((Path(cfg.recorder.output_dir) / "episode_000000" / EPISODE_FILE).read_text())
    assert info["audit"]["verdict"] == "rejected" and info["audit"]["problems"]


def test_shutting_down_mid_take_saves_it(ros, cfg):
    ros.start(RecorderNode, config=cfg)
    assert ros.call(Trigger, "/recorder/start").success
    ros.close()  # the executor stops and the node is destroyed, as at Ctrl-C
    info = yaml.safe_load((Path(cfg.recorder.output_dir) / "episode_000000" / EPISODE_FILE).read_text())
    assert info["status"] == "saved" and info["stop_reason"] == "recorder shut down"
    assert info["success"] is None
