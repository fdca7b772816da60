"""ObjMC: how far the generated motion is from the conditioning motion, in pixels.

Two definitions are reported side by side:

* **ours** — every control point of the condition: the trajectories tracked on the real clip
  (the condition P was rendered from them) against the same start points tracked on the generated
  clip; Euclidean distance averaged over (video, frame, point) entries where the point is visible
  in the real clip (occluded ground truth carries no position to compare with).
* **peer** (DragAnything's definition) — one point per object, the centre of the largest inscribed
  circle of its first-frame mask (the maximum of the mask's distance transform), tracked on both
  clips; one flat mean over videos, objects and frames, frame 0 included, no visibility mask.
  Here the centres are tracked directly; :mod:`.objmc_draganything` reproduces the peer's script
  step by step (Co-Tracker2 grid, snapping, integer pixels) for numbers comparable to Table 1.

Peer trajectory files are ``<video>.json`` = ``{segment id: [[x, y] per frame]}``.
Coordinates are pixels at the evaluation resolution.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trackgo_data.config import atomic_write_text

log = logging.getLogger(__name__)


class ObjMCError(ValueError):
    """Trajectory sets that cannot be compared (missing video/segment, bad shapes)."""


def point_errors(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """gt, pred: (L, N, 2) float → (L, N) Euclidean distances."""
    gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
    if gt.shape != pred.shape or gt.ndim != 3 or gt.shape[-1] != 2:
        raise ObjMCError(f"trajectories must both be (L, N, 2); got {gt.shape} and {pred.shape}")
    return np.linalg.norm(gt - pred, axis=-1)


@dataclass
class ErrorSum:
    """Running flat mean: ``total / count``."""

    total: float = 0.0
    count: int = 0

    def add(self, errors: np.ndarray, mask: np.ndarray | None = None) -> None:
        errors = np.asarray(errors, np.float64)
        if mask is not None:
            errors = errors[np.asarray(mask, bool)]
        self.total += float(errors.sum())
        self.count += int(errors.size)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def merge(self, other: "ErrorSum") -> None:
        """Add another sum's entries (the flat mean over both)."""
        self.total += other.total
        self.count += other.count


def objmc_ours(gt: np.ndarray, pred: np.ndarray, gt_visible: np.ndarray | None = None) -> ErrorSum:
    """One video, our definition. gt, pred: (L, N, 2); gt_visible: (L, N) bool or None (all)."""
    err = point_errors(gt, pred)
    if gt_visible is not None and np.shape(gt_visible) != err.shape:
        raise ObjMCError(f"visibility must be {err.shape}, got {np.shape(gt_visible)}")
    errors = ErrorSum()
    errors.add(err, gt_visible)
    return errors


def inscribed_centres(labels0: np.ndarray, ids: list[int] | None = None) -> dict[int, tuple[float, float]]:
    """labels0: (H, W) int, 0 = background → {segment id: (x, y)} centre of the largest inscribed
    circle of each segment (maximum of cv2.distanceTransform, L2, exact mask).

    The image border counts as the mask's boundary (the mask is zero-padded by one pixel), so a
    segment touching the border gets its centre inside, not on the edge. Ties go to the first
    maximum in row-major order.
    """
    import cv2

    labels0 = np.asarray(labels0)
    if labels0.ndim != 2:
        raise ObjMCError(f"labels0 must be (H, W), got {labels0.shape}")
    if ids is None:
        ids = [int(i) for i in np.unique(labels0) if i != 0]
    out: dict[int, tuple[float, float]] = {}
    for sid in ids:
        mask = np.pad((labels0 == sid).astype(np.uint8), 1)
        if not mask.any():
            raise ObjMCError(f"segment {sid} is absent from the first-frame labels")
        dist = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        out[int(sid)] = (float(x - 1), float(y - 1))
    return out


def tracks_to_peer(tracks: np.ndarray, ids: list[int]) -> dict[str, list[list[float]]]:
    """tracks: (L, S, 2) for segments ``ids`` (S,) → peer JSON object {str(id): [[x, y] × L]}."""
    tracks = np.asarray(tracks, np.float64)
    if tracks.ndim != 3 or tracks.shape[1] != len(ids) or tracks.shape[2] != 2:
        raise ObjMCError(f"tracks must be (L, {len(ids)}, 2), got {tracks.shape}")
    return {str(sid): tracks[:, j, :].round(4).tolist() for j, sid in enumerate(ids)}


