"""Observation encoder shared by every policy: cameras, proprioception and the instruction -> tokens.

The encoder turns an :class:`~ate_core.policy.base.Observation` into a short sequence of
``d_model``-wide tokens, one per (observation step, camera), one per observation step for the
state, and one for the instruction. A UNet flattens them into its global FiLM condition
(Diffusion Policy); transformer denoisers and the flow action expert attend to them (pi0's
prefix). The image backbone is a ResNet whose parameter names follow torchvision's, so local
torchvision ResNet-18 weights load into it; nothing is ever downloaded.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ate_core.config import checked, in_range, one_of
from ate_core.policy.base import Observation

__all__ = [
    "EncoderConfig",
    "ObservationEncoder",
    "ResNet",
    "SpatialSoftmax",
    "HashedTextEncoder",
    "TEXT_ENCODERS",
    "register_text_encoder",
    "PretrainedWeightsError",
    "load_torchvision_resnet",
    "sinusoidal_embedding",
    "feature_map_size",
    "encoder_input_problem",
]

#: ImageNet statistics; torchvision's pretrained backbones expect them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Channels per stage and blocks per stage of the supported backbones.
BACKBONES: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    "resnet18": ((64, 128, 256, 512), (2, 2, 2, 2)),
    "resnet10_small": ((32, 64, 128, 256), (1, 1, 1, 1)),
}


def _positive_int(value: int) -> Optional[str]:
    return None if value > 0 else f"{value} must be > 0"


@dataclass(frozen=True)
class EncoderConfig:
    """How observations become tokens. Defaults follow Diffusion Policy's image encoder."""

    backbone: str = checked("resnet18", check=one_of(*BACKBONES),
                            doc="image backbone; resnet18 accepts torchvision weights")
    norm: str = checked("group", check=one_of("group", "batch"),
                        doc="group (Diffusion Policy, trains from scratch) or frozen batch statistics")
    pretrained_path: str = ""  # local torchvision resnet18 weights (.safetensors/.pth); "" = none
    pool: str = checked("spatial_softmax", check=one_of("spatial_softmax", "avg"))
    num_keypoints: int = checked(32, check=_positive_int)
    share_backbone: bool = True
    crop_fraction: float = checked(1.0, check=in_range(0.5, 1.0),
                                   doc="random crop of this fraction in training, centre crop at inference")
    d_model: int = checked(256, check=_positive_int, doc="token width")
    text_encoder: str = "hashed"  # a registered text encoder name, or "none"
    text_buckets: int = checked(4096, check=_positive_int)
    text_dim: int = checked(64, check=_positive_int)
    dropout: float = checked(0.0, check=in_range(0.0, 0.9))

    def problems(self):
        if self.pretrained_path and self.backbone != "resnet18":
            yield "pretrained_path", "torchvision weights fit only backbone resnet18"
        if self.text_encoder != "none" and self.text_encoder not in TEXT_ENCODERS:
            yield "text_encoder", f"{self.text_encoder!r} is not one of {sorted(TEXT_ENCODERS) + ['none']}"


# ---------------------------------------------------------------------------------------------
# Image backbone


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 16), channels)
    return nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class ResNet(nn.Module):
    """A ResNet feature extractor (no pooling head); parameter names match torchvision's."""

    def __init__(self, widths: Sequence[int], blocks: Sequence[int], norm: str = "group") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = _norm(norm, widths[0])
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(*[BasicBlock(cin if j == 0 else w, w, stride if j == 0 else 1, norm)
                                    for j in range(n)])
            setattr(self, f"layer{i + 1}", layer)
            cin = w
        self.out_channels = cin
        self.num_layers = len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


def feature_map_size(backbone: str, image_size: Tuple[int, int]) -> Tuple[int, int]:
    """Spatial size of the backbone's last feature map for an input image (stem /4, stages /2)."""
    halvings = 2 + len(BACKBONES[backbone][0]) - 1
    out = []
    for side in image_size:
        for _ in range(halvings):
            side = (side - 1) // 2 + 1
        out.append(side)
    return out[0], out[1]


def encoder_input_problem(cfg: EncoderConfig, image_size: Tuple[int, int]) -> Optional[str]:
    """Why ``image_size`` cannot work with ``cfg`` (None when it can).

    Spatial softmax over a 1x1 map is the constant 0 whatever the image shows: the policy
    would silently ignore its cameras.
    """
    cropped = tuple(max(1, int(round(s * cfg.crop_fraction))) for s in image_size)
    fh, fw = feature_map_size(cfg.backbone, cropped)  # type: ignore[arg-type]
    if cfg.pool == "spatial_softmax" and min(fh, fw) < 2:
        return (f"{list(image_size)} (cropped to {list(cropped)}) gives a {fh}x{fw} feature map from "
                f"{cfg.backbone}; spatial softmax needs at least 2x2: use larger images or encoder.pool: avg")
    return None


class PretrainedWeightsError(ValueError):
    """Local backbone weights are missing, unreadable or do not fit the backbone."""


