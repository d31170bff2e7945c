"""Fault injection into an emulated RealMan controller: which faults exist, and the control port
that switches them (and reads the emulator's state) from another process.

The faults are what a driver must survive on the robot: a dropped or refused TCP connection, a
state push that stops or arrives late, a latched system error, and a hung controller. While
"unresponsive" the controller keeps its connections open but logs commands without executing or
answering them, and sends no completion events; the UDP push goes on unless it is paused too.

The control port (`--control-port`) takes text lines over TCP and answers each with one JSON
line: `ping`, `drop`, `refuse on|off`, `push on|off`, `push_delay <ms>`, `error <code>`
(decimal or 0x..), `clear_errors`, `unresponsive on|off`, `state`, `commands [name]`,
`clear_commands`, `drag on|off` (drag teaching switched at the teach pendant: the push's arm
status says it, the SDK is not told) and `hand <deg> ...` (one angle per joint: while drag
teaching is on, a hand pushes the arm there; `ok` is false otherwise). `ate_ros.sim.bimanual` reads a running
emulator's state through it.
"""

from __future__ import annotations

import json
import math
import selectors
import socket
import threading
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Protocol

from ate_ros.sim.realman_protocol import Json, ReceivedCommand


@dataclass
class Faults:
    """The faults injected now; the server reads them under its lock."""

    #: No state push goes out (the push settings are kept).
    push_paused: bool = False
    #: Each push packet goes out this late; its content is still from its own tick.
    push_delay_s: float = 0.0
    #: A hung controller: requests are logged, not executed or answered.
    unresponsive: bool = False
    #: New TCP connections are accepted and closed at once.
    refuse_connections: bool = False


class FaultTarget(Protocol):
    """What the control port acts on: the emulator."""

    def drop_connections(self) -> int: ...

    def set_refuse_connections(self, refuse: bool) -> None: ...

    def pause_push(self) -> None: ...

    def resume_push(self) -> None: ...

    def set_push_delay_ms(self, delay_ms: float) -> None: ...

    def raise_error(self, code: int) -> None: ...

    def clear_errors(self) -> None: ...

    def set_unresponsive(self, unresponsive: bool) -> None: ...

    def state_summary(self) -> Json: ...

    def commands(self, name: Optional[str] = None) -> List[ReceivedCommand]: ...

    def clear_commands(self) -> None: ...

    def hand_guide(self, q_rad: List[float]) -> bool: ...

    def pendant_drag(self, on: bool) -> bool: ...


def control_reply(target: FaultTarget, line: str) -> Json:
    """Run one control-port line on `target`; its reply (`ok` false with an `error` when the
    line is not understood)."""
    words = line.strip().split()
    if not words:
        return {"ok": False, "error": "empty command"}
    cmd, args = words[0].lower(), words[1:]

    def on_off() -> bool:
        if not args or args[0].lower() not in ("on", "off"):
            raise ValueError(f"{cmd} needs on|off")
        return args[0].lower() == "on"

    try:
        if cmd == "ping":
            return {"ok": True}
        if cmd == "drop":
            return {"ok": True, "dropped": target.drop_connections()}
        if cmd == "refuse":
            target.set_refuse_connections(on_off())
        elif cmd == "push":
            if on_off():
                target.resume_push()
            else:
                target.pause_push()
        elif cmd == "push_delay":
            target.set_push_delay_ms(float(args[0]))
        elif cmd == "error":
            target.raise_error(int(args[0], 0))
        elif cmd == "clear_errors":
            target.clear_errors()
        elif cmd == "unresponsive":
            target.set_unresponsive(on_off())
        elif cmd == "state":
            return {"ok": True, "state": target.state_summary()}
        elif cmd == "commands":
            name = args[0] if args else None
            return {"ok": True, "commands": [asdict(c) for c in target.commands(name)]}
        elif cmd == "clear_commands":
            target.clear_commands()
        elif cmd == "drag":
            on = on_off()
            if not target.pendant_drag(on):
                return {"ok": False, "error": "drag teaching was not on" if not on
                        else "the arm is not powered"}
        elif cmd == "hand":
            if not args:
                raise ValueError("hand needs one angle (deg) per joint")
            moved = target.hand_guide([math.radians(float(a)) for a in args])
            return {"ok": moved, **({} if moved else {"error": "not drag teaching, or a wrong joint count"})}
        else:
            return {"ok": False, "error": f"unknown control command {cmd!r}"}
    except (IndexError, ValueError) as exc:
        return {"ok": False, "error": f"{cmd}: {exc or 'missing argument'}"}
    return {"ok": True}


class ControlServer:
    """The control port: listens on (ip, port) (0: any; the bound one is in `port`) and answers
    each line with `control_reply`. The emulator runs `serve` in a thread of its own."""

    def __init__(self, target: FaultTarget, ip: str, port: int) -> None:
        self._target = target
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((ip, port))
            self._sock.listen(4)
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]

    def serve(self, stop: threading.Event, poll_s: float) -> None:
        """Serve clients until `stop` is set, noticed within `poll_s`."""
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, None)
        buffers: Dict[socket.socket, bytes] = {}
        try:
            while not stop.is_set():
                for key, _ in sel.select(timeout=poll_s):
                    if key.data is None:
                        try:
                            client, _ = self._sock.accept()
                        except OSError:
                            continue
                        client.setblocking(False)
                        buffers[client] = b""
                        sel.register(client, selectors.EVENT_READ, "client")
                        continue
                    client = key.fileobj  # type: ignore[assignment]
                    try:
                        data = client.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(client)
                        buffers.pop(client, None)
                        client.close()
                        continue
                    buffers[client] += data
                    while b"\n" in buffers[client]:
                        line, buffers[client] = buffers[client].split(b"\n", 1)
                        reply = control_reply(self._target, line.decode(errors="replace"))
                        try:
                            client.settimeout(1.0)  # a client that never reads cannot hang us
                            client.sendall((json.dumps(reply) + "\n").encode())
                            client.setblocking(False)
                        except OSError:
                            pass
        finally:
            for client in list(buffers):
                client.close()
            sel.close()

    def close(self) -> None:
        self._sock.close()
