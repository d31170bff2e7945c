"""How well an adaptation VAE places the new robot's chunks in the pre-training latent space.

ATE's claim for stage 1 is that the reverse KL to N(mu_pre, std_pre^2) puts the adaptation
chunks' latents inside high-density regions of the pre-training latent distribution. The report
measures that on the adaptation chunks' posterior means, for the aligned VAE and (when given) a
baseline trained identically but with its KL to N(0, I):

* ``log_density_reference``: mean log N(mu; mu_pre, std_pre^2), the Gaussian the KL targets;
* ``log_density_pre_mixture``: mean log-density under the pre-training aggregate posterior,
  the mixture of the bank's posteriors (the distribution the policy's pre-training latents
  actually follow);
* ``nearest_bank_distance``: mean Euclidean distance to the nearest pre-training posterior mean;
* ``reconstruction_mse``: the price paid, chunks decoded from their posterior means (real
  slots only).

Log-densities are over all ``L x d`` latent values; ``*_per_dim`` divides them by that number.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ate_core.align.latent_stats import (LatentStats, encode_means, log_density_gaussian, log_density_mixture,
                                         nearest_distance, chunk_batches)

__all__ = ["latent_fit_report", "format_report_table", "METRICS"]

METRICS = ("log_density_reference", "log_density_reference_per_dim", "log_density_pre_mixture",
           "log_density_pre_mixture_per_dim", "nearest_bank_distance", "reconstruction_mse")


def _pre_stats(pre: Any) -> LatentStats:
    stats = pre if isinstance(pre, LatentStats) else getattr(pre, "latent_stats", None)
    if not isinstance(stats, LatentStats):
        raise ValueError("latent_fit_report: the pre-training VAE has no latent statistics")
    return stats


@torch.no_grad()
def _reconstruction_mse(vae: torch.nn.Module, chunks: Any, means: torch.Tensor, batch_size: int) -> float:
    device = next(vae.parameters()).device
    total, count, start = 0.0, 0, 0
    was_training = vae.training
    vae.eval()
    try:
        for x, mask in chunk_batches(chunks, batch_size):
            z = means[start:start + x.shape[0]].to(device)
            start += x.shape[0]
            recon = vae.decode(z, mask.to(device)).double().cpu()
            keep = mask[:, None, :].expand_as(recon)
            diff = torch.where(keep, recon - x.double(), torch.zeros((), dtype=torch.float64))
            total += float((diff * diff).sum())
            count += int(keep.sum())
    finally:
        vae.train(was_training)
    return total / max(count, 1)


def _fit(vae: torch.nn.Module, stats: LatentStats, chunks: Any, batch_size: int) -> Dict[str, float]:
    means, _ = encode_means(vae, chunks, batch_size)
    size = stats.mean.numel()
    ref = log_density_gaussian(means, stats.mean, stats.std)
    mix = log_density_mixture(means, stats.bank_mean, stats.bank_std)
    near = nearest_distance(means, stats.bank_mean)
    out = {
        "log_density_reference": float(ref.mean()),
        "log_density_pre_mixture": float(mix.mean()),
        "nearest_bank_distance": float(near.mean()),
        "reconstruction_mse": _reconstruction_mse(vae, chunks, means, batch_size),
    }
    out["log_density_reference_per_dim"] = out["log_density_reference"] / size
    out["log_density_pre_mixture_per_dim"] = out["log_density_pre_mixture"] / size
    return {k: out[k] for k in METRICS}


def latent_fit_report(ada_vae: torch.nn.Module, pre: Any, chunks: Any,
                      baseline_vae: Optional[torch.nn.Module] = None, *, batch_size: int = 256) -> Dict[str, Any]:
    """The latent-fit numbers (see the module docstring) as a JSON-able dict.

    ``pre``: the pre-training VAE's :class:`LatentStats`, or anything with a ``latent_stats``
    attribute (a :class:`~ate_core.align.checkpoint.LoadedVAE`). ``chunks``: the adaptation
    chunks (an :class:`~ate_core.align.chunks.ActionChunkDataset`). ``aligned_minus_baseline``
    is positive for the log-densities, negative for the distance, when the alignment works.
    """
    stats = _pre_stats(pre)
    if len(chunks) == 0:
        raise ValueError("latent_fit_report: no adaptation chunks")
    aligned = _fit(ada_vae, stats, chunks, batch_size)
    baseline = _fit(baseline_vae, stats, chunks, batch_size) if baseline_vae is not None else None
    return {
        "latent_size": int(stats.mean.numel()),
        "chunks": len(chunks),
        "pre_bank_size": stats.bank_size,
        "reference": "N(mu_pre, std_pre^2) of the pre-training VAE's latent statistics",
        "aligned": aligned,
        "baseline": baseline,
        "aligned_minus_baseline": None if baseline is None else {k: aligned[k] - baseline[k] for k in METRICS},
    }


def format_report_table(report: Dict[str, Any]) -> str:
    """A short fixed-width table of the report (what ``ate_align`` prints)."""
    aligned, baseline = report["aligned"], report.get("baseline")
    diff = report.get("aligned_minus_baseline")
    head = f"{'latent fit (' + str(report['chunks']) + ' chunks, ' + str(report['latent_size']) + ' dims)':<36}" \
           f"{'aligned':>14}"
    if baseline is not None:
        head += f"{'baseline':>14}{'difference':>14}"
    lines = [head, "-" * len(head)]
    for key in METRICS:
        row = f"{key:<36}{aligned[key]:>14.5g}"
        if baseline is not None and diff is not None:
            row += f"{baseline[key]:>14.5g}{diff[key]:>14.5g}"
        lines.append(row)
    return "\n".join(lines)
