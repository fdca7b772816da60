"""Wan-Move's latent trajectory guidance (arXiv 2512.08765), the comparison row for TrackGo on Wan.

No new module: the image-condition latent y of Wan's image-to-video input (the first frame's
latent followed by the latents of black frames; 16 of the 36 input channels) is edited so that,
along each point track, later latent frames carry the first frame's feature from where the track
starts:

    cell_n(t) = (⌊y_n(r·t) / s⌋, ⌊x_n(r·t) / s⌋)       the latent cell of track n at latent frame t
                                                      (pixel frame r·t, r = 4, s = 8), when the
                                                      point is visible and inside the frame
    y[:, t, cell_n(t)] ← y[:, 0, cell_n(0)]            for t ≥ 1, every track visible at both

Tracks are written one after another, so where several land on one cell the last one wins
(Wan-Move shuffles the order at random; here the order is an argument). The edited y goes to the
conditional branch of guidance, the unedited one to the unconditional branch.
"""
from __future__ import annotations

import torch

__all__ = ["guide_condition", "track_cells"]


def track_cells(tracks: torch.Tensor, visibility: torch.Tensor, size: tuple[int, int], *, temporal_ratio: int = 4,
                spatial_ratio: int = 8) -> torch.Tensor:
    """Latent cells of point tracks, sampled at every ``temporal_ratio``-th pixel frame.

    Args:
        tracks: (B, L, N, 2) x, y in pixels of a (H, W) = ``size`` clip, L = r·(F − 1) + 1.
        visibility: (B, L, N) bool.
    Returns:
        (B, N, F, 2) long (row, column) on the (H/s, W/s) latent grid; −1 where the point is hidden
        or outside the frame.
    """
    b, length, n, _ = tracks.shape
    if (length - 1) % temporal_ratio:
        raise ValueError(f"{length} track frames are not r·(F − 1) + 1 for r = {temporal_ratio}")
    if visibility.shape != (b, length, n):
        raise ValueError(f"visibility must be (B, L, N) = {(b, length, n)}, got {tuple(visibility.shape)}")
    height, width = size
    sampled = tracks[:, ::temporal_ratio].float()  # (B, F, N, 2)
    seen = visibility[:, ::temporal_ratio].bool()
    x, y = sampled[..., 0], sampled[..., 1]
    inside = seen & (x >= 0) & (y >= 0) & (x < width) & (y < height)
    cells = torch.stack([torch.div(y, spatial_ratio, rounding_mode="floor"),
                         torch.div(x, spatial_ratio, rounding_mode="floor")], dim=-1).long()
    cells = torch.where(inside.unsqueeze(-1), cells, torch.full_like(cells, -1))
    return cells.transpose(1, 2)  # (B, N, F, 2)


def guide_condition(condition: torch.Tensor, cells: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """The edited image-condition latent (a new tensor; ``condition`` is not changed).

    Args:
        condition: (B, C, F, h, w) the image-condition latent y.
        cells: (B, N, F, 2) from :func:`track_cells`.
        order: (N,) the order the tracks are written in (later ones win a shared cell); None keeps
            the given order.
    Returns: (B, C, F, h, w).
    """
    b, _, frames, h, w = condition.shape
    if cells.shape[0] != b or cells.shape[2] != frames or cells.shape[3] != 2:
        raise ValueError(f"cells must be (B={b}, N, F={frames}, 2), got {tuple(cells.shape)}")
    if order is not None:
        cells = cells[:, order]
    out = condition.clone()
    start = cells[:, :, 0]  # (B, N, 2)
    later = cells[:, :, 1:]  # (B, N, F − 1, 2)
    valid = (later >= 0).all(-1) & (start >= 0).all(-1).unsqueeze(-1)  # (B, N, F − 1)
    bi, ni, ti = valid.nonzero(as_tuple=True)  # row-major: tracks in order, so later ones write last
    if bi.numel() == 0:
        return out
    if ((later[bi, ni, ti] >= torch.tensor([h, w], device=cells.device)).any()
            or (start[bi, ni] >= torch.tensor([h, w], device=cells.device)).any()):
        raise ValueError(f"a cell lies outside the {h}×{w} latent grid: tracks and latents of different sizes?")
    rows, cols = later[bi, ni, ti, 0], later[bi, ni, ti, 1]
    target = ((bi * frames + ti + 1) * h + rows) * w + cols  # one id per written cell
    # where several tracks write one cell, the last in order wins: keep only its write
    winner = torch.full((b * frames * h * w,), -1, dtype=torch.long, device=cells.device)
    winner = winner.scatter_reduce(0, target, ni, reduce="amax")
    keep = winner[target] == ni
    bi, ni, ti, rows, cols = bi[keep], ni[keep], ti[keep], rows[keep], cols[keep]
    out[bi, :, ti + 1, rows, cols] = condition[bi, :, 0, start[bi, ni, 0], start[bi, ni, 1]]
    return out
