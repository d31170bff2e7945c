"""Choosing ports for emulated controllers on one machine."""

from __future__ import annotations

import random
import socket

#: Above Linux's ephemeral range (32768-60999) and above FastDDS's ports for domains 1-200.
PUSH_PORT_RANGE = range(61000, 65500)


def free_push_port() -> int:
    """A free UDP port for a controller's state push.

    RealMan's SDK binds the push port for the life of its process. An ephemeral port that is
    free now can meanwhile be bound by a DDS participant (FastDDS binds one per participant,
    with address reuse), and the kernel then hands the pushes to it; ports above the ephemeral
    range are never chosen that way.
    """
    for port in random.Random().sample(PUSH_PORT_RANGE, 200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free UDP port in {PUSH_PORT_RANGE.start}-{PUSH_PORT_RANGE.stop - 1}")
