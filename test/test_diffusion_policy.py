"""Diffusion Policy: shapes, the steerable DDIM loop, padding, determinism, learning, config errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ate_core.config import ConfigError
from ate_core.policy.base import Batch, DenoiseStep, Observation, denoising_loss
from ate_core.policy.diffusion import DiffusionConfig, DiffusionPolicy
from ate_core.policy.factory import config_to_dict, make_config, make_policy

SIDE = 32
HORIZON = 8
REAL_SLOTS = 16  # two 7-joint arms with a gripper each
DENOISERS = ("unet", "transformer")
KINDS = ("epsilon", "sample")


def tiny(**overrides) -> dict:
    """The smallest config that still exercises every part (plain data, as YAML gives it)."""
    data = {
        "horizon": HORIZON, "n_obs_steps": 2, "n_action_steps": 4, "cameras": ["head", "left_wrist"],
        "image_size": [SIDE, SIDE],
        "encoder": {"backbone": "resnet10_small", "d_model": 32, "pool": "avg", "num_keypoints": 8,
                    "text_dim": 16, "text_buckets": 64},
        "unet_down_dims": [32, 64], "step_embed_dim": 32,
        "tf_d_model": 32, "tf_n_layers": 2, "tf_n_heads": 4, "tf_dropout": 0.0,
    }
    data.update(overrides)
    return data


def build(seed: int = 0, **overrides) -> DiffusionPolicy:
    torch.manual_seed(seed)
    policy = make_policy("diffusion", tiny(**overrides))
    assert isinstance(policy, DiffusionPolicy)
    return policy


def make_obs(batch: int = 2, steps: int = 2, cams: int = 2, seed: int = 0, real: int = REAL_SLOTS) -> Observation:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, 128, dtype=torch.bool)
    mask[:, :real] = True
    return Observation(
        images=torch.randint(0, 256, (batch, steps, cams, 3, SIDE, SIDE), generator=g, dtype=torch.uint8),
        state=torch.randn(batch, steps, 128, generator=g) * mask[:, None, :], state_mask=mask,
        task=("fold the towel",) * batch)


def make_batch(obs: Observation, horizon: int = HORIZON, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mask = obs.state_mask
    action = torch.randn(obs.batch_size, horizon, 128, generator=g) * mask[:, None, :]
    return Batch(obs=obs, action=action, action_mask=mask,
                 action_is_pad=torch.zeros(obs.batch_size, horizon, dtype=torch.bool))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------- config


def test_defaults_follow_diffusion_policy():
    cfg = make_config("diffusion")
    assert isinstance(cfg, DiffusionConfig)
    assert (cfg.denoiser, cfg.prediction_type, cfg.num_train_timesteps, cfg.beta_schedule) == \
        ("unet", "epsilon", 100, "squaredcos_cap_v2")
    assert (cfg.num_inference_steps, cfg.clip_sample, cfg.clip_sample_range) == (10, True, 5.0)
    assert (cfg.unet_down_dims, cfg.unet_kernel_size, cfg.unet_n_groups) == ((256, 512, 1024), 5, 8)
    assert (cfg.step_embed_dim, cfg.film_scale_modulation) == (128, True)
    assert (cfg.tf_n_layers, cfg.tf_n_heads, cfg.tf_d_model, cfg.tf_dropout, cfg.tf_causal_attn) == \
        (8, 4, 256, 0.1, True)
    assert (cfg.horizon, cfg.n_obs_steps, cfg.action_width) == (16, 2, 128)


def test_config_survives_a_round_trip_through_plain_data():
    cfg = make_config("diffusion", tiny(denoiser="transformer"))
    assert make_config("diffusion", config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("overrides,key", [
    ({"prediction_type": "v"}, "prediction_type"),
    ({"denoiser": "mlp"}, "denoiser"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 200}, "num_inference_steps"),
    ({"unet_kernel_size": 4}, "unet_kernel_size"),
    ({"unet_down_dims": [32, 60]}, "unet_down_dims[1]"),
    ({"unet_down_dims": []}, "unet_down_dims"),
    ({"tf_d_model": 30}, "tf_d_model"),
    ({"clip_sample_range": -1.0}, "clip_sample_range"),
    ({"beta_schedule": "linear", "beta_start": 0.03}, "beta_end"),
    ({"n_action_steps": 9}, "n_action_steps"),  # the shared chunking checks still run
])
def test_bad_config_value_is_a_config_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        make_config("diffusion", tiny(**overrides), source="policy.yaml")
    assert err.value.key == key
    assert str(err.value).startswith(f"policy.yaml: {key}: ")


# ------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("denoiser", DENOISERS)
@pytest.mark.parametrize("kind", KINDS)
def test_training_terms_have_the_chunk_shape_and_the_right_target(denoiser, kind):
    policy = build(denoiser=denoiser, prediction_type=kind)
    batch = make_batch(make_obs())
    terms = policy.training_terms(batch, generator=gen(3))
    assert terms.kind == kind
    for name in ("x_t", "prediction", "target", "weight", "clean"):
        assert getattr(terms, name).shape == (2, HORIZON, 128), name
    assert terms.t.dtype == torch.long and bool(((terms.t >= 0) & (terms.t < 100)).all())
    abar = policy.scheduler.alphas_cumprod[terms.t].float()
    torch.testing.assert_close(terms.alpha_bar, abar)
    noise = (terms.x_t - abar.sqrt()[:, None, None] * batch.action) / (1 - abar).sqrt()[:, None, None]
    torch.testing.assert_close(terms.target, noise if kind == "epsilon" else batch.action, atol=2e-4, rtol=0)
    loss = policy.compute_loss(batch, generator=gen(3))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in policy.denoiser.parameters())


def test_training_noise_and_timesteps_come_from_the_generator():
    policy = build()
    batch = make_batch(make_obs())
    a = policy.training_terms(batch, generator=gen(5))
    b = policy.training_terms(batch, generator=gen(5))
    assert torch.equal(a.t, b.t) and torch.equal(a.x_t, b.x_t) and torch.equal(a.prediction, b.prediction)


@pytest.mark.parametrize("denoiser", DENOISERS)
def test_padded_slots_get_no_gradient_and_do_not_change_the_loss(denoiser):
    policy = build(denoiser=denoiser)
    batch = make_batch(make_obs())
    action = batch.action.clone().requires_grad_(True)
    loss = policy.compute_loss(dataclasses.replace(batch, action=action), generator=gen(7))
    loss.backward()
    assert float(action.grad[:, :, REAL_SLOTS:].abs().max()) == 0.0
    assert float(action.grad[:, :, :REAL_SLOTS].abs().max()) > 0.0
    garbage = batch.action.clone()
    garbage[:, :, REAL_SLOTS:] = 100.0
    other = policy.compute_loss(dataclasses.replace(batch, action=garbage), generator=gen(7))
    assert torch.equal(loss.detach(), other)


def test_padded_steps_do_not_count_in_the_loss():
    policy = build()
    batch = make_batch(make_obs())
    is_pad = torch.zeros(2, HORIZON, dtype=torch.bool)
    is_pad[0, 5:] = True
    batch = dataclasses.replace(batch, action_is_pad=is_pad)
    terms = policy.training_terms(batch, generator=gen(9))
    assert float(terms.weight[0, 5:].abs().max()) == 0.0
    real = (~is_pad)[:, :, None] & batch.action_mask[:, None, :]
    expected = (terms.prediction - terms.target).pow(2)[real].mean()
    torch.testing.assert_close(policy.compute_loss(batch, generator=gen(9)), expected)
    # a wrong prediction on a padded step costs nothing
    worse = terms.prediction.clone()
    worse[0, 5:] += 10.0
    torch.testing.assert_close(denoising_loss(worse, terms.target, terms.weight), expected)


# ------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("denoiser", DENOISERS)
@pytest.mark.parametrize("kind", KINDS)
def test_sample_is_a_finite_chunk_with_padded_slots_exactly_zero(denoiser, kind):
    policy = build(denoiser=denoiser, prediction_type=kind).eval()
    chunk = policy.sample(make_obs(), generator=gen(1))
    assert chunk.shape == (2, HORIZON, 128)
    assert bool(torch.isfinite(chunk).all())
    assert bool((chunk[:, :, REAL_SLOTS:] == 0).all())
    assert float(chunk[:, :, :REAL_SLOTS].abs().max()) > 0.0
    assert float(chunk.abs().max()) <= 5.0  # clip_sample_range


def test_each_sample_keeps_its_own_embodiment_slots():
    policy = build().eval()
    obs = make_obs()
    mask = obs.state_mask.clone()
    mask[1, 8:] = False  # a one-arm robot next to the two-arm one
    chunk = policy.sample(dataclasses.replace(obs, state_mask=mask), generator=gen(1))
    assert bool((chunk[0, :, REAL_SLOTS:] == 0).all()) and bool((chunk[1, :, 8:] == 0).all())
    assert bool((chunk[1, :, :8] != 0).all())


@pytest.mark.parametrize("denoiser", DENOISERS)
@pytest.mark.parametrize("n_obs_steps,cameras,horizon", [
    (1, ("head",), 5),  # 5 is no multiple of the UNet's 4: padded inside
    (3, ("head", "left_wrist", "right_wrist"), 12),
])
def test_any_observation_steps_cameras_and_horizon_work(denoiser, n_obs_steps, cameras, horizon):
    policy = build(denoiser=denoiser, n_obs_steps=n_obs_steps, cameras=list(cameras), horizon=horizon,
                   n_action_steps=min(4, horizon), unet_down_dims=[16, 32, 64])
    obs = make_obs(batch=1, steps=n_obs_steps, cams=len(cameras))
    assert policy.compute_loss(make_batch(obs, horizon=horizon), generator=gen(0)).isfinite()
    chunk = policy.eval().sample(obs, num_steps=3, generator=gen(0))
    assert chunk.shape == (1, horizon, 128) and bool(torch.isfinite(chunk).all())


def test_step_hook_sees_every_step_noisiest_first():
    policy = build().eval()
    seen = []
    policy.sample(make_obs(), num_steps=5, generator=gen(0), step_hook=lambda s: seen.append(s))
    assert [s.index for s in seen] == [0, 1, 2, 3, 4]
    assert all(isinstance(s, DenoiseStep) and s.num_steps == 5 and s.kind == "epsilon" for s in seen)
    assert [s.t.tolist() for s in seen] == [[t, t] for t in (80, 60, 40, 20, 0)]
    for s in seen:
        assert s.x_t.shape == s.model_output.shape == (2, HORIZON, 128)
        torch.testing.assert_close(s.alpha_bar, policy.scheduler.alphas_cumprod[s.t].float())
        assert torch.equal(s.action_mask, make_obs().state_mask)


def test_hook_returning_none_leaves_the_chunk_bit_identical():
    policy = build().eval()
    obs = make_obs()
    plain = policy.sample(obs, generator=gen(4))
    hooked = policy.sample(obs, generator=gen(4), step_hook=lambda s: None)
    assert torch.equal(plain, hooked)


@pytest.mark.parametrize("kind", KINDS)
def test_hook_shifting_the_last_output_shifts_the_chunk_by_the_closed_form(kind):
    # On the last step (t = 0, next level 1) the chunk is the clean estimate itself: a shift c
    # of the output moves it by c (sample) or by -c sqrt((1 - abar_0) / abar_0) (epsilon).
    policy = build(prediction_type=kind).eval()
    obs = make_obs()
    c = 0.5

    def shift_last(step: DenoiseStep):
        return step.model_output + c if step.index == step.num_steps - 1 else None

    plain = policy.sample(obs, generator=gen(4))
    shifted = policy.sample(obs, generator=gen(4), step_hook=shift_last)
    abar0 = float(policy.scheduler.alphas_cumprod[0])
    expected = c if kind == "sample" else -c * math.sqrt((1 - abar0) / abar0)
    inside = plain[:, :, :REAL_SLOTS].abs() < 5.0 - abs(expected)  # away from the clip
    delta = (shifted - plain)[:, :, :REAL_SLOTS][inside]
    torch.testing.assert_close(delta, torch.full_like(delta, expected), atol=1e-5, rtol=0)
    assert bool((shifted[:, :, REAL_SLOTS:] == 0).all())  # the hook cannot touch padded slots


def test_same_seed_or_noise_gives_a_bit_identical_chunk():
    policy = build(denoiser="transformer").eval()
    obs = make_obs()
    assert torch.equal(policy.sample(obs, generator=gen(11)), policy.sample(obs, generator=gen(11)))
    assert not torch.equal(policy.sample(obs, generator=gen(11)), policy.sample(obs, generator=gen(12)))
    noise = torch.randn(2, HORIZON, 128, generator=gen(13))
    assert torch.equal(policy.sample(obs, noise=noise), policy.sample(obs, noise=noise.clone()))


def test_image_encoder_runs_once_per_sample():
    policy = build().eval()
    calls = []
    backbone = policy.encoder.image_tokenizers[0].backbone
    handle = backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        policy.sample(make_obs(), num_steps=10, generator=gen(0))
    finally:
        handle.remove()
    assert len(calls) == 1


def test_a_manual_loop_of_encode_predict_and_denoise_step_equals_sample():
    # what guidance code does: run the pieces itself, here with autograd on
    policy = build().eval()
    obs = make_obs()
    noise = torch.randn(2, HORIZON, 128, generator=gen(2))
    with torch.no_grad():
        cond = policy.encode(obs)
    x = noise
    for t in policy.timesteps(4):
        x_req = x.detach().requires_grad_(True)
        out = policy.predict(x_req, t, cond)
        out[:, :, :REAL_SLOTS].sum().backward()
        assert x_req.grad is not None and float(x_req.grad[:, :, :REAL_SLOTS].abs().sum()) > 0
        x = policy.denoise_step(x, t, out.detach(), cond, num_steps=4).prev_sample
    x = torch.where(cond.action_mask[:, None, :], x, torch.zeros_like(x))
    assert torch.equal(x, policy.sample(obs, num_steps=4, noise=noise))


@pytest.mark.parametrize("denoiser", DENOISERS)
def test_a_traced_network_samples_what_the_eager_one_does_and_training_drops_the_trace(denoiser):
    policy = build(denoiser=denoiser).eval()
    obs = make_obs()
    eager = policy.sample(obs, generator=gen(3))
    policy.trace_for_inference()
    traced = policy.sample(obs, generator=gen(3))
    assert len(policy.inference_trace) == 1  # one trace, taken at the first step and reused
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)
    policy.sample(make_obs(batch=1), generator=gen(3))
    assert len(policy.inference_trace) == 2  # another batch size is another trace

    with torch.no_grad():  # a trace is a snapshot: after training the weights differ from it
        for p in policy.parameters():
            p.add_(0.01)
    policy.train()
    assert len(policy.inference_trace) == 0
    policy.eval()
    moved = policy.sample(obs, generator=gen(3))
    policy.trace_for_inference(False)
    torch.testing.assert_close(moved, policy.sample(obs, generator=gen(3)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(moved, eager)


def test_wrong_noise_shape_is_rejected():
    with pytest.raises(ValueError, match="noise has shape"):
        build().eval().sample(make_obs(), noise=torch.zeros(2, HORIZON + 1, 128))


# ------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("denoiser,steps", [("unet", 150), ("transformer", 300)])
def test_overfits_one_batch_and_samples_each_demonstration_back(denoiser, steps):
    # Clean-chunk prediction: an epsilon network this small needs thousands of steps before
    # its high-noise estimates are good enough for DDIM to land on the demonstration.
    policy = build(seed=0, denoiser=denoiser, prediction_type="sample")
    obs = make_obs(batch=2, seed=21)
    batch = make_batch(obs, seed=22)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    g = gen(23)
    for _ in range(steps):
        loss = policy.compute_loss(batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    chunk = policy.eval().sample(obs, num_steps=10, generator=gen(24))
    real = batch.action_mask[:, None, :].expand_as(chunk)
    for i in range(2):
        target = batch.action[i][real[i]]
        nmse = float((chunk[i][real[i]] - target).pow(2).mean() / target.var())
        assert nmse < 0.05, f"sample {i}: normalised MSE {nmse:.3f} (predicting the mean gives ~1)"