def write_peer_tracks(path: str | Path, trajectories: dict) -> Path:
    """Write ``{segment id: [[x, y] per frame]}`` atomically as ``<video>.json``."""
    clean = {}
    for sid, traj in trajectories.items():
        arr = np.asarray(traj, np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ObjMCError(f"{path}: segment {sid}: expected [[x, y] per frame], got shape {arr.shape}")
        clean[str(sid)] = arr.tolist()
    return atomic_write_text(path, json.dumps(clean, sort_keys=True))


def read_peer_tracks(path: str | Path) -> dict[str, np.ndarray]:
    """``<video>.json`` → {segment id (str): (L, 2) float64}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ObjMCError(f"{path}: cannot read trajectory file: {exc}") from exc
    if not isinstance(data, dict):
        raise ObjMCError(f"{path}: expected a JSON object {{segment id: [[x, y], ...]}}")
    out = {}
    for sid, traj in data.items():
        arr = np.asarray(traj, np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
            raise ObjMCError(f"{path}: segment {sid}: expected [[x, y] per frame], got shape {arr.shape}")
        out[str(sid)] = arr
    return out


def objmc_peer_files(gt_dir: str | Path, pred_dir: str | Path) -> dict:
    """Peer ObjMC over two folders of ``<video>.json`` files.

    Every ground-truth video and segment must exist in ``pred_dir``. When a pair has different
    frame counts, the first min(L_gt, L_pred) frames are compared (with a warning). Returns
    {"objmc": flat mean, "num_videos", "num_objects", "num_entries", "per_video": {video: mean}}.
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for folder in (gt_dir, pred_dir):
        if not folder.is_dir():
            raise ObjMCError(f"{folder} is not a folder of <video>.json trajectory files")
    gt_files = sorted(gt_dir.glob("*.json"))
    if not gt_files:
        raise ObjMCError(f"{gt_dir} holds no <video>.json trajectory files")
    total, per_video, num_objects = ErrorSum(), {}, 0
    for gf in gt_files:
        pf = pred_dir / gf.name
        if not pf.is_file():
            raise ObjMCError(f"prediction {pf} is missing for ground truth {gf}")
        gt, pred = read_peer_tracks(gf), read_peer_tracks(pf)
        missing = sorted(set(gt) - set(pred))
        if missing:
            raise ObjMCError(f"{pf}: segments {missing} of the ground truth are missing")
        video = ErrorSum()
        for sid, gt_path in gt.items():
            pred_path = pred[sid]
            n = min(len(gt_path), len(pred_path))
            if len(gt_path) != len(pred_path):
                log.warning("%s segment %s: %d ground-truth vs %d predicted frames; comparing %d",
                            gf.stem, sid, len(gt_path), len(pred_path), n)
            video.add(np.linalg.norm(gt_path[:n] - pred_path[:n], axis=-1))
        num_objects += len(gt)
        per_video[gf.stem] = video.mean
        total.merge(video)
    return {
        "objmc": total.mean,
        "num_videos": len(gt_files),
        "num_objects": num_objects,
        "num_entries": total.count,
        "per_video": per_video,
    }


def track_from(tracker, frames: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Track ``points`` (N, 2) from frame 0 of ``frames`` (L, H, W, 3) uint8 → (L, N, 2) float32."""
    tracks, _ = tracker.track(np.asarray(frames), np.asarray(points, np.float32))
    return tracks


def peer_tracks(tracker, frames: np.ndarray, labels0: np.ndarray) -> tuple[list[int], np.ndarray]:
    """One point per segment (inscribed-circle centre of its frame-0 mask), tracked through
    ``frames`` → (segment ids (S,), tracks (L, S, 2))."""
    centres = inscribed_centres(labels0)
    ids = sorted(centres)
    if not ids:
        return [], np.zeros((len(frames), 0, 2), np.float32)
    pts = np.array([centres[i] for i in ids], np.float32)
    return ids, track_from(tracker, frames, pts)
