"""What every benchmark in ``bench/`` shares: the header of its table, percentiles, CPU use,
and the processes under test.

A benchmark prints the machine, the Python and ROS it ran on, its exact command line and the
date (UTC) above its numbers, and writes the same header into its JSON, so a number quoted in
the README can always be traced to how it was taken.
"""

from __future__ import annotations

import ctypes
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, Iterable, List, Mapping, NoReturn, Optional, Sequence

from ate_ros.sim.ports import free_push_port


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ros_version() -> str:
    """``jazzy (rclpy 7.1.6, rmw_fastrtps_cpp)``: the distro comes from the wheel's name
    (``ros-<distro>-rclpy``) in a venv, or from ``ROS_DISTRO`` on a sourced ROS install."""
    distro, version = os.environ.get("ROS_DISTRO", ""), ""
    for dist in importlib.metadata.distributions():
        parts = (dist.metadata["Name"] or "").lower().replace("_", "-").split("-")
        if len(parts) == 3 and parts[0] == "ros" and parts[2] == "rclpy":
            distro, version = parts[1], dist.version
    rmw = os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp by default")
    return f"{distro or 'unknown distro'} (rclpy {version or '?'}, {rmw})"


def header(title: str) -> Dict[str, str]:
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return {
        "benchmark": title,
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "ros": ros_version(),
        "command": shlex.join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def print_header(head: Mapping[str, str]) -> None:
    print(head["benchmark"])
    for key in ("machine", "python", "ros", "command", "date"):
        print(f"  {key:<8} {head[key]}")


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary_ms(values_s: Sequence[float]) -> Dict[str, float]:
    """p50, p99 and max of durations in seconds, in ms."""
    return {"p50_ms": percentile(values_s, 50) * 1e3, "p99_ms": percentile(values_s, 99) * 1e3,
            "max_ms": (max(values_s) if values_s else float("nan")) * 1e3}


def gaps(times_s: Sequence[float]) -> List[float]:
    return [b - a for a, b in zip(times_s, times_s[1:])]


class CpuMeter:
    """CPU time of some processes (``/proc/<pid>/stat``) and of the whole machine
    (``/proc/stat``) between ``start()`` and ``percent()``."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._tick = os.sysconf("SC_CLK_TCK")
        self._t0: Optional[float] = None
        self._c0: Dict[str, float] = {}

    def _process_s(self, pid: int) -> float:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime

    def _machine(self) -> List[int]:
        with open("/proc/stat", encoding="ascii") as f:
            return [int(x) for x in f.readline().split()[1:]]

    def _sample(self) -> Dict[str, float]:
        out = {name: self._process_s(pid) for name, pid in self.pids.items()}
        m = self._machine()
        idle = m[3] + m[4]  # idle + iowait
        out["_busy"], out["_total"] = (sum(m) - idle) / self._tick, sum(m) / self._tick
        return out

    def start(self) -> None:
        self._c0, self._t0 = self._sample(), time.monotonic()

    def percent(self) -> Dict[str, float]:
        """% of one core per process, and ``machine``: % of all cores busy."""
        c1, wall = self._sample(), time.monotonic() - (self._t0 or 0.0)
        out = {name: 100.0 * (c1[name] - self._c0[name]) / wall for name in self.pids}
        out["machine"] = 100.0 * (c1["_busy"] - self._c0["_busy"]) / (c1["_total"] - self._c0["_total"])
        return out


def run_main(main: Callable[[], int], interrupted: str) -> NoReturn:
    """A bench script's ``__main__``: exit with ``main()``'s status, or with the message
    ``interrupted`` (status 1) on Ctrl-C."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(interrupted)


def write_json(path: str, head: Mapping[str, str], results: Mapping[str, object]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**head, "results": results}, f, indent=2, allow_nan=True)
        f.write("\n")


def fmt(values: Iterable[float], width: int = 8, digits: int = 2) -> str:
    return "".join(f"{v:{width}.{digits}f}" for v in values)


def free_port(ip: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A free port; UDP ones for controller state pushes (see ``free_push_port``)."""
    if kind == socket.SOCK_DGRAM:
        return free_push_port()
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # A benchmark killed outright (SIGKILL) must not leave its processes running (Linux only).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """The processes under test, output to ``<log_dir>/<name>.out``. ``stop`` sends SIGINT in
    reverse start order and kills what has not exited after the timeout. They run in their
    own sessions, so a Ctrl-C reaches only the benchmark, which then stops them in order."""

    def __init__(self, log_dir: str, env: Mapping[str, str]) -> None:
        self.log_dir, self.env = log_dir, dict(env)
        self.procs: Dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: Sequence[str]) -> None:
        with open(os.path.join(self.log_dir, f"{name}.out"), "w") as out:
            self.procs[name] = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                                env=self.env, start_new_session=True,
                                                preexec_fn=_die_with_parent)

    def tail(self, name: str, lines: int = 20) -> str:
        with open(os.path.join(self.log_dir, f"{name}.out"), errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.tail(name)}")

    def stop(self, timeout_s: float = 5.0) -> Dict[str, int]:
        """Exit codes by name; a clean shutdown on SIGINT is 0."""
        for name, p in reversed(list(self.procs.items())):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                print(f"{name} ignored SIGINT for {timeout_s} s; killed", file=sys.stderr)
                p.kill()
                p.wait()
        return {name: p.returncode for name, p in self.procs.items()}
