"""Real-time scheduling for the threads that keep the robot's timing, where the system permits.

A SCHED_FIFO thread preempts every normal thread on its core the moment it wakes, as
ros2_control's controller manager does for its loop. What must not wait for a core: the
supervisor's tick (``supervisor.realtime_priority``) and each arm driver's process, whose
threads receive the controller's state pushes and forward the commands
(``arms.<side>.realtime_priority``). A busy robot PC otherwise delays a push by tens of
milliseconds: long enough to stop the commands of an arm (a stale link).

A real-time thread must not share an interpreter lock with normal threads that do heavy work
(cameras, a model): while it waits for the lock, the thread holding it runs at normal priority
and is itself preempted (measured: arms stale 20 times in 25 s with everything in one process).
That is why the arm drivers, the supervisor, the cameras and the model run in processes of
their own.
"""

from __future__ import annotations

import os
from typing import Callable

#: What to tell whoever may not raise priorities (a container without CAP_SYS_NICE, a user
#: without an rtprio limit).
HOW_TO_ALLOW = ("allow it with an rtprio limit (e.g. '@realtime - rtprio 99' in "
                "/etc/security/limits.conf, as for ros2_control)")


def raise_to_fifo(priority: int, warn: Callable[[str], None], what: str) -> bool:
    """SCHED_FIFO ``priority`` for the calling thread (and every thread it starts from now on,
    which inherit it); False, with one warning through ``warn``, where it is not permitted.
    ``priority`` 0 keeps normal scheduling."""
    if priority <= 0:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # 0: this thread
    except (PermissionError, OSError, AttributeError) as e:
        warn(f"{what} at normal priority: SCHED_FIFO {priority} refused ({e}); {HOW_TO_ALLOW}")
        return False
    return True


def raise_process_to_fifo(priority: int, warn: Callable[[str], None], what: str) -> bool:
    """SCHED_FIFO ``priority`` for every thread of this process, those that exist now (the DDS
    threads rclpy started, a C library's threads) and, through the calling thread, those started
    later. For a process whose every thread serves the robot's timing (an arm driver, the
    supervisor): a normal-priority thread of it that holds the interpreter lock when a
    preempting process comes would otherwise keep its real-time threads waiting."""
    if not raise_to_fifo(priority, warn, what):
        return False
    param = os.sched_param(priority)
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setscheduler(int(tid), os.SCHED_FIFO, param)
        except (PermissionError, ProcessLookupError, OSError):
            pass  # a thread that ended meanwhile; permission was granted for the caller above
    return True


def is_fifo() -> bool:
    """Whether the calling thread runs under SCHED_FIFO."""
    return os.sched_getscheduler(0) == os.SCHED_FIFO
