"""One take being recorded: messages in from the recorder's callbacks, a bag out, never a stall.

The recorder node's subscriptions hand each message's bytes to :meth:`Take.put`, which only
appends to a queue; one worker thread (``take-writer``) owns the :class:`EpisodeBagWriter`,
writes, flushes at least every ``flush_period_s`` (the most a crash can lose) and, at
:meth:`Take.stop`, drains the queue, audits the take and closes the bag. So a slow disk, a
zstd chunk or an fsync delays the writer, never a subscription callback, and nothing that
arrived before ``stop`` is left out. :meth:`Take.discard` removes the bag whatever state it
is in. No ROS here: the node stamps receive times, the tests call the same code directly.
"""

from __future__ import annotations

import queue
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ate_core.data.audit import AuditRules, EpisodeAudit, audit_episode
from ate_core.data.bag import BagError, EpisodeBagWriter

__all__ = ["Take", "TakeError", "next_episode_path", "free_disk_gb", "EPISODE_PREFIX"]

EPISODE_PREFIX = "episode_"
_EPISODE_DIR = re.compile(rf"^{EPISODE_PREFIX}(\d{{6}})$")
_STOP = object()


class TakeError(RuntimeError):
    """A take that cannot start or finish; says why."""


def next_episode_path(root: Union[str, Path]) -> Path:
    """``root/episode_NNNNNN``, one past the highest there (any status, discards leave none)."""
    root = Path(root)
    taken = [int(m.group(1)) for p in root.iterdir() if (m := _EPISODE_DIR.match(p.name))] \
        if root.is_dir() else []
    return root / f"{EPISODE_PREFIX}{max(taken, default=-1) + 1:06d}"


def free_disk_gb(path: Union[str, Path]) -> float:
    """Free space on the disk holding ``path`` (or its nearest existing parent), GB."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free / 1e9


class Take:
    """A take, recording from construction to :meth:`stop` or :meth:`discard`.

    ``topics``: topic -> ROS 2 message type, every topic that may be put; ``expected_hz``: the
    audited ones (see :func:`ate_core.data.audit.audit_episode`); ``info`` goes into
    episode.yaml at once (task, operator, the robot contract). Thread-safe: ``put`` from any
    callback thread, ``stop``/``discard`` from another.
    """

    def __init__(self, path: Union[str, Path], info: Mapping[str, Any],
                 topics: Mapping[str, str], *, start_ns: int, flush_period_s: float = 0.5,
                 expected_hz: Optional[Mapping[str, float]] = None,
                 rules: AuditRules = AuditRules()) -> None:
        if not flush_period_s > 0:
            raise ValueError(f"Take: flush_period_s must be > 0, got {flush_period_s}")
        self.path = Path(path)
        self.start_ns = int(start_ns)
        self._expected = dict(expected_hz or {})
        self._rules = rules
        self._flush_period_s = float(flush_period_s)
        self._writer = EpisodeBagWriter(self.path, info)  # BagError if it cannot
        try:
            for topic, msgtype in topics.items():
                self._writer.add_topic(topic, msgtype)
        except BagError:
            self._writer.discard()
            raise
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._open = True
        self._receive: Dict[str, List[int]] = {t: [] for t in topics}
        self.queued = 0
        self.written = 0
        self.max_backlog = 0
        self.failure: Optional[str] = None
        self._thread = threading.Thread(target=self._run, name="take-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callbacks

    def put(self, topic: str, receive_ns: int, data: bytes) -> bool:
        """Queue one message; False once the take is stopping (or for an unknown topic)."""
        with self._lock:
            if not self._open or topic not in self._receive:
                return False
            self._receive[topic].append(int(receive_ns))
            self.queued += 1
            backlog = self.queued - self.written
            if backlog > self.max_backlog:
                self.max_backlog = backlog
        self._queue.put((topic, int(receive_ns), data))
        return True

    def received(self, topic: str) -> int:
        """How many messages of ``topic`` this take has queued so far."""
        with self._lock:
            return len(self._receive.get(topic, ()))

    @property
    def bytes_written(self) -> int:
        return self._writer.bytes_written

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        next_flush = time.monotonic() + self._flush_period_s
        try:
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, next_flush - time.monotonic()))
                except queue.Empty:
                    item = None
                if item is _STOP:
                    return
                if item is not None:
                    topic, stamp, data = item
                    self._writer.write(topic, stamp, data)
                    self.written += 1
                if time.monotonic() >= next_flush:
                    self._writer.flush()
                    next_flush = time.monotonic() + self._flush_period_s
        except Exception as e:  # noqa: BLE001 - the disk filled, the folder vanished: say so at stop
            self.failure = f"{type(e).__name__}: {e}"
            with self._lock:
                self._open = False

    def _finish_writing(self, timeout_s: float) -> None:
        with self._lock:
            self._open = False
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TakeError(f"{self.path}: the writer did not finish within {timeout_s:g} s "
                            f"({self.queued - self.written} messages still queued)")

    # ------------------------------------------------------------------ end

    def stop(self, stop_ns: int, outcome: Mapping[str, Any], timeout_s: float = 60.0
             ) -> Tuple[Path, EpisodeAudit]:
        """Write everything queued, audit, and close the bag with ``outcome`` (success, ...)
        and the audit in episode.yaml. Returns the bag's folder and the audit."""
        self._finish_writing(timeout_s)
        if self.failure is not None:
            raise TakeError(f"{self.path}: writing failed: {self.failure}; the bag holds what "
                            "was flushed before (python -m ate_core.data.bag recover)")
        with self._lock:
            receive = {t: list(v) for t, v in self._receive.items()}
        audit = audit_episode(receive, self.start_ns, max(int(stop_ns), self.start_ns),
                              self._expected, self._rules)
        try:
            self._writer.close({**dict(outcome), "audit": audit.to_dict(),
                                "duration_s": round(audit.duration_s, 3),
                                "max_backlog": self.max_backlog})
        except (OSError, ValueError) as e:
            raise TakeError(f"{self.path}: closing the bag failed: {e}; the bag holds what was "
                            "flushed before (python -m ate_core.data.bag recover)") from None
        return self.path, audit

    def discard(self, timeout_s: float = 60.0) -> None:
        """Drop the take: its folder is removed, whatever was written."""
        try:
            self._finish_writing(timeout_s)
        finally:
            self._writer.discard()
