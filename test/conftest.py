"""Shared fixtures: an isolated real ROS 2 world per test, and leak checks.

Every test that asks for ``ros`` gets its own rclpy Context on its own ROS_DOMAIN_ID, with
discovery kept on loopback, and its nodes spinning in one executor thread that is stopped and
joined afterwards. Domains start at a random offset per pytest process so two suites running
on one machine (or xdist workers) do not hear each other.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest

# Before anything imports rclpy: DDS discovery on loopback only, logs out of $HOME.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="ate-ros-log-"))

from ros_harness import RosHarness  # noqa: E402

from ate_ros.sim.ports import free_push_port  # noqa: E402

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


# ---- RealMan SDK resources shared by every test module of this process -----------------------
# The SDK never releases a UDP push port and listens on at most five per process, so tests
# reuse a few fixed push ports and tell emulators apart by their own loopback address.
_push_ports: Dict[int, int] = {}
_loopback_numbers = itertools.count(10)


def sdk_push_port(slot: int = 0) -> int:
    """A free UDP port, the same one for every call with this slot (slots 0-4 in use)."""
    if slot not in _push_ports:
        _push_ports[slot] = free_udp_port()
    return _push_ports[slot]


def next_loopback_ip() -> str:
    """A loopback address no other emulator of this process has used (127.0.x.y)."""
    n = next(_loopback_numbers)
    return f"127.0.{n // 200 + 1}.{n % 200 + 2}"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port() -> int:
    return free_push_port()


def _busy_loop_process() -> subprocess.Popen:
    """An unrelated process that keeps one core busy (at normal priority) until killed; it dies
    with the test session even if that is killed."""
    def die_with_parent() -> None:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=die_with_parent)


def pytest_report_header(config) -> str:
    if os.environ.get("ATE_TEST_LOAD") == "1":
        return "ATE_TEST_LOAD=1: one core kept busy by a background busy loop for the whole session"
    return ""


@pytest.fixture(scope="session", autouse=True)
def busy_core() -> Iterator[None]:
    """``ATE_TEST_LOAD=1``: run the session beside a busy loop, as on a robot PC (or a CI box)
    that has other work. Tests must hold there too: they wait for events, not for rates."""
    if os.environ.get("ATE_TEST_LOAD") != "1":
        yield
        return
    proc = _busy_loop_process()
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def pytest_sessionstart(session) -> None:
    # One intra-op torch thread: the policies are many small ops, and on a 2-core machine that
    # also runs DDS, the SDK and emulators, OpenMP's spinning workers made them many times slower.
    import torch
    torch.set_num_threads(1)
    # Imported modules (torch, rclpy, numpy) make full garbage collections take tens of ms,
    # long enough to look like a silent controller (50 ms link timeout) to an in-process
    # driver. Moving what exists now out of the collector's reach keeps pauses short.
    gc.collect()
    gc.freeze()


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def ros() -> Iterator[RosHarness]:
    """A running executor in a fresh context and domain; closed and checked after the test."""
    # Whatever earlier tests allocated (a training run leaves a large heap) would make the next
    # full collection pause every thread for 100+ ms: a silent controller to the arm drivers.
    gc.collect()
    gc.freeze()
    harness = RosHarness(domain_id=next_domain_id())
    try:
        yield harness
    finally:
        harness.close()
    assert not harness.context.ok(), "the test's rclpy context is still alive"


@pytest.fixture(autouse=True)
def torch_one_thread() -> Iterator[None]:
    """Every test starts with one torch thread, whatever an earlier test set (a policy runner
    sets the configured count): two OpenMP threads on two shared cores spin against each other."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
