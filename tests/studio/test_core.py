"""What the studio page does, without the page: arrows text, editor layers, the live preview,
output sizes, the model (tiny on first use), one generation run, SAM loading."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from studio import core
from studio.model import fit_size, load_model
from studio.sam import SamClicker, sam_model_type
from trackgo_data.user_input import UserInputError, build_motion, preview_image
from trackgo_data.video import decode_mp4

from .conftest import scene


def _box(y0, y1, x0, x1, size=64):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_arrows_text_from_clicks():
    t = core.add_point("", 0, 3, 4)
    assert t == "3,4"
    t = core.add_point(t, 0, 10, 4)
    t = core.add_point(t, 2, 7.5, 1)                 # a later object: the ones between stay empty
    assert t == "3,4,10,4; ; 7.5,1"
    assert core.undo_point(t, 0) == "3,4; ; 7.5,1"
    assert core.undo_point(core.undo_point(t, 2), 2) == "3,4,10,4"
    assert core.clear_arrow(t, 0) == "; ; 7.5,1" and core.clear_arrow("1,2,3,4", 5) == "1,2,3,4"


def test_editor_layers_to_masks_and_camera():
    bg = np.zeros((8, 10, 4), np.uint8)
    a = np.zeros((8, 10, 4), np.uint8)
    a[2:4, 3:6, 3] = 10                              # any alpha paints
    a[5, 5, :3] = 255                                # colour without alpha does not
    masks = core.editor_masks({"background": bg, "layers": [a, np.zeros_like(a)], "composite": None})
    assert [m.sum() for m in masks] == [6, 0] and masks[0][2:4, 3:6].all()
    assert core.editor_masks({"background": None, "layers": []}) is None and core.editor_masks(None) is None
    cam = core.object_masks(masks, True, (8, 10))
    assert len(cam) == 1 and cam[0].all() and core.object_masks(masks, False, (8, 10)) is not cam


def test_preview_guides_then_shows_what_the_model_gets():
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    small, large = _box(2, 10, 2, 10), _box(20, 50, 20, 50)
    msg = lambda masks, arrows: core.make_preview(img, masks, arrows, 6, 0, 6).message  # noqa: E731
    assert msg([], "").startswith("no mask given")
    assert msg([small, np.zeros_like(small)], "5,5,8,8").startswith("object 2: mask is empty")
    assert msg([small], "") == "object 1: click on the object to start its arrow"
    assert msg([small], "5,5") == "object 1: click where its arrow ends"
    with pytest.raises(UserInputError) as bad:
        build_motion([small], ["5,5,99,5"], 6, image_size=(64, 64))
    assert msg([small], "5,5,99,5") == str(bad.value)
    # ready: objects listed with the colours of the training order (larger mask → red), and the
    # picture is the one renderer's preview plus the drawn arrows
    p = core.make_preview(img, [small, large], "5,5,8,8; 30,30,40,30", 6, 0, 6)
    assert p.ready and p.message == ""
    assert "green" in p.objects[0] and "red" in p.objects[1]
    motion = build_motion([small, large], ["5,5,8,8", "30,30,40,30"], 6, 0)
    ref = preview_image(img, motion.tracks, motion.visibility, motion.components, motion.labels)
    near_arrow = np.zeros((64, 64), bool)
    near_arrow[3:11, 3:11] = near_arrow[27:34, 28:43] = True
    np.testing.assert_array_equal(p.image[~near_arrow], ref[~near_arrow])
    assert (p.image[near_arrow] != ref[near_arrow]).any()


def test_output_size_zoom_and_clicks():
    assert fit_size(1280, 720, 64, 1024) == (1024, 576)
    assert fit_size(176, 144, 64, 1024) == (192, 128)
    assert fit_size(64, 64, 16, 256) == (64, 64)
    assert fit_size(1000, 30, 16, 256) == (256, 16)
    img = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    f = core.display_factor(5, 7)
    assert f == 57
    big = core.zoom(img, f)
    assert big.shape == (5 * f, 7 * f, 3)
    for x, y, a, b in [(0, 0, 0, 0), (6, 4, f - 1, f - 1), (3, 2, 10, 40)]:
        assert core.click_pixel(x * f + a, y * f + b, f) == (x, y)
        assert (big[y * f + b, x * f + a] == img[y, x]).all()


@pytest.fixture(scope="module")
def model(studio_cache):
    return load_model(cache=studio_cache)


def test_tiny_model_made_once_in_the_cache(model, studio_cache):
    weights = studio_cache / "tiny-model" / "trackgo.safetensors"
    assert model.random_weights and "tiny random-weight" in model.banner()
    assert model.multiple == 16 and model.max_objects == 6 and model.describe()["random_weights"] is True
    stamp = weights.stat().st_mtime_ns
    again = load_model(cache=studio_cache)
    assert weights.stat().st_mtime_ns == stamp and again.checkpoint == model.checkpoint


def test_run_generation_progress_files_and_bad_input_leaves_nothing(model, tmp_path):
    img, mask, _ = scene(tmp_path)
    out = tmp_path / "runs"
    calls = []
    run = core.run_generation(model, img, [mask], "28,32,40,30", frames=4, steps=3, strength=0.5, seed=2,
                              tau=None, guidance=2.0, trajectory_guidance=3.0, out_root=out,
                              callback=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert decode_mp4(run.video).shape == (4, 64, 64, 3)
    assert decode_mp4(run.trajectory_view).shape == (4, 64, 64, 3)
    assert all(p.is_file() for p in run.downloads) and run.folder.parent == out
    record = json.loads((run.folder / "run.json").read_text())
    assert record["model"]["random_weights"] is True and record["result"]["video"] == str(run.video)
    assert "--strength=0.5" in run.command and "--max-guidance=2" in run.command and "--tau" not in run.command
    assert "--trajectory-guidance=3" in run.command
    for masks, arrows, kw, message in [
        ([mask], "", {}, "0 arrow(s) for 1 mask(s)"),
        ([mask], "-5,3,10,10", {}, "object 1: arrow starts at (-5, 3), outside the 64×64 image"),
        ([], "28,32,40,30", {}, "no mask given"),
        ([mask], "28,32,40,30", {"frames": 2.5}, "whole numbers"),
        ([mask], "28,32,40,30", {"frames": 1}, "--frames must be >= 2"),
        ([mask], "28,32,40,30", {"trajectory_guidance": 0.5}, "--trajectory-guidance must be >= 1"),
    ]:
        args = {"frames": 4, "steps": 1, "strength": 1.0, "seed": 0, **kw}
        with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            core.run_generation(model, img, masks, arrows, out_root=out, **args)
    assert sorted(p.name for p in out.iterdir()) == [run.folder.name]   # no other (or half-written) folder


def test_wan_model_and_generation(tmp_path, studio_cache):
    """--base wan: the tiny random Wan folder (made once), 4k + 1 frames, the prompt-guidance option."""
    img, mask, _ = scene(tmp_path)
    wan = load_model(cache=studio_cache, base="wan")
    assert wan.base == "wan" and wan.random_weights and "tiny random Wan" in wan.banner()
    assert wan.multiple == 16 and wan.frame_range == (5, 81, 4) and wan.describe()["base"] == "wan"
    run = core.run_generation(wan, img, [mask], "28,32,40,30", frames=5, steps=2, strength=1.0, seed=1,
                              guidance=1.5, out_root=tmp_path / "runs")
    assert decode_mp4(run.video).shape == (5, 64, 64, 3)
    assert "--base wan" in run.command and "--guidance=1.5" in run.command and "--max-guidance" not in run.command
    with pytest.raises(UserInputError, match="4k"):
        core.run_generation(wan, img, [mask], "28,32,40,30", frames=6, steps=1, strength=1.0, seed=0,
                            out_root=tmp_path / "runs")
    with pytest.raises(Exception, match="both --wan"):
        load_model(tmp_path, cache=studio_cache, base="wan")


def test_studio_command_errors_name_what_to_supply(tmp_path, studio_cache):
    from trackgo_model import cli

    with pytest.raises(SystemExit, match="trackgo studio: .*has no unet/: pass --svd"):
        cli.main(["studio", "--checkpoint", str(tmp_path)])
    with pytest.raises(SystemExit, match="trackgo studio: SVD folder .* is missing unet/"):
        cli.main(["studio", "--svd", str(tmp_path)])
    with pytest.raises(SystemExit, match="trackgo studio: SAM weights .*nope.pth not found"):
        cli.main(["studio", "--cache-dir", str(studio_cache), "--sam", str(tmp_path / "nope.pth")])


def test_sam_encoder_size_from_the_weights(tmp_path):
    for width, kind in [(1280, "vit_h"), (1024, "vit_l"), (768, "vit_b")]:
        assert sam_model_type({"image_encoder.pos_embed": torch.zeros(1, 64, 64, width)}) == kind
    with pytest.raises(ValueError, match="width 512 is none of"):
        sam_model_type({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 512)})
    with pytest.raises(ValueError, match="not a Segment Anything checkpoint"):
        sam_model_type({"something": torch.zeros(1)})
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a Segment Anything checkpoint"):
        SamClicker(tmp_path / "other.pth")
