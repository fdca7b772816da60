"""The toy's trained TrackGo in the studio: ``trackgo studio --toy [RUN]`` (``make studio`` after
``make toy``).

A toy run folder (``runs/toy``) holds the base model (``base-model/``, an SVD-layout folder), the
TrackGo fine-tunings (``trackgo/<variant>/checkpoints/checkpoint-<step>/trackgo``) and the
synthetic worlds (``videos/heldout/<video_id>.mp4`` + ``.npz`` ground truth). The studio serves the
last checkpoint of one variant and offers held-out first frames as examples, each with its objects'
masks (ground-truth labels of frame 0) and arrows (each object's centre path, one point per frame),
in the held-out video's pixels.
"""
from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TOY_RUN = Path("runs/toy")
EXAMPLES_DIR = "studio-examples"


@dataclass
class ToyExample:
    """A held-out first frame with what the page pre-fills when it is picked."""

    image: Path               # first frame, PNG, the world's size (W×H)
    masks: list[np.ndarray]   # (H, W) bool, one per object, in ground-truth object order
    arrows: str               # "x0,y0,x1,y1,…; …": each object's centre path in image pixels


def toy_checkpoint(run: str | Path, variant: str = "trackgo") -> tuple[Path, Path, int]:
    """(base-model folder, TrackGo checkpoint folder, its step) of ``variant``'s last checkpoint
    in the toy run ``run``. Raises ``MissingWeightsError`` saying which stage to run."""
    from trackgo_model.pipeline import MissingWeightsError
    from trackgo_model.train.checkpoint import list_checkpoints

    run = Path(run)
    base = run / "base-model"
    if not (base / "unet").is_dir():
        raise MissingWeightsError(f"{run} holds no toy base model ({base}): run `make toy` "
                                  f"(or `trackgo toy all --set out={run}`) first")
    found = list_checkpoints(run / "trackgo" / variant)
    if not found:
        raise MissingWeightsError(f"{run} holds no trained TrackGo `{variant}` ({run / 'trackgo' / variant}): "
                                  f"run `make toy` (or `trackgo toy trackgo --set out={run}`) first")
    step, path = found[-1]
    return base, path / "trackgo", step


def has_trained_toy(run: str | Path = TOY_RUN, variant: str = "trackgo") -> bool:
    """Whether ``run`` holds a base model and a TrackGo checkpoint of ``variant``."""
    from trackgo_model.pipeline import MissingWeightsError

    try:
        toy_checkpoint(run, variant)
    except MissingWeightsError:
        return False
    return True


def load_toy_model(run: str | Path = TOY_RUN, variant: str = "trackgo", *, device: str | None = None):
    """The studio model for a toy run: its size (the toy's models generate 64×64 from the 128×128
    worlds), its frames, the toy evaluation's default sampler settings (steps, guidance) and a
    banner saying what it is."""
    from trackgo_model.toy.config import load_toy_config

    from .model import load_model

    base, checkpoint, step = toy_checkpoint(run, variant)
    model = load_model(checkpoint, base, device=device or "cpu")
    unet = model.pipe.unet.unet.config  # the side the base model was trained to generate
    side = max(unet.sample_size) if isinstance(unet.sample_size, (list, tuple)) else unet.sample_size
    ev = load_toy_config("toy").eval   # the settings `make toy` evaluates with
    return dataclasses.replace(model, max_side=int(side * model.pipe.vae_scale_factor), steps=ev.num_inference_steps,
                               guidance=ev.max_guidance_scale, trajectory_guidance=ev.trajectory_guidance,
                               toy=f"{Path(run)} · `{variant}` at step {step}")


def toy_examples(run: str | Path = TOY_RUN, count: int = 6) -> list[ToyExample]:
    """The first ``count`` held-out videos of ``run`` as examples (first frames written once to
    ``run/studio-examples/toy-<video_id>.png``); objects hidden in frame 0 are left out."""
    from PIL import Image

    from trackgo_data.config import atomic_write_bytes
    from trackgo_data.synthetic import load_ground_truth
    from trackgo_data.video import read_frames

    from .core import join_arrows

    run = Path(run)
    out = []
    for truth in sorted((run / "videos" / "heldout").glob("*.npz"))[:count]:
        gt = load_ground_truth(truth)
        png = run / EXAMPLES_DIR / f"toy-{truth.stem}.png"
        if not png.is_file():
            buf = io.BytesIO()
            Image.fromarray(read_frames(truth.with_suffix(".mp4"), 0, 1)[0]).save(buf, format="PNG")
            atomic_write_bytes(png, buf.getvalue())
        masks, arrows = [], []
        for j in range(gt["paths"].shape[1]):
            mask = gt["labels"][0] == j + 1
            if mask.any():
                masks.append(mask)
                arrows.append(",".join(f"{x:.1f},{y:.1f}" for x, y in gt["paths"][:, j]))
        if masks:
            out.append(ToyExample(image=png, masks=masks, arrows=join_arrows(arrows)))
    if not out:
        log.warning("no held-out videos in %s: the page has no toy examples", run / "videos" / "heldout")
    return out
