"""User masks + arrows → tracks (the inference-time motion input) and the checks of user input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trackgo_data.points import k_for_area, sample_points
from trackgo_data.render import COLOURS, overlay_tracks
from trackgo_data.segment import relabel_by_area
from trackgo_data.user_input import (MAX_OBJECTS, UserInputError, arrow_displacements, arrows_to_tracks,
                                     build_motion, checkpoint_max_objects, load_masks, parse_arrow, prepare,
                                     preview_image, split_arrows)
from trackgo_data.sample import rescale_tracks


def _mask(h=40, w=60, box=(10, 10, 30, 25)):
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_parse_arrow_polyline_and_split():
    np.testing.assert_array_equal(parse_arrow("0,0,10,0"), [[0, 0], [10, 0]])
    np.testing.assert_array_equal(parse_arrow("1, 2, 3, 4, 5, 6"), [[1, 2], [3, 4], [5, 6]])
    for bad in ["1,2,3", "a,b,c,d", "1,2", "1,2,nan,4"]:
        with pytest.raises(UserInputError):
            parse_arrow(bad)
    assert split_arrows("1,2,3,4; 5,6,7,8,9,10;") == ["1,2,3,4", "5,6,7,8,9,10"]
    assert split_arrows("") == [] and split_arrows("1,2,3,4;;5,6,7,8") == ["1,2,3,4", "", "5,6,7,8"]


def test_arrow_moves_every_point_one_px_per_frame():
    m = _mask()
    tracks, vis, comps = arrows_to_tracks([m], ["15,15,25,15"], num_frames=11, seed=0)
    assert tracks.shape == (11, k_for_area(m.mean()), 2) and tracks.dtype == np.float32
    np.testing.assert_allclose(np.diff(tracks[..., 0], axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.diff(tracks[..., 1], axis=0), 0.0, atol=1e-5)
    assert vis.all() and (comps == 0).all()
    xs, ys = np.round(tracks[0, :, 0]).astype(int), np.round(tracks[0, :, 1]).astype(int)
    assert m[ys, xs].all()                       # points start inside their mask


def test_polyline_split_by_arc_length():
    off = arrow_displacements(np.array([[0, 0], [6, 0], [6, 6]], float), 5)  # length 12, 3 px/step
    np.testing.assert_allclose(off, [[0, 0], [3, 0], [6, 0], [6, 3], [6, 6]])


def test_colours_follow_training_order_by_area():
    """Objects are numbered like a segmenter numbers components (largest first-frame area → id 1,
    red), whatever order they are given in; each arrow still moves its own object."""
    small = _mask(box=(2, 2, 10, 10))              # 64 px, given first
    large = _mask(box=(30, 5, 58, 35))             # 840 px, given second
    mid = _mask(box=(12, 20, 27, 38))              # 270 px, given third
    masks = [small, large, mid]
    arrows = ["5,5,5,15", "40,20,50,20", "20,30,14,30"]
    m = build_motion(masks, arrows, num_frames=6, seed=3)
    assert m.object_components == [2, 0, 1]
    # the training path: a segmenter's labels (arbitrary ids, two frames) → relabel_by_area →
    # sample_points gives exactly these points and components
    seg = np.zeros((2, 40, 60), np.int32)
    for oid, mask in zip((7, 3, 5), masks):
        seg[:, mask] = oid
    lab0 = relabel_by_area(seg)[0]
    pts, comps = sample_points(lab0, seed=3)
    np.testing.assert_array_equal(m.labels, lab0)
    np.testing.assert_array_equal(m.components, comps)
    np.testing.assert_allclose(m.tracks[0], pts)
    for j, mask in enumerate(masks):
        sel = m.components == m.object_components[j]
        start, end = parse_arrow(arrows[j])
        np.testing.assert_allclose(m.tracks[-1, sel] - m.tracks[0, sel],
                                   np.broadcast_to(end - start, (sel.sum(), 2)), atol=1e-4)
        xs, ys = np.round(m.tracks[0, sel]).astype(int).T
        assert mask[ys, xs].all()
    # equal areas keep the given order; overlap: the later mask takes the shared pixels first
    a, b = _mask(box=(0, 0, 10, 10)), _mask(box=(40, 0, 50, 10))
    assert build_motion([a, b], ["5,5,6,6", "45,5,46,6"], 3).object_components == [0, 1]
    assert build_motion([b, a], ["45,5,46,6", "5,5,6,6"], 3).object_components == [0, 1]
    big, cover = _mask(box=(0, 0, 30, 20)), _mask(box=(0, 0, 25, 20))   # big keeps 100 px, cover 500
    assert build_motion([big, cover], ["28,5,28,9", "5,5,9,5"], 3).object_components == [1, 0]


def test_camera_mask_and_points_leaving_the_image():
    a = _mask(box=(5, 5, 20, 20))
    b = _mask(box=(35, 10, 55, 30))
    tracks, vis, comps = arrows_to_tracks([a, b], ["10,10,10,20", "40,20,59,20"], num_frames=4, seed=1)
    assert set(comps.tolist()) == {0, 1}
    sel = comps == 0                               # b (400 px) is larger than a (225 px): red
    np.testing.assert_allclose(tracks[-1, ~sel] - tracks[0, ~sel], [[0, 10]] * (~sel).sum(), atol=1e-4)
    assert not vis[-1, sel].all() and vis[0].all()  # +19 px pushes part of mask b off the 60-px image
    np.testing.assert_array_equal(vis[-1, sel], tracks[-1, sel, 0] <= 59)
    whole = np.ones((40, 60), bool)                # camera motion: one mask over the whole image
    t2, _, c2 = arrows_to_tracks([whole], ["30,20,33,24"], num_frames=3)
    assert len(c2) == 64
    np.testing.assert_allclose(t2[-1] - t2[0], np.broadcast_to([3, 4], (64, 2)), atol=1e-4)


@pytest.mark.parametrize("masks, arrows, message", [
    ([], [], "no mask given"),
    ([np.zeros((40, 60), bool)], ["1,1,2,2"], "object 1: mask is empty"),
    ([_mask(), _mask(h=39)], ["15,15,16,16", "15,15,16,16"], "object 2: mask is 60×39 but the image is 60×40"),
    ([_mask()], ["70,5,80,5"], "starts at \\(70, 5\\), outside the 60×40 image"),
    ([_mask()], ["2,2,20,20"], "starts at \\(2, 2\\), outside its mask \\(which spans x 10–29, y 10–24\\)"),
    ([_mask()], ["15,15,9999,15"], "ends at \\(9999, 15\\), off the 60×40 image"),
    ([_mask()], ["15,15,15,39.6"], "ends at \\(15, 39.6\\), off the 60×40 image"),
    ([_mask()], ["15,15,70,15,20,20"], "bends at \\(70, 15\\)"),
    ([_mask(), _mask()], ["15,15,16,16"], "1 arrow\\(s\\) for 2 mask\\(s\\): give one arrow per mask"),
    ([_mask(box=(10, 10, 15, 15)), _mask()], ["12,12,13,13", "15,15,16,16"], "object 1: mask is entirely covered"),
    ([_mask(box=(i * 8, 0, i * 8 + 6, 6)) for i in range(7)], [f"{i * 8 + 2},2,{i * 8 + 3},3" for i in range(7)],
     "7 objects, but the model was trained with at most 6: remove or merge 1"),
])
def test_bad_input_is_refused_with_what_to_change(masks, arrows, message):
    with pytest.raises(UserInputError, match=message):
        build_motion(masks, arrows, 5)


def test_arrow_limits_are_inclusive_and_max_objects_is_a_knob():
    m = _mask(box=(0, 0, 60, 40))
    build_motion([m], ["0,0,59,39"], 3)            # corner to corner: on the image
    build_motion([m], ["59.4,39.4,0,0"], 3)        # rounds onto the last pixel
    three = [_mask(box=(i * 10, 0, i * 10 + 5, 5)) for i in range(3)]
    arrows = [f"{i * 10 + 2},2,{i * 10 + 2},4" for i in range(3)]
    assert len(build_motion(three, arrows, 3, max_objects=3).object_components) == 3
    with pytest.raises(UserInputError, match="at most 2"):
        build_motion(three, arrows, 3, max_objects=2)


def test_checkpoint_max_objects(tmp_path):
    assert MAX_OBJECTS == 6
    assert checkpoint_max_objects(None) == 6 and checkpoint_max_objects(tmp_path) == 6
    (tmp_path / "trackgo_config.json").write_text(json.dumps({"format": "x", "trackgo": {}}))
    assert checkpoint_max_objects(tmp_path) == 6
    (tmp_path / "trackgo_config.json").write_text(json.dumps({"max_components": 3}))
    assert checkpoint_max_objects(tmp_path) == 3
    (tmp_path / "trackgo_config.json").write_text(json.dumps({"max_components": 12}))
    with pytest.raises(ValueError, match="max_components must be an integer in 1..9"):
        checkpoint_max_objects(tmp_path)


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
    with pytest.raises(UserInputError, match="no mask given"):
        load_masks([])


def test_prepare_scales_to_the_output_and_preview_draws_it(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(_mask().astype(np.uint8) * 255).save(tmp_path / "m.png")
    prep = prepare(tmp_path / "img.png", [tmp_path / "m.png"], ["15,15,25,15"], 5, height=80, width=90, seed=2)
    assert prep.image.shape == (80, 90, 3) and prep.P.shape == (5, 80, 90, 3)
    # pixel-centre convention, as the loader rescales training tracks: x' = (x + 0.5)·1.5 − 0.5, y' = (y + 0.5)·2 − 0.5
    np.testing.assert_allclose(prep.tracks, (prep.motion.tracks + 0.5) * np.array([1.5, 2.0], np.float32) - 0.5,
                               atol=1e-4)
    np.testing.assert_allclose(prep.tracks[-1, :, 0] - prep.tracks[0, :, 0], 15.0, atol=1e-4)
    prev = preview_image(prep.image, prep.tracks, prep.visibility, prep.components, prep.motion.labels)
    assert prev.shape == prep.image.shape
    # frame-0 control points: P's squares, copied exactly; mask pixels away from them are tinted red
    drawn = prep.P[0].any(-1)
    np.testing.assert_array_equal(prev[drawn], prep.P[0][drawn])
    assert (prev[drawn] == COLOURS[0]).all()
    inside = np.zeros((80, 90), bool)
    inside[20:50, 15:45] = True                    # the mask (10..29, 10..24) scaled ×1.5, ×2
    lines = (overlay_tracks(prep.image, prep.tracks, prep.visibility, prep.components) != prep.image).any(-1)
    plain = inside & ~lines & ~drawn
    assert plain.sum() > 100
    expect = np.round(0.65 * prep.image[plain].astype(float) + 0.35 * COLOURS[0].astype(float))
    np.testing.assert_allclose(prev[plain], expect, atol=1)            # float32 blend rounding
    outside = ~inside & ~lines & ~drawn
    np.testing.assert_array_equal(prev[outside], prep.image[outside])


def test_rescale_tracks_maps_pixel_centres_to_pixel_centres():
    tracks = np.array([[[0.0, 0.0], [59.0, 39.0], [-0.5, -0.5], [10.0, 20.0]]], np.float32)
    # 60×40 → 90×80: x' = (x + 0.5)·1.5 − 0.5, y' = (y + 0.5)·2 − 0.5 (the image edge −0.5 stays the edge)
    np.testing.assert_allclose(rescale_tracks(tracks, (60, 40), (90, 80)),
                               [[[0.25, 0.5], [88.75, 78.5], [-0.5, -0.5], [15.25, 40.5]]], atol=1e-6)
    assert rescale_tracks(tracks, (60, 40), (90, 80)).dtype == np.float32


def test_prepare_rescales_user_tracks_like_the_loader(tmp_path):
    """A one-pixel object at (10, 20) moved by the arrow to (16, 20), asked for at 96×80 from a
    60×40 image: by hand (10.5·1.6 − 0.5, 20.5·2 − 0.5) = (16.3, 40.5) → (25.9, 40.5)."""
    from trackgo_data.loader import resize_sample
    from trackgo_data.sample import Sample

    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((40, 60), np.uint8)
    mask[20, 10] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    prep = prepare(tmp_path / "img.png", [tmp_path / "m.png"], ["10,20,16,20"], 5, height=80, width=96)
    np.testing.assert_allclose(prep.tracks[:, 0], [[16.3 + 2.4 * t, 40.5] for t in range(5)], atol=1e-5)
    # the loader's resize of a training sample holding the same tracks gives the same coordinates
    L, N = prep.motion.tracks.shape[:2]
    sample = Sample(key="v-000000", image=np.zeros((40, 60, 3), np.uint8), video=np.zeros((L, 40, 60, 3), np.uint8),
                    trajectory=np.zeros((L, 40, 60, 3), np.uint8), tracks=prep.motion.tracks,
                    visibility=prep.motion.visibility, components=prep.motion.components,
                    masks=np.zeros((L, 5, 7), np.uint8), meta={"width": 60, "height": 40})
    np.testing.assert_array_equal(resize_sample(sample, (96, 80)).tracks, prep.tracks)


def _anti_aliased(shapes, size=(60, 40), factor=8):
    """shapes: [(kind, box, grey)] drawn at ``factor``× and reduced with a box filter → (grey image
    (H,W) uint8 with anti-aliased edges, the hard masks drawn at 1× for comparison)."""
    from PIL import ImageDraw

    big = Image.new("L", (size[0] * factor, size[1] * factor), 0)
    draw = ImageDraw.Draw(big)
    hard = []
    for kind, (x0, y0, x1, y1), grey in shapes:
        getattr(draw, kind)([x0 * factor, y0 * factor, x1 * factor - 1, y1 * factor - 1], fill=grey)
        small = Image.new("L", size, 0)
        getattr(ImageDraw.Draw(small), kind)([x0, y0, x1 - 1, y1 - 1], fill=255)
        hard.append(np.asarray(small) > 0)
    return np.asarray(big.resize(size, Image.BOX)), hard


def test_anti_aliased_label_image_gives_its_objects(tmp_path):
    """A label image saved from a drawing program with smooth edges: the grey levels of the edges
    are not objects; each edge pixel joins the object or background next to it nearest in value."""
    grey, hard = _anti_aliased([("ellipse", (5, 4, 27, 30), 255), ("rectangle", (33.5, 10.25, 55.75, 35.5), 120)])
    assert len(np.unique(grey)) > 20                               # many edge levels
    Image.fromarray(grey).save(tmp_path / "labels.png")
    masks = load_masks(tmp_path / "labels.png", size=(60, 40))
    assert len(masks) == 2                                         # value order: 120 (rectangle), 255 (ellipse)
    rect, ellipse = masks
    # by hand: the ellipse (x < 30) lies between 0 and 255, so it is bounded at 127.5; the
    # rectangle (x ≥ 30) between 0 and 120, bounded at 60 (a tie goes to the lower value)
    left = np.arange(60)[None, :] < 30
    np.testing.assert_array_equal(ellipse, (grey > 127) & left)
    np.testing.assert_array_equal(rect, (grey > 60) & ~left)
    for mask, drawn in zip((ellipse, rect), hard):
        assert (mask & drawn).sum() / (mask | drawn).sum() > 0.85
    # two objects that meet: their shared edge column 30 (half 200, half 100 → 150) is split
    # between them, none of it becomes background; halfway is a tie, which goes to 100
    grey, _ = _anti_aliased([("rectangle", (5, 5, 30.5, 35), 200), ("rectangle", (30.5, 5, 55, 35), 100)])
    assert set(np.unique(grey)) == {0, 100, 150, 200}
    Image.fromarray(grey).save(tmp_path / "touching.png")
    low, high = load_masks(tmp_path / "touching.png")
    want_low, want_high = np.zeros((40, 60), bool), np.zeros((40, 60), bool)
    want_high[5:35, 5:30] = True
    want_low[5:35, 30:55] = True
    np.testing.assert_array_equal(high, want_high)
    np.testing.assert_array_equal(low, want_low)
    # one smooth white-on-black mask is one object, bounded at mid-grey
    grey, _ = _anti_aliased([("ellipse", (5, 4, 27, 30), 255)])
    Image.fromarray(grey).save(tmp_path / "one.png")
    (one,) = load_masks(tmp_path / "one.png")
    np.testing.assert_array_equal(one, grey > 127)


def test_label_image_values_that_are_neither_objects_nor_edges_are_one_error(tmp_path):
    lab = np.zeros((40, 60), np.uint8)
    lab[5:15, 5:15] = 1
    lab[20:30, 30:40] = 2
    lab[35, 50] = 3                                                # one pixel above every object value
    Image.fromarray(lab).save(tmp_path / "grey.png")
    with pytest.raises(UserInputError, match=r"mask grey.png: value\(s\) 3 fill no 3×3 square"):
        load_masks(tmp_path / "grey.png")
    lab[35, 50] = 0
    lab[14, 5] = 2                                                 # a stray pixel inside a palette image
    pal = Image.fromarray(lab, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "palette.png")
    assert len(load_masks(tmp_path / "palette.png")) == 2           # exact values: stray 2 is object 2's
    lab[14, 5] = 1
    lab[25, 35] = 7                                                # a palette value too small to be an object
    pal = Image.fromarray(lab, mode="P")
    pal.putpalette([0] * 768)
    pal.save(tmp_path / "palette.png")
    with pytest.raises(UserInputError, match="value\\(s\\) 7 fill no 3×3 square.*exact values"):
        load_masks(tmp_path / "palette.png")
    # a single value is one object whatever its size
    one = np.zeros((40, 60), np.uint8)
    one[3, 4] = 9
    Image.fromarray(one).save(tmp_path / "dot.png")
    (dot,) = load_masks(tmp_path / "dot.png")
    assert dot.sum() == 1 and dot[3, 4]
