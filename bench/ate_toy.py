"""ATE on a low-dimensional toy problem: does alignment place the new robot's chunks in
pre-training modes, and does steering reach the target distribution sooner than plain fine-tuning?

    .venv/bin/python bench/ate_toy.py                     # ~5 min on 2 CPU cores
    .venv/bin/python bench/ate_toy.py --quick             # a smoke run (~1 min)
    .venv/bin/python bench/ate_toy.py --png /tmp/ate_toy.png --json /tmp/ate_toy.json

Two embodiments share one 8-wide unified action vector:

* the *source* robot has 2 action dims (slots 0-1); its chunks (8 steps) move from the origin
  along one of 4 directions (0, 90, 180, 270 degrees) at a random speed: 4 modes;
* the *target* robot has 3 action dims (slots 0-2) and 2 modes: the 0 and 90 degree motions of
  the source, with a third dim that rises in one mode and falls in the other.

Part (a), align: a pre-training VAE is trained on source chunks; adaptation VAEs are trained on
a few target chunks with the reverse KL toward the pre-training latent summary (two weights:
the official 7.5e-5 and a stronger one) and without it (KL to N(0, I)). Reported: the mean
log-density of the adaptation latents under the pre-training aggregate posterior (a mixture of
the pre-training posteriors) and the share of them that is "in distribution" (above the 5th
percentile of the pre-training latents' own log-density).

Part (b), steer: a diffusion policy (epsilon prediction, as Diffusion Policy and the official
ATE config) is pre-trained on the source chunks and fine-tuned on the same few target chunks with
the plain loss, with ATE's guided loss, and with ATE plus inference-time guidance. Every few
steps its samples are compared with held-out target chunks: MMD^2 in action space (lower is
better) and the mean distance of a sample to the nearest target mode (precision).
Everything runs through the project's own code: ActionChunkVAE, InfoVAELoss, the latent statistics
of ate_core.align.latent_stats, LatentGuidance, DiffusionPolicy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header  # noqa: E402

from ate_core.align.configuration_vae import VAEConfig  # noqa: E402
from ate_core.align.latent_stats import (LatentStats, compute_latent_stats,  # noqa: E402
                                         log_density_gaussian, log_density_mixture)
from ate_core.align.losses import InfoVAELoss, mmd  # noqa: E402
from ate_core.align.modeling_vae import ActionChunkVAE  # noqa: E402
from ate_core.policy import factory  # noqa: E402
from ate_core.policy.base import Batch, Observation  # noqa: E402
from ate_core.steer.config import GuidanceConfig, InferenceGuidanceConfig  # noqa: E402
from ate_core.steer.guidance import LatentGuidance  # noqa: E402

H, W = 8, 8
SRC_SLOTS, TGT_SLOTS = (0, 1), (0, 1, 2)
SRC_ANGLES = (0.0, 90.0, 180.0, 270.0)
TGT_MODES = ((0.0, +1.0), (90.0, -1.0))  # (direction, sign of the third dim)


# ------------------------------------------------------------------------------------- data


def _mask(slots: Sequence[int], n: int) -> torch.Tensor:
    m = torch.zeros(n, W, dtype=torch.bool)
    m[:, list(slots)] = True
    return m


def source_chunks(n: int, rng: np.random.Generator) -> Tuple[torch.Tensor, np.ndarray]:
    mode = rng.integers(len(SRC_ANGLES), size=n)
    theta = np.radians(np.asarray(SRC_ANGLES)[mode])
    speed = rng.uniform(1.2, 1.8, size=n)
    t = (np.arange(H) + 1) / H
    x = np.zeros((n, H, W), np.float32)
    x[:, :, 0] = (speed * np.cos(theta))[:, None] * t
    x[:, :, 1] = (speed * np.sin(theta))[:, None] * t
    x[:, :, :2] += rng.normal(0, 0.05, size=(n, H, 2))
    return torch.from_numpy(x), mode


def target_chunks(n: int, rng: np.random.Generator) -> Tuple[torch.Tensor, np.ndarray]:
    mode = rng.integers(len(TGT_MODES), size=n)
    angles = np.radians([m[0] for m in TGT_MODES])[mode]
    signs = np.asarray([m[1] for m in TGT_MODES])[mode]
    speed = rng.uniform(1.2, 1.8, size=n)
    t = (np.arange(H) + 1) / H
    x = np.zeros((n, H, W), np.float32)
    x[:, :, 0] = (speed * np.cos(angles))[:, None] * t
    x[:, :, 1] = (speed * np.sin(angles))[:, None] * t
    x[:, :, 2] = (0.8 * signs)[:, None] * t
    x[:, :, :3] += rng.normal(0, 0.05, size=(n, H, 3))
    return torch.from_numpy(x), mode


def target_mode_means() -> torch.Tensor:
    t = (np.arange(H) + 1) / H
    out = np.zeros((len(TGT_MODES), H, W), np.float32)
    for i, (angle, sign) in enumerate(TGT_MODES):
        out[i, :, 0] = 1.5 * math.cos(math.radians(angle)) * t
        out[i, :, 1] = 1.5 * math.sin(math.radians(angle)) * t
        out[i, :, 2] = 0.8 * sign * t
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------ part (a): align


def vae_config() -> VAEConfig:
    return VAEConfig(horizon=H, action_width=W, latent_dim=32, latent_tokens=1, num_layers=2, num_heads=2,
                     ff_size=64)


def train_vae(chunks: torch.Tensor, mask: torch.Tensor, *, steps: int, kl_weight: float,
              reference: Tuple[torch.Tensor, torch.Tensor] | None, seed: int,
              init: ActionChunkVAE | None = None) -> ActionChunkVAE:
    torch.manual_seed(seed)
    vae = ActionChunkVAE(vae_config())
    if init is not None:
        vae.load_state_dict(init.state_dict())
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = InfoVAELoss(kl_weight=kl_weight)
    d = vae.config.latent_dim
    ref_mean, ref_std = reference if reference is not None else (torch.zeros(1, d), torch.ones(1, d))
    g = torch.Generator().manual_seed(seed)
    batch = min(128, len(chunks))
    for _ in range(steps):
        idx = torch.randint(len(chunks), (batch,), generator=g)
        out = vae(chunks[idx], mask[idx])
        prior = torch.randn(batch, vae.config.latent_size, generator=g)
        losses = loss_fn(out, chunks[idx], mask[idx], ref_mean, ref_std, prior)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
    return vae.eval()


def latent_stats(vae: ActionChunkVAE, chunks: torch.Tensor, mask: torch.Tensor) -> LatentStats:
    """The posterior averages of every chunk, and every posterior in chunk order (the bank)."""
    return compute_latent_stats(vae, list(zip(chunks, mask)), bank_size=len(chunks))


def part_align(args: argparse.Namespace, src: torch.Tensor, src_mode: np.ndarray,
               tgt: torch.Tensor) -> Dict[str, object]:
    src_mask, tgt_mask = _mask(SRC_SLOTS, len(src)), _mask(TGT_SLOTS, len(tgt))
    t0 = time.monotonic()
    pre = train_vae(src, src_mask, steps=args.vae_steps, kl_weight=7.5e-5, reference=None, seed=1)
    summary = latent_stats(pre, src, src_mask)
    # a subsample of the pre-training posteriors is the aggregate mixture
    bank = torch.randperm(len(src), generator=torch.Generator().manual_seed(0))[:1024]
    own = log_density_mixture(summary.bank_mean[bank[:256]], summary.bank_mean[bank], summary.bank_std[bank])
    threshold = float(torch.quantile(own, 0.05))
    # the pre-training modes in latent space: centroid and RMS radius of each source mode
    flat = summary.bank_mean.flatten(1)
    modes = torch.as_tensor(src_mode)
    centroids = torch.stack([flat[modes == m].mean(0) for m in range(len(SRC_ANGLES))])
    radii = torch.stack([(flat[modes == m] - centroids[m]).pow(2).sum(1).mean().sqrt()
                         for m in range(len(SRC_ANGLES))])
    reference = (summary.mean, summary.std)
    rows = {}
    vaes = {}
    for name, kl_weight, ref, init in (
            ("no reverse KL (KL to N(0,I))", 7.5e-5, None, None),
            ("reverse KL, weight 7.5e-5 (official)", 7.5e-5, reference, None),
            ("reverse KL, weight 1e-2", 1e-2, reference, None),
            ("reverse KL 1e-2, from VAE_pre weights (ext.)", 1e-2, reference, pre)):
        ada = train_vae(tgt, tgt_mask, steps=args.vae_steps, kl_weight=kl_weight, reference=ref, seed=2,
                        init=init)
        with torch.no_grad():
            out = ada(tgt, tgt_mask)
            z = ada.encode(tgt, tgt_mask).mean
        logp = log_density_mixture(z, summary.bank_mean[bank], summary.bank_std[bank])
        ref_logp = log_density_gaussian(z, summary.mean, summary.std)
        in_mode = (torch.cdist(z.flatten(1), centroids) / radii).min(1).values
        recon = float(((out.reconstruction - tgt) ** 2)[:, :, :3].mean())
        rows[name] = {"mean_log_density_under_pre_aggregate": float(logp.mean()),
                      "mean_log_density_under_reference": float(ref_logp.mean()),
                      "in_distribution_share": float((logp > threshold).float().mean()),
                      "mode_radius_ratio_median": float(in_mode.median()),
                      "in_mode_share": float((in_mode < 2.0).float().mean()),
                      "reconstruction_mse": recon}
        vaes[name] = ada
    return {"rows": rows, "pre_self_log_density_p5": threshold,
            "pre_self_log_density_median": float(own.median()), "seconds": time.monotonic() - t0,
            "_pre_latents": summary.bank_mean.flatten(1), "_pre_modes": src_mode,
            "_ada_latents": {k: v.encode(tgt, tgt_mask).mean.detach().flatten(1) for k, v in vaes.items()},
            "_ada_vae": vaes["reverse KL, weight 1e-2"], "_ada_vae_official": vaes["reverse KL, weight 7.5e-5 (official)"]}


# ------------------------------------------------------------------------------ part (b): steer


def policy_config() -> Dict[str, object]:
    encoder = {"backbone": "resnet10_small", "d_model": 16, "pool": "avg", "text_dim": 8, "text_buckets": 32}
    return {"horizon": H, "n_obs_steps": 1, "n_action_steps": 4, "cameras": ["head"], "image_size": [32, 32],
            "encoder": encoder, "unet_down_dims": [64, 128], "step_embed_dim": 32, "num_inference_steps": 10,
            "action_width": W, "state_width": W, "prediction_type": "epsilon"}


def observation(b: int, slots: Sequence[int]) -> Observation:
    # An uninformative observation: the policy must model the whole (multimodal) chunk distribution.
    return Observation(images=torch.zeros(b, 1, 1, 3, 32, 32, dtype=torch.uint8), state=torch.zeros(b, 1, W),
                       state_mask=_mask(slots, b), task=("move",) * b)


def batch_of(chunks: torch.Tensor, slots: Sequence[int]) -> Batch:
    b = len(chunks)
    return Batch(obs=observation(b, slots), action=chunks, action_mask=_mask(slots, b),
                 action_is_pad=torch.zeros(b, H, dtype=torch.bool))


def fit(policy, chunks: torch.Tensor, slots: Sequence[int], steps: int, *, lr: float, seed: int, loss_fn=None,
        evaluate=None, every: int = 0) -> List[Tuple[int, Dict[str, float]]]:
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=1e-6)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    curve = []
    for step in range(1, steps + 1):
        policy.train()
        idx = torch.randint(len(chunks), (min(64, len(chunks) * 4),), generator=g)
        batch = batch_of(chunks[idx], slots)
        loss = policy.compute_loss(batch) if loss_fn is None else loss_fn(policy, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if evaluate is not None and every and step % every == 0:
            curve.append((step, evaluate(policy)))
    return curve


def make_evaluator(held_out: torch.Tensor, n_samples: int, step_hook_factory=None):
    modes = target_mode_means()
    real = list(TGT_SLOTS)

    @torch.no_grad()
    def evaluate(policy) -> Dict[str, float]:
        policy.eval()
        gen = torch.Generator().manual_seed(1234)
        noise = torch.randn(n_samples, H, W, generator=gen)
        hook = step_hook_factory() if step_hook_factory is not None else None
        samples = policy.sample(observation(n_samples, TGT_SLOTS), noise=noise, step_hook=hook)
        a, b = samples[:, :, real].flatten(1), held_out[:n_samples, :, real].flatten(1)
        dist = torch.cdist(samples[:, :, real].flatten(1), modes[:, :, real].flatten(1)) / math.sqrt(H)
        return {"mmd2": float(mmd(a, b)), "mode_distance": float(dist.min(1).values.mean())}

    return evaluate


def part_steer(args: argparse.Namespace, src: torch.Tensor, tgt: torch.Tensor, held_out: torch.Tensor,
               ada_vae: ActionChunkVAE) -> Dict[str, object]:
    cfg = factory.make_config("diffusion", policy_config())
    t0 = time.monotonic()
    torch.manual_seed(0)
    base = factory.make_policy("diffusion", cfg)
    fit(base, src, SRC_SLOTS, args.pretrain_steps, lr=1e-3, seed=0)
    pretrained = {k: v.clone() for k, v in base.state_dict().items()}
    pretrain_s = time.monotonic() - t0
    guided = LatentGuidance(ada_vae, GuidanceConfig(scale=3.0, clamp=0.1))
    inference = LatentGuidance(ada_vae, GuidanceConfig(scale=3.0, clamp=0.1, inference=InferenceGuidanceConfig(
        enabled=True, scale=3.0, target="mean")), latent_stats=latent_stats(ada_vae, tgt, _mask(TGT_SLOTS, len(tgt))))
    methods = {"plain": (None, None), "ate": (guided.loss, None), "ate + inference guidance": (guided.loss,
                                                                                              inference.step_hook)}
    results: Dict[str, List[List[Tuple[int, Dict[str, float]]]]] = {m: [] for m in methods}
    zero = make_evaluator(held_out, args.eval_samples)(base)
    for seed in range(args.seeds):
        for name, (loss_fn, hook) in methods.items():
            policy = factory.make_policy("diffusion", cfg)
            policy.load_state_dict(pretrained)
            curve = fit(policy, tgt, TGT_SLOTS, args.finetune_steps, lr=args.finetune_lr, seed=100 + seed,
                        loss_fn=loss_fn, evaluate=make_evaluator(held_out, args.eval_samples, hook),
                        every=args.eval_every)
            results[name].append(curve)
    return {"results": results, "before_finetuning": zero, "pretrain_seconds": pretrain_s,
            "seconds": time.monotonic() - t0}


# ----------------------------------------------------------------------------------- report


def _mean_curve(curves: List[List[Tuple[int, Dict[str, float]]]], key: str) -> Tuple[List[int], np.ndarray]:
    steps = [s for s, _ in curves[0]]
    values = np.array([[m[key] for _, m in c] for c in curves])
    return steps, values


def plot(path: str, align: Dict[str, object], steer: Dict[str, object]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    pre = align["_pre_latents"]
    mean = pre.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(pre - mean, q=2, center=False)
    proj = lambda z: ((z - mean) @ v[:, :2]).numpy()  # noqa: E731
    p = proj(pre)
    ax = axes[0]
    ax.scatter(p[:, 0], p[:, 1], c=align["_pre_modes"], cmap="tab10", s=4, alpha=0.35)
    markers = {"no reverse KL (KL to N(0,I))": ("r", "+"), "reverse KL, weight 7.5e-5 (official)": ("k", "x"),
               "reverse KL, weight 1e-2": ("b", "o"), "reverse KL 1e-2, from VAE_pre weights (ext.)": ("g", "^")}
    for name, z in align["_ada_latents"].items():
        color, marker = markers[name]
        q = proj(z)
        ax.scatter(q[:, 0], q[:, 1], c=color, marker=marker, s=30, label=name)
    ax.set_title("latents (PCA of pre-training latents; colour = source mode)")
    ax.legend(fontsize=7)
    for ax, key, label in ((axes[1], "mmd2", "MMD^2 to held-out target chunks"),
                           (axes[2], "mode_distance", "distance to nearest target mode")):
        for name, curves in steer["results"].items():
            steps, values = _mean_curve(curves, key)
            ax.plot(steps, values.mean(0), marker="o", label=name)
        ax.set_xlabel("fine-tuning step")
        ax.set_title(label)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run with few steps")
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per method")
    p.add_argument("--source-chunks", type=int, default=2000)
    p.add_argument("--target-demos", type=int, default=16, help="target chunks available for adaptation")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--finetune-lr", type=float, default=3e-4)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-samples", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", default="ate_toy.png")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.vae_steps, args.pretrain_steps, args.finetune_steps = 1, 200, 200, 60
        args.eval_every, args.eval_samples, args.source_chunks = 20, 128, 500
    torch.set_num_threads(args.threads)
    info = header("ATE toy experiment: align (latent placement) and steer (fine-tuning convergence)")
    for k, v in info.items():
        print(f"{k:>10}: {v}")
    rng = np.random.default_rng(args.seed)
    src, src_mode = source_chunks(args.source_chunks, rng)
    tgt, _ = target_chunks(args.target_demos, rng)        # the few demonstrations of the new robot
    held_out, _ = target_chunks(2048, rng)                 # only for evaluation
    align = part_align(args, src, src_mode, tgt)
    print(f"\n(a) align: {args.target_demos} target chunks, {args.source_chunks} source chunks, "
          f"{args.vae_steps} VAE steps ({align['seconds']:.0f} s)")
    print(f"    pre-training latents' own log-density under the aggregate: median "
          f"{align['pre_self_log_density_median']:.1f}, 5th percentile {align['pre_self_log_density_p5']:.1f}")
    print("    log p_pre: under the pre-training aggregate (mixture of posteriors); log p_ref: under "
          "N(mu_pre, std_pre^2); in-mode: within 2 RMS radii of a source mode's latent centroid")
    print(f"    {'adaptation VAE':<46} {'log p_pre':>10} {'log p_ref':>10} {'in-dist':>8} {'in-mode':>8} "
          f"{'dist/radius':>11} {'recon MSE':>10}")
    for name, row in align["rows"].items():
        print(f"    {name:<46} {row['mean_log_density_under_pre_aggregate']:>10.1f} "
              f"{row['mean_log_density_under_reference']:>10.1f} {row['in_distribution_share']:>8.0%} "
              f"{row['in_mode_share']:>8.0%} {row['mode_radius_ratio_median']:>11.2f} "
              f"{row['reconstruction_mse']:>10.4f}")
    steer = part_steer(args, src, tgt, held_out, align["_ada_vae"])
    print(f"\n(b) steer: diffusion policy (epsilon), pre-trained {args.pretrain_steps} steps on the source "
          f"({steer['pretrain_seconds']:.0f} s), fine-tuned on {args.target_demos} target chunks; "
          f"mean of {args.seeds} seeds; before fine-tuning: MMD^2 {steer['before_finetuning']['mmd2']:.4f}, "
          f"mode distance {steer['before_finetuning']['mode_distance']:.3f}")
    names = list(steer["results"])
    steps, _ = _mean_curve(steer["results"][names[0]], "mmd2")
    print(f"    {'step':>6} " + " ".join(f"{n + ' MMD^2 / dist':>36}" for n in names))
    for i, s in enumerate(steps):
        cells = []
        for n in names:
            _, m = _mean_curve(steer["results"][n], "mmd2")
            _, d = _mean_curve(steer["results"][n], "mode_distance")
            cells.append(f"{m[:, i].mean():>25.4f} / {d[:, i].mean():.3f}")
        print(f"    {s:>6} " + " ".join(f"{c:>36}" for c in cells))
    plot(args.png, align, steer)
    print(f"\nplot: {args.png}")
    if args.json:
        out = {"header": info, "align": {k: v for k, v in align.items() if not k.startswith("_")},
               "steer": {"before_finetuning": steer["before_finetuning"],
                         "curves": {n: [[(s, m) for s, m in c] for c in curves]
                                    for n, curves in steer["results"].items()}}}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
