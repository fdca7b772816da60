"""The VIPSeg evaluation's typed config and the rule that keeps one output folder's settings fixed."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from trackgo_data.config import atomic_write_json, config_to_dict

OBJMC_PROTOCOLS = ("ours", "draganything")
GENERATION_FIELDS = ("split", "masks", "num_frames", "width", "height", "max_components", "include_stuff",
                     "min_area", "tracker", "tracker_options", "seed", "num_inference_steps", "fps",
                     "motion_bucket_id", "noise_aug_strength", "min_guidance_scale", "max_guidance_scale",
                     "trajectory_guidance")


@dataclass
class EvalConfig:
    vipseg: str = ""                 # VIPSeg_720P folder
    checkpoint: str = ""             # TrackGo checkpoint folder
    svd: str | None = None           # SVD diffusers folder; None: the checkpoint folder holds it
    out: str = "runs/eval-vipseg"
    split: str = "val"
    masks: str = "raw"               # raw panomasks/ or rgb panomasksRGB/ (no thing/stuff split)
    max_videos: int | None = None
    num_frames: int = 14
    width: int = 1024
    height: int = 576
    max_components: int = 6
    include_stuff: bool = False      # stuff is used anyway when a video has no thing in frame 0
    min_area: float = 0.001          # smallest component, share of the frame
    tracker: str = "auto"            # auto (Co-Tracker 3 offline, else LK + warning) | lk | cotracker3_offline | …
    tracker_options: dict = field(default_factory=dict)  # that backend's options (Co-Tracker: repo, device, …)
    objmc_protocol: str = "ours"     # ours | draganything (the peer's script, as in Table 1)
    objmc_tracker: str = "cotracker2"                     # draganything: the peer's tracker
    objmc_tracker_options: dict = field(default_factory=dict)  # its backend options (repo, device, …)
    objmc_grid_size: int = 100       # draganything: query grid side on frame 0
    objmc_channel_order: str = "bgr"  # draganything: what the tracker sees (the peer hands over BGR)
    seed: int = 0
    num_inference_steps: int = 25
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    trajectory_guidance: float = 1.0  # TrackGoPipeline's g (1: off, the paper's sampler)
    decode_chunk_size: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    fid_weights: str | None = None   # else $TRACKGO_FID_WEIGHTS
    i3d_path: str | None = None      # else $TRACKGO_I3D_PATH
    metrics_batch_size: int = 16
    num_side_by_side: int = 4
    save_fps: int = 7

    def __post_init__(self):
        if self.num_frames < 2 or self.width < 16 or self.height < 16:
            raise ValueError("num_frames must be ≥ 2 and width/height ≥ 16")
        if not 1 <= self.max_components <= 6:
            raise ValueError("max_components must be in 1..6 (one colour per component)")
        if self.objmc_protocol not in OBJMC_PROTOCOLS:
            raise ValueError(f"objmc_protocol must be one of {', '.join(OBJMC_PROTOCOLS)}, got {self.objmc_protocol!r}")
        if self.trajectory_guidance < 1.0:
            raise ValueError("trajectory_guidance must be ≥ 1 (1: off)")
        if self.objmc_grid_size < 1:
            raise ValueError("objmc_grid_size must be ≥ 1")
        if self.objmc_channel_order not in ("bgr", "rgb"):
            raise ValueError(f"objmc_channel_order must be bgr or rgb, got {self.objmc_channel_order!r}")


def resolve_device(cfg: EvalConfig) -> str:
    """``cfg.device``, with ``auto`` = CUDA when present, else CPU."""
    if cfg.device != "auto":
        return cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_config_file(cfg: EvalConfig, out: Path, write: bool = True) -> None:
    """Reruns (and scoring) in the same folder must use the same generation settings."""
    path = out / "eval_config.json"
    if path.is_file():
        new = config_to_dict(cfg)
        old = {**config_to_dict(EvalConfig()), **json.loads(path.read_text())}  # a newer field: its default
        diff = [k for k in GENERATION_FIELDS if old.get(k) != new.get(k)]
        if diff:
            was = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff)
            raise ValueError(f"{out} holds results made with different {', '.join(diff)} ({was}); "
                             "use the same settings, another --out, or delete it")
    if write:
        atomic_write_json(path, config_to_dict(cfg))
