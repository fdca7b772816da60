"""Batches under failure: machine problems fail the batch and record nothing, clip problems are
reject rows, the frame checks run before the expensive stages, the batch lock, the dataset card."""
from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

from trackgo_data import build as B
from trackgo_data import process as P
from trackgo_data.shards import read_manifest


def tiny_config(**clip):
    return B.make_config("local", {
        "clip": {"num_frames": 8, "width": 256, "height": 144, "max_clips_per_video": 2, **clip},
        "filters": {"min_median_motion": 1.0},
    })


@pytest.fixture
def carphone_spec(tmp_path, sample_videos):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sample_videos["carphone"], src / "carphone.mp4")
    cfg = tiny_config()
    (spec,) = B.plan_batches(B.discover_sources(src), cfg, batch_size=4)
    return spec, cfg, tmp_path / "out"


def _unloadable_cotracker(tmp_path):
    """A real Co-Tracker backend whose code cannot load (its repo folder has no hubconf.py)."""
    from trackgo_data.track import get_tracker

    empty = tmp_path / "no-clone"
    empty.mkdir(exist_ok=True)
    return get_tracker("cotracker3_offline", repo=str(empty), device="cpu")


def test_backend_that_cannot_load_fails_the_batch_and_records_nothing(carphone_spec, tmp_path, monkeypatch):
    """The reported case: run 1 with a tracker that raises on load used to record 0 accepted /
    2 rejected (processing_error) and mark the batch complete, so run 2 with a working tracker
    reused the empty batch. Now run 1 raises and leaves no trace; run 2 does the work."""
    from trackgo_data.track.cotracker import CoTrackerUnavailable

    spec, cfg, out = carphone_spec
    segmenter, tracker = B.get_models(cfg)
    broken = _unloadable_cotracker(tmp_path)
    monkeypatch.setattr(tracker, "track", broken.track)
    with pytest.raises(P.InfrastructureError, match="stage 'track'.*CoTrackerUnavailable") as info:
        P.process_batch(spec, cfg, out)
    assert isinstance(info.value.__cause__, CoTrackerUnavailable)
    assert not list((out / "parts").iterdir())                 # no part (and no lock left behind)
    assert not list((out / "shards").iterdir())                # no shard, no temp file

    monkeypatch.undo()
    res = P.process_batch(spec, cfg, out)
    assert not res.reused and res.counts["accepted"] == 2 and res.counts["rejected"] == 0
    assert (out / "parts" / f"{spec.batch_id}.parquet").is_file()


def test_clip_data_errors_stay_reject_rows(carphone_spec, monkeypatch):
    spec, cfg, out = carphone_spec
    _, tracker = B.get_models(cfg)
    real, calls = tracker.track, []

    def picky(frames, points):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("odd content")                     # this clip's own problem
        return real(frames, points)

    monkeypatch.setattr(tracker, "track", picky)
    res = P.process_batch(spec, cfg, out)
    reasons = sorted((r["key"], r["reason"]) for r in res.rows)
    assert reasons == [("carphone-000000", "processing_error"), ("carphone-000008", None)]
    assert "ValueError: odd content" in res.rows[0]["stats_json"] + res.rows[1]["stats_json"]


def test_infrastructure_errors_are_told_from_data_errors():
    import av
    import torch

    infra = [MemoryError(), ImportError("no module named deva"), ConnectionError("hub"), TimeoutError(),
             OSError(28, "No space left on device"), torch.OutOfMemoryError("CUDA out of memory"),
             RuntimeError("CUDA error: an illegal memory access was encountered"),
             RuntimeError("cuDNN error: CUDNN_STATUS_NOT_INITIALIZED"), P.InfrastructureError("x")]
    data = [ValueError("bad shape"), RuntimeError("shape '[2, 3]' is invalid for input of size 5"),
            KeyError("x"), av.error.InvalidDataError(1094995529, "Invalid data")]
    assert [P.is_infrastructure_error(e) for e in infra] == [True] * len(infra)
    assert [P.is_infrastructure_error(e) for e in data] == [False] * len(data)
    try:  # a data-looking error raised while handling a machine error counts as the machine's
        try:
            raise MemoryError()
        except MemoryError as inner:
            raise ValueError("wrapped") from inner
    except ValueError as outer:
        assert P.is_infrastructure_error(outer)


