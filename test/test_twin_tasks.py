"""Tasks, scripted experts and demonstrations on the twin (``ate_core.twin.tasks``, ``experts``,
``demos``).

A task's reset is a function of its seed and puts its objects where the arms that do it reach
them; its success check reads the physics only, so it is False at reset, True after the expert,
and False when the expert's gripper never closes. The experts' streams are what the supervisor
would command: the safety filter passes them unchanged. Demonstrations load through the
training data set and train.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from ate_core.data.dataset import EpisodeDataset
from ate_core.data.episode import (decode_jpeg, default_joint_names, encode_jpeg,
                                   list_episodes, read_info)
from ate_core.policy.processor import resize_frame
from ate_core.robot.config import load_config
from ate_core.robot.ik import ArmIK, IKSettings
from ate_core.robot.models import GRIPPER_MAX_OPENING_M
from ate_core.runtime.safety import SafetyFilter
from ate_core.train.config import train_config_from_dict
from ate_core.train.trainer import train
from ate_core.twin import demos
from ate_core.twin.experts import (ArmCommand, ExpertError, ExpertSettings, apply_commands,
                                   expert_commands, run_episode)
from ate_core.twin.model import TwinRobot, rm65_variant
from ate_core.twin.tasks import TASKS, Region, TaskError, table_top_m
from ate_core.twin.twin import Twin

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "bimanual.yaml"
MODELS = ("RM75-B", "RM65-B")
#: Seeds run through each expert here; the 50-seed table is ``python -m ate_core.twin.experts``.
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def robots():
    rm75 = TwinRobot.from_config(load_config(CONFIG))
    return {"RM75-B": rm75, "RM65-B": rm65_variant(rm75)}


@pytest.fixture(scope="module")
def twins(robots):
    """One twin per (task, arm model), built from the task's scene, shared by the tests."""
    built = {}

    def get(task_name: str, model: str) -> Twin:
        if (task_name, model) not in built:
            built[task_name, model] = Twin(robots[model], TASKS[task_name].scene())
        return built[task_name, model]
    yield get
    for twin in built.values():
        twin.close()


def object_yaw(pose: np.ndarray) -> float:
    return math.atan2(pose[1, 0], pose[0, 0])


def placement(twin: Twin) -> np.ndarray:
    return np.concatenate([twin.object_pose(n).ravel() for n in twin.object_names]
                          + [twin.target_position()])


# --------------------------------------------------------------------------- resets


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reset_is_a_function_of_the_seed(twins, name):
    twin, task = twins(name, "RM75-B"), TASKS[name]
    task.reset(twin, 5)
    first = placement(twin)
    twin.step(0.3)
    task.reset(twin, 5)
    np.testing.assert_array_equal(placement(twin), first)
    assert twin.time_s == 0.0
    task.reset(twin, 6)
    assert not np.allclose(placement(twin), first)


def test_resets_stay_in_each_tasks_ranges_and_keep_their_constraints(twins):
    top = table_top_m(twins("pick_place", "RM75-B"))
    for seed in range(30):
        pick = TASKS["pick_place"]
        twin = twins("pick_place", "RM75-B")
        pick.reset(twin, seed)
        cube, target = twin.object_pose("cube"), twin.target_position()
        assert Region(pick.cube_min_xy_m, pick.cube_max_xy_m).contains(cube[:2, 3])
        assert Region(pick.target_min_xy_m, pick.target_max_xy_m).contains(target[:2])
        assert np.linalg.norm(cube[:2, 3] - target[:2]) >= pick.min_separation_m
        assert abs(object_yaw(cube)) <= pick.cube_max_yaw_rad + 1e-9
        assert cube[2, 3] == pytest.approx(top + 0.02) and target[2] == top

        push = TASKS["push"]
        twin = twins("push", "RM75-B")
        push.reset(twin, seed)
        cube, target = twin.object_pose("cube"), twin.target_position()
        assert Region(push.cube_min_xy_m, push.cube_max_xy_m).contains(cube[:2, 3])
        assert Region(push.target_min_xy_m, push.target_max_xy_m).contains(target[:2])
        assert push.min_distance_m <= np.linalg.norm(cube[:2, 3] - target[:2]) \
            <= push.max_distance_m

        for name, obj in (("handover", "cube"), ("lift_box", "box")):
            task, twin = TASKS[name], twins(name, "RM75-B")
            task.reset(twin, seed)
            pose = twin.object_pose(obj)
            lo = task.cube_min_xy_m if obj == "cube" else task.box_min_xy_m
            hi = task.cube_max_xy_m if obj == "cube" else task.box_max_xy_m
            assert Region(lo, hi).contains(pose[:2, 3])
            # A task without a target hides the marker inside the table top.
            assert twin.target_position()[2] < top


