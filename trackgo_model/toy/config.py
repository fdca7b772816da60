"""Typed configuration of the toy reproduction (``trackgo toy …``, ``make toy``).

``configs/toy.yaml`` names everything a run does: the synthetic worlds (training and held-out
seeds), the dataset build's config values, the training configs of the three stages
(``toy-vae``, ``toy-base``, ``toy-trackgo``) with extra overrides, the TrackGo variants compared
(the paper's formula and Table 2's ablations, as overrides of ``toy-trackgo``), how many
trainings run side by side, and the evaluation settings. ``key=value`` overrides are dotted paths.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackgo_data.config import apply_overrides, config_from_dict, load_yaml
from trackgo_data.synthetic import SyntheticConfig

#: scheduler settings a toy config may change: SVD's EulerDiscreteScheduler's, Wan's flow shift
SCHEDULER_KEYS = {"svd": ("sigma_min", "sigma_max", "use_karras_sigmas", "timestep_spacing", "steps_offset"),
                  "wan": ("flow_shift",)}
#: rows of results.json besides the base model; each is a variant of the TrackGo stage. SVD: the
#: paper's recipe, the two ablations of its Table 2 and the gated formula; Wan: TrackGo beside
#: Wan-Move's latent trajectory guidance (docs/wan.md)
REQUIRED_VARIANTS = {"svd": ("trackgo", "no_attn_loss", "no_mask_no_loss", "gated"), "wan": ("trackgo", "wan_move")}


@dataclass
class ToyEvalConfig:
    """Held-out evaluation: sampling settings and how much of it to run."""

    num_clips: int = 0                 # held-out clips scored, in key order (0: every accepted clip)
    num_inference_steps: int = 12
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 2.0
    noise_aug_strength: float = 0.02
    trajectory_guidance: float = 1.0   # g of the SVD pipeline's trajectory guidance (1: off); TrackGo rows only
    seed: int = 0                      # clip i is sampled with seed + i, the same for every row
    curve_clips: int = 12              # clips scored at every intermediate checkpoint (ObjMC vs steps)
    side_by_side_clips: int = 4
    side_by_side_scale: int = 3        # up-scaling of the side-by-side panels (nearest)
    bootstrap_replicates: int = 2000   # resamples of the clips for the 95 % intervals
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        if self.num_clips < 0 or self.num_inference_steps < 1 or self.bootstrap_replicates < 100:
            raise ValueError("eval.num_clips must be >= 0, eval.num_inference_steps >= 1, "
                             "eval.bootstrap_replicates >= 100")
        if self.trajectory_guidance < 1.0:
            raise ValueError("eval.trajectory_guidance must be >= 1 (1: off)")
        if self.curve_clips < 0 or self.side_by_side_clips < 0 or self.side_by_side_scale < 1:
            raise ValueError("eval.curve_clips/side_by_side_clips must be >= 0, side_by_side_scale >= 1")


@dataclass
class ToyConfig:
    out: str = "runs/toy"
    train_videos: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(num_videos=480, seed=0))
    heldout_videos: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(num_videos=48, seed=1000))
    # trackgo_data.build.make_config(profile, build) — clip size, segmenter/tracker options, filters
    profile: str = "local"
    build: dict = field(default_factory=dict)
    build_processes: int = 2           # dataset batches processed side by side
    # the base family: "svd" (an SVD-layout UNet) or "wan" (a Wan-layout DiT, make toy BASE=wan)
    base: str = "svd"
    # the from-scratch model: a diffusers UNetSpatioTemporalConditionModel config and a small CLIP
    # vision config (frozen random features: no pretrained CLIP exists here, so this must be true);
    # base=wan: a WanTransformer3DModel config (Wan2.2's layout: no image encoder) instead
    unet: dict = field(default_factory=dict)
    transformer: dict = field(default_factory=dict)
    image_encoder: dict = field(default_factory=dict)
    image_encoder_random_init: bool = False
    model_seed: int = 0
    # training configs (names in trackgo_model/configs or YAML paths) and extra dotted overrides
    vae_config: str = "toy-vae"
    vae_overrides: list = field(default_factory=list)
    base_config: str = "toy-base"
    base_overrides: list = field(default_factory=list)
    trackgo_config: str = "toy-trackgo"
    trackgo_overrides: list = field(default_factory=list)
    # EulerDiscreteScheduler settings of the toy model (over SVD's; e.g. sigma_max)
    scheduler: dict = field(default_factory=dict)
    # λ of the attention loss, measured at the base model before fine-tuning (stage "calibrate",
    # trackgo_model.train.calibrate): the gradient-norm ratio on the temporal W_q/W_k
    calibrate_batches: int = 8
    calibrate_ratio: float = 1.0
    # `trackgo toy compare`: other ways to take P, fine-tuned like the trackgo row (same recipe and
    # budget): row name → overrides of the TrackGo config (after the calibrated λ)
    compare: dict = field(default_factory=lambda: {
        "injection": ["model.trackgo.mode=injection", "model.attention_mask=false", "objective.attn_loss_weight=0"]})
    # `trackgo toy seeds`: every variant trained again with each of these training seeds (the
    # trackgo stage's run is seed 0); intervals over seeds and clips
    seeds: list = field(default_factory=lambda: [1, 2])
    # TrackGo variants: row name → overrides of the TrackGo config (after the calibrated λ)
    variants: dict = field(default_factory=lambda: {
        "trackgo": [], "no_attn_loss": ["objective.attn_loss_weight=0"],
        "no_mask_no_loss": ["model.attention_mask=false", "objective.attn_loss_weight=0"],
        "gated": ["model.trackgo.mode=gated"]})
    # trainings (and evaluation workers) run side by side, each with this many threads
    processes: int = 2
    # trainings run as child processes (`python -m trackgo_model.train`), else in this process
    # (then one at a time: processes must be 1)
    subprocesses: bool = True
    threads_per_process: int = 1
    # threads of the stages that run alone (VAE, base model, scoring)
    threads: int = 2
    eval: ToyEvalConfig = field(default_factory=ToyEvalConfig)

    def __post_init__(self) -> None:
        if self.train_videos.seed == self.heldout_videos.seed:
            raise ValueError("train_videos.seed and heldout_videos.seed must differ (held-out clips are unseen)")
        if self.base not in REQUIRED_VARIANTS:
            raise ValueError(f"base must be one of {sorted(REQUIRED_VARIANTS)}, got {self.base!r}")
        if self.base == "wan" and self.eval.trajectory_guidance != 1.0:
            raise ValueError("eval.trajectory_guidance is the SVD pipeline's; base=wan takes 1 (off)")
        if isinstance(self.variants, dict):
            required = REQUIRED_VARIANTS[self.base]
            missing = [v for v in required if v not in self.variants]
            if missing:
                raise ValueError(f"variants must include {list(required)}; missing {missing}")
            if "base" in self.variants:
                raise ValueError("'base' is the base model's row, not a TrackGo variant")
            for name, over in self.variants.items():
                if not isinstance(over, list) or not all(isinstance(o, str) and "=" in o for o in over):
                    raise ValueError(f"variants.{name} must be a list of dotted key=value strings")
        for name, over in {**self.compare}.items():
            if name in self.variants or name == "base" or not isinstance(over, list):
                raise ValueError(f"compare.{name}: a row name of its own (not a variant or 'base') with a "
                                 "list of dotted key=value overrides")
        if (not isinstance(self.seeds, list) or not all(isinstance(k, int) and k >= 1 for k in self.seeds)
                or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"seeds must be a list of distinct ints >= 1 (0 is the main run), got {self.seeds!r}")
        unknown = sorted(set(self.scheduler) - set(SCHEDULER_KEYS[self.base]))
        if unknown:
            raise ValueError(f"scheduler: unknown key(s) {unknown}; known: {sorted(SCHEDULER_KEYS[self.base])}")
        if self.calibrate_batches < 1 or self.calibrate_ratio <= 0:
            raise ValueError("calibrate_batches must be >= 1 and calibrate_ratio > 0")
        for name in ("vae_overrides", "base_overrides", "trackgo_overrides"):
            over = getattr(self, name)
            if not isinstance(over, list) or not all(isinstance(o, str) and "=" in o for o in over):
                raise ValueError(f"{name} must be a list of dotted key=value strings")
        if self.base == "svd" and (not self.unet or "cross_attention_dim" not in self.unet):
            raise ValueError("unet must be a diffusers UNetSpatioTemporalConditionModel config (with cross_attention_dim)")
        if self.base == "wan" and (self.transformer.get("in_channels") != 36 or self.transformer.get("image_dim")):
            raise ValueError("transformer must be a WanTransformer3DModel config of the image-to-video layout "
                             "without image tokens (in_channels 36, no image_dim)")
        if not self.subprocesses and self.processes != 1:
            raise ValueError("trainings run side by side only as child processes: set processes=1 or subprocesses=true")
        if min(self.processes, self.threads_per_process, self.threads, self.build_processes) < 1:
            raise ValueError("processes, threads_per_process, threads and build_processes must be >= 1")

    @property
    def out_path(self) -> Path:
        return Path(self.out)


def resolve(name_or_file: str) -> Path:
    """A config name in trackgo_model/configs (``toy``) or a YAML path."""
    from trackgo_model.train.config import resolve_config_path

    return resolve_config_path(name_or_file)


def load_toy_config(name_or_file: str = "toy", overrides: list[str] | None = None) -> ToyConfig:
    """Read the toy config by name or path, apply ``dotted.key=value`` overrides, validate."""
    data: dict[str, Any] = load_yaml(resolve(name_or_file))
    apply_overrides(data, list(overrides or []))
    return config_from_dict(ToyConfig, data)


def build_config(cfg: ToyConfig):
    """The dataset build's config (``trackgo_data.build.make_config``) of the toy's profile and values."""
    import json

    from trackgo_data.build import make_config

    return make_config(cfg.profile, json.loads(json.dumps(cfg.build)))