def test_cli_build_with_unloadable_backend_exits_with_one_message(tmp_path, sample_videos, capsys):
    import argparse

    from trackgo_data import cli

    empty = tmp_path / "no-clone"
    empty.mkdir()
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "build", "--source", str(sample_videos["carphone"]), "--out",
                              str(tmp_path / "out"), "--frames", "8", "--width", "256", "--height", "144",
                              "--set", "clip.max_clips_per_video=1", "--set", "tracker.name=cotracker3_offline",
                              "--set", f"tracker.options.repo={empty}", "--set", "tracker.options.device=cpu",
                              "--no-progress"])
    assert args.func(args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trackgo data build: a batch cannot run as set up")
    assert "hubconf.py" in err[0] and "tracker.options.repo" in err[0] and "rerun to resume" in err[0]
    assert not list((tmp_path / "out" / "parts").iterdir())


def test_scene_cut_is_rejected_before_segmentation_and_tracking(tmp_path, sample_videos, monkeypatch):
    """bikes has a shot cut at frame 30: the window 24–31 is rejected as scene_cut and neither
    the segmenter nor the tracker ever sees it."""
    cfg = tiny_config(max_clips_per_video=4)
    seg, trk = B.get_models(cfg)
    seen: list[int] = []
    real_segment = seg.segment

    def spy(frames):
        seen.append(int(frames[0].astype(np.int64).sum()))
        return real_segment(frames)

    monkeypatch.setattr(seg, "segment", spy)
    rows = [row for _, row in P.iter_video(sample_videos["bikes"], cfg, seg, trk)]
    by_key = {r["key"]: r for r in rows}
    assert by_key["bikes-000024"]["reason"] == "scene_cut"
    frame_rejects = [r for r in rows if r["reason"] in ("scene_cut", "camera_motion") or
                     (r["reason"] or "").startswith("low_quality")]
    assert len(seen) == len(rows) - len(frame_rejects)
    from trackgo_data.video import read_frames

    cut_window = read_frames(sample_videos["bikes"], 24, 8, size=(256, 144))
    assert int(cut_window[0].astype(np.int64).sum()) not in seen
    assert by_key["bikes-000024"].get("num_points") is None             # never got to points


def test_batch_lock_makes_a_second_worker_wait_then_reuse(carphone_spec):
    """While one process holds a batch (an orphaned task of a killed run), a second attempt waits,
    then finds the batch recorded and returns it without writing anything."""
    spec, cfg, out = carphone_spec
    B.prepare_output(out, cfg)
    seg, trk = B.get_models(cfg)
    result: dict = {}
    with P.batch_lock(out, spec.batch_id):
        other = threading.Thread(target=lambda: result.setdefault("r", P.process_batch(spec, cfg, out)))
        other.start()
        time.sleep(0.5)
        assert other.is_alive() and not list((out / "shards").iterdir())   # waiting, not writing
        part = out / "parts" / f"{spec.batch_id}.parquet"
        mine = P._run_batch(spec, cfg, out, part, None, seg, trk)
        mtimes = {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    other.join(60)
    assert result["r"].reused and result["r"].counts == mine.counts
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == mtimes
    assert not list((out / "parts").glob(".*.lock"))


def test_dataset_card_is_written_and_regenerated(tmp_path, sample_videos):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sample_videos["carphone"], src / "carphone.mp4")
    (src / "empty.mp4").write_bytes(b"")
    out = tmp_path / "out"
    summary = B.build_dataset(src, out, tiny_config(), batch_size=1, progress=False)
    card = (out / "README.md").read_text()
    assert f"| accepted | {summary['accepted']} |" in card and summary["accepted"] == 2
    assert "| `empty_file` | 1 | 33.3% |" in card
    assert B.config_hash(tiny_config()) in card
    assert "flow `" in card and "lk `" in card                           # backends with versions
    for shard in summary["shards"]:
        assert f"| `{shard}` | 2 |" in card
    assert summary["backends"] == [{"segmenter": {"name": "flow", "version": B.get_models(tiny_config())[0].version},
                                    "tracker": {"name": "lk", "version": B.get_models(tiny_config())[1].version}}]
    # regenerated on rerun: removed → written again, identical; more sources → new counts
    (out / "README.md").unlink()
    B.build_dataset(src, out, tiny_config(), batch_size=1, progress=False)
    assert (out / "README.md").read_text() == card
    (src / "notes.txt").write_text("not a video")
    B.build_dataset(src, out, tiny_config(), batch_size=1, progress=False)
    again = (out / "README.md").read_text()
    assert "| `undecodable` | 1 | 25.0% |" in again and "| candidate clips | 4 |" in again
    assert not [p for p in out.iterdir() if p.name.startswith(".README")]  # no temp file left


def test_dataset_card_queries_run_in_duckdb(tmp_path, sample_videos):
    duckdb = pytest.importorskip("duckdb")
    from trackgo_data.card import QUERIES

    out = tmp_path / "out"
    B.build_dataset(sample_videos["carphone"], out, tiny_config(), batch_size=1, progress=False)
    rows = read_manifest(out / "manifest.parquet")
    con = duckdb.connect()
    import os

    cwd = os.getcwd()
    try:
        os.chdir(out)
        results = [con.execute(sql).fetchall() for _, sql in QUERIES]
    finally:
        os.chdir(cwd)
    assert results[0] == [("accepted", None, len(rows))]
    assert results[1] == [(rows[0]["shard"], 2, sum(r["sample_bytes"] for r in rows))]
    assert sorted(k for k, _, _ in results[2]) == sorted(r["key"] for r in rows if r["median_motion_px"] > 20)
    assert results[3][0][:2] == ("accepted", 2) and results[4] == []
