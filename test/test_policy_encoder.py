"""The observation encoder: tokens per camera, state and instruction; local backbone weights only."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ate_core.config import ConfigError, from_dict
from ate_core.policy.base import Observation
from ate_core.policy.encoder import (TEXT_ENCODERS, EncoderConfig, HashedTextEncoder,
                                     ObservationEncoder, PretrainedWeightsError, ResNet,
                                     register_text_encoder)

CAMERAS = ("head", "left_wrist")
SIDE = 48  # the smallest square image that still leaves resnet10_small a 2x2 feature map


def small_config(**overrides) -> EncoderConfig:
    data = {"backbone": "resnet10_small", "d_model": 32, "text_dim": 16, "num_keypoints": 8}
    data.update(overrides)
    return from_dict(EncoderConfig, data)


def make_encoder(cfg: EncoderConfig, n_obs_steps: int = 2, cameras=CAMERAS) -> ObservationEncoder:
    torch.manual_seed(0)
    return ObservationEncoder(cfg, cameras=cameras, n_obs_steps=n_obs_steps, image_size=(SIDE, SIDE),
                              state_width=128)


def make_obs(batch: int = 2, steps: int = 2, cams: int = 2, tasks=None, seed: int = 0) -> Observation:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, 128, dtype=torch.bool)
    mask[:, :16] = True
    state = torch.randn(batch, steps, 128, generator=g) * mask[:, None, :]
    return Observation(images=torch.randint(0, 256, (batch, steps, cams, 3, SIDE, SIDE), generator=g,
                                            dtype=torch.uint8),
                       state=state, state_mask=mask,
                       task=tuple(tasks or ["pick the red cube"] * batch))


def test_one_token_per_camera_and_step_plus_state_and_instruction():
    enc = make_encoder(small_config(), n_obs_steps=2)
    tokens = enc(make_obs())
    assert enc.n_tokens == 2 * (2 + 1) + 1
    assert tokens.shape == (2, enc.n_tokens, 32)
    assert torch.isfinite(tokens).all()


def test_without_text_encoder_there_is_no_instruction_token():
    enc = make_encoder(small_config(text_encoder="none"), n_obs_steps=1)
    tokens = enc(make_obs(steps=1))
    assert enc.n_tokens == 3 and tokens.shape == (2, 3, 32)


def test_every_camera_image_changes_its_token():
    enc = make_encoder(small_config()).eval()
    obs = make_obs()
    images = obs.images.clone()
    images[0, 1, 1] = 255 - images[0, 1, 1]  # batch 0, step 1, camera left_wrist
    changed = enc(Observation(images=images, state=obs.state, state_mask=obs.state_mask, task=obs.task))
    base = enc(obs)
    token = 1 * (len(CAMERAS) + 1) + 1
    assert not torch.allclose(base[0, token], changed[0, token])
    others = [i for i in range(enc.n_tokens) if i != token]
    torch.testing.assert_close(base[0, others], changed[0, others], rtol=0, atol=0)


def test_images_too_small_for_spatial_softmax_are_a_config_error():
    from ate_core.policy.common import ChunkingPolicyConfig
    with pytest.raises(ConfigError, match="image_size.*1x1 feature map"):
        from_dict(ChunkingPolicyConfig, {"image_size": [32, 32], "encoder": {"backbone": "resnet10_small"}})
    from_dict(ChunkingPolicyConfig, {"image_size": [32, 32],
                                     "encoder": {"backbone": "resnet10_small", "pool": "avg"}})


def test_instruction_changes_only_the_instruction_token():
    enc = make_encoder(small_config()).eval()
    a = enc(make_obs(tasks=["pick the red cube", "pick the red cube"]))
    b = enc(make_obs(tasks=["place the blue cube", "pick the red cube"]))
    assert not torch.allclose(a[0, -1], b[0, -1])
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


def test_hashed_text_ids_are_stable_and_case_insensitive():
    text = HashedTextEncoder(buckets=1000, dim=4, out_dim=4)
    assert text.token_ids("Pick the CUBE") == text.token_ids("pick the cube")
    # crc32 is fixed by the zlib spec, so ids survive a restart (unlike Python's hash()).
    assert HashedTextEncoder(1000, 4, 4).token_ids("pick the cube") == text.token_ids("pick the cube")
    assert text.token_ids("") == [1000]  # the padding bucket: an empty instruction is allowed


def test_padded_state_slots_do_not_change_the_tokens():
    enc = make_encoder(small_config()).eval()
    obs = make_obs()
    noisy = Observation(images=obs.images, state=obs.state + 5.0 * (~obs.state_mask)[:, None, :],
                        state_mask=obs.state_mask, task=obs.task)
    torch.testing.assert_close(enc(obs), enc(noisy), rtol=0, atol=0)


def test_gradients_reach_backbone_state_and_text():
    enc = make_encoder(small_config())
    enc(make_obs()).square().mean().backward()
    for name in ("image_tokenizers.0.backbone.conv1.weight", "state_proj.0.weight", "text.embedding.weight"):
        grad = dict(enc.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_random_crop_in_training_and_centre_crop_at_inference():
    enc = make_encoder(small_config(crop_fraction=0.75))
    obs = make_obs(batch=1)
    enc.eval()
    torch.testing.assert_close(enc(obs), enc(obs), rtol=0, atol=0)
    enc.train()
    torch.manual_seed(1)
    first = enc(obs)
    outs = [enc(obs) for _ in range(4)]
    assert any(not torch.equal(first, o) for o in outs)


def test_wrong_camera_count_names_the_expected_cameras():
    enc = make_encoder(small_config())
    with pytest.raises(ValueError, match="head, left_wrist"):
        enc(make_obs(cams=3))


def _torchvision_style_resnet18_weights() -> dict:
    # The layout torchvision's resnet18 uses, with a classifier head the encoder must ignore.
    ref = ResNet((64, 128, 256, 512), (2, 2, 2, 2), norm="batch")
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    return state


def test_backbone_parameter_names_follow_torchvision():
    names = set(ResNet((64, 128, 256, 512), (2, 2, 2, 2), norm="batch").state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "layer1.1.conv2.weight",
                "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var",
                "layer4.1.bn2.bias"):
        assert key in names
    assert "layer1.0.downsample.0.weight" not in names  # torchvision has none in layer1
    assert len([k for k in names if not k.endswith("num_batches_tracked")]) == 100


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_torchvision_weights_load_into_the_backbone(tmp_path, suffix):
    state = _torchvision_style_resnet18_weights()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    enc = make_encoder(small_config(backbone="resnet18", norm="batch", pretrained_path=str(path)))
    loaded = enc.image_tokenizers[0].backbone.state_dict()
    for key in ("conv1.weight", "layer3.1.conv2.weight", "bn1.running_var"):
        torch.testing.assert_close(loaded[key], state[key], rtol=0, atol=0)


def test_frozen_batch_norm_statistics_stay_frozen_in_training(tmp_path):
    path = tmp_path / "resnet18.safetensors"
    save_file(_torchvision_style_resnet18_weights(), str(path))
    enc = make_encoder(small_config(backbone="resnet18", norm="batch", pretrained_path=str(path)))
    enc.train()
    before = enc.image_tokenizers[0].backbone.bn1.running_mean.clone()
    enc(make_obs())
    torch.testing.assert_close(enc.image_tokenizers[0].backbone.bn1.running_mean, before, rtol=0, atol=0)


def test_missing_weights_are_an_error_not_a_download(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="never downloaded"):
        make_encoder(small_config(backbone="resnet18", pretrained_path=str(tmp_path / "none.pth")))


def test_weights_of_another_network_are_rejected(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 3, 3)}, str(path))
    with pytest.raises(PretrainedWeightsError, match="not ResNet-18 weights"):
        make_encoder(small_config(backbone="resnet18", pretrained_path=str(path)))


def test_corrupt_weight_file_names_the_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(PretrainedWeightsError, match="broken.safetensors"):
        make_encoder(small_config(backbone="resnet18", pretrained_path=str(path)))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="pretrained_path"):
        small_config(pretrained_path="/x.pth")  # resnet10_small cannot take resnet18 weights
    with pytest.raises(ConfigError, match="text_encoder"):
        small_config(text_encoder="clip")
    with pytest.raises(ConfigError, match="backbone"):
        small_config(backbone="resnet50")


def test_a_registered_text_encoder_is_used():
    class Constant(nn.Module):
        def __init__(self, cfg: EncoderConfig) -> None:
            super().__init__()
            self.d = cfg.d_model

        def forward(self, texts):
            return torch.full((len(texts), self.d), 3.0)

    register_text_encoder("constant_for_test", Constant)
    try:
        enc = make_encoder(small_config(text_encoder="constant_for_test", dropout=0.0)).eval()
        a = enc(make_obs(tasks=["a", "b"]))
        torch.testing.assert_close(a[0, -1], a[1, -1])
    finally:
        TEXT_ENCODERS.pop("constant_for_test")
