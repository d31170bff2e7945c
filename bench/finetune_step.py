"""Fine-tuning step time, plain vs ATE-guided, for the reference policies' default configs.

    .venv/bin/python bench/finetune_step.py [--batch-size 8] [--repeats 10] [--threads N]
        [--device cpu|cuda] [--amp] [--cases diffusion,flow] [--json out.json]

One step is what the trainer does per batch: the loss forward, backward, gradient clipping and
the AdamW step. ``plain`` is the policy's own denoising loss; ``ate`` is
:meth:`ate_core.steer.guidance.LatentGuidance.loss`, which adds two passes of the adaptation
VAE's encoder (the demonstration's latent, then the noisy chunk's latent and its gradient
w.r.t. the chunk). The VAE is the default :class:`VAEConfig` (latent 512) with the policy's
horizon. The method's cost is the ratio ATE / plain (goal: at most 1.3).

Weights are random and batches synthetic (three 224x224 cameras, the robot's 16 real slots of
the unified vector): step time does not depend on either. Each policy runs in its own child
process; its timed plain and ATE steps alternate, so load from elsewhere on the machine slows
both alike. Peak memory (peak resident set size on CPU, ``torch.cuda.max_memory_allocated`` on
CUDA) is read after the plain warm-up steps (plain fine-tuning's) and after the ATE ones.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import header, print_header, summary_ms, write_json  # noqa: E402

#: name -> (policy type, config overrides); defaults are the shipped configs
#: (diffusion: UNet, H=16, 2 observation steps; flow: H=50, 1 observation step).
CASES: Dict[str, tuple] = {
    "diffusion": ("diffusion", {}),
    "flow": ("flow", {}),
}
METHODS = ("plain", "ate")
GOAL_RATIO = 1.3
WARMUP_STEPS = 2


def _batch(cfg, batch_size: int, device: str):
    import torch

    from ate_core.policy.base import Batch, Observation
    from ate_core.data.spaces import default_action_space

    g = torch.Generator().manual_seed(0)
    space = default_action_space(cfg.action_width)
    mask = space.mask("rm75_bimanual", like=torch.zeros(1))[None].expand(batch_size, -1).clone()
    state_mask = torch.zeros(batch_size, cfg.state_width, dtype=torch.bool)
    state_mask[:, :16] = True
    h, w = cfg.image_size
    obs = Observation(
        images=torch.randint(0, 256, (batch_size, cfg.n_obs_steps, len(cfg.cameras), 3, h, w), generator=g,
                             dtype=torch.uint8),
        state=torch.randn(batch_size, cfg.n_obs_steps, cfg.state_width, generator=g) * state_mask[:, None, :],
        state_mask=state_mask, task=("put the red cube in the box",) * batch_size)
    action = torch.randn(batch_size, cfg.horizon, cfg.action_width, generator=g) * mask[:, None, :]
    return Batch(obs=obs, action=action, action_mask=mask,
                 action_is_pad=torch.zeros(batch_size, cfg.horizon, dtype=torch.bool)).to(device)


def measure(case: str, batch_size: int, repeats: int, device: str, threads: int, amp: bool) -> dict:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from ate_core.align.configuration_vae import VAEConfig
    from ate_core.align.modeling_vae import ActionChunkVAE
    from ate_core.policy.factory import make_policy
    from ate_core.steer.config import GuidanceConfig
    from ate_core.steer.guidance import LatentGuidance

    policy_type, overrides = CASES[case]
    torch.manual_seed(0)
    policy = make_policy(policy_type, overrides).to(device).train()
    cfg = policy.config
    batch = _batch(cfg, batch_size, device)
    vae = ActionChunkVAE(VAEConfig(horizon=cfg.horizon, action_width=cfg.action_width))
    guidance = LatentGuidance(vae, GuidanceConfig()).to(device)
    loss_fns = {"plain": lambda p, b: p.compute_loss(b), "ate": guidance.loss}
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-6, foreach=True)
    use_amp = amp and device == "cuda"

    def step(method: str) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_fns[method](policy, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        assert torch.isfinite(loss)
        return time.perf_counter() - t0

    def peak() -> float:
        if device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    # Plain steps first, so the peak after them is plain fine-tuning's own; then ATE's warm-up.
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(WARMUP_STEPS):
        step("plain")
    peak_plain = peak()
    for _ in range(WARMUP_STEPS):
        step("ate")
    peak_ate = peak()
    # Timed steps alternate, so a machine busy with something else slows both methods alike.
    times: Dict[str, List[float]] = {"plain": [], "ate": []}
    for _ in range(repeats):
        for method in METHODS:
            times[method].append(step(method))
    common = {"case": case, "policy": policy_type, "horizon": cfg.horizon, "cameras": len(cfg.cameras),
              "image_size": list(cfg.image_size), "n_obs_steps": cfg.n_obs_steps, "batch_size": batch_size,
              "params_m": sum(p.numel() for p in policy.parameters()) / 1e6,
              "vae_params_m": sum(p.numel() for p in vae.parameters()) / 1e6,
              "threads": torch.get_num_threads(), "device": device, "amp": use_amp, "repeats": repeats,
              "peak_kind": "cuda max allocated" if device == "cuda" else "process peak RSS"}
    return {**common, **{m: {**summary_ms(times[m]), "peak_mb": pk, "steps_ms": [round(t * 1e3, 1) for t in times[m]]}
                         for m, pk in (("plain", peak_plain), ("ate", peak_ate))}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per case and method")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (the configs' amp: true)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one case, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batch_size, args.repeats, args.device, args.threads, args.amp)))
        return 0

    cases = args.cases.split(",")
    for case in cases:
        if case not in CASES:
            parser.error(f"unknown case {case!r} (expected: {', '.join(CASES)})")
    head = header(f"bench/finetune_step.py: fine-tuning step (forward + backward + AdamW), batch {args.batch_size}, "
                  "default configs, plain vs ATE")
    print_header(head)
    results: Dict[str, dict] = {}
    for case in cases:
        cmd = [sys.executable, __file__, "--one", case, "--batch-size", str(args.batch_size),
               "--repeats", str(args.repeats), "--device", args.device, "--threads", str(args.threads)]
        if args.amp:
            cmd.append("--amp")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results[case] = json.loads(out.stdout.strip().splitlines()[-1])
    print()
    print(f"{'case':<11}{'H':>4}{'obs':>4}{'cams':>5}{'params M':>9}{'VAE M':>7}{'plain ms':>10}{'ATE ms':>9}"
          f"{'ATE/plain':>10}{'plain MB':>10}{'ATE MB':>8}")
    rows = []
    for case in cases:
        r = results[case]
        ratio = r["ate"]["p50_ms"] / r["plain"]["p50_ms"]
        rows.append({**r, "ratio_p50": ratio, "goal_ratio": GOAL_RATIO, "meets_goal": ratio <= GOAL_RATIO})
        print(f"{case:<11}{r['horizon']:>4}{r['n_obs_steps']:>4}{r['cameras']:>5}{r['params_m']:>9.1f}"
              f"{r['vae_params_m']:>7.1f}{r['plain']['p50_ms']:>10.0f}{r['ate']['p50_ms']:>9.0f}{ratio:>10.2f}"
              f"{r['plain']['peak_mb']:>10.0f}{r['ate']['peak_mb']:>8.0f}")
    first = results[cases[0]]
    print(f"\n{first['device']}{' bf16 autocast' if first['amp'] else ', float32'}, {first['threads']} torch threads, "
          f"batch {args.batch_size}, p50 of {args.repeats} steps per method (alternating) after {WARMUP_STEPS} "
          f"warm-up each; peak memory = {first['peak_kind']} (plain: before any ATE step); "
          f"goal ATE/plain <= {GOAL_RATIO}")
    if args.json:
        write_json(args.json, head, {"cases": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
