"""Machine problems fail the batch and record nothing; only the data's own problems are rejects.

- storage errors by errno, wherever they happen (plan, probe, open, decode, write, record): no
  reject recorded, and the dataset after the fault is byte for byte a clean run's;
- a source that vanished between planning and processing is reported removed, not rejected;
- a backend that fails to load, whatever the exception, fails the batch naming the setting;
- the circuit breaker: one error repeated on consecutive clips in a backend stage fails the batch;
- only the explicit cause (``raise … from``) links errors, never the implicit context.
"""
from __future__ import annotations

import argparse
import errno
import os
import shutil

import pytest

from trackgo_data import build as B
from trackgo_data import process as P
from trackgo_data.shards import read_manifest

from ..third_party import CO_TRACKER, requires_cotracker, requires_deva
from .storage_faults import ERRNOS, PLACES, storage_fault


def tiny_config():
    return B.make_config("local", {
        "clip": {"num_frames": 8, "width": 256, "height": 144, "max_clips_per_video": 1},
        "filters": {"min_median_motion": 1.0},
    })


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory, sample_videos):
    src = tmp_path_factory.mktemp("src")
    shutil.copy(sample_videos["bikes"], src / "a.mp4")
    shutil.copy(sample_videos["carphone"], src / "b.mp4")
    return src


@pytest.fixture(scope="module")
def clean(tmp_path_factory, two_sources):
    out = tmp_path_factory.mktemp("clean")
    B.build_dataset(two_sources, out, tiny_config(), batch_size=4, progress=False)
    return out


def _dataset(out):
    """Everything a user gets: shard bytes and manifest rows."""
    shards = {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}
    return shards, read_manifest(out / "manifest.parquet")


def _nothing_recorded(out):
    parts = [p.name for p in (out / "parts").iterdir()] if (out / "parts").is_dir() else []
    shards = [p.name for p in (out / "shards").iterdir()] if (out / "shards").is_dir() else []
    return parts == [] and shards == [] and not (out / "manifest.parquet").exists()


@pytest.mark.parametrize("place", PLACES)
def test_storage_errno_never_becomes_a_reject(place, two_sources, clean, tmp_path):
    """Each errno at this place (on the batch's second source, after the first one's clip is
    done): the batch fails as infrastructure and nothing is recorded; the run after the fault
    gives the clean run's dataset byte for byte."""
    out = tmp_path / "out"
    for err in ERRNOS:
        with storage_fault(place, err, two_sources / "b.mp4"):
            with pytest.raises(Exception) as info:
                B.build_dataset(two_sources, out, tiny_config(), batch_size=4, progress=False)
        assert P.is_infrastructure_error(info.value), (errno.errorcode[err], repr(info.value))
        assert _nothing_recorded(out), (errno.errorcode[err], list(out.rglob("*")))
    B.build_dataset(two_sources, out, tiny_config(), batch_size=4, progress=False)
    assert _dataset(out) == _dataset(clean)


