"""Signal handlers that end a process's main loop safely, and children that end with their
parent."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from typing import Any, Callable

_PR_SET_PDEATHSIG = 1
# Resolved once here: a child must not load anything between fork and exec.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def setting(event: threading.Event) -> Callable[[int, Any], None]:
    """A signal handler that sets ``event``, for ``signal.signal``.

    Not ``event.set`` itself: Python runs a handler in the main thread between any two
    bytecodes, also inside an earlier handler's ``event.set()`` or inside ``event.wait()``,
    where that thread already holds the event's lock, and a second ``set`` there waits for it
    forever (seen: a supervisor that never exited after its bringup was killed, which signals
    every child). A short-lived thread sets it instead.
    """
    def handler(signum: int, frame: Any) -> None:
        threading.Thread(target=event.set, name="signal", daemon=True).start()
    return handler


def die_with_parent(parent_pid: int) -> None:
    """For a ``subprocess`` child between fork and exec (called from a ``preexec_fn``): SIGTERM
    when its parent ends, also if the parent ended before this took effect.

    Linux sends the signal when the *thread* that forked ends, so start such children from a
    thread that lives as long as they should (the main thread)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
