"""In-process builder: manifest rows for good and bad inputs, reruns, resume after a crash, caps."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from trackgo_data import build as B
from trackgo_data.inspect import inspect_shards
from trackgo_data.loader import make_dataset
from trackgo_data.shards import read_manifest
from trackgo_data.video import encode_mp4


def small_config(**filters):
    return B.make_config("local", {
        "clip": {"num_frames": 8, "width": 256, "height": 144, "max_clips_per_video": 2},
        "filters": {"min_median_motion": 1.0, **filters},
    })


def _snapshot(out):
    """Bytes of every file; for shards and batch parts also the mtime (untouched = not redone)."""
    snap = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != "summary.json":
            rel = p.relative_to(out).as_posix()
            keep_time = rel.startswith(("shards/", "parts/"))
            snap[rel] = (p.stat().st_mtime_ns if keep_time else None, p.read_bytes())
    return snap


@pytest.fixture(scope="module")
def bad_source_dir(tmp_path_factory, sample_videos):
    d = tmp_path_factory.mktemp("src")
    shutil.copy(sample_videos["carphone"], d / "carphone.mp4")
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.txt").write_text("not a video\n")
    (d / "truncated.mp4").write_bytes(sample_videos["carphone"].read_bytes()[:2000])
    rng = np.random.default_rng(0)
    encode_mp4(rng.integers(0, 255, (10, 48, 64, 3), dtype=np.uint8), d / "tiny.mp4", fps=25)
    encode_mp4(rng.integers(0, 255, (4, 144, 256, 3), dtype=np.uint8), d / "short.mp4", fps=25)
    return d


@pytest.fixture(scope="module")
def built(bad_source_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    summary = B.build_dataset(bad_source_dir, out, small_config(), batch_size=4, progress=False)
    return out, summary


def test_manifest_has_accepted_and_rejected_rows(built):
    out, summary = built
    rows = {r["key"]: r for r in read_manifest(out / "manifest.parquet")}
    assert rows["empty-000000"]["reason"] == "empty_file"
    assert rows["notes-000000"]["reason"] == "undecodable"
    assert rows["tiny-000000"]["reason"] == "too_small"
    assert rows["short-000000"]["reason"] == "too_short"
    assert rows["truncated-000000"]["status"] == "rejected"
    assert rows["truncated-000000"]["reason"] in ("undecodable", "too_short")
    accepted = sorted(k for k, r in rows.items() if r["status"] == "accepted")
    assert accepted == ["carphone-000000", "carphone-000008"]
    for k in accepted:
        assert rows[k]["shard"].startswith("shards/") and (out / rows[k]["shard"]).is_file()
        assert rows[k]["median_motion_px"] > 1.0 and 0 < rows[k]["visible_ratio"] <= 1
        assert rows[k]["num_points"] >= 16 and rows[k]["reason"] is None
    for k, r in rows.items():
        if r["status"] == "rejected":
            assert r["shard"] is None and r["sample_bytes"] is None
    assert summary["accepted"] == 2 and summary["rejected"] == 5 == sum(summary["rejected_by_reason"].values())
    assert summary["shard_bytes_per_sample"] > 0
    assert set(summary["seconds"]) >= {"decode", "segment", "points", "track", "render", "filter", "encode", "write"}
    assert (out / "build_config.json").is_file()


def test_built_shards_pass_inspect_and_load(built):
    out, _ = built
    shards = sorted((out / "shards").glob("*.tar"))
    report = inspect_shards(shards)
    assert report.ok, report.problems
    samples = list(make_dataset(shards, batch_size=0))
    assert sorted(s.key for s in samples) == ["carphone-000000", "carphone-000008"]
    s = samples[0]
    assert s.video.shape == (8, 144, 256, 3) and s.masks.shape == (8, 18, 32)
    assert s.meta["backends"]["segmenter"]["name"] == "flow" and s.meta["backends"]["tracker"]["name"] == "lk"
    assert s.meta["components"] and s.meta["config_hash"] == B.config_hash(small_config())


def test_rerun_adds_nothing(built, bad_source_dir):
    out, summary = built
    before = _snapshot(out)
    again = B.build_dataset(bad_source_dir, out, small_config(), batch_size=4, progress=False)
    assert _snapshot(out) == before  # every file byte-identical and untouched (no recomputation)
    run = ("seconds", "sources_processed", "batches_run")
    assert {k: v for k, v in again.items() if k not in run} == {k: v for k, v in summary.items() if k not in run}
    assert (again["sources_processed"], again["batches_run"]) == (0, 0)
    assert (summary["sources_processed"], summary["batches_run"]) == (6, 2)


def test_other_config_on_same_output_is_refused(built, bad_source_dir):
    out, _ = built
    with pytest.raises(B.ConfigError, match="another config"):
        B.build_dataset(bad_source_dir, out, small_config(min_median_motion=2.0), progress=False)


class Killed(BaseException):
    """Stands for the process being killed (not an ordinary, recordable error)."""


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, sample_videos, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(sample_videos["carphone"], src / f"{name}.mp4")
    cfg = B.make_config("local", {"clip": {"num_frames": 8, "width": 256, "height": 144, "max_clips_per_video": 1},
                                  "filters": {"min_median_motion": 1.0}})
    whole = B.build_dataset(src, tmp_path / "whole", cfg, batch_size=1, progress=False)

    segmenter, tracker = B.get_models(cfg)
    real_track, calls = tracker.track, []

    def dying_track(frames, points):
        calls.append(1)
        if len(calls) == 2:  # inside the second batch, after the first batch completed
            raise Killed()
        return real_track(frames, points)

    monkeypatch.setattr(tracker, "track", dying_track)
    with pytest.raises(Killed):
        B.build_dataset(src, tmp_path / "resumed", cfg, batch_size=1, progress=False)
    resumed = tmp_path / "resumed"
    assert len(list((resumed / "parts").glob("*.parquet"))) == 1
    assert len(list((resumed / "shards").glob("*.tar"))) == 1  # the dying batch published nothing
    assert not list((resumed / "shards").glob("*.tmp"))
    monkeypatch.setattr(tracker, "track", real_track)
    again = B.build_dataset(src, resumed, cfg, batch_size=1, progress=False)

    def accepted(out):
        return sorted(r["key"] for r in read_manifest(out / "manifest.parquet") if r["status"] == "accepted")

    assert accepted(resumed) == accepted(tmp_path / "whole") == ["a-000000", "b-000000", "c-000000"]
    assert again["shards"] == whole["shards"]
    for rel in whole["shards"]:  # byte-reproducible shards: the resumed ones equal the others
        assert (resumed / rel).read_bytes() == (tmp_path / "whole" / rel).read_bytes()


def test_max_clips_caps_accepted_exactly(tmp_path, sample_videos):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b"):
        shutil.copy(sample_videos["carphone"], src / f"{name}.mp4")
    s = B.build_dataset(src, tmp_path / "out", small_config(), max_clips=3, batch_size=1, progress=False)
    assert s["accepted"] == 3
    rows = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert sorted(r["key"] for r in rows if r["status"] == "accepted") == ["a-000000", "a-000008", "b-000000"]


def test_discover_sources_forms(tmp_path, sample_videos):
    (tmp_path / "x.mp4").write_bytes(b"1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "y.mov").write_bytes(b"2")
    (tmp_path / ".hidden").write_bytes(b"3")
    assert B.discover_sources(tmp_path) == [tmp_path / "sub" / "y.mov", tmp_path / "x.mp4"]
    assert B.discover_sources(str(tmp_path / "*.mp4")) == [tmp_path / "x.mp4"]
    lst = tmp_path / "list.txt"
    lst.write_text("# sources\nx.mp4\nsub/y.mov\n")
    assert B.discover_sources(lst) == [(tmp_path / "sub" / "y.mov").resolve(), (tmp_path / "x.mp4").resolve()]
    assert B.discover_sources("samples") == sorted(sample_videos.values())
    with pytest.raises(FileNotFoundError):
        B.discover_sources(str(tmp_path / "nothing-*.mp4"))


def test_plan_batches_ids_follow_content_and_config(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"aaa")
    b.write_bytes(b"bbb")
    cfg = small_config()
    p1 = B.plan_batches([a, b], cfg, batch_size=1)
    assert [x.sources for x in p1] == [[str(a)], [str(b)]]
    assert B.plan_batches([a, b], cfg, batch_size=1)[0].batch_id == p1[0].batch_id
    assert B.plan_batches([a, b], small_config(min_median_motion=3.0), 1)[0].batch_id != p1[0].batch_id
    a.write_bytes(b"changed")
    assert B.plan_batches([a, b], cfg, batch_size=1)[0].batch_id != p1[0].batch_id
    assert B.plan_batches([a, b], cfg, batch_size=1)[1].batch_id == p1[1].batch_id
    assert "." not in p1[0].batch_id


def _fingerprint_by_hand(path, block=4096, blocks=8):
    """blake2b-160 of size, mtime_ns, then the bytes at ``blocks`` offsets spread evenly from 0 to
    size − block."""
    import hashlib
    import os

    st = os.stat(path)
    data = open(path, "rb").read()
    h = hashlib.blake2b(f"{st.st_size}:{st.st_mtime_ns}".encode(), digest_size=20)
    if st.st_size <= block * blocks:
        h.update(data)
    else:
        for i in range(blocks):
            off = int(i * (st.st_size - block) / (blocks - 1) + 0.5)          # nearest, halves up
            h.update(data[off:off + block])
    return h.hexdigest()


def test_fingerprints_read_sampled_blocks_and_see_changes(tmp_path):
    """Planning reads ≤ 32 KiB per file: size + mtime + 8 sampled blocks (a second, plain
    implementation agrees, also from the thread pool); a rewrite, a touch, an edit inside a
    sampled block invalidate; an edit between blocks that keeps size and mtime does not."""
    import os

    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate((10, 30_000, 32_768, 5_000_000)):
        p = tmp_path / f"v{i}.mp4"
        p.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        paths.append(p)
    paths.insert(2, tmp_path / "gone.mp4")
    want = [_fingerprint_by_hand(p) if p.exists() else "missing" for p in paths]
    assert B.fingerprints(paths, threads=3, chunk=2) == want == B.fingerprints(paths, threads=1)

    big = paths[-1]
    st = os.stat(big)
    before = B.file_fingerprint(big)
    data = bytearray(big.read_bytes())
    off = round(3 * (len(data) - 4096) / 7) + 100                        # inside the 4th sampled block
    data[off] ^= 0xFF
    big.write_bytes(bytes(data))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))                   # same size, same mtime
    assert B.file_fingerprint(big) != before
    data[off] ^= 0xFF
    data[off + 100_000] ^= 0xFF                                          # between sampled blocks
    big.write_bytes(bytes(data))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert B.file_fingerprint(big) == before                             # the documented blind spot
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 1))               # a touch (or any rewrite)
    assert B.file_fingerprint(big) != before


def test_plan_summary_and_cli_plan_write_nothing(built, bad_source_dir, tmp_path, capsys):
    import argparse
    import json

    from trackgo_data import cli

    out, summary = built
    plan = B.plan_summary(bad_source_dir, out, small_config(), batch_size=4)
    assert plan["sources"] == 6 and plan["sources_done"] == 6 and plan["sources_to_run"] == 0
    assert plan["batches_to_run"] == 0 and plan["sources_removed"] == 0 and plan["output"] == "same config"
    # 6 probed sources: carphone gives 2 windows (max_clips_per_video 2), the 5 others are unusable
    assert (plan["probed"], plan["probed_unusable"]) == (6, 5)
    assert plan["estimated_clips"] == round(2 / 6 * 6) == 2
    assert B.plan_summary(bad_source_dir, out, small_config(min_median_motion=2.0))["output"].startswith("other config")
    fresh = tmp_path / "fresh"
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "plan", "--source", str(bad_source_dir), "--out", str(fresh), "--json",
                              "--frames", "8", "--width", "256", "--height", "144",
                              "--set", "clip.max_clips_per_video=2", "--set", "filters.min_median_motion=1.0"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sources_done"] == 0 and printed["output"] == "new" and printed["batches_to_run"] == 2
    assert printed["sources_to_run"] == 6
    assert printed["config_hash"] == B.config_hash(small_config())
    assert not fresh.exists()


def test_clip_masks_equal_the_vote_on_full_resolution_labels(sample_videos):
    """The builder votes the masks on the segmenter's flow-resolution labels (512×288 clip,
    256×144 flow: factor 2); they must equal the vote on the full-resolution labels."""
    from trackgo_data.sample import decode_sample, downsample_labels
    from trackgo_data.video import read_frames

    cfg = B.make_config("local", {"clip": {"num_frames": 8, "width": 512, "height": 288},
                                  "filters": {"min_median_motion": 0.0}})
    seg, trk = B.get_models(cfg)
    src = sample_videos["bigbuckbunny"]
    members = next(m for m, _ in B.iter_video(src, cfg, seg, trk, limit=1) if m is not None)
    s = decode_sample(members, decode_video=False)
    labels = seg.segment(read_frames(src, 0, 8, size=(512, 288)))
    assert labels.max() >= 1 and s.masks.max() >= 1
    np.testing.assert_array_equal(s.masks, downsample_labels(labels))
