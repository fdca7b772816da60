"""ObjMC by DragAnything's protocol: the number in the paper's Table 1.

Per video, the same steps on the real and on the generated clip:

1. The tracker (Co-Tracker2 through its hub entry ``cotracker2``) follows a ``grid_size`` ×
   ``grid_size`` query grid (100 × 100) laid on frame 0, over the clip's frames at the clip's own
   resolution, frame 0 included. The grid is Co-Tracker's own: at its 384×512 working size,
   evenly spaced with a margin of 1/64 of the working width, mapped back to the clip's pixels.
2. Per object of the first-frame mask, the maximum of OpenCV's distance transform of the object's
   mask (L2 with the 5×5 mask; pixels beyond the image edge count as inside, so a region that
   touches the border peaks on it; the first maximum in row-major order): the centre of the
   largest inscribed circle as the peer computes it.
3. That point is snapped to the grid track nearest to it at frame 0 (the first one on ties); the
   track, truncated to integer pixels like the peer's trajectory files, is the object's trajectory.

ObjMC is the Euclidean distance between the real and the generated trajectory, one flat mean over
all videos, objects and frames, without visibility mask.

The peer reads frames with OpenCV and passes them on unchanged, so its tracker sees BGR; that is
the default here too (``channel_order="rgb"`` hands over RGB).

Shapes: frames (L, H, W, 3) uint8 RGB; labels0 (H, W) int, 0 = background; tracks (L, N, 2)
float x, y pixels.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trackgo_model.eval.metrics.objmc import ErrorSum, ObjMCError, tracks_to_peer, write_peer_tracks

log = logging.getLogger(__name__)

WORKING_SIZE = (384, 512)      # (H, W) Co-Tracker's predictors resize video to
CHANNEL_ORDERS = ("bgr", "rgb")


def cotracker_grid(grid_size: int, height: int, width: int,
                   working: tuple[int, int] = WORKING_SIZE) -> np.ndarray:
    """Co-Tracker's ``grid_size`` query grid in pixels of a (height, width) clip →
    (grid_size², 2) float32 x, y, row-major (y outer). One point: the working centre."""
    if grid_size < 1:
        raise ObjMCError(f"grid_size must be ≥ 1, got {grid_size}")
    wh, ww = working
    if grid_size == 1:
        grid = np.array([[ww / 2, wh / 2]], np.float64)
    else:
        margin = ww / 64
        gy, gx = np.meshgrid(np.linspace(margin, wh - margin, grid_size),
                             np.linspace(margin, ww - margin, grid_size), indexing="ij")
        grid = np.stack([gx.ravel(), gy.ravel()], 1)
    return (grid * [(width - 1) / (ww - 1), (height - 1) / (wh - 1)]).astype(np.float32)


def peer_centres(labels0: np.ndarray, ids: list[int] | None = None) -> dict[int, tuple[int, int]]:
    """labels0 (H, W) int → {object id: (x, y)} distance-transform maximum of each object's mask
    (see the module doc). ``ids``: the objects (default: every non-zero label)."""
    import cv2

    labels0 = np.asarray(labels0)
    if labels0.ndim != 2:
        raise ObjMCError(f"labels0 must be (H, W), got {labels0.shape}")
    if ids is None:
        ids = [int(i) for i in np.unique(labels0) if i != 0]
    out = {}
    for sid in ids:
        mask = (labels0 == sid).astype(np.uint8)
        if not mask.any():
            raise ObjMCError(f"object {sid} is absent from the first-frame mask")
        _, _, _, (x, y) = cv2.minMaxLoc(cv2.distanceTransform(mask, cv2.DIST_L2, 5))
        out[int(sid)] = (int(x), int(y))
    return out


def snap_to_grid(grid0: np.ndarray, points: np.ndarray) -> np.ndarray:
    """grid0 (N, 2) frame-0 grid positions, points (S, 2) → (S,) int index of the nearest grid
    point to each (Euclidean; the first one on ties)."""
    grid0, points = np.asarray(grid0, np.float64), np.asarray(points, np.float64).reshape(-1, 2)
    if grid0.ndim != 2 or grid0.shape[1] != 2 or not len(grid0):
        raise ObjMCError(f"grid must be (N, 2) with N ≥ 1, got {grid0.shape}")
    return np.linalg.norm(grid0[None] - points[:, None], axis=-1).argmin(axis=1)


def _grid_predictor(tracker):
    """The hub predictor of a Co-Tracker backend (its grid mode is the peer's call), else None."""
    name = str(getattr(tracker, "name", ""))
    if not name.startswith("cotracker"):
        return None
    if name == "cotracker3_online":
        raise ObjMCError("the grid protocol needs an offline Co-Tracker (cotracker2 or cotracker3_offline)")
    return tracker.load()


def grid_tracks(tracker, frames: np.ndarray, grid_size: int) -> np.ndarray:
    """frames (L, H, W, 3) uint8, in the channel order the tracker is to see → tracks
    (L, grid_size², 2) float32 of the grid queried at frame 0.

    A Co-Tracker backend runs its predictor's own grid mode (``grid_size=G`` from frame 0, forward
    only, no support points: the peer's call); any other tracker follows :func:`cotracker_grid`."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ObjMCError(f"frames must be (L, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    predictor = _grid_predictor(tracker)
    if predictor is None:
        tracks, _ = tracker.track(frames, cotracker_grid(grid_size, *frames.shape[1:3]))
        return np.asarray(tracks, np.float32)
    import torch

    device = next(predictor.parameters()).device
    video = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2)[None].float()
    with torch.no_grad():
        tracks, _ = predictor(video, grid_size=grid_size, grid_query_frame=0, backward_tracking=False)
    return tracks[0].float().cpu().numpy()


def object_tracks(tracks: np.ndarray, labels0: np.ndarray, ids: list[int] | None = None
                  ) -> tuple[list[int], np.ndarray]:
    """tracks (L, N, 2) of a frame-0 grid, labels0 (H, W) → (object ids (S,), trajectories
    (L, S, 2) float64 truncated to integers): each object's centre snapped to its nearest track."""
    tracks = np.asarray(tracks)
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise ObjMCError(f"tracks must be (L, N, 2), got {tracks.shape}")
    centres = peer_centres(labels0, ids)
    ids = sorted(centres) if ids is None else [int(i) for i in ids]
    if not ids:
        return [], np.zeros((len(tracks), 0, 2))
    idx = snap_to_grid(tracks[0], np.array([centres[i] for i in ids]))
    return ids, np.trunc(tracks[:, idx].astype(np.float64))


def clip_trajectories(tracker, frames: np.ndarray, labels0: np.ndarray, grid_size: int = 100,
                      channel_order: str = "bgr", ids: list[int] | None = None
                      ) -> tuple[list[int], np.ndarray]:
    """One clip: frames (L, H, W, 3) uint8 RGB, labels0 (H, W) → (ids (S,), (L, S, 2))."""
    frames = np.asarray(frames)
    if channel_order not in CHANNEL_ORDERS:
        raise ObjMCError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    if np.shape(labels0) != frames.shape[1:3]:
        raise ObjMCError(f"first-frame mask is {np.shape(labels0)} but the clip's frames are {frames.shape[1:3]}")
    if channel_order == "bgr":
        frames = frames[..., ::-1]
    return object_tracks(grid_tracks(tracker, frames, grid_size), labels0, ids)


def pair_trajectories(tracker, real: np.ndarray, gen: np.ndarray, labels0: np.ndarray, grid_size: int = 100,
                      channel_order: str = "bgr", ids: list[int] | None = None
                      ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """A real clip and its generated counterpart (same size) → (ids (S,), real (L, S, 2),
    generated (L', S, 2)); objects from the real clip's first-frame mask ``labels0``."""
    if np.shape(real)[1:] != np.shape(gen)[1:]:
        raise ObjMCError(f"real {np.shape(real)[1:3]} and generated {np.shape(gen)[1:3]} frames differ in size: "
                         "the protocol compares pixels of one resolution")
    ids, gt = clip_trajectories(tracker, real, labels0, grid_size, channel_order, ids)
    _, pred = clip_trajectories(tracker, gen, labels0, grid_size, channel_order, ids)
    return ids, gt, pred


def pair_errors(gt: np.ndarray, pred: np.ndarray, video: str = "") -> np.ndarray:
    """(L, S, 2) and (L', S, 2) → (min(L, L'), S) distances (a warning when the lengths differ)."""
    n = min(len(gt), len(pred))
    if len(gt) != len(pred):
        log.warning("%s: %d real vs %d generated frames; comparing the first %d", video, len(gt), len(pred), n)
    return np.linalg.norm(np.asarray(gt[:n], np.float64) - np.asarray(pred[:n], np.float64), axis=-1)


def first_frame_mask(masks: Path, name: str) -> np.ndarray:
    """``masks/<name>.png`` or the first file (numeric order) of ``masks/<name>/`` → (H, W) ids.
    Raw VIPSeg panomasks and COCO-panoptic RGB PNGs are both read; void (0, glitch 200) → 0."""
    from trackgo_data.vipseg import read_mask
    from trackgo_model.eval.metrics import image_files

    folder = masks / name
    if folder.is_dir():
        files = image_files(folder)
    else:
        files = [p for p in (masks / f"{name}.png",) if p.is_file()]
    if not files:
        raise ObjMCError(f"no first-frame mask for {name}: expected {masks / name}.png or {folder}/<frame>.png")
    return read_mask(files[0])


def objmc_videos(tracker, real_dir: str | Path, gen_dir: str | Path, masks_dir: str | Path, *,
                 grid_size: int = 100, num_frames: int | None = 14, channel_order: str = "bgr",
                 save_dir: str | Path | None = None) -> dict:
    """The protocol over folders of videos (mp4 files or frame folders, see ``metrics.list_videos``):
    every real video needs a generated one of the same name and size and a first-frame mask.
    ``num_frames``: the first frames of each clip (None: all). ``save_dir``: peer-format
    trajectory files go to ``save_dir/gt`` and ``save_dir/pred``.

    Returns {"objmc", "num_videos", "num_objects", "num_entries", "per_video", "skipped"}; a
    video whose mask holds no object is skipped (listed with the reason)."""
    from trackgo_model.eval.metrics import list_videos, read_video

    real, gen = list_videos(real_dir), list_videos(gen_dir)
    missing = sorted(set(real) - set(gen))
    if missing:
        raise ObjMCError(f"{gen_dir} lacks generated videos for {', '.join(missing[:5])}")
    total, per_video, skipped, num_objects = ErrorSum(), {}, {}, 0
    for name, path in real.items():
        labels0 = first_frame_mask(Path(masks_dir), name)
        if not labels0.any():
            skipped[name] = "no object in the first-frame mask"
            log.warning("%s: %s; left out", name, skipped[name])
            continue
        real_clip, gen_clip = read_video(path, num_frames), read_video(gen[name], num_frames)
        try:
            ids, gt, pred = pair_trajectories(tracker, real_clip, gen_clip, labels0, grid_size, channel_order)
        except ObjMCError as exc:
            raise ObjMCError(f"{name}: {exc}") from exc
        video = ErrorSum()
        video.add(pair_errors(gt, pred, name))
        per_video[name] = video.mean
        total.merge(video)
        num_objects += len(ids)
        if save_dir is not None:
            write_peer_tracks(Path(save_dir) / "gt" / f"{name}.json", tracks_to_peer(gt, ids))
            write_peer_tracks(Path(save_dir) / "pred" / f"{name}.json", tracks_to_peer(pred, ids))
    if not per_video:
        raise ObjMCError(f"no video under {real_dir} could be scored: {skipped}")
    return {"objmc": total.mean, "num_videos": len(per_video), "num_objects": num_objects,
            "num_entries": total.count, "per_video": per_video, "skipped": skipped}
