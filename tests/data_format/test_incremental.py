"""The source is the unit of record: adding, changing or removing k sources of a built folder
processes exactly those k; removed sources leave the manifest and the loader; compact rewrites
the shards that hold them; folders written before per-source records keep working."""
from __future__ import annotations

import os
import shutil

import pytest

from trackgo_data import build as B
from trackgo_data import process as P
from trackgo_data.loader import make_dataset
from trackgo_data.shards import read_manifest, read_part


def tiny_config():
    return B.make_config("local", {
        "clip": {"num_frames": 8, "width": 256, "height": 144, "max_clips_per_video": 1},
        "filters": {"min_median_motion": 1.0},
    })


def _copy(video, dst):
    try:
        os.link(video, dst)
    except OSError:
        shutil.copyfile(video, dst)


@pytest.fixture
def corpus(tmp_path, sample_videos):
    """12 sources (names c01…c12: batches of 4 by position) built into ``out``."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(1, 13):
        _copy(sample_videos["carphone"], src / f"c{i:02d}.mp4")
    out = tmp_path / "out"
    summary = B.build_dataset(src, out, tiny_config(), batch_size=4, progress=False)
    assert summary["accepted"] == 12 and summary["sources_processed"] == 12
    return src, out


def _processed(monkeypatch) -> list[str]:
    """Sources handed to the per-video stage from now on."""
    seen: list[str] = []
    real = P.iter_video

    def spy(path, *args, **kwargs):
        seen.append(os.path.basename(str(path)))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(P, "iter_video", spy)
    return seen


def _files(out):
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for d in ("shards", "parts") for p in sorted((out / d).iterdir())}


def _accepted(out):
    return sorted(r["key"] for r in read_manifest(out / "manifest.parquet") if r["status"] == "accepted")


def test_adding_a_source_that_sorts_first_processes_only_it(corpus, sample_videos, monkeypatch):
    src, out = corpus
    before = _files(out)
    _copy(sample_videos["carphone"], src / "a00.mp4")          # shifts every position-based batch
    plan = B.plan_summary(src, out, tiny_config(), batch_size=4)
    assert (plan["sources"], plan["sources_done"], plan["sources_to_run"], plan["sources_removed"]) == (13, 12, 1, 0)
    assert plan["batches_to_run"] == 1
    seen = _processed(monkeypatch)
    summary = B.build_dataset(src, out, tiny_config(), batch_size=4, progress=False)
    assert seen == ["a00.mp4"] and summary["sources_processed"] == 1
    assert summary["accepted"] == 13 and "a00-000000" in _accepted(out)
    after = _files(out)
    assert {k: v for k, v in after.items() if k in before} == before    # nobody else's files touched
    assert B.plan_summary(src, out, tiny_config(), batch_size=4)["sources_to_run"] == 0


def test_changed_source_is_the_only_one_redone_and_its_old_rows_leave(corpus, sample_videos, monkeypatch):
    src, out = corpus
    (src / "c05.mp4").unlink()
    _copy(sample_videos["bigbuckbunny"], src / "c05.mp4")        # same name, other content
    plan = B.plan_summary(src, out, tiny_config(), batch_size=4)
    assert (plan["sources_done"], plan["sources_to_run"], plan["sources_removed"]) == (11, 1, 0)
    seen = _processed(monkeypatch)
    B.build_dataset(src, out, tiny_config(), batch_size=4, progress=False)
    assert seen == ["c05.mp4"]
    rows = [r for r in read_manifest(out / "manifest.parquet") if r["video_id"] == "c05"]
    assert len(rows) == 1 and rows[0]["fps"] == 25.0                   # bigbuckbunny (carphone: 29.97)
    parts = {r["batch_id"] for r in rows}
    _, info = read_part(out / "parts" / f"{parts.pop()}.parquet")
    assert [rec["source"] for rec in info["records"]] == [str(src / "c05.mp4")]


def test_removing_a_source_reprocesses_nothing_and_compact_drops_its_samples(corpus, monkeypatch):
    src, out = corpus
    before = _files(out)
    (src / "c03.mp4").unlink()
    plan = B.plan_summary(src, out, tiny_config(), batch_size=4)
    assert (plan["sources"], plan["sources_to_run"], plan["sources_removed"], plan["batches_to_run"]) == (11, 0, 1, 0)
    seen = _processed(monkeypatch)
    summary = B.build_dataset(src, out, tiny_config(), batch_size=4, progress=False)
    assert seen == [] and summary["sources_processed"] == 0 and summary["accepted"] == 11
    assert _files(out) == before                                        # no shard or part rewritten
    assert "c03-000000" not in _accepted(out)
    loaded = sorted(s.key for s in make_dataset(out / "shards", batch_size=0))
    assert loaded == _accepted(out) and "c03-000000" not in loaded      # the loader follows the manifest

    result = B.compact(out)
    assert result["samples_dropped"] == 1 and result["shards_rewritten"] == 1
    rewritten = [k for k, v in _files(out).items() if k in before and v != before[k]]
    assert sorted(k.split("/")[0] for k in rewritten) == ["parts", "shards"]   # one shard, its part
    everything = sorted(s.key for s in make_dataset(sorted((out / "shards").glob("*.tar")), batch_size=0))
    assert everything == _accepted(out)                                 # the shards themselves now
    assert B.compact(out)["samples_dropped"] == 0                       # idempotent

    _copy(src / "c04.mp4", src / "c03.mp4")                             # back again: processed anew
    seen.clear()
    B.build_dataset(src, out, tiny_config(), batch_size=4, progress=False)
    assert seen == ["c03.mp4"] and "c03-000000" in _accepted(out)


def test_folder_written_before_per_source_records_keeps_working(corpus, sample_videos, monkeypatch):
    """Parts of the earlier format (no per-source records): a batch whose sources are unchanged
    is adopted as it is; adding a source then processes only that one."""
    src, out = corpus
    for part in (out / "parts").glob("*.parquet"):
        rows, info = read_part(part)
        legacy = {k: v for k, v in info.items() if k not in ("records", "format", "removed")}
        from trackgo_data.shards import write_part

        write_part(part, rows, legacy)
    before = _files(out)
    seen = _processed(monkeypatch)
    summary = B.build_dataset(src, out, tiny_config(), batch_size=4, progress=False)
    assert seen == [] and summary["accepted"] == 12
    assert {k: v[1] for k, v in _files(out).items() if k.startswith("shards/")} == \
        {k: v[1] for k, v in before.items() if k.startswith("shards/")}
    _copy(sample_videos["carphone"], src / "a00.mp4")
    B.build_dataset(src, out, tiny_config(), batch_size=4, progress=False)
    assert seen == ["a00.mp4"]


def test_max_clips_rerun_adds_nothing(tmp_path, sample_videos, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b", "c"):
        _copy(sample_videos["carphone"], src / f"{name}.mp4")
    cfg = B.make_config("local", {"clip": {"num_frames": 8, "width": 256, "height": 144, "max_clips_per_video": 2},
                                  "filters": {"min_median_motion": 1.0}})
    first = B.build_dataset(src, tmp_path / "out", cfg, max_clips=3, batch_size=4, progress=False)
    assert first["accepted"] == 3
    seen = _processed(monkeypatch)
    again = B.build_dataset(src, tmp_path / "out", cfg, max_clips=3, batch_size=4, progress=False)
    assert seen == [] and again["accepted"] == 3
    whole = B.build_dataset(src, tmp_path / "out", cfg, batch_size=4, progress=False)
    assert whole["accepted"] == 6 and seen == ["b.mp4", "c.mp4"]        # a was complete, b was cut
