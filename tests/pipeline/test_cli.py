"""``trackgo model …`` and ``trackgo generate`` in-process, end to end on the tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trackgo_data.render import COLOURS
from trackgo_data.video import decode_mp4

H, W = 64, 128


@pytest.fixture()
def scene(tmp_path):
    """An image with two rectangular masks (left, right) and their PNG files."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    a = np.zeros((H, W), np.uint8)
    a[20:40, 10:30] = 255
    b = np.zeros((H, W), np.uint8)
    b[10:30, 90:110] = 255
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    return tmp_path, a > 0, b > 0


def _coloured(frame, colour):
    """(x, y) pixels of ``frame`` exactly equal to ``colour``."""
    ys, xs = np.nonzero((frame == colour).all(-1))
    return set(zip(xs.tolist(), ys.tolist()))


def test_stats_prints_one_flat_json(run_cli, capsys):
    from trackgo_model.model import count_params

    assert run_cli("model", "stats", "--config", "tiny") == 0
    tiny = json.loads(capsys.readouterr().out)
    assert tiny == count_params("tiny") and tiny["num_adapters"] == 4
    assert run_cli("model", "stats", "--config", "svd-xt") == 0
    xt = json.loads(capsys.readouterr().out)
    assert set(xt) == {"unet_params", "added_params", "num_adapters"}
    assert xt["unet_params"] == 1_524_623_082 and xt["num_adapters"] == 16
    with pytest.raises(SystemExit, match="unknown --config"):
        run_cli("model", "stats", "--config", "huge")
    assert run_cli("model", "stats", "--base", "wan") == 0
    wan = json.loads(capsys.readouterr().out)
    assert wan["transformer_params"] == 16_394_878_784 and wan["num_adapters"] == 40
    with pytest.raises(SystemExit, match="for --base wan"):
        run_cli("model", "stats", "--base", "wan", "--config", "svd-xt")


def test_preview_puts_points_where_the_arrows_say(run_cli, scene, capsys):
    d, mask_a, mask_b = scene
    out = d / "out.mp4"
    rc = run_cli("generate", "--image", d / "img.png", "--masks", d / "a.png", d / "b.png",
                 "--arrows", "20,30,20,20", "100,20,100,32", "--frames", 6, "--out", out, "--preview")
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert not out.exists()                                    # no model was run
    P = decode_mp4(d / "out.trajectory.mp4")                   # lossless: the rendered P itself
    assert P.shape == (6, H, W, 3) and res["frames"] == 6
    red, green = COLOURS[0], COLOURS[1]
    a0, b0 = _coloured(P[0], red), _coloured(P[0], green)
    assert len(a0) > 16 and len(b0) > 16                       # K ≥ 16 points per mask
    # frame 0: every square lies on its mask (the render square reaches 2 px past a centre)
    for pix, mask in ((a0, mask_a), (b0, mask_b)):
        ys, xs = np.nonzero(mask)
        for x, y in pix:
            assert xs.min() - 2 <= x <= xs.max() + 1 and ys.min() - 2 <= y <= ys.max() + 1
    # per-frame displacement: mask a moves up 2 px per frame, mask b down 2.4 px per frame
    for t in range(6):
        at = _coloured(P[t], red)
        assert at == {(x, y - 2 * t) for x, y in a0}
        bt = _coloured(P[t], green)
        cy0 = np.mean([y for _, y in b0])
        assert abs(np.mean([y for _, y in bt]) - cy0 - 2.4 * t) <= 0.5
    # the preview image shows each component's colour where its points end up
    prev = np.asarray(Image.open(d / "out.preview.png").convert("RGB"))
    img = np.asarray(Image.open(d / "img.png").convert("RGB"))
    assert prev.shape == img.shape and (prev != img).any()
    for x, y in sorted(_coloured(P[-1], red))[::7]:
        win = prev[max(y - 3, 0):y + 4, max(x - 3, 0):x + 4].reshape(-1, 3)
        assert (np.abs(win.astype(int) - red.astype(int)).max(1) <= 2).any()


