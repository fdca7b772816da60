"""FID: Fréchet distance of InceptionV3 pool features (2048-d) of real vs generated frames.

The network is the FID variant of InceptionV3 whose weights were ported from TensorFlow's
``inception-2015-12-05`` graph (file ``pt_inception-2015-12-05-6726825d.pth``). It differs from
the classification InceptionV3 in three places, reproduced here:

* the average-pool branch of the A, C and first E blocks ignores zero padding
  (``count_include_pad=False``, as TensorFlow's pooling does);
* the pool branch of the last E block (``Mixed_7c``) uses max pooling, not average pooling;
* the classifier has 1008 outputs (the weights file carries ``fc.*``; features stop before it).

Input: frames in [0, 1] are bilinearly resized to 299×299 and scaled to [−1, 1]; the feature is
the global average of ``Mixed_7c``'s output. No weights are downloaded: the file comes from
``TRACKGO_FID_WEIGHTS`` or an explicit path.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trackgo_model.eval.metrics import MetricUnavailable, resolve_weight_file

log = logging.getLogger(__name__)

WEIGHTS_ENV = "TRACKGO_FID_WEIGHTS"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
FEATURE_DIM = 2048


class ConvBN(nn.Module):
    """Conv (no bias) → BatchNorm (eps 1e-3) → ReLU. Keys ``conv.weight``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def tf_avg_pool(x):
    """3×3 average pooling, stride 1, that ignores the zero padding (TensorFlow's): (B,C,H,W) → same."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """35×35 block: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1. Out 224 + pool_features."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(tf_avg_pool(x))], 1)


class BlockB(nn.Module):
    """35→17 reduction: 3×3/2 | 1×1→3×3→3×3/2 | maxpool/2. Out 384 + 96 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3d, F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    """17×17 block with factorised 7×7 convolutions. Out 768."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = layer(b7dbl)
        return torch.cat([self.branch1x1(x), b7, b7dbl, self.branch_pool(tf_avg_pool(x))], 1)


class BlockD(nn.Module):
    """17→8 reduction. Out 320 + 192 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    """8×8 block with split 1×3 / 3×1 heads. Out 2048. ``max_pool``: the FID graph's last block
    pools with max instead of average."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, **row)
        self.branch3x3_2b = ConvBN(384, 384, **col)
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, **row)
        self.branch3x3dbl_3b = ConvBN(384, 384, **col)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, b3dbl, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """FID InceptionV3. forward(images (B, 3, H, W) float in [0, 1]) → (B, 2048) pool features.

    Module names match the reference weights file, so its state_dict loads directly.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # present in the weights file; unused for features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))


def resolve_weights(path: str | Path | None = None) -> Path:
    """The FID weights file from ``path`` or ``$TRACKGO_FID_WEIGHTS``; MetricUnavailable if absent."""
    return resolve_weight_file(
        path, WEIGHTS_ENV, f"FID needs the Inception weights {WEIGHTS_FILE}",
        f"download it from {WEIGHTS_URL} on a connected machine and set "
        f"{WEIGHTS_ENV}=/path/to/{WEIGHTS_FILE} (or pass --fid-weights)")


def load_fid_inception(path: str | Path | None = None, device: str = "cpu") -> FIDInceptionV3:
    """Build the network and load the reference weights (strict, except BatchNorm's
    ``num_batches_tracked`` counters, which the ported file may omit)."""
    file = resolve_weights(path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    model = FIDInceptionV3()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise MetricUnavailable(
            f"{file} is not the FID Inception weights file: missing {missing[:5]}…, unexpected {unexpected[:5]}…"
        )
    log.info("loaded FID Inception weights from %s", file)
    return model.eval().to(device)


@torch.no_grad()
def inception_features(model: nn.Module, frames: np.ndarray, batch_size: int = 32,
                       device: str | None = None) -> np.ndarray:
    """frames: (N, H, W, 3) uint8 → (N, 2048) float64 features, every frame (no dropped batch)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    device = device or next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(frames), batch_size):
        x = torch.from_numpy(frames[i:i + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255.0
        out.append(model(x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))


def fid_from_videos(model: nn.Module, real: list[np.ndarray], gen: list[np.ndarray], batch_size: int = 32) -> float:
    """real, gen: lists of (T, H, W, 3) uint8 videos → FID over all their frames."""
    from trackgo_model.eval.metrics.frechet import frechet_distance_from_features

    real_feats = np.concatenate([inception_features(model, video, batch_size) for video in real])
    gen_feats = np.concatenate([inception_features(model, video, batch_size) for video in gen])
    return frechet_distance_from_features(real_feats, gen_feats)
