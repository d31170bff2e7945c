"""The DDPM noise schedule and the deterministic DDIM step, against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from ate_core.policy.diffusion.scheduler import BETA_SCHEDULES, DDIMScheduler, make_betas


def oracle_output(sched: DDIMScheduler, x0: torch.Tensor, x_t: torch.Tensor, t: int, kind: str) -> torch.Tensor:
    """What a perfect network would output at (x_t, t) if the clean chunk is x0."""
    if kind == "sample":
        return x0
    abar = float(sched.alphas_cumprod[t])
    return (x_t - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
def test_alphas_cumprod_decrease_strictly_inside_zero_one(schedule):
    sched = DDIMScheduler(100, schedule)
    abar = sched.alphas_cumprod
    assert abar.shape == (100,)
    assert bool(((abar > 0) & (abar < 1)).all())
    assert bool((abar[1:] < abar[:-1]).all())


def test_cosine_schedule_is_nichol_dhariwal_with_betas_capped_at_0999():
    n = 100
    betas = make_betas("squaredcos_cap_v2", n)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = torch.tensor([f((t + 1) / n) / f(0.0) for t in range(n)], dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(abar[:-1], expected[:-1], rtol=1e-12, atol=1e-12)
    assert float(betas.max()) == pytest.approx(0.999)  # the last step hits the cap
    assert float(betas[0]) == pytest.approx(1 - f(1 / n) / f(0.0))


def test_linear_schedules_interpolate_beta_or_its_square_root():
    lin = make_betas("linear", 11, 1e-4, 0.02)
    torch.testing.assert_close(lin, torch.linspace(1e-4, 0.02, 11, dtype=torch.float64))
    scaled = make_betas("scaled_linear", 11, 1e-4, 0.02)
    torch.testing.assert_close(scaled.sqrt(), torch.linspace(0.01, 0.02 ** 0.5, 11, dtype=torch.float64))


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_betas("sigmoid", 10)


@pytest.mark.parametrize("steps,expected", [(10, list(range(90, -1, -10))), (3, [66, 33, 0]),
                                            (1, [0]), (100, list(range(99, -1, -1)))])
def test_timesteps_use_leading_spacing(steps, expected):
    assert DDIMScheduler(100).timesteps(steps).tolist() == expected


@pytest.mark.parametrize("steps", [0, 101])
def test_more_steps_than_trained_levels_is_an_error(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDIMScheduler(100).timesteps(steps)


def test_add_noise_has_the_forward_process_statistics():
    sched = DDIMScheduler(100)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([5, 50, 95])
    x0 = torch.full((3, 20000), 2.0, dtype=torch.float64)
    x_t = sched.add_noise(x0, torch.randn(x0.shape, generator=g, dtype=torch.float64), t)
    abar = sched.alphas_cumprod[t]
    torch.testing.assert_close(x_t.mean(1), 2.0 * abar.sqrt(), atol=0.03, rtol=0)
    torch.testing.assert_close(x_t.std(1), (1 - abar).sqrt(), atol=0.02, rtol=0.03)


def test_alpha_bar_below_step_zero_is_one_or_the_first_level():
    assert float(DDIMScheduler(100).alpha_bar(-1)) == 1.0
    sched = DDIMScheduler(100, set_alpha_to_one=False)
    assert float(sched.alpha_bar(-1, dtype=torch.float64)) == float(sched.alphas_cumprod[0])


@pytest.mark.parametrize("kind", ["epsilon", "sample"])
@pytest.mark.parametrize("steps", [1, 10, 100])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_with_a_perfect_clean_estimate_recovers_it_from_pure_noise(kind, steps, clip):
    sched = DDIMScheduler(100, clip_sample=clip, clip_sample_range=5.0)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 8, 6, generator=g, dtype=torch.float64).clamp(-4, 4)
    x = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    for t in sched.timesteps(steps).tolist():
        out = sched.step(oracle_output(sched, x0, x, t, kind), t, x, kind, num_inference_steps=steps)
        torch.testing.assert_close(out.pred_original_sample, x0, rtol=0, atol=1e-9)
        x = out.prev_sample
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-9)


def test_ddim_with_the_true_noise_stays_on_the_forward_trajectory():
    # eta = 0 keeps the noise direction: x_t = q(x0, eps, t) maps to q(x0, eps, t_prev)
    sched = DDIMScheduler(100, clip_sample=False)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([70, 70, 70])
    x_t = sched.add_noise(x0, eps, t)
    prev = sched.step(eps, t, x_t, "epsilon", num_inference_steps=10).prev_sample
    torch.testing.assert_close(prev, sched.add_noise(x0, eps, t - 10), rtol=0, atol=1e-12)


def test_clean_estimate_is_clipped_but_the_noise_estimate_is_not():
    sched = DDIMScheduler(100, clip_sample=True, clip_sample_range=1.0)
    x_t = torch.full((1, 2, 2), 3.0, dtype=torch.float64)
    out = sched.step(torch.full_like(x_t, 10.0), 0, x_t, "sample", num_inference_steps=10)
    assert float(out.pred_original_sample.max()) == 1.0
    # the last step lands on the (clipped) clean estimate: the final level is 1
    torch.testing.assert_close(out.prev_sample, out.pred_original_sample)
    # one step earlier the unclipped noise estimate carries the rest (diffusers' default)
    mid = sched.step(torch.full_like(x_t, 10.0), 50, x_t, "sample", num_inference_steps=10)
    abar, abar_prev = (float(sched.alphas_cumprod[k]) for k in (50, 40))
    eps = (3.0 - math.sqrt(abar) * 10.0) / math.sqrt(1 - abar)
    expected = math.sqrt(abar_prev) * 1.0 + math.sqrt(1 - abar_prev) * eps
    torch.testing.assert_close(mid.prev_sample, torch.full_like(x_t, expected))


def test_unknown_prediction_type_is_rejected():
    with pytest.raises(ValueError, match="prediction_type"):
        DDIMScheduler(10).step(torch.zeros(1, 2, 2), 5, torch.zeros(1, 2, 2), "v_prediction",
                               num_inference_steps=2)
