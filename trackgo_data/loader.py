"""Streaming training batches out of format-v1 shards with webdataset.

    ds = make_dataset("out/shards/*.tar", batch_size=2, num_frames=14, size=(512, 288),
                      shuffle=64, shardshuffle=100, resampled=True)
    for batch in ds:          # Batch, tensors on CPU
        batch.video           # (B, L, 3, H, W) uint8

Shard handling is webdataset's: shard shuffling, node/worker splitting, resampling (each node
draws shards with replacement — for multi-node training, combine with ``with_epoch``). A corrupt
sample (missing member, undecodable mp4, inconsistent shape) or a corrupt tar is skipped by a
webdataset handler that counts it in :class:`LoaderStats` and logs a warning; iteration goes on.
Counts live in the process that iterates (per DataLoader worker).

Shards of a build output folder are read as its ``manifest.parquet`` has them
(:func:`follow_manifests`): a source removed from the corpus leaves the manifest at the next
build, and its samples, still in their shards until ``trackgo data compact``, are skipped.
"""
from __future__ import annotations

import functools
import glob
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .render import render_trajectories
from .sample import MASK_STRIDE, Sample, SampleError, decode_sample, rescale_tracks

log = logging.getLogger(__name__)


@dataclass
class LoaderStats:
    """Samples (or shards) skipped because of an error, with the first few messages."""

    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def handler(self, exn: Exception) -> bool:
        self.skipped += 1
        if len(self.errors) < 20:
            self.errors.append(f"{type(exn).__name__}: {exn}")
        log.warning("skipping a corrupt sample: %s", exn)
        return True


@dataclass
class Batch:
    """A training batch. Tensors are torch uint8 / float32 / bool on CPU.

    key        list[str]                 B
    image      (B, 3, H, W) uint8        first frame
    video      (B, L, 3, H, W) uint8
    trajectory (B, L, 3, H, W) uint8     rendered P
    masks      (B, L, H/8, W/8) uint8    0 background, j+1 component j
    tracks     list[(L, N_b, 2) float32] pixels at H×W (N varies per sample)
    visibility list[(L, N_b) bool]
    components list[(N_b,) int64]
    meta       list[dict]
    """

    key: list[str]
    image: Any
    video: Any
    trajectory: Any
    masks: Any
    tracks: list[Any]
    visibility: list[Any]
    components: list[Any]
    meta: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.key)


def expand_urls(urls: str | Path | Sequence[str | Path]) -> list[str] | str:
    """A glob, a folder or a list of paths → sorted list of paths; brace patterns (``a-{000..009}.tar``)
    and remote URLs are passed to webdataset unchanged."""
    if isinstance(urls, (str, Path)):
        text = str(urls)
        if "{" in text or "://" in text or text.startswith("pipe:"):
            return text
        if Path(text).is_dir():  # a shard folder, or a build output folder holding shards/
            sub = Path(text) / "shards"
            text = str((sub if sub.is_dir() else Path(text)) / "*.tar")
        found = sorted(glob.glob(text))
        if not found:
            raise FileNotFoundError(f"no shards match {text!r}")
        return found
    return [str(u) for u in urls]


@functools.lru_cache(maxsize=16)
def _listed_keys(manifest: str, mtime_ns: int) -> dict[str, frozenset[str]]:
    """{shard path as in the folder: keys of the accepted samples} of a build's manifest."""
    import pyarrow.parquet as pq

    table = pq.read_table(manifest, columns=["key", "status", "shard"]).to_pylist()
    out: dict[str, set[str]] = {}
    root = Path(manifest).parent
    for r in table:
        if r["status"] == "accepted" and r["shard"]:
            out.setdefault(os.path.normpath(root / r["shard"]), set()).add(r["key"])
    return {k: frozenset(v) for k, v in out.items()}


