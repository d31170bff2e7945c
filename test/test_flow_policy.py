"""The pi0-style flow-matching policy: shapes, prefix cache, sampler convention, hooks, training."""

from __future__ import annotations

import pytest
import torch

from ate_core.config import ConfigError
from ate_core.policy.base import Batch, InferenceTrace, Observation, denoising_loss
from ate_core.policy.factory import make_config, make_policy
from ate_core.policy.flow import FlowPolicy
from ate_core.policy.flow.modeling_flow import sample_beta

HORIZON = 10
WIDTH = 128
REAL_SLOTS = (0, 1, 2, 3, 4, 5, 6, 7, 64, 65, 66, 67, 68, 69, 70, 71)  # two 8-slot arms


def tiny(**overrides) -> dict:
    # 32x32 images leave resnet10_small a 1x1 feature map, where only average pooling is valid.
    cfg = {"horizon": HORIZON, "n_action_steps": 5, "cameras": ["head", "left_wrist"],
           "image_size": [32, 32], "expert_d_model": 32, "expert_n_layers": 2, "expert_n_heads": 4,
           "encoder": {"backbone": "resnet10_small", "pool": "avg", "d_model": 32,
                       "text_buckets": 64, "text_dim": 8}}
    cfg.update(overrides)
    return cfg


def make(seed: int = 0, **overrides) -> FlowPolicy:
    torch.manual_seed(seed)
    policy = make_policy("flow", tiny(**overrides))
    assert isinstance(policy, FlowPolicy)
    return policy.eval()


def slot_mask(batch_size: int, slots=REAL_SLOTS) -> torch.Tensor:
    mask = torch.zeros(batch_size, WIDTH, dtype=torch.bool)
    mask[:, list(slots)] = True
    return mask


def observation(batch_size: int = 2, n_cam: int = 2, n_obs_steps: int = 1, seed: int = 1) -> Observation:
    g = torch.Generator().manual_seed(seed)
    mask = slot_mask(batch_size)
    state = torch.randn(batch_size, n_obs_steps, WIDTH, generator=g) * mask[:, None, :]
    images = torch.randint(0, 256, (batch_size, n_obs_steps, n_cam, 3, 32, 32), generator=g, dtype=torch.uint8)
    return Observation(images=images, state=state, state_mask=mask,
                       task=tuple(f"task {i}" for i in range(batch_size)))


def chunk(batch_size: int = 2, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, HORIZON, WIDTH, generator=g) * slot_mask(batch_size)[:, None, :]


def batch(batch_size: int = 2, pad_from: int = HORIZON) -> Batch:
    is_pad = torch.zeros(batch_size, HORIZON, dtype=torch.bool)
    is_pad[:, pad_from:] = True
    return Batch(obs=observation(batch_size), action=chunk(batch_size),
                 action_mask=slot_mask(batch_size), action_is_pad=is_pad)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ config


def test_default_config_follows_pi0():
    cfg = make_config("flow")
    assert (cfg.horizon, cfg.n_action_steps, cfg.n_obs_steps, cfg.num_steps) == (50, 25, 1, 10)
    assert (cfg.time_beta_alpha, cfg.time_beta_beta, cfg.min_period, cfg.max_period) == (1.5, 1.0, 4e-3, 4.0)


@pytest.mark.parametrize("overrides, key", [
    ({"expert_n_heads": 5}, "expert_n_heads"),
    ({"num_steps": 0}, "num_steps"),
    ({"time_beta_alpha": -1.0}, "time_beta_alpha"),
    ({"dropout": 1.5}, "dropout"),
    ({"min_period": 5.0}, "max_period"),
    ({"n_action_steps": 11}, "n_action_steps"),
    ({"state_width": 64}, "state_width"),
    ({"expert_layers": 2}, "expert_layers"),
])
def test_bad_config_value_names_its_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        make_config("flow", tiny(**overrides), source="flow.yaml")
    assert err.value.key == key and str(err.value).startswith(f"flow.yaml: {key}: ")


# ----------------------------------------------------------------------------------- sampling


