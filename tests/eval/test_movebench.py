"""MoveBench's protocol on a synthetic set in its layout: reading, PSNR/SSIM/EPE by hand, and
`trackgo eval-movebench` end to end on the tiny Wan folder (generate, score, rescore)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from trackgo_data.config import ConfigError
from trackgo_model.eval.movebench import MoveBenchConfig, epe, psnr_ssim, read_movebench

from .tiny_extractors import TinyFIDNet, TinyI3D

FRAMES, H, W = 9, 32, 48


def make_movebench(root, video, clips=("a", "b"), batch_dim=False, language="en"):
    """MoveBench's layout with real frames of ``video`` and straight tracks: clip i starts at frame 10·i."""
    from trackgo_data.video import read_frames
    from trackgo_data.video_encode import encode_lossless_rgb

    base = root / language
    (base / "first_frame").mkdir(parents=True)
    (base / "track" / "single").mkdir(parents=True)
    lines = []
    for i, vid in enumerate(clips):
        frames = read_frames(video, start=10 * i, count=FRAMES, size=(W, H))
        encode_lossless_rgb(frames, base / "video" / f"{vid}.mp4", fps=16)
        Image.fromarray(frames[0]).save(base / "first_frame" / f"{vid}.jpg", quality=95)
        start = np.array([[10.0, 10.0], [30.0, 20.0], [20.0, 25.0]], np.float32)
        tracks = start[None] + np.arange(FRAMES, dtype=np.float32)[:, None, None] * np.float32([1.0, 0.5])
        vis = np.ones((FRAMES, 3), bool)
        vis[5:, 2] = False
        np.save(base / "track" / "single" / f"{vid}_tracks.npy", tracks[None] if batch_dim else tracks)
        np.save(base / "track" / "single" / f"{vid}_visibility.npy", vis[None] if batch_dim else vis)
        lines.append(f"{vid}.mp4,A scene, with a comma {i}")
    (base / "single_track.txt").write_text("\n".join(lines) + "\n")
    return root


def test_read_the_layout(tmp_path, sample_videos):
    root = make_movebench(tmp_path / "mb", sample_videos["carphone"], batch_dim=True)
    clips = read_movebench(MoveBenchConfig(movebench=str(root)))
    assert [c.video_id for c in clips] == ["a", "b"] and clips[0].caption == "A scene, with a comma 0"
    assert clips[0].tracks.shape == (FRAMES, 3, 2) and clips[0].visibility.shape == (FRAMES, 3)
    assert clips[0].image.shape == (H, W, 3) and not clips[0].components.any()
    assert len(read_movebench(MoveBenchConfig(movebench=str(root), max_videos=1))) == 1
    (root / "en" / "track" / "single" / "b_visibility.npy").unlink()
    with pytest.raises(ConfigError, match="b_visibility.npy"):
        read_movebench(MoveBenchConfig(movebench=str(root)))
    with pytest.raises(ConfigError, match="multi_track.txt"):
        read_movebench(MoveBenchConfig(movebench=str(root), mode="multi"))


def test_psnr_ssim_and_epe_by_hand():
    rng = np.random.default_rng(0)
    real = rng.integers(20, 200, (3, 16, 16, 3), dtype=np.uint8)
    psnr, ssim = psnr_ssim(real, real + np.uint8(10))
    assert psnr == pytest.approx(20 * math.log10(255 / 10)) and ssim < 1
    assert psnr_ssim(real, real) == (100.0, pytest.approx(1.0))
    tracks = np.zeros((3, 2, 2))
    tracked = tracks.copy()
    tracked[1, 0] = [3, 4]   # 5 px
    tracked[2, 1] = [6, 8]   # 10 px, but hidden in the given tracks
    tracked[0, 0] = [9, 9]   # frame 0 is not counted
    vis = np.ones((3, 2), bool)
    vis[2, 1] = False
    assert epe(tracks, vis, tracked) == (5.0, 3)


def test_eval_movebench_end_to_end(tmp_path, sample_videos, capsys):
    from trackgo_model.cli import main
    from trackgo_model.configs import TrackGoConfig
    from trackgo_model.eval.movebench import run
    from trackgo_model.wan import TrackGoWan, load_transformer
    from trackgo_model.wan.tiny import init_tiny_wan

    root = make_movebench(tmp_path / "mb", sample_videos["carphone"])
    wan = init_tiny_wan(tmp_path / "wan")
    TrackGoWan(load_transformer(wan), TrackGoConfig(alpha_frames=25)).save_trackgo(tmp_path / "ckpt")
    out = tmp_path / "out"
    argv = ["eval-movebench", "--movebench", str(root), "--wan", str(wan), "--checkpoint", str(tmp_path / "ckpt"),
            "--out", str(out), "--steps", "2", "--guidance", "1", "--tracker", "lk", "--device", "cpu"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_videos"] == 2 and set(printed["missing"]) == {"fid", "fvd"}  # no extractor weights here
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    assert 0 < m["psnr"]["value"] < 60 and -1 <= m["ssim"]["value"] <= 1 and m["epe"]["value"] >= 0
    gen = sorted(p.name for p in (out / "generated").glob("*.mp4"))
    assert gen == ["a.mp4", "b.mp4"] and (out / "per_clip.csv").read_text().count("\n") == 3
    # rescoring the saved clips: the same figures, FID/FVD with (tiny) extractors now
    from trackgo_data.track import get_tracker

    cfg = MoveBenchConfig(movebench=str(root), out=str(out), tracker="lk", device="cpu")
    again = run(cfg, score_only=True, tracker=get_tracker("lk"), fid_model=TinyFIDNet().eval(),
                fvd_model=torch.jit.script(TinyI3D()))
    for k in ("psnr", "ssim", "epe"):
        assert again["metrics"][k]["value"] == pytest.approx(m[k]["value"])
    assert again["metrics"]["fid"]["status"] == again["metrics"]["fvd"]["status"] == "ok"
    # a generator that returns the real clips scores the protocol's best: SSIM 1, EPE of the tracker alone
    import shutil

    for vid in ("a", "b"):
        shutil.copy(out / "real" / f"{vid}.mp4", out / "generated" / f"{vid}.mp4")
    perfect = run(cfg, score_only=True, tracker=get_tracker("lk"))
    assert perfect["metrics"]["ssim"]["value"] == pytest.approx(1.0)
    assert perfect["metrics"]["psnr"]["value"] == 100.0
    assert main(argv[:1] + ["--movebench", str(tmp_path / "none"), "--score-only"]) == 2
