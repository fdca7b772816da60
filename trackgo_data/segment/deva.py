"""DEVA (Tracking-Anything-with-DEVA) in automatic mode: SAM proposals + DEVA propagation.

Install from the repository (the PyPI package named ``deva`` is unrelated)::

    git clone https://github.com/hkchengrex/Tracking-Anything-with-DEVA && pip install -e ./Tracking-Anything-with-DEVA
    # weights: its scripts/download_models.sh → saves/DEVA-propagation.pth, saves/sam_vit_h_4b8939.pth

The repository's own frame processor and result saver run unchanged; the saver writes one RGB
PNG per frame whose colour encodes the object id (id = R + 256·G + 65536·B) into a temporary
folder, which is read back into an id map per frame. DEVA segments everything (stuff and
things), so the main *moving* components are chosen afterwards: an object is moving when the
camera-compensated flow of the offline ``flow`` backend inside it exceeds ``min_motion`` on
average; the ``max_components`` largest moving ones (first-frame area) become ids 1..s.
A GPU is expected (``device="cuda"``).
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trackgo_data.segment import MAX_COMPONENTS, check_frames

log = logging.getLogger(__name__)

INSTALL_HINT = ("install DEVA from its repository: git clone "
                "https://github.com/hkchengrex/Tracking-Anything-with-DEVA && pip install -e "
                "./Tracking-Anything-with-DEVA (the PyPI package 'deva' is a different project)")


class DevaUnavailable(RuntimeError):
    """The DEVA package or its weights are missing."""


@dataclass
class DevaConfig:
    deva_weights: str = "saves/DEVA-propagation.pth"
    sam_weights: str = "saves/sam_vit_h_4b8939.pth"
    sam_variant: str = "original"      # original (SAM, weights sam_weights) | mobile (MobileSAM)
    sam_encoder: str = "vit_h"
    device: str = "cuda"
    size: int = 480                    # DEVA's internal shorter side
    detection_every: int = 5
    num_voting_frames: int = 3
    temporal_setting: str = "semionline"
    amp: bool = True
    max_components: int = MAX_COMPONENTS
    min_motion: float = 0.5            # px/frame at 256 px longer side, camera compensated
    min_area: float = 0.005            # share of the frame


def _import_deva():
    try:
        from deva.ext.automatic_processor import process_frame_automatic
        from deva.ext.automatic_sam import get_sam_model
        from deva.ext.ext_eval_args import add_auto_default_args, add_ext_eval_args
        from deva.inference.demo_utils import flush_buffer
        from deva.inference.eval_args import add_common_eval_args
        from deva.inference.inference_core import DEVAInferenceCore
        from deva.inference.result_utils import ResultSaver
        from deva.model.network import DEVA
    except ImportError as exc:
        raise DevaUnavailable(f"the 'deva' segmenter needs the DEVA package ({exc}); {INSTALL_HINT}") from exc
    return dict(process_frame=process_frame_automatic, get_sam_model=get_sam_model,
                add_auto=add_auto_default_args, add_ext=add_ext_eval_args, flush_buffer=flush_buffer,
                add_common=add_common_eval_args, Core=DEVAInferenceCore, ResultSaver=ResultSaver,
                DEVA=DEVA)


def decode_id_png(rgb: np.ndarray) -> np.ndarray:
    """rgb (H,W,3) uint8 id image → ids (H,W) int64 = R + 256·G + 65536·B."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


class DevaSegmenter:
    name = "deva"

    def __init__(self, **cfg) -> None:
        from trackgo_data.config import config_from_dict

        self.cfg = config_from_dict(DevaConfig, cfg)
        self._api = _import_deva()
        missing = [f"{what} ({key}={path})" for what, key, path in (
            ("DEVA propagation weights", "deva_weights", self.cfg.deva_weights),
            ("SAM weights", "sam_weights", self.cfg.sam_weights)) if not Path(path).expanduser().is_file()]
        if missing:
            raise DevaUnavailable(
                "the 'deva' segmenter needs weights that are not there: " + "; ".join(missing)
                + ". Fetch them with the DEVA repository's scripts/download_models.sh and point the "
                  "segmenter options at the files.")
        self.version = f"deva-automatic-{self.cfg.sam_variant}-{self.cfg.sam_encoder}"
        self._model = None
        self._sam = None
        self._config = None

    def _load(self):
        """Build DEVA + SAM once per process (their own argument defaults, our paths)."""
        import argparse

        import torch

        if self._model is not None:
            return
        api, c = self._api, self.cfg
        log.info("loading DEVA %s and SAM %s on %s", c.deva_weights, c.sam_weights, c.device)
        parser = argparse.ArgumentParser()
        api["add_common"](parser)
        api["add_ext"](parser)
        api["add_auto"](parser)
        args = parser.parse_args([
            "--model", str(Path(c.deva_weights).expanduser()),
            "--SAM_CHECKPOINT_PATH", str(Path(c.sam_weights).expanduser()),
            "--SAM_ENCODER_VERSION", c.sam_encoder, "--sam_variant", c.sam_variant,
            "--size", str(c.size), "--detection_every", str(c.detection_every),
            "--num_voting_frames", str(c.num_voting_frames), "--temporal_setting", c.temporal_setting,
        ] + (["--amp"] if c.amp else []))
        config = vars(args)
        config["enable_long_term"] = not config["disable_long_term"]
        network = api["DEVA"](config).to(c.device).eval()
        network.load_weights(torch.load(config["model"], map_location=c.device))
        self._sam = api["get_sam_model"](config, c.device)
        self._model, self._config = network, config

    def raw_ids(self, frames: np.ndarray) -> np.ndarray:
        """frames (L,H,W,3) uint8 → DEVA object ids (L,H,W) int64 (0 = nothing)."""
        import torch
        from PIL import Image

        self._load()
        api = self._api
        config = dict(self._config)
        L = len(frames)
        config["enable_long_term_count_usage"] = False
        with tempfile.TemporaryDirectory(prefix="deva-") as tmp:
            with torch.inference_mode():
                deva = api["Core"](self._model, config=config)
                deva.next_voting_frame = config["num_voting_frames"] - 1
                deva.enabled_long_id()
                saver = api["ResultSaver"](tmp, None, dataset="demo", object_manager=deva.object_manager)
                with torch.autocast(device_type="cuda" if "cuda" in self.cfg.device else "cpu",
                                    enabled=self.cfg.amp and "cuda" in self.cfg.device):
                    for ti in range(L):
                        api["process_frame"](deva, self._sam, f"{ti:05d}.jpg", saver, ti, image_np=frames[ti])
                    api["flush_buffer"](deva, saver)
                saver.end()
            out = np.zeros(frames.shape[:3], np.int64)
            for ti in range(L):
                p = Path(tmp) / "Annotations" / f"{ti:05d}.png"
                if p.is_file():
                    with Image.open(p) as im:
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
        m = small_ids == oid
        if not m.any():
            continue
        score = float(motion[m].mean())
        if score >= min_motion:
            cands.append((area0, int(oid)))
    cands.sort(reverse=True)
    labels = np.zeros(ids.shape, np.int32)
    for new, (_, oid) in enumerate(cands[:max_components], start=1):
        labels[ids == oid] = new
    return labels
