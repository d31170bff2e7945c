"""Chunk-sampling latency and peak memory of the reference policies' default configs.

    .venv/bin/python bench/policy_latency.py [--repeats 30] [--threads N] [--device cpu|cuda]
        [--dtype float32|bfloat16|float16] [--cases diffusion_unet,diffusion_transformer,flow]
        [--no-trace] [--json out.json]

Each policy runs in its own child process, so its peak memory is its own: on CPU the peak
resident set size of that process (model, activations and the Python runtime), on CUDA
``torch.cuda.max_memory_allocated``. Latency is one ``policy.sample(obs)`` for a batch of one
observation as the robot sends it (three 224x224 cameras, proprioception, an instruction),
measured after warm-up: the image encoder once plus every denoising step. As on the robot
(``inference.trace``), the per-step network runs as a TorchScript trace; ``--no-trace`` runs it
eagerly.
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

#: name -> (policy type, config overrides); defaults are the shipped configs.
CASES: Dict[str, tuple] = {
    "diffusion_unet": ("diffusion", {}),
    "diffusion_transformer": ("diffusion", {"denoiser": "transformer"}),
    "flow": ("flow", {}),
}


def measure(case: str, repeats: int, device: str, dtype: str, threads: int, trace: bool) -> dict:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from ate_core.policy.base import Observation
    from ate_core.policy.factory import make_policy

    policy_type, overrides = CASES[case]
    torch.manual_seed(0)
    policy = make_policy(policy_type, overrides).eval().to(device)
    cfg = policy.config
    torch_dtype = getattr(torch, dtype)
    if torch_dtype != torch.float32:
        policy = policy.to(torch_dtype)
    policy.trace_for_inference(trace)
    h, w = cfg.image_size
    mask = torch.zeros(1, cfg.state_width, dtype=torch.bool)
    mask[:, :16] = True
    obs = Observation(
        images=torch.randint(0, 256, (1, cfg.n_obs_steps, len(cfg.cameras), 3, h, w), dtype=torch.uint8),
        state=torch.randn(1, cfg.n_obs_steps, cfg.state_width) * mask[:, None, :],
        state_mask=mask, task=("put the red cube in the box",)).to(device)

    def once() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        chunk = policy.sample(obs)
        if device == "cuda":
            torch.cuda.synchronize()
        assert chunk.shape == (1, cfg.horizon, cfg.action_width) and torch.isfinite(chunk).all()
        return time.perf_counter() - t0

    for _ in range(3):
        once()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times: List[float] = [once() for _ in range(repeats)]
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        peak_kind = "cuda max allocated"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        peak_kind = "process peak RSS"
    steps = getattr(cfg, "num_inference_steps", None) or getattr(cfg, "num_steps", None)
    return {
        "case": case, "policy": policy_type, "horizon": cfg.horizon, "steps": steps,
        "cameras": len(cfg.cameras), "image_size": list(cfg.image_size), "n_obs_steps": cfg.n_obs_steps,
        "params_m": sum(p.numel() for p in policy.parameters()) / 1e6,
        "threads": torch.get_num_threads(), "device": device, "dtype": dtype, "traced": trace,
        **summary_ms(times), "peak_mb": peak_mb, "peak_kind": peak_kind, "repeats": repeats,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--cases", default="diffusion_unet,diffusion_transformer,flow")
    parser.add_argument("--no-trace", action="store_true",
                        help="run the per-step network eagerly (inference.trace: false)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one case, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeats, args.device, args.dtype, args.threads,
                                 not args.no_trace)))
        return 0

    head = header("bench/policy_latency.py: chunk sampling, batch 1, default configs")
    print_header(head)
    results = []
    for case in args.cases.split(","):
        if case not in CASES:
            parser.error(f"unknown case {case!r} (expected: {', '.join(CASES)})")
        out = subprocess.run([sys.executable, __file__, "--one", case, "--repeats", str(args.repeats),
                              "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
                              *(["--no-trace"] if args.no_trace else [])],
                             check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print()
    print(f"{'case':<22}{'H':>4}{'steps':>6}{'cams':>5}{'params M':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'peak MB':>9}")
    for r in results:
        print(f"{r['case']:<22}{r['horizon']:>4}{r['steps']:>6}{r['cameras']:>5}{r['params_m']:>10.1f}"
              f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['peak_mb']:>9.0f}")
    print(f"\n{results[0]['device']}, {results[0]['dtype']}, {results[0]['threads']} torch threads, "
          f"{'traced' if results[0]['traced'] else 'eager'} per-step network, "
          f"{args.repeats} samples after 3 warm-up; peak memory = {results[0]['peak_kind']}")
    if args.json:
        write_json(args.json, head, {"cases": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
