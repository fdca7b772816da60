"""User masks + arrows → tracks (the inference-time motion input)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trackgo_data.points import k_for_area
from trackgo_data.user_input import (UserInputError, arrow_displacements, arrows_to_tracks, load_masks,
                                     parse_arrow)


def _mask(h=40, w=60, box=(10, 10, 30, 25)):
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_parse_arrow_and_polyline():
    np.testing.assert_array_equal(parse_arrow("0,0,10,0"), [[0, 0], [10, 0]])
    np.testing.assert_array_equal(parse_arrow("1, 2, 3, 4, 5, 6"), [[1, 2], [3, 4], [5, 6]])
    for bad in ["1,2,3", "a,b,c,d", "1,2"]:
        with pytest.raises(UserInputError):
            parse_arrow(bad)


def test_arrow_moves_every_point_one_px_per_frame():
    m = _mask()
    tracks, vis, comps = arrows_to_tracks([m], ["0,0,10,0"], num_frames=11, seed=0)
    assert tracks.shape == (11, k_for_area(m.mean()), 2) and tracks.dtype == np.float32
    np.testing.assert_allclose(np.diff(tracks[..., 0], axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.diff(tracks[..., 1], axis=0), 0.0, atol=1e-5)
    assert vis.all() and (comps == 0).all()
    xs, ys = np.round(tracks[0, :, 0]).astype(int), np.round(tracks[0, :, 1]).astype(int)
    assert m[ys, xs].all()                       # points start inside their mask


def test_polyline_split_by_arc_length():
    off = arrow_displacements(np.array([[0, 0], [6, 0], [6, 6]], float), 5)  # length 12, 3 px/step
    np.testing.assert_allclose(off, [[0, 0], [3, 0], [6, 0], [6, 3], [6, 6]])


def test_two_masks_camera_mask_and_off_image():
    a = _mask(box=(5, 5, 20, 20))
    b = _mask(box=(35, 10, 55, 30))
    tracks, vis, comps = arrows_to_tracks([a, b], ["10,10,10,20", "40,20,70,20"], num_frames=4, seed=1)
    assert set(comps.tolist()) == {0, 1}
    np.testing.assert_allclose(tracks[-1, comps == 0] - tracks[0, comps == 0], [[0, 10]] * (comps == 0).sum(),
                               atol=1e-4)
    assert not vis[-1, comps == 1].all()          # +30 px pushes some of mask b off the 60-px image
    whole = np.ones((40, 60), bool)               # camera motion: one mask over the whole image
    t2, _, c2 = arrows_to_tracks([whole], ["30,20,33,24"], num_frames=3)
    assert len(c2) == 64
    np.testing.assert_allclose(t2[-1] - t2[0], np.broadcast_to([3, 4], (64, 2)), atol=1e-4)


def test_errors():
    m = _mask()
    with pytest.raises(UserInputError, match="outside"):
        arrows_to_tracks([m], ["70,5,80,5"], 5)
    with pytest.raises(UserInputError, match="one arrow per mask"):
        arrows_to_tracks([m, m], ["1,1,2,2"], 5)
    with pytest.raises(UserInputError, match="empty"):
        arrows_to_tracks([np.zeros_like(m)], ["1,1,2,2"], 5)
    with pytest.raises(UserInputError, match="sizes differ"):
        arrows_to_tracks([m, m[:-1]], ["1,1,2,2", "1,1,2,2"], 5)


def test_load_masks(tmp_path):
    lab = np.zeros((40, 60), np.uint8)
    lab[5:10, 5:10] = 1
    lab[20:30, 30:50] = 2
    Image.fromarray(lab).save(tmp_path / "labels.png")
    masks = load_masks(tmp_path / "labels.png", size=(60, 40))
    assert len(masks) == 2 and masks[0].sum() == 25 and masks[1].sum() == 200
    Image.fromarray((lab == 2).astype(np.uint8) * 255).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "empty.png")
    assert [m.sum() for m in load_masks([tmp_path / "b.png"])] == [200]
    with pytest.raises(UserInputError, match="image is 64×40"):
        load_masks(tmp_path / "labels.png", size=(64, 40))
    with pytest.raises(UserInputError, match="empty"):
        load_masks([tmp_path / "b.png", tmp_path / "empty.png"])
