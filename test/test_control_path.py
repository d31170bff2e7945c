"""The whole control path over DDS: simulated camera -> inference node (a trained policy) ->
supervisor -> arm nodes -> real SDK -> emulated controllers."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from ate_core.config import replace_in
from ate_core.robot.config import simulated
from ate_ros.chunk_msgs import trajectory_to_chunk
from ate_ros.nodes.camera_node import CameraNode
from ate_ros.nodes.inference_node import InferenceNode
from ate_ros.nodes.supervisor_node import SupervisorNode
from arm_rig import SIDES, emulated_arms
from test_policy_runner import make_data, train_tiny_policy
from test_supervisor_node import engage

pytestmark = pytest.mark.ros  # real DDS / RealMan SDK: CI runs these with a core kept busy too


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    base = tmp_path_factory.mktemp("control_path")
    return train_tiny_policy(base / "run", make_data(base / "rm75"))


def test_policy_chunks_move_both_emulated_arms_through_the_supervisor(ros, checkpoint):
    with emulated_arms(ros) as rig:
        # Cameras show the simulated scene: the test pattern (the emulators have no twin).
        cfg = simulated(dataclasses.replace(rig.cfg, sim=dataclasses.replace(rig.cfg.sim,
                                                                             twin=False)))
        cfg = dataclasses.replace(
            cfg, arms=rig.cfg.arms,  # ...but keep the rig's emulator endpoints
            cameras={"head": dataclasses.replace(cfg.cameras["head"], width=160, height=120)})
        cfg = replace_in(cfg, {"inference.checkpoint": str(checkpoint), "inference.device": "cpu",
                               "inference.torch_threads": 1, "inference.warmup_runs": 1,
                               "inference.period_s": 0.1, "inference.joint_state_max_age_s": 0.5,
                               "cameras.head.max_age_s": 0.5, "supervisor.ramp_s": 0.3}, "test")
        chunks = ros.subscribe(JointTrajectory, "/ate/action_chunk")
        commands = {side: ros.subscribe(JointState, f"/{side}_arm/command") for side in SIDES}
        ros.start(CameraNode, "head", config=cfg)
        ros.start(InferenceNode, config=cfg)
        supervisor = ros.start(SupervisorNode, config=cfg)
        ros.wait_for(lambda: len(chunks) >= 1, 60.0, "a chunk from the policy")
        started = time.monotonic()
        ros.wait_for(lambda: len(chunks) >= 3, 60.0, "chunks from the policy")
        # How fast this machine makes chunks, now: every deadline below is derived from it.
        chunk_period_s = (time.monotonic() - started) / 2
        home = {side: np.radians(rig.emulators[side].joints_deg()) for side in SIDES}
        engage(ros)
        ros.wait_for(lambda: len(commands["left"]) >= 300, 20.0, "3 s of commands")
        ros.wait_for(lambda: supervisor.supervisor.executor.stats.chunks_added >= 10,
                     10.0 + 20 * chunk_period_s, "10 chunks executed")
        assert ros.call(SetBool, "/ate/engage", SetBool.Request(data=False)).success
        ros.wait_for(lambda: supervisor.supervisor.mode.value == "idle", 5.0, "at rest and idle")
        time.sleep(0.3)

        sup = supervisor.supervisor
        received = [trajectory_to_chunk(m, sup.joint_names) for m in chunks.messages]
        assert sup.executor.stats.chunks_added >= 10
        # A chunk may arrive after its last point was due (a slow inference on this loaded
        # machine) and is then rejected as late; nothing else may be wrong with any chunk.
        bad = {rule for (rule, _), n in sup.counts.items()
               if n and rule.startswith("chunk_") and rule != "chunk_late"}
        assert not bad, sup.counts
        points = np.vstack([c.positions for c in received])
        for side in SIDES:
            idx = sup.arm_slice(side)[:7]
            moved = np.abs(np.radians(rig.emulators[side].joints_deg()) - home[side])
            assert moved.max() > 0.01, f"{side} arm did not move"
            # Every command comes from the chunks: inside the envelope of their points (and of
            # the pose the ramp started from), give or take the distance a joint needs to stop
            # from full speed at the acceleration cap (the filter may not reverse faster).
            vmax, amax = sup.safety.max_velocity[idx], sup.safety.max_acceleration[idx]
            overshoot = vmax ** 2 / (2 * amax) + vmax * sup.period_s
            lo = np.minimum(points[:, idx].min(axis=0), home[side]) - overshoot
            hi = np.maximum(points[:, idx].max(axis=0), home[side]) + overshoot
            sent = np.array([m.position[:7] for m in commands[side].messages])
            outside = np.argwhere((sent < lo) | (sent > hi))
            assert outside.size == 0, (side, outside[:5], sent[outside[:5, 0]], lo, hi)
            # ...and the controller is where the supervisor put it.
            np.testing.assert_allclose(np.radians(rig.emulators[side].joints_deg()), sent[-1],
                                       atol=2e-3)
            assert sent.shape[0] >= 300 and idx.size == 7