def load_torchvision_resnet(backbone: ResNet, path: str) -> None:
    """Load torchvision ResNet-18 weights from a local file (never downloads).

    ``.safetensors`` is read as is; ``.pth``/``.pt`` go through ``torch.load(weights_only=True)``,
    which refuses anything but tensors. The classifier head (``fc.*``) is ignored. With group
    norm, batch-norm running statistics are dropped and their affine weights kept.
    """
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"{path}: pretrained backbone weights not found (they are never downloaded)")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch raise several types for a corrupt file
        raise PretrainedWeightsError(f"{path}: cannot read backbone weights: {exc}") from exc
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: expected a state dict of tensors")
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and k in own}
    missing = sorted(set(k for k in own if not k.endswith("num_batches_tracked")) - set(state))
    if missing:
        raise PretrainedWeightsError(f"{path}: not ResNet-18 weights; missing {missing[:4]}...")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise PretrainedWeightsError(f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    backbone.load_state_dict(state, strict=False)


class SpatialSoftmax(nn.Module):
    """Expected 2-D keypoint positions per learned feature map (Levine et al.; Diffusion Policy)."""

    def __init__(self, channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, num_keypoints, 1)
        self.out_dim = 2 * num_keypoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.proj(x)
        b, k, h, w = feat.shape
        attn = feat.flatten(2).softmax(-1)  # [B, K, H*W]
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=attn.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=attn.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        ex = (attn * grid_x.reshape(1, 1, -1)).sum(-1)
        ey = (attn * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.cat([ex, ey], dim=-1)


class ImageTokenizer(nn.Module):
    """Backbone + pooling + projection: one ``d_model`` token per image."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        widths, blocks = BACKBONES[cfg.backbone]
        self.backbone = ResNet(widths, blocks, cfg.norm)
        if cfg.pretrained_path:
            load_torchvision_resnet(self.backbone, cfg.pretrained_path)
        if cfg.norm == "batch":  # frozen statistics: a batch of one robot frame must not shift them
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
                    m.requires_grad_(False)
        if cfg.pool == "spatial_softmax":
            self.pool: nn.Module = SpatialSoftmax(self.backbone.out_channels, cfg.num_keypoints)
            pooled = self.pool.out_dim
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            pooled = self.backbone.out_channels
        self.proj = nn.Linear(pooled, cfg.d_model)

    def train(self, mode: bool = True) -> "ImageTokenizer":
        super().train(mode)
        for m in self.backbone.modules():  # keep frozen batch norm frozen
            if isinstance(m, nn.BatchNorm2d) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.backbone(x)))


# ---------------------------------------------------------------------------------------------
# Instruction text

_WORD = re.compile(r"[a-z0-9]+")


class HashedTextEncoder(nn.Module):
    """A bag of hashed words and word pairs -> one vector: no vocabulary file, stable across runs.

    Small on purpose: the robot's instructions are a handful of task phrases. A local language
    model can replace it through :func:`register_text_encoder`.
    """

    def __init__(self, buckets: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.embedding = nn.EmbeddingBag(buckets + 1, dim, mode="mean", padding_idx=buckets)
        self.proj = nn.Linear(dim, out_dim)
        self._cache: Dict[str, List[int]] = {}

    def token_ids(self, text: str) -> List[int]:
        ids = self._cache.get(text)
        if ids is None:
            words = _WORD.findall(text.lower())
            grams = words + [a + " " + b for a, b in zip(words, words[1:])]
            ids = [zlib.crc32(g.encode()) % self.buckets for g in grams] or [self.buckets]
            self._cache[text] = ids
        return ids

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        ids = [self.token_ids(t) for t in texts]
        flat = torch.tensor([i for seq in ids for i in seq], dtype=torch.long,
                            device=self.embedding.weight.device)
        offsets = torch.tensor([0] + [len(seq) for seq in ids[:-1]], dtype=torch.long,
                               device=flat.device).cumsum(0)
        return self.proj(self.embedding(flat, offsets))


TextEncoderFactory = Callable[[EncoderConfig], nn.Module]
TEXT_ENCODERS: Dict[str, TextEncoderFactory] = {
    "hashed": lambda cfg: HashedTextEncoder(cfg.text_buckets, cfg.text_dim, cfg.d_model),
}


def register_text_encoder(name: str, factory: TextEncoderFactory) -> None:
    """Make a text encoder available as ``encoder.text_encoder: <name>``.

    ``factory(cfg)`` returns a module mapping a sequence of strings to ``[B, cfg.d_model]``
    (e.g. a frozen local language model plus a projection).
    """
    TEXT_ENCODERS[name] = factory


# ---------------------------------------------------------------------------------------------
# The encoder


class ObservationEncoder(nn.Module):
    """Observation -> tokens ``[B, n_tokens, d_model]``.

    Token order: for each observation step, one token per camera, one state token and (with
    ``env_state_dim`` > 0) one token of the scene's state; last, the instruction token (absent
    with ``text_encoder: none``). With no cameras no image backbone is built. Learned embeddings mark the
    camera, the step and the token's role, so a flattening consumer and an attending one both
    know which is which.
    """

    def __init__(self, cfg: EncoderConfig, *, cameras: Sequence[str], n_obs_steps: int,
                 image_size: Tuple[int, int], state_width: int, env_state_dim: int = 0) -> None:
        super().__init__()
        problem = encoder_input_problem(cfg, image_size) if cameras else None
        if problem:
            raise ValueError(f"image_size: {problem}")
        self.cfg = cfg
        self.cameras = tuple(cameras)
        self.n_obs_steps = n_obs_steps
        self.image_size = tuple(image_size)
        n_cam = len(self.cameras)
        if n_cam == 0:
            self.image_tokenizers = nn.ModuleList()
        elif cfg.share_backbone:
            self.image_tokenizers = nn.ModuleList([ImageTokenizer(cfg)])
        else:
            self.image_tokenizers = nn.ModuleList([ImageTokenizer(cfg) for _ in range(n_cam)])
        self.state_proj = nn.Sequential(nn.Linear(2 * state_width, cfg.d_model), nn.Mish(),
                                        nn.Linear(cfg.d_model, cfg.d_model))
        self.env_state_dim = int(env_state_dim)
        self.env_proj = None
        if self.env_state_dim:
            self.env_proj = nn.Sequential(nn.Linear(self.env_state_dim, cfg.d_model), nn.Mish(),
                                          nn.Linear(cfg.d_model, cfg.d_model))
            self.env_embed = nn.Parameter(torch.randn(cfg.d_model) * 0.02)
        self.text = None if cfg.text_encoder == "none" else TEXT_ENCODERS[cfg.text_encoder](cfg)
        self.camera_embed = nn.Parameter(torch.zeros(n_cam, cfg.d_model))
        self.step_embed = nn.Parameter(torch.zeros(n_obs_steps, cfg.d_model))
        self.state_embed = nn.Parameter(torch.zeros(cfg.d_model))
        for p in (self.camera_embed, self.step_embed, self.state_embed):
            nn.init.normal_(p, std=0.02)
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def n_tokens(self) -> int:
        per_step = len(self.cameras) + 1 + (1 if self.env_proj is not None else 0)
        return self.n_obs_steps * per_step + (0 if self.text is None else 1)

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        frac = self.cfg.crop_fraction
        if frac >= 1.0:
            return x
        h, w = x.shape[-2:]
        ch, cw = max(1, int(round(h * frac))), max(1, int(round(w * frac)))
        if self.training:  # one random offset per image, as Diffusion Policy's CropRandomizer
            top = int(torch.randint(0, h - ch + 1, ()).item())
            left = int(torch.randint(0, w - cw + 1, ()).item())
        else:
            top, left = (h - ch) // 2, (w - cw) // 2
        return x[..., top:top + ch, left:left + cw]

    def forward(self, obs: Observation) -> torch.Tensor:
        images = obs.images
        b, t, n = images.shape[:3]
        if t != self.n_obs_steps or n != len(self.cameras):
            raise ValueError(f"observation has {t} steps x {n} cameras; the encoder expects "
                             f"{self.n_obs_steps} x {len(self.cameras)} ({', '.join(self.cameras)})")
        dtype = self.camera_embed.dtype
        parts = []
        if n:
            x = images.to(dtype) / 255.0
            x = (x.flatten(0, 2) - self.pixel_mean.to(dtype)) / self.pixel_std.to(dtype)  # [B*T*N, 3, H, W]
            x = self._crop(x)
            if len(self.image_tokenizers) == 1:
                img = self.image_tokenizers[0](x).view(b, t, n, -1)
            else:
                x = x.view(b, t, n, *x.shape[1:])
                img = torch.stack([enc(x[:, :, i].flatten(0, 1)).view(b, t, -1)
                                   for i, enc in enumerate(self.image_tokenizers)], dim=2)
            parts.append(img + self.camera_embed.view(1, 1, n, -1))
        mask = obs.state_mask.to(dtype)[:, None, :].expand(b, t, -1)
        state = self.state_proj(torch.cat([obs.state.to(dtype) * mask, mask], dim=-1)) + self.state_embed
        parts.append(state[:, :, None, :])
        if self.env_proj is not None:
            env = obs.env_state
            if env is None or tuple(env.shape) != (b, t, self.env_state_dim):
                raise ValueError(f"env_state: the encoder expects [{b}, {t}, {self.env_state_dim}], got "
                                 f"{None if env is None else list(env.shape)}")
            parts.append(self.env_proj(env.to(dtype))[:, :, None, :] + self.env_embed)
        per_step = torch.cat(parts, dim=2) + self.step_embed.view(1, t, 1, -1)
        tokens = [per_step.flatten(1, 2)]
        if self.text is not None:
            tokens.append(self.text(list(obs.task)).to(dtype)[:, None, :])
        return self.dropout(torch.cat(tokens, dim=1))


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style embedding of a (possibly fractional) step or time ``[B] -> [B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb
