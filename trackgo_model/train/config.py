"""Typed training configuration (``trackgo train --config NAME_OR_FILE key=value …``).

A config is a YAML file whose keys mirror :class:`TrainConfig`; unknown keys are rejected with
the full dotted name. ``--config NAME`` resolves to ``trackgo_model/configs/NAME.yaml`` (shipped
with the package: ``svd-xt-paper``, ``svd-xt-gated``, ``tiny-cpu``, …); anything else is read as
a file path.

**Inheritance.** A config that is a variation of another says so with ``base: NAME`` (a packaged
name, or a path relative to the file) and lists only its differences:

    base: svd-xt-paper          # svd-xt-gated.yaml
    mixed_precision: bf16
    model:
      trackgo: {mode: gated}

The base is resolved the same way (a chain of bases is fine), then the file's own keys override
it: mappings merge key by key at every depth, any other value — lists included — replaces the
base's whole. ``name`` is never inherited (default: the file's stem). The ``key=value`` overrides
apply last. A missing base, or a chain that comes back to a file already in it, is one
:class:`~trackgo_data.config.ConfigError`; unknown keys are still rejected, after merging.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackgo_data.config import ConfigError, apply_overrides, config_from_dict, load_yaml
from trackgo_model.configs import KernelConfig

from .memory import CHECKPOINTING, LR_GROUPS, OPTIMIZERS

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SVD_PATH_ENV = "TRACKGO_SVD_PATH"
WAN_PATH_ENV = "TRACKGO_WAN_PATH"
BASES = ("svd", "wan")

MIXED_PRECISION = ("no", "fp16", "bf16")
DISTRIBUTED = ("ddp", "fsdp", "deepspeed_zero2")
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")
PROGRESS = ("tqdm", "rich", "none")


@dataclass
class ModelConfig:
    # The base model family: "svd" (Stable Video Diffusion's UNet) or "wan" (Wan's image-to-video DiT,
    # trackgo_model.wan; flow-matching objective).
    base: str = "svd"
    # Folder in diffusers layout (unet/, vae/, image_encoder/, feature_extractor/) of SVD(-xt).
    # Falls back to the TRACKGO_SVD_PATH environment variable. Ignored when ``tiny`` is true.
    svd_path: str | None = None
    # base=wan: a diffusers Wan image-to-video folder (transformer/, vae/, text_encoder/, tokenizer/,
    # scheduler/, Wan2.1: image_encoder/, image_processor/); falls back to $TRACKGO_WAN_PATH.
    wan_path: str | None = None
    # base=wan: the fixed prompt whose text tokens condition every sample (the data has no captions).
    prompt: str = ""
    # base=wan: Wan-Move's latent trajectory guidance instead of TrackGo (trackgo_model.wan.wan_move):
    # the first frame's latent features copied along each sample's tracks into the condition; the
    # comparison method, trained with trajectories=false (no adapters act).
    wan_move: bool = False
    # a two-expert Wan2.2 folder: the expert this run trains, "high" (transformer/, σ ≥ boundary_ratio)
    # or "low" (transformer_2/, σ below); sampled together by trackgo generate --checkpoint-2 (docs/wan.md)
    expert: str | None = None
    # Use the tiny random-initialised model of the base's layout (created under <run_dir>/tiny-model if absent).
    tiny: bool = False
    tiny_seed: int = 0
    tiny_dir: str = ""  # where the tiny model lives / is created (default <run_dir>/tiny-model)
    # Overrides for trackgo_model.configs.TrackGoConfig (encoder/adapter settings), by field name.
    trackgo: dict = field(default_factory=dict)
    # Ablation "no attention mask": the adapter's AM term is switched off (A′ still added).
    attention_mask: bool = True
    # Which parameter groups train; the rest of the UNet stays frozen.
    # Groups: "encoder", "adapter" (W′_q, W′_k, gates), "temporal_qkv" (temporal attn1 W_q/W_k/W_v),
    # "unet" (the whole UNet: a base model trained from scratch, with trajectories=false).
    trainable: tuple[str, ...] = ("encoder", "adapter", "temporal_qkv")
    # False: the trajectory video P is not given to the model (a plain image-to-video objective,
    # the adapters act as the stock attention): how the toy reproduction trains its base model.
    trajectories: bool = True
    gradient_checkpointing: bool = False
    # What gradient checkpointing re-runs in backward (trackgo_model.train.memory): "diffusers"
    # (resnets + spatial transformer blocks), "temporal" (+ the temporal transformer blocks),
    # "transformer" (+ each spatio-temporal transformer as one unit); base=wan: "blocks" (every DiT
    # block, TrackGoWan.enable_gradient_checkpointing). Needs gradient_checkpointing.
    checkpointing: str = "diffusers"
    # Speed switches of the adapters and the encoder (trackgo_model.configs.KernelConfig: attention,
    # fused_projections, encoder_channels_last); the same function whatever they are.
    kernels: KernelConfig = field(default_factory=KernelConfig)

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ValueError(f"model.base must be one of {BASES}, got {self.base!r}")
        if not self.trainable:
            raise ValueError("model.trainable must name at least one parameter group")
        scopes = CHECKPOINTING if self.base == "svd" else ("blocks",)
        if self.gradient_checkpointing and self.checkpointing not in scopes:
            raise ValueError(f"model.checkpointing must be one of {scopes} for base={self.base}, "
                             f"got {self.checkpointing!r}")
        if self.checkpointing not in CHECKPOINTING + ("blocks",):
            raise ValueError(f"model.checkpointing must be one of {CHECKPOINTING + ('blocks',)}, "
                             f"got {self.checkpointing!r}")
        if self.base == "wan" and self.kernels != KernelConfig(attention=self.kernels.attention):
            raise ValueError("model.kernels: base=wan takes only kernels.attention (explicit or flex)")
        if self.base == "wan" and self.kernels.attention not in ("explicit", "flex"):
            raise ValueError(f"model.kernels.attention for base=wan must be explicit or flex, "
                             f"got {self.kernels.attention!r}")
        if self.base == "svd" and self.kernels.attention == "flex":
            raise ValueError("model.kernels.attention=flex is the Wan kernel (base=wan)")
        if self.checkpointing not in ("diffusers", "blocks") and not self.gradient_checkpointing:
            raise ValueError(f"model.checkpointing={self.checkpointing} needs model.gradient_checkpointing=true")
        if self.wan_move and (self.base != "wan" or self.trajectories):
            raise ValueError("model.wan_move=true is Wan-Move's condition on the Wan base: set model.base=wan and "
                             "model.trajectories=false (TrackGo's adapters do not act in it)")
        if self.expert is not None and (self.base != "wan" or self.expert not in ("high", "low")):
            raise ValueError(f"model.expert is 'high' or 'low' (a Wan2.2 expert, base=wan), got {self.expert!r}")
        if "unet" in self.trainable and self.trajectories:
            raise ValueError("model.trainable=[unet] trains a plain image-to-video base model: set "
                             "model.trajectories=false (the adapters would run for nothing and stay untrained)")


@dataclass
class DataConfig:
    # A folder of *.tar shards, a glob, or a brace-expanded webdataset URL.
    shards: str = "data/sample/shards"
    width: int = 1024
    height: int = 576
    num_frames: int = 25
    batch_size: int = 1  # per device and micro-step
    num_workers: int = 0
    shuffle_buffer: int = 64
    resampled: bool = True
    # Used when a sample's metadata has no fps; SVD's micro-conditioning uses fps − 1.
    fps: float = 7.0
    motion_bucket_id: float = 127.0
    # The last N shards (sorted by name) are held out for validation when there are more than N.
    val_holdout_shards: int = 1
    # Folder caching the VAE latents of the training shards (trackgo_model.train.latent_cache); "" = off.
    latent_cache: str = ""

    def __post_init__(self) -> None:
        if self.width % 8 or self.height % 8:
            raise ValueError(f"data.width/height must be multiples of 8, got {self.width}x{self.height}")
        if self.num_frames < 2 or self.batch_size < 1:
            raise ValueError("data.num_frames must be >= 2 and data.batch_size >= 1")


@dataclass
class ObjectiveConfig:
    # ln σ ~ N(p_mean, p_std²) for the training noise level.
    p_mean: float = 0.7
    p_std: float = 1.6
    # ln σ_cond ~ N(cond_log_mean, cond_log_std²): pixel noise on the first frame = noise_aug_strength.
    cond_log_mean: float = -3.0
    cond_log_std: float = 0.5
    # Conditioning dropout for classifier-free guidance (independent draws per sample).
    drop_clip_prob: float = 0.1
    drop_image_prob: float = 0.1
    # base=wan: the flow-matching noise levels σ = s·u/(1 + (s − 1)·u), u ~ U(0, 1), shift s
    # (p_mean/p_std and cond_log_* are SVD's EDM settings and are not read).
    flow_shift: float = 3.0
    # λ in L = L_mse + λ·L_attn (Eq. 9); not given by the paper. With the default "mean"
    # normalisation of losses.attention_loss, λ = 1 puts λ·L_attn at the order of L_mse at the
    # start. 0 disables the attention loss (ablation "no attention loss").
    attn_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("drop_clip_prob", "drop_image_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"objective.{name} must be in [0, 1], got {v}")
        if self.attn_loss_weight < 0:
            raise ValueError("objective.attn_loss_weight must be >= 0")
        if self.flow_shift <= 0:
            raise ValueError("objective.flow_shift must be > 0")


@dataclass
class OptimConfig:
    lr: float = 3e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    scheduler: str = "constant_with_warmup"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    # "adamw" (torch) or "adamw8bit" (bitsandbytes: 8-bit moments; trackgo_model.train.memory)
    optimizer: str = "adamw"
    # Learning rate per parameter group (trackgo_model.train.memory.LR_GROUPS: encoder, adapter
    # (W′_q, W′_k), gate, temporal_qkv, unet); a group not named here uses ``lr``.
    group_lr: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.group_lr) - set(LR_GROUPS))
        if unknown:
            raise ValueError(f"optim.group_lr: unknown group(s) {unknown}; known: {list(LR_GROUPS)}")
        if any(float(v) <= 0 for v in self.group_lr.values()):
            raise ValueError("optim.group_lr: learning rates must be > 0")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"optim.scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optim.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")


@dataclass
class EMAConfig:
    enabled: bool = True
    decay: float = 0.9999
    # Export EMA weights into checkpoint-XXXX/trackgo/ (else the raw weights).
    export_ema: bool = True


@dataclass
class ValidationConfig:
    every: int = 0  # steps; 0 = off
    num_samples: int = 2
    num_inference_steps: int = 25
    seed: int = 1234
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0


@dataclass
class TrainConfig:
    name: str = "custom"
    run_dir: str = ""  # default runs/<name>
    seed: int = 0
    max_steps: int = 18000
    global_batch_size: int = 8  # = data.batch_size × processes × gradient accumulation
    mixed_precision: str = "bf16"
    distributed: str = "ddp"
    fsdp_version: int = 1  # with distributed=fsdp: 1 (FullyShardedDataParallel) or 2 (fully_shard)
    # with distributed=fsdp: false keeps each unit's gathered parameters from forward to backward
    # (ZeRO-2-like); true shards them again after forward and gathers them once more in backward
    # (ZeRO-3-like: with per-block units only one block's full weights are held at a time)
    fsdp_reshard_after_forward: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # 0 keeps all
    log_every: int = 10
    # Stop after this many non-finite steps in a row (non-finite loss; without the fp16 loss scaler
    # also a non-finite gradient norm — with it, gradient overflows only lower the loss scale).
    max_nonfinite_steps: int = 5
    progress: str = "tqdm"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # YAML reads an unquoted `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed must be one of {DISTRIBUTED}, got {self.distributed!r}")
        if self.fsdp_version not in (1, 2):
            raise ValueError(f"fsdp_version must be 1 or 2, got {self.fsdp_version!r}")
        if self.progress not in PROGRESS:
            raise ValueError(f"progress must be one of {PROGRESS}, got {self.progress!r}")
        if self.max_steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("max_steps, checkpoint_every and log_every must be >= 1")
        data = self.data
        if self.model.base == "wan" and ((data.num_frames - 1) % 4 or data.width % 16 or data.height % 16):
            raise ValueError(f"base=wan takes clips of 4k + 1 frames with sides that are multiples of 16 (VAE /8, "
                             f"2×2 patches); got {data.num_frames} frames of {data.width}x{data.height}")
        if self.model.expert is not None and self.validation.every:
            raise ValueError("validation sampling needs both Wan2.2 experts, a model.expert run holds one: set "
                             "validation.every=0 and sample with trackgo generate --checkpoint … --checkpoint-2 …")

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    def gradient_accumulation(self, num_processes: int) -> int:
        """Micro-steps per optimizer step so that global_batch_size is met exactly."""
        per_step = self.data.batch_size * num_processes
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"global_batch_size {self.global_batch_size} is not a multiple of "
                f"data.batch_size {self.data.batch_size} × {num_processes} process(es)"
            )
        return self.global_batch_size // per_step

    def weights_folder(self, run_dir: Path, tiny_name: str, marker: str, init_tiny) -> Path:
        """The base's weights: with ``model.tiny`` the tiny random folder (``model.tiny_dir``, else
        ``run_dir/tiny_name``; written by ``init_tiny(folder, seed=model.tiny_seed)`` when its
        ``marker`` sub-folder is missing), else :meth:`resolved_weights_path`."""
        if not self.model.tiny:
            return self.resolved_weights_path()
        folder = Path(self.model.tiny_dir) if self.model.tiny_dir else Path(run_dir) / tiny_name
        if not (folder / marker).is_dir():
            log.info("creating the tiny random model in %s", folder)
            init_tiny(folder, seed=self.model.tiny_seed)
        return folder

    def resolved_weights_path(self) -> Path:
        """The base's weights folder (:meth:`resolved_svd_path` or :meth:`resolved_wan_path`)."""
        return self.resolved_wan_path() if self.model.base == "wan" else self.resolved_svd_path()

    def resolved_wan_path(self) -> Path:
        """The Wan folder of ``model.wan_path`` or $TRACKGO_WAN_PATH; one clear error when neither is set."""
        raw = self.model.wan_path or os.environ.get(WAN_PATH_ENV)
        if not raw:
            raise ConfigError(f"config {self.name!r} needs Wan weights: set model.wan_path=/path/to/Wan2.1-I2V-14B-"
                              f"480P-Diffusers (a diffusers folder with transformer/, vae/, text_encoder/, tokenizer/, "
                              f"image_encoder/, image_processor/, scheduler/) or export {WAN_PATH_ENV}. Nothing is "
                              f"downloaded. Without weights: make train CONFIG=tiny-wan-cpu")
        return Path(raw).expanduser()

    def resolved_svd_path(self) -> Path:
        """The SVD folder from config or $TRACKGO_SVD_PATH; one clear error when neither is set."""
        raw = self.model.svd_path or os.environ.get(SVD_PATH_ENV)
        if not raw:
            raise ConfigError(f"config {self.name!r} needs the Stable Video Diffusion weights: set model.svd_path=/path/"
                              f"to/stable-video-diffusion-img2vid-xt (a diffusers folder with unet/, vae/, image_encoder/, "
                              f"feature_extractor/) or export {SVD_PATH_ENV}=/that/path. Nothing is downloaded. "
                              f"To train the tiny random model without weights run: make train CONFIG=tiny-cpu")
        path = Path(raw).expanduser()
        missing = [d for d in ("unet", "vae", "image_encoder", "feature_extractor") if not (path / d).is_dir()]
        if missing:
            raise ConfigError(f"SVD folder {path} is missing {', '.join(missing)}/ — point model.svd_path (or "
                              f"{SVD_PATH_ENV}) at a diffusers-layout stable-video-diffusion-img2vid-xt folder")
        return path


def trackgo_config_for(cfg) -> Any:
    """TrackGoConfig from ``model.trackgo`` overrides plus the training switches (λ, groups, mask)."""
    from trackgo_model.configs import TrackGoConfig

    data = dict(cfg.model.trackgo)
    data["trainable"] = list(cfg.model.trainable)
    data.setdefault("attn_loss", {})
    data["attn_loss"] = {**data["attn_loss"], "weight": float(cfg.objective.attn_loss_weight)}
    if not cfg.model.attention_mask:  # ablation: AM ≡ 0, the original branch is never masked
        data["mask_value"] = 0.0
        data["tau"] = None
    return TrackGoConfig.from_dict(data)


BASE_KEY = "base"


def resolve_config_path(name_or_file: str, relative_to: Path | None = None) -> Path:
    """``tiny-cpu`` → the packaged YAML; an existing path (tried in the folder ``relative_to``
    first, when given) → itself."""
    packaged = CONFIG_DIR / f"{name_or_file}.yaml"
    if packaged.is_file():
        return packaged
    candidates = [Path(name_or_file)]
    if relative_to is not None:
        candidates.insert(0, relative_to / name_or_file)
    for path in candidates:
        if path.is_file():
            return path
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"no training config {name_or_file!r}: use one of {names} or a YAML file path")