def test_init_tiny_then_generate_writes_the_video(run_cli, scene, tmp_path, capsys):
    d, _, _ = scene
    model = tmp_path / "model"
    assert run_cli("model", "init-tiny", "--out", model, "--seed", 0) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(model)
    out = tmp_path / "gen" / "out.mp4"
    rc = run_cli("generate", "--image", d / "img.png", "--masks", d / "a.png", d / "b.png",
                 "--arrows", "20,30,40,30", "100,20,100,40", "--checkpoint", model, "--frames", 5,
                 "--steps", 2, "--height", 64, "--width", 96, "--seed", 1, "--device", "cpu", "--out", out)
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    video = decode_mp4(out)
    assert video.shape == (5, 64, 96, 3)
    assert res["video"] == str(out) and (res["frames"], res["height"], res["width"]) == (5, 64, 96)
    P = decode_mp4(tmp_path / "gen" / "out.trajectory.mp4")
    assert P.shape == (5, 64, 96, 3)
    # tracks were rescaled from 128 to 96 px wide: mask a's squares move 20·0.75 = 15 px in all
    red = COLOURS[0]
    x0 = np.mean([x for x, _ in _coloured(P[0], red)])
    x4 = np.mean([x for x, _ in _coloured(P[-1], red)])
    assert abs(x4 - x0 - 15.0) <= 0.5


def test_generate_input_errors(run_cli, scene, tmp_path):
    d, _, _ = scene
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "small.png")
    out = tmp_path / "x.mp4"
    base = ["generate", "--image", d / "img.png", "--out", out, "--preview"]
    with pytest.raises(SystemExit, match="32×32 but the image is 128×64"):
        run_cli(*base, "--masks", tmp_path / "small.png", "--arrows", "1,1,2,2")
    with pytest.raises(SystemExit, match="outside the 128×64 image"):
        run_cli(*base, "--masks", d / "a.png", "--arrows", "500,30,20,20")
    with pytest.raises(SystemExit, match="object 1: arrow ends at \\(9999, 30\\), off the 128×64 image"):
        run_cli(*base, "--masks", d / "a.png", "--arrows", "20,30,9999,30")
    with pytest.raises(SystemExit, match="object 2: arrow starts at \\(20, 30\\), outside its mask"):
        run_cli(*base, "--masks", d / "a.png", d / "b.png", "--arrows", "20,30,20,20", "20,30,20,20")
    with pytest.raises(SystemExit, match="one arrow per mask"):
        run_cli(*base, "--masks", d / "a.png", d / "b.png", "--arrows", "20,30,20,20")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(SystemExit, match="empty.png is empty"):
        run_cli(*base, "--masks", d / "a.png", tmp_path / "empty.png", "--arrows", "20,30,20,20", "1,1,2,2")
    # seven objects in one label PNG: more than training ever shows
    lab = np.zeros((H, W), np.uint8)
    for i in range(7):
        lab[5:15, 10 * i + 2:10 * i + 8] = i + 1
    Image.fromarray(lab).save(tmp_path / "labels.png")
    seven = [f"{10 * i + 4},8,{10 * i + 4},12" for i in range(7)]
    with pytest.raises(SystemExit, match="7 objects, but the model was trained with at most 6"):
        run_cli(*base, "--masks", tmp_path / "labels.png", "--arrows", *seven)
    # a checkpoint that records its own limit is held to it
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "trackgo_config.json").write_text(json.dumps({"format": "trackgo-v1", "max_components": 2}))
    Image.fromarray(np.where(lab <= 3, lab, 0)).save(tmp_path / "labels3.png")
    with pytest.raises(SystemExit, match="3 objects, but the model was trained with at most 2"):
        run_cli(*base, "--masks", tmp_path / "labels3.png", "--arrows", *seven[:3], "--checkpoint", ckpt)
    assert not list(tmp_path.glob("x.*"))                      # nothing was written
    with pytest.raises(SystemExit, match="--checkpoint is required"):
        run_cli("generate", "--image", d / "img.png", "--masks", d / "a.png", "--arrows", "20,30,20,20",
                "--out", out)
    with pytest.raises(SystemExit, match="pass --svd"):
        run_cli("generate", "--image", d / "img.png", "--masks", d / "a.png", "--arrows", "20,30,20,20",
                "--out", out, "--checkpoint", tmp_path)


def test_generate_size_the_model_cannot_take_is_one_message(run_cli, scene, tiny_dir, tmp_path):
    d, _, _ = scene
    out = tmp_path / "y.mp4"
    with pytest.raises(SystemExit, match="trackgo generate: height and width must be multiples of 16"):
        run_cli("generate", "--image", d / "img.png", "--masks", d / "a.png", "--arrows", "20,30,20,20",
                "--checkpoint", tiny_dir, "--width", 100, "--frames", 3, "--steps", 1, "--device", "cpu",
                "--out", out)
    assert not list(tmp_path.glob("y.*"))


