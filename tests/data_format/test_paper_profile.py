"""`trackgo data build --profile paper` end to end: upstream DEVA automatic mode (random MobileSAM +
random DEVA) and Co-Tracker3 offline from a clone's hub entry (random weights), on a real sample
video at 128×96×4, to shards that pass `trackgo data inspect` and record the random weights."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tarfile

import numpy as np
import pytest

from ..third_party import CO_TRACKER, requires_cotracker, requires_deva

pytestmark = [requires_deva, requires_cotracker]

#: tiny, fast settings: one SAM call (online setting), a coarse prompt grid, SAM's quality
#: filters off (random SAM weights never pass them), every object a candidate, filters that
#: random tracks cannot pass switched off
PAPER_SETTINGS = [
    "segmenter.options.random_init=true", "segmenter.options.sam_variant=mobile",
    "segmenter.options.points_per_side=2", "segmenter.options.pred_iou_thresh=0",
    "segmenter.options.stability_score_thresh=0", "segmenter.options.temporal_setting=online",
    "segmenter.options.detection_every=100", "segmenter.options.size=96", "segmenter.options.min_motion=0",
    "segmenter.options.device=cpu",
    "tracker.options.random_init=true", f"tracker.options.repo={CO_TRACKER}", "tracker.options.device=cpu",
    "tracker.options.model_resolution=[64,96]",
    "filters.min_median_motion=0", "filters.min_visible_ratio=0",
]


def trackgo(argv: list[str]) -> tuple[int, str, str]:
    """The `trackgo` console command in this process → (exit code, stdout, stderr)."""
    from trackgo_model.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _build_argv(src, out, settings):
    argv = ["data", "build", "--source", str(src), "--out", str(out), "--profile", "paper", "--frames", "4",
            "--width", "128", "--height", "96", "--max-clips", "1", "--no-progress"]
    for s in settings:
        argv += ["--set", s]
    return argv


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def paper_build(tmp_path_factory, sample_videos):
    tmp = tmp_path_factory.mktemp("paper")
    src = tmp / "src"
    src.mkdir()
    shutil.copy(sample_videos["bigbuckbunny"], src / "bigbuckbunny.mp4")
    out = tmp / "out"
    records = _Records()
    logger = logging.getLogger("trackgo_data")
    logger.addHandler(records)
    try:
        rc, stdout, stderr = trackgo(_build_argv(src, out, PAPER_SETTINGS))
    finally:
        logger.removeHandler(records)
    assert rc == 0, stderr
    return out, json.loads(stdout), records.messages


def _members(out):
    shards = sorted((out / "shards").glob("*.tar"))
    assert len(shards) == 1
    with tarfile.open(shards[0]) as tf:
        return {m.name.split(".", 1)[1]: tf.extractfile(m).read() for m in tf.getmembers()}


def test_paper_build_passes_inspect(paper_build):
    out, summary, _ = paper_build
    assert summary["accepted"] == 1
    assert trackgo(["data", "inspect", str(out)])[0] == 0
    m = _members(out)
    tracks = np.load(io.BytesIO(m["tracks.npy"]))
    vis = np.load(io.BytesIO(m["visibility.npy"]))
    comps = np.load(io.BytesIO(m["components.npy"]))
    masks = np.load(io.BytesIO(m["masks.npy"]))
    assert tracks.shape[0] == 4 and tracks.shape[2] == 2 and tracks.dtype == np.float32
    assert vis.shape == tracks.shape[:2] and vis.dtype == bool and vis[0].all()
    assert len(comps) == tracks.shape[1] >= 1
    # control points lie on their DEVA component at frame 0 (mask grid 12×16 of the 96×128 clip)
    cells = masks[0][(tracks[0, :, 1] // 8).astype(int), (tracks[0, :, 0] // 8).astype(int)]
    assert (cells > 0).mean() > 0.5


def test_paper_build_records_the_random_weights(paper_build):
    out, _, warnings = paper_build
    meta = json.loads(_members(out)["meta.json"])
    seg, trk = meta["backends"]["segmenter"], meta["backends"]["tracker"]
    assert seg["name"] == "deva" and seg["version"].endswith("-automatic-mobile+random-init")
    assert trk == {"name": "cotracker3_offline", "version": f"cotracker3_offline@{CO_TRACKER}+random-init"}
    cfg = json.loads((out / "build_config.json").read_text())["config"]
    assert cfg["profile"] == "paper"
    assert cfg["segmenter"]["options"]["random_init"] is True and cfg["tracker"]["options"]["random_init"] is True
    assert any("DEVA and SAM" in w and "RANDOM" in w for w in warnings)
    assert any("Co-Tracker cotracker3_offline with RANDOM" in w for w in warnings)


def test_paper_build_without_weights_is_one_clear_error(tmp_path, sample_videos):
    rc, stdout, stderr = trackgo(_build_argv(sample_videos["bigbuckbunny"], tmp_path / "out",
                                             [f"tracker.options.repo={CO_TRACKER}"]))
    assert rc != 0 and stdout == ""
    assert "deva_weights=(not set) (DEVA-propagation.pth)" in stderr
    assert "sam_weights=(not set) (sam_vit_h_4b8939.pth)" in stderr and "random_init=true" in stderr
    assert "Traceback" not in stderr and "Overwriting tiny_vit" not in stderr
    assert not list((tmp_path / "out").glob("shards/*.tar"))


def test_wan_profile_makes_81_frames_at_16_fps_through_the_upstream_backends(tmp_path, sample_videos):
    """`--profile wan`: bigbuckbunny (25 fps, 132 frames) resampled to 16 fps (85 frames), one clip of
    Wan's 81 frames — longer than Co-Tracker3's 60-frame window — through DEVA and Co-Tracker3."""
    from trackgo_data.clips import resample_indices
    from trackgo_data.video import decode_mp4, read_frames

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sample_videos["bigbuckbunny"], src / "bigbuckbunny.mp4")
    argv = _build_argv(src, tmp_path / "out", PAPER_SETTINGS)
    argv[argv.index("--profile") + 1] = "wan"
    del argv[argv.index("--frames"):argv.index("--frames") + 2]  # the profile's 81
    rc, stdout, stderr = trackgo(argv)
    assert rc == 0, stderr
    assert json.loads(stdout)["accepted"] == 1
    m = _members(tmp_path / "out")
    meta = json.loads(m["meta.json"])
    assert (meta["num_frames"], meta["fps"], meta["profile"]) == (81, 16.0, "wan")
    assert np.load(io.BytesIO(m["tracks.npy"])).shape[0] == 81
    video = decode_mp4(m["video.mp4"]).astype(float)
    indices = resample_indices(132, 25.0, 16.0)
    assert len(indices) == 85 and video.shape == (81, 96, 128, 3)
    source = read_frames(src / "bigbuckbunny.mp4", size=(128, 96)).astype(float)
    err = {off: np.abs(video - source[np.clip(np.array(indices[:81]) + off, 0, 131)]).mean() for off in (-1, 0, 1)}
    assert err[0] < 5 and err[0] < 0.9 * min(err[-1], err[1])  # those source frames, not their neighbours
