"""Signal handlers that end a process's main loop safely."""

from __future__ import annotations

import threading
from typing import Any, Callable


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
