"""ATE's latent guidance: the gradient, its sign and scale per prediction kind, padding, the
guided loss, the flow derivation, and the inference-time hook."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ate_core.align.configuration_vae import VAEConfig
from ate_core.align.modeling_vae import ActionChunkVAE
from ate_core.config import ConfigError
from ate_core.policy import factory
from ate_core.policy.base import Batch, Observation, TrainingTerms, denoising_loss
from ate_core.data.spaces import NormStats, default_action_space
from ate_core.steer.config import GuidanceConfig, InferenceGuidanceConfig
from ate_core.steer.guidance import (LatentGuidance, guidance_coefficient, latent_gradient,
                                     latent_log_likelihood)

H, W, REAL = 6, 16, 7
ENCODER = {"backbone": "resnet10_small", "d_model": 16, "pool": "avg", "text_dim": 8, "text_buckets": 32}
POLICIES = {
    "diffusion": {"horizon": H, "n_obs_steps": 1, "n_action_steps": 2, "cameras": ["head"],
                  "image_size": [32, 32], "encoder": ENCODER, "unet_down_dims": [16, 32],
                  "step_embed_dim": 8, "num_inference_steps": 4, "action_width": W, "state_width": W},
    "flow": {"horizon": H, "n_obs_steps": 1, "n_action_steps": 2, "cameras": ["head"], "image_size": [32, 32],
             "encoder": ENCODER, "expert_d_model": 16, "expert_n_layers": 1, "expert_n_heads": 2,
             "num_steps": 4, "action_width": W, "state_width": W},
}


def small_vae(seed: int = 0, dtype: torch.dtype = torch.float32) -> ActionChunkVAE:
    torch.manual_seed(seed)
    vae = ActionChunkVAE(VAEConfig(horizon=H, action_width=W, latent_dim=16, num_layers=1, num_heads=2,
                                   ff_size=32))
    return vae.to(dtype).eval()


def mask(b: int) -> torch.Tensor:
    m = torch.zeros(b, W, dtype=torch.bool)
    m[:, :REAL] = True
    return m


def chunk(b: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, H, W, generator=g, dtype=dtype) * mask(b).to(dtype)[:, None, :]


def test_gradient_matches_central_finite_differences():
    vae = small_vae(dtype=torch.float64)
    x, a0 = chunk(2, 1, torch.float64), chunk(2, 2, torch.float64)
    m = mask(2)
    noise = torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    target = vae.encode(a0, m).sample(noise).detach()
    grad = latent_gradient(vae, x, target, m, noise)
    rng = np.random.default_rng(0)
    h = 1e-6
    for _ in range(12):
        b, i, j = int(rng.integers(2)), int(rng.integers(H)), int(rng.integers(REAL))
        plus, minus = x.clone(), x.clone()
        plus[b, i, j] += h
        minus[b, i, j] -= h
        with torch.no_grad():
            fd = (latent_log_likelihood(vae, plus, target, m, noise)[b]
                  - latent_log_likelihood(vae, minus, target, m, noise)[b]) / (2 * h)
        assert float(grad[b, i, j]) == pytest.approx(float(fd), rel=1e-5, abs=1e-10)


def test_a_small_step_along_the_gradient_reduces_the_latent_distance():
    vae = small_vae(1)
    m = mask(4)
    x, a0 = chunk(4, 5), chunk(4, 6)
    with torch.no_grad():
        target = vae.encode(a0, m).mean
    grad = latent_gradient(vae, x, target, m)
    assert float(grad.abs().max()) > 0

    def distance(c: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (vae.encode(c, m).mean - target).pow(2).flatten(1).mean(1)

    before = distance(x)
    step = 0.5 / grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
    after = distance(x + step * grad)
    assert torch.all(after < before), (before, after)
    assert torch.all(distance(x - step * grad) > before)  # and the other way leads away


def test_padded_slots_get_exactly_zero_gradient_and_no_guidance():
    vae = small_vae(2)
    m = mask(3)
    x = torch.randn(3, H, W)  # padded slots hold values too: they must not matter
    target = torch.randn(3, 1, 16)
    grad = latent_gradient(vae, x, target, m)
    assert torch.all(grad[:, :, REAL:] == 0) and float(grad[:, :, :REAL].abs().max()) > 0
    x2 = x.clone()
    x2[:, :, REAL:] = torch.randn(3, H, W - REAL)
    torch.testing.assert_close(latent_gradient(vae, x2, target, m), grad, rtol=0, atol=0)


def _terms(kind: str, b: int = 4) -> TrainingTerms:
    clean = chunk(b, 7)
    pred = chunk(b, 8)
    if kind == "velocity":
        t = torch.tensor([0.05, 0.3, 0.7, 0.999])[:b]
        alpha_bar = None
    else:
        t = torch.tensor([1, 20, 50, 99])[:b]
        alpha_bar = torch.tensor([0.999, 0.8, 0.4, 0.01])[:b]
    return TrainingTerms(x_t=chunk(b, 9), t=t, alpha_bar=alpha_bar, prediction=pred, target=chunk(b, 10),
                         kind=kind, weight=torch.ones(b, H, W) * mask(b).float()[:, None, :], clean=clean)


@pytest.mark.parametrize("kind", ["epsilon", "sample", "velocity"])
def test_guidance_term_has_the_reference_sign_scale_and_clamp(kind):
    vae = small_vae(3)
    cfg = GuidanceConfig(scale=3.0, clamp=0.1)
    guidance = LatentGuidance(vae, cfg)
    terms = _terms(kind)
    m = mask(4)
    noise = torch.randn(4, 1, 16, generator=torch.Generator().manual_seed(11))
    g = guidance.guidance_term(terms, m, noise=noise)
    # the reference formulas, written out independently
    with torch.no_grad():
        target = vae.encode(terms.clean, m).sample(noise)
    raw = latent_gradient(vae, terms.x_t, target, m, noise)
    if kind == "epsilon":
        coef = -torch.sqrt(1 - terms.alpha_bar)
    elif kind == "sample":
        coef = (1 - terms.alpha_bar) / torch.sqrt(terms.alpha_bar)
    else:
        coef = -terms.t / (1 - terms.t)
    expected = torch.clamp(coef[:, None, None] * raw, -0.1, 0.1)
    torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-7)
    assert float(g.abs().max()) <= 0.1 + 1e-7
    assert torch.all(g[:, :, REAL:] == 0)
    # sign: where the clamp is not active the term is coef * grad, so it has the sign of coef * grad
    inside = (coef[:, None, None] * raw).abs() < 0.1
    assert torch.all(torch.sign(g[inside]) == torch.sign((coef[:, None, None] * raw)[inside]))
    if kind in ("epsilon", "velocity"):
        assert torch.all(coef < 0)
    else:
        assert torch.all(coef > 0)


def test_coefficients_at_known_noise_levels():
    ab = torch.tensor([0.25, 0.64])
    torch.testing.assert_close(guidance_coefficient("epsilon", torch.tensor([0, 0]), ab),
                               torch.tensor([-math.sqrt(0.75), -0.6]))
    torch.testing.assert_close(guidance_coefficient("sample", torch.tensor([0, 0]), ab),
                               torch.tensor([0.75 / 0.5, 0.36 / 0.8]))
    torch.testing.assert_close(guidance_coefficient("velocity", torch.tensor([0.5, 0.75]), None),
                               torch.tensor([-1.0, -3.0]))
    assert torch.isfinite(guidance_coefficient("velocity", torch.tensor([1.0]), None)).all()
    with pytest.raises(ValueError, match="unknown|no guidance"):
        guidance_coefficient("velocityish", torch.tensor([0.5]), None)


def test_flow_velocity_score_identity_on_a_gaussian():
    """The derivation's key step, v = -(x + tau * score) / (1 - tau), checked in closed form for
    data a ~ N(m, s^2) on the path x = tau * eps + (1 - tau) * a."""
    m, s = 0.7, 0.4
    for tau in (0.1, 0.5, 0.9):
        var = (1 - tau) ** 2 * s ** 2 + tau ** 2
        x = np.linspace(-2, 2, 9)
        score = -(x - (1 - tau) * m) / var
        # E[eps - a | x] by Gaussian conditioning of (eps, a) on x
        e_eps = tau / var * (x - (1 - tau) * m)
        e_a = m + (1 - tau) * s ** 2 / var * (x - (1 - tau) * m)
        v = e_eps - e_a
        np.testing.assert_allclose(v, -(x + tau * score) / (1 - tau), rtol=1e-12, atol=1e-12)


def _batch(b: int = 4, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = Observation(images=torch.randint(0, 255, (b, 1, 1, 3, 32, 32), generator=g, dtype=torch.uint8),
                      state=torch.randn(b, 1, W, generator=g) * mask(b).float()[:, None, :],
                      state_mask=mask(b), task=("pick",) * b)
    return Batch(obs=obs, action=chunk(b, seed + 1), action_mask=mask(b),
                 action_is_pad=torch.zeros(b, H, dtype=torch.bool))


@pytest.mark.parametrize("policy_type", ["diffusion", "flow"])
def test_guided_loss_is_the_plain_regression_of_the_guided_prediction(policy_type):
    torch.manual_seed(0)
    policy = factory.make_policy(policy_type, factory.make_config(policy_type, POLICIES[policy_type]))
    vae = small_vae(4)
    batch = _batch()
    plain = LatentGuidance(vae, GuidanceConfig(scale=0.0))
    torch.manual_seed(5)
    loss0 = plain.loss(policy, batch)
    torch.manual_seed(5)
    reference = policy.compute_loss(batch)
    torch.testing.assert_close(loss0, reference)  # lambda = 0 is plain fine-tuning, exactly

    guided = LatentGuidance(vae, GuidanceConfig(scale=3.0, clamp=0.1))
    torch.manual_seed(5)
    loss = guided.loss(policy, batch)
    torch.manual_seed(5)  # the same random draws as inside loss(): the policy's, then the latent noise
    terms = policy.training_terms(batch)
    g = guided.guidance_term(terms, batch.action_mask)
    torch.testing.assert_close(loss, denoising_loss(terms.prediction + 3.0 * g, terms.target, terms.weight))
    assert not torch.isclose(loss, loss0)
    # gradients reach the policy, never the frozen VAE
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in policy.parameters())
    assert all(p.grad is None for p in vae.parameters())


def test_regression_target_switch_encodes_the_loss_target():
    vae = small_vae(5)
    terms = _terms("epsilon")
    m = mask(4)
    noise = torch.randn(4, 1, 16, generator=torch.Generator().manual_seed(2))
    clean = LatentGuidance(vae, GuidanceConfig()).guidance_term(terms, m, noise=noise)
    official = LatentGuidance(vae, GuidanceConfig(latent_target="regression_target")).guidance_term(
        terms, m, noise=noise)
    swapped = TrainingTerms(**{**terms.__dict__, "clean": terms.target})
    torch.testing.assert_close(official, LatentGuidance(vae, GuidanceConfig()).guidance_term(swapped, m, noise=noise))
    assert not torch.allclose(clean, official)


@pytest.mark.parametrize("kind", ["epsilon", "velocity"])
def test_batch_reduction_is_the_official_batch_mean(kind):
    """``y_reduction: batch`` is the official ``y = -F.mse_loss(z_x, z_0)``: written out here as
    the mean over batch and latent, its gradient is the per-sample one over B, before the clamp."""
    vae = small_vae(8)
    terms = _terms(kind)
    m = mask(4)
    noise = torch.randn(4, 1, 16, generator=torch.Generator().manual_seed(3))
    wide = 1e6  # no clamp: the reduction alone
    per_sample = LatentGuidance(vae, GuidanceConfig(clamp=wide)).guidance_term(terms, m, noise=noise)
    batch = LatentGuidance(vae, GuidanceConfig(clamp=wide, y_reduction="batch")).guidance_term(
        terms, m, noise=noise)
    with torch.no_grad():
        target = vae.encode(terms.clean, m).sample(noise)
    x = terms.x_t.detach().clone().requires_grad_(True)
    y = -torch.nn.functional.mse_loss(vae.encode(x, m).sample(noise), target)
    (official,) = torch.autograd.grad(y, x)
    coef = guidance_coefficient(kind, terms.t, terms.alpha_bar)[:, None, None]
    torch.testing.assert_close(batch, coef * official * m.float()[:, None, :], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(batch * 4, per_sample, rtol=1e-5, atol=1e-9)
    # at the default clamp the per-sample form saturates more often than the official one
    clamped = GuidanceConfig().clamp
    assert int((per_sample.abs() >= clamped).sum()) >= int((batch.abs() >= clamped).sum())


class _Stats:
    def __init__(self, mean: torch.Tensor, bank: torch.Tensor) -> None:
        self.mean = mean
        self.bank_mean = bank


@pytest.mark.parametrize("policy_type", ["diffusion", "flow"])
def test_inference_guidance_is_off_by_default_and_pulls_samples_toward_the_target(policy_type):
    torch.manual_seed(1)
    policy = factory.make_policy(policy_type, factory.make_config(policy_type, POLICIES[policy_type])).eval()
    vae = small_vae(6)
    m = mask(8)
    with torch.no_grad():
        target = vae.encode(chunk(1, 40), mask(1)).mean[0]
    stats = _Stats(target, target[None])
    assert LatentGuidance(vae, GuidanceConfig(), latent_stats=stats).step_hook() is None
    on = GuidanceConfig(clamp=1.0, inference=InferenceGuidanceConfig(enabled=True, scale=50.0, target="mean"))
    hook = LatentGuidance(vae, on, latent_stats=stats).step_hook()
    obs = _batch(8).obs
    noise = torch.randn(8, H, W, generator=torch.Generator().manual_seed(4))
    free = policy.sample(obs, noise=noise)
    steered = policy.sample(obs, noise=noise, step_hook=hook)
    with torch.no_grad():
        d_free = (vae.encode(free, m).mean - target).pow(2).flatten(1).mean(1)
        d_steered = (vae.encode(steered, m).mean - target).pow(2).flatten(1).mean(1)
    assert torch.all(d_steered < d_free), (d_free, d_steered)
    assert torch.all(steered[:, :, REAL:] == 0)


def test_compatibility_checks_name_what_differs():
    vae = small_vae(7)
    guidance = LatentGuidance(vae, GuidanceConfig())
    cfg = factory.make_config("flow", POLICIES["flow"])
    space = default_action_space(W) if W >= 16 else None
    guidance.check_compatible(cfg, space, {}, "mean_std")
    other = factory.make_config("flow", {**POLICIES["flow"], "horizon": H + 2})
    with pytest.raises(ConfigError, match="horizon"):
        guidance.check_compatible(other, space, {}, "mean_std")
    guidance.norm_mode = "min_max"
    with pytest.raises(ConfigError, match="norm_mode"):
        guidance.check_compatible(cfg, space, {}, "mean_std")
    guidance.norm_mode = "mean_std"
    data = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    guidance.norm_stats = {"rm65_single": {"action": NormStats.from_data(data)}}
    guidance.check_compatible(cfg, space, {"rm65_single": {"action": NormStats.from_data(data)}}, "mean_std")
    with pytest.raises(ConfigError, match="norm_stats"):
        guidance.check_compatible(cfg, space, {"rm65_single": {"action": NormStats.from_data(data + 1)}},
                                  "mean_std")
