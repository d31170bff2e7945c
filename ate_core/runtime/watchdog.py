"""Watchdogs of the control loop: what has gone silent, for how long, and what to do about it.

Each input the supervisor depends on is timed by when it last *arrived* on the supervisor's own
clock (not by the sender's stamp), so a clock offset between machines can neither hide nor fake
a silence. Reactions follow the design's promise that any fault ends in a hold or a controlled
stop, never a jump:

==================  ===========================================  ==========
rule                 condition                                    reaction
==================  ===========================================  ==========
stale_joint_state    an arm's joint state older than               hold
                     ``joint_state_timeout_s``
lost_controller      an arm's joint state older than               stop
                     ``controller_timeout_s`` (the driver stops
                     publishing once its controller is lost)
stale_chunk          no chunk for ``chunk_timeout_s`` while        hold
                     engaged (the policy went silent)
stale_camera         a camera silent for ``camera_timeout_s``      hold
                     while engaged (the policy is blind)
stale_leader         a leader arm silent for                       hold
                     ``leader.timeout_s`` while teleoperating
leader_jump          a leader arm jumped (a sample further than    hold
                     ``leader.max_jump_rad`` from the one before)
                     less than ``leader.jump_hold_s`` ago
==================  ===========================================  ==========

What is watched depends on who commands: while the policy does (``engaged(now, POLICY)``), the
chunks and the cameras; while the leaders do (``engaged(now, TELEOP)``), the leader arms, and
neither chunks nor cameras (the operator sees the robot). The arms' joint states always.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from ate_core.robot.config import LeaderConfig, WatchdogConfig

__all__ = ["Fault", "Watchdogs", "HOLD", "STOP", "POLICY", "TELEOP"]

HOLD, STOP = "hold", "stop"
#: Who commands the arms while engaged: the policy's chunks, or the teleop leaders.
POLICY, TELEOP = "policy", "teleop"


@dataclass(frozen=True)
class Fault:
    rule: str
    source: str  # the arm, the camera, or "policy"
    age_s: float  # inf: never received
    reaction: str  # HOLD or STOP

    def __str__(self) -> str:
        if self.age_s == float("inf"):
            age = "never received"
        elif self.rule == "leader_jump":
            age = f"jumped {self.age_s:.3f} s ago"
        else:
            age = f"silent for {self.age_s:.3f} s"
        return f"{self.rule} ({self.source}: {age}) -> {self.reaction}"


class Watchdogs:
    """Last arrival time per input; :meth:`check` lists every fault at ``now_ns``."""

    def __init__(self, config: WatchdogConfig, arms: Sequence[str], cameras: Sequence[str],
                 leader: LeaderConfig = LeaderConfig()) -> None:
        self.config = config
        self.leader_config = leader
        self.arms = tuple(arms)
        self.cameras = tuple(cameras)
        self._joint_state: Dict[str, Optional[int]] = {a: None for a in self.arms}
        self._camera: Dict[str, Optional[int]] = {c: None for c in self.cameras}
        self._leader: Dict[str, Optional[int]] = {a: None for a in self.arms}
        self._leader_jump: Dict[str, Optional[int]] = {a: None for a in self.arms}
        self._chunk: Optional[int] = None
        self._engaged_at: Optional[int] = None
        self._source = POLICY

    def joint_state(self, arm: str, now_ns: int) -> None:
        self._joint_state[arm] = now_ns

    def camera(self, name: str, now_ns: int) -> None:
        if name in self._camera:
            self._camera[name] = now_ns

    def chunk(self, now_ns: int) -> None:
        self._chunk = now_ns

    def leader(self, arm: str, now_ns: int, jumped: bool = False) -> None:
        """A leader sample of ``arm`` arrived (``jumped``: too far from the one before)."""
        self._leader[arm] = now_ns
        if jumped:
            self._leader_jump[arm] = now_ns

    def engaged(self, now_ns: Optional[int], source: str = POLICY) -> None:
        """Start (or, with None, stop) timing the command source (the policy and cameras, or
        the leaders): the clock of a silent policy starts at engage, not at the last chunk of a
        previous session."""
        if source not in (POLICY, TELEOP):
            raise ValueError(f"Watchdogs.engaged: source {source!r} is not {POLICY!r} or {TELEOP!r}")
        self._engaged_at = now_ns
        self._source = source

    def leader_faults(self, now_ns: int) -> Tuple[Fault, ...]:
        """The leaders' faults at ``now_ns``, engaged or not (teleop refuses to engage on them)."""
        cfg = self.leader_config
        faults = []
        for arm in self.arms:
            age = self._age_s(self._leader[arm], now_ns)
            if age > cfg.timeout_s:
                faults.append(Fault("stale_leader", arm, age, HOLD))
            jump = self._leader_jump[arm]
            if jump is not None and (now_ns - jump) * 1e-9 < cfg.jump_hold_s:
                faults.append(Fault("leader_jump", arm, self._age_s(jump, now_ns), HOLD))
        return tuple(faults)

    @staticmethod
    def _age_s(last_ns: Optional[int], now_ns: int) -> float:
        return float("inf") if last_ns is None else max(0, now_ns - last_ns) * 1e-9

    def joint_state_age_s(self, arm: str, now_ns: int) -> float:
        return self._age_s(self._joint_state[arm], now_ns)

    def check(self, now_ns: int) -> Tuple[Fault, ...]:
        cfg = self.config
        faults = []
        for arm in self.arms:
            age = self.joint_state_age_s(arm, now_ns)
            if age > cfg.controller_timeout_s:
                faults.append(Fault("lost_controller", arm, age, STOP))
            elif age > cfg.joint_state_timeout_s:
                faults.append(Fault("stale_joint_state", arm, age, HOLD))
        if self._engaged_at is not None and self._source == TELEOP:
            faults.extend(self.leader_faults(now_ns))
        elif self._engaged_at is not None:
            since = self._chunk if self._chunk is not None and self._chunk > self._engaged_at \
                else self._engaged_at
            age = self._age_s(since, now_ns)
            if age > cfg.chunk_timeout_s:
                faults.append(Fault("stale_chunk", "policy", age, HOLD))
            for cam in self.cameras:
                last = self._camera[cam]
                age = self._age_s(last, now_ns)
                if age > cfg.camera_timeout_s:
                    faults.append(Fault("stale_camera", cam, age, HOLD))
        return tuple(faults)
