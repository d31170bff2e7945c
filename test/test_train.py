"""The training loop: checkpoint layout, determinism, exact resume, fine-tuning, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ate_core.config import ConfigError
from ate_core.data.synthetic import generate_synthetic_dataset
from ate_core.policy.pretrained import load_pretrained
from ate_core.train.config import train_config_from_dict
from ate_core.train.stage import TrainingError, run_stage
from ate_core.train.trainer import train

REPO = Path(__file__).resolve().parents[1]
ENCODER = {"backbone": "resnet10_small", "d_model": 32, "pool": "avg", "text_dim": 8, "text_buckets": 64}
FLOW = {"type": "flow", "horizon": 8, "n_obs_steps": 1, "n_action_steps": 4, "cameras": ["head"],
        "image_size": [32, 32], "encoder": ENCODER, "expert_d_model": 32, "expert_n_layers": 1,
        "expert_n_heads": 2, "num_steps": 4}
DIFFUSION = {"type": "diffusion", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "cameras": ["head"],
             "image_size": [32, 32], "encoder": ENCODER, "unet_down_dims": [32, 64], "step_embed_dim": 16,
             "num_inference_steps": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dict[str, Path]:
    base = tmp_path_factory.mktemp("data")
    return {
        "rm75": generate_synthetic_dataset(base / "rm75", n_episodes=3, length=10, cameras=("head",),
                                           image_size=(32, 32), seed=1),
        "rm65": generate_synthetic_dataset(base / "rm65", n_episodes=3, length=10, cameras=("head",),
                                           image_size=(32, 32), embodiment="rm65_single", seed=2),
    }


def config(root: Path, out: Path, **overrides: Any) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {"dataset": {"roots": [str(root)]}, "policy": dict(FLOW), "steps": 4, "batch_size": 4,
                           "num_workers": 0, "lr": 1e-3, "warmup_steps": 1, "log_every": 1, "save_every": 2,
                           "output_dir": str(out), "device": "cpu", "seed": 3}
    cfg.update(overrides)
    return cfg


def run(cfg: Dict[str, Any], **kwargs: Any):
    return train(train_config_from_dict(cfg, "test"), progress=False, **kwargs)


def tensors(path: Path) -> Dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_tensors(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tiny_run_writes_checkpoints_metrics_and_loss_png(data, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # with a DataLoader worker and the progress bar on: neither may leave a thread behind
    result = train(train_config_from_dict(config(data["rm75"], out, num_workers=1, policy=dict(DIFFUSION)), "test"),
                   progress=True)

    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["000002", "000004", "last"]
    assert (ckpts / "last").resolve() == (ckpts / "000004").resolve() == result.last_checkpoint.resolve()
    assert sorted(p.name for p in (ckpts / "000004" / "pretrained_model").iterdir()) == \
        ["config.json", "manifest.json", "model.safetensors", "stats.safetensors"]
    assert sorted(p.name for p in (ckpts / "000004" / "training_state").iterdir()) == \
        ["manifest.json", "online_model.safetensors", "optimizer.safetensors", "optimizer_param_groups.json",
         "rng_state.safetensors", "scheduler.json", "training_step.json"]
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    meta = json.loads((ckpts / "000004" / "pretrained_model" / "config.json").read_text())
    assert meta["format"] == "ate_policy" and meta["version"] == 2 and meta["policy_type"] == "diffusion"
    assert meta["embodiment"] == "rm75_bimanual" and meta["train"]["steps"] == 4
    assert meta["action_space"]["embodiments"]["rm75_bimanual"][:8] == list(range(8, 16))
    step = json.loads((ckpts / "000004" / "training_state" / "training_step.json").read_text())
    assert step["step"] == 4 and step["ema_step"] == 4

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and "lr" in r and "grad_norm" in r for r in rows)
    assert len(result.losses) == 4
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    loaded = load_pretrained(result.last_checkpoint)
    assert loaded.policy_type == "diffusion" and "rm75_bimanual" in loaded.stats


def test_same_seed_gives_bit_identical_weights(data, tmp_path: Path) -> None:
    a = run(config(data["rm75"], tmp_path / "a"))
    b = run(config(data["rm75"], tmp_path / "b"))
    assert a.losses == b.losses
    for part in ("pretrained_model/model.safetensors", "training_state/online_model.safetensors"):
        assert_same_tensors(tensors(a.last_checkpoint / part), tensors(b.last_checkpoint / part))
    c = run(config(data["rm75"], tmp_path / "c", seed=4))
    assert c.losses != a.losses


def test_resume_equals_an_uninterrupted_run_bit_for_bit(data, tmp_path: Path) -> None:
    # 30 samples, batches of 7: 4 steps per epoch, so the run resumes mid-epoch and then crosses
    # into the next one; both data orders must be the straight run's.
    cfg = dict(steps=6, save_every=3, batch_size=7)
    straight = run(config(data["rm75"], tmp_path / "straight", **cfg))

    calls = {"n": 0}

    def crash_after_three(policy, batch):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt  # the job is killed during step 4
        return policy.compute_loss(batch)

    with pytest.raises(KeyboardInterrupt):
        run(config(data["rm75"], tmp_path / "resumed", **cfg), loss_fn=crash_after_three)
    assert (tmp_path / "resumed" / "checkpoints" / "last").resolve().name == "000003"
    resumed = run(config(data["rm75"], tmp_path / "resumed", resume=True, **cfg))

    assert resumed.start_step == 3 and resumed.losses == straight.losses[3:]
    for part in ("pretrained_model/model.safetensors", "training_state/online_model.safetensors",
                 "training_state/optimizer.safetensors"):
        assert_same_tensors(tensors(straight.last_checkpoint / part), tensors(resumed.last_checkpoint / part))
    rows = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4, 5, 6]


def test_resume_without_a_checkpoint_is_refused(data, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no checkpoints/last to resume from"):
        run(config(data["rm75"], tmp_path / "new", resume=True))


def test_a_finished_run_is_not_overwritten(data, tmp_path: Path) -> None:
    run(config(data["rm75"], tmp_path / "run", steps=2))
    with pytest.raises(TrainingError, match="already holds checkpoints"):
        run(config(data["rm75"], tmp_path / "run", steps=2))


def test_fine_tune_onto_another_embodiment_keeps_both_stats(data, tmp_path: Path) -> None:
    pre = run(config(data["rm65"], tmp_path / "pre", steps=2))
    # warm-up makes the first step's learning rate 0: the fine-tuned weights after one step must
    # be exactly the pre-trained (deployed) ones, which shows they were loaded.
    fine_cfg = config(data["rm75"], tmp_path / "fine", steps=1, warmup_steps=1, init_from=str(pre.last_checkpoint))
    del fine_cfg["policy"]
    fine = run(fine_cfg)

    loaded = load_pretrained(fine.last_checkpoint)
    assert loaded.embodiment == "rm75_bimanual"
    assert set(loaded.stats) == {"rm65_single", "rm75_bimanual"}
    assert loaded.stats["rm65_single"]["action"].shape == (7,)
    assert loaded.stats["rm75_bimanual"]["action"].shape == (16,)
    pre_loaded = load_pretrained(pre.last_checkpoint)
    for key in ("mean", "std"):
        assert (getattr(pre_loaded.stats["rm65_single"]["action"], key) ==
                getattr(loaded.stats["rm65_single"]["action"], key)).all()
    assert loaded.config == pre_loaded.config
    assert_same_tensors(tensors(pre.last_checkpoint / "pretrained_model" / "model.safetensors"),
                        tensors(fine.last_checkpoint / "pretrained_model" / "model.safetensors"))


def test_policy_section_conflicting_with_init_from_is_a_config_error(data, tmp_path: Path) -> None:
    pre = run(config(data["rm65"], tmp_path / "pre", steps=1))
    same = config(data["rm75"], tmp_path / "same", steps=1, init_from=str(pre.last_checkpoint))
    run(same)  # a policy section equal to the checkpoint's is fine
    other = dict(FLOW, expert_n_layers=2)
    bad = config(data["rm75"], tmp_path / "bad", steps=1, init_from=str(pre.last_checkpoint), policy=other)
    with pytest.raises(ConfigError, match=r"policy\.expert_n_layers: conflicts with the checkpoint of init_from"):
        run(bad)


def _cli(args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "ate_core.train.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_config_key_exits_2_naming_file_and_key(data, tmp_path: Path) -> None:
    cfg = config(data["rm75"], tmp_path / "out")
    cfg["policy"] = dict(FLOW, encoder=dict(ENCODER, backbone="resnet999"))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _cli(["--config", str(path), "--no-progress"], tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}: policy.encoder.backbone: 'resnet999' is not one of" in lines[0]

    path.write_text(yaml.safe_dump(config(data["rm75"], tmp_path / "out")))
    proc = _cli(["--config", str(path), "--set", "steps=-5"], tmp_path)
    assert proc.returncode == 2 and "command line: steps: -5 must be > 0" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_every_stage_ends_in_one_error_line_and_its_exit_status(capsys) -> None:
    def raising(error: BaseException):
        def fn(*_):
            raise error
        return fn

    assert run_stage("ate_x", raising(TrainingError("resume: nothing to resume")), print) == 2
    assert run_stage("ate_x", lambda: 1, raising(ConfigError("c.yaml", "steps", "-5 must be > 0"))) == 2
    assert run_stage("ate_x", lambda: 1, raising(TrainingError("step 3: training diverged"))) == 1
    assert run_stage("ate_x", lambda: 1, raising(KeyboardInterrupt()), resumable=True) == 130
    assert run_stage("ate_x", lambda: 1, raising(KeyboardInterrupt())) == 130
    assert run_stage("ate_x", lambda: 1, lambda _: None) == 0
    assert capsys.readouterr().err.splitlines() == [
        "ate_x: error: resume: nothing to resume", "ate_x: error: c.yaml: steps: -5 must be > 0",
        "ate_x: error: step 3: training diverged",
        "ate_x: error: interrupted; resume with --resume from the last checkpoint", "ate_x: error: interrupted"]


def test_cli_trains_and_reports_where_the_checkpoint_went(data, tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config(data["rm75"], tmp_path / "ignored", steps=2)))
    proc = _cli(["--config", str(path), "--output-dir", str(tmp_path / "out"), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"checkpoint: {tmp_path / 'out' / 'checkpoints' / '000002'}" in proc.stdout
    assert f"loss curve: {tmp_path / 'out' / 'loss.png'}" in proc.stdout
    assert (tmp_path / "out" / "checkpoints" / "000002" / "pretrained_model" / "model.safetensors").is_file()


def test_two_roots_of_different_embodiments_train_one_policy(data, tmp_path: Path) -> None:
    cfg = config(data["rm75"], tmp_path / "mixed", steps=2, embodiment="rm75_bimanual")
    cfg["dataset"]["roots"] = [str(data["rm65"]), str(data["rm75"])]
    result = run(cfg)
    loaded = load_pretrained(result.last_checkpoint)
    assert set(loaded.stats) == {"rm65_single", "rm75_bimanual"} and loaded.embodiment == "rm75_bimanual"


def test_fine_tune_with_another_norm_mode_is_a_config_error(data, tmp_path: Path) -> None:
    pre = run(config(data["rm75"], tmp_path / "pre", steps=1))
    cfg = config(data["rm75"], tmp_path / "fine", init_from=str(pre.last_checkpoint), norm_mode="min_max")
    del cfg["policy"]
    with pytest.raises(ConfigError, match=r"norm_mode: 'min_max' here, but the checkpoint .* 'mean_std'"):
        run(cfg)


def test_a_diverging_loss_stops_training_with_the_step(data, tmp_path: Path) -> None:
    def explode(policy, batch):
        return policy.compute_loss(batch) * float("nan")

    with pytest.raises(TrainingError, match="step 1: training diverged"):
        run(config(data["rm75"], tmp_path / "nan"), loss_fn=explode)


def test_learning_rate_warms_up_then_follows_a_cosine_to_zero() -> None:
    from ate_core.train.trainer import cosine_with_warmup

    f = cosine_with_warmup(10, 110)
    assert [f(s) for s in (0, 5, 10)] == [0.0, 0.5, 1.0]
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    assert cosine_with_warmup(10, 110, "constant")(100) == 1.0


def test_ema_follows_diffusion_policys_schedule_and_copies_buffers() -> None:
    from torch import nn

    from ate_core.train.ema import EMAModel, ema_decay

    assert ema_decay(0) == 0.0 and ema_decay(1) == 0.0
    assert ema_decay(10) == pytest.approx(1 - (1 + 9) ** -0.75)
    assert ema_decay(10**9) == 0.9999 and ema_decay(5, update_after_step=10) == 0.0
    model = nn.BatchNorm1d(3)
    ema = EMAModel(model)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.step(model)  # decay 0: a copy
    assert torch.equal(ema.averaged_model.weight, model.weight)
    with torch.no_grad():
        model.weight.fill_(4.0)
        model.running_mean.fill_(7.0)
    ema.step(model)
    ema.step(model)  # decay ema_decay(2) = 1 - 2 ** -0.75
    d = 1 - 2 ** -0.75
    assert torch.allclose(ema.averaged_model.weight, torch.full((3,), d * 4.0 + (1 - d) * 4.0))
    assert torch.equal(ema.averaged_model.running_mean, model.running_mean)  # buffers copied, not averaged


def test_example_configs_load_with_the_robot_defaults() -> None:
    from ate_core.train.config import load_train_config

    for name, policy_type in (("train_diffusion.yaml", "diffusion"), ("train_flow.yaml", "flow")):
        cfg = load_train_config(REPO / "config" / name)
        assert cfg.policy.type == policy_type
        assert cfg.policy.config.cameras == ("head", "left_wrist", "right_wrist")
        assert cfg.policy.config.image_size == (224, 224)
        assert cfg.embodiment in ("", "rm75_bimanual") and cfg.ema.enabled
        over = load_train_config(REPO / "config" / name, {"policy": None, "init_from": "ckpt", "steps": 1000})
        assert over.policy is None and over.init_from == "ckpt" and over.steps == 1000
