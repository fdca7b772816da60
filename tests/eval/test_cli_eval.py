import json

import numpy as np
import pytest
import torch
from PIL import Image

from trackgo_data.video import encode_lossless_rgb
from trackgo_model.cli import main
from trackgo_model.eval.metrics import load_video_dir
from trackgo_model.eval.metrics.fvd import fvd_from_videos
from trackgo_model.eval.metrics.objmc import tracks_to_peer, write_peer_tracks

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
    want = fvd_from_videos(torch.jit.load(str(i3d)), real, list(load_video_dir(tmp_path / "gen").values()))
    assert out["fvd"] == pytest.approx(want) and out["real_clips"] == 3 and want > 0
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
    assert main(["eval-vipseg", "--vipseg", str(tmp_path), "--checkpoint", str(tmp_path)]) == 2
    assert "not a VIPSeg_720P folder" in capsys.readouterr().err
    assert main(["eval-vipseg", "--vipseg", str(tmp_path), "--checkpoint", str(tmp_path), "--set", "nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