def grasp_reachable(ik: ArmIK, home: np.ndarray, xyz, closing_yaws) -> bool:
    """Whether the TCP reaches ``xyz`` pointing down with the fingers closing along one of
    ``closing_yaws`` (the symmetric ways of holding the object)."""
    for closing in closing_yaws:
        yaw = closing - math.pi / 2  # the home orientation closes along base_link y
        c, s = math.cos(yaw), math.sin(yaw)
        pose = np.eye(4)
        pose[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([-1.0, 1.0, -1.0])
        pose[:3, 3] = xyz
        if ik.solve(pose, home, rest=home).converged:
            return True
    return False


@pytest.mark.parametrize("model", MODELS)
def test_every_corner_of_every_task_region_is_within_reach_of_its_arms(robots, model):
    robot = robots[model]
    ik = {p: ArmIK.for_placement(robot.layout.arm(p),
                                 settings=IKSettings(joint_margin_rad=0.08, restarts=3))
          for p in robot.layout.prefixes}
    home = {p: np.array(robot.home_rad[p]) for p in robot.layout.prefixes}
    lift = ExpertSettings().lift_height_m
    cube_faces = [k * math.pi / 2 for k in range(4)]
    checks = []  # (arm, x, y, z, closing yaws)
    for task in (TASKS["pick_place"], TASKS["push"], TASKS["handover"]):
        arm = task.arms[0]
        regions = [Region(task.cube_min_xy_m, task.cube_max_xy_m)]
        if task.uses_target:
            regions.append(Region(task.target_min_xy_m, task.target_max_xy_m))
        for region in regions:
            for corner in region.corners():
                for z in (0.02, 0.02 + lift):
                    checks.append((arm, *corner, z, cube_faces))
    box = TASKS["lift_box"]
    reach = 0.36 / 2 - ExpertSettings().box_grasp_inset_m
    for corner in Region(box.box_min_xy_m, box.box_max_xy_m).corners():
        for arm, side in (("left", 1.0), ("right", -1.0)):
            for yaw in (-box.box_max_yaw_rad, box.box_max_yaw_rad):
                end = corner + side * reach * np.array([-math.sin(yaw), math.cos(yaw)])
                for z in (0.025, 0.025 + lift):
                    checks.append((arm, *end, z, [yaw, yaw + math.pi]))
    unreachable = [(a, round(x, 3), round(y, 3), z) for a, x, y, z, yaws in checks
                   if not grasp_reachable(ik[a], home[a], (x, y, z), yaws)]
    assert not unreachable


def test_a_twin_with_objects_the_task_does_not_know_is_refused(robots):
    twin = Twin(robots["RM75-B"])  # the default scene: cube and box
    with pytest.raises(TaskError, match="task.scene"):
        TASKS["pick_place"].reset(twin, 0)


# --------------------------------------------------------------------------- experts


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", sorted(TASKS))
def test_success_is_false_at_reset_and_true_after_the_expert(twins, name, model):
    twin, task = twins(name, model), TASKS[name]
    for seed in SEEDS:
        task.reset(twin, seed)
        assert not task.success(twin), task.check(twin).reason
        result = run_episode(twin, task, seed)
        assert result.success, result.outcome.reason
        assert result.duration_s <= task.time_limit_s


@pytest.mark.parametrize("name", sorted(TASKS))
def test_an_expert_whose_gripper_never_closes_fails(twins, name):
    twin, task = twins(name, "RM75-B"), TASKS[name]
    task.reset(twin, 0)
    try:
        for commands in expert_commands(task, twin):
            apply_commands(twin, {p: ArmCommand(c.q_rad, GRIPPER_MAX_OPENING_M)
                                  for p, c in commands.items()})
            twin.step(0.01)
    except ExpertError:
        pass  # an expert that plans from what it sees may give up: the state is judged alike
    outcome = task.check(twin)
    assert not outcome.success, outcome.reason


def test_a_cube_over_the_target_counts_as_placed_only_once_it_rests_on_the_table(twins):
    # The check reads where the cube is, not what put it there: 3 cm over the target's centre
    # it is not placed; fallen onto the table, it is.
    twin, task = twins("pick_place", "RM75-B"), TASKS["pick_place"]
    task.reset(twin, 0)
    pose = np.eye(4)
    pose[:3, 3] = twin.target_position() + (0.0, 0.0, 0.02 + 0.03)
    twin.set_object_pose("cube", pose)
    assert not task.success(twin)
    twin.step(0.5)
    assert task.success(twin), task.check(twin).reason


def test_an_episode_past_its_time_limit_is_a_failure(twins):
    twin = twins("pick_place", "RM75-B")
    task = dataclasses.replace(TASKS["pick_place"], time_limit_s=2.0)
    result = run_episode(twin, task, 0)
    assert not result.success and "time limit" in result.outcome.reason
    assert result.ticks == 200


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", ["pick_place", "push", "lift_box"])
def test_the_safety_filter_passes_expert_streams_unchanged(robots, twins, name, model):
    twin, task = twins(name, model), TASKS[name]
    layout = twin.robot.layout
    safety = SafetyFilter(layout, load_config(CONFIG).supervisor.safety, 0.01,
                          GRIPPER_MAX_OPENING_M)
    task.reset(twin, 0)
    previous = np.concatenate([np.append(twin.joint_targets(p), twin.gripper_target(p))
                               for p in layout.prefixes])
    velocity = np.zeros_like(previous)
    assert not safety.violations(previous)
    ticks = 0
    for commands in expert_commands(task, twin):
        target = np.concatenate([np.append(commands[p].q_rad, commands[p].gripper_m)
                                 for p in layout.prefixes])
        out = safety.clamp(target, previous, velocity)
        assert not out.interventions, (ticks, out.interventions)
        np.testing.assert_array_equal(out.positions, target)
        previous, velocity = out.positions, out.velocities
        apply_commands(twin, commands)
        twin.step(0.01)
        ticks += 1
    assert task.success(twin)


def test_the_handover_brings_the_arms_closer_than_the_safety_filters_clearance(robots, twins):
    # Two grippers on one 4 cm cube: the capsule model (6 cm link radius, 5 cm clearance) cannot
    # allow it, so the supervisor's config has to relax arm_distance for this task.
    twin, task = twins("handover", "RM75-B"), TASKS["handover"]
    layout = twin.robot.layout
    safety = SafetyFilter(layout, load_config(CONFIG).supervisor.safety, 0.01,
                          GRIPPER_MAX_OPENING_M)
    task.reset(twin, 0)
    rules = set()
    for commands in expert_commands(task, twin):
        target = np.concatenate([np.append(commands[p].q_rad, commands[p].gripper_m)
                                 for p in layout.prefixes])
        rules.update(i.rule for i in safety.violations(target))
        apply_commands(twin, commands)
        twin.step(0.01)
    assert rules == {"arm_distance"}


# --------------------------------------------------------------------------- demonstrations


TINY_FLOW = {"type": "flow", "horizon": 8, "n_obs_steps": 1, "n_action_steps": 4,
             "cameras": ["head"], "image_size": [32, 32],
             "encoder": {"backbone": "resnet10_small", "d_model": 32, "pool": "avg",
                         "text_dim": 8, "text_buckets": 64},
             "expert_d_model": 32, "expert_n_layers": 1, "expert_n_heads": 2, "num_steps": 4}


@pytest.mark.parametrize("embodiment,name", [("rm75_bimanual", "lift_box"),
                                             ("rm65_single", "pick_place")])
def test_demonstrations_load_as_training_samples_and_train(robots, tmp_path, embodiment, name):
    root = tmp_path / "demos"
    task = TASKS[name]
    report = demos.write_demonstrations(root, task, embodiment, 1, robot=robots["RM75-B"],
                                        seed=3, image_size=32, progress=False)
    assert report.written == 1 and report.failed == 0
    info = read_info(root)
    names = default_joint_names(embodiment)
    assert info.joint_names == names and info.fps == 10.0
    arms = 2 if embodiment == "rm75_bimanual" else 1
    assert len(names) == arms * (7 if embodiment == "rm75_bimanual" else 6) + arms
    data = EpisodeDataset(root, horizon=8, n_obs_steps=1)
    episode = data.readers[0].load()
    assert episode.task == task.instruction and episode.extra["seed"] == 3
    assert np.all(np.diff(episode.timestamp_s) == pytest.approx(0.1))
    home = demos.demo_robot(embodiment, robots["RM75-B"]).home_rad
    recorded = ("left", "right") if arms == 2 else ("right",)
    start = np.concatenate([np.append(home[p], GRIPPER_MAX_OPENING_M) for p in recorded])
    np.testing.assert_allclose(episode.state[0], start, atol=1e-4)
    gripper = [i for i, n in enumerate(names) if n.endswith("gripper")]
    # Commanded closed on the object; measured, the fingers stop at its width.
    assert np.all(episode.action[:, gripper].min(axis=0) == 0.0)
    assert np.all(episode.state[:, gripper].min(axis=0) > 0.03)
    sample = data[len(data) // 2]
    assert sample.state.shape == (1, len(names)) and sample.action.shape == (8, len(names))
    for camera, (h, w) in info.cameras.items():
        assert sample.images[camera].shape == (1, h, w, 3) == (1, 32, 32, 3)
    expected_cameras = (["head", "left_wrist", "right_wrist"] if arms == 2
                        else ["head", "right_wrist"])
    assert sorted(info.cameras) == expected_cameras

    cfg = {"dataset": {"roots": [str(root)]}, "policy": dict(TINY_FLOW), "steps": 2,
           "batch_size": 4, "num_workers": 0, "lr": 1e-3, "warmup_steps": 1, "log_every": 1,
           "save_every": 2, "output_dir": str(tmp_path / "run"), "device": "cpu", "seed": 0}
    result = train(train_config_from_dict(cfg, "test"), progress=False)
    assert len(result.losses) == 2 and all(math.isfinite(v) for v in result.losses)


def test_the_cli_writes_n_episodes_and_says_how_many_failed(tmp_path, capsys):
    out = tmp_path / "push"
    code = demos.main(["--task", "push", "--episodes", "2", "--embodiment",
                       "rm65_single", "--out", str(out), "--seed", "7", "--image-size", "24",
                       "--cameras", "head", "--config", str(CONFIG)])
    assert code == 0
    assert list_episodes(out) == [0, 1]
    assert read_info(out).cameras == {"head": (24, 24)}
    assert "0 expert episodes failed and were skipped" in capsys.readouterr().out


def test_frames_are_rendered_at_the_camera_size_and_shrunk_to_the_data_sets(tmp_path):
    assert demos.frame_size("96x72", "image_size") == (72, 96)
    assert demos.frame_size(32, "image_size") == (32, 32) == demos.frame_size("32", "x")
    for bad in ("96x", "4x4", "axb", (96,), True):
        with pytest.raises(ValueError, match="image_size"):
            demos.frame_size(bad, "image_size")
    out = tmp_path / "lift"
    code = demos.main(["--task", "lift_box", "--episodes", "1", "--out", str(out), "--seed", "2",
                       "--image-size", "40x30", "--render-size", "160x120", "--cameras", "head",
                       "--config", str(CONFIG)])
    assert code == 0
    assert read_info(out).cameras == {"head": (30, 40)}
    # Shrunk from 160x120 with INTER_AREA, as the policy's processor shrinks the camera node's
    # frames: the same pixels as rendering at 160x120 and resizing by hand.
    episode = EpisodeDataset(out, horizon=2, n_obs_steps=1).readers[0].load()
    twin = Twin(TwinRobot.from_config(load_config(CONFIG)), TASKS["lift_box"].scene())
    TASKS["lift_box"].reset(twin, 2)
    expected = resize_frame(twin.render("head", 160, 120), (30, 40))
    twin.close()
    stored = decode_jpeg(encode_jpeg(expected))  # the data set keeps JPEG frames
    assert np.abs(episode.frames["head"][0].astype(int) - stored.astype(int)).mean() < 0.5


def test_a_single_arm_embodiment_refuses_a_two_arm_task(tmp_path, capsys):
    code = demos.main(["--task", "handover", "--episodes", "1", "--embodiment", "rm65_single",
                       "--out", str(tmp_path / "x"), "--config", str(CONFIG)])
    assert code == 2
    assert "rm65_single records one arm" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

