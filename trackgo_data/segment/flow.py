"""Offline motion segmentation from dense optical flow (no learned weights).

Steps, all at a reduced resolution (longer side ``flow_long_side``, default 256):

1. DIS optical flow between consecutive frames, forward and backward.
2. Camera (dominant) motion per frame pair: a RANSAC homography fitted to flow correspondences on
   a sparse grid; the residual flow = flow − homography flow is the motion of things themselves.
3. Every first-frame pixel is followed through the clip along the chained forward flow; its
   evidence of independent motion is the largest norm of its accumulated residual displacement
   (px at the flow resolution). Static scenes and pure camera motion give ≈ 0; a moving object
   grows linearly with time, while flow noise averages out. A path stops accumulating once it is
   occluded: forward–backward flow disagree, it leaves the image, or its (blurred) grey value
   drifts from its first-frame value by more than ``photometric_threshold``.
4. Evidence > max(``motion_threshold``, ``noise_factor`` × median) → morphology and hole
   filling; inside each region only evidence ≥ ``relative_threshold`` × the region's 95th
   percentile stays (removes the halo that smoothed flow spreads around a moving object);
   connected components outside [``min_area``, ``max_area``] are dropped; the
   ``max_components`` largest stay.
5. Ids propagate: the first-frame labels of still-trusted paths are forward-splatted to their
   positions in frame t, holes are closed per id, and pixels of frame t's own residual-motion
   mask within 2 px of a component join it. Ids therefore never swap or appear from nowhere.

Cost on a 1024×576×25 clip: the two DIS passes dominate; see ``benchmarks/clip_cost.py``.
``last_evidence`` keeps the evidence map of the last call (for previews/debugging) and
``last_grey`` the grey frames (L,h,w) uint8 it analysed, which the clip filters reuse instead of
reducing the frames a second time, and ``last_labels`` the labels (L,h,w) int32 at the flow
resolution whose nearest-neighbour upscale is the result (the sample's masks are voted on them).
These by-products, like the DIS instance, are kept per thread, so threads may share a segmenter.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from trackgo_data.filters import small_grey
from trackgo_data.segment import MAX_COMPONENTS, check_frames, relabel_by_area


@dataclass
class FlowSegConfig:
    max_components: int = MAX_COMPONENTS
    flow_long_side: int = 256
    dis_preset: str = "fast"            # ultrafast | fast | medium (cv2 DISOpticalFlow presets)
    dis_finest_scale: int = 1           # DIS stops at 1/2^k of the flow resolution (presets: 2)
    motion_threshold: float = 2.0       # px at flow resolution: accumulated residual displacement
    frame_threshold: float = 0.6        # px/frame at flow resolution: per-frame residual mask
    min_area: float = 0.005             # share of the image below which a component is dropped
    max_area: float = 0.85              # a "component" larger than this means the camera model failed
    ransac_threshold: float = 1.0       # px at flow resolution
    grid_step: int = 6                  # px between homography correspondences
    smooth_sigma: float = 1.5           # px, Gaussian on the evidence map
    noise_factor: float = 3.0           # threshold ≥ noise_factor × median evidence
    relative_threshold: float = 0.4     # per region: keep evidence ≥ this × its 95th percentile
    fb_rel: float = 0.05                # occluded when |f + b|² > fb_rel·(|f|² + |b|²) + fb_abs
    fb_abs: float = 1.0                 # px² at flow resolution
    photometric_threshold: float = 30.0  # grey levels a path may drift from its first-frame value (0: off)

    def __post_init__(self) -> None:
        if not 1 <= self.max_components <= MAX_COMPONENTS:
            raise ValueError(f"max_components must be in 1..{MAX_COMPONENTS}")
        if self.dis_preset not in ("ultrafast", "fast", "medium"):
            raise ValueError(f"dis_preset must be ultrafast|fast|medium, got {self.dis_preset!r}")
        if self.flow_long_side < 32:
            raise ValueError("flow_long_side must be >= 32")


class FlowSegmenter:
    name = "flow"

    def __init__(self, **cfg) -> None:
        import cv2

        from trackgo_data.config import config_from_dict

        self.cfg = config_from_dict(FlowSegConfig, cfg)
        self.version = f"1-opencv-{cv2.__version__}"
        self._local = threading.local()
        self._sparse_cache: tuple = (None,)   # ((h, w, step), grid points) of camera_flow's RANSAC
        self._grid_cache: tuple = (None,)     # ((h, w), gx, gy) pixel grids

    @property
    def dis(self):
        """The DIS optical flow of the calling thread (one per thread: it keeps work buffers)."""
        dis = getattr(self._local, "dis", None)
        if dis is None:
            import cv2

            preset = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                      "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                      "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}[self.cfg.dis_preset]
            dis = self._local.dis = cv2.DISOpticalFlow_create(preset)
            dis.setFinestScale(self.cfg.dis_finest_scale)
        return dis

    # by-products of the calling thread's last segment() call (None before the first)
    last_evidence = property(lambda self: getattr(self._local, "evidence", None),
                             doc="(h,w) float32 accumulated residual evidence")
    last_grey = property(lambda self: getattr(self._local, "grey", None),
                         doc="(L,h,w) uint8 grey frames at the flow resolution")
    last_labels = property(lambda self: getattr(self._local, "labels", None),
                           doc="(L,h,w) int32 labels at the flow resolution (upscaled: the result)")

    # ---- helpers ---------------------------------------------------------------------------
    def grey_frames(self, frames: np.ndarray) -> np.ndarray:
        """(L,H,W,3) uint8 → grey (L,h,w) uint8 at the flow resolution (longer side
        ``flow_long_side``, the clip filters' reduction)."""
        return small_grey(frames, self.cfg.flow_long_side)

    def flows(self, grey: np.ndarray) -> np.ndarray:
        """grey (L,h,w) uint8 → forward flows (L−1,h,w,2) float32 (frame t → t+1)."""
        return np.stack([self.dis.calc(grey[t], grey[t + 1], None) for t in range(len(grey) - 1)])

    def camera_flow(self, flow: np.ndarray) -> np.ndarray:
        """flow (h,w,2) → flow explained by one homography (h,w,2) (RANSAC on a sparse grid)."""
        import cv2

        h, w = flow.shape[:2]
        step = self.cfg.grid_step
        key = (h, w, step)
        if self._sparse_cache[0] != key:
            ys, xs = np.mgrid[step // 2:h:step, step // 2:w:step]
            self._sparse_cache = (key, np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32))
        src = self._sparse_cache[1]
        dst = src + flow[step // 2::step, step // 2::step].reshape(-1, 2)
        Hm = None
        if len(src) >= 8:
            Hm, _ = cv2.findHomography(src, dst, cv2.RANSAC, self.cfg.ransac_threshold,
                                       maxIters=500, confidence=0.99)
        if Hm is None:
            return np.broadcast_to(np.median(flow.reshape(-1, 2), 0), flow.shape).astype(np.float32)
        gx, gy = self._grid(h, w)
        (a, b, c), (d, e, f), (g, k, m) = Hm.tolist()
        den = g * gx + k * gy + m
        den[np.abs(den) < 1e-6] = 1e-6
        out = np.empty(flow.shape, np.float32)
        out[..., 0] = (a * gx + b * gy + c) / den - gx
        out[..., 1] = (d * gx + e * gy + f) / den - gy
        return out

    def _grid(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        if self._grid_cache[0] != (h, w):
            gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
            self._grid_cache = ((h, w), gx, gy)
        return self._grid_cache[1], self._grid_cache[2]

    def residual_magnitude(self, frames: np.ndarray) -> np.ndarray:
        """frames (L,H,W,3) uint8 → |flow − camera flow| (L−1,h,w) float32, px/frame at the flow
        resolution (longer side ``flow_long_side``)."""
        flows = self.flows(self.grey_frames(check_frames(frames)))
        out = np.empty(flows.shape[:3], np.float32)
        for t, f in enumerate(flows):
            r = f - self.camera_flow(f)
            out[t] = np.hypot(r[..., 0], r[..., 1])
        return out

    # ---- main ------------------------------------------------------------------------------
    def segment(self, frames: np.ndarray) -> np.ndarray:
        """frames (L,H,W,3) uint8 → labels (L,H,W) int32 (0 background, 1..s, s ≤ max_components)."""
        import cv2

        frames = check_frames(frames)
        L, H, W = frames.shape[:3]
        grey = self.grey_frames(frames)
        self._local.grey, self._local.labels, self._local.evidence = grey, None, None
        h, w = grey.shape[1:]
        dis = self.dis
        # (L−1,h,w,4): forward flow t → t+1 and its camera-compensated residual, remapped together;
        # (L−1,h,w,3): backward flow t+1 → t and the blurred grey of frame t+1, sampled together
        fr = np.empty((L - 1, h, w, 4), np.float32)
        back = np.empty((L - 1, h, w, 3), np.float32)
        for t in range(L - 1):
            f = dis.calc(grey[t], grey[t + 1], None)
            fr[t, ..., :2] = f
            fr[t, ..., 2:] = f - self.camera_flow(f)
            back[t, ..., :2] = dis.calc(grey[t + 1], grey[t], None)
            back[t, ..., 2] = cv2.GaussianBlur(grey[t + 1], (0, 0), 1.0)
        grey0 = cv2.GaussianBlur(grey[0], (0, 0), 1.0).astype(np.float32)

        # follow every first-frame pixel; accumulate its residual displacement
        gx, gy = self._grid(h, w)
        px, py = gx.copy(), gy.copy()
        pos = [(gx, gy)]
        alive_at = [np.ones((h, w), bool)]   # paths still trusted at frame t
        acc_x = np.zeros((h, w), np.float32)
        acc_y = np.zeros((h, w), np.float32)
        evidence = np.zeros((h, w), np.float32)
        alive = np.ones((h, w), bool)
        c = self.cfg
        for t in range(L - 1):
            v = cv2.remap(fr[t], px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            fx, fy = v[..., 0], v[..., 1]
            px, py = px + fx, py + fy
            pos.append((px, py))
            acc_x += np.where(alive, v[..., 2], 0)
            acc_y += np.where(alive, v[..., 3], 0)
            # forward–backward occlusion check: a pixel whose backward flow does not bring it
            # back has been covered by something else; it stops accumulating (keeps its maximum)
            b = cv2.remap(back[t], px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            bx, by = b[..., 0], b[..., 1]
            err = (fx + bx) ** 2 + (fy + by) ** 2
            alive &= err <= c.fb_rel * (fx * fx + fy * fy + bx * bx + by * by) + c.fb_abs
            alive &= (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
            if c.photometric_threshold > 0:
                # appearance check: a path that slid onto another surface (dragged across an
                # occlusion boundary by smoothed flow) changes colour from its first frame
                alive &= np.abs(b[..., 2] - grey0) <= c.photometric_threshold
            np.maximum(evidence, np.hypot(acc_x, acc_y), out=evidence)
            alive_at.append(alive.copy())
        self._local.evidence = evidence
        ev = cv2.GaussianBlur(evidence, (0, 0), c.smooth_sigma)
        # background noise of the accumulated residual sets the bar on shaky footage
        thr = max(c.motion_threshold, c.noise_factor * float(np.median(ev)))
        mask0 = self._clean(ev > thr)
        if c.relative_threshold > 0:
            mask0 = self._tighten(mask0, ev, thr)
        labels0 = self._components(mask0)
        small = np.zeros((L, h, w), np.int32)
        small[0] = labels0
        if labels0.max() > 0:
            for t in range(1, L):
                r = fr[min(t, L - 2), ..., 2:]
                moving = np.hypot(r[..., 0], r[..., 1]) > c.frame_threshold
                small[t] = self._propagate(np.where(alive_at[t], labels0, 0), pos[t], moving, h, w)
        small = relabel_by_area(small, c.max_components)
        self._local.labels = small
        return upscale_labels(small, H, W)

    def _clean(self, mask: np.ndarray) -> np.ndarray:
        import cv2
        from scipy import ndimage

        m = mask.astype(np.uint8)
        k3 = _ellipse(3)
        k5 = _ellipse(5)
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, k3)
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, k5)
        return ndimage.binary_fill_holes(m > 0)

    def _tighten(self, mask: np.ndarray, ev: np.ndarray, thr: float) -> np.ndarray:
        """Per connected region, keep pixels whose evidence reaches ``relative_threshold`` × the
        region's 95th percentile: smoothed flow spreads part of an object's motion onto its
        surroundings, and that halo scales with the object's own motion."""
        import cv2

        n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        if n <= 1:
            return mask
        out = np.zeros_like(mask)
        idx = lab.ravel()
        order = np.argsort(idx, kind="stable")
        bounds = np.searchsorted(idx[order], np.arange(1, n + 1))
        flat_ev = ev.ravel()
        for j in range(1, n):
            members = order[bounds[j - 1]:bounds[j]]
            level = max(thr, self.cfg.relative_threshold * float(np.percentile(flat_ev[members], 95)))
            keep = members[flat_ev[members] >= level]
            out.ravel()[keep] = True
        return self._clean(out)

    def _components(self, mask: np.ndarray) -> np.ndarray:
        """bool (h,w) → int32 labels of connected components above min_area, largest first."""
        import cv2

        n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        total = mask.size
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = [i + 1 for i in np.argsort(-areas)
                if self.cfg.min_area * total <= areas[i] <= self.cfg.max_area * total]
        keep = keep[: self.cfg.max_components]
        out = np.zeros(mask.shape, np.int32)
        for new, old in enumerate(keep, start=1):
            out[lab == old] = new
        return out

    def _propagate(self, labels0: np.ndarray, pos_t: tuple[np.ndarray, np.ndarray], moving: np.ndarray,
                   h: int, w: int) -> np.ndarray:
        """Forward-splat first-frame labels to their positions at frame t, close holes, and let
        adjacent pixels of frame t's own residual-motion mask join the component they touch."""
        import cv2

        fg = labels0 > 0
        xs = np.round(pos_t[0][fg]).astype(np.int64)
        ys = np.round(pos_t[1][fg]).astype(np.int64)
        ok = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        out = np.zeros((h, w), np.int32)
        out[ys[ok], xs[ok]] = labels0[fg][ok]
        k5 = _ellipse(5)
        # close each id separately (grey closing on ids would merge neighbours)
        closed = np.zeros_like(out)
        for j in range(1, int(labels0.max()) + 1):
            m = cv2.morphologyEx((out == j).astype(np.uint8), cv2.MORPH_CLOSE, k5)
            closed[(m > 0) & (closed == 0)] = j
        grow = cv2.dilate(closed.astype(np.uint8), k5)  # nearest id within 2 px (max id wins)
        join = moving & (closed == 0) & (grow > 0)
        closed[join] = grow[join]
        return closed


def upscale_labels(small: np.ndarray, H: int, W: int) -> np.ndarray:
    """small (L,h,w) int labels → (L,H,W) int32 by nearest neighbour (cv2 INTER_NEAREST's
    sampling). An integer factor is a plain block repeat, done without a per-frame resize."""
    import cv2

    L, h, w = small.shape
    if (h, w) == (H, W):
        return small.astype(np.int32, copy=False)
    out = np.empty((L, H, W), np.int32)
    if H % h == 0 and W % w == 0:
        wide = np.repeat(small.astype(np.int32, copy=False), W // w, axis=2)   # (L,h,W)
        out.reshape(L, h, H // h, W)[:] = wide[:, :, None, :]
    else:
        for t in range(L):
            cv2.resize(small[t].astype(np.int32, copy=False), (W, H), dst=out[t],
                       interpolation=cv2.INTER_NEAREST)
    return out


@functools.lru_cache(maxsize=None)
def _ellipse(size: int) -> np.ndarray:
    """Elliptic structuring element size×size uint8 (cached: built once per process)."""
    import cv2

    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    k.setflags(write=False)
    return k
