"""The Info-VAE objective and the latent densities of the alignment stage, as numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ate_core.align.configuration_vae import VAEConfig
from ate_core.align.latent_stats import (LatentStats, compute_latent_stats, log_density_gaussian,
                                         log_density_mixture, nearest_distance)
from ate_core.align.losses import InfoVAELoss, gaussian_kl, kl_term, mmd, reconstruction_loss
from ate_core.align.modeling_vae import ActionChunkVAE, Posterior

SMALL = VAEConfig(horizon=8, latent_dim=32, num_layers=2, ff_size=64, num_heads=2)


def samples(seed: int, n: int = 512, d: int = 8, shift: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift, torch.randn(n, d, generator=g)


# ------------------------------------------------------------------------------------------ MMD


@pytest.mark.parametrize("kernel", ["imq", "rbf", "official_imq"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_mmd_of_two_samples_of_one_distribution_is_about_zero(kernel: str, seed: int) -> None:
    z, prior = samples(seed)
    assert abs(float(mmd(z, prior, kernel))) < 0.01


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_grows_monotonically_with_a_mean_shift(kernel: str) -> None:
    values = [float(mmd(*samples(7, shift=s), kernel=kernel)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values[0] < 0.01
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[1] > 0.05  # a half-sigma shift is far above the estimate's noise


@pytest.mark.parametrize("kernel", ["imq", "rbf", "official_imq"])
def test_mmd_is_symmetric(kernel: str) -> None:
    z, prior = samples(3, n=64, shift=0.7)
    assert float(mmd(z, prior, kernel)) == pytest.approx(float(mmd(prior, z, kernel)), rel=1e-5, abs=1e-7)


def test_mmd_matches_the_unbiased_estimate_written_out() -> None:
    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    scales = (0.5, 2.0)

    def k(a, b):
        d2 = float(((a - b) ** 2).sum())
        return sum(c / (c + d2) for c in (s * 2 * 3 for s in scales))

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / (6 * 5)
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(6)) / 30
    assert float(mmd(x, y, "imq", scales)) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_the_official_kernel_matches_the_official_estimate_written_out() -> None:
    # The official Info-VAE: C = 2 * D * z_var (z_var 2) over the mean squared difference, plus
    # 1e-7 in the denominator, and plain means over all pairs, diagonals included.
    g = torch.Generator().manual_seed(12)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)

    def k(a, b):
        return 12.0 / (1e-7 + 12.0 + float(((a - b) ** 2).mean()))

    def mean_k(a, b):
        return sum(k(p, q) for p in a for q in b) / (len(a) * len(b))

    expected = mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)
    assert float(mmd(x, y, "official_imq")) == pytest.approx(expected, rel=1e-12)


def test_the_official_kernel_is_nearly_flat_at_a_wide_latent_where_ours_is_not() -> None:
    # A unit mean shift of a 512-wide latent: about 1e-3 officially, about 0.9 with the
    # multi-scale kernel (the ~900x the README's ATE section states).
    z, prior = samples(5, n=256, d=512, shift=1.0)
    official, ours = float(mmd(z, prior, "official_imq")), float(mmd(z, prior, "imq"))
    assert 5e-4 < official < 2e-3, official
    assert 0.7 < ours < 1.1, ours
    shifts = [float(mmd(*samples(7, d=512, n=128, shift=s), kernel="official_imq")) for s in (0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(shifts, shifts[1:])), shifts


# ------------------------------------------------------------------------------------------- KL


def _random_gaussians(seed: int, shape=(4, 1, 6)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64), torch.rand(shape, generator=g, dtype=torch.float64) + 0.2,
            torch.randn(shape[1:], generator=g, dtype=torch.float64), torch.rand(shape[1:], generator=g, dtype=torch.float64) + 0.2)


def test_kl_term_equals_the_closed_form_by_hand_in_both_directions() -> None:
    mq, sq, mp, sp = _random_gaussians(0)
    q = Posterior(mq, sq)
    a, b, c, d = mq.numpy(), sq.numpy(), mp.numpy()[None], sp.numpy()[None]
    forward = np.log(d / b) + (b ** 2 + (a - c) ** 2) / (2 * d ** 2) - 0.5       # KL(q || p)
    backward = np.log(b / d) + (d ** 2 + (c - a) ** 2) / (2 * b ** 2) - 0.5      # KL(p || q)
    assert float(kl_term(q, mp, sp, "posterior_to_reference")) == pytest.approx(forward.mean(), rel=1e-12)
    assert float(kl_term(q, mp, sp, "reference_to_posterior")) == pytest.approx(backward.mean(), rel=1e-12)
    assert not math.isclose(forward.mean(), backward.mean(), rel_tol=1e-3)  # the switch matters


def test_kl_term_equals_torch_kl_divergence_in_both_directions() -> None:
    mq, sq, mp, sp = _random_gaussians(1)
    q, p = Normal(mq, sq), Normal(mp.expand_as(mq), sp.expand_as(sq))
    post = Posterior(mq, sq)
    assert float(kl_term(post, mp, sp, "posterior_to_reference")) == pytest.approx(float(kl_divergence(q, p).mean()),
                                                                                  rel=1e-12)
    assert float(kl_term(post, mp, sp, "reference_to_posterior")) == pytest.approx(float(kl_divergence(p, q).mean()),
                                                                                  rel=1e-12)


@pytest.mark.parametrize("direction", ["posterior_to_reference", "reference_to_posterior"])
def test_kl_is_zero_exactly_when_the_gaussians_are_equal(direction: str) -> None:
    mq, sq, _, _ = _random_gaussians(2)
    same = Posterior(mq, sq)
    assert float(kl_term(same, mq, sq, direction)) == pytest.approx(0.0, abs=1e-15)
    assert float(gaussian_kl(mq, sq, mq, sq).abs().max()) < 1e-15
    for ref_mean, ref_std in ((mq + 0.1, sq), (mq, sq * 1.1), (mq - 0.3, sq * 0.7)):
        elementwise = gaussian_kl(mq, sq, ref_mean, ref_std)
        assert bool((elementwise > 0).all())
        assert float(kl_term(same, ref_mean, ref_std, direction)) > 0


def test_kl_term_rejects_an_unknown_direction() -> None:
    mq, sq, mp, sp = _random_gaussians(3)
    with pytest.raises(ValueError, match="direction"):
        kl_term(Posterior(mq, sq), mp, sp, "sideways")


# ------------------------------------------------------------------------------ reconstruction


def _chunk_and_mask(seed: int = 0, batch: int = 3, horizon: int = 4, width: int = 10):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, width, dtype=torch.bool)
    mask[:, [0, 2, 3, 7]] = True
    mask[1, 9] = True
    return (torch.randn(batch, horizon, width, generator=g), torch.randn(batch, horizon, width, generator=g), mask)


@pytest.mark.parametrize("kind", ["smooth_l1", "mse"])
def test_reconstruction_loss_ignores_padded_slots(kind: str) -> None:
    recon, target, mask = _chunk_and_mask()
    before = reconstruction_loss(recon, target, mask, kind)
    pad = ~mask[:, None, :].expand_as(recon)
    for fill in (0.0, 1e6, float("inf"), float("nan")):
        assert torch.equal(reconstruction_loss(recon.masked_fill(pad, fill), target.masked_fill(pad, -fill), mask, kind),
                           before)
    # ... while a change in a real slot does change it
    changed = recon.clone()
    changed[0, 0, 0] += 1.0
    assert not torch.equal(reconstruction_loss(changed, target, mask, kind), before)


@pytest.mark.parametrize("kind", ["smooth_l1", "mse"])
def test_reconstruction_loss_is_the_mean_over_real_slots(kind: str) -> None:
    recon, target, mask = _chunk_and_mask(1)
    diff = (recon - target).numpy()[np.broadcast_to(mask[:, None, :].numpy(), recon.shape)]
    per = diff ** 2 if kind == "mse" else np.where(np.abs(diff) < 1, 0.5 * diff ** 2, np.abs(diff) - 0.5)
    assert float(reconstruction_loss(recon, target, mask, kind)) == pytest.approx(per.mean(), rel=1e-6)


# ------------------------------------------------------------------------------ the whole loss


def _vae_batch(seed: int = 0):
    torch.manual_seed(seed)
    vae = ActionChunkVAE(SMALL)
    mask = torch.zeros(4, SMALL.action_width, dtype=torch.bool)
    mask[:2, :16] = True
    mask[2:, [0, 1, 3, 4, 5, 6, 7]] = True
    x = torch.randn(4, SMALL.horizon, SMALL.action_width)
    return vae, x, mask


def test_info_vae_loss_is_the_weighted_sum_of_its_terms() -> None:
    vae, x, mask = _vae_batch()
    vae.requires_grad_(False)
    out = vae(x, mask, generator=torch.Generator().manual_seed(0))
    prior = torch.randn(8, SMALL.latent_size, generator=torch.Generator().manual_seed(1))
    ref_mean, ref_std = torch.full((1, 32), 0.3), torch.full((1, 32), 0.5)
    loss = InfoVAELoss(recon_weight=2.0, kl_weight=0.1, mmd_weight=3.0)
    terms = loss(out, x, mask, ref_mean, ref_std, prior)
    assert float(terms["recon"]) == pytest.approx(float(reconstruction_loss(out.reconstruction, x, mask)))
    assert float(terms["kl"]) == pytest.approx(float(kl_term(out.posterior, ref_mean, ref_std)))
    assert float(terms["mmd"]) == pytest.approx(float(mmd(out.z.flatten(1), prior)))
    expected = 2.0 * terms["recon"] + 0.1 * terms["kl"] + 3.0 * terms["mmd"]
    assert float(terms["total"]) == pytest.approx(float(expected), rel=1e-6)


def test_the_gradient_wrt_the_chunk_is_zero_in_padded_slots() -> None:
    vae, x, mask = _vae_batch(1)
    x.requires_grad_(True)
    out = vae(x, mask, generator=torch.Generator().manual_seed(0))
    prior = torch.randn(4, SMALL.latent_size, generator=torch.Generator().manual_seed(1))
    terms = InfoVAELoss(kl_weight=0.5)(out, x, mask, torch.zeros(1, 32), torch.ones(1, 32), prior)
    terms["total"].backward()
    grad = x.grad
    pad = ~mask[:, None, :].expand_as(grad)
    assert float(grad[pad].abs().max()) == 0.0
    assert float(grad[~pad].abs().max()) > 0.0


def test_info_vae_loss_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="kl_direction"):
        InfoVAELoss(kl_direction="both")
    with pytest.raises(ValueError, match="kl_weight"):
        InfoVAELoss(kl_weight=-1.0)


# ----------------------------------------------------------------------------- latent densities


def test_log_density_gaussian_equals_torch_normal() -> None:
    g = torch.Generator().manual_seed(5)
    z, mean, std = torch.randn(6, 2, 3, generator=g), torch.randn(2, 3, generator=g), torch.rand(2, 3, generator=g) + 0.1
    expected = Normal(mean.double(), std.double()).log_prob(z.double()).sum((1, 2))
    assert torch.allclose(log_density_gaussian(z, mean, std), expected, rtol=1e-12)


def test_log_density_mixture_equals_the_brute_force_average() -> None:
    g = torch.Generator().manual_seed(6)
    z = torch.randn(7, 1, 5, generator=g)
    means, stds = torch.randn(9, 1, 5, generator=g), torch.rand(9, 1, 5, generator=g) + 0.2
    per_component = Normal(means.double()[None], stds.double()[None]).log_prob(z.double()[:, None]).sum((2, 3))
    expected = torch.log(per_component.exp().mean(1))
    assert torch.allclose(log_density_mixture(z, means, stds, block=3), expected, rtol=1e-10)
    # one component: the mixture is that Gaussian
    assert torch.allclose(log_density_mixture(z, means[:1], stds[:1]), log_density_gaussian(z, means[0], stds[0]),
                          rtol=1e-12)


def test_nearest_distance_finds_the_closest_bank_mean() -> None:
    bank = torch.tensor([[[0.0, 0.0]], [[3.0, 4.0]], [[10.0, 0.0]]])
    z = torch.tensor([[[3.0, 3.0]], [[9.0, 0.0]]])
    assert torch.allclose(nearest_distance(z, bank), torch.tensor([1.0, 1.0], dtype=torch.float64))


class _Chunks:
    """A plain list-backed chunk data set (items ``(chunk, mask)``)."""

    def __init__(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        self.x, self.mask = x, mask

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        return self.x[i], self.mask[i]


def test_latent_stats_are_the_posterior_averages_whatever_the_batch_size() -> None:
    vae, _, _ = _vae_batch(2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(13, SMALL.horizon, SMALL.action_width, generator=g)
    mask = torch.zeros(13, SMALL.action_width, dtype=torch.bool)
    mask[:, :16] = True
    chunks = _Chunks(x, mask)
    stats = compute_latent_stats(vae, chunks, batch_size=4, noise_level=0.0, bank_size=5, seed=0)
    with torch.no_grad():
        post = vae.eval().encode(x, mask)
    mean, std = post.mean.double(), post.std.double()
    assert torch.allclose(stats.mean.double(), mean.mean(0), atol=1e-6)
    assert torch.allclose(stats.std.double(), std.mean(0), atol=1e-6)
    aggregate = torch.sqrt(mean.var(0, unbiased=False) + (std ** 2).mean(0))
    assert torch.allclose(stats.aggregate_std.double(), aggregate, atol=1e-5)
    assert stats.count == 13 and stats.bank_size == 5
    # the bank holds real posteriors (rows of the full set)
    dist = torch.cdist(stats.bank_mean.flatten(1).double(), mean.flatten(1))
    assert float(dist.min(1).values.max()) < 1e-5
    again = compute_latent_stats(vae, chunks, batch_size=13, noise_level=0.0, bank_size=5, seed=0)
    # The same posteriors, whatever the batch size: the bank picks the same rows, and their
    # values agree to float precision (a GEMM's kernel, and its rounding, depends on the batch).
    assert torch.allclose(again.mean, stats.mean, atol=1e-6)
    assert torch.allclose(again.bank_mean, stats.bank_mean, atol=1e-6, rtol=0)
    # noise changes the summary, and is seeded
    noisy = compute_latent_stats(vae, chunks, batch_size=4, noise_level=0.2, bank_size=5, seed=0)
    noisy2 = compute_latent_stats(vae, chunks, batch_size=4, noise_level=0.2, bank_size=5, seed=0)
    assert not torch.allclose(noisy.mean, stats.mean) and torch.equal(noisy.mean, noisy2.mean)


def test_latent_stats_round_trip_through_tensors() -> None:
    vae, x, mask = _vae_batch(3)
    stats = compute_latent_stats(vae, _Chunks(x, mask), batch_size=2, noise_level=0.1, bank_size=3, seed=1)
    back = LatentStats.from_tensors(stats.to_tensors())
    for name in ("mean", "std", "aggregate_std", "bank_mean", "bank_std"):
        assert torch.equal(getattr(back, name), getattr(stats, name)), name
    assert (back.count, back.noise_level) == (stats.count, stats.noise_level)
