"""Sample format v1: keys, mask down-sampling, encode/decode round trip through shards + loader."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from trackgo_data.loader import make_dataset
from trackgo_data.render import COLOURS
from trackgo_data.sample import SampleError, decode_sample, downsample_labels, encode_sample, sample_key
from trackgo_data.shards import write_shards

from .synthetic import H, L, W, synthetic_sample


def test_sample_key_sanitizes_and_pads():
    assert sample_key("my.video-1 (2)", 12) == "my_video_1__2_-000012"
    assert sample_key("bikes", 0) == "bikes-000000"
    with pytest.raises(SampleError):
        sample_key("x", 1_000_000)


def _plurality_reference(labels, stride=8):
    L_, H_, W_ = labels.shape
    out = np.zeros((L_, H_ // stride, W_ // stride), np.uint8)
    for t in range(L_):
        for i in range(H_ // stride):
            for j in range(W_ // stride):
                c = Counter(labels[t, i * stride:(i + 1) * stride, j * stride:(j + 1) * stride].ravel().tolist())
                best = max(c.values())
                out[t, i, j] = min(k for k, v in c.items() if v == best)
    return out


def test_downsample_labels_hand_cases():
    lab = np.zeros((1, 16, 16), np.int32)
    lab[0, 0:5, 0:8] = 1          # block (0,0): 40 of 64 are label 1 → 1
    lab[0, 0:4, 8:16] = 2         # block (0,1): 32 label 2 vs 32 background → tie → 0
    lab[0, 8:10, 0:8] = 1         # block (1,0): 16 label 1, 16 label 2, 32 background → 0
    lab[0, 10:12, 0:8] = 2
    lab[0, 8:12, 8:16] = 3        # block (1,1): 32 label 3, 24 label 1, 8 background → 3
    lab[0, 12:15, 8:16] = 1
    assert downsample_labels(lab).tolist() == [[[1, 0], [0, 3]]]
    rng = np.random.default_rng(1)
    rand = rng.integers(0, 4, (2, 24, 32))
    np.testing.assert_array_equal(downsample_labels(rand), _plurality_reference(rand))
    with pytest.raises(SampleError):
        downsample_labels(np.zeros((1, 12, 16), np.int32))


def test_round_trip_write_shard_then_loader(tmp_path):
    samples = [synthetic_sample("a", 0, seed=0), synthetic_sample("b", 25, seed=1, n=5)]
    paths = write_shards([encode_sample(s) for s in samples], tmp_path, "t")
    assert [p.name for p in paths] == ["t-000000.tar"]
    got = {s.key: s for s in make_dataset(paths, batch_size=0)}
    assert sorted(got) == ["a-000000", "b-000025"]
    for s in samples:
        g = got[s.key]
        np.testing.assert_array_equal(g.image, s.image)            # png: lossless
        np.testing.assert_array_equal(g.trajectory, s.trajectory)  # libx264rgb qp 0: exact
        np.testing.assert_array_equal(g.tracks, s.tracks)
        np.testing.assert_array_equal(g.visibility, s.visibility)
        np.testing.assert_array_equal(g.components, s.components)
        np.testing.assert_array_equal(g.masks, s.masks)
        assert g.tracks.dtype == np.float32 and g.visibility.dtype == bool
        assert g.video.shape == (L, H, W, 3)
        mse = np.mean((g.video.astype(float) - s.video.astype(float)) ** 2)
        assert 10 * np.log10(255.0**2 / mse) > 38.0                # visually lossless H.264
        assert g.meta == s.meta
    # the trajectory really holds the component colours at the track positions
    s = samples[0]
    x, y = np.round(s.tracks[0, 0]).astype(int)
    assert tuple(got[s.key].trajectory[0, y, x]) == tuple(COLOURS[0])


def test_batches_are_channels_first_and_lists_for_points(tmp_path):
    samples = [synthetic_sample("a", 0, seed=0, n=4), synthetic_sample("b", 0, seed=1, n=6)]
    paths = write_shards([encode_sample(s) for s in samples], tmp_path, "t")
    batch = next(iter(make_dataset(paths, batch_size=2)))
    assert batch.key == ["a-000000", "b-000000"]
    assert tuple(batch.image.shape) == (2, 3, H, W)
    assert tuple(batch.video.shape) == (2, L, 3, H, W)
    assert tuple(batch.trajectory.shape) == (2, L, 3, H, W)
    assert tuple(batch.masks.shape) == (2, L, H // 8, W // 8)
    assert [tuple(t.shape) for t in batch.tracks] == [(L, 7, 2), (L, 9, 2)]
    np.testing.assert_array_equal(batch.trajectory[1].permute(0, 2, 3, 1).numpy(), samples[1].trajectory)
    np.testing.assert_array_equal(batch.image[0].permute(1, 2, 0).numpy(), samples[0].image)


def test_decode_rejects_missing_member():
    members = encode_sample(synthetic_sample())
    del members["tracks.npy"]
    with pytest.raises(SampleError, match="tracks.npy"):
        decode_sample(members)


def test_validate_catches_shape_mismatch():
    s = synthetic_sample()
    s.visibility = s.visibility[:, :-1]
    with pytest.raises(SampleError, match="visibility"):
        encode_sample(s)


def test_png_is_lossless_deterministic_and_read_by_pil():
    import io

    from PIL import Image

    from trackgo_data.sample import decode_png, encode_png

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    img[:10] = [12, 200, 7]                                       # flat rows next to noise
    data = encode_png(img)
    assert data == encode_png(img.copy())                         # byte-reproducible shards
    np.testing.assert_array_equal(decode_png(data), img)
    with Image.open(io.BytesIO(data)) as im:                      # RGB order, not BGR
        assert im.mode == "RGB" and im.getpixel((0, 0)) == (12, 200, 7)
    with pytest.raises(SampleError, match="uint8"):
        encode_png(img.astype(np.float32))


@pytest.mark.parametrize("f", [1, 2, 4, 8])
def test_masks_from_coarse_labels_equal_the_full_resolution_vote(f):
    """Voting on coarse labels equals voting on their nearest-neighbour upscale (incl. ties)."""
    import cv2

    from trackgo_data.sample import downsample_coarse_labels

    rng = np.random.default_rng(f)
    H, W = 48, 64
    coarse = rng.integers(0, 4, (3, H // f, W // f)).astype(np.int32)
    coarse[0, :2, :2] = [[0, 2], [2, 0]] if f <= 4 else coarse[0, :2, :2]   # an even split
    full = np.stack([cv2.resize(c, (W, H), interpolation=cv2.INTER_NEAREST) for c in coarse])
    np.testing.assert_array_equal(downsample_coarse_labels(coarse, H, W), downsample_labels(full))


def test_masks_from_coarse_labels_refuse_sizes_that_do_not_fit():
    from trackgo_data.sample import downsample_coarse_labels

    lab = np.zeros((2, 16, 24), np.int32)
    assert downsample_coarse_labels(None, 48, 72) is None
    assert downsample_coarse_labels(lab, 48, 72) is None              # f = 3 does not divide 8
    assert downsample_coarse_labels(lab, 48, 72, stride=6) is not None
    assert downsample_coarse_labels(np.zeros((2, 12, 16), np.int32), 48, 64) is not None
    assert downsample_coarse_labels(np.zeros((2, 10, 16), np.int32), 48, 64) is None   # not integral
    assert downsample_coarse_labels(np.zeros((2, 24, 16), np.int32), 48, 64) is None   # f differs per axis