def _data_cli(argv):
    from trackgo_data import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def test_storage_error_exits_3_with_one_message(two_sources, tmp_path, capsys):
    out = tmp_path / "out"
    with storage_fault("probe", errno.ESTALE, two_sources / "b.mp4"):
        rc = _data_cli(["build", "--source", str(two_sources), "--out", str(out), "--frames", "8", "--width", "256",
                        "--height", "144", "--set", "clip.max_clips_per_video=1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1 and "Stale file handle" in err[0] and "b.mp4" in err[0]
    assert _nothing_recorded(out)


def test_vanished_source_is_reported_removed_not_rejected(two_sources, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(two_sources, src)
    out = tmp_path / "out"
    plan = B.plan_build(src, out, tiny_config(), batch_size=4)
    (src / "b.mp4").unlink()                                  # between planning and processing
    res = P.process_batch(plan.batches[0], tiny_config(), out)
    assert res.removed == [str(src / "b.mp4")]
    assert [r["video_id"] for r in res.rows] == ["a"]
    summary = B.build_dataset(src, out, tiny_config(), batch_size=4, progress=False)
    assert summary["sources"] == 1 and summary["sources_processed"] == 0          # a's record is reused
    assert [r["video_id"] for r in read_manifest(out / "manifest.parquet")] == ["a"]


# ---------------------------------------------------------------------------- backends that cannot load

TYPOS = [
    (["tracker.name=lkk"], "tracker.name"),
    (["segmenter.name=flw"], "segmenter.name"),
    (["tracker.options.win_sizee=15"], "tracker.options.win_sizee"),
    (["segmenter.options.max_componnets=3"], "segmenter.options.max_componnets"),
    # the reported case: a repo path with a typo is taken for a GitHub spec, torch.hub raises ValueError
    (["tracker.name=cotracker3_offline", "tracker.options.repo=/nonexistent/co-trackr", "tracker.options.device=cpu"],
     "tracker.options.repo"),
]


def _typo_case(settings, setting, tmp_path, capsys, sample_videos):
    out = tmp_path / "out"
    argv = ["build", "--source", str(sample_videos["carphone"]), "--out", str(out), "--frames", "8", "--width",
            "256", "--height", "144", "--set", "clip.max_clips_per_video=2", "--no-progress"]
    for s in settings:
        argv += ["--set", s]
    rc = _data_cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3, err
    assert len(err) == 1 and setting in err[0], err
    assert not list((out / "parts").iterdir()) and not (out / "manifest.parquet").exists()


@pytest.mark.parametrize("settings,setting", TYPOS, ids=[t[1] for t in TYPOS])
def test_backend_typo_exits_3_naming_the_setting_and_records_nothing(settings, setting, tmp_path, capsys,
                                                                      sample_videos):
    _typo_case(settings, setting, tmp_path, capsys, sample_videos)


@requires_cotracker
def test_cotracker_checkpoint_typo(tmp_path, capsys, sample_videos):
    _typo_case(["tracker.name=cotracker3_offline", f"tracker.options.repo={CO_TRACKER}", "tracker.options.device=cpu",
                "tracker.options.checkpoint=/nonexistent/scaled_ofline.pth"], "tracker.options.checkpoint",
               tmp_path, capsys, sample_videos)


@requires_deva
def test_deva_weights_typo(tmp_path, capsys, sample_videos):
    _typo_case(["segmenter.name=deva", "segmenter.options.deva_weights=/nonexistent/DEVA-propagaton.pth",
                "segmenter.options.sam_weights=/nonexistent/sam_vit_h.pth"], "segmenter.options.deva_weights",
               tmp_path, capsys, sample_videos)


def test_backends_load_before_any_clip(two_sources, tmp_path, monkeypatch):
    """A backend that raises a plain ValueError while loading (not a known 'unavailable' type)
    fails the batch before any source is opened."""
    from trackgo_data.track import lk

    opened: list[str] = []
    real = P.iter_video
    monkeypatch.setattr(P, "iter_video", lambda path, *a, **k: opened.append(str(path)) or real(path, *a, **k))
    monkeypatch.setattr(lk.LKTracker, "load", lambda self: (_ for _ in ()).throw(ValueError("bad repo spec")),
                        raising=False)
    cfg = B.make_config("local", {"clip": {"num_frames": 8, "width": 256, "height": 144},
                                  "tracker": {"options": {"win_size": 17}}})     # not the cached instance
    with pytest.raises(P.InfrastructureError, match="tracker 'lk'.*ValueError: bad repo spec"):
        B.build_dataset(two_sources, tmp_path / "out", cfg, batch_size=4, progress=False)
    assert opened == []


# --------------------------------------------------------------------------------------- the breaker

def test_same_error_on_consecutive_clips_trips_the_breaker(two_sources, tmp_path, monkeypatch):
    cfg = B.make_config("local", {"clip": {"num_frames": 8, "width": 256, "height": 144, "max_clips_per_video": 2},
                                  "filters": {"min_median_motion": 1.0}})
    _, tracker = B.get_models(cfg)
    monkeypatch.setattr(tracker, "track", lambda frames, points: (_ for _ in ()).throw(
        RuntimeError("expected scalar type Half but found Float")))
    with pytest.raises(P.InfrastructureError, match=r"3 consecutive clips.*stage 'track'.*expected scalar type"):
        B.build_dataset(two_sources, tmp_path / "out", cfg, batch_size=4, progress=False)
    assert _nothing_recorded(tmp_path / "out")


def test_different_errors_stay_rows(two_sources, tmp_path, monkeypatch):
    cfg = B.make_config("local", {"clip": {"num_frames": 8, "width": 256, "height": 144, "max_clips_per_video": 2},
                                  "filters": {"min_median_motion": 1.0}})
    _, tracker = B.get_models(cfg)
    calls = []

    def odd(frames, points):
        calls.append(1)
        raise ValueError(f"odd content #{len(calls)}")

    monkeypatch.setattr(tracker, "track", odd)
    summary = B.build_dataset(two_sources, tmp_path / "out", cfg, batch_size=4, progress=False)
    assert summary["rejected_by_reason"].get("processing_error") == len(calls) >= 3


# ----------------------------------------------------------------------------------- cause, not context

def test_only_the_explicit_cause_links_errors():
    try:  # a data error raised while some library handled a storage error: still the data's
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError:
            raise ValueError("frame 3 has odd size")
    except ValueError as exc:
        implicit = exc
    try:
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError as inner:
            raise ValueError("read failed") from inner
    except ValueError as exc:
        explicit = exc
    assert not P.is_infrastructure_error(implicit)
    assert P.is_infrastructure_error(explicit)


def test_errno_decides_not_the_class():
    import av

    storage = [OSError(e, os.strerror(e)) for e in ERRNOS] + [
        av.error.OSError(errno.EIO, "Input/output error"), PermissionError(errno.EACCES, "Permission denied")]
    data = [OSError("image file is truncated"), av.error.InvalidDataError(1094995529, "Invalid data"),
            ValueError("bad shape")]
    assert [P.is_infrastructure_error(e) for e in storage] == [True] * len(storage)
    assert [P.is_infrastructure_error(e) for e in data] == [False] * len(data)
