"""DEVA (Tracking-Anything-with-DEVA) in automatic mode: SAM proposals + DEVA propagation.

Install with ``make setup-paper`` (DEVA from a clone, ``DEVA_SRC=/path/to/Tracking-Anything-with-DEVA``,
plus what automatic mode imports: segment-anything, timm, pycocotools, pulp, supervision and a
torchvision that matches torch). The PyPI package named ``deva`` is a different project.

Weights are required settings (no defaults relative to the working directory): ``deva_weights``
(``DEVA-propagation.pth``) and ``sam_weights`` (``sam_vit_h_4b8939.pth`` for SAM ViT-H, or
``mobile_sam.pt`` with ``sam_variant=mobile``). ``random_init=true`` builds both networks with
random weights (seed 0) instead — tests and benchmarks only; logged as a warning and recorded in
``version`` (``+random-init``). SAM's automatic generator keeps a mask when its predicted IoU ≥
``pred_iou_thresh`` and its stability ≥ ``stability_score_thresh``; random SAM weights need both
lowered (0) to produce any object.

Upstream's frame processor, consensus, propagation and result saver run unchanged, on
``device`` (``auto``: CUDA when present, else CPU); what is handed to upstream instead of its own
pieces is in :mod:`trackgo_data.segment.deva_upstream`.

DEVA segments everything (stuff and things), so the main *moving* components are chosen
afterwards: an object is moving when the camera-compensated flow of the offline ``flow`` backend
inside it exceeds ``min_motion`` on average; the ``max_components`` largest moving ones
(first-frame area) become ids 1..s.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trackgo_data.segment import MAX_COMPONENTS, check_frames
from trackgo_data.segment.deva_upstream import (INSTALL_HINT, UPSTREAM_LOCK, DevaUnavailable, decode_id_png,
                                                deva_version, finish_saver, frame_preparation_on, import_deva,
                                                match_stock_sam, swapped, untrained, upstream_config)

log = logging.getLogger(__name__)

SAM_FILES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}
MOBILE_SAM_FILE = "mobile_sam.pt"
DEVA_FILE = "DEVA-propagation.pth"
RANDOM_SEED = 0


class DevaWeightsMissing(DevaUnavailable, FileNotFoundError):
    """A weight file is missing; the message names the setting and the file to supply."""


@dataclass
class DevaConfig:
    deva_weights: str = ""             # DEVA-propagation.pth (required unless random_init)
    sam_weights: str = ""              # sam_vit_h_4b8939.pth (original) | mobile_sam.pt (mobile)
    random_init: bool = False          # random weights: tests and benchmarks only (warned, recorded)
    sam_variant: str = "original"      # original (SAM, encoder sam_encoder) | mobile (MobileSAM)
    sam_encoder: str = "vit_h"         # vit_h | vit_l | vit_b
    points_per_side: int = 64          # SAM's prompt grid (upstream automatic mode's default)
    pred_iou_thresh: float = 0.88      # SAM mask filters (SAM's defaults)
    stability_score_thresh: float = 0.95
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    size: int = 480                    # DEVA's internal shorter side (-1: the clip's)
    detection_every: int = 5
    num_voting_frames: int = 3
    temporal_setting: str = "semionline"  # semionline | online
    amp: bool = True                   # autocast on CUDA (ignored on CPU)
    max_components: int = MAX_COMPONENTS
    min_motion: float = 0.5            # px/frame at 256 px longer side, camera compensated
    min_area: float = 0.005            # share of the frame

    def __post_init__(self) -> None:
        if self.sam_variant not in ("original", "mobile"):
            raise ValueError(f"sam_variant must be original or mobile, got {self.sam_variant!r}")
        if self.sam_variant == "original" and self.sam_encoder not in SAM_FILES:
            raise ValueError(f"sam_encoder must be one of {', '.join(SAM_FILES)}, got {self.sam_encoder!r}")
        if self.temporal_setting not in ("semionline", "online"):
            raise ValueError(f"temporal_setting must be semionline or online, got {self.temporal_setting!r}")
        if self.random_init and (self.deva_weights or self.sam_weights):
            raise ValueError("random_init=true and weight files exclude each other: choose one")
        if self.points_per_side < 1 or self.detection_every < 1 or self.num_voting_frames < 1:
            raise ValueError("points_per_side, detection_every and num_voting_frames must be >= 1")

    @property
    def sam_file(self) -> str:
        return MOBILE_SAM_FILE if self.sam_variant == "mobile" else SAM_FILES[self.sam_encoder]


class DevaSegmenter:
    name = "deva"

    def __init__(self, **cfg) -> None:
        from trackgo_data.config import config_from_dict

        self.cfg = settings = config_from_dict(DevaConfig, cfg)
        self.random_init = settings.random_init
        self._api = import_deva()
        if not settings.random_init:
            missing = [f"{key}={path or '(not set)'} ({file})" for key, path, file in (
                ("deva_weights", settings.deva_weights, DEVA_FILE), ("sam_weights", settings.sam_weights, settings.sam_file))
                if not path or not Path(path).expanduser().is_file()]
            if missing:
                raise DevaWeightsMissing(
                    "the 'deva' segmenter needs weight files: " + "; ".join(missing)
                    + ". Get them from the DEVA repository (scripts/download_models.sh) and set "
                      "segmenter.options.<key>=/path/to/file; segmenter.options.random_init=true builds "
                      "random networks instead (tests and benchmarks only)")
        sam = "mobile" if settings.sam_variant == "mobile" else f"original-{settings.sam_encoder}"
        self.version = (f"deva-{deva_version()}-automatic-{sam}"
                        + ("+random-init" if settings.random_init else ""))
        self.network = None          # DEVA's network, once loaded
        self.sam = None              # upstream's automatic SAM generator, once loaded
        self.upstream_config = None  # the argument dict upstream runs with, once loaded

    @property
    def device(self):
        import torch

        name = self.cfg.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(name)

    def load(self) -> None:
        """Build DEVA + SAM once (weights or seeded random init) on ``device``."""
        import torch

        with UPSTREAM_LOCK:
            if self.network is not None:
                return
            api, settings, device = self._api, self.cfg, self.device
            if settings.random_init:
                log.warning("DEVA and SAM (%s) with RANDOM weights (random_init=true): their segments mean "
                            "nothing; for tests and benchmarks only", settings.sam_file)
            log.info("loading DEVA (%s) and SAM (%s) on %s", settings.deva_weights or "random", settings.sam_weights or "random",
                     device)
            printed = io.StringIO()   # upstream prints while building (MobileSAM); stdout is the CLI's
            with tempfile.TemporaryDirectory(prefix="deva-sam-") as tmp, torch.random.fork_rng(devices=[]), \
                    contextlib.redirect_stdout(printed):
                torch.manual_seed(RANDOM_SEED)
                mobile_random = None
                if settings.random_init and settings.sam_variant == "mobile":
                    # upstream always loads MobileSAM from MOBILE_SAM_CHECKPOINT_PATH: hand it a random one
                    mobile_random = str(Path(tmp) / MOBILE_SAM_FILE)
                    torch.save(api["setup_mobile_sam"]().state_dict(), mobile_random)
                config = upstream_config(api, settings, mobile_random)
                with swapped(api["resnet"], "resnet50", functools.partial(untrained, api["resnet"].resnet50)), \
                        swapped(api["resnet"], "resnet18", functools.partial(untrained, api["resnet"].resnet18)):
                    network = api["DEVA"](config)
                if not settings.random_init:
                    try:
                        network.load_weights(torch.load(config["model"], map_location="cpu"))
                    except (RuntimeError, KeyError) as exc:
                        raise DevaUnavailable(f"deva_weights={settings.deva_weights} is not a DEVA propagation "
                                              f"checkpoint ({DEVA_FILE}): {exc}") from exc
                network = network.to(device).eval()
                sam = api["get_sam_model"](config, device)
            if printed.getvalue().strip():
                log.debug("DEVA/SAM printed while loading: %s", printed.getvalue().strip())
            sam.predictor.model.eval()   # upstream's MobileSAM stays in training mode (BatchNorm on batch stats)
            if settings.sam_variant == "mobile":
                match_stock_sam(sam)
            for key in ("pred_iou_thresh", "stability_score_thresh"):
                if not hasattr(sam, key):
                    raise DevaUnavailable(f"this DEVA version's SAM generator has no {key}; {INSTALL_HINT}")
                setattr(sam, key, getattr(settings, key))
            self.network, self.sam, self.upstream_config = network, sam, config

    def raw_ids(self, frames: np.ndarray) -> np.ndarray:
        """frames (L,H,W,3) uint8 → DEVA object ids (L,H,W) int64 (0 = nothing)."""
        import torch
        from PIL import Image

        self.load()
        api, device = self._api, self.device
        config = dict(self.upstream_config)
        L = len(frames)
        # upstream's rule: count long-term memory usage only when the clip can fill it
        config["enable_long_term_count_usage"] = bool(
            config["enable_long_term"] and L / (config["max_mid_term_frames"] - config["min_mid_term_frames"])
            * config["num_prototypes"] >= config["max_long_term_elements"])
        prep = frame_preparation_on(device)
        with UPSTREAM_LOCK, swapped(api["processor"], "get_input_frame_for_deva", prep), \
                tempfile.TemporaryDirectory(prefix="deva-") as tmp:
            with torch.inference_mode():
                deva = api["Core"](self.network, config=config)
                deva.next_voting_frame = config["num_voting_frames"] - 1
                deva.enabled_long_id()
                saver = api["ResultSaver"](tmp, None, dataset="demo", object_manager=deva.object_manager)
                try:
                    with torch.autocast(device_type=device.type if device.type == "cuda" else "cpu",
                                        enabled=self.cfg.amp and device.type == "cuda"):
                        for ti in range(L):
                            api["processor"].process_frame_automatic(deva, self.sam, f"{ti:05d}.jpg", saver,
                                                                     ti, image_np=frames[ti])
                        api["flush_buffer"](deva, saver)
                finally:
                    finish_saver(saver)
            out = np.zeros(frames.shape[:3], np.int64)
            for ti in range(L):
                path = Path(tmp) / "Annotations" / f"{ti:05d}.png"
                if not path.is_file():
                    raise RuntimeError(f"DEVA wrote no result for frame {ti} (expected {path.name})")
                with Image.open(path) as im:
                    out[ti] = decode_id_png(np.asarray(im.convert("RGB")))
        return out

    def segment(self, frames: np.ndarray) -> np.ndarray:
        """frames (L,H,W,3) uint8 → labels (L,H,W) int32 (0 background, 1..s moving components)."""
        frames = check_frames(frames)
        ids = self.raw_ids(frames)
        return select_moving(ids, frames, self.cfg.max_components, self.cfg.min_motion, self.cfg.min_area)


def select_moving(ids: np.ndarray, frames: np.ndarray, max_components: int = MAX_COMPONENTS,
                  min_motion: float = 0.5, min_area: float = 0.005) -> np.ndarray:
    """ids (L,H,W) int object ids → labels (L,H,W) int32 keeping the ``max_components`` largest
    (first-frame area) objects whose mean camera-compensated motion is ≥ ``min_motion``."""
    import cv2

    from trackgo_data.segment.flow import FlowSegmenter

    seg = FlowSegmenter()
    motion = seg.residual_magnitude(frames)                  # (L−1,h,w) px/frame at flow res
    L, H, W = ids.shape
    h, w = motion.shape[1:]
    small_ids = np.stack([cv2.resize(i.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST)
                          for i in ids[:-1]]).astype(np.int64)
    cands = []
    for oid in np.unique(ids[0]):
        if oid == 0:
            continue
        area0 = float((ids[0] == oid).mean())
        if area0 < min_area:
            continue
        inside = small_ids == oid
        if not inside.any():
            continue
        score = float(motion[inside].mean())
        if score >= min_motion:
            cands.append((area0, int(oid)))
    cands.sort(reverse=True)
    labels = np.zeros(ids.shape, np.int32)
    for new, (_, oid) in enumerate(cands[:max_components], start=1):
        labels[ids == oid] = new
    return labels