def test_sample_has_chunk_shape_finite_values_and_zero_padded_slots():
    policy = make()
    obs = observation(batch_size=3)
    out = policy.sample(obs, generator=gen())
    assert out.shape == (3, HORIZON, WIDTH) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out[~obs.state_mask[:, None, :].expand_as(out)] == 0).all()
    assert out[:, :, list(REAL_SLOTS)].abs().sum() > 0


def test_two_observation_steps_and_one_camera_are_supported():
    policy = make(n_obs_steps=2, cameras=["head"])
    obs = observation(batch_size=1, n_cam=1, n_obs_steps=2)
    assert policy.sample(obs, num_steps=2, generator=gen()).shape == (1, HORIZON, WIDTH)
    b = Batch(obs=obs, action=chunk(1), action_mask=slot_mask(1),
              action_is_pad=torch.zeros(1, HORIZON, dtype=torch.bool))
    assert torch.isfinite(policy.compute_loss(b, generator=gen()))


def test_values_in_padded_slots_never_reach_the_real_ones():
    policy = make()
    obs = observation()
    noise = torch.randn(2, HORIZON, WIDTH, generator=gen(6))
    padded = ~obs.state_mask[:, None, :].expand_as(noise)
    poisoned = torch.where(padded, torch.full_like(noise, float("nan")), noise)
    assert torch.equal(policy.sample(obs, noise=poisoned), policy.sample(obs, noise=noise))


def test_hook_returning_a_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="step_hook returned shape"):
        make().sample(observation(), num_steps=2, step_hook=lambda step: step.model_output[:, :1])


def test_same_seed_gives_bit_identical_samples_and_losses():
    policy = make()
    obs = observation()
    assert torch.equal(policy.sample(obs, generator=gen(7)), policy.sample(obs, generator=gen(7)))
    assert not torch.equal(policy.sample(obs, generator=gen(7)), policy.sample(obs, generator=gen(8)))
    b = batch()
    assert torch.equal(policy.compute_loss(b, generator=gen(3)), policy.compute_loss(b, generator=gen(3)))


def test_cached_prefix_path_equals_the_full_masked_forward():
    policy = make()
    obs = observation()
    tokens = policy.encoder(obs)
    x = torch.randn(2, HORIZON, WIDTH, generator=gen(4))
    tau = torch.tensor([0.9, 0.2])
    with torch.no_grad():
        full = policy.expert(tokens, x, tau)
        cached = policy.expert.velocity(policy.expert.prefix_cache(tokens), x, tau)
    assert full.abs().mean() > 1e-3
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


def test_one_prefix_cache_serves_every_noisy_chunk():
    policy = make()
    tokens = policy.encoder(observation())
    cache = policy.expert.prefix_cache(tokens)
    x = torch.randn(2, HORIZON, WIDTH, generator=gen(5))
    x2 = x + 1.0
    # Changing the chunk changes every action output, but the cache has no input from it.
    with torch.no_grad():
        assert not torch.allclose(policy.expert.velocity(cache, x, torch.tensor([0.5, 0.5])),
                                  policy.expert.velocity(cache, x2, torch.tensor([0.5, 0.5])))
        torch.testing.assert_close(policy.expert(tokens, x2, torch.tensor([0.5, 0.5])),
                                   policy.expert.velocity(cache, x2, torch.tensor([0.5, 0.5])),
                                   rtol=1e-5, atol=1e-5)


def test_encoder_runs_once_per_sample():
    policy = make()
    calls = []
    handle = policy.encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        policy.sample(observation(), num_steps=7, generator=gen())
    finally:
        handle.remove()
    assert len(calls) == 1


def test_step_hook_sees_every_step_with_tau_falling_from_one():
    policy = make()
    obs = observation()
    steps = []
    policy.sample(obs, num_steps=5, generator=gen(), step_hook=steps.append)
    assert [s.index for s in steps] == list(range(5))
    for k, s in enumerate(steps):
        assert s.num_steps == 5 and s.kind == "velocity" and s.alpha_bar is None
        assert s.t.shape == (2,) and torch.allclose(s.t, torch.full((2,), 1.0 - k / 5))
        assert s.x_t.shape == s.model_output.shape == (2, HORIZON, WIDTH)
        assert torch.equal(s.action_mask, obs.state_mask)


def test_hook_returning_none_is_bit_identical_to_no_hook():
    policy = make()
    obs = observation()
    assert torch.equal(policy.sample(obs, generator=gen(9), step_hook=lambda step: None),
                       policy.sample(obs, generator=gen(9)))