def test_output_size_defaults_to_the_image_fitted_to_the_model_and_checks_given_sides():
    from trackgo_data.user_input import UserInputError, output_size

    assert output_size((1280, 720), None, None, 64) == (1024, 576)        # SVD-xt's size from a 720p frame
    assert output_size((100, 70), None, None, 16) == (96, 64)             # nearest multiples
    assert output_size((100, 70), 128, None, 16) == (128, 64)             # a given side is kept
    assert output_size((4000, 1000), None, None, 64, max_side=512) == (512, 128)
    for width, height in ((100, None), (None, 70), (0, 64)):
        with pytest.raises(UserInputError, match="multiples of 16 for this model.*default for this image: 96x64"):
            output_size((100, 70), width, height, 16)


def test_generate_without_a_size_fits_the_image_to_the_model(run_cli, tiny_dir, tmp_path, capsys):
    """A 100×70 image (not a multiple of the tiny model's 16) generates at 96×64, as the studio
    would; a preview without a model folder fits to SVD's multiple of 64."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(tmp_path / "odd.png")
    mask = np.zeros((70, 100), np.uint8)
    mask[20:40, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    common = ["generate", "--image", tmp_path / "odd.png", "--masks", tmp_path / "m.png", "--arrows", "30,30,40,30",
              "--frames", 3]
    assert run_cli(*common, "--out", tmp_path / "p.mp4", "--preview") == 0
    assert (json.loads(capsys.readouterr().out)["width"], decode_mp4(tmp_path / "p.trajectory.mp4").shape) == (
        128, (3, 64, 128, 3))
    assert run_cli(*common, "--checkpoint", tiny_dir, "--steps", 1, "--device", "cpu", "--out", tmp_path / "g.mp4") == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["width"], res["height"]) == (96, 64) and decode_mp4(tmp_path / "g.mp4").shape == (3, 64, 96, 3)


def test_only_input_checks_are_reported_as_bad_input(scene, tiny_pipe, tmp_path):
    """An error raised while sampling is the program's, not the user's: it is not turned into a
    one-line input message."""
    from trackgo_data.user_input import UserInputError
    from trackgo_model.cli.model import run_generate

    d, _, _ = scene
    args = _generate_parser().parse_args([
        "generate", "--image", str(d / "img.png"), "--masks", str(d / "a.png"), "--arrows", "20,30,20,20",
        "--frames", "3", "--steps", "1", "--out", str(tmp_path / "v.mp4")])

    class Failing:
        size_multiple, device = tiny_pipe.size_multiple, "cpu"

        def __call__(self, *a, **kw):
            raise ValueError("a shape mismatch inside the model")

    with pytest.raises(ValueError, match="shape mismatch inside the model") as err:
        run_generate(args, pipe=Failing())
    assert not isinstance(err.value, UserInputError)
    with pytest.raises(UserInputError, match="multiples of 16"):
        run_generate(_generate_parser().parse_args([*map(str, [
            "generate", "--image", d / "img.png", "--masks", d / "a.png", "--arrows", "20,30,20,20", "--width", 100,
            "--out", tmp_path / "w.mp4"])]), pipe=tiny_pipe)
    assert not list(tmp_path.glob("*.mp4"))


def _generate_parser():
    import argparse

    from trackgo_model.cli.model import register

    parser = argparse.ArgumentParser(prog="trackgo")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_preview_colours_objects_by_area_like_training(run_cli, scene, tmp_path, capsys):
    """The smaller mask given first is the second component (green); the larger one is red."""
    d, mask_a, _ = scene
    big = np.zeros((H, W), np.uint8)
    big[5:60, 60:120] = 255
    Image.fromarray(big).save(tmp_path / "big.png")
    rc = run_cli("generate", "--image", d / "img.png", "--masks", d / "a.png", tmp_path / "big.png",
                 "--arrows", "20,30,20,20", "90,30,100,30", "--frames", 3, "--out", tmp_path / "o.mp4",
                 "--preview")
    assert rc == 0
    capsys.readouterr()
    P = decode_mp4(tmp_path / "o.trajectory.mp4")
    red, green = _coloured(P[0], COLOURS[0]), _coloured(P[0], COLOURS[1])
    assert red and green
    assert all(x >= 58 for x, _ in red)                        # every red square is on the big mask
    ys, xs = np.nonzero(mask_a)
    assert all(xs.min() - 2 <= x <= xs.max() + 1 and ys.min() - 2 <= y <= ys.max() + 1 for x, y in green)


def test_registering_subcommands_imports_no_torch():
    """`trackgo data …` must start without torch: every registrar (train's included) stays light."""
    import subprocess
    import sys

    code = ("import sys; from trackgo_model.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'diffusers', 'gradio', 'prefect') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"building the trackgo parser imported {out}"
