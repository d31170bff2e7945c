"""The inference loop without ROS: fit checks, history sizing, as-of inputs, stale blocking,
warm-up and back-off, with the time passed in (a stand-in policy where the model is not the
point, and a real :class:`PolicyRunner` once)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pytest

from ate_core.config import ConfigError, replace_in
from ate_core.data.episode import default_joint_names
from ate_core.robot.config import BimanualConfig, load_config
from ate_core.robot.models import push_period_s
from ate_core.runtime.chunk import ActionChunk, ChunkRejected, make_chunk
from ate_core.runtime.inference_loop import (ERROR_BACKOFF_S, RATE_MARGIN, RETRY_S, Blocked, ChunkPolicy,
                                             InferenceLoop, Phase)
from ate_core.runtime.policy_runner import PolicyRunner
from test_policy_runner import HORIZON, PERIOD_NS, make_data, train_tiny_policy

REPO = Path(__file__).resolve().parents[1]
JOINTS = default_joint_names("rm75_bimanual")
MS = 1_000_000
T0 = 2_000 * MS  # the reference time of most attempts


def robot_config(**overrides: Any) -> BimanualConfig:
    settings = {"inference.warmup_runs": 2, "inference.period_s": 0.1, "inference.task": "fold the towel",
                "inference.joint_state_max_age_s": 0.05, "cameras.head.max_age_s": 0.1}
    settings.update(overrides)
    return replace_in(load_config(REPO / "config/bimanual.yaml"), settings, "test")


class StandInPolicy:
    """Answers every observation with a two-point chunk holding the newest state; raises what
    ``failures`` holds, one per call, first."""

    def __init__(self, cameras: Sequence[str] = ("head",), joint_names: Sequence[str] = JOINTS,
                 n_obs_steps: int = 2, action_period_ns: int = 50 * MS, n_action_steps: int = 1) -> None:
        self.cameras = tuple(cameras)
        self.joint_names = tuple(joint_names)
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.action_period_ns = action_period_ns
        self.failures: List[Exception] = []
        self.warmup_failure: Optional[Exception] = None
        self.warmups = 0
        self.calls: List[Dict[str, Any]] = []

    def infer(self, images: Mapping[str, np.ndarray], state: np.ndarray, stamp_ns: int, task: str) -> ActionChunk:
        self.calls.append({"images": images, "state": state, "stamp_ns": stamp_ns, "task": task})
        if self.failures:
            raise self.failures.pop(0)
        return make_chunk(self.joint_names, stamp_ns, [0, self.action_period_ns], [state[-1], state[-1]],
                          self.joint_names)

    def warmup(self, runs: int) -> None:
        if self.warmup_failure is not None:
            raise self.warmup_failure
        self.warmups += runs


def sample(source: str, stamp_ns: int) -> Any:
    """A camera frame whose pixels tell its stamp, or an arm's positions: the stamp in seconds
    plus ten times the joint's index in the policy's order."""
    if not source.endswith("_arm"):
        return np.full((4, 6, 3), (stamp_ns // (10 * MS)) % 256, dtype=np.uint8)
    side = source[:-len("_arm")]
    return {name: stamp_ns * 1e-9 + 10 * i for i, name in enumerate(JOINTS) if name.startswith(side + "_")}


def feed(loop: InferenceLoop, until_ns: int, *, last_ns: Optional[Mapping[str, int]] = None,
         every_ns: int = 10 * MS) -> None:
    """Every source of ``loop`` sampled every ``every_ns`` over the second before ``until_ns``
    (a source in ``last_ns`` stopped at that time)."""
    for source in loop.max_age_s:
        stop = (last_ns or {}).get(source, until_ns)
        for stamp in range(until_ns - 1000 * MS, stop + 1, every_ns):
            loop.add(source, stamp, sample(source, stamp))


def running(policy: Optional[ChunkPolicy] = None, cfg: Optional[BimanualConfig] = None,
            **kwargs: Any) -> InferenceLoop:
    loop = InferenceLoop(policy or StandInPolicy(), cfg or robot_config(), **kwargs)
    while loop.warm_up() is Phase.WARMING_UP:
        pass
    assert loop.status.phase is Phase.RUNNING
    return loop


# ---- fit checks ------------------------------------------------------------------------------


def test_a_policy_camera_missing_from_the_config_is_a_fit_error() -> None:
    with pytest.raises(ConfigError, match=r"^config: cameras: the policy needs cameras \['top'\]; the config has "
                                          r"\['head', 'left_wrist', 'right_wrist'\]"):
        InferenceLoop(StandInPolicy(cameras=("head", "top")), robot_config())


def test_a_policy_joint_that_no_configured_arm_carries_is_a_fit_error() -> None:
    policy = StandInPolicy(joint_names=(*JOINTS, "torso_joint1"))
    with pytest.raises(ConfigError, match=r"^config: arms: the policy's joint 'torso_joint1' is not a joint of any "
                                          r"configured arm \(\['left_gripper', "):
        InferenceLoop(policy, robot_config())


def test_a_renamed_arm_joint_is_a_fit_error_naming_the_joint() -> None:
    names = ["left_j1", *JOINTS[1:7]]
    with pytest.raises(ConfigError, match=r"the policy's joint 'left_joint1' is not a joint"):
        InferenceLoop(StandInPolicy(), robot_config(**{"arms.left.joint_names": names}))


def test_only_the_cameras_and_arms_the_policy_reads_are_sources() -> None:
    left_only = StandInPolicy(cameras=("left_wrist",), joint_names=[n for n in JOINTS if n.startswith("left_")])
    loop = InferenceLoop(left_only, robot_config())
    assert loop.cameras == ("left_wrist",) and loop.arms == ("left_arm",)
    assert loop.max_age_s == {"left_wrist": 0.1, "left_arm": 0.05}


def test_the_policy_replans_after_its_n_action_steps_unless_the_config_sets_a_period() -> None:
    policy = StandInPolicy(n_action_steps=8, action_period_ns=100 * MS)
    assert InferenceLoop(policy, robot_config(**{"inference.period_s": 0.0})).period_s == pytest.approx(0.8)
    assert InferenceLoop(policy, robot_config(**{"inference.period_s": 0.25})).period_s == 0.25


# ---- history sizing ------------------------------------------------------------------------------


def test_joint_state_history_follows_the_arm_s_push_cycle() -> None:
    loop = InferenceLoop(StandInPolicy(), robot_config(**{"arms.left.push_cycle": 1, "arms.right.push_cycle": 4}))
    # The window's reach at RATE_MARGIN x the nominal rate, plus 4 spare samples: a four times
    # longer push period needs a quarter of the samples.
    assert loop.history["left_arm"] - 4 == 4 * (loop.history["right_arm"] - 4)
    reach_s = 0.05 + 0.05  # one action period back, plus the oldest usable age
    assert loop.history["left_arm"] == round(reach_s / push_period_s(1) * RATE_MARGIN) + 4


@pytest.mark.parametrize("push_cycle", [1, 3, 10])
def test_the_history_reaches_the_oldest_window_step_at_twice_the_nominal_rates(push_cycle: int) -> None:
    cfg = robot_config(**{"arms.left.push_cycle": push_cycle, "arms.right.push_cycle": push_cycle,
                          "inference.joint_state_max_age_s": 2.5 * push_period_s(push_cycle)})
    loop = running(StandInPolicy(n_obs_steps=4), cfg)
    every_ns = {"head": int(1e9 / 30.0) // 2, "left_arm": int(push_period_s(push_cycle) * 1e9) // 2}
    every_ns["right_arm"] = every_ns["left_arm"]
    for source, step_ns in every_ns.items():
        for stamp in range(T0 - 1000 * MS, T0 + 1, step_ns):
            loop.add(source, stamp, sample(source, stamp))
    oldest = loop.window(T0)[0]
    assert oldest.ok, oldest.stale
    assert all(T0 - 150 * MS - oldest.stamps_ns[s] < every_ns[s] for s in every_ns)


# ---- as-of inputs --------------------------------------------------------------------------------


def test_inputs_are_the_as_of_samples_of_each_window_step_in_the_policy_s_order() -> None:
    policy = StandInPolicy()
    loop = running(policy)
    feed(loop, T0 + 20 * MS)  # samples after the reference time exist; none may be used
    ref = T0 + 5 * MS
    cycle = loop.step(loop.window(ref))
    call = policy.calls[-1]
    assert call["stamp_ns"] == ref and call["task"] == "fold the towel"
    assert cycle.chunk is not None and cycle.chunk.stamp_ns == ref and cycle.wait_s is None
    # Samples every 10 ms: as of T0 + 5 ms the newest is T0's, as of 50 ms earlier T0 - 50 ms's.
    expected = np.array([[t * 1e-9 + 10 * i for i in range(len(JOINTS))] for t in (T0 - 50 * MS, T0)])
    np.testing.assert_allclose(call["state"], expected, rtol=1e-6)
    frames = call["images"]["head"]
    assert frames.shape == (2, 4, 6, 3)
    assert [int(f[0, 0, 0]) for f in frames] == [(t // (10 * MS)) % 256 for t in (T0 - 50 * MS, T0)]


def test_stored_samples_are_decoded_only_when_an_attempt_uses_them() -> None:
    decoded: List[Any] = []

    def decode(frame: Any) -> np.ndarray:
        decoded.append(frame)
        return np.asarray(frame)

    loop = running(decode_image=decode)
    feed(loop, T0)
    assert decoded == []
    loop.step(loop.window(T0))
    assert len(decoded) == 2  # one frame per window step


# ---- stale blocking ------------------------------------------------------------------------------


@pytest.mark.parametrize("source,max_age_s", [("head", 0.1), ("left_arm", 0.05), ("right_arm", 0.05)])
def test_a_stale_source_blocks_the_loop_named_with_its_age(source: str, max_age_s: float) -> None:
    policy = StandInPolicy()
    loop = running(policy)
    feed(loop, T0, last_ns={source: T0 - 500 * MS})
    cycle = loop.step(loop.window(T0))
    assert cycle.chunk is None and policy.calls == []
    assert cycle.wait_s == RETRY_S and cycle.changed
    assert cycle.blocked == Blocked(source, f"{source}: newest sample is 0.50 s old (max {max_age_s:.2f} s)",
                                    pytest.approx(0.5))
    assert loop.status.blocked == cycle.blocked and loop.status.last_block == cycle.blocked.reason
    assert loop.status.blocks == {"head": 0, "left_arm": 0, "right_arm": 0, source: 1}


def test_a_source_never_heard_blocks_the_loop_as_nothing_received() -> None:
    loop = running()
    for stamp in range(T0 - 100 * MS, T0 + 1, 10 * MS):
        loop.add("head", stamp, sample("head", stamp))
        loop.add("left_arm", stamp, sample("left_arm", stamp))
    blocked = loop.step(loop.window(T0)).blocked
    assert blocked == Blocked("right_arm", "right_arm: nothing received", math.inf)


def test_a_stale_older_window_step_says_how_far_back() -> None:
    loop = running(StandInPolicy(n_obs_steps=3))
    for source in loop.max_age_s:  # fresh now, but nothing 100 ms ago: just started
        for stamp in range(T0 - 60 * MS, T0 + 1, 10 * MS):
            loop.add(source, stamp, sample(source, stamp))
    blocked = loop.step(loop.window(T0)).blocked
    assert blocked is not None and blocked.source == "head"
    assert blocked.reason == "head: nothing received (2 steps back in the observation window)"


def test_the_same_block_counts_once_and_clears_with_the_first_usable_window() -> None:
    policy = StandInPolicy()
    loop = running(policy)
    feed(loop, T0, last_ns={"head": T0 - 300 * MS})
    assert loop.step(loop.window(T0)).blocked is not None
    again = loop.step(loop.window(T0 + 10 * MS))
    assert again.blocked is None and not again.changed and again.wait_s == RETRY_S
    assert loop.status.blocks["head"] == 1 and loop.status.blocked.source == "head"

    feed(loop, T0 + 100 * MS)
    cycle = loop.step(loop.window(T0 + 100 * MS))
    assert cycle.chunk is not None and cycle.unblocked == "head" and cycle.changed
    assert loop.status.blocked is None
    assert loop.status.last_block.startswith("head: newest sample is ")  # the past stall stays explained
    assert not loop.step(loop.window(T0 + 100 * MS)).changed


def test_another_source_blocking_is_a_new_block() -> None:
    loop = running()
    feed(loop, T0, last_ns={"head": T0 - 300 * MS})
    loop.step(loop.window(T0))
    feed(loop, T0 + 400 * MS, last_ns={"left_arm": T0 + 100 * MS})
    cycle = loop.step(loop.window(T0 + 400 * MS))
    assert cycle.blocked is not None and cycle.blocked.source == "left_arm" and cycle.changed
    assert loop.status.blocks == {"head": 1, "left_arm": 1, "right_arm": 0}


def test_an_unusable_frame_blocks_naming_the_camera() -> None:
    def decode(_frame: Any) -> np.ndarray:
        raise ValueError("encoding 'yuv422' is not one of ['bgr8', 'mono8', 'rgb8']")

    loop = running(decode_image=decode)
    feed(loop, T0)
    blocked = loop.step(loop.window(T0)).blocked
    assert blocked == Blocked("head", "head: unusable image: encoding 'yuv422' is not one of "
                                      "['bgr8', 'mono8', 'rgb8']")


def test_frames_of_changing_size_block_naming_the_camera() -> None:
    loop = running()
    feed(loop, T0)
    loop.add("head", T0, np.zeros((8, 6, 3), dtype=np.uint8))
    blocked = loop.step(loop.window(T0)).blocked
    assert blocked is not None and blocked.source == "head" and blocked.reason.startswith("head: unusable image: ")


def test_a_joint_state_without_a_policy_joint_blocks_naming_the_arm_and_joint() -> None:
    loop = running()
    feed(loop, T0)
    partial = sample("left_arm", T0)
    del partial["left_gripper"]
    loop.add("left_arm", T0, partial)
    assert loop.step(loop.window(T0)).blocked == Blocked("left_arm", "left_arm: joint state lacks left_gripper")


# ---- warm-up -------------------------------------------------------------------------------------


def test_warm_up_runs_the_configured_number_of_runs_then_runs() -> None:
    policy = StandInPolicy()
    loop = InferenceLoop(policy, robot_config(**{"inference.warmup_runs": 3}))
    assert loop.status.phase is Phase.WARMING_UP and loop.warmup_runs == 3
    assert [loop.warm_up() for _ in range(3)] == [Phase.WARMING_UP, Phase.WARMING_UP, Phase.RUNNING]
    assert policy.warmups == 3
    assert loop.warm_up() is Phase.RUNNING and policy.warmups == 3


def test_no_warm_up_runs_means_running_at_once() -> None:
    policy = StandInPolicy()
    loop = InferenceLoop(policy, robot_config(**{"inference.warmup_runs": 0}))
    assert loop.warm_up() is Phase.RUNNING and policy.warmups == 0


def test_no_attempt_before_the_warm_up_is_done() -> None:
    loop = InferenceLoop(StandInPolicy(), robot_config())
    feed(loop, T0)
    with pytest.raises(RuntimeError, match="warming up, not running"):
        loop.step(loop.window(T0))


def test_a_failed_warm_up_fails_the_loop_for_good() -> None:
    policy = StandInPolicy()
    policy.warmup_failure = RuntimeError("CUDA error: out of memory")
    loop = InferenceLoop(policy, robot_config())
    assert loop.warm_up() is Phase.FAILED
    assert loop.status.failure == "warm-up failed: RuntimeError: CUDA error: out of memory"
    policy.warmup_failure = None
    assert loop.warm_up() is Phase.FAILED and policy.warmups == 0
    with pytest.raises(RuntimeError, match="failed, not running"):
        loop.step(loop.window(T0))


# ---- back-off after a failure --------------------------------------------------------------------


def test_a_failed_inference_backs_off_and_the_next_chunk_recovers() -> None:
    policy = StandInPolicy()
    loop = running(policy)
    feed(loop, T0)
    policy.failures = [RuntimeError("boom"), RuntimeError("boom again")]
    first = loop.step(loop.window(T0))
    assert first.chunk is None and first.wait_s == ERROR_BACKOFF_S and first.changed
    assert first.failure == "inference failed: RuntimeError: boom" == loop.status.failure
    second = loop.step(loop.window(T0))
    assert second.wait_s == ERROR_BACKOFF_S and not second.changed  # already reported
    assert loop.status.failure == "inference failed: RuntimeError: boom again"
    assert (loop.status.errors, loop.status.rejected, loop.status.chunks) == (2, 0, 0)

    third = loop.step(loop.window(T0))
    assert third.chunk is not None and third.wait_s is None and not third.changed
    assert loop.status.failure is not None  # until the chunk is out
    assert loop.delivered(third.chunk, T0 + 30 * MS)
    assert loop.status.failure is None and loop.status.chunks == 1
    assert not loop.delivered(loop.step(loop.window(T0)).chunk, T0 + 30 * MS)


def test_a_chunk_counts_once_delivered_with_its_latency_from_the_observation() -> None:
    loop = running()
    feed(loop, T0)
    cycle = loop.step(loop.window(T0))
    assert loop.status.chunks == 0 and loop.latency.count == 0
    loop.delivered(cycle.chunk, T0 + 30 * MS)
    assert loop.status.chunks == 1
    assert loop.latency.summary()["p50_ms"] == pytest.approx(30.0)


def test_a_rejected_prediction_backs_off_and_is_counted_apart() -> None:
    policy = StandInPolicy()
    loop = running(policy)
    feed(loop, T0)
    policy.failures = [ChunkRejected("non_finite", "position of left_joint3 at point 2 is nan")]
    cycle = loop.step(loop.window(T0))
    assert cycle.wait_s == ERROR_BACKOFF_S
    assert cycle.failure == "prediction rejected (non_finite): position of left_joint3 at point 2 is nan"
    assert (loop.status.errors, loop.status.rejected) == (0, 1)


def test_a_failure_right_after_a_block_reports_both() -> None:
    policy = StandInPolicy()
    loop = running(policy)
    feed(loop, T0, last_ns={"head": T0 - 300 * MS})
    loop.step(loop.window(T0))
    feed(loop, T0 + 50 * MS)
    policy.failures = [RuntimeError("boom")]
    cycle = loop.step(loop.window(T0 + 50 * MS))
    assert cycle.unblocked == "head" and cycle.failure is not None and cycle.changed
    assert loop.status.blocked is None


# ---- with the real policy runner -----------------------------------------------------------------


def test_a_trained_policy_runs_in_the_loop(tmp_path: Path) -> None:
    checkpoint = train_tiny_policy(tmp_path / "run", make_data(tmp_path / "rm75"))
    cfg = robot_config(**{"inference.checkpoint": str(checkpoint), "inference.device": "cpu",
                          "inference.torch_threads": 1, "inference.warmup_runs": 1})
    loop = running(PolicyRunner.from_config(cfg.inference), cfg)
    assert loop.cameras == ("head",) and loop.arms == ("left_arm", "right_arm")
    feed(loop, T0)
    chunk = loop.step(loop.window(T0)).chunk
    assert chunk is not None and chunk.joint_names == JOINTS and chunk.stamp_ns == T0
    assert list(chunk.times_ns) == [i * PERIOD_NS for i in range(HORIZON)]
    assert np.isfinite(chunk.positions).all()