class ManifestFilter:
    """Keeps a sample when its shard lies outside any build folder, or the folder's manifest
    lists it (``select`` predicate; picklable for DataLoader workers)."""

    def __init__(self, listed: dict[str, frozenset[str]]):
        self.listed = listed

    def __call__(self, sample: dict[str, Any]) -> bool:
        keys = self.listed.get(sample.get("__url__", ""))
        return keys is None or sample["__key__"] in keys


def follow_manifests(urls: list[str]) -> tuple[list[str], ManifestFilter | None]:
    """Shards of a build output folder (``<out>/shards/*.tar`` beside ``<out>/manifest.parquet``)
    as its manifest has them: shards it does not reference are left out, and the returned filter
    drops the samples it does not list (those of sources removed since the shards were written,
    until ``trackgo data compact``). Other paths pass unchanged; no filter when none applies."""
    listed: dict[str, frozenset[str]] = {}
    kept: list[str] = []
    for url in urls:
        folder = Path(url).parent
        manifest = folder.parent / "manifest.parquet"
        if folder.name != "shards" or not manifest.is_file():
            kept.append(url)
            continue
        keys = _listed_keys(str(manifest), manifest.stat().st_mtime_ns).get(os.path.normpath(url))
        if keys:
            kept.append(url)
            listed[url] = keys
    return kept, (ManifestFilter(listed) if listed else None)


