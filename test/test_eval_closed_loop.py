"""Closed-loop evaluation on the twin (``ate_core.eval``): real torch, real MuJoCo, short episodes.

The loop is proven by a stand-in policy that knows the answer: it replays the scripted expert's
commands for the episode's seed, read at each chunk's observation time. It succeeds on lift_box
only if observations, chunk stamps, the latency, the executor's timing, the engage ramp and the
commands to the servos all line up; the safety filter stays in the path. A tiny policy trained
on one demonstration runs the same way end to end (it is not expected to succeed), through the
Python API and the command line; a checkpoint of another embodiment is refused by name, and a
fixed latency makes the report a function of the seeds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ate_core.data.episode import default_joint_names
from ate_core.data.synthetic import generate_synthetic_dataset
from ate_core.eval import EvalError, evaluate, eval_config, run_episode, wilson_interval
from ate_core.eval.cli import main
from ate_core.robot.config import load_config
from ate_core.runtime.chunk import ActionChunk, make_chunk
from ate_core.train.config import train_config_from_dict
from ate_core.train.trainer import train
from ate_core.twin import demos
from ate_core.twin.experts import run_episode as run_expert
from ate_core.twin.model import TwinRobot
from ate_core.twin.tasks import get_task
from ate_core.twin.twin import Twin

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "bimanual.yaml"
TINY_FLOW = {"type": "flow", "horizon": 8, "n_obs_steps": 1, "n_action_steps": 4,
             "cameras": ["head"], "image_size": [32, 32],
             "encoder": {"backbone": "resnet10_small", "d_model": 32, "pool": "avg",
                         "text_dim": 8, "text_buckets": 64},
             "expert_d_model": 32, "expert_n_layers": 1, "expert_n_heads": 2, "num_steps": 4}
#: Long enough for a few dozen chunks, short enough for a test.
SHORT_S = 1.0


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG)


def _train_tiny(data: Path, out: Path) -> Path:
    run = {"dataset": {"roots": [str(data)]}, "policy": dict(TINY_FLOW), "steps": 2,
           "batch_size": 4, "num_workers": 0, "lr": 1e-3, "warmup_steps": 1, "log_every": 1,
           "save_every": 2, "output_dir": str(out), "device": "cpu", "seed": 0}
    train(train_config_from_dict(run, "test"), progress=False)
    return out


@pytest.fixture(scope="module")
def lift_checkpoint(cfg, tmp_path_factory) -> Path:
    """A tiny flow policy trained for two steps on one lift_box demonstration of the pair."""
    root = tmp_path_factory.mktemp("eval")
    report = demos.write_demonstrations(
        root / "demos", get_task("lift_box"), "rm75_bimanual", 1,
        robot=TwinRobot.from_config(cfg), seed=3, image_size=32, render_size=(240, 320),
        progress=False)
    assert report.written == 1
    return _train_tiny(root / "demos", root / "run")


class ExpertReplay:
    """A ChunkPolicy that returns the expert's recorded commands from the observation time on:
    point i of the chunk stamped t is the command the expert gave at t + i * 100 ms of the same
    seed's episode (linear between its 10 ms ticks, the last one held)."""

    joint_names = default_joint_names("rm75_bimanual")
    n_obs_steps = 1
    n_action_steps = 8
    action_period_ns = 100_000_000
    horizon = 16

    def __init__(self, commands: np.ndarray, cameras=("head",)) -> None:
        self.commands = commands  # [ticks, 16], 10 ms apart, joint_names order
        self.cameras = tuple(cameras)

    @classmethod
    def record(cls, twin: Twin, task, seed: int) -> "ExpertReplay":
        rows = []

        def on_tick(_k, commands):
            rows.append(np.concatenate([np.append(commands[arm].q_rad, commands[arm].gripper_m)
                                        for arm in ("left", "right")]))
        assert run_expert(twin, task, seed, on_tick=on_tick).success
        return cls(np.array(rows))

    def infer(self, images, state, stamp_ns: int, task: str) -> ActionChunk:
        assert state.shape == (1, 16) and all(images[c].shape == (1, 240, 320, 3)
                                              for c in self.cameras)
        times_ns = np.arange(self.horizon) * self.action_period_ns
        ticks = (stamp_ns + times_ns) / 1e7
        k = np.arange(len(self.commands))
        points = np.stack([np.interp(ticks, k, column) for column in self.commands.T], axis=1)
        return make_chunk(self.joint_names, stamp_ns, times_ns, points, self.joint_names)

    def warmup(self, runs: int) -> None:
        pass


