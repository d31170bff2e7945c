"""The training loop: pre-training from scratch and fine-tuning, single process or under torchrun.

One loop serves both: :func:`train` takes a validated :class:`TrainConfig` and

* builds the episode datasets, their normalisation stats (per embodiment) and one processor
  per dataset, so DataLoader workers do the decoding, normalising and padding;
* builds the policy from ``policy`` (pre-training), from ``init_from``'s stored config and
  weights (fine-tuning; the new data's stats are stored beside the old ones), or from the run's
  own last checkpoint (``resume``);
* runs AdamW with linear warm-up and cosine decay, gradient clipping and the EMA, logs every
  step's loss (``metrics.jsonl`` every ``log_every`` steps), saves checkpoints and ``loss.png``.

Determinism: the model is initialised from ``seed``, the noise of each rank is drawn from
``seed`` and the rank, and the data order is a pure function of ``(seed, epoch)``
(:class:`~torch.utils.data.DistributedSampler`), so two runs with the same config give
bit-identical weights on a CPU, and a run resumed from a checkpoint continues exactly where the
straight run would have been (with ``num_workers: 0``; workers reseed per epoch).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler, Sampler

from ate_core.config import ConfigError
from ate_core.policy import factory
from ate_core.io import checkpoint_dir, latest_checkpoint
from ate_core.policy.base import Batch, Policy
from ate_core.policy.pretrained import LoadedPolicy, load_pretrained, read_pretrained_config
from ate_core.data.spaces import UnifiedActionSpace, default_action_space
from ate_core.train import checkpoint as ckpt
from ate_core.train.config import PolicySection, TrainConfig, train_config_to_dict
from ate_core.train.datasets import dataset_embodiment, open_datasets, stats_by_embodiment
from ate_core.train.distributed import (DistInfo, all_reduce_mean, barrier, dist_info, distributed,
                                        gather_digests, resolve_device, state_digest, wrap_model)
from ate_core.train.ema import EMAModel
from ate_core.train.stage import TrainingError

__all__ = ["train", "TrainResult", "LossFn", "policy_conflicts", "check_policy_section",
           "resolve_policy_source", "METRICS_FILE", "LOSS_PLOT_FILE", "SUMMARY_FILE"]

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"
SUMMARY_FILE = "train_summary.json"

#: loss_fn(policy, batch) -> scalar loss; the default is ``policy.compute_loss(batch)``.
LossFn = Callable[[Policy, Batch], torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    last_checkpoint: Optional[Path]
    losses: List[float]  # this process's loss at every step it ran (resumed runs: from the resume)
    start_step: int = 0
    steps: int = 0
    weights_digest: str = ""  # SHA-256 of the raw (online) weights at the end, see distributed.state_digest
    rank_digests: Tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Data


class _ResumableSampler(Sampler):
    """A DistributedSampler whose epoch can be entered part-way (for resuming mid-epoch)."""

    def __init__(self, inner: DistributedSampler) -> None:
        self.inner = inner
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: numpy and python RNGs follow the worker's torch seed (which the
    loader derives from its per-epoch generator, so workers are seeded the same every run)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


# ---------------------------------------------------------------------------------------------
# Policy source: a fresh config, a checkpoint to fine-tune, or the run's own checkpoint


def resolve_policy_source(cfg: TrainConfig) -> Tuple[str, Optional[Path]]:
    """("scratch" | "init_from" | "resume", checkpoint step folder or None)."""
    if cfg.resume:
        last = latest_checkpoint(Path(cfg.output_dir) / "checkpoints")
        if last is None:
            raise TrainingError(f"resume: {cfg.output_dir} has no checkpoints/last to resume from")
        return "resume", last
    if cfg.init_from:
        return "init_from", Path(cfg.init_from)
    return "scratch", None


def policy_conflicts(section: Optional[PolicySection], policy_type: str, config: Any) -> List[str]:
    """Dotted keys where a YAML policy section disagrees with a checkpoint's policy config."""
    if section is None:
        return []
    if section.type != policy_type:
        return [f"type: {section.type!r} here, {policy_type!r} in the checkpoint"]
    mine, theirs = _flat(factory.config_to_dict(section.config)), _flat(factory.config_to_dict(config))
    return [f"{k}: {mine.get(k)!r} here, {theirs.get(k)!r} in the checkpoint"
            for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]


