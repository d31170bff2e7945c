"""The Info-VAE objective of ATE's alignment stage: reconstruction + KL + MMD.

Both VAEs of the alignment stage minimise

    L = w_rec * Rec(D(z), a) + w_kl * KL(...) + w_mmd * MMD^2(q(z), N(0, I)),   z ~ q(z | a)

(InfoVAE, Zhao et al. 2019; ATE section 3.2). The pre-training VAE takes the KL to N(0, I); the
adaptation VAE takes it to the pre-training latent summary N(mu_pre, std_pre^2), which is what
places the new robot's chunks inside the modes of the pre-training latent space. The MMD term
always matches the aggregate posterior to N(0, I): the pre-training aggregate was matched to
N(0, I), so matching the adaptation aggregate to it matches it to the pre-training aggregate.

Every term sees only the real slots of the unified action vector (``action_mask``): padding
carries no loss and no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Sequence

import torch

from ate_core.align.modeling_vae import Posterior, VAEOutput

__all__ = [
    "RECON_KINDS",
    "KL_DIRECTIONS",
    "MMD_KERNELS",
    "DEFAULT_MMD_SCALES",
    "reconstruction_loss",
    "gaussian_kl",
    "kl_term",
    "mmd",
    "InfoVAELoss",
]

RECON_KINDS = ("smooth_l1", "mse")
#: ``posterior_to_reference``: KL(q || p), the paper's reverse KL (mode-seeking in q), our
#: default. ``reference_to_posterior``: KL(p || q), what the official stage-2 code evaluates
#: (``kl_divergence(p, q)``); kept to reproduce it.
KL_DIRECTIONS = ("posterior_to_reference", "reference_to_posterior")
MMD_KERNELS = ("imq", "rbf", "official_imq")
#: ``official_imq``: the official Info-VAE's kernel constant ``C = 2 * D * z_var``, ``z_var = 2``.
OFFICIAL_IMQ_Z_VAR = 2.0
#: ... and the small constant it adds to the kernel's denominator.
OFFICIAL_IMQ_EPS = 1e-7
#: Kernel bandwidth multipliers (WAE's multi-scale IMQ).
DEFAULT_MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, action_mask: torch.Tensor,
                        kind: str = "smooth_l1") -> torch.Tensor:
    """Mean element loss over the real slots of chunks ``[B, H, W]`` (mask ``[B, W]``).

    ``smooth_l1`` (Huber with beta 1) is what the official VAE trains with; ``mse`` is the
    paper's wording. Padded slots are selected away (not multiplied by zero), so whatever they
    hold, even inf or NaN, changes neither the value nor any gradient.
    """
    if kind not in RECON_KINDS:
        raise ValueError(f"reconstruction_loss: kind {kind!r} is not one of {list(RECON_KINDS)}")
    if recon.shape != target.shape or recon.dim() != 3:
        raise ValueError(f"reconstruction_loss: recon {list(recon.shape)} and target "
                         f"{list(target.shape)} must be the same [B, H, W]")
    if tuple(action_mask.shape) != (recon.shape[0], recon.shape[2]):
        raise ValueError(f"reconstruction_loss: mask {list(action_mask.shape)}, expected "
                         f"[{recon.shape[0]}, {recon.shape[2]}]")
    keep = action_mask.to(torch.bool)[:, None, :].expand_as(recon)
    zero = torch.zeros((), dtype=recon.dtype, device=recon.device)
    diff = torch.where(keep, recon - target, zero)
    if kind == "mse":
        per = diff * diff
    else:
        absd = diff.abs()
        per = torch.where(absd < 1.0, 0.5 * diff * diff, absd - 0.5)
    count = keep.sum().clamp_min(1)
    return per.sum() / count


def gaussian_kl(mean_q: torch.Tensor, std_q: torch.Tensor, mean_p: torch.Tensor,
                std_p: torch.Tensor) -> torch.Tensor:
    """Elementwise closed form of KL(N(mean_q, std_q^2) || N(mean_p, std_p^2)) (broadcasting).

    log(std_p / std_q) + (std_q^2 + (mean_q - mean_p)^2) / (2 std_p^2) - 1/2; zero exactly
    when the two Gaussians are equal.
    """
    var_ratio = (std_q / std_p) ** 2
    return torch.log(std_p) - torch.log(std_q) + 0.5 * (var_ratio + ((mean_q - mean_p) / std_p) ** 2 - 1.0)


def kl_term(posterior: Posterior, reference_mean: torch.Tensor, reference_std: torch.Tensor,
            direction: str = "posterior_to_reference") -> torch.Tensor:
    """KL between the posterior ``q(z | a)`` and the reference ``p = N(mean, std^2)``, averaged
    over the batch and the latent values.

    The reference broadcasts against the posterior's ``[B, L, d]`` (give ``[L, d]`` or a scalar).
    ``direction`` picks KL(q || p) (``posterior_to_reference``, the paper's reverse KL: the
    posterior concentrates on a mode of the reference) or KL(p || q)
    (``reference_to_posterior``, the official stage-2 code); see :data:`KL_DIRECTIONS`.
    """
    ref_mean = torch.as_tensor(reference_mean, dtype=posterior.mean.dtype, device=posterior.mean.device)
    ref_std = torch.as_tensor(reference_std, dtype=posterior.std.dtype, device=posterior.std.device)
    if direction == "posterior_to_reference":
        kl = gaussian_kl(posterior.mean, posterior.std, ref_mean, ref_std)
    elif direction == "reference_to_posterior":
        kl = gaussian_kl(ref_mean, ref_std, posterior.mean, posterior.std)
    else:
        raise ValueError(f"kl_term: direction {direction!r} is not one of {list(KL_DIRECTIONS)}")
    return kl.mean()


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Direct differences rather than the |x|^2 + |y|^2 - 2 x.y expansion: exact zeros on the
    # diagonal and no cancellation for nearby points (batches are small, so memory is not a concern).
    return (x[:, None, :] - y[None, :, :]).pow(2).sum(-1)


def _kernel(d2: torch.Tensor, constants: Sequence[float], kind: str) -> torch.Tensor:
    out = torch.zeros_like(d2)
    for c in constants:
        out = out + (c / (c + d2) if kind == "imq" else torch.exp(-d2 / c))
    return out


def mmd(z: torch.Tensor, prior_samples: torch.Tensor, kernel: str = "imq",
        scales: Sequence[float] = DEFAULT_MMD_SCALES, prior_variance: float = 1.0) -> torch.Tensor:
    """Unbiased estimate of MMD^2 between samples ``z [N, D]`` and ``prior_samples [M, D]``.

    Kernels, summed over the bandwidths ``C_s = s * 2 * D * sigma_p^2`` (``sigma_p^2`` the
    prior's variance, 1 for N(0, I)):

    * ``imq`` (inverse multiquadric, WAE, Tolstikhin et al. 2018): k(x, y) = sum_s C_s / (C_s + |x - y|^2)
    * ``rbf``: k(x, y) = sum_s exp(-|x - y|^2 / C_s)
    * ``official_imq``, the official Info-VAE's form, kept to reproduce it: one IMQ on the *mean*
      squared difference, k(x, y) = C / (eps + C + |x - y|^2 / D) with C = 2 * D * 2 (its
      ``z_var``; ``scales`` and ``prior_variance`` do not apply), and the biased estimate
      mean k(z, z) + mean k(p, p) - 2 mean k(z, p), diagonals included. It is nearly flat at a
      wide latent: a unit mean shift at D = 512 gives about 1e-3 where ``imq`` gives about 0.9,
      so at the same ``mmd_weight`` the MMD term is some 900 times weaker than with ``imq``.

    The U-statistic leaves out the diagonal of the within-sample kernel matrices,
    MMD^2 = mean_{i != j} k(z_i, z_j) + mean_{i != j} k(p_i, p_j) - 2 mean_{i, j} k(z_i, p_j),
    so two samples of one distribution give 0 in expectation (it can be slightly negative). The
    heavy-tailed IMQ keeps a useful gradient when the two samples are far apart, where an RBF's
    vanishes.
    """
    if kernel not in MMD_KERNELS:
        raise ValueError(f"mmd: kernel {kernel!r} is not one of {list(MMD_KERNELS)}")
    if z.dim() != 2 or prior_samples.dim() != 2 or z.shape[1] != prior_samples.shape[1]:
        raise ValueError(f"mmd: expected z [N, D] and prior samples [M, D], got {list(z.shape)} "
                         f"and {list(prior_samples.shape)}")
    n, m, dim = z.shape[0], prior_samples.shape[0], z.shape[1]
    if n < 2 or m < 2:
        raise ValueError(f"mmd: the unbiased estimate needs at least 2 samples on each side, got {n} and {m}")
    if not scales:
        raise ValueError("mmd: no kernel scales")
    prior_samples = prior_samples.to(dtype=z.dtype, device=z.device)
    if kernel == "official_imq":
        c = 2.0 * dim * OFFICIAL_IMQ_Z_VAR

        def k(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return c / (OFFICIAL_IMQ_EPS + c + _squared_distances(x, y) / dim)
        return k(z, z).mean() + k(prior_samples, prior_samples).mean() - 2.0 * k(z, prior_samples).mean()
    constants = [float(s) * 2.0 * dim * float(prior_variance) for s in scales]
    k_zz = _kernel(_squared_distances(z, z), constants, kernel)
    k_pp = _kernel(_squared_distances(prior_samples, prior_samples), constants, kernel)
    k_zp = _kernel(_squared_distances(z, prior_samples), constants, kernel)
    # The diagonal of k_zz / k_pp is k(x, x) = len(scales) for both kernels.
    diag = float(len(constants))
    within_z = (k_zz.sum() - diag * n) / (n * (n - 1))
    within_p = (k_pp.sum() - diag * m) / (m * (m - 1))
    return within_z + within_p - 2.0 * k_zp.mean()


@dataclass(frozen=True)
class InfoVAELoss:
    """The weighted Info-VAE objective; weights default to the official VAE's.

    ``kl_weight`` 7.5e-5 and ``mmd_weight`` 1 are the official values: the KL mostly shapes the
    posterior variance while the MMD does the work of organising the aggregate latent.
    """

    recon_weight: float = 1.0
    kl_weight: float = 7.5e-5
    mmd_weight: float = 1.0
    recon_kind: str = "smooth_l1"
    kl_direction: str = "posterior_to_reference"
    mmd_kernel: str = "imq"
    mmd_scales: Sequence[float] = DEFAULT_MMD_SCALES

    def __post_init__(self) -> None:
        if self.recon_kind not in RECON_KINDS:
            raise ValueError(f"InfoVAELoss.recon_kind: {self.recon_kind!r} is not one of {list(RECON_KINDS)}")
        if self.kl_direction not in KL_DIRECTIONS:
            raise ValueError(f"InfoVAELoss.kl_direction: {self.kl_direction!r} is not one of "
                             f"{list(KL_DIRECTIONS)}")
        if self.mmd_kernel not in MMD_KERNELS:
            raise ValueError(f"InfoVAELoss.mmd_kernel: {self.mmd_kernel!r} is not one of {list(MMD_KERNELS)}")
        for name in ("recon_weight", "kl_weight", "mmd_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"InfoVAELoss.{name}: {value} must be a finite number >= 0")
        object.__setattr__(self, "mmd_scales", tuple(float(s) for s in self.mmd_scales))

    def __call__(self, output: VAEOutput, target: torch.Tensor, action_mask: torch.Tensor,
                 reference_mean: torch.Tensor, reference_std: torch.Tensor,
                 prior_samples: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"total", "recon", "kl", "mmd"}`` scalars for one batch.

        ``reference_mean/std`` define the KL's reference (N(0, I) in stage pre, N(mu_pre,
        std_pre^2) in stage ada); ``prior_samples [M, L * d]`` are draws from N(0, I) for the
        MMD against the flattened sampled latents ``[B, L * d]``.
        """
        recon = reconstruction_loss(output.reconstruction, target, action_mask, self.recon_kind)
        kl = kl_term(output.posterior, reference_mean, reference_std, self.kl_direction)
        divergence = mmd(output.z.flatten(1), prior_samples, self.mmd_kernel, self.mmd_scales)
        total = self.recon_weight * recon + self.kl_weight * kl + self.mmd_weight * divergence
        return {"total": total, "recon": recon, "kl": kl, "mmd": divergence}
