"""Wan-Move's latent trajectory guidance against a hand-made case: cells of tracks per latent frame,
the first frame's features copied along them, the last track winning a shared cell."""
from __future__ import annotations

import pytest
import torch

from trackgo_model.wan.wan_move import guide_condition, track_cells


def test_wan_move_copies_the_first_frame_feature_along_each_track():
    # one clip 9 frames of 32×48 px (latent 4×6, 3 latent frames); tracks in pixels (x, y)
    tracks = torch.zeros(1, 9, 3, 2)
    tracks[0, :, 0] = torch.stack([4.0 + 2.0 * torch.arange(9), torch.full((9,), 3.0)], -1)  # x 4 → 20
    tracks[0, :, 1] = torch.tensor([44.0, 30.0])   # still, in cell (3, 5)
    tracks[0, :, 2] = torch.tensor([12.0, 20.0])   # starts in (2, 1) ...
    tracks[0, 8, 2] = torch.tensor([20.0, 3.0])    # ... and lands on track 0's last cell (0, 2)
    seen = torch.ones(1, 9, 3, dtype=torch.bool)
    seen[0, 4, 1] = False                          # track 1 hidden at pixel frame 4 (latent frame 1)
    cells = track_cells(tracks, seen, (32, 48))
    outside = tracks.clone()
    outside[0, 8, 1] = torch.tensor([48.0, 30.0])  # x = W: off the frame
    assert track_cells(outside, seen, (32, 48))[0, 1, 2].tolist() == [-1, -1]
    assert cells[0, 0].tolist() == [[0, 0], [0, 1], [0, 2]]  # x at frames 0, 4, 8: 4, 12, 20 px
    assert cells[0, 1].tolist() == [[3, 5], [-1, -1], [3, 5]]
    y = torch.randn(1, 5, 3, 4, 6)
    before = y.clone()
    got = guide_condition(y, cells)
    want = y.clone()
    want[0, :, 1, 0, 1] = y[0, :, 0, 0, 0]
    want[0, :, 2, 3, 5] = y[0, :, 0, 3, 5]
    want[0, :, 1, 2, 1] = y[0, :, 0, 2, 1]
    want[0, :, 2, 0, 2] = y[0, :, 0, 2, 1]          # track 2 is written after track 0: it wins
    assert torch.equal(got, want)
    flipped = guide_condition(y, cells, order=torch.tensor([2, 1, 0]))
    assert torch.equal(flipped[0, :, 2, 0, 2], y[0, :, 0, 0, 0])  # now track 0 is last
    assert torch.equal(y, before)  # the input is left alone
    with pytest.raises(ValueError, match="r·"):
        track_cells(tracks[:, :8], seen[:, :8], (32, 48))
