"""ate_align end to end: chunk data, both stages through the CLI, checkpoints, report, errors."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
import yaml

from ate_core.align.checkpoint import (CONFIG_FILE, LATENT_STATS_FILE, NORM_STATS_FILE, REFERENCE_FILE, WEIGHTS_FILE,
                                       load_vae, save_vae)
from ate_core.align.chunks import ActionChunkDataset
from ate_core.align.cli import main
from ate_core.align.config import align_config_from_dict
from ate_core.align.configuration_vae import VAEConfig
from ate_core.align.modeling_vae import ActionChunkVAE
from ate_core.align.trainer import train_vae
from ate_core.data.dataset import EpisodeDataset
from ate_core.data.stats import compute_stats
from ate_core.data.synthetic import generate_synthetic_dataset
from ate_core.io import CheckpointError, write_manifest
from ate_core.policy.processor import PolicyProcessor
from ate_core.data.spaces import default_action_space

VAE = {"horizon": 8, "latent_dim": 32, "num_layers": 2, "ff_size": 64, "num_heads": 2}
STEPS = 150


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dict[str, Path]:
    base = tmp_path_factory.mktemp("align_data")
    return {
        "pre": generate_synthetic_dataset(base / "rm65", n_episodes=6, length=24, embodiment="rm65_single",
                                          cameras=("head",), image_size=(32, 32), seed=1),
        "ada": generate_synthetic_dataset(base / "rm75", n_episodes=6, length=24, embodiment="rm75_bimanual",
                                          cameras=("head",), image_size=(32, 32), seed=2),
    }


def write_config(path: Path, root: Path, **overrides: Any) -> Path:
    # A CI-sized VAE and a KL weight large enough for the alignment to show within STEPS steps.
    cfg: Dict[str, Any] = {"dataset": {"roots": [str(root)]}, "vae": dict(VAE), "steps": STEPS, "batch_size": 32,
                           "lr": 1e-3, "warmup_steps": 10, "log_every": 10, "save_every": 100, "device": "cpu",
                           "seed": 0, "loss": {"kl_weight": 0.1}, "bank_size": 64}
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def run_cli(argv: List[str]) -> Dict[str, Any]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*argv, "--no-progress"])
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> Dict[str, Any]:
    base = tmp_path_factory.mktemp("align_runs")
    config = write_config(base / "align.yaml", data["pre"])
    pre = run_cli(["--config", str(config), "--stage", "pre", "--output-dir", str(base / "pre")])
    ada = run_cli(["--config", str(config), "--stage", "ada", "--pre", str(base / "pre"),
                   "--output-dir", str(base / "ada"), "--set", f"dataset.roots=[{data['ada']}]",
                   "--set", "baseline=true"])
    return {"base": base, "config": config, "pre": pre, "ada": ada, "pre_dir": base / "pre", "ada_dir": base / "ada"}


def metrics(run_dir: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ the data


def test_chunks_are_the_policy_processors_action_chunks(data) -> None:
    space = default_action_space()
    chunks = ActionChunkDataset([data["pre"]], horizon=8, action_space=space, norm_mode="mean_std")
    episodes = EpisodeDataset(data["pre"], horizon=8, n_obs_steps=1, cameras=())
    processor = PolicyProcessor(action_space=space, embodiment="rm65_single", stats=compute_stats(episodes),
                                cameras=("head",), image_size=(32, 32))
    assert len(chunks) == len(episodes) == 6 * 24
    for index in (0, 5, 23, 24, 100, len(chunks) - 1):  # includes chunks running past an episode's end
        chunk, mask = chunks[index]
        assert np.array_equal(chunk.numpy(), processor.action(episodes[index].action)), index
        assert np.array_equal(mask.numpy(), processor.mask)
    for key in ("state", "action"):
        for field in ("mean", "std", "min", "max"):
            assert np.array_equal(getattr(chunks.stats["rm65_single"][key], field),
                                  getattr(compute_stats(data["pre"])[key], field))


def test_chunks_of_several_embodiments_keep_their_own_slots_and_stats(data) -> None:
    space = default_action_space()
    chunks = ActionChunkDataset([data["pre"], data["ada"]], horizon=8, action_space=space, norm_mode="min_max")
    assert chunks.embodiments == ("rm65_single", "rm75_bimanual")
    assert len(chunks) == 2 * 6 * 24
    x, mask = chunks.get_batch([0, 6 * 24])
    assert np.array_equal(mask[0].numpy(), space.mask("rm65_single"))
    assert np.array_equal(mask[1].numpy(), space.mask("rm75_bimanual"))
    assert float(x[~mask[:, None, :].expand_as(x)].abs().max()) == 0.0
    assert float(x.abs().max()) <= 1.0 + 1e-6  # min_max: the data's own range maps into [-1, 1]
    assert set(chunks.stats) == {"rm65_single", "rm75_bimanual"}


# ----------------------------------------------------------------------------------- stage pre


def test_stage_pre_trains_and_stores_the_latent_statistics(runs, data) -> None:
    assert runs["pre"]["rc"] == 0, runs["pre"]["err"]
    assert "checkpoint:" in runs["pre"]["out"] and "loss.png" in runs["pre"]["out"]
    loaded = load_vae(runs["pre_dir"])  # the run's output folder resolves to checkpoints/last
    assert loaded.stage == "pre" and loaded.path.name == f"{STEPS:06d}"
    assert loaded.config == VAEConfig(**VAE)
    assert loaded.latent_stats is not None and loaded.latent_stats.count == 6 * 24
    assert loaded.latent_stats.bank_size == 64 and loaded.latent_stats.noise_level == pytest.approx(0.1)
    assert loaded.reference is None
    assert not loaded.vae.training and not any(p.requires_grad for p in loaded.vae.parameters())
    assert loaded.norm_mode == "mean_std" and loaded.embodiments == ("rm65_single",)
    assert np.array_equal(loaded.norm_stats["rm65_single"]["action"].mean, compute_stats(data["pre"])["action"].mean)
    assert (runs["pre_dir"] / "loss.png").stat().st_size > 0
    assert (runs["pre_dir"] / "checkpoints" / "000100" / CONFIG_FILE).is_file()  # save_every
    assert load_vae(runs["pre_dir"] / "checkpoints" / "000100").latent_stats is None  # only the final one


def test_losses_fall(runs) -> None:
    for name in ("pre_dir", "ada_dir"):
        rows = metrics(runs[name])
        assert [r["step"] for r in rows] == list(range(10, STEPS + 1, 10))
        assert set(rows[0]) >= {"step", "total", "recon", "kl", "mmd", "lr"}
        assert rows[-1]["recon"] < 0.5 * rows[0]["recon"], (name, rows[0], rows[-1])
        assert rows[-1]["total"] < rows[0]["total"]


# ----------------------------------------------------------------------------------- stage ada


def test_stage_ada_aligns_to_the_pre_training_latent_statistics(runs) -> None:
    assert runs["ada"]["rc"] == 0, runs["ada"]["err"]
    pre, ada = load_vae(runs["pre_dir"]), load_vae(runs["ada_dir"])
    assert ada.stage == "ada" and ada.embodiments == ("rm75_bimanual",)
    assert ada.reference is not None
    assert torch.equal(ada.reference.mean, pre.latent_stats.mean)
    assert torch.equal(ada.reference.std, pre.latent_stats.std)
    assert ada.latent_stats is not None and ada.latent_stats.count == 6 * 24  # the adaptation latent stats
    assert ada.meta["pre_sha256"] == pre.sha256
    baseline = load_vae(runs["ada_dir"] / "baseline")
    assert baseline.meta["baseline"] is True
    assert torch.equal(baseline.reference.mean, torch.zeros(1, 32)) and torch.equal(baseline.reference.std,
                                                                                    torch.ones(1, 32))


def test_the_report_shows_the_reverse_kl_pulls_latents_into_the_reference(runs) -> None:
    report = json.loads((runs["ada_dir"] / "report.json").read_text())
    assert json.loads((load_vae(runs["ada_dir"]).path / "report.json").read_text()) == report
    aligned, baseline = report["aligned"], report["baseline"]
    assert aligned["log_density_reference"] > baseline["log_density_reference"], report
    assert report["aligned_minus_baseline"]["log_density_reference"] == pytest.approx(
        aligned["log_density_reference"] - baseline["log_density_reference"])
    assert report["chunks"] == 6 * 24 and report["latent_size"] == 32
    for key in ("log_density_pre_mixture", "nearest_bank_distance", "reconstruction_mse"):
        assert np.isfinite(aligned[key]) and np.isfinite(baseline[key])
    out = runs["ada"]["out"]
    assert "log_density_reference" in out and "baseline" in out and "difference" in out


# ------------------------------------------------------------------------------------- errors


def _error_of(argv: List[str], key: str) -> str:
    result = run_cli(argv)
    assert result["rc"] == 2, result
    line = result["err"].strip()
    assert line.startswith("ate_align: error: ") and len(line.splitlines()) == 1, line
    assert f": {key}:" in line, line
    return line


def test_stage_ada_without_a_pre_checkpoint_is_an_error(runs, tmp_path) -> None:
    line = _error_of(["--config", str(runs["config"]), "--stage", "ada", "--set", "pre_checkpoint=",
                      "--output-dir", str(tmp_path / "x")], "pre_checkpoint")
    assert "required" in line


def test_a_pre_checkpoint_of_stage_ada_is_an_error(runs, tmp_path) -> None:
    line = _error_of(["--config", str(runs["config"]), "--stage", "ada", "--pre", str(runs["ada_dir"]),
                      "--output-dir", str(tmp_path / "x")], "pre_checkpoint")
    assert "stage is 'ada'" in line


def test_a_horizon_other_than_the_pre_checkpoints_is_an_error(runs, tmp_path) -> None:
    line = _error_of(["--config", str(runs["config"]), "--stage", "ada", "--pre", str(runs["pre_dir"]),
                      "--set", "vae.horizon=6", "--output-dir", str(tmp_path / "x")], "vae.horizon")
    assert "6 here, 8 in the pre checkpoint" in line


def test_a_norm_mode_other_than_the_pre_checkpoints_is_an_error(runs, tmp_path) -> None:
    _error_of(["--config", str(runs["config"]), "--stage", "ada", "--pre", str(runs["pre_dir"]),
               "--set", "norm_mode=min_max", "--output-dir", str(tmp_path / "x")], "norm_mode")


def test_a_missing_pre_checkpoint_is_an_error(runs, tmp_path) -> None:
    _error_of(["--config", str(runs["config"]), "--stage", "ada", "--pre", str(tmp_path / "nowhere"),
               "--output-dir", str(tmp_path / "x")], "pre_checkpoint")


def test_an_unknown_key_is_an_error(runs, tmp_path) -> None:
    line = _error_of(["--config", str(runs["config"]), "--set", "loss.kl_wieght=1"], "loss.kl_wieght")
    assert "unknown key" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text(runs["config"].read_text() + "learning_rate: 0.1\n")
    assert str(bad) in _error_of(["--config", str(bad)], "learning_rate")


def test_an_output_dir_with_checkpoints_is_not_overwritten(runs) -> None:
    _error_of(["--config", str(runs["config"]), "--stage", "pre", "--output-dir", str(runs["pre_dir"])], "output_dir")


# -------------------------------------------------------------------------------- checkpoints


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_corrupt_weights_file_is_a_checkpoint_error_naming_it(runs, tmp_path) -> None:
    ckpt = _copy(load_vae(runs["pre_dir"]).path, tmp_path / "ckpt")
    raw = bytearray((ckpt / WEIGHTS_FILE).read_bytes())
    raw[-5] ^= 0xFF  # a weight byte: the file still parses, the checksum catches it
    (ckpt / WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"vae\.safetensors: checksum mismatch"):
        load_vae(ckpt)
    (ckpt / WEIGHTS_FILE).write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(CheckpointError, match=r"vae\.safetensors"):
        load_vae(ckpt)


@pytest.mark.parametrize("damage, match", [
    ("missing_stats", r"norm_stats\.safetensors: file not found"),
    ("bad_json", r"vae_config\.json: not valid JSON"),
    ("wrong_format", r"vae_config\.json: format"),
    ("wrong_version", r"vae_config\.json: version"),
    ("latent_dim", r"vae\.safetensors: .*: shape \[.*\], the VAE config needs"),
    ("bad_vae_key", r"vae_config\.json: vae\.num_heads"),
])
def test_a_damaged_checkpoint_names_the_file_and_key(runs, tmp_path, damage: str, match: str) -> None:
    ckpt = _copy(load_vae(runs["pre_dir"]).path, tmp_path / "ckpt")
    cfg_path = ckpt / CONFIG_FILE
    raw = json.loads(cfg_path.read_text())
    if damage == "missing_stats":
        (ckpt / NORM_STATS_FILE).unlink()
    elif damage == "bad_json":
        cfg_path.write_text("{not json")
        write_manifest(ckpt)  # sealed: the JSON itself must be refused, past the manifest check
    else:
        if damage == "wrong_format":
            raw["format"] = "ate_policy"
        elif damage == "wrong_version":
            raw["version"] = 99
        elif damage == "latent_dim":
            raw["vae"]["latent_dim"] = 16
        elif damage == "bad_vae_key":
            raw["vae"]["num_heads"] = 3
        cfg_path.write_text(json.dumps(raw))
        write_manifest(ckpt)
    with pytest.raises(CheckpointError, match=match):
        load_vae(ckpt)


def test_nan_weights_are_refused_naming_the_key(tmp_path) -> None:
    torch.manual_seed(0)
    vae = ActionChunkVAE(VAEConfig(**VAE))
    with torch.no_grad():
        vae.output.bias[0] = float("nan")
    space = default_action_space()
    stats = {"rm65_single": compute_stats_like(7)}
    save_vae(tmp_path / "nan", vae, stage="pre", norm_stats=stats, norm_mode="mean_std", action_space=space,
             embodiments=["rm65_single"])
    with pytest.raises(CheckpointError, match=r"vae\.safetensors: output\.bias: non-finite"):
        load_vae(tmp_path / "nan")


def compute_stats_like(dim: int):
    from ate_core.data.spaces import NormStats

    data = np.random.default_rng(0).normal(size=(50, dim)).astype(np.float32)
    return {"state": NormStats.from_data(data), "action": NormStats.from_data(data)}


def test_a_saved_and_loaded_vae_encodes_bit_identically(runs, tmp_path) -> None:
    trained = load_vae(runs["ada_dir"])
    save_vae(tmp_path / "again", trained.vae, stage="ada", norm_stats=trained.norm_stats, norm_mode=trained.norm_mode,
             action_space=trained.action_space, embodiments=trained.embodiments, latent_stats=trained.latent_stats,
             reference=trained.reference)
    again = load_vae(tmp_path / "again")
    assert again.sha256 == trained.sha256  # the same bytes
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 8, 128, generator=g)
    mask = torch.from_numpy(default_action_space().mask("rm75_bimanual")).expand(5, -1)
    with torch.no_grad():
        a, b = trained.vae.encode(x, mask), again.vae.encode(x, mask)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    for name in ("mean", "std", "bank_mean"):
        assert torch.equal(getattr(again.latent_stats, name), getattr(trained.latent_stats, name))


def test_two_runs_with_one_config_give_identical_weights(data, tmp_path) -> None:
    def run(out: Path) -> str:
        cfg = yaml.safe_load(write_config(tmp_path / "c.yaml", data["pre"]).read_text())
        cfg.update(steps=12, save_every=1000, output_dir=str(out), stats_noise_level=0.0)
        result = train_vae(align_config_from_dict(cfg, "test"), progress=False)
        return load_vae(result.checkpoint).sha256

    assert run(tmp_path / "a") == run(tmp_path / "b")
    assert (tmp_path / "a" / "checkpoints" / "last").exists()
    assert not (tmp_path / "a" / "checkpoints" / "000012" / REFERENCE_FILE).exists()
    assert (tmp_path / "a" / "checkpoints" / "000012" / LATENT_STATS_FILE).exists()
