"""Optional cache of the VAE video latents x0 of every training sample, one file per shard.

Encoding the L frames of each sample with the VAE is the part of a training step that never
changes between epochs (the posterior mode is deterministic), so it can be done once:

    <cache_dir>/<shard sha256[:16]>-<vae id>-<W>x<H>x<L>.safetensors   {sample key: (L, 4, H/8, W/8)}

The file name is the cache key: the shard's content hash (a rebuilt shard gets a new entry), the
VAE identity (hash of its config and weights), and the frame size and count the loader produces.
Files are written atomically; a run that finds them reuses them, a run on several processes
splits the missing shards among the ranks. The noise-augmented conditioning latent of the first
frame is drawn fresh every step and is not cached.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import torch

from trackgo_data.config import atomic_write_bytes

log = logging.getLogger(__name__)


def vae_identity(vae: torch.nn.Module, length: int = 12) -> str:
    """sha256 over the VAE's config, dtype and parameter bytes (what decides its latents).

    Config entries that diffusers adds about the file rather than the model (``_name_or_path``,
    ``_class_name``, … — names starting with ``_``) are left out: the same VAE read from another
    folder has the same identity."""
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]


def shard_digest(path: str | Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


class LatentCache:
    """x0 latents by sample key for a list of shards (see the module docstring)."""

    def __init__(self, root: str | Path, vae: torch.nn.Module, *, width: int, height: int, num_frames: int,
                 encode: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """encode: video (1, L, 3, H, W) in [-1, 1] → latents (1, …) (default: SVD's
        ``encode_video_latents`` with ``vae``); ``vae`` names the cache files either way."""
        self.root = Path(root)
        self.vae = vae
        self.encode = encode
        self.size = (width, height)
        self.num_frames = num_frames
        self.vae_id = vae_identity(vae)
        self._index: dict[str, Path] = {}

    def path_for(self, shard: str | Path) -> Path:
        w, h = self.size
        return self.root / f"{shard_digest(shard)}-{self.vae_id}-{w}x{h}x{self.num_frames}.safetensors"

    @torch.no_grad()
    def build(self, shards: list[str], device: torch.device, *, rank: int = 0, world: int = 1) -> int:
        """Encode the shards of this rank (``shards[rank::world]``) that have no cache file yet.

        Returns the number of files written. Samples the loader rejects are left out (the training
        stream skips them too).
        """
        from safetensors.torch import save

        from trackgo_data.loader import make_dataset
        from trackgo_model.conditioning import encode_video_latents

        dtype = next(self.vae.parameters()).dtype
        encode = self.encode or (lambda video: encode_video_latents(self.vae, video.to(dtype)))
        written = 0
        for shard in shards[rank::world]:
            target = self.path_for(shard)
            if target.is_file():
                continue
            ds = make_dataset(shard, batch_size=1, num_frames=self.num_frames, size=self.size, shuffle=0,
                              resampled=False, split_by_node=False, split_by_worker=False)
            latents = {}
            for batch in ds:
                video = batch.video.to(device=device, dtype=torch.float32) / 127.5 - 1.0
                latents[batch.key[0]] = encode(video)[0].float().to("cpu").contiguous()
            atomic_write_bytes(target, save(latents, metadata={"shard": Path(shard).name, "vae": self.vae_id}))
            written += 1
            log.info("cached the latents of %d samples of %s in %s", len(latents), shard, target.name)
        return written

    def open(self, shards: list[str]) -> int:
        """Index the cached sample keys of ``shards``; returns how many keys are cached."""
        from safetensors import safe_open

        self._index.clear()
        for shard in shards:
            path = self.path_for(shard)
            if not path.is_file():
                raise FileNotFoundError(f"no latent cache for {shard} ({path}); build it first")
            with safe_open(str(path), framework="pt") as fh:
                for key in fh.keys():
                    self._index[key] = path
        return len(self._index)

    def get(self, keys: list[str], device: torch.device) -> torch.Tensor | None:
        """(B, …) float32 (SVD: (B, L, 4, H/8, W/8)) for the batch's keys, or None when one is not cached."""
        from safetensors import safe_open

        if not all(k in self._index for k in keys):
            return None
        out = []
        for k in keys:
            with safe_open(str(self._index[k]), framework="pt") as fh:
                out.append(fh.get_tensor(k))
        return torch.stack(out).to(device=device, dtype=torch.float32)
