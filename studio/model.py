"""The model behind the studio: loaded once per process, described on the page and in every run.

With neither ``--checkpoint`` nor ``--svd`` the studio uses the tiny random-weight TrackGo that
``trackgo model init-tiny`` writes, created on first use in the cache folder, so the page works end
to end on a fresh machine. Its videos are noise; the banner says so and each run records it.
``base="wan"`` serves a TrackGo checkpoint on a Wan image-to-video folder (``--wan``); without
either, the tiny random Wan folder with fresh (untrained) adapters.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackgo_data.user_input import fit_size

log = logging.getLogger(__name__)

TINY_NAME = "tiny-model"
TINY_WAN_NAME = "tiny-wan"


def cache_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$TRACKGO_CACHE_DIR``, else ``$XDG_CACHE_HOME/trackgo`` (~/.cache/trackgo)."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get("TRACKGO_CACHE_DIR"):
        return Path(os.environ["TRACKGO_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "trackgo"


def tiny_model_dir(cache: Path) -> Path:
    """The tiny model in ``cache`` (written by ``init_tiny`` when absent or incomplete)."""
    from trackgo_model.pipeline import MissingWeightsError, check_svd_folder, find_trackgo_checkpoint
    from trackgo_model.tiny import init_tiny

    path = cache / TINY_NAME
    try:
        check_svd_folder(path)
        find_trackgo_checkpoint(path, None)
    except MissingWeightsError:
        log.warning("writing the tiny random-weight TrackGo to %s (first use)", path)
        init_tiny(path, seed=0)
    return path


def tiny_wan_dir(cache: Path) -> Path:
    """The tiny random Wan folder in ``cache`` with a fresh TrackGo checkpoint in ``trackgo/``
    (written when absent)."""
    from trackgo_model.wan.tiny import init_tiny_wan

    path = cache / TINY_WAN_NAME
    if not (path / "trackgo" / "trackgo.safetensors").is_file():
        from trackgo_model.configs import TrackGoConfig
        from trackgo_model.wan import TrackGoWan, load_transformer

        log.warning("writing the tiny random Wan folder to %s (first use)", path)
        init_tiny_wan(path, seed=0)
        # α as the Wan recipe sets it (a fixed multiple of a uniform row): valid at every clip length
        TrackGoWan(load_transformer(path), TrackGoConfig(alpha_frames=25)).save_trackgo(path / "trackgo")
    return path


@dataclass
class StudioModel:
    """A loaded pipeline (SVD's TrackGoPipeline or Wan's WanTrackGoPipeline) and what the page
    needs to know about it. ``svd``: the base model's folder (SVD or Wan)."""

    pipe: Any
    svd: Path
    checkpoint: Path
    random_weights: bool
    max_objects: int
    device: str
    dtype: str = "fp32"
    cpu_offload: bool = False
    max_side: int = 1024
    frames: int = 14
    steps: int = 25
    guidance: float = 3.0      # the page's default guidance (last frame; the first is 1)
    trajectory_guidance: float = 1.0  # the page's default trajectory guidance (SVD; 1 = off)
    toy: str = ""              # the toy run and checkpoint this model is (``studio.toy``), else ""
    base: str = "svd"          # or "wan"
    checkpoint_2: Path | None = None  # Wan2.2: the low-noise expert's checkpoint
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def multiple(self) -> int:
        """Height and width must be multiples of this (SVD: VAE ×8 times the UNet's down-samplings;
        Wan: ×8 times the 2×2 patches)."""
        return int(self.pipe.size_multiple)

    @property
    def frame_range(self) -> tuple[int, int, int]:
        """(fewest, most, step) frames the page offers: Wan takes 4k + 1."""
        return (5, 81, 4) if self.base == "wan" else (2, 50, 1)

    @property
    def guidance_option(self) -> str:
        """The ``trackgo generate`` option the page's guidance slider sets."""
        return "--guidance" if self.base == "wan" else "--max-guidance"

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        return fit_size(width, height, self.multiple, self.max_side)

    def banner(self) -> str:
        if self.toy:
            return (f"**Model:** the toy TrackGo trained by `make toy` ({self.toy}): an SVD-layout UNet "
                    f"trained from scratch on a synthetic world of red and cyan shapes on dark backgrounds, "
                    f"{self.frames} frames at {self.max_side}×{self.max_side}. It follows arrows on images "
                    f"like the held-out examples below, not on photographs. Device: {self.device}.")
        if self.base == "wan":
            what = ("the tiny random Wan folder with untrained adapters — a test model, its videos are noise. "
                    "Start with `trackgo studio --base wan --wan DIR --checkpoint DIR` for real videos"
                    if self.random_weights else f"TrackGo checkpoint `{self.checkpoint}`" + (
                        f" (high noise) and `{self.checkpoint_2}` (low noise)" if self.checkpoint_2 else ""))
            return f"**Model:** {what} on Wan `{self.svd}` ({self.dtype}, {self.device}); 4k + 1 frames."
        if self.random_weights:
            return (f"**Model:** the tiny random-weight TrackGo (`{self.checkpoint}`) — a test model, its "
                    "videos are noise. Start with `trackgo studio --checkpoint DIR --svd DIR` to generate "
                    f"real videos. Device: {self.device}.")
        return (f"**Model:** TrackGo checkpoint `{self.checkpoint}` on SVD `{self.svd}` "
                f"({self.dtype}, {self.device}{', CPU offload' if self.cpu_offload else ''}); "
                f"at most {self.max_objects} objects.")

    def cli_args(self) -> list[str]:
        """The model part of the equivalent ``trackgo generate`` command."""
        if self.base == "wan":
            second = ["--checkpoint-2", str(self.checkpoint_2)] if self.checkpoint_2 else []
            return ["--base", "wan", "--wan", str(self.svd), "--checkpoint", str(self.checkpoint), *second,
                    "--device", self.device, "--dtype", self.dtype]
        args = ["--checkpoint", str(self.checkpoint)]
        if self.svd != self.checkpoint:
            args += ["--svd", str(self.svd)]
        args += ["--device", self.device, "--dtype", self.dtype]
        return args + (["--cpu-offload"] if self.cpu_offload else [])

    def describe(self) -> dict[str, Any]:
        return {"svd": str(self.svd), "checkpoint": str(self.checkpoint), "random_weights": self.random_weights,
                "max_objects": self.max_objects, "device": self.device, "dtype": self.dtype, "toy": self.toy,
                "base": self.base}


