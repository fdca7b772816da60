"""Typed configs of the TrackGo model and the UNet presets it is built on.

``TrackGoConfig`` holds every choice the paper leaves open (spec §9); it is saved next to every
checkpoint as ``trackgo_config.json``. ``UNET_PRESETS`` are diffusers
``UNetSpatioTemporalConditionModel`` configs: ``svd-xt`` is Stable Video Diffusion img2vid-xt,
``tiny`` a four-temporal-layer UNet that runs on a CPU in milliseconds.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from trackgo_data.config import ConfigError, config_from_dict, config_to_dict

#: the TrackAdapter's attention rules (trackgo_model.attention)
ATTENTION_MODES = ("gated", "paper")
#: every way a model takes P: the attention rules, and "injection" — the peers' additive
#: features (trackgo_model.injection), for comparison
MODES = ATTENTION_MODES + ("injection",)
TRAINABLE_GROUPS = ("encoder", "adapter", "temporal_qkv")
#: every parameter group a run may train: TrackGo's, plus "unet" (the whole UNet without the
#: adapters: training an image-to-video base model from scratch, as the toy reproduction does)
PARAMETER_GROUPS = TRAINABLE_GROUPS + ("unet",)
POOLING = ("avg", "nearest")
#: implementations of the masked temporal attention (see trackgo_model.attention.KERNELS); "flex"
#: is Wan's FlexAttention kernel (trackgo_model.wan.attention), the others SVD's
ATTENTION_KERNELS = ("explicit", "sdpa", "compiled", "triton", "flex")
ATTN_LOSS_NORMALISATIONS = ("mean", "sum")

UNET_PRESETS: dict[str, dict[str, Any]] = {
    "svd-xt": {
        "sample_size": 96,
        "in_channels": 8,
        "out_channels": 4,
        "down_block_types": [
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ],
        "up_block_types": [
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ],
        "block_out_channels": [320, 640, 1280, 1280],
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 768,
        "layers_per_block": 2,
        "cross_attention_dim": 1024,
        "transformer_layers_per_block": 1,
        "num_attention_heads": [5, 10, 20, 20],
        "num_frames": 25,
    },
    "tiny": {
        "sample_size": 8,
        "in_channels": 8,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
        "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
        "block_out_channels": [32, 64],
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 24,
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "transformer_layers_per_block": 1,
        "num_attention_heads": [2, 4],
        "num_frames": 14,
    },
}


def unet_config(preset_or_config: str | dict[str, Any]) -> dict[str, Any]:
    """A fresh copy of a preset by name, or of a given diffusers UNet config dict."""
    if isinstance(preset_or_config, str):
        if preset_or_config not in UNET_PRESETS:
            raise ConfigError(
                f"unknown UNet preset {preset_or_config!r}; known: {', '.join(sorted(UNET_PRESETS))}"
            )
        return copy.deepcopy(UNET_PRESETS[preset_or_config])
    if not isinstance(preset_or_config, dict):
        raise ConfigError(f"expected a preset name or a config dict, got {type(preset_or_config).__name__}")
    return {k: v for k, v in preset_or_config.items() if not k.startswith("_")}


def size_multiple(unet_config: Any, vae_config: Any) -> int:
    """What a generated video's height and width must be multiples of for a UNet and VAE with these
    configs (diffusers config objects or dicts): 2^(VAE down-samplings) · 2^(UNet down-samplings),
    64 for SVD, 16 for the tiny model."""
    def levels(config: Any) -> int:
        channels = config["block_out_channels"] if isinstance(config, dict) else config.block_out_channels
        return len(channels) - 1

    return 2 ** levels(vae_config) * 2 ** levels(unet_config)


def expected_temporal_layers(config: dict[str, Any]) -> int:
    """Number of ``temporal_transformer_blocks.*.attn1`` layers a UNet config produces.

    Cross-attention down blocks hold ``layers_per_block`` transformers, cross-attention up blocks
    ``layers_per_block + 1``, the mid block one; each transformer has
    ``transformer_layers_per_block`` temporal blocks (svd-xt: 3·2 + 1 + 3·3 = 16; tiny: 4).
    """
    down = list(config.get("down_block_types", UNET_PRESETS["svd-xt"]["down_block_types"]))
    up = list(config.get("up_block_types", UNET_PRESETS["svd-xt"]["up_block_types"]))
    n = len(down)
    lpb = config.get("layers_per_block", 2)
    lpb = [lpb] * n if isinstance(lpb, int) else list(lpb)
    tlpb = config.get("transformer_layers_per_block", 1)
    tlpb = [tlpb] * n if isinstance(tlpb, int) else list(tlpb)
    if any(not isinstance(t, int) for t in tlpb):
        raise ConfigError("transformer_layers_per_block must be an int or a tuple of ints")
    total = sum(lpb[i] * tlpb[i] for i, t in enumerate(down) if t.startswith("CrossAttn"))
    total += tlpb[-1]  # mid block
    rev_lpb, rev_tlpb = lpb[::-1], tlpb[::-1]
    total += sum((rev_lpb[i] + 1) * rev_tlpb[i] for i, t in enumerate(up) if t.startswith("CrossAttn"))
    return total


@dataclass
class EncoderConfig:
    """Trajectory encoder E: six 3×3 convs (``channels``) with SiLU and two 2×2 average poolings.

    Layout (per frame, H×W input): conv(3→c0) · conv(c0→c1, stride 2) · pool · conv(c1→c2) ·
    conv(c2→c3) · pool · conv(c3→c4) · conv(c4→c5) → /8, then one 1×1 linear per adapter width
    (zero weights, N(0, head_bias_std²) biases: a constant feature, see trackgo_model.encoder). ``pooling`` is the operator that brings the /8 feature to a deeper
    layer's grid: ``avg`` (adaptive average pooling = area interpolation) or ``nearest``.
    """

    channels: tuple[int, ...] = (16, 32, 64, 96, 128, 256)
    pooling: str = "avg"
    in_channels: int = 3
    head_bias_std: float = 1.0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 6 or min(self.channels) < 1:
            raise ValueError(f"encoder.channels must be six positive ints, got {self.channels}")
        if self.pooling not in POOLING:
            raise ValueError(f"encoder.pooling must be one of {POOLING}, got {self.pooling!r}")


@dataclass
class AttnLossConfig:
    """Attention loss (Eq. 8) weight λ and normalisation (see ``losses.attention_loss``)."""

    weight: float = 1.0
    normalisation: str = "mean"

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"attn_loss.weight must be >= 0, got {self.weight}")
        if self.normalisation not in ATTN_LOSS_NORMALISATIONS:
            raise ValueError(
                f"attn_loss.normalisation must be one of {ATTN_LOSS_NORMALISATIONS}, got {self.normalisation!r}"
            )


@dataclass
class KernelConfig:
    """How TrackGo's extra work runs — speed only, every choice computes the same function.

    A run-time choice (``TrackGoUNet.set_kernels``, the training config's ``model.kernels``),
    never saved with a checkpoint. attention: one of ``ATTENTION_KERNELS``; fused_projections:
    one GEMM for [W_q | W_k | W_v] on X and one for [W′_q | W′_k] on f; encoder_channels_last:
    the trajectory encoder's convolutions channels-last, in the compute dtype. The defaults
    (explicit attention, the rest off) stand until a GPU run of benchmarks/gpu_suite.py shows
    another choice wins (docs/measurements.md).
    """

    attention: str = "explicit"
    fused_projections: bool = False
    encoder_channels_last: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(f"kernels.attention must be one of {ATTENTION_KERNELS}, got {self.attention!r}")


def alpha_at(alpha: float, alpha_frames: int | None, frames: int) -> float:
    """α at ``frames`` frames: ``alpha`` itself, or α·F_ref/F (≤ 1) when ``alpha_frames`` = F_ref."""
    return alpha if alpha_frames is None else min(1.0, alpha * alpha_frames / frames)


@dataclass
class TrackGoConfig:
    """Everything that turns a SVD UNet into TrackGo.

    alpha: threshold on A′ that masks the original branch (paper: 0.2).
    alpha_frames: None — α is used as given at every clip length F (the paper's rule as written);
        an int F_ref — α is the threshold at F_ref frames and scales as α·F_ref/F (capped at 1),
        so the mask picks entries the same multiple of a uniform row (1/F) at every length. The
        paper trains at 25 frames, where 0.2 is 5× uniform; ``alpha_frames: 25`` keeps that
        selectivity for shorter clips (at 8 frames: 0.625).
    mode: ``gated`` (default; O = A·V + g·(A′ − 1/F)·V with a per-head gate g, initialised to
        ``gate_init`` = 1: a fresh model is exactly SVD whatever g is, since a fresh encoder makes
        A′ uniform), ``paper`` (O = (A + A′)·V), or ``injection`` (not TrackGo: the peers'
        features added to the UNet, :mod:`trackgo_model.injection`; the attention stays stock).
    tau: value of the attention mask where A′ < α (None → 0, the paper's training setting).
    motion: unspecified-region motion strength m ≥ 0 (1 = unchanged; see adapter.track_attention).
    mask_value: the "−∞" of Eq. 3 (−10⁴, safe in fp16/bf16).
    trainable: parameter groups trained by default (figure of the paper).
    """

    alpha: float = 0.2
    alpha_frames: int | None = None
    mode: str = "gated"
    tau: float | None = None
    motion: float = 1.0
    mask_value: float = -1.0e4
    gate_init: float = 1.0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    attn_loss: AttnLossConfig = field(default_factory=AttnLossConfig)
    trainable: tuple[str, ...] = TRAINABLE_GROUPS

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = config_from_dict(EncoderConfig, self.encoder, path="encoder")
        if isinstance(self.attn_loss, dict):
            self.attn_loss = config_from_dict(AttnLossConfig, self.attn_loss, path="attn_loss")
        self.trainable = tuple(self.trainable)
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.alpha_frames is not None and self.alpha_frames < 2:
            raise ValueError(f"alpha_frames must be None or >= 2, got {self.alpha_frames}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.motion < 0:
            raise ValueError(f"motion must be >= 0, got {self.motion}")
        unknown = sorted(set(self.trainable) - set(PARAMETER_GROUPS))
        if unknown:
            raise ValueError(f"unknown trainable group(s) {unknown}; known: {PARAMETER_GROUPS}")

    def alpha_at(self, frames: int) -> float:
        """The threshold α at a clip of ``frames`` frames (see ``alpha_frames``)."""
        return alpha_at(self.alpha, self.alpha_frames, frames)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "TrackGoConfig":
        return config_from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)
