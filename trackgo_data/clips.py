"""Cut a source video into fixed-length windows (clips) at the training resolution."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from trackgo_data.video import TOO_SHORT, TOO_SMALL, VideoError, VideoInfo, probe, read_windows


@dataclass
class ClipConfig:
    """Window length/stride and the output size.

    ``stride=None`` means non-overlapping windows (stride = num_frames). Sources smaller than
    ``min_source_width × min_source_height`` are rejected as ``too_small`` (the output is an
    up-scale of them otherwise); ``max_clips_per_video`` caps the windows per source (0: no cap).
    """

    num_frames: int = 25
    stride: int | None = None
    width: int = 1024
    height: int = 576
    min_source_width: int = 128
    min_source_height: int = 96
    max_clips_per_video: int = 0

    def __post_init__(self) -> None:
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.width % 8 or self.height % 8 or self.width <= 0 or self.height <= 0:
            raise ValueError(f"width/height must be positive multiples of 8, got {self.width}×{self.height}")
        if self.max_clips_per_video < 0:
            raise ValueError("max_clips_per_video must be >= 0")

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


def plan_windows(num_source_frames: int, cfg: ClipConfig) -> list[int]:
    """Start frames of the windows: 0, stride, 2·stride, … while a full window fits.

    ``[]`` when the source is shorter than one window. Capped by ``max_clips_per_video``.
    """
    stride = cfg.stride or cfg.num_frames
    starts = list(range(0, max(0, num_source_frames - cfg.num_frames) + 1, stride)) \
        if num_source_frames >= cfg.num_frames else []
    if cfg.max_clips_per_video:
        starts = starts[: cfg.max_clips_per_video]
    return starts


def check_source(info: VideoInfo, cfg: ClipConfig) -> None:
    """Raise VideoError(too_small | too_short) when a probed source cannot give a clip."""
    if info.width < cfg.min_source_width or info.height < cfg.min_source_height:
        raise VideoError(TOO_SMALL, f"{info.width}×{info.height} is below "
                                    f"{cfg.min_source_width}×{cfg.min_source_height}")
    if info.num_frames < cfg.num_frames:
        raise VideoError(TOO_SHORT, f"{info.num_frames} frames < {cfg.num_frames}")


def iter_clips(path: str | Path, cfg: ClipConfig, info: VideoInfo | None = None
               ) -> Iterator[tuple[int, np.ndarray]]:
    """Probe, check, then decode the file once → ``(start, frames (L,H,W,3) uint8)`` per window.

    Raises VideoError(empty_file | undecodable | too_small | too_short). If the file turns out
    shorter than its header said (truncated) and not even one window decodes: ``too_short``.
    """
    info = info or probe(path)
    check_source(info, cfg)
    starts = plan_windows(info.num_frames, cfg)
    got = 0
    for start, frames in read_windows(path, starts, cfg.num_frames, size=cfg.size):
        got += 1
        yield start, frames
    if got == 0:
        raise VideoError(TOO_SHORT, f"{path}: fewer than {cfg.num_frames} frames decode")