def merge_config(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``own`` over ``base``: mappings merged key by key at every depth, other values replaced."""
    out = dict(base)
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def read_config(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML at ``path`` with its ``base`` chain resolved (module docstring); ``name`` is the
    file's own (or its stem). ``seen``: the files that led here (a base among them is a cycle)."""
    chain = seen + (path.resolve(),)
    if path.resolve() in seen:
        raise ConfigError("config bases form a cycle: " + " → ".join(p.name for p in chain))
    own = load_yaml(path)
    base_name = own.pop(BASE_KEY, None)
    data: dict[str, Any] = {}
    if base_name is not None:
        if not isinstance(base_name, str) or not base_name:
            raise ConfigError(f"{path}: base must be a config name or path, got {base_name!r}")
        try:
            base_path = resolve_config_path(base_name, relative_to=path.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: base {base_name!r} not found ({exc})") from None
        data = read_config(base_path, chain)
    data = merge_config(data, own)
    data["name"] = own.get("name", path.stem)
    return data


def load_train_config(name_or_file: str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a config by name or path (its bases resolved), apply ``dotted.key=value`` overrides,
    validate."""
    data = read_config(resolve_config_path(name_or_file))
    apply_overrides(data, list(overrides or []))
    return config_from_dict(TrainConfig, data)