def test_hook_adding_a_constant_velocity_shifts_the_sample_by_minus_that_constant():
    policy = make()
    obs = observation()
    noise = torch.randn(2, HORIZON, WIDTH, generator=gen(10))
    recorded = []

    def record(step):
        recorded.append(step.model_output.clone())

    plain = policy.sample(obs, noise=noise, step_hook=record)
    c = torch.linspace(-1.0, 1.0, WIDTH) * slot_mask(1)[0]
    # Replay the recorded velocities plus c: the Euler steps sum dt = -1, so the sample moves by -c.
    shifted = policy.sample(obs, noise=noise, step_hook=lambda step: recorded[step.index] + c)
    torch.testing.assert_close(shifted, plain - c, rtol=0, atol=1e-5)


def test_euler_with_the_exact_straight_path_velocity_lands_on_the_target():
    policy = make()
    obs = observation()
    target = chunk()

    def oracle(step):  # x_tau = tau * noise + (1 - tau) * a  =>  u = noise - a = (x_tau - a) / tau
        return (step.x_t - target) / step.t[:, None, None]

    for n in (1, 3, 10):
        out = policy.sample(obs, num_steps=n, generator=gen(n), step_hook=oracle)
        torch.testing.assert_close(out, target, rtol=0, atol=1e-5)


def test_predict_is_differentiable_with_respect_to_x_tau_inside_a_hook():
    policy = make()
    grads = []

    def guide(step):
        with torch.enable_grad():
            cond = policy.encode(observation())  # a guidance term may rebuild its own condition
            x = step.x_t.detach().requires_grad_(True)
            v = policy.predict(x, step.t, cond)
            (grad,) = torch.autograd.grad(v.square().sum(), x)
        grads.append(grad)
        return v.detach() - 0.1 * grad

    policy.sample(observation(), num_steps=2, generator=gen(), step_hook=guide)
    assert len(grads) == 2 and all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert all((g[~slot_mask(2)[:, None, :].expand_as(g)] == 0).all() for g in grads)  # padded slots unseen


def test_a_traced_expert_samples_what_the_eager_one_does_and_a_guidance_hook_runs_it_eagerly():
    policy = make().eval()
    eager = policy.sample(observation(), generator=gen(4))
    policy.trace_for_inference()
    traced = policy.sample(observation(), generator=gen(4))
    assert len(policy.inference_trace) == 1
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)
    assert "expert" not in {name.split(".")[0] for name in policy.state_dict() if "velocity" in name}
    assert set(policy.state_dict()) == set(make().state_dict())  # the trace's wrapper is not saved

    grads = []

    def guide(step):
        with torch.enable_grad():
            x = step.x_t.detach().requires_grad_(True)
            v = policy.predict(x, step.t, policy.encode(observation()))
            (grad,) = torch.autograd.grad(v.square().sum(), x)
        grads.append(grad)
        return None

    policy.sample(observation(), num_steps=2, generator=gen(), step_hook=guide)
    assert len(grads) == 2 and all(g.abs().sum() > 0 for g in grads)


def test_a_module_the_tracer_cannot_take_runs_eagerly_with_a_warning_saying_why():
    class Untraceable(torch.nn.Module):
        def forward(self, x):
            return {"chunk": x, "note": "not a tensor"}

    trace = InferenceTrace()
    with pytest.warns(RuntimeWarning, match="Untraceable could not be traced"):
        out = trace(Untraceable(), (torch.ones(2),))
    assert out["note"] == "not a tensor" and len(trace) == 0 and "Untraceable" in trace.failures


# ----------------------------------------------------------------------------------- training


def test_training_terms_follow_the_pi0_convention():
    policy = make()
    b = batch()
    terms = policy.training_terms(b, generator=gen(11))
    assert terms.kind == "velocity" and terms.alpha_bar is None
    assert terms.t.shape == (2,) and ((terms.t >= 0.001) & (terms.t <= 1.0)).all()
    noise = terms.target + b.action  # u = noise - a
    t = terms.t[:, None, None]
    torch.testing.assert_close(terms.x_t, t * noise + (1 - t) * b.action)
    assert torch.equal(terms.clean, b.action) and torch.equal(terms.weight, b.loss_weight())
    assert terms.prediction.shape == (2, HORIZON, WIDTH) and terms.prediction.requires_grad


