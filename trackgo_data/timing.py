"""Seconds spent per stage of the builder, summed over clips: ``with clock("track"): …``."""
from __future__ import annotations

import time

#: the builder's stages, in the order a clip meets them (filter runs twice: frame checks before
#: segmentation, track checks after tracking; write is the shards' share of a batch)
STAGES = ("decode", "segment", "points", "track", "render", "filter", "encode", "write")


class StageClock:
    """Accumulates wall seconds per stage name in ``seconds`` (every stage of :data:`STAGES`
    starts at 0). ``clock(stage)`` names the stage the next ``with`` block is timed under."""

    def __init__(self, seconds: dict[str, float] | None = None):
        self.seconds = seconds if seconds is not None else {s: 0.0 for s in STAGES}
        self._stage = ""
        self._t0 = 0.0

    def __call__(self, stage: str) -> "StageClock":
        self._stage = stage
        return self

    @property
    def stage(self) -> str:
        """The stage entered last (the one running when an exception escaped)."""
        return self._stage

    def __enter__(self) -> "StageClock":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds[self._stage] = self.seconds.get(self._stage, 0.0) + time.perf_counter() - self._t0
