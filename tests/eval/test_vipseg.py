import numpy as np
import pytest

from trackgo_data.video import read_frames
from trackgo_data.vipseg import VIPSeg, VIPSegError, decode_raw, decode_rgb, select_components

from .vipseg_fixture import FRAME_NAMES, build_fixture, patch_boxes


def test_decode_raw_encoding():
    seg, cat, inst = decode_raw(np.array([0, 5, 124, 200, 6100, 6103, 12401]))
    assert seg.tolist() == [0, 5, 124, 0, 6100, 6103, 12401]
    assert cat.tolist() == [0, 5, 124, 0, 61, 61, 124]
    assert inst.tolist() == [-1, -1, -1, -1, 0, 3, 1]
    with pytest.raises(VIPSegError):
        decode_raw(np.array([12500]))           # category 125 does not exist


def test_decode_rgb():
    rgb = np.array([[[4, 24, 0], [1, 0, 1]]], np.uint8)
    assert decode_rgb(rgb).tolist() == [[4 + 256 * 24, 1 + 65536]]


@pytest.fixture(scope="module")
def vipseg_root(tmp_path_factory, sample_videos):
    clip = read_frames(sample_videos["carphone"], count=8)
    return build_fixture(tmp_path_factory.mktemp("vip"), clip)


@pytest.mark.parametrize("masks", ["raw", "rgb"])
def test_reader_numeric_order_and_masks(vipseg_root, masks):
    ds = VIPSeg(vipseg_root, masks=masks)
    assert ds.split("val") == ["vid_a", "vid_b", "short_c", "missing_d"]
    v = ds.video("vid_a")
    assert [int(p.stem) for p in v.frames] == FRAME_NAMES
    frames, segs = v.read(count=6)
    assert frames.shape == (6, 144, 176, 3) and segs.shape == (6, 144, 176)
    for t in range(6):
        x0, y0, x1, y1 = patch_boxes(t)[6100]
        assert (segs[t, y0:y1, x0:x1] == 6100).all()
    # raw: the glitch value decodes as void; RGB ids are taken as they are
    assert segs[0, 0, 0] == (0 if masks == "raw" else 200)
    assert set(np.unique(segs[0]).tolist()) == ({0, 5, 6100, 6101} | ({200} if masks == "rgb" else set()))


def test_resize_and_component_selection(vipseg_root):
    frames, segs = VIPSeg(vipseg_root).video("vid_a").read(count=6, size=(128, 64))
    assert frames.shape == (6, 64, 128, 3) and segs.shape == (6, 64, 128)
    assert set(np.unique(segs).tolist()) <= {0, 5, 6100, 6101}
    labels, ids = select_components(segs)
    assert ids == [6100, 6101]                  # moving thing first, stuff left out
    assert ((labels[0] == 1) == (segs[0] == 6100)).all()
    labels, ids = select_components(segs, max_components=1, include_stuff=True)
    assert ids == [6100]
    _, ids = select_components(segs, include_stuff=True)
    assert ids[0] == 6100 and set(ids) == {5, 6100, 6101}


def test_bad_layout_errors(tmp_path, vipseg_root):
    with pytest.raises(VIPSegError, match="not a VIPSeg_720P"):
        VIPSeg(tmp_path)
    with pytest.raises(VIPSegError, match="missing"):
        VIPSeg(vipseg_root).video("nope")
