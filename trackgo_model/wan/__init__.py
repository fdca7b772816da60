"""TrackGo on Wan's image-to-video DiT (docs/wan.md)."""
from .attention import track_attention_3d
from .model import (WAN_PRESETS, TrackGoWan, build_transformer, count_params, latent_frame_masks, load_transformer,
                    pool_frames)

__all__ = ["WAN_PRESETS", "TrackGoWan", "build_transformer", "count_params", "latent_frame_masks", "load_transformer",
           "pool_frames", "track_attention_3d"]
