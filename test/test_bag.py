"""Episode bags: rosbag2 MCAP written through rosbags, read back by rosbags and by MCAP's own
reader, recovered after a SIGKILL up to the last flush, discarded without a trace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, JointState

from ate_core.data.bag import (EPISODE_FILE, BagError, BagReader, EpisodeBagWriter, is_finished,
                               recover_bag)

ROOT = Path(__file__).resolve().parents[1]


def joint_state(i: int) -> bytes:
    msg = JointState()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(i * 5_000_000, 1_000_000_000)
    msg.name = [f"right_joint{k}" for k in range(1, 8)] + ["right_gripper"]
    msg.position = [0.001 * i + k for k in range(8)]
    return serialize_message(msg)


def image(i: int, size: int = 2000) -> bytes:
    msg = CompressedImage()
    msg.header.frame_id = "head"
    msg.format = "jpeg"
    msg.data = bytes([i % 256]) * size
    return serialize_message(msg)


def test_a_bag_reads_back_with_rosbags_and_with_mcaps_reader(tmp_path):
    bag = tmp_path / "episode_000000"
    writer = EpisodeBagWriter(bag, {"task": "pick the cube", "operator": "ana"})
    writer.add_topic("/right_arm/joint_states", "sensor_msgs/msg/JointState")
    writer.add_topic("/cameras/head/image_raw/compressed", "sensor_msgs/msg/CompressedImage")
    # rclpy's bytes as written (its buffer may end in a few uninitialised bytes: kept as they are)
    states = [joint_state(i) for i in range(50)]
    images = [image(i) for i in range(0, 50, 5)]
    for i in range(50):
        writer.write("/right_arm/joint_states", 1_000 + i * 5_000_000, states[i])
        if i % 5 == 0:
            writer.write("/cameras/head/image_raw/compressed", 2_000 + i * 5_000_000, images[i // 5])
    assert yaml.safe_load((bag / EPISODE_FILE).read_text())["status"] == "recording"
    writer.close({"success": True})
    assert is_finished(bag)

    info = yaml.safe_load((bag / EPISODE_FILE).read_text())
    assert info["status"] == "saved" and info["success"] is True and info["task"] == "pick the cube"
    assert info["message_counts"] == {"/right_arm/joint_states": 50,
                                      "/cameras/head/image_raw/compressed": 10}
    with BagReader(bag) as reader:
        assert reader.info["operator"] == "ana"
        assert reader.counts == info["message_counts"]
        got = [(t, ns, data) for t, ns, data in reader.raw(["/right_arm/joint_states"])]
        assert [d for _, _, d in got] == states  # the bytes, unchanged
        decoded = [m for _, _, m in reader.messages(["/right_arm/joint_states"])]
        np.testing.assert_allclose(decoded[7].position, [0.007 + k for k in range(8)])
        # rclpy reads the same from the bytes.
        back = deserialize_message(got[7][2], JointState)
        assert list(back.position) == list(decoded[7].position)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap" and meta["message_count"] == 60
    assert yaml.safe_load(meta["custom_data"]["ate.task"]) == "pick the cube"

    from mcap.reader import make_reader

    with open(bag / "episode_000000.mcap", "rb") as f:
        reader = make_reader(f)
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        topics = {c.topic for c in summary.channels.values()}
        assert topics == {"/right_arm/joint_states", "/cameras/head/image_raw/compressed"}
        assert sum(summary.statistics.channel_message_counts.values()) == 60
        first = next(reader.iter_messages(topics=["/cameras/head/image_raw/compressed"]))
        assert first[2].data == images[0] and first[0].name == "sensor_msgs/msg/CompressedImage"


KILLED_WRITER = textwrap.dedent("""
    import sys
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState
    from ate_core.data.bag import EpisodeBagWriter

    writer = EpisodeBagWriter(sys.argv[1], {"task": "t"})
    writer.add_topic("/a", "sensor_msgs/msg/JointState")
    writer.add_topic("/b", "sensor_msgs/msg/JointState")
    def msg(i):
        m = JointState()
        m.position = [float(i)] * 8
        return serialize_message(m)
    i = 0
    for i in range(300):
        writer.write("/a" if i % 3 else "/b", i, msg(i))
    writer.flush()
    print("flushed", i + 1, flush=True)
    while True:  # written but never flushed: lost at the kill, and nothing else may be
        i += 1
        writer.write("/a" if i % 3 else "/b", i, msg(i))
        if i == 1000:
            print("writing", flush=True)
