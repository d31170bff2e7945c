"""A summary of where a VAE puts a data set's chunks in latent space.

After the pre-training VAE is trained, ATE summarises its aggregate posterior by averaging the
encoder's posterior means and standard deviations over the pre-training chunks (the official
``mu.txt`` / ``std.txt``); the adaptation VAE's KL reference is N(mean, std^2) of that summary.
We keep, besides those two averages, the spread of the aggregate posterior itself
(``aggregate_std``: the standard deviation of the mixture of all posteriors) and a seeded
subsample of the posteriors (the *bank*), whose mixture density the latent-fit report uses as
the pre-training latent distribution.

Like the official code, the chunks may be lightly noised before encoding,
``x * sqrt(ab) + eps * sqrt(1 - ab)`` with ``1 - ab`` drawn per chunk from ``[0, noise_level]``:
the guidance later encodes the policy's *noisy* chunks, so the summary should cover the
neighbourhood of the data, not only the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import torch

__all__ = [
    "LatentStats",
    "LatentStatsError",
    "chunk_batches",
    "compute_latent_stats",
    "encode_means",
    "log_density_gaussian",
    "log_density_mixture",
    "nearest_distance",
    "noise_chunks",
    "stats_summary",
    "DEFAULT_BANK_SIZE",
]

DEFAULT_BANK_SIZE = 4096
_LOG_2PI = math.log(2.0 * math.pi)


class LatentStatsError(ValueError):
    """Latent statistics are malformed (shape, finiteness, a missing tensor)."""


@dataclass(frozen=True, eq=False)
class LatentStats:
    """Averages of a VAE's posteriors over a data set, float32 tensors on the CPU.

    ``mean`` [L, d]: average posterior mean. ``std`` [L, d]: average posterior std (the
    official summary; the adaptation stage's KL reference is N(mean, std^2)).
    ``aggregate_std`` [L, d]: std of the aggregate posterior, sqrt(var of the means + mean of
    the variances). ``count``: chunks encoded. ``bank_mean`` / ``bank_std`` [N, L, d]: up to N
    of the posteriors, a seeded subsample. ``noise_level``: the input noise used (0 = clean).
    """

    mean: torch.Tensor
    std: torch.Tensor
    aggregate_std: torch.Tensor
    count: int
    bank_mean: torch.Tensor
    bank_std: torch.Tensor
    noise_level: float = 0.0

    def __post_init__(self) -> None:
        shape = tuple(self.mean.shape)
        if len(shape) != 2:
            raise LatentStatsError(f"mean: expected [L, d], got {list(shape)}")
        for name in ("mean", "std", "aggregate_std", "bank_mean", "bank_std"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise LatentStatsError(f"{name}: expected a tensor, got {type(value).__name__}")
            value = value.detach().to("cpu", torch.float32).contiguous()
            if name in ("std", "aggregate_std") and tuple(value.shape) != shape:
                raise LatentStatsError(f"{name}: shape {list(value.shape)}, mean has {list(shape)}")
            if name.startswith("bank") and (value.dim() != 3 or tuple(value.shape[1:]) != shape
                                            or value.shape[0] < 1):
                raise LatentStatsError(f"{name}: shape {list(value.shape)}, expected [N >= 1, "
                                       f"{shape[0]}, {shape[1]}]")
            if not bool(torch.isfinite(value).all()):
                raise LatentStatsError(f"{name}: non-finite values")
            if name != "mean" and name != "bank_mean" and not bool((value > 0).all()):
                raise LatentStatsError(f"{name}: standard deviations must be > 0")
            object.__setattr__(self, name, value)
        if self.bank_mean.shape != self.bank_std.shape:
            raise LatentStatsError(f"bank_std: shape {list(self.bank_std.shape)}, bank_mean has "
                                   f"{list(self.bank_mean.shape)}")
        if isinstance(self.count, bool) or int(self.count) < 1:
            raise LatentStatsError(f"count: {self.count!r} must be a positive int")
        object.__setattr__(self, "count", int(self.count))
        if not (math.isfinite(self.noise_level) and 0.0 <= self.noise_level <= 1.0):
            raise LatentStatsError(f"noise_level: {self.noise_level} is outside [0, 1]")
        object.__setattr__(self, "noise_level", float(self.noise_level))

    @property
    def shape(self) -> Tuple[int, int]:
        """The latent shape ``(L, d)``."""
        return (int(self.mean.shape[0]), int(self.mean.shape[1]))

    @property
    def bank_size(self) -> int:
        return int(self.bank_mean.shape[0])

    def to_tensors(self, prefix: str = "") -> Dict[str, torch.Tensor]:
        """Flat tensors for a safetensors file (:meth:`from_tensors` inverts it)."""
        return {
            f"{prefix}mean": self.mean,
            f"{prefix}std": self.std,
            f"{prefix}aggregate_std": self.aggregate_std,
            f"{prefix}count": torch.tensor([self.count], dtype=torch.int64),
            f"{prefix}bank_mean": self.bank_mean,
            f"{prefix}bank_std": self.bank_std,
            f"{prefix}noise_level": torch.tensor([self.noise_level], dtype=torch.float64),
        }

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> "LatentStats":
        """Inverse of :meth:`to_tensors`; a missing or malformed tensor raises
        :class:`LatentStatsError` naming its key."""
        names = ("mean", "std", "aggregate_std", "count", "bank_mean", "bank_std", "noise_level")
        missing = [prefix + n for n in names if prefix + n not in tensors]
        if missing:
            raise LatentStatsError(f"{missing[0]}: missing" + (f" (and {missing[1:]})" if len(missing) > 1 else ""))
        for n in ("count", "noise_level"):
            if tensors[prefix + n].numel() != 1:
                raise LatentStatsError(f"{prefix}{n}: expected one value, got shape "
                                       f"{list(tensors[prefix + n].shape)}")
        try:
            return cls(mean=tensors[prefix + "mean"], std=tensors[prefix + "std"],
                       aggregate_std=tensors[prefix + "aggregate_std"],
                       count=int(tensors[prefix + "count"].reshape(-1)[0]),
                       bank_mean=tensors[prefix + "bank_mean"], bank_std=tensors[prefix + "bank_std"],
                       noise_level=float(tensors[prefix + "noise_level"].reshape(-1)[0]))
        except LatentStatsError as e:
            raise LatentStatsError(f"{prefix}{e}") from None


# ---------------------------------------------------------------------------------------------
# Encoding a data set


def noise_chunks(chunks: torch.Tensor, noise_level: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """``x * sqrt(ab) + eps * sqrt(1 - ab)`` with ``1 - ab ~ U[0, noise_level]`` per chunk.

    The official code draws one of the three smallest levels of a 10-step cosine DDPM schedule
    (``1 - ab`` about 0.03, 0.10, 0.21); a uniform level up to ``noise_level`` is the same idea
    with one number to set. 0 returns ``chunks`` unchanged.
    """
    if noise_level <= 0:
        return chunks
    b = chunks.shape[0]
    level = torch.rand(b, generator=generator, dtype=torch.float64).to(chunks.device) * noise_level
    eps = torch.randn(chunks.shape, generator=generator, dtype=chunks.dtype).to(chunks.device)
    keep = torch.sqrt(1.0 - level).to(chunks.dtype)[:, None, None]
    add = torch.sqrt(level).to(chunks.dtype)[:, None, None]
    return chunks * keep + eps * add


def chunk_batches(chunks: Any, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """(chunk [B, H, W], mask [B, W]) batches of a chunk data set, in index order."""
    n = len(chunks)
    get_batch = getattr(chunks, "get_batch", None)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        if get_batch is not None:
            yield get_batch(idx)
        else:
            items = [chunks[i] for i in idx]
            yield (torch.stack([torch.as_tensor(c) for c, _ in items]),
                   torch.stack([torch.as_tensor(m) for _, m in items]))


def _model_device(vae: torch.nn.Module) -> torch.device:
    return next(vae.parameters()).device


@torch.no_grad()
def encode_means(vae: torch.nn.Module, chunks: Any, batch_size: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and stds ``[N, L, d]`` (CPU float32) of every chunk, clean inputs."""
    device = _model_device(vae)
    was_training = vae.training
    vae.eval()
    means, stds = [], []
    try:
        for x, mask in chunk_batches(chunks, batch_size):
            post = vae.encode(x.to(device, torch.float32), mask.to(device))
            means.append(post.mean.float().cpu())
            stds.append(post.std.float().cpu())
    finally:
        vae.train(was_training)
    if not means:
        raise LatentStatsError("encode_means: no chunks to encode")
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def compute_latent_stats(vae: torch.nn.Module, chunks: Any, batch_size: int = 256, noise_level: float = 0.0,
                         *, bank_size: int = DEFAULT_BANK_SIZE, seed: int = 0) -> LatentStats:
    """Encode every chunk of ``chunks`` (items ``(chunk [H, W], mask [W])``) and summarise.

    Sums run in float64, so the result does not depend on ``batch_size``. The bank keeps a
    seeded subsample of ``bank_size`` posteriors (all of them when there are fewer). The
    caller's RNG state is untouched: the noise comes from a generator seeded with ``seed``.
    """
    n = len(chunks)
    if n == 0:
        raise LatentStatsError("compute_latent_stats: no chunks to encode")
    if bank_size < 1:
        raise LatentStatsError(f"compute_latent_stats: bank_size {bank_size} must be >= 1")
    if not 0.0 <= noise_level <= 1.0:
        raise LatentStatsError(f"compute_latent_stats: noise_level {noise_level} is outside [0, 1]")
    device = _model_device(vae)
    gen = torch.Generator().manual_seed(int(seed))
    keep = torch.randperm(n, generator=gen)[:bank_size].sort().values if bank_size < n else torch.arange(n)
    keep_set = torch.zeros(n, dtype=torch.bool)
    keep_set[keep] = True
    was_training = vae.training
    vae.eval()
    sum_mean = sum_mean_sq = sum_std = sum_var = None
    bank_mean, bank_std = [], []
    start = 0
    try:
        for x, mask in chunk_batches(chunks, batch_size):
            x = noise_chunks(x.to(torch.float32), noise_level, gen)
            post = vae.encode(x.to(device), mask.to(device))
            mean, std = post.mean.double().cpu(), post.std.double().cpu()
            parts = (mean.sum(0), (mean * mean).sum(0), std.sum(0), (std * std).sum(0))
            if sum_mean is None:
                sum_mean, sum_mean_sq, sum_std, sum_var = parts
            else:
                sum_mean, sum_mean_sq, sum_std, sum_var = (a + b for a, b in
                                                           zip((sum_mean, sum_mean_sq, sum_std, sum_var), parts))
            sel = keep_set[start:start + mean.shape[0]]
            bank_mean.append(mean[sel].float())
            bank_std.append(std[sel].float())
            start += mean.shape[0]
    finally:
        vae.train(was_training)
    avg_mean = sum_mean / n
    var_of_means = (sum_mean_sq / n - avg_mean * avg_mean).clamp_min(0.0)
    aggregate = torch.sqrt(var_of_means + sum_var / n)
    return LatentStats(mean=avg_mean.float(), std=(sum_std / n).float(), aggregate_std=aggregate.float(),
                       count=n, bank_mean=torch.cat(bank_mean), bank_std=torch.cat(bank_std),
                       noise_level=float(noise_level))


# ---------------------------------------------------------------------------------------------
# Densities over flattened latents


def _flat(z: torch.Tensor, size: int, what: str) -> torch.Tensor:
    if z.dim() < 1 or z.numel() % size or (z.dim() >= 2 and z[0].numel() != size):
        raise ValueError(f"{what}: shape {list(z.shape)} does not hold latents of {size} values")
    return z.reshape(-1, size).double()


def log_density_gaussian(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(std^2)) per sample, over flattened latents: ``z [B, L, d]`` or
    ``[B, L * d]`` against ``mean``/``std`` of ``L * d`` values -> float64 ``[B]``."""
    size = mean.numel()
    zf = _flat(z, size, "log_density_gaussian: z")
    m = mean.reshape(1, size).double().to(zf.device)
    s = std.reshape(1, size).double().to(zf.device)
    return (-0.5 * ((zf - m) / s) ** 2 - torch.log(s) - 0.5 * _LOG_2PI).sum(-1)


def log_density_mixture(z: torch.Tensor, bank_means: torch.Tensor, bank_stds: torch.Tensor,
                        block: int = 1024) -> torch.Tensor:
    """log (1/N sum_n N(z; m_n, diag(s_n^2))) per sample (float64 ``[B]``), by logsumexp.

    ``bank_means``/``bank_stds`` ``[N, L, d]`` or ``[N, L * d]``. The quadratic form is
    expanded into three matrix products (sum z^2/s^2 - 2 z.m/s^2 + m^2/s^2), so a batch costs
    ``B x N`` memory, not ``B x N x D``; ``block`` rows of ``z`` at a time.
    """
    n = bank_means.shape[0]
    if n < 1 or bank_stds.shape != bank_means.shape:
        raise ValueError(f"log_density_mixture: bank means {list(bank_means.shape)} and stds "
                         f"{list(bank_stds.shape)} must be the same [N >= 1, ...]")
    size = bank_means[0].numel()
    zf = _flat(z, size, "log_density_mixture: z")
    m = bank_means.reshape(n, size).double().to(zf.device)
    s = bank_stds.reshape(n, size).double().to(zf.device)
    inv_var = 1.0 / (s * s)
    const = -(torch.log(s).sum(-1)) - 0.5 * size * _LOG_2PI - 0.5 * (m * m * inv_var).sum(-1)  # [N]
    m_inv_var = m * inv_var
    out = []
    for start in range(0, zf.shape[0], block):
        zb = zf[start:start + block]
        quad = -0.5 * (zb * zb) @ inv_var.T + zb @ m_inv_var.T  # [b, N]
        out.append(torch.logsumexp(quad + const[None], dim=-1) - math.log(n))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def nearest_distance(z: torch.Tensor, bank_means: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Euclidean distance from each flattened latent to its nearest bank mean (float64 ``[B]``)."""
    n = bank_means.shape[0]
    size = bank_means[0].numel()
    zf = _flat(z, size, "nearest_distance: z")
    m = bank_means.reshape(n, size).double().to(zf.device)
    out = [torch.cdist(zf[i:i + block], m).min(dim=-1).values for i in range(0, zf.shape[0], block)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def stats_summary(stats: LatentStats) -> Dict[str, Any]:
    """A few plain numbers describing ``stats`` (for JSON and printing)."""
    return {"count": stats.count, "bank_size": stats.bank_size, "noise_level": stats.noise_level,
            "mean_abs_mean": float(stats.mean.abs().mean()), "mean_std": float(stats.std.mean()),
            "mean_aggregate_std": float(stats.aggregate_std.mean())}
