"""Training the alignment VAEs: stage pre on the pre-training robot, stage ada on the new one.

:func:`train_vae` takes a validated :class:`AlignConfig` and

* reads the action chunks of the configured data sets in the policy's model space
  (:class:`ActionChunkDataset`: the same statistics, normalisation and unified slots);
* stage ``pre``: trains a fresh VAE with its KL to N(0, I); afterwards encodes every training
  chunk and stores the :class:`LatentStats` (mu_pre, std_pre and a bank of posteriors) with the
  checkpoint;
* stage ``ada``: reads the stage-pre checkpoint (same latent shape, action layout and
  normalisation mode, or a :class:`ConfigError`), trains a fresh VAE with its KL to
  N(mu_pre, std_pre^2), stores the adaptation latent statistics (what inference-time guidance
  steers toward) and the reference; with ``baseline`` it also trains the same VAE with the
  same seed, steps and data but its KL to N(0, I), into ``<output_dir>/baseline/``, and writes
  the latent-fit report (:mod:`ate_core.align.report`).

Every run uses AdamW with linear warm-up and cosine decay and gradient clipping, logs
``metrics.jsonl`` (step, total, recon, kl, mmd, lr, grad_norm) and draws ``loss.png`` (one panel
per term). Determinism: the weights are initialised from ``seed``, the chunk order of each epoch
comes from a generator seeded with ``seed`` and the latent and prior noise from another, so two
runs with one config give the same weights on a CPU, and the baseline differs from the aligned
VAE only by its KL reference. Checkpoints go to ``<output_dir>/checkpoints/<step>/`` with a
``last`` pointer; the final one carries the latent statistics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ate_core.align.checkpoint import KLReference, LoadedVAE, load_vae, save_vae, write_report
from ate_core.align.chunks import ActionChunkDataset
from ate_core.align.config import AlignConfig, align_config_to_dict
from ate_core.align.latent_stats import LatentStats, compute_latent_stats
from ate_core.align.modeling_vae import ActionChunkVAE
from ate_core.align.report import latent_fit_report
from ate_core.config import ConfigError
from ate_core.data.spaces import ActionSpaceError, UnifiedActionSpace, default_action_space
from ate_core.io import CheckpointError, checkpoint_dir, latest_checkpoint, point_last
from ate_core.train.stage import TrainingError
from ate_core.train.trainer import cosine_with_warmup

__all__ = ["train_vae", "AlignResult", "check_pre_checkpoint", "plot_align_losses",
           "METRICS_FILE", "LOSS_PLOT_FILE", "REPORT_FILE", "BASELINE_DIR"]

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"
REPORT_FILE = "report.json"
BASELINE_DIR = "baseline"
TERMS = ("total", "recon", "kl", "mmd")


@dataclass(frozen=True)
class AlignResult:
    """Where a run went and what it measured.

    ``losses``: one row per step ``{"step", "total", "recon", "kl", "mmd", "lr"}``.
    ``report``: the latent-fit report (stage ada), else None.
    """

    output_dir: Path
    checkpoint: Path
    losses: List[Dict[str, float]]
    report: Optional[Dict[str, Any]] = None
    latent_stats: Optional[LatentStats] = None
    baseline_checkpoint: Optional[Path] = None
    baseline_losses: Optional[List[Dict[str, float]]] = None


# ---------------------------------------------------------------------------------------------
# Set-up checks: everything that can be wrong with the config fails before training starts


def _resolve_device(kind: str, source: str) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(source, "device", "cuda requested but no CUDA device is available")
    return torch.device(kind)


def _space_dict(space: UnifiedActionSpace) -> Dict[str, Any]:
    return {"width": space.width, "embodiments": {k: list(v) for k, v in space.embodiments.items()}}


def check_pre_checkpoint(cfg: AlignConfig, space: UnifiedActionSpace, source: str = "align config") -> LoadedVAE:
    """The stage-pre VAE a stage-ada run aligns to; a mismatch is a :class:`ConfigError`.

    Its stage must be "pre", it must carry latent statistics (a final checkpoint), and its
    latent shape, chunk shape, action layout and normalisation mode must be this run's: the
    adaptation VAE's KL compares latents value by value with the stored mu_pre / std_pre.
    """
    try:
        pre = load_vae(cfg.pre_checkpoint)
    except CheckpointError as e:
        raise ConfigError(source, "pre_checkpoint", str(e)) from None
    if pre.stage != "pre":
        raise ConfigError(source, "pre_checkpoint", f"{pre.path}: stage is {pre.stage!r}; the reference of "
                                                    "stage ada must come from a stage-pre VAE")
    for name in ("horizon", "action_width", "latent_tokens", "latent_dim"):
        mine, theirs = getattr(cfg.vae, name), getattr(pre.config, name)
        if mine != theirs:
            raise ConfigError(source, f"vae.{name}", f"{mine} here, {theirs} in the pre checkpoint ({pre.path}); "
                                                     "both VAEs must share chunk and latent shapes")
    if _space_dict(pre.action_space) != _space_dict(space):
        raise ConfigError(source, "pre_checkpoint", f"{pre.path}: its unified action layout differs from this "
                                                    "run's; the two VAEs must read the same slots")
    if pre.norm_mode != cfg.norm_mode:
        raise ConfigError(source, "norm_mode", f"{cfg.norm_mode!r} here, {pre.norm_mode!r} in the pre checkpoint "
                                               f"({pre.path}); the policy has one model space")
    if pre.latent_stats is None:
        raise ConfigError(source, "pre_checkpoint", f"{pre.path}: has no latent statistics (an intermediate "
                                                    "checkpoint?); use the final one (checkpoints/last)")
    return pre


def _open_chunks(cfg: AlignConfig, space: UnifiedActionSpace, source: str) -> ActionChunkDataset:
    for root in cfg.dataset.roots:
        if not Path(root).is_dir():
            raise ConfigError(source, "dataset.roots", f"{root}: no such dataset folder")
    try:
        chunks = ActionChunkDataset(list(cfg.dataset.roots), horizon=cfg.vae.horizon, action_space=space,
                                    norm_mode=cfg.norm_mode,
                                    episodes=list(cfg.dataset.episodes) if cfg.dataset.episodes else None)
    except ActionSpaceError as e:
        raise ConfigError(source, "dataset.roots", str(e)) from None
    if len(chunks) < cfg.batch_size:
        raise ConfigError(source, "batch_size", f"{cfg.batch_size} is more than the {len(chunks)} chunks of "
                                                "the data set (one batch per step, no partial batches)")
    return chunks


def _check_output_dir(out: Path, source: str) -> None:
    for d in (out, out / BASELINE_DIR):
        if (d / "checkpoints").is_dir() and latest_checkpoint(d / "checkpoints") is not None:
            raise ConfigError(source, "output_dir", f"{d} already holds checkpoints; choose another output_dir")


# ---------------------------------------------------------------------------------------------
# Metrics and the loss plot


def plot_align_losses(rows: Sequence[Dict[str, float]], path: Path, title: str = "VAE training") -> Path:
    """One panel per loss term (log scale where the term stays positive), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ate_core.train.plots import smooth

    fig = Figure(figsize=(9.0, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    steps = [r["step"] for r in rows]
    for i, term in enumerate(TERMS):
        ax = fig.add_subplot(2, 2, i + 1)
        values = [float(r[term]) for r in rows]
        if values:
            window = max(1, len(values) // 50)
            ax.plot(steps, values, color="tab:blue", linewidth=0.8 if window > 1 else 1.4,
                    alpha=0.4 if window > 1 else 1.0)
            if window > 1:
                ax.plot(steps, smooth(values, window), color="tab:blue", linewidth=1.6)
            if all(v > 0 for v in values):
                ax.set_yscale("log")
        ax.set_title(term, fontsize="medium")
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def _read_rows(path: Path) -> List[Dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


# ---------------------------------------------------------------------------------------------
# One VAE


SaveFn = Callable[[int, ActionChunkVAE], Path]


def _fit(cfg: AlignConfig, chunks: ActionChunkDataset, reference: KLReference, out: Path, device: torch.device,
         *, progress: bool, desc: str, save: SaveFn) -> Tuple[ActionChunkVAE, List[Dict[str, float]]]:
    """Train one fresh VAE for ``cfg.steps``; intermediate checkpoints through ``save``."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    vae = ActionChunkVAE(cfg.vae).to(device)
    vae.train()
    params = list(vae.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup_steps, cfg.steps))
    loss_fn = cfg.loss.build()
    ref = reference.to(device)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    latent_size = cfg.vae.latent_size
    n, b = len(chunks), cfg.batch_size
    per_epoch = n // b

    out.mkdir(parents=True, exist_ok=True)
    metrics = out / METRICS_FILE
    metrics.write_text("", encoding="utf-8")
    tqdm.monitor_interval = 0  # no TMonitor thread
    bar = tqdm(total=cfg.steps, disable=not progress, desc=desc, unit="step", mininterval=0.5,
               dynamic_ncols=True, leave=True)
    rows: List[Dict[str, float]] = []
    window: List[torch.Tensor] = []
    order = torch.empty(0, dtype=torch.int64)
    t0 = time.monotonic()
    try:
        for step in range(1, cfg.steps + 1):
            k = (step - 1) % per_epoch
            if k == 0:
                order = torch.randperm(n, generator=order_gen)
            x, mask = chunks.get_batch(order[k * b:(k + 1) * b])
            x = x.to(device, non_blocking=True)
            mask = mask.to(device, non_blocking=True)
            output = vae(x, mask, generator=noise_gen)
            prior = torch.randn((b, latent_size), generator=noise_gen, device=device, dtype=x.dtype)
            terms = loss_fn(output, x, mask, ref.mean, ref.std, prior)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            max_norm = cfg.grad_clip_norm if cfg.grad_clip_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            values = torch.stack([terms[t].detach() for t in TERMS] + [grad_norm.detach()]).double().cpu().tolist()
            if not all(math.isfinite(v) for v in values):
                raise TrainingError(f"{desc}: step {step}: training diverged (loss terms "
                                    f"{dict(zip(TERMS, values[:4]))}, gradient norm {values[4]}); lower lr or "
                                    "check the data")
            lr = float(optimizer.param_groups[0]["lr"])  # the rate this step used
            optimizer.step()
            scheduler.step()
            row = {"step": step, **dict(zip(TERMS, values[:4])), "lr": lr}
            rows.append(row)
            window.append(torch.tensor(values, dtype=torch.float64))
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                mean = torch.stack(window).mean(0).tolist()
                logged = {"step": step, **dict(zip(TERMS, mean[:4])), "lr": lr, "grad_norm": mean[4],
                          "time_s": round(time.monotonic() - t0, 3)}
                with open(metrics, "a", encoding="utf-8") as f:
                    f.write(json.dumps(logged) + "\n")
                bar.set_postfix(recon=f"{mean[1]:.4g}", kl=f"{mean[2]:.3g}", mmd=f"{mean[3]:.3g}", refresh=False)
                window = []
            if step % cfg.save_every == 0 and step != cfg.steps:
                save(step, vae)
                plot_align_losses(_read_rows(metrics), out / LOSS_PLOT_FILE, title=f"{desc} ({out.name})")
    finally:
        bar.close()
    plot_align_losses(_read_rows(metrics), out / LOSS_PLOT_FILE, title=f"{desc} ({out.name})")
    return vae, rows


def _save_step(out: Path, step: int, vae: ActionChunkVAE, *, cfg: AlignConfig, chunks: ActionChunkDataset,
               space: UnifiedActionSpace, reference: Optional[KLReference], latent_stats: Optional[LatentStats],
               extra: Dict[str, Any]) -> Path:
    path = save_vae(checkpoint_dir(out, step), vae, stage=cfg.stage, norm_stats=chunks.stats,
                    norm_mode=cfg.norm_mode, action_space=space, embodiments=chunks.embodiments,
                    latent_stats=latent_stats, reference=reference, train_config=align_config_to_dict(cfg),
                    extra={"step": step, "final": latent_stats is not None, **extra})
    point_last(path)
    return path


def _run(cfg: AlignConfig, chunks: ActionChunkDataset, space: UnifiedActionSpace, reference: KLReference,
         out: Path, device: torch.device, *, progress: bool, desc: str,
         extra: Dict[str, Any]) -> Tuple[ActionChunkVAE, List[Dict[str, float]], Path, LatentStats]:
    """Train, then encode the training chunks and write the final checkpoint with their stats."""
    stored_reference = reference if cfg.stage == "ada" else None

    def save(step: int, vae: ActionChunkVAE) -> Path:
        return _save_step(out, step, vae, cfg=cfg, chunks=chunks, space=space, reference=stored_reference,
                          latent_stats=None, extra=extra)

    vae, rows = _fit(cfg, chunks, reference, out, device, progress=progress, desc=desc, save=save)
    stats = compute_latent_stats(vae, chunks, cfg.stats_batch_size, cfg.stats_noise_level,
                                 bank_size=cfg.bank_size, seed=cfg.seed)
    path = _save_step(out, cfg.steps, vae, cfg=cfg, chunks=chunks, space=space, reference=stored_reference,
                      latent_stats=stats, extra=extra)
    vae.eval()
    return vae, rows, path, stats


# ---------------------------------------------------------------------------------------------
# The entry point


def train_vae(cfg: AlignConfig, *, progress: bool = True, source: str = "align config") -> AlignResult:
    """Run one alignment stage (see the module docstring) and return where it went.

    ``source`` names the config in errors (the YAML path, from the CLI). Problems with the
    config, the data or the pre checkpoint raise :class:`ConfigError` (or the data's own
    error) before any training; a diverging loss raises :class:`TrainingError`.
    """
    out = cfg.run_dir
    device = _resolve_device(cfg.device, source)
    _check_output_dir(out, source)
    space = default_action_space(cfg.vae.action_width)
    latent_shape = (cfg.vae.latent_tokens, cfg.vae.latent_dim)
    pre: Optional[LoadedVAE] = None
    reference = KLReference.standard(latent_shape)
    if cfg.stage == "ada":
        pre = check_pre_checkpoint(cfg, space, source)
        assert pre.latent_stats is not None
        reference = KLReference(pre.latent_stats.mean.clone(), pre.latent_stats.std.clone())
    chunks = _open_chunks(cfg, space, source)

    extra: Dict[str, Any] = {}
    if pre is not None:
        extra = {"pre_checkpoint": str(pre.path), "pre_sha256": pre.sha256, "baseline": False}
    vae, rows, path, stats = _run(cfg, chunks, space, reference, out, device, progress=progress,
                                  desc=f"align {cfg.stage}", extra=extra)
    if pre is None:
        return AlignResult(output_dir=out, checkpoint=path, losses=rows, latent_stats=stats)

    assert pre.latent_stats is not None
    baseline_vae = baseline_path = baseline_rows = None
    if cfg.baseline:
        base_cfg = dataclasses.replace(cfg, output_dir=str(out / BASELINE_DIR), baseline=False)
        baseline_vae, baseline_rows, baseline_path, _ = _run(
            base_cfg, chunks, space, KLReference.standard(latent_shape), out / BASELINE_DIR, device,
            progress=progress, desc="baseline (KL to N(0, I))", extra={**extra, "baseline": True})
    report = latent_fit_report(vae, pre.latent_stats, chunks, baseline_vae, batch_size=cfg.stats_batch_size)
    report = {"checkpoint": str(path), "baseline_checkpoint": None if baseline_path is None else str(baseline_path),
              "pre_checkpoint": str(pre.path), **report}
    write_report(path, report)
    write_report(out, report)
    return AlignResult(output_dir=out, checkpoint=path, losses=rows, report=report, latent_stats=stats,
                       baseline_checkpoint=baseline_path, baseline_losses=baseline_rows)