def load_wan_model(checkpoint: str | Path | None, wan: str | Path | None, *, cache: str | Path | None,
                   device: str, dtype: str, max_side: int | None, checkpoint_2: str | Path | None = None
                   ) -> StudioModel:
    """:func:`load_model` for ``base="wan"``: both folders, or neither (the tiny random Wan folder);
    ``checkpoint_2``: the low-noise expert's checkpoint of a two-expert folder."""
    from trackgo_data.user_input import checkpoint_max_objects
    from trackgo_model.pipeline import MissingWeightsError
    from trackgo_model.wan.pipeline import WanTrackGoPipeline

    random_weights = checkpoint is None and wan is None
    if random_weights:
        wan = tiny_wan_dir(cache_dir(cache))
        checkpoint = Path(wan) / "trackgo"
        log.warning("no --checkpoint/--wan given: using the tiny random Wan folder %s (videos are noise)", wan)
    elif checkpoint is None or wan is None:
        raise MissingWeightsError("--base wan needs both --wan PATH (a diffusers Wan image-to-video folder) and "
                                  "--checkpoint DIR (a TrackGo checkpoint trained with model.base=wan)")
    pipe = WanTrackGoPipeline.from_pretrained(wan, checkpoint, trackgo_checkpoint_2=checkpoint_2, torch_dtype=dtype,
                                              device=device)
    return StudioModel(pipe=pipe, svd=Path(wan), checkpoint=Path(checkpoint), random_weights=random_weights,
                       checkpoint_2=None if checkpoint_2 is None else Path(checkpoint_2),
                       max_objects=checkpoint_max_objects(checkpoint), device=device, dtype=dtype,
                       max_side=max_side or (64 if random_weights else 832), frames=9 if random_weights else 81,
                       steps=4 if random_weights else 40, guidance=1.0, base="wan")


def load_model(checkpoint: str | Path | None = None, svd: str | Path | None = None, *,
               cache: str | Path | None = None, device: str | None = None, dtype: str = "fp32",
               cpu_offload: bool = False, max_side: int | None = None, base: str = "svd",
               wan: str | Path | None = None, checkpoint_2: str | Path | None = None) -> StudioModel:
    """Load the pipeline once. No model given → the tiny model in the cache folder (random weights,
    a logged warning, recorded in every run). A missing folder or file raises
    :class:`~trackgo_model.pipeline.MissingWeightsError` naming what to supply. ``base="wan"``:
    ``wan`` (the Wan folder) and ``checkpoint`` instead of ``svd`` (:func:`load_wan_model`)."""
    import torch

    if base != "wan" and checkpoint_2 is not None:
        raise ValueError("--checkpoint-2 is the second expert of a two-expert Wan2.2 folder (--base wan)")
    if base == "wan":
        if svd is not None or cpu_offload:
            raise ValueError("--base wan takes --wan (not --svd) and has no --cpu-offload")
        return load_wan_model(checkpoint, wan, cache=cache, dtype=dtype, max_side=max_side, checkpoint_2=checkpoint_2,
                              device=device or ("cuda" if torch.cuda.is_available() else "cpu"))

    from trackgo_data.user_input import checkpoint_max_objects
    from trackgo_model.pipeline import MissingWeightsError, TrackGoPipeline

    random_weights = checkpoint is None and svd is None
    if random_weights:
        svd = checkpoint = tiny_model_dir(cache_dir(cache))
        log.warning("no --checkpoint/--svd given: using the tiny random-weight model %s (videos are noise)", svd)
    elif svd is None:
        if not (Path(checkpoint) / "unet").is_dir():
            raise MissingWeightsError(f"--checkpoint {checkpoint} has no unet/: pass --svd PATH (a diffusers "
                                      "Stable Video Diffusion folder) as well")
        svd = checkpoint
    elif checkpoint is None:
        checkpoint = svd
    svd, checkpoint = Path(svd), Path(checkpoint)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = TrackGoPipeline.from_pretrained(svd, checkpoint, torch_dtype=dtype, device=device,
                                           enable_model_cpu_offload=cpu_offload)
    unet_frames = int(pipe.unet.unet.config.num_frames)
    return StudioModel(pipe=pipe, svd=svd, checkpoint=checkpoint, random_weights=random_weights,
                       max_objects=checkpoint_max_objects(checkpoint), device=device, dtype=dtype,
                       cpu_offload=cpu_offload,
                       max_side=max_side or (256 if random_weights else 1024),
                       frames=8 if random_weights else unet_frames, steps=4 if random_weights else 25)
