"""A take without ROS: the capture audit's arithmetic, the writer thread that never blocks a
callback, the numbering of takes, and a take that cannot be written."""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from ate_core.data.audit import AuditRules, audit_episode
from ate_core.data.bag import EPISODE_FILE, BagError, BagReader
from ate_core.data.take import Take, TakeError, next_episode_path

S = 1_000_000_000


def test_the_audit_counts_rates_and_gaps_with_the_take_edges():
    cam = [int(i * S / 30) for i in range(1, 30 * 9)]  # 30 Hz, stops at 9 s of a 10 s take
    arm = [int(i * S / 100) for i in range(1000)]
    audit = audit_episode({"/cam": cam, "/arm": arm, "/chunk": [5 * S]}, 0, 10 * S,
                          {"/cam": 30.0, "/arm": 100.0, "/missing": 10.0}, AuditRules(0.8, 0.5))
    by = {t.topic: t for t in audit.topics}
    assert by["/arm"].count == 1000 and by["/arm"].rate_hz == pytest.approx(100.0)
    assert by["/arm"].largest_gap_s == pytest.approx(0.01)
    assert by["/cam"].largest_gap_s == pytest.approx(10 - 269 / 30)  # the last second counts
    assert by["/chunk"].expected_hz is None and by["/chunk"].largest_gap_s == pytest.approx(5.0)
    assert audit.verdict == "flagged"
    assert audit.problems == ["/cam: a gap of 1.03 s (at most 0.5 s)",
                              "/missing: nothing received (expected 10 Hz)"]
    slow = audit_episode({"/arm": arm[::2]}, 0, 10 * S, {"/arm": 100.0}, AuditRules(0.9, 0.5, True))
    assert slow.verdict == "rejected"
    assert slow.problems == ["/arm: 50.0 Hz, below 0.9 of the expected 100 Hz"]
    fine = audit_episode({"/arm": arm}, 0, 10 * S, {"/arm": 100.0})
    assert fine.verdict == "ok" and fine.problems == []
    with pytest.raises(ValueError, match="before start"):
        audit_episode({}, 10, 5, {})


def test_a_take_writes_from_many_threads_in_order_per_thread(tmp_path):
    take = Take(tmp_path / "episode_000000", {"task": "t"},
                {"/a": "std_msgs/msg/String", "/b": "std_msgs/msg/String"},
                start_ns=0, flush_period_s=0.05)

    def cdr(text: str) -> bytes:  # a std_msgs/String in CDR, little-endian
        raw = text.encode() + b"\0"
        return b"\x00\x01\x00\x00" + len(raw).to_bytes(4, "little") + raw

    def send(topic: str) -> None:
        for i in range(500):
            assert take.put(topic, i, cdr(f"{topic}{i}"))

    threads = [threading.Thread(target=send, args=(t,)) for t in ("/a", "/b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    path, audit = take.stop(1000, {"success": True})
    assert not take.put("/a", 1001, cdr("late"))  # a stopped take takes nothing more
    assert audit.verdict == "ok"
    with BagReader(path) as reader:
        for topic in ("/a", "/b"):
            got = [m.data for _, _, m in reader.messages([topic])]
            assert got == [f"{topic}{i}" for i in range(500)]
    info = yaml.safe_load((path / EPISODE_FILE).read_text())
    assert info["message_counts"] == {"/a": 500, "/b": 500} and info["max_backlog"] >= 1


def test_takes_are_numbered_past_the_highest_and_an_unwritable_one_is_named(tmp_path):
    assert next_episode_path(tmp_path / "none") == tmp_path / "none" / "episode_000000"
    for name in ("episode_000003", "episode_000010", "notes", "episode_12"):
        (tmp_path / name).mkdir()
    assert next_episode_path(tmp_path).name == "episode_000011"
    with pytest.raises(BagError, match="unknown message type"):
        Take(tmp_path / "episode_000011", {}, {"/x": "no_msgs/msg/X"}, start_ns=0)
    assert not (tmp_path / "episode_000011").exists()
    with pytest.raises(BagError, match="exists already"):
        Take(tmp_path / "episode_000010", {}, {}, start_ns=0)


def test_a_failing_disk_is_reported_at_stop(tmp_path):
    take = Take(tmp_path / "episode_000000", {}, {"/a": "std_msgs/msg/String"}, start_ns=0,
                flush_period_s=0.05)
    take._writer._writer.storage.bio.close()  # the disk went away under the writer
    assert take.put("/a", 1, b"\x00\x01\x00\x00\x01\x00\x00\x00\x00")
    deadline = time.monotonic() + 10.0
    while take.failure is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert take.failure is not None and "closed file" in take.failure
    assert not take.put("/a", 2, b"")  # nothing more is accepted
    with pytest.raises(TakeError, match="writing failed: ValueError"):
        take.stop(2, {})