@pytest.mark.parametrize("seed", [1000, 1001])
def test_the_experts_commands_replayed_as_chunks_lift_the_box(cfg, seed):
    task = get_task("lift_box")
    ecfg = eval_config(cfg, task=task)
    with Twin(TwinRobot.from_config(ecfg), task.scene()) as twin:
        policy = ExpertReplay.record(twin, task, seed)
        result = run_episode(policy, task, seed, twin=twin, cfg=ecfg, latency_ms=100.0,
                             time_limit_s=12.0)
    assert result.success, result.reason
    # The expert lifts within 8.5 s; the first chunk arrives 100 ms in, and the engage ramp
    # (1 s, smoothstep) trails the plan while it lasts.
    assert result.time_to_success_s is not None and result.time_to_success_s < 8.5
    # A chunk every n_action_steps points (0.8 s), as the policy's own replanning says.
    assert result.chunks >= int(result.time_to_success_s / 0.8)
    # Only the engage ramp asks more than the caps allow, and only briefly.
    assert set(r.split("/")[0] for r in result.interventions) <= {"acceleration"}
    assert result.total_interventions < 20
    assert result.faults == {} and result.blocks == {}
    assert result.late_points == result.chunks  # each chunk's first point is due at its stamp


def test_a_tiny_trained_policy_runs_an_episode_and_reports_it(cfg, lift_checkpoint, tmp_path):
    report = evaluate(lift_checkpoint, get_task("lift_box"), [1000], config=cfg,
                      time_limit_s=SHORT_S, device="cpu", torch_threads=1,
                      video_dir=tmp_path / "strips")
    assert report.task == "lift_box" and len(report.episodes) == 1
    episode = report.episodes[0]
    assert episode.seed == 1000 and not episode.success and episode.time_to_success_s is None
    assert episode.duration_s == pytest.approx(SHORT_S)
    assert "the box is not held" in episode.reason
    # An attempt every n_action_steps (4) points of 100 ms from t = 0, each delivered 100 ms
    # later: at 0.1, 0.5 and 0.9 s.
    assert episode.chunks == 3
    assert 0 < episode.inference_ms < 5000 and episode.wall_s > 0
    assert report.success_rate == 0.0 and report.interval == wilson_interval(0, 1)
    assert report.interval[0] == 0.0 and 0.7 < report.interval[1] < 0.8
    strip = Path(episode.strip)
    assert strip.name == "lift_box_seed1000.png" and strip.stat().st_size > 1000
    data = json.loads(json.dumps(report.to_dict()))
    assert data["episodes"] == 1 and data["results"][0]["seed"] == 1000
    assert "0/1 succeeded" in report.summary() and "seed" in report.table()


def test_the_cli_prints_a_table_and_a_summary_and_writes_json(cfg, lift_checkpoint, tmp_path,
                                                              capsys):
    out = tmp_path / "report.json"
    code = main(["--checkpoint", str(lift_checkpoint), "--task", "lift_box", "--episodes", "1",
                 "--time-limit-s", "0.3", "--config", str(CONFIG), "--json", str(out),
                 "--device", "cpu", "--torch-threads", "1", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "seed" in printed and "lift_box: 0/1 succeeded" in printed and "fixed 100 ms" in printed
    data = json.loads(out.read_text())
    assert data["settings"]["seeds"] == [1000] and data["results"][0]["duration_s"] == 0.3


def test_a_fixed_latency_makes_the_evaluation_deterministic(cfg, lift_checkpoint):
    def run():
        report = evaluate(lift_checkpoint, get_task("lift_box"), [1002], config=cfg,
                          time_limit_s=0.5, device="cpu", torch_threads=1)
        return [dataclasses.replace(e, wall_s=0.0, inference_ms=0.0) for e in report.episodes]

    assert run() == run()


def test_a_checkpoint_of_another_embodiment_is_refused_by_name(cfg, tmp_path, capsys):
    data = generate_synthetic_dataset(tmp_path / "single", n_episodes=1, length=10,
                                      embodiment="rm65_single", cameras=("head",),
                                      image_size=(32, 32))
    run = _train_tiny(data, tmp_path / "run")
    with pytest.raises(EvalError, match=r"do not map onto the robot's .*embodiment"):
        evaluate(run, get_task("lift_box"), [1000], config=cfg, device="cpu", torch_threads=1)
    code = main(["--checkpoint", str(run), "--task", "lift_box", "--episodes", "1",
                 "--config", str(CONFIG), "--device", "cpu", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "joint1" in err and "left_joint1" in err


def test_a_policy_that_needs_a_camera_the_twin_lacks_is_refused(cfg):
    policy = ExpertReplay(np.zeros((1, 16)), cameras=("top",))
    with pytest.raises(EvalError, match=r"cameras \['top'\]"):
        evaluate(policy, get_task("lift_box"), [1000], config=cfg)
