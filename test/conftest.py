"""Shared fixtures: an isolated real ROS 2 world per test, and leak checks.

Every test that asks for ``ros`` gets its own rclpy Context on its own ROS_DOMAIN_ID, with
discovery kept on loopback, and its nodes spinning in one executor thread that is stopped and
joined afterwards. Domains start at a random offset per pytest process so two suites running
on one machine (or xdist workers) do not hear each other.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

# Before anything imports rclpy: DDS discovery on loopback only, logs out of $HOME.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="ate-ros-log-"))

from ros_harness import RosHarness  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# FastDDS maps domain d to UDP ports 7400 + 250 d; stay well inside the usable range.
_DOMAINS = list(range(1, 101))
_domain_offset = random.SystemRandom().randrange(len(_DOMAINS))
_domain_counter = 0


def next_domain_id() -> int:
    global _domain_counter
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    domain = _DOMAINS[(_domain_offset + 37 * index + _domain_counter) % len(_DOMAINS)]
    _domain_counter += 1
    return domain


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def ros() -> Iterator[RosHarness]:
    """A running executor in a fresh context and domain; closed and checked after the test."""
    harness = RosHarness(domain_id=next_domain_id())
    try:
        yield harness
    finally:
        harness.close()
    assert not harness.context.ok(), "the test's rclpy context is still alive"


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every Python thread a test starts must be gone shortly after it ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"threads leaked by the test: {[t.name for t in leaked]}"