def _flat(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def check_policy_section(cfg: TrainConfig, source: str = "train config") -> None:
    """With ``init_from``/``resume`` the model config comes from the checkpoint: a ``policy``
    section that says otherwise is a :class:`ConfigError`, and so is another ``norm_mode`` (the
    weights expect the normalisation they were trained with)."""
    kind, path = resolve_policy_source(cfg)
    if kind == "scratch":
        return
    _, raw, policy_type, config = read_pretrained_config(path)
    if raw.get("norm_mode") != cfg.norm_mode:
        raise ConfigError(source, "norm_mode", f"{cfg.norm_mode!r} here, but the checkpoint ({path}) was trained "
                                               f"with {raw.get('norm_mode')!r}")
    conflicts = policy_conflicts(cfg.policy, policy_type, config)
    if conflicts:
        key = "policy." + conflicts[0].split(":")[0] if not conflicts[0].startswith("type") else "policy.type"
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        origin = "init_from" if kind == "init_from" else "the run being resumed"
        raise ConfigError(source, key, f"conflicts with the checkpoint of {origin} ({path}): "
                                       f"{conflicts[0]}{more}; the model config comes from the checkpoint, "
                                       "so drop the policy section or make it match")


# ---------------------------------------------------------------------------------------------
# Optimisation pieces


def cosine_with_warmup(warmup_steps: int, total_steps: int, kind: str = "cosine") -> Callable[[int], float]:
    """The learning-rate factor per step: linear warm-up from 0, then cosine to 0 (or constant).

    Same curve as diffusers' ``get_cosine_schedule_with_warmup`` (Diffusion Policy, LeRobot).
    """
    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        if kind == "constant":
            return 1.0
        progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return factor


class _LossModule(nn.Module):
    """The policy plus its loss, as one module, so DDP sees the loss computation as ``forward``
    (a guided loss that calls ``policy.training_terms`` still gets its gradients all-reduced)."""

    def __init__(self, policy: Policy, loss_fn: Optional[LossFn]) -> None:
        super().__init__()
        self.policy = policy
        self.loss_fn = loss_fn

    def forward(self, batch: Batch) -> torch.Tensor:
        if self.loss_fn is None:
            return self.policy.compute_loss(batch)
        return self.loss_fn(self.policy, batch)


def _gather_rng(info: DistInfo, device: torch.device) -> Dict[int, Dict[str, torch.Tensor]]:
    """Every rank's RNG state on rank 0 (tensors serialised with safetensors; nothing pickled)."""
    mine = ckpt.capture_rng_state()
    if not info.is_distributed:
        return {0: mine}
    import torch.distributed as dist
    from safetensors.torch import load as st_load, save as st_save

    blob = torch.frombuffer(bytearray(st_save(mine)), dtype=torch.uint8).to(device)
    size = torch.tensor([blob.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s.item()) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[:blob.numel()] = blob
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return {r: st_load(bytes(p[:int(sizes[r].item())].cpu().numpy().tobytes())) for r, p in enumerate(parts)}


# ---------------------------------------------------------------------------------------------
# Metrics


def _read_metrics(path: Path, upto_step: Optional[int] = None) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if upto_step is None or int(row.get("step", 0)) <= upto_step:
                rows.append(row)
    return rows


def _rewrite_metrics(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def _plot(output_dir: Path) -> None:
    from ate_core.train.plots import plot_loss_curve

    rows = _read_metrics(output_dir / METRICS_FILE)
    plot_loss_curve([r["step"] for r in rows], [r["loss"] for r in rows], str(output_dir / LOSS_PLOT_FILE),
                    lrs=[r.get("lr", 0.0) for r in rows], title=f"training loss ({output_dir.name})")


# ---------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, *, progress: bool = True, loss_fn: Optional[LossFn] = None,
          source: str = "train config", meta_extra: Optional[Mapping[str, Any]] = None) -> TrainResult:
    """Run one training job to ``cfg.steps`` and return where its last checkpoint went.

    ``loss_fn(policy, batch)`` replaces ``policy.compute_loss(batch)`` (e.g. a guided fine-tuning
    loss); it runs inside the data-parallel wrapper, so its gradients are all-reduced too. If it
    (or, for a bound method, its owner) has ``.to(device)``, that is called first: a loss that
    holds a model of its own (the guidance's VAE) must live where the policy does.
    ``meta_extra``: more keys for every checkpoint's ``config.json`` and for
    ``train_summary.json`` (how the run was fine-tuned, for the record).
    ``source`` names the config in errors (the YAML path, from the CLI).
    """
    info = dist_info()
    device = resolve_device(cfg.device, info)
    extra = dict(meta_extra or {})
    reserved = sorted(set(extra) & _RESERVED_META)
    if reserved:
        raise ValueError(f"meta_extra may not set {reserved}: the trainer writes them")
    holder = loss_fn if hasattr(loss_fn, "to") else getattr(loss_fn, "__self__", None)
    if holder is not None and callable(getattr(holder, "to", None)):
        holder.to(device)
    with distributed(device, info):
        return _train(cfg, info, device, progress=progress, loss_fn=loss_fn, source=source, meta_extra=extra)


#: config.json / train_summary.json keys the trainer owns (see ate_core.policy.pretrained).
_RESERVED_META = frozenset({"format", "version", "policy_type", "policy", "embodiment", "embodiments", "norm_mode",
                            "action_space", "train", "steps", "start_step", "last_checkpoint",
                            "final_loss", "world_size", "weights_sha256_by_rank", "ranks_in_sync", "loss_png",
                            "fps"})


def _training_fps(datasets: Sequence[Any], embodiments: Sequence[str], target: str, loaded: Any,
                  source: str) -> Optional[float]:
    """The frame rate of the target embodiment's data: chunk point i of a checkpoint is due
    ``i / fps`` after its observation, so the robot needs it (``config.json: fps``).

    Data sets of the target embodiment must agree (one checkpoint, one spacing); data of other
    embodiments (a pre-training mixture) may run at their own rates. Without target data (a run
    that only names the embodiment) the checkpoint being continued says it, if it does.
    """
    rates = {str(getattr(ds, "root", "?")): float(ds.info.fps)
             for ds, emb in zip(datasets, embodiments) if emb == target}
    if len(set(rates.values())) > 1:
        listed = ", ".join(f"{root} at {fps:g} Hz" for root, fps in rates.items())
        raise ConfigError(source, "dataset.roots", f"the {target!r} data sets disagree on the frame rate ({listed}); "
                                                   "a checkpoint has one time step between chunk points, so "
                                                   "resample them to one rate or train on one of them")
    if rates:
        return next(iter(rates.values()))
    fps = loaded.meta.get("fps") if loaded is not None else None
    return float(fps) if isinstance(fps, (int, float)) and not isinstance(fps, bool) else None


def _train(cfg: TrainConfig, info: DistInfo, device: torch.device, *, progress: bool,
           loss_fn: Optional[LossFn], source: str, meta_extra: Mapping[str, Any]) -> TrainResult:
    output_dir = Path(cfg.output_dir)
    if cfg.batch_size % info.world_size:
        raise ConfigError(source, "batch_size", f"{cfg.batch_size} does not split evenly over "
                                                        f"{info.world_size} processes")
    local_batch = cfg.batch_size // info.world_size
    kind, ckpt_path = resolve_policy_source(cfg)
    if kind != "resume" and (output_dir / "checkpoints").is_dir() and \
            latest_checkpoint(output_dir / "checkpoints") is not None:
        raise TrainingError(f"{output_dir} already holds checkpoints; set resume: true to continue that run "
                            "or choose another output_dir")
    check_policy_section(cfg, source)

    # -- policy config and, for fine-tuning / resuming, the stored weights and stats
    loaded: Optional[LoadedPolicy] = None
    if kind == "scratch":
        assert cfg.policy is not None
        policy_type, policy_cfg = cfg.policy.type, cfg.policy.config
    else:
        loaded = load_pretrained(ckpt_path)
        policy_type, policy_cfg = loaded.policy_type, loaded.config

    # -- data
    datasets = open_datasets(cfg, policy_cfg, source)
    embodiments = [dataset_embodiment(ds) for ds in datasets]
    space: UnifiedActionSpace = loaded.action_space if loaded is not None else \
        default_action_space(policy_cfg.action_width)
    for root, emb in zip(cfg.dataset.roots, embodiments):
        if emb not in space.embodiments:
            raise ConfigError(source, "dataset.roots", f"{root}: embodiment {emb!r} has no slots in the unified "
                                                       f"action space (known: {sorted(space.embodiments)})")
    target_embodiment = cfg.embodiment or embodiments[0]
    if kind == "resume":
        assert loaded is not None
        stats = {k: dict(v) for k, v in loaded.stats.items()}
        missing = [e for e in embodiments if e not in stats]
        if missing:
            raise TrainingError(f"resume: the checkpoint has no stats for embodiment(s) {missing}")
    else:
        stats = {} if loaded is None else {k: dict(v) for k, v in loaded.stats.items()}
        stats.update(stats_by_embodiment(datasets, embodiments))
    if target_embodiment not in stats:
        raise ConfigError(source, "embodiment", f"{target_embodiment!r}: no dataset of this embodiment and no "
                                                f"stats for it in the checkpoint (has: {sorted(stats)})")
    fps = _training_fps(datasets, embodiments, target_embodiment, loaded, source)
    from ate_core.policy.processor import PolicyProcessor, ProcessedDataset, collate

    processed = [ProcessedDataset(ds, PolicyProcessor(action_space=space, embodiment=emb, stats=stats[emb],
                                                      cameras=tuple(policy_cfg.cameras),
                                                      image_size=tuple(policy_cfg.image_size),
                                                      norm_mode=cfg.norm_mode,
                                                      env_state_dim=policy_cfg.env_state_dim))
                 for ds, emb in zip(datasets, embodiments)]
    data = processed[0] if len(processed) == 1 else ConcatDataset(processed)
    inner_sampler = DistributedSampler(data, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                       seed=cfg.seed, drop_last=True)
    sampler = _ResumableSampler(inner_sampler)
    batches_per_epoch = len(inner_sampler) // local_batch
    if batches_per_epoch == 0:
        raise TrainingError(f"the dataset has {len(data)} samples, fewer than one batch of {cfg.batch_size} "
                            f"({local_batch} per process x {info.world_size})")
    loader_gen = torch.Generator()
    loader = DataLoader(data, batch_size=local_batch, sampler=sampler, drop_last=True, collate_fn=collate,
                        num_workers=cfg.num_workers, worker_init_fn=seed_worker, generator=loader_gen,
                        persistent_workers=False)

    # -- model, optimiser, schedule, EMA (initialised identically on every rank)
    _seed_everything(cfg.seed)
    policy = factory.make_policy(policy_type, policy_cfg)
    if loaded is not None:
        policy.load_state_dict(loaded.policy.state_dict(), strict=True)
    policy.to(device)
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    # foreach: one batched kernel per state tensor kind instead of a Python loop over parameters
    # (torch only defaults to it on CUDA; on a CPU it is the larger part of a small model's step).
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                  foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup_steps, cfg.steps,
                                                                                cfg.scheduler))
    ema = None
    if cfg.ema.enabled:
        ema = EMAModel(policy, update_after_step=cfg.ema.update_after_step, inv_gamma=cfg.ema.inv_gamma,
                       power=cfg.ema.power, min_value=cfg.ema.min_value, max_value=cfg.ema.max_value)

    start_step = 0
    if kind == "resume":
        assert ckpt_path is not None and loaded is not None
        state = ckpt.load_training_state(ckpt_path, model=policy, optimizer=optimizer, scheduler=scheduler)
        start_step = state.step
        if ema is not None:
            ema.load_state_dict(loaded.policy.state_dict(), int(state.info.get("ema_step", start_step)))
        rng = state.rng_by_rank.get(info.rank)
        if rng is not None and int(state.info.get("world_size", 1)) == info.world_size:
            ckpt.restore_rng_state(rng)
        else:
            _seed_everything(cfg.seed + 7919 * info.rank + start_step)
        if start_step >= cfg.steps:
            raise TrainingError(f"resume: the checkpoint is at step {start_step}, already at steps={cfg.steps}; "
                                "raise steps to train further")
    else:
        _seed_everything(cfg.seed + 7919 * info.rank)
    del loaded

    model = wrap_model(_LossModule(policy, loss_fn), info, device)
    use_amp = bool(cfg.amp and device.type == "cuda")
    meta = {"embodiment": target_embodiment, "norm_mode": cfg.norm_mode, "action_space": space,
            "train": train_config_to_dict(cfg), **meta_extra}
    if fps is not None:
        meta["fps"] = fps
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        metrics_rows = _read_metrics(output_dir / METRICS_FILE, upto_step=start_step) if kind == "resume" else []
        _rewrite_metrics(output_dir / METRICS_FILE, metrics_rows)  # drop lines past the checkpoint
    barrier(info)

    def save(step: int, epoch: int, offset: int) -> Path:
        rngs = _gather_rng(info, device)  # a collective: every rank takes part
        path = checkpoint_dir(output_dir, step)
        if info.is_main:
            path = ckpt.save_checkpoint(
                output_dir, step, deploy_model=ema.averaged_model if ema is not None else policy,
                online_model=policy, optimizer=optimizer, scheduler=scheduler, stats=stats, meta=meta,
                rng_by_rank=rngs,
                info={"epoch": epoch, "batch_in_epoch": offset, "ema_step": ema.optimization_step if ema else 0,
                      "world_size": info.world_size, "global_batch_size": cfg.batch_size, "seed": cfg.seed,
                      "policy_type": policy_type})
            _plot(output_dir)
        barrier(info)
        return path

    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no TMonitor thread
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (progress and info.is_main), desc="train",
               unit="step", mininterval=0.5, dynamic_ncols=True, leave=True)
    losses: List[float] = []
    window: List[float] = []
    last_path: Optional[Path] = None
    epoch, offset = divmod(start_step, batches_per_epoch)
    batches = None
    t0 = time.monotonic()
    last_log = (t0, start_step)
    step = start_step
    try:
        while step < cfg.steps:
            if batches is None:
                sampler.set_epoch(epoch, skip=offset * local_batch)
                loader_gen.manual_seed(_epoch_seed(cfg.seed, epoch))
                batches = iter(loader)
            try:
                batch = next(batches)
            except StopIteration:
                batches = None
                epoch, offset = epoch + 1, 0
                continue
            batch = batch.to(device, non_blocking=device.type == "cuda")
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = cfg.grad_clip_norm if cfg.grad_clip_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            loss_value = float(loss.detach())
            if not (math.isfinite(grad_norm) and math.isfinite(loss_value)):
                # Gradients are all-reduced, so every rank sees a bad norm at the same step.
                raise TrainingError(f"step {step + 1}: training diverged (loss {loss_value}, "
                                    f"gradient norm {grad_norm}); lower lr or check the data")
            lr = float(optimizer.param_groups[0]["lr"])  # the rate this step used
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.step(policy)
            step += 1
            offset += 1
            losses.append(loss_value)
            window.append(loss_value)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                mean_loss = float(all_reduce_mean(torch.tensor(sum(window) / len(window), dtype=torch.float64,
                                                               device=device), info))
                now = time.monotonic()
                rate = (step - last_log[1]) * cfg.batch_size / max(now - last_log[0], 1e-9)
                last_log = (now, step)
                if info.is_main:
                    row = {"step": step, "loss": mean_loss, "lr": lr, "grad_norm": grad_norm, "epoch": epoch,
                           "samples_per_s": round(rate, 2), "time_s": round(now - t0, 3)}
                    if ema is not None:
                        row["ema_decay"] = ema.decay
                    with open(output_dir / METRICS_FILE, "a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
                    bar.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{lr:.2e}", refresh=False)
                window = []
            if step % cfg.save_every == 0 or step == cfg.steps:
                last_path = save(step, epoch, offset)
    finally:
        bar.close()
        del batches  # stops DataLoader workers now, not at garbage collection

    digest = state_digest(policy)
    digests = tuple(gather_digests(digest, info, device))
    if info.is_main:
        summary = {"steps": cfg.steps, "start_step": start_step, "last_checkpoint": str(last_path),
                   "final_loss": losses[-1] if losses else None, "world_size": info.world_size,
                   "weights_sha256_by_rank": list(digests), "ranks_in_sync": len(set(digests)) == 1,
                   "loss_png": str(output_dir / LOSS_PLOT_FILE), "policy_type": policy_type, **meta_extra}
        with open(output_dir / SUMMARY_FILE, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    if len(set(digests)) != 1:
        raise TrainingError(f"ranks ended with different weights ({digests}); data-parallel training desynchronised")
    return TrainResult(output_dir=output_dir, last_checkpoint=last_path, losses=losses, start_step=start_step,
                       steps=cfg.steps, weights_digest=digest, rank_digests=digests)
