import json

import numpy as np
import pytest
import torch
from PIL import Image

from trackgo_data.video import encode_lossless_rgb
from trackgo_model.cli import main
from trackgo_model.eval.metrics import load_video_dir
from trackgo_model.eval.metrics.objmc import tracks_to_peer, write_peer_tracks

from .reference import clip_features, frechet_by_eigh
from .tiny_extractors import TinyI3D


def _video_dir(root, seed, scale):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    vids = [(rng.integers(0, 256, (4, 32, 48, 3)) * scale).astype(np.uint8) for _ in range(3)]
    encode_lossless_rgb(vids[0], root / "a.mp4", fps=5)
    encode_lossless_rgb(vids[1], root / "b.mp4", fps=5)
    (root / "c").mkdir()
    for t, f in enumerate(vids[2]):                     # a frame folder, numeric names
        Image.fromarray(f).save(root / "c" / f"{t * 5}.png")
    return vids


def test_metrics_fvd_and_fid_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRACKGO_FID_WEIGHTS", raising=False)
    real = _video_dir(tmp_path / "real", 0, 1.0)
    _video_dir(tmp_path / "gen", 1, 0.5)
    loaded = load_video_dir(tmp_path / "real")
    assert list(loaded) == ["a", "b", "c"]
    for got, want in zip(loaded.values(), real):
        np.testing.assert_array_equal(got, want)
    i3d = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(i3d))
    assert main(["metrics", "fvd", str(tmp_path / "real"), str(tmp_path / "gen"), "--i3d", str(i3d),
                 "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    gen = list(load_video_dir(tmp_path / "gen").values())
    want = frechet_by_eigh(clip_features(TinyI3D(), real), clip_features(TinyI3D(), gen))   # a second implementation
    assert out["fvd"] == pytest.approx(want, rel=1e-4) and out["real_clips"] == 3 and want > 1e-3
    assert main(["metrics", "fid", str(tmp_path / "real"), str(tmp_path / "gen")]) == 2
    err = capsys.readouterr().err
    assert "TRACKGO_FID_WEIGHTS" in err and "pt_inception-2015-12-05-6726825d.pth" in err


def test_metrics_objmc_command(tmp_path, capsys):
    gt = np.zeros((3, 2, 2))
    write_peer_tracks(tmp_path / "gt" / "v.json", tracks_to_peer(gt, [6100, 5]))
    write_peer_tracks(tmp_path / "pred" / "v.json", tracks_to_peer(gt + [0.0, 2.0], [6100, 5]))
    assert main(["metrics", "objmc", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objmc"] == pytest.approx(2.0) and out["num_objects"] == 2
    assert main(["metrics", "objmc", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "none")]) == 1


def test_eval_vipseg_command_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval-vipseg", "--vipseg", str(tmp_path), "--checkpoint", str(tmp_path), "--out", str(out)]) == 2
    assert "not a VIPSeg_720P folder" in capsys.readouterr().err
    assert not out.exists()                                            # nothing written for a wrong folder
    assert main(["eval-vipseg", "--vipseg", str(tmp_path), "--checkpoint", str(tmp_path), "--set", "nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_metrics_objmc_draganything_command(tmp_path, capsys, sample_videos):
    """Videos + first-frame masks → the protocol's trajectories and value (LK standing in for
    Co-Tracker2): the generated clip is the real one moved by (4, 3) px from frame 1 on."""
    import cv2

    from trackgo_data.video import read_frames

    clip = read_frames(sample_videos["carphone"], count=5)            # (5, 144, 176, 3)
    moved = clip.copy()
    for t in range(1, len(clip)):
        moved[t] = cv2.warpAffine(clip[t], np.float32([[1, 0, 4], [0, 1, 3]]), (176, 144),
                                  borderMode=cv2.BORDER_REPLICATE)
    encode_lossless_rgb(clip, tmp_path / "real" / "v.mp4", fps=5)
    encode_lossless_rgb(moved, tmp_path / "gen" / "v.mp4", fps=5)
    mask = np.zeros((144, 176), np.uint8)
    mask[30:80, 40:100], mask[80:130, 90:150] = 7, 61
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "v.png")
    args = ["metrics", "objmc", "--protocol", "draganything", "--real", str(tmp_path / "real"), "--gen",
            str(tmp_path / "gen"), "--masks", str(tmp_path / "masks"), "--tracker", "lk", "--grid-size", "20"]
    assert main([*args, "--save-tracks", str(tmp_path / "tracks"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # frame 0 contributes 0, frames 1..4 contribute 5 px each (integer pixels: ±1)
    assert out["objmc"] == pytest.approx(5.0 * 4 / 5, abs=1.0) and out["num_objects"] == 2
    assert (out["protocol"], out["tracker"], out["grid_size"], out["num_frames"]) == ("draganything", "lk", 20, 14)
    gt = json.loads((tmp_path / "tracks" / "gt" / "v.json").read_text())
    assert set(gt) == {"7", "61"} and len(gt["7"]) == 5
    assert main([*args, "--num-frames", "1"]) == 0                   # frame 0 alone: the same grid points
    assert "ObjMC: 0.0000 (1 videos, 2 objects, protocol draganything" in capsys.readouterr().out
    assert main([*args[:4], "--gt", str(tmp_path)]) == 1
    assert "--real, --gen and --masks" in capsys.readouterr().err
    assert main([*args, "--random-init"]) == 1
    assert "Co-Tracker trackers only" in capsys.readouterr().err
    (tmp_path / "masks" / "v.png").unlink()
    assert main(args) == 1
    assert "no first-frame mask for v" in capsys.readouterr().err


def test_eval_vipseg_tracker_options_from_flags(tmp_path):
    from trackgo_model.cli import build_parser
    from trackgo_model.cli.eval import eval_config_from_args

    base = ["eval-vipseg", "--vipseg", "V", "--checkpoint", "C"]
    cfg = eval_config_from_args(build_parser().parse_args(
        [*base, "--cotracker-repo", "/clone", "--objmc-protocol", "draganything", "--set", "objmc_grid_size=10"]))
    assert cfg.tracker == "auto" and cfg.tracker_options == cfg.objmc_tracker_options == {"repo": "/clone"}
    assert (cfg.objmc_protocol, cfg.objmc_grid_size, cfg.objmc_channel_order) == ("draganything", 10, "bgr")
    cfg = eval_config_from_args(build_parser().parse_args([*base, "--tracker", "lk", "--cotracker-repo", "/clone"]))
    assert (cfg.tracker_options, cfg.objmc_tracker_options, cfg.objmc_protocol) == ({}, {"repo": "/clone"}, "ours")
    assert main([*base, "--set", "objmc_protocol=peer"]) == 2
