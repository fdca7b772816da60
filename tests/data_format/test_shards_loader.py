"""Shards: byte reproducibility, atomic publication; loader: corrupt samples skipped, resizing."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from trackgo_data.loader import make_dataset
from trackgo_data.render import COLOURS, render_trajectories
from trackgo_data.sample import encode_sample
from trackgo_data.shards import ShardSpec, write_shards

from .synthetic import L, synthetic_sample


def _digest(paths):
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_two_writes_are_byte_identical(tmp_path):
    # encode independently each time: the encoders and the tar writer are both deterministic
    a = write_shards([encode_sample(synthetic_sample(f"v{i}", 0, seed=i)) for i in range(3)],
                     tmp_path / "a", "s", ShardSpec(maxcount=2))
    b = write_shards([encode_sample(synthetic_sample(f"v{i}", 0, seed=i)) for i in range(3)],
                     tmp_path / "b", "s", ShardSpec(maxcount=2))
    assert [p.name for p in a] == ["s-000000.tar", "s-000001.tar"]
    assert _digest(a) == _digest(b)
    # and the fixed mtime is what makes it so: a different mtime changes the bytes
    c = write_shards([encode_sample(synthetic_sample(f"v{i}", 0, seed=i)) for i in range(3)],
                     tmp_path / "c", "s", ShardSpec(maxcount=2), mtime=12345.0)
    assert _digest(c) != _digest(a)


def test_shard_index_and_stale_shards_removed(tmp_path):
    members = [encode_sample(synthetic_sample(f"v{i}", 0, seed=i)) for i in range(3)]
    write_shards(members, tmp_path, "s", ShardSpec(maxcount=1))
    assert len(list(tmp_path.glob("s-*.tar"))) == 3
    index = {}
    paths = write_shards(members[:1], tmp_path, "s", ShardSpec(maxcount=1), index=index)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-000000.tar"] == [p.name for p in paths]
    assert index == {"v0-000000": "s-000000.tar"}


def test_failure_mid_write_leaves_no_shard_visible(tmp_path):
    members = [encode_sample(synthetic_sample(f"v{i}", 0, seed=i)) for i in range(3)]

    def gen():
        yield members[0]
        yield members[1]
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_shards(gen(), tmp_path, "s", ShardSpec(maxcount=1))
    assert list(tmp_path.iterdir()) == []


def test_loader_skips_and_counts_corrupt_samples(tmp_path):
    good = [encode_sample(synthetic_sample(f"g{i}", 0, seed=i)) for i in range(2)]
    broken = encode_sample(synthetic_sample("bad", 0, seed=9))
    del broken["masks.npy"]
    garbled = encode_sample(synthetic_sample("junk", 0, seed=8))
    garbled["video.mp4"] = b"not an mp4 at all"
    paths = write_shards([good[0], broken, garbled, good[1]], tmp_path, "s")
    ds = make_dataset(paths, batch_size=0)
    keys = [s.key for s in ds]
    assert keys == ["g0-000000", "g1-000000"]
    assert ds.stats.skipped == 2


def test_loader_at_lower_resolution_renders_p_from_rescaled_tracks(tmp_path):
    """A batch at another size carries the P that the one renderer draws from the rescaled
    tracks (4-px squares, as at inference), not the stored P shrunk by nearest-neighbour."""
    s = synthetic_sample("a", 0)
    paths = write_shards([encode_sample(s)], tmp_path, "s")
    (batch,) = list(make_dataset(paths, batch_size=1, num_frames=4, size=(64, 48)))
    assert tuple(batch.video.shape) == (1, 4, 3, 48, 64) and tuple(batch.masks.shape) == (1, 4, 6, 8)
    # the rescaling, by hand: pixel centres map onto pixel centres, x' = (x + 0.5)·64/128 − 0.5
    tracks = s.tracks[:4].copy()
    tracks[..., 0] = (tracks[..., 0] + 0.5) * 0.5 - 0.5
    tracks[..., 1] = (tracks[..., 1] + 0.5) * 0.5 - 0.5
    np.testing.assert_allclose(batch.tracks[0].numpy(), tracks, rtol=0, atol=1e-6)
    want = render_trajectories(tracks, s.visibility[:4], s.components, 48, 64)
    got = batch.trajectory[0].permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, want)
    # what the old nearest-neighbour shrink gives is a different picture (squares halved)
    shrunk = s.trajectory[:4, ::2, ::2]
    assert not np.array_equal(got, shrunk)
    lit = (got.sum(-1) > 0).sum(axis=(1, 2))
    assert (lit >= 16).all() and (lit > (shrunk.sum(-1) > 0).sum(axis=(1, 2))).all()
    assert {tuple(p) for p in got.reshape(-1, 3)} <= {(0, 0, 0)} | {tuple(c) for c in COLOURS[:2]}
    # the same size as stored: P is the decoded member, untouched
    (same,) = list(make_dataset(paths, batch_size=0, size=(128, 96)))
    np.testing.assert_array_equal(same.trajectory, s.trajectory)


def test_loader_num_frames_too_many_is_skipped(tmp_path):
    paths = write_shards([encode_sample(synthetic_sample("a", 0))], tmp_path, "s")
    ds = make_dataset(paths, batch_size=0, num_frames=L + 1)
    assert list(ds) == [] and ds.stats.skipped == 1


def test_resampled_stream_is_endless_and_shuffle_keeps_the_set(tmp_path):
    members = [encode_sample(synthetic_sample(f"v{i}", 0, seed=i, n=3)) for i in range(3)]
    paths = write_shards(members, tmp_path, "s", ShardSpec(maxcount=1))
    it = iter(make_dataset(paths, batch_size=0, resampled=True, seed=1))
    keys = [next(it).key for _ in range(7)]  # more than the 3 samples there are
    assert len(keys) == 7 and set(keys) <= {"v0-000000", "v1-000000", "v2-000000"}
    shuffled = [s.key for s in make_dataset(paths, batch_size=0, shuffle=10, shardshuffle=10, seed=3)]
    assert sorted(shuffled) == ["v0-000000", "v1-000000", "v2-000000"]
