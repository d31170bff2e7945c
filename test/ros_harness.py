"""Test-side helpers over NodeHost: wait for conditions, collect messages from a topic."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, Type


from ate_ros.node_host import NodeHost


class Inbox:
    """Thread-safe list of received messages with their receive time (monotonic, s)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: List[tuple] = []

    def put(self, msg: Any) -> None:
        with self._lock:
            self._items.append((time.monotonic(), msg))

    @property
    def messages(self) -> List[Any]:
        with self._lock:
            return [m for _, m in self._items]

    @property
    def times(self) -> List[float]:
        with self._lock:
            return [t for t, _ in self._items]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class RosHarness(NodeHost):
    def __init__(self, domain_id: int) -> None:
        super().__init__(domain_id=domain_id, name=f"test-domain{domain_id}")
        self.domain_id = domain_id
        self._probe = None

    @property
    def probe(self):
        """A plain node for the test's own publishers and subscriptions."""
        if self._probe is None:
            self._probe = self.node("test_probe")
        return self._probe

    def subscribe(self, msg_type: Type, topic: str, qos: Any = 10) -> Inbox:
        inbox = Inbox()
        self.probe.create_subscription(msg_type, topic, inbox.put, qos)
        return inbox

    def publisher(self, msg_type: Type, topic: str, qos: Any = 10):
        return self.probe.create_publisher(msg_type, topic, qos)

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition",
                 poll_s: float = 0.01) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(poll_s)

    def wait_for_subscribers(self, publisher, count: int = 1, timeout_s: float = 10.0) -> None:
        self.wait_for(lambda: publisher.get_subscription_count() >= count, timeout_s,
                      f"{count} subscriber(s) on {publisher.topic_name}")

    def call(self, srv_type: Type, name: str, request: Any = None, timeout_s: float = 10.0):
        """Call a service from the probe node and return its response."""
        client = self.probe.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise AssertionError(f"service {name} did not appear in {timeout_s} s")
            future = client.call_async(request if request is not None else srv_type.Request())
            self.wait_for(future.done, timeout_s, f"the answer of {name}")
            return future.result()
        finally:
            self.probe.destroy_client(client)
