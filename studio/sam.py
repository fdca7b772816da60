"""Click an object, get its mask: Segment Anything (``segment-anything``) with one positive point.

``SamClicker(weights)`` loads a SAM checkpoint (``sam_vit_h_4b8939.pth``, ``sam_vit_l_…``,
``sam_vit_b_…``); the encoder size is read from the weights. The image embedding is computed once
per image and reused for every click on it.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# image-encoder width → segment_anything registry name
ENCODER_WIDTHS = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}


def sam_model_type(state_dict: dict) -> str:
    """The registry name of a SAM state dict, from its image encoder's width."""
    pos = state_dict.get("image_encoder.pos_embed")
    if pos is None:
        raise ValueError("not a Segment Anything checkpoint: no image_encoder.pos_embed")
    width = int(pos.shape[-1])
    if width not in ENCODER_WIDTHS:
        raise ValueError(f"SAM image encoder of width {width} is none of vit_h/vit_l/vit_b "
                         f"({', '.join(map(str, ENCODER_WIDTHS))})")
    return ENCODER_WIDTHS[width]


class SamClicker:
    def __init__(self, weights: str | Path, device: str = "cpu"):
        import torch
        from segment_anything import SamPredictor, sam_model_registry

        weights = Path(weights).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(f"SAM weights {weights} not found: pass --sam with a Segment Anything "
                                    "checkpoint such as sam_vit_h_4b8939.pth")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        kind = sam_model_type(state)
        sam = sam_model_registry[kind]()
        sam.load_state_dict(state)
        self.predictor = SamPredictor(sam.to(device).eval())
        self.kind = kind
        self._key: str | None = None
        self._lock = threading.Lock()  # one predictor, clicks from several tabs
        log.info("loaded SAM %s from %s on %s", kind, weights, device)

    def mask(self, image: np.ndarray, x: float, y: float) -> np.ndarray:
        """image (H,W,3) uint8, a click at (x, y) → (H,W) bool: SAM's best-scoring mask of the three."""
        image = np.ascontiguousarray(np.asarray(image, np.uint8)[..., :3])
        key = hashlib.sha1(image.tobytes()).hexdigest() + str(image.shape)
        with self._lock:
            if key != self._key:
                self.predictor.set_image(image)
                self._key = key
            masks, scores, _ = self.predictor.predict(point_coords=np.array([[x, y]], np.float32),
                                                      point_labels=np.array([1]), multimask_output=True)
        return np.asarray(masks[int(np.argmax(scores))], bool)