def resize_sample(s: Sample, size: tuple[int, int]) -> Sample:
    """Resize to ``size=(W, H)``: image/video with area (down) or bilinear (up) interpolation,
    tracks rescaled with the pixel-centre convention (:func:`trackgo_data.sample.rescale_tracks`),
    the trajectory video P rendered again from the rescaled tracks by the one renderer
    (:func:`trackgo_data.render.render_trajectories`, same square size as at inference — a
    resized P would shrink or drop the squares), masks with nearest (labels stay exact)."""
    import cv2

    W, H = size
    if W % MASK_STRIDE or H % MASK_STRIDE:
        raise ValueError(f"size {W}x{H} must be divisible by {MASK_STRIDE}")
    H0, W0 = s.image.shape[:2]
    if (W, H) == (W0, H0):
        return s
    smooth = cv2.INTER_AREA if W < W0 else cv2.INTER_LINEAR

    def each(frames, interp, out_size):
        return np.stack([cv2.resize(f, out_size, interpolation=interp) for f in frames])

    tracks = rescale_tracks(s.tracks, (W0, H0), (W, H))
    meta = {**s.meta, "width": W, "height": H}
    return Sample(
        key=s.key,
        image=cv2.resize(s.image, (W, H), interpolation=smooth),
        video=each(s.video, smooth, (W, H)),
        trajectory=render_trajectories(tracks, s.visibility, s.components, H, W),
        tracks=tracks,
        visibility=s.visibility,
        components=s.components,
        masks=each(s.masks, cv2.INTER_NEAREST, (W // MASK_STRIDE, H // MASK_STRIDE)),
        meta=meta,
    )


def members_size(members: dict[str, Any]) -> tuple[int, int] | None:
    """(W, H) a sample's meta.json records (None when it cannot be read)."""
    import json

    try:
        meta = json.loads(bytes(members["meta.json"]).decode())
        return int(meta["width"]), int(meta["height"])
    except (KeyError, ValueError, TypeError):
        return None


def to_sample(members: dict[str, Any], num_frames: int | None = None,
              size: tuple[int, int] | None = None) -> Sample:
    """Raw shard members → validated :class:`Sample` (first ``num_frames`` frames, resized).

    When resizing, trajectory.mp4 is not decoded: P is rendered from the (trimmed) tracks, at
    the stored size for validation — by the format's contract that is what the member holds —
    and again at ``size`` by :func:`resize_sample`."""
    resize = size is not None and tuple(size) != members_size(members)
    sample = decode_sample(members, decode_trajectory=not resize)
    L = sample.video.shape[0]
    counts = {"trajectory": L if resize else sample.trajectory.shape[0], "masks": sample.masks.shape[0],
              "tracks": sample.tracks.shape[0]}
    if any(count != L for count in counts.values()):
        raise SampleError(f"sample {sample.key}: frame counts differ (video {L}, "
                          + ", ".join(f"{k} {n}" for k, n in counts.items()) + ")")
    if num_frames is not None:
        if L < num_frames:
            raise SampleError(f"sample {sample.key}: {L} frames < num_frames {num_frames}")
        sample.video, sample.trajectory = sample.video[:num_frames], sample.trajectory[:num_frames]
        sample.masks, sample.tracks = sample.masks[:num_frames], sample.tracks[:num_frames]
        sample.visibility = sample.visibility[:num_frames]
    if resize:
        sample.trajectory = render_trajectories(sample.tracks, sample.visibility, sample.components,
                                                *sample.image.shape[:2])
    sample.validate()
    if size is not None:
        sample = resize_sample(sample, tuple(size))
    return sample


def collate(samples: list[Sample]) -> Batch:
    """Stack samples of equal L×H×W into a :class:`Batch` (channels-first tensors)."""
    import torch

    def stack(name: str, perm: tuple[int, ...]):
        return torch.from_numpy(np.stack([getattr(s, name) for s in samples])).permute(*perm).contiguous()

    return Batch(
        key=[s.key for s in samples],
        image=stack("image", (0, 3, 1, 2)),
        video=stack("video", (0, 1, 4, 2, 3)),
        trajectory=stack("trajectory", (0, 1, 4, 2, 3)),
        masks=torch.from_numpy(np.stack([s.masks for s in samples])),
        tracks=[torch.from_numpy(np.ascontiguousarray(s.tracks)) for s in samples],
        visibility=[torch.from_numpy(np.ascontiguousarray(s.visibility)) for s in samples],
        components=[torch.from_numpy(np.asarray(s.components, np.int64)) for s in samples],
        meta=[s.meta for s in samples],
    )


def make_dataset(
    urls: str | Path | Sequence[str | Path],
    *,
    batch_size: int = 1,
    num_frames: int | None = None,
    size: tuple[int, int] | None = None,
    shuffle: int = 0,
    shardshuffle: int | bool = False,
    resampled: bool = False,
    split_by_node: bool = True,
    split_by_worker: bool = True,
    seed: int = 0,
    partial_batches: bool = True,
    stats: LoaderStats | None = None,
):
    """webdataset pipeline yielding :class:`Batch` es (``batch_size=0``: single :class:`Sample` s).

    urls: shard paths, a glob, a folder of ``*.tar`` or a brace pattern. ``shuffle``: sample
    shuffle buffer (0: off). ``shardshuffle``: shard shuffle buffer (False/0: in order; ignored
    when ``resampled``). ``resampled``: draw shards with replacement forever (multi-node).
    The pipeline's ``.stats`` (:class:`LoaderStats`) counts skipped corrupt samples.
    """
    import webdataset as wds

    stats = stats or LoaderStats()
    urls = expand_urls(urls)
    keep = None
    if isinstance(urls, list):
        urls, keep = follow_manifests(urls)
        if not urls:
            raise FileNotFoundError("the manifest of these shards lists no accepted sample")
    ds = wds.WebDataset(
        urls,
        handler=stats.handler,
        resampled=resampled,
        shardshuffle=False if resampled or not shardshuffle else int(shardshuffle),
        nodesplitter=wds.split_by_node if split_by_node and not resampled else None,
        workersplitter=wds.split_by_worker if split_by_worker else None,
        seed=seed,
        empty_check=False,
    )
    if keep is not None:
        ds = ds.select(keep)
    if shuffle:
        ds = ds.shuffle(int(shuffle), seed=seed)
    ds = ds.map(partial(to_sample, num_frames=num_frames, size=size), handler=stats.handler)
    if batch_size:
        ds = ds.batched(int(batch_size), collation_fn=collate, partial=partial_batches)
    ds.stats = stats
    return ds
