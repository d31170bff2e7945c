"""The test infrastructure itself: isolated domains, and nothing left running after a test."""

from __future__ import annotations

import os
import time

import pytest
from std_msgs.msg import String

from ate_ros.node_host import NodeHost
from conftest import next_domain_id

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_closing_a_host_releases_its_dds_participants():
    # DDS participants live in native threads (invisible to `threading`); count the process's.
    with NodeHost(domain_id=next_domain_id()) as warmup:
        warmup.node("warmup")  # loads the RMW and its process-wide threads once
    baseline = _native_threads()
    for _ in range(3):
        with NodeHost(domain_id=next_domain_id()) as host:
            pub = host.node("talker").create_publisher(String, "/chatter", 10)
            host.node("listener").create_subscription(String, "/chatter", lambda m: None, 10)
            assert _native_threads() > baseline
            pub.publish(String(data="x"))
    deadline = time.monotonic() + 3.0
    while _native_threads() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _native_threads() <= baseline


def test_each_test_gets_its_own_domain(ros):
    assert ros.context.get_domain_id() == ros.domain_id
    assert next_domain_id() != ros.domain_id
