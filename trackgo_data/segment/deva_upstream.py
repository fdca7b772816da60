"""How the ``deva`` segmenter drives upstream DEVA's automatic mode (a clone installed by
``make setup-paper``; never copied or patched here).

Upstream is imported once (:func:`import_deva`) and run unchanged, except for what this module
hands it: its own argument defaults with no path left relative to the working directory
(:func:`upstream_config`); frame preparation on the configured device (:func:`prepare_frame`,
swapped in while the backend runs, because upstream's moves frames with ``.cuda()``); ResNet
constructors without ImageNet weights (:func:`untrained`: upstream would download weights that
the DEVA checkpoint overwrites anyway); the stock ``segment_anything`` predictor's input
(:func:`match_stock_sam`); and the end of its result saver's thread (:func:`finish_saver`).
The saver writes one RGB PNG per frame whose colour encodes the object id
(:func:`decode_id_png`).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

INSTALL_HINT = ("run `make setup-paper` (DEVA from a clone of "
                "https://github.com/hkchengrex/Tracking-Anything-with-DEVA: DEVA_SRC=/path/to/clone), or "
                "pip install 'trackgo[paper]' (segment-anything, timm, pycocotools, pulp, supervision; "
                "torchvision matching torch) and pip install /path/to/clone; the PyPI package 'deva' is a "
                "different project")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: upstream keeps per-call state in module globals (frame preparation) and in the SAM predictor
UPSTREAM_LOCK = threading.RLock()


class DevaUnavailable(RuntimeError):
    """The DEVA package (or one of its imports) is missing."""


def import_deva() -> dict[str, Any]:
    """Upstream's pieces the backend drives, by role → module or callable; raises
    :class:`DevaUnavailable` naming what to install."""
    import warnings

    # DEVA's MobileSAM registers TinyViT names timm already has: one warning per name, nothing wrong
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Overwriting tiny_vit", category=UserWarning)
        try:
            import deva.ext.automatic_processor as processor
            import deva.model.resnet as resnet
            from deva.ext.automatic_sam import get_sam_model
            from deva.ext.ext_eval_args import add_auto_default_args, add_ext_eval_args
            from deva.ext.MobileSAM.setup_mobile_sam import setup_model as setup_mobile_sam
            from deva.inference.demo_utils import flush_buffer
            from deva.inference.eval_args import add_common_eval_args
            from deva.inference.inference_core import DEVAInferenceCore
            from deva.inference.result_utils import ResultSaver
            from deva.model.network import DEVA
        except ImportError as exc:
            raise DevaUnavailable(f"the 'deva' segmenter needs DEVA's automatic mode ({exc}); {INSTALL_HINT}") from exc
    return dict(processor=processor, resnet=resnet, get_sam_model=get_sam_model, add_auto=add_auto_default_args,
                add_ext=add_ext_eval_args, setup_mobile_sam=setup_mobile_sam, flush_buffer=flush_buffer,
                add_common=add_common_eval_args, Core=DEVAInferenceCore, ResultSaver=ResultSaver, DEVA=DEVA)


def deva_version() -> str:
    """The installed DEVA package's version ("unknown" when it records none)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deva")
    except PackageNotFoundError:
        return "unknown"


def upstream_config(api: dict[str, Any], cfg, mobile_random: str | None) -> dict:
    """Upstream's own argument defaults with the settings of ``cfg`` (a ``DevaConfig``); unused
    upstream paths (``./saves/…``) become None. ``mobile_random``: a random MobileSAM file to load
    instead of the configured one (``random_init``)."""
    parser = argparse.ArgumentParser()
    api["add_common"](parser)
    api["add_ext"](parser)
    api["add_auto"](parser)
    config = vars(parser.parse_args([]))
    for key, value in list(config.items()):
        if isinstance(value, str) and value.startswith("./"):
            config[key] = None
    sam_path = None if cfg.random_init else str(Path(cfg.sam_weights).expanduser())
    config.update(
        model=None if cfg.random_init else str(Path(cfg.deva_weights).expanduser()),
        SAM_CHECKPOINT_PATH=sam_path if cfg.sam_variant == "original" else None,
        MOBILE_SAM_CHECKPOINT_PATH=mobile_random or (sam_path if cfg.sam_variant == "mobile" else None),
        SAM_ENCODER_VERSION=cfg.sam_encoder, sam_variant=cfg.sam_variant,
        SAM_NUM_POINTS_PER_SIDE=cfg.points_per_side, SAM_PRED_IOU_THRESHOLD=cfg.pred_iou_thresh,
        size=cfg.size, detection_every=cfg.detection_every, num_voting_frames=cfg.num_voting_frames,
        temporal_setting=cfg.temporal_setting, amp=cfg.amp)
    config["enable_long_term"] = not config["disable_long_term"]
    return config


def decode_id_png(rgb: np.ndarray) -> np.ndarray:
    """rgb (H,W,3) uint8 id image → ids (H,W) int64 = R + 256·G + 65536·B."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def prepare_frame(image_np: np.ndarray, min_side: int, device) -> "torch.Tensor":  # noqa: F821
    """image_np (H,W,3) uint8 RGB → (3,h,w) float32 on ``device``: scaled to [0,1], normalised with
    ImageNet's mean/std, resized (bilinear) so the shorter side is ``min_side`` (≤ 0 keeps H×W).
    The input DEVA's automatic mode expects, built where the model is."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(image_np)).to(device).permute(2, 0, 1).float() / 255
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    x = (x - mean) / std
    if min_side > 0:
        h, w = image_np.shape[:2]
        scale = min_side / min(h, w)
        x = F.interpolate(x[None], (int(h * scale), int(w * scale)), mode="bilinear", align_corners=False)[0]
    return x


def frame_preparation_on(device) -> Callable:
    """Upstream's ``get_input_frame_for_deva(image_np, min_side)`` signature, on ``device``."""
    return functools.partial(_prepare_on, device=device)


def _prepare_on(image_np: np.ndarray, min_side: int, *, device):
    return prepare_frame(image_np, min_side, device)


@contextlib.contextmanager
def swapped(module, name: str, value):
    """``module.name`` is ``value`` inside the block, restored after it."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def untrained(build: Callable, pretrained: bool = True, extra_dim: int = 0):
    """Upstream's ResNet constructor ``build`` called without ImageNet weights."""
    return build(pretrained=False, extra_dim=extra_dim)


def match_stock_sam(sam) -> None:
    """DEVA's MobileSAM encoder returns ``(features, None)`` for the SAM-HQ fork of segment_anything;
    the stock package's predictor expects the features alone: give it them."""
    import inspect

    import torch

    model = sam.predictor.model
    if "interm_embeddings" in inspect.signature(type(model.mask_decoder).forward).parameters:
        return  # the SAM-HQ fork: it unpacks the pair itself

    class FeaturesOnly(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder
            self.img_size = encoder.img_size

        def forward(self, x):
            out = self.encoder(x)
            return out[0] if isinstance(out, tuple) else out

    model.image_encoder = FeaturesOnly(model.image_encoder)


def finish_saver(saver) -> None:
    """End upstream's saver thread; a thread that died (an error while saving) is reported, not waited on."""
    if saver.thread.is_alive():
        saver.queue.put(None)
        saver.thread.join()
    else:
        raise RuntimeError("DEVA's result saver stopped early (see the error above)")
