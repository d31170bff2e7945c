"""Takes -> data set: as-of alignment on header stamps, with no sample using anything stamped
after its own time (shown by the data itself), and a batch that survives a bad bag."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, JointState

from ate_core.data.bag import EpisodeBagWriter
from ate_core.data.convert import (STATS_FILE, ConversionError, Stream, align, asof_indices,
                                   bag_to_episode, convert_bags)
from ate_core.data.episode import EpisodeReader, list_episodes, read_info
from ate_core.robot.config import load_config
from ate_core.robot.recording import recorded_streams, streams_to_dict

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CFG = load_config(ROOT / "config/bimanual.yaml")
S = 1_000_000_000


def joint_msg(names, stamp_ns, value):
    m = JointState()
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(stamp_ns), S)
    m.name = list(names)
    m.position = [float(value)] * len(names)
    return serialize_message(m)


def image_msg(stamp_ns, k):
    m = CompressedImage()
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(stamp_ns), S)
    m.format = "jpeg"
    rgb = np.full((24, 32, 3), k * 5, dtype=np.uint8)  # k < 50
    m.data = cv2.imencode(".jpg", rgb)[1].tobytes()
    return serialize_message(m)


def record_take(path, *, seconds=3.0, seed=0, audit="ok", contract=True, cameras=("head",)):
    """A take whose every value is its own stamp (joints: stamp in s; frames: index k): the
    converted data then shows which message each sample used."""
    rng = np.random.default_rng(seed)
    streams = {t: s for t, s in recorded_streams(CFG).items()
               if s.role in ("state", "command") or (s.role == "image" and s.source in cameras)}
    info = {"task": "stack", "success": False, "audit": {"verdict": audit}}
    if contract:
        info["contract"] = {"streams": streams_to_dict(streams)}
    writer = EpisodeBagWriter(path, info)
    messages = []
    base = 1_700_000_000 * S
    for topic, s in streams.items():
        writer.add_topic(topic, s.msgtype)
        if s.role == "image":
            period, phase = S / 15, rng.uniform(0, S / 15)
            for k in range(int(seconds * 15)):
                stamp = base + int(phase + k * period)
                messages.append((topic, stamp, image_msg(stamp, k)))
        else:
            rate = 100.0 if s.role == "state" else 100.0
            start = 0.05 * S if s.role == "command" else 0  # control starts a little later
            for k in range(int(seconds * rate)):
                stamp = base + int(start + k * S / rate + rng.uniform(0, 2e6))  # jitter
                names = list(s.joints)[::-1]  # reversed: mapping goes by name
                messages.append((topic, stamp, joint_msg(names, stamp, (stamp - base) / S)))
    # Logged in arrival order with transport delays: not in stamp order.
    for topic, stamp, data in sorted(messages, key=lambda m: m[1] + rng.uniform(0, 30e6)):
        writer.write(topic, stamp + 40_000_000, data)
    writer.close({})
    return path


def test_every_sample_holds_the_latest_message_at_or_before_its_time(tmp_path):
    bag = record_take(tmp_path / "episode_000000")
    out = bag_to_episode(bag, fps=10.0)
    ep, times = out.episode, out.times_ns
    assert np.all(np.diff(times) > 0) and np.all(np.diff(ep.timestamp_s) > 0)
    assert ep.timestamp_s[0] == 0.0 and ep.timestamp_s[1] == pytest.approx(0.1, abs=1e-9)
    for name, used in out.used_stamps_ns.items():
        assert np.all(used <= times), f"{name} used a message from its future"
    # The latest such message, not any earlier one: checked against a brute-force search.
    base = 1_700_000_000 * S
    state_values = ep.state - (times[:, None] - base) / S  # value - sample time: <= 0
    assert np.all(state_values <= 1e-9)
    with __import__("ate_core.data.bag", fromlist=["BagReader"]).BagReader(bag) as reader:
        for topic in ("/left_arm/joint_states", "/right_arm/command"):
            stamps = np.array(sorted(
                m.header.stamp.sec * S + m.header.stamp.nanosec
                for _, _, m in reader.messages([topic])))
            expect = np.array([stamps[stamps <= t].max() for t in times])
            np.testing.assert_array_equal(out.used_stamps_ns[topic], expect)
    # Values follow by name, whatever order the message listed its joints in.
    left = slice(0, 8)
    np.testing.assert_allclose(ep.state[:, left],
                               np.repeat((out.used_stamps_ns["/left_arm/joint_states"]
                                          - base)[:, None] / S, 8, axis=1), atol=1e-6)
    np.testing.assert_allclose(ep.action[:, 8:],
                               np.repeat((out.used_stamps_ns["/right_arm/command"]
                                          - base)[:, None] / S, 8, axis=1), atol=1e-6)
    # The grid starts once every stream has spoken (the commands start 50 ms late).
    firsts = [min(u) for u in out.used_stamps_ns.values()]
    assert times[0] >= max(firsts)
    # Frames: the image each sample shows is the latest one at or before it.
    k = np.round(ep.frames["head"][:, 0, 0, 0] / 5.0)
    assert np.all(np.diff(k) >= 0)
    assert ep.extra["success"] is False and ep.task == "stack"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=40),
       st.lists(st.integers(0, 10_000), min_size=1, max_size=40),
       st.floats(0.5, 50.0))
def test_alignment_never_looks_ahead_and_takes_the_latest(a, b, fps):
    streams = [Stream("a", np.array(a) * 1_000_000, np.arange(len(a))),
               Stream("b", np.array(b) * 1_000_000, np.arange(len(b)))]
    try:
        times, index = align(streams, fps)
    except ValueError as e:
        assert "do not overlap" in str(e)
        assert max(a) < min(b) or max(b) < min(a)
        return
    for s in streams:
        idx = index[s.name]
        assert np.all(idx >= 0)  # the grid starts when both have a sample
        assert np.all(s.stamps_ns[idx] <= times)
        later = np.minimum(idx + 1, len(s.stamps_ns) - 1)
        assert np.all((idx == len(s.stamps_ns) - 1) | (s.stamps_ns[later] > times))
    assert times[-1] <= min(max(a), max(b)) * 1_000_000
    np.testing.assert_array_equal(asof_indices(np.array([10, 20, 20, 30]), np.array([5, 10, 20, 25, 99])),
                                  [-1, 0, 2, 2, 3])


def test_a_batch_converts_the_good_bags_and_names_the_bad_ones(tmp_path):
    good = record_take(tmp_path / "takes" / "episode_000000", seconds=2.0)
    rejected = record_take(tmp_path / "takes" / "episode_000001", seconds=1.0, audit="rejected")
    no_contract = record_take(tmp_path / "takes" / "episode_000002", seconds=1.0, contract=False)
    corrupt = record_take(tmp_path / "takes" / "episode_000003", seconds=1.0)
    mcap = corrupt / "episode_000003.mcap"
    data = bytearray(mcap.read_bytes())
    data[len(data) // 3: len(data) // 3 + 4000] = b"\xff" * 4000
    mcap.write_bytes(bytes(data))
    second = record_take(tmp_path / "takes" / "episode_000004", seconds=1.5, seed=1)

    out = tmp_path / "dataset"
    report = convert_bags([good, rejected, no_contract, corrupt, second], out, fps=10.0)
    assert [name for name, _ in report.written] == [str(good), str(second)]
    assert report.skipped == [(str(rejected), "rejected by the capture audit")]
    failed = dict(report.failed)
    assert set(failed) == {str(no_contract), str(corrupt)}
    assert failed[str(no_contract)].startswith(f"{no_contract}: episode.yaml has no robot contract")
    assert failed[str(corrupt)].startswith(str(corrupt))
    assert list_episodes(out) == [0, 1]
    info = read_info(out)
    assert info.embodiment == "rm75_bimanual" and info.cameras == {"head": (24, 32)}
    assert EpisodeReader(out, 1).task == "stack"
    assert (out / STATS_FILE).is_file()

    run = subprocess.run([sys.executable, "-m", "ate_core.data.convert", str(tmp_path / "takes"),
                          "--out", str(tmp_path / "cli")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1  # two takes failed
    assert "2 converted, 1 skipped, 2 failed" in run.stdout, run.stdout + run.stderr


def test_a_kinesthetic_take_needs_action_from_state(tmp_path):
    bag = tmp_path / "episode_000000"
    streams = {t: s for t, s in recorded_streams(CFG).items() if s.role == "state"}
    writer = EpisodeBagWriter(bag, {"task": "t", "contract": {"streams": streams_to_dict(streams)}})
    for topic, s in streams.items():
        writer.add_topic(topic, s.msgtype)
        for k in range(50):
            writer.write(topic, k, joint_msg(s.joints, k * S // 100, k))
    writer.close({})
    with pytest.raises(ConversionError, match="no command stream for the left arm"):
        bag_to_episode(bag, 10.0)
    ep = bag_to_episode(bag, 10.0, action_from="state").episode
    np.testing.assert_array_equal(ep.action, ep.state)
