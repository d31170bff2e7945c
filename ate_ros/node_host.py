"""Running nodes: a node executable's ``main`` (:func:`run_nodes`), and several nodes in one
process for the tests (:class:`NodeHost`: one context, one executor, one named spin thread).

Each host has its own rclpy Context (and so its own DDS participant set and ROS domain), which
is what lets tests run side by side without hearing each other. The robot runs every node in a
process of its own (``ros2 launch`` and ``ate_bringup``), each through :func:`run_nodes`.

The executor is single-threaded on purpose: rclpy's MultiThreadedExecutor (Jazzy) spends about
2 ms of CPU per callback and let a 400 Hz joint-state stream starve everything else in the
process (measured: 22 of 400 messages/s delivered at 114 % CPU, against 366/s at 21 % with the
single-threaded one). Callbacks must therefore never block; long work goes to a named thread.

A node executable spins rclpy's EventsExecutor (``rclpy.experimental``; the Jazzy rclpy this
project installs, 7.1.5, has it), which waits and dispatches in C++ instead of rebuilding a
Python wait set for every message: 0.15 ms of CPU per joint-state message against 0.37 ms (two
200 Hz streams into one process, this machine). Across the stack on the twin that is a quarter
of the two cores (idle: 118 % -> 92 %; the supervisor 23 % -> 10 %), which is what the policy
needs to answer in time (``./run.sh`` inference latency p50 0.94 s -> 0.24 s). An rclpy without
it gets the single-threaded executor. The test hosts (:class:`NodeHost`) keep the
single-threaded one.
"""

from __future__ import annotations

import faulthandler
import gc
import signal
import threading
from typing import Callable, List, Optional, Sequence, TypeVar

import rclpy
from rclpy.context import Context
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from ate_ros.signals import setting

N = TypeVar("N", bound=Node)

#: How long a thread woken by I/O may wait for the GIL (Python's default is 5 ms: half a
#: control period). Lower means a little more switching overhead for much shorter tails.
GIL_SWITCH_INTERVAL_S = 0.0005

#: Longest time a host's executor thread takes to see that it is to stop (``NodeHost.close``).
SPIN_POLL_S = 0.05
#: Longest time a node executable takes to notice SIGINT or SIGTERM (see ``spin_nodes``).
SIGNAL_POLL_S = 0.1
#: A shutdown still running after this long dumps every thread's stack to stderr (launch
#: escalates SIGINT to SIGTERM after 5 s).
SHUTDOWN_DUMP_S = 4.0


class NodeHost:
    def __init__(self, domain_id: Optional[int] = None, name: str = "ate") -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.executor = SingleThreadedExecutor(context=self.context)
        self._nodes: List[Node] = []
        self._closed = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=f"{name}-executor", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        # Not executor.spin(): shutting the executor down from another thread destroys its guard
        # condition under a callback that is finishing (rclpy's InvalidHandle, in this thread).
        # The loop ends between two callbacks instead, and the executor is shut down after it.
        try:
            while not self._stopping.is_set() and self.context.ok():
                self.executor.spin_once(timeout_sec=SPIN_POLL_S)
        except ExternalShutdownException:
            pass

    def add(self, node: N) -> N:
        """Spin an already created node (it must use this host's context)."""
        self._nodes.append(node)
        self.executor.add_node(node)
        return node

    def start(self, factory: Callable[..., N], *args, **kwargs) -> N:
        """Create a node in this host's context and spin it."""
        return self.add(factory(*args, context=self.context, **kwargs))

    def node(self, name: str) -> Node:
        """A plain node (for test probes and small helpers)."""
        return self.start(Node, name)

    @property
    def nodes(self) -> List[Node]:
        return list(self._nodes)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop spinning, destroy every node, shut the context down; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self.executor.wake()
        self._thread.join(timeout_s)
        self.executor.shutdown(timeout_sec=timeout_s)
        for node in reversed(self._nodes):
            node.destroy_node()
        self._nodes.clear()
        rclpy.try_shutdown(context=self.context)
        if self._thread.is_alive():
            raise RuntimeError(f"executor thread {self._thread.name} did not stop in {timeout_s} s")

    def __enter__(self) -> "NodeHost":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def node_executor() -> Executor:
    """The executor of a node executable: rclpy's EventsExecutor where this rclpy has it (see
    the module's docstring), else the single-threaded one."""
    try:
        from rclpy.experimental.events_executor import EventsExecutor
    except ImportError:
        return SingleThreadedExecutor()
    return EventsExecutor()


def run_nodes(make_nodes: Callable[[], List[Node]],
              args: Optional[Sequence[str]] = None) -> None:
    """``main()`` of a node executable: init, make the nodes, spin them until SIGINT or SIGTERM,
    then destroy them cleanly and return (exit status 0).

    The signals are this function's from the first instruction on, before rclpy starts and
    before the nodes are made (loading a model or connecting an arm takes seconds): a signal
    that comes meanwhile ends the process as cleanly as one that comes later, never with a
    traceback, and is never lost (rclpy's handler, had it been installed, would have shut the
    context down under a node still being made, and that node then ran on, deaf to the signal).

    rclpy's own handler would also shut the context down from another thread the moment the
    signal comes, under the running executor: a message take under way then fails inside rclpy
    (a ``RuntimeError`` from ``take_message``: the joint-state aggregator exited 1 on 2 of 16
    SIGINT shutdowns), and a node can no longer talk while it shuts down (the supervisor telling
    the arms to stop). Here the signal only asks the spin to end: the loop ends between two
    callbacks, the nodes are destroyed while the context is still up, and the context is shut
    down last. Python runs a signal handler only once the main thread is back in the
    interpreter, not inside rcl's wait, hence the bounded wait of ``SIGNAL_POLL_S``.

    Full garbage collections over everything imported by then (rclpy, numpy, torch, the SDK)
    pause every thread for tens of ms: long enough to look like a silent controller or a missed
    control tick. Moving those objects out of the collector's reach first keeps pauses short.
    """
    stop = threading.Event()
    previous = {signum: signal.signal(signum, setting(stop))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    nodes: List[Node] = []
    executor: Optional[Executor] = None
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        nodes = make_nodes()
        gc.collect()
        gc.freeze()
        executor = node_executor()
        for node in nodes:
            executor.add_node(node)
        while not stop.is_set() and executor.context.ok():
            executor.spin_once(timeout_sec=SIGNAL_POLL_S)
    except ExternalShutdownException:
        pass  # rclpy shut down by someone else
    finally:
        # A shutdown that hangs in rclpy's C code cannot run Python signal handlers, so SIGTERM
        # is lost on it and launch ends it with SIGKILL. Rare (a joint-state aggregator, a
        # camera node and a recorder under load, each once, with nodes taken out of the
        # executor before being destroyed and with them destroyed first): every thread's stack
        # goes to stderr after SHUTDOWN_DUMP_S, to show where.
        faulthandler.dump_traceback_later(SHUTDOWN_DUMP_S, exit=False)
        try:
            for node in nodes:
                node.destroy_node()
            if executor is not None:
                executor.shutdown(timeout_sec=0)
            rclpy.try_shutdown()
        finally:
            faulthandler.cancel_dump_traceback_later()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
