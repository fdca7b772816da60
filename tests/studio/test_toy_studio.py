"""``trackgo studio --toy``: the toy run's last TrackGo checkpoint, held-out examples whose masks and
arrows are the world's ground truth, and the page filling them in when an example is picked."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trackgo_data.synthetic import SyntheticConfig, generate_videos, load_ground_truth
from trackgo_data.user_input import load_image, split_arrows
from trackgo_data.video import read_frames
from trackgo_model.pipeline import TRACKGO_FILES, MissingWeightsError
from trackgo_model.toy.config import load_toy_config

from studio import core
from studio.app import Handlers
from studio.toy import load_toy_model, toy_checkpoint, toy_examples

REPO = Path(__file__).resolve().parents[2]


def add_checkpoint(run: Path, variant: str, step: int, source: Path, complete: bool = True) -> Path:
    """A training checkpoint folder as the trainer writes it (state.json marks it complete)."""
    folder = run / "trackgo" / variant / "checkpoints" / f"checkpoint-{step:06d}"
    (folder / "trackgo").mkdir(parents=True)
    for name in TRACKGO_FILES:
        shutil.copy(source / name, folder / "trackgo" / name)
    if complete:
        (folder / "state.json").write_text(json.dumps({"step": step}))
    return folder


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A toy run folder: the tiny model as base, two TrackGo checkpoints (and one half-written),
    three held-out videos."""
    from trackgo_model.tiny import init_tiny

    run = tmp_path_factory.mktemp("toy-run")
    init_tiny(run / "base-model", seed=0)
    for step, complete in ((100, True), (200, True), (300, False)):
        add_checkpoint(run, "trackgo", step, run / "base-model", complete)
    world = SyntheticConfig(num_videos=3, seed=7, width=64, height=64, num_frames=8, min_objects=2, max_objects=3)
    generate_videos(run / "videos" / "heldout", world)
    return run


def test_toy_checkpoint_is_the_last_complete_one(toy_run, tmp_path):
    base, checkpoint, step = toy_checkpoint(toy_run)
    assert base == toy_run / "base-model" and step == 200
    assert checkpoint == toy_run / "trackgo" / "trackgo" / "checkpoints" / "checkpoint-000200" / "trackgo"
    with pytest.raises(MissingWeightsError, match="no trained TrackGo `gated`.*make toy"):
        toy_checkpoint(toy_run, "gated")
    with pytest.raises(MissingWeightsError, match="no toy base model.*make toy"):
        toy_checkpoint(tmp_path)


def test_examples_are_the_held_out_ground_truth(toy_run):
    examples = toy_examples(toy_run)
    videos = sorted((toy_run / "videos" / "heldout").glob("*.npz"))
    assert len(examples) == len(videos) == 3
    for example, truth in zip(examples, videos):
        gt = load_ground_truth(truth)
        first = read_frames(truth.with_suffix(".mp4"), 0, 1)[0]
        assert np.array_equal(load_image(example.image), first)
        shown = [j for j in range(gt["paths"].shape[1]) if (gt["labels"][0] == j + 1).any()]
        assert len(example.masks) == len(shown) >= 1
        arrows = split_arrows(example.arrows)
        for mask, arrow, j in zip(example.masks, arrows, shown):
            assert np.array_equal(mask, gt["labels"][0] == j + 1)
            points = np.array([float(v) for v in arrow.split(",")]).reshape(-1, 2)
            assert np.allclose(points, gt["paths"][:, j], atol=0.05)   # one point per frame
            ys, xs = np.nonzero(mask)   # the arrow starts on its object (its centre may be occluded)
            assert np.hypot(xs.mean() - points[0, 0], ys.mean() - points[0, 1]) <= gt["radius"][j] + 1
    assert toy_examples(toy_run, count=1)[0].image == examples[0].image   # written once, reused


def test_picking_an_example_fills_in_its_masks_and_arrows(toy_run, tmp_path):
    model = load_toy_model(toy_run)
    examples = toy_examples(toy_run)
    handlers = Handlers(model, tmp_path / "runs", None, examples)
    copy = tmp_path / "upload" / "image.png"   # the page hands the handler a copy, under another name
    copy.parent.mkdir()
    shutil.copy(examples[1].image, copy)
    editor, arrows = handlers.on_image(str(copy))
    assert arrows == examples[1].arrows
    masks = core.editor_masks(editor)
    assert len(masks) == len(examples[1].masks)
    assert all(np.array_equal(a, b) for a, b in zip(masks, examples[1].masks))
    other = tmp_path / "other.png"
    image = load_image(copy).copy()
    image[0, 0] = 255 - image[0, 0]
    from PIL import Image
    Image.fromarray(image).save(other)
    editor, arrows = handlers.on_image(str(other))
    assert editor["layers"] == [] and arrows == ""


def test_toy_model_settings_and_generation(toy_run, tmp_path):
    model = load_toy_model(toy_run)
    unet = json.loads((toy_run / "base-model" / "unet" / "config.json").read_text())
    vae = json.loads((toy_run / "base-model" / "vae" / "config.json").read_text())
    assert model.max_side == unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)
    assert (model.steps, model.guidance) == (12, 2.0) and not model.random_weights
    assert model.trajectory_guidance == load_toy_config("toy").eval.trajectory_guidance > 1
    assert "make toy" in model.banner() and "step 200" in model.banner()
    example = toy_examples(toy_run)[0]
    masks = core.write_masks(example.masks, tmp_path / "masks")
    run = core.run_generation(model, str(example.image), masks, example.arrows, frames=model.frames, steps=2,
                              strength=1.0, seed=0, tau=0.0, guidance=model.guidance, out_root=tmp_path / "out",
                              callback=None)
    record = json.loads((run.video.parent / "run.json").read_text())
    assert record["model"]["toy"].endswith("`trackgo` at step 200")
    assert read_frames(run.video).shape[0] == model.frames


@pytest.mark.parametrize("args, message", [
    (["--toy", "{missing}"], "no toy base model"),
    (["--toy", "{run}", "--checkpoint", "{run}"], "leave out --checkpoint"),
])
def test_cli_errors(toy_run, tmp_path, args, message):
    args = [a.format(missing=tmp_path / "none", run=toy_run) for a in args]
    out = subprocess.run([sys.executable, "-c", "import sys; from trackgo_model.cli import main; "
                          "sys.exit(main(sys.argv[1:]))", "studio", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and message in out.stderr