""")


def test_a_killed_recording_keeps_every_flushed_message(tmp_path):
    bag = tmp_path / "episode_000001"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(bag)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["flushed", "300"]
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not is_finished(bag)
    with pytest.raises(BagError, match="recover"):
        BagReader(bag)

    recovery = recover_bag(bag)
    assert recovery.messages >= 300
    assert is_finished(bag) and (bag / "episode_000001.mcap.partial").is_file()
    info = yaml.safe_load((bag / EPISODE_FILE).read_text())
    assert info["status"] == "recovered" and info["recovered"]["messages"] == recovery.messages
    with BagReader(bag) as reader:
        got = [(topic, ns, float(m.position[0])) for topic, ns, m in reader.messages()]
    # Exactly the first N messages in the order written: nothing flushed is missing, nothing
    # is invented, and the unflushed tail is cut at a whole chunk.
    assert got == [("/a" if i % 3 else "/b", i, float(i)) for i in range(len(got))]
    assert len(got) == recovery.messages

    from mcap.reader import make_reader

    with open(bag / "episode_000001.mcap", "rb") as f:
        assert sum(1 for _ in make_reader(f).iter_messages()) == recovery.messages
    with pytest.raises(BagError, match="nothing to recover"):
        recover_bag(bag)


def test_a_discarded_take_leaves_nothing(tmp_path):
    bag = tmp_path / "episode_000002"
    writer = EpisodeBagWriter(bag, {"task": "t"})
    writer.add_topic("/a", "sensor_msgs/msg/JointState")
    writer.write("/a", 1, joint_state(1))
    writer.flush()
    writer.discard()
    assert not bag.exists() and list(tmp_path.iterdir()) == []


def test_bad_use_is_named(tmp_path):
    bag = tmp_path / "episode_000003"
    writer = EpisodeBagWriter(bag, {})
    with pytest.raises(BagError, match="unknown message type 'my_msgs/msg/Foo'"):
        writer.add_topic("/x", "my_msgs/msg/Foo")
    with pytest.raises(BagError, match="never added"):
        writer.write("/y", 1, b"")
    writer.close()
    with pytest.raises(BagError, match="exists already"):
        EpisodeBagWriter(bag, {})
    with pytest.raises(BagError, match="no such bag folder"):
        BagReader(tmp_path / "nope")
    (tmp_path / "not_a_bag").mkdir()
    with pytest.raises(BagError, match="has no not_a_bag.mcap"):
        recover_bag(tmp_path / "not_a_bag")


def test_the_command_line_recovers_and_describes(tmp_path):
    bag = tmp_path / "episode_000004"
    writer = EpisodeBagWriter(bag, {"task": "t"})
    writer.add_topic("/a", "sensor_msgs/msg/JointState")
    for i in range(5):
        writer.write("/a", i, joint_state(i))
    writer.flush()
    writer._writer.storage.bio.close()  # as if killed: no summary, no metadata.yaml
    run = [sys.executable, "-m", "ate_core.data.bag"]
    out = subprocess.run(run + ["recover", str(bag)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "recovered 5 messages" in out.stdout, out.stdout + out.stderr
    out = subprocess.run(run + ["info", str(bag), str(tmp_path / "nope")], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "/a [sensor_msgs/msg/JointState]: 5" in out.stdout and "no such bag folder" in out.stdout
    assert os.path.isfile(bag / "metadata.yaml")