def test_padded_slots_and_padded_steps_get_no_loss():
    policy = make()
    b = batch(pad_from=6)
    terms = policy.training_terms(b, generator=gen(12))
    excluded = terms.weight == 0
    assert excluded[:, 6:].all() and excluded[:, :, 8:64].all() and not excluded[:, :6, :8].any()
    garbage = torch.where(excluded, terms.prediction + 1e3, terms.prediction)
    assert torch.equal(denoising_loss(garbage, terms.target, terms.weight),
                       denoising_loss(terms.prediction, terms.target, terms.weight))
    # Values written into padded slots of the demonstration change nothing at all.
    noisy = Batch(obs=b.obs, action=b.action + (~b.action_mask[:, None, :]) * 5.0,
                  action_mask=b.action_mask, action_is_pad=b.action_is_pad)
    assert torch.equal(policy.compute_loss(noisy, generator=gen(12)), policy.compute_loss(b, generator=gen(12)))


def test_training_times_follow_the_configured_beta_distribution():
    g = gen(13)
    tau = make().sample_tau(20000, generator=g)
    assert tau.min() >= 0.001 and tau.max() <= 1.0
    assert abs(tau.mean().item() - (0.6 * 0.999 + 0.001)) < 0.01  # Beta(1.5, 1) mean 0.6
    general = sample_beta(2.0, 3.0, 20000, generator=g)
    assert abs(general.mean().item() - 0.4) < 0.01 and abs(general.var().item() - 0.04) < 0.004
    small = sample_beta(0.5, 0.5, 20000, generator=g)
    assert abs(small.mean().item() - 0.5) < 0.01 and abs(small.var().item() - 0.125) < 0.01


def test_gradients_reach_the_encoder_and_the_expert():
    policy = make().train()
    policy.compute_loss(batch(), generator=gen(14)).backward()
    for name, module in (("backbone", policy.encoder.image_tokenizers[0].backbone),
                         ("state projection", policy.encoder.state_proj), ("text", policy.encoder.text),
                         ("expert", policy.expert)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_two_observations_overfit_to_their_own_chunks():
    torch.manual_seed(0)
    # Wider than the other tests' expert: it has to memorise 2 x 8 x 16 values in a few hundred steps.
    policy = make_policy("flow", tiny(cameras=["head"], horizon=8, n_action_steps=4, expert_d_model=192,
                                      expert_n_layers=1,
                                      encoder={"backbone": "resnet10_small", "pool": "avg", "d_model": 32,
                                               "text_encoder": "none"}))
    # A random backbone already tells two random images apart; freezing it halves the step time
    # (gradient flow into it is covered above) and leaves the flow-matching fit under test.
    policy.encoder.image_tokenizers[0].backbone.requires_grad_(False)
    obs = observation(batch_size=2, n_cam=1, seed=21)
    g = gen(22)
    mask = slot_mask(2)
    target = torch.randn(2, 8, WIDTH, generator=g) * mask[:, None, :]
    reps = 16  # many (noise, tau) draws of the same two samples per step
    train = Batch(obs=Observation(images=obs.images.repeat(reps, 1, 1, 1, 1, 1),
                                  state=obs.state.repeat(reps, 1, 1), state_mask=mask.repeat(reps, 1),
                                  task=("",) * 2 * reps),
                  action=target.repeat(reps, 1, 1), action_mask=mask.repeat(reps, 1),
                  action_is_pad=torch.zeros(2 * reps, 8, dtype=torch.bool))
    steps = 400
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=3e-3, foreach=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    policy.train()
    for _ in range(steps):
        loss = policy.compute_loss(train, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    policy.eval()
    out = policy.sample(obs, generator=gen(23))
    real = mask[:, None, :].expand_as(out)
    for i in range(2):  # normalised by the target's power: predicting 0 (the mean) scores ~1
        mse = (out[i] - target[i])[real[i]].pow(2).mean() / target[i][real[i]].pow(2).mean()
        assert mse < 0.05, f"sample {i}: normalised MSE {mse:.3f}"
