"""ate_finetune end to end: a policy pre-trained on one robot, fine-tuned on another plainly and
with ATE latent guidance; what the checkpoints record; the errors that stop a run before it starts;
two torchrun processes that stay in step under the guided loss."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import yaml

from ate_core.align.checkpoint import KLReference, load_vae, save_vae
from ate_core.align.configuration_vae import VAEConfig
from ate_core.align.modeling_vae import ActionChunkVAE
from ate_core.config import ConfigError
from ate_core.data.stats import compute_stats
from ate_core.data.synthetic import generate_synthetic_dataset
from ate_core.policy.pretrained import load_pretrained
from ate_core.data.spaces import default_action_space
from ate_core.io import CheckpointError
from ate_core.steer.cli import main as ate_finetune
from ate_core.steer.finetune import finetune, load_finetune_config
from ate_core.steer.record import FinetuneRecord
from ate_core.train.config import train_config_from_dict
from ate_core.train.trainer import train

REPO = Path(__file__).resolve().parents[1]
ENCODER = {"backbone": "resnet10_small", "d_model": 32, "pool": "avg", "text_dim": 8, "text_buckets": 64}
HORIZON = 8
DIFFUSION = {"type": "diffusion", "horizon": HORIZON, "n_obs_steps": 2, "n_action_steps": 4, "cameras": ["head"],
             "image_size": [32, 32], "encoder": ENCODER, "unet_down_dims": [32, 64], "step_embed_dim": 16,
             "num_inference_steps": 4}
FINETUNE_STEPS = 3


def save_tiny_vae(directory: Path, data_root: Path, *, horizon: int = HORIZON, stage: str = "ada",
                  seed: int = 0) -> Path:
    """An untrained adaptation VAE whose normalisation is the fine-tuning data's (what ate_align
    would record); the guidance only needs its encoder to be differentiable and deterministic."""
    torch.manual_seed(seed)
    config = VAEConfig(horizon=horizon, latent_dim=32, num_layers=1, ff_size=64, num_heads=2)
    reference = KLReference.standard((config.latent_tokens, config.latent_dim)) if stage == "ada" else None
    return save_vae(directory, ActionChunkVAE(config), stage=stage, reference=reference,
                    norm_stats={"rm75_bimanual": compute_stats(data_root)}, norm_mode="mean_std",
                    action_space=default_action_space(), embodiments=["rm75_bimanual"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Dict[str, Path]:
    base = tmp_path_factory.mktemp("finetune")
    rm65 = generate_synthetic_dataset(base / "rm65", n_episodes=3, length=10, cameras=("head",), image_size=(32, 32),
                                      embodiment="rm65_single", seed=2)
    rm75 = generate_synthetic_dataset(base / "rm75", n_episodes=3, length=10, cameras=("head",), image_size=(32, 32),
                                      seed=1)
    pre = train(train_config_from_dict({
        "dataset": {"roots": [str(rm65)]}, "policy": dict(DIFFUSION), "steps": 3, "batch_size": 4, "num_workers": 0,
        "lr": 1e-3, "warmup_steps": 1, "log_every": 1, "save_every": 3, "output_dir": str(base / "pre"),
        "device": "cpu", "seed": 3}, "test"), progress=False)
    config = base / "finetune.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": {"roots": [str(rm75)]}, "policy": None, "steps": FINETUNE_STEPS, "batch_size": 4,
        "num_workers": 0, "lr": 1e-3, "warmup_steps": 1, "log_every": 1, "save_every": FINETUNE_STEPS,
        "device": "cpu", "seed": 7, "output_dir": str(base / "unused")}))
    return {"base": base, "rm75": rm75, "pre": pre.last_checkpoint, "config": config,
            "vae": save_tiny_vae(base / "vae_ada", rm75)}


def cli(setup: Dict[str, Path], out: Path, *args: str) -> int:
    return ate_finetune(["--config", str(setup["config"]), "--init-from", str(setup["pre"]), "--output-dir", str(out),
                         "--no-progress", *args])


def losses(out: Path) -> List[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def meta(out: Path) -> Dict[str, Any]:
    return json.loads((out / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text())


@pytest.fixture(scope="module")
def runs(setup) -> Dict[str, Path]:
    """The same fine-tuning (same data, seed and start) three ways."""
    base = setup["base"]
    out = {"plain": base / "plain", "ate": base / "ate", "ate_scale0": base / "ate_scale0"}
    assert cli(setup, out["plain"], "--method", "plain") == 0
    assert cli(setup, out["ate"], "--method", "ate", "--vae", str(setup["vae"])) == 0
    assert cli(setup, out["ate_scale0"], "--method", "ate", "--vae", str(setup["vae"]), "--set", "ate.scale=0",
               "--set", "steps=1", "--set", "save_every=1") == 0
    return out


def test_plain_fine_tuning_records_its_method_and_loads(runs, setup) -> None:
    loaded = load_pretrained(runs["plain"])
    assert loaded.embodiment == "rm75_bimanual" and set(loaded.stats) == {"rm65_single", "rm75_bimanual"}
    assert loaded.config.horizon == HORIZON
    record = meta(runs["plain"])
    assert record["finetune"] == {"method": "plain"}
    assert record["train"]["method"] == "plain" and record["train"]["init_from"] == str(setup["pre"])
    summary = json.loads((runs["plain"] / "train_summary.json").read_text())
    assert summary["finetune"] == {"method": "plain"} and summary["steps"] == FINETUNE_STEPS


def test_ate_fine_tuning_records_the_vae_and_guidance_that_shaped_it(runs, setup) -> None:
    loaded = load_pretrained(runs["ate"])
    assert loaded.embodiment == "rm75_bimanual" and loaded.policy_type == "diffusion"
    vae = load_vae(setup["vae"])
    record = meta(runs["ate"])["finetune"]
    assert record["method"] == "ate"
    ate = record["ate"]
    assert ate["sha256"] == vae.sha256 and len(ate["sha256"]) == 64
    assert ate["path"] == str(vae.path) and str(setup["vae"]) in ate["path"]
    assert ate["scale"] == 3.0 and ate["clamp"] == 0.1 and ate["stage"] == "ada"
    assert ate["latent_target"] == "clean" and ate["vae_config"]["horizon"] == HORIZON
    summary = json.loads((runs["ate"] / "train_summary.json").read_text())
    assert summary["finetune"] == record


def test_the_record_reads_back_typed_and_writes_what_it_read(runs, setup) -> None:
    for method in ("plain", "ate"):
        raw = meta(runs[method])
        record = FinetuneRecord.from_meta(raw, "config.json")
        assert record is not None and record.method == method
        assert record.to_dict() == raw["finetune"]
    ate = FinetuneRecord.from_meta(meta(runs["ate"]), "config.json").ate
    assert ate.sha256 == load_vae(setup["vae"]).sha256 and ate.stage == "ada"
    assert ate.vae_config.horizon == HORIZON and ate.scale == 3.0 and not ate.inference.enabled
    assert ate.settings() == load_finetune_config(setup["config"], {"init_from": "ckpt", "ate.vae": ate.vae}).ate


def test_a_checkpoint_without_a_record_has_none(setup) -> None:
    raw = json.loads((setup["pre"] / "pretrained_model" / "config.json").read_text())
    assert "finetune" not in raw and FinetuneRecord.from_meta(raw, "config.json") is None


@pytest.mark.parametrize("spoil, key, message", [
    (lambda r: r.update(method="dpo"), "finetune.method", "'dpo' is not one of"),
    (lambda r: r.pop("ate"), "finetune.ate", "required for method 'ate'"),
    (lambda r: r["ate"].pop("sha256"), "finetune.ate.sha256", "required key is missing"),
    (lambda r: r["ate"].update(sha256="abc"), "finetune.ate.sha256", "not a SHA-256 digest"),
    (lambda r: r["ate"]["inference"].update(target="far"), "finetune.ate.inference.target", "'far' is not one of"),
    (lambda r: r["ate"]["vae_config"].update(horizon="8"), "finetune.ate.vae_config.horizon", "expected an integer"),
    (lambda r: r["ate"].update(extra=1), "finetune.ate.extra", "unknown key"),
])
def test_a_malformed_record_names_the_config_json_and_the_key(runs, spoil, key, message) -> None:
    raw = meta(runs["ate"])
    spoil(raw["finetune"])
    config_json = runs["ate"] / "checkpoints" / "last" / "pretrained_model" / "config.json"
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(config_json))}: {re.escape(key)}: .*{message}"):
        FinetuneRecord.from_meta(raw, config_json)


def test_a_record_that_is_not_a_mapping_is_an_error() -> None:
    with pytest.raises(CheckpointError, match=r"^ckpt/config\.json: finetune: expected a mapping"):
        FinetuneRecord.from_meta({"finetune": "ate"}, "ckpt/config.json")


def test_the_guidance_changes_the_loss_and_only_the_guidance_does(runs) -> None:
    plain, ate, ate0 = losses(runs["plain"]), losses(runs["ate"]), losses(runs["ate_scale0"])
    assert len(plain) == len(ate) == FINETUNE_STEPS and all(map(torch.isfinite, torch.tensor(plain + ate)))
    # Step 1 sees the same weights, batch and denoising noise in every run: with lambda = 0 the
    # guided loss is the plain loss, with lambda = 3 the guidance term moves the prediction.
    assert ate0[0] == pytest.approx(plain[0], rel=1e-6, abs=1e-9)
    assert abs(ate[0] - plain[0]) > 1e-4 * plain[0]
    a = load_pretrained(runs["plain"]).policy.state_dict()
    b = load_pretrained(runs["ate"]).policy.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_method_ate_without_a_vae_exits_2_naming_ate_vae(setup, tmp_path: Path, capsys) -> None:
    assert cli(setup, tmp_path / "out", "--method", "ate") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ate_finetune: error: ") and ": ate.vae: required" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_vae_of_another_horizon_exits_2_before_training(setup, tmp_path: Path, capsys) -> None:
    vae = save_tiny_vae(tmp_path / "vae_h4", setup["rm75"], horizon=4)
    assert cli(setup, tmp_path / "out", "--method", "ate", "--vae", str(vae)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "horizon" in err[0] and "4 x 128" in err[0] and f"{HORIZON} x 128" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_pre_training_vae_is_refused(setup, tmp_path: Path, capsys) -> None:
    vae = save_tiny_vae(tmp_path / "vae_pre", setup["rm75"], stage="pre")
    assert cli(setup, tmp_path / "out", "--method", "ate", "--vae", str(vae)) == 2
    assert "stage 'ada'" in capsys.readouterr().err


def test_missing_init_from_exits_2(setup, tmp_path: Path, capsys) -> None:
    code = ate_finetune(["--config", str(setup["config"]), "--method", "plain", "--output-dir", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{setup['config']}: init_from: required" in err[0]


def test_resuming_with_another_vae_is_refused(runs, setup, tmp_path: Path) -> None:
    other = save_tiny_vae(tmp_path / "vae_other", setup["rm75"], seed=1)
    cfg = load_finetune_config(setup["config"], {"init_from": str(setup["pre"]), "output_dir": str(runs["ate"]),
                                                 "ate.vae": str(other), "resume": True, "steps": FINETUNE_STEPS + 1})
    with pytest.raises(ConfigError, match=r"ate\.vae: .* is not the VAE the run being resumed was guided by"):
        finetune(cfg, progress=False, source="test")
    plain = load_finetune_config(setup["config"], {"init_from": str(setup["pre"]), "output_dir": str(runs["ate"]),
                                                   "method": "plain", "resume": True})
    with pytest.raises(ConfigError, match=r"method: 'plain' here, but the run being resumed .* used 'ate'"):
        finetune(plain, progress=False, source="test")


def test_example_configs_load_and_need_a_checkpoint_and_a_vae() -> None:
    for name, horizon_key in (("finetune_diffusion.yaml", "diffusion"), ("finetune_flow.yaml", "flow")):
        path = REPO / "config" / name
        with pytest.raises(ConfigError, match="init_from: required"):
            load_finetune_config(path)
        with pytest.raises(ConfigError, match=r"ate\.vae: required for method 'ate'"):
            load_finetune_config(path, {"init_from": "ckpt"})
        cfg = load_finetune_config(path, {"init_from": "ckpt", "ate.vae": "vae"})
        assert cfg.method == "ate" and cfg.policy is None and cfg.ate.scale == 3.0 and cfg.ate.clamp == 0.1
        assert cfg.ate.latent_target == "clean" and not cfg.ate.inference.enabled
        assert load_finetune_config(path, {"init_from": "ckpt", "method": "plain"}).method == "plain"
        with pytest.raises(ConfigError, match=r"command line: method: 'dpo' is not one of"):
            load_finetune_config(path, {"init_from": "ckpt", "method": "dpo"}, override_source="command line")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_torchrun_ate_fine_tuning_keeps_ranks_in_sync(setup, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([*launcher, "--nproc_per_node", "2", "--master-port", str(free_port()),
                           "-m", "ate_core.steer.cli", "--config", str(setup["config"]), "--method", "ate",
                           "--init-from", str(setup["pre"]), "--vae", str(setup["vae"]), "--output-dir", str(out),
                           "--set", "steps=4", "--set", "save_every=4", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("checkpoint: ") == 1  # only rank 0 reports
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"]
    rank0, rank1 = summary["weights_sha256_by_rank"]
    assert rank0 == rank1
    assert summary["finetune"]["method"] == "ate"
    assert summary["finetune"]["ate"]["sha256"] == load_vae(setup["vae"]).sha256
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
