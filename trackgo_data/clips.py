"""Cut a source video into fixed-length windows (clips) at the training resolution."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from trackgo_data.video import LOW_FRAME_RATE, TOO_SHORT, TOO_SMALL, VideoError, VideoInfo, probe, read_windows


@dataclass
class ClipConfig:
    """Window length/stride, frame rate and the output size.

    ``fps``: the clips' frame rate. The source is resampled to it first (output frame k is the
    source frame on screen at time k/fps, never a blend), then cut into windows; None keeps the
    source's rate. A source slower than ``fps`` (its frames would repeat) is rejected as
    ``low_frame_rate``. Lengths and strides count frames at the clips' rate.
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
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0 (or None: the source's rate), got {self.fps}")
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


#: relative slack when comparing frame rates (29.97 is "30 fps")
FPS_TOLERANCE = 1e-2


def resample_indices(num_source_frames: int, source_fps: float, fps: float | None) -> list[int]:
    """Source frame index of every frame at ``fps``: floor(k·source_fps/fps) while inside the source
    (the frame on screen at time k/fps); every index when ``fps`` is None or the source's rate."""
    if fps is None or not source_fps or abs(source_fps - fps) <= FPS_TOLERANCE * fps:
        return list(range(num_source_frames))
    step = source_fps / fps  # source frames per output frame; output frame k starts at source time k·step
    count = math.ceil(num_source_frames / step - 1e-9) if num_source_frames > 0 else 0
    return [int(k * step + 1e-9) for k in range(count)]


def check_source(info: VideoInfo, cfg: ClipConfig) -> list[int]:
    """Raise VideoError(too_small | low_frame_rate | too_short) when a probed source cannot give a
    clip; else return its frames at the clips' rate (:func:`resample_indices`)."""
    if info.width < cfg.min_source_width or info.height < cfg.min_source_height:
        raise VideoError(TOO_SMALL, f"{info.width}×{info.height} is below "
                                    f"{cfg.min_source_width}×{cfg.min_source_height}")
    if cfg.fps is not None and info.fps and info.fps < cfg.fps * (1 - FPS_TOLERANCE):
        raise VideoError(LOW_FRAME_RATE, f"{info.fps:g} fps < the clips' {cfg.fps:g} fps")
    indices = resample_indices(info.num_frames, info.fps, cfg.fps)
    if len(indices) < cfg.num_frames:
        rate = "" if len(indices) == info.num_frames else f" at {cfg.fps:g} fps"
        raise VideoError(TOO_SHORT, f"{len(indices)} frames{rate} < {cfg.num_frames}")
    return indices


def iter_clips(path: str | Path, cfg: ClipConfig, info: VideoInfo | None = None
               ) -> Iterator[tuple[int, np.ndarray]]:
    """Probe, check, then decode the file once → ``(start, frames (L,H,W,3) uint8)`` per window;
    ``start`` is the source frame the clip begins at.

    Raises VideoError(empty_file | undecodable | too_small | low_frame_rate | too_short). If the
    file turns out shorter than its header said (truncated) and not even one window decodes:
    ``too_short``.
    """
    info = info or probe(path)
    indices = check_source(info, cfg)
    starts = plan_windows(len(indices), cfg)
    L = cfg.num_frames
    # each window spans the same number of source frames, give or take one: decode the longest
    span = max((indices[s + L - 1] - indices[s] + 1 for s in starts), default=L)
    first = {indices[s]: s for s in starts if indices[s] + span <= info.num_frames}
    got = 0
    for source_start, frames in read_windows(path, sorted(first), span, size=cfg.size):
        s = first[source_start]
        got += 1
        yield source_start, frames[[i - source_start for i in indices[s:s + L]]]
    if got == 0:
        raise VideoError(TOO_SHORT, f"{path}: fewer than {cfg.num_frames} frames decode")
