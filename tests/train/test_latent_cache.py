"""The optional VAE-latent cache: keyed by shard content + VAE, reused, same training result."""
from __future__ import annotations

import torch

from tests.train.conftest import FRAMES, SIZE, tiny_config


def test_cache_keys_values_and_reuse(tiny_shards, tiny_model_dir, tmp_path):
    from trackgo_data.loader import make_dataset
    from trackgo_model.conditioning import encode_video_latents
    from trackgo_model.train.latent_cache import LatentCache, shard_digest
    from trackgo_model.train.data import load_components

    cfg = tiny_config(tiny_shards, tiny_model_dir, tmp_path / "run")
    vae = load_components(cfg, tmp_path / "run").vae
    shard = str(tiny_shards / "clips-000000.tar")
    cache = LatentCache(tmp_path / "cache", vae, width=SIZE, height=SIZE, num_frames=FRAMES)
    assert cache.build([shard], torch.device("cpu")) == 1
    path = cache.path_for(shard)
    assert path.name == f"{shard_digest(shard)}-{cache.vae_id}-{SIZE}x{SIZE}x{FRAMES}.safetensors"
    mtime = path.stat().st_mtime_ns
    assert cache.build([shard], torch.device("cpu")) == 0 and path.stat().st_mtime_ns == mtime  # reused
    assert cache.open([shard]) == 3

    batch = next(iter(make_dataset(shard, batch_size=1, num_frames=FRAMES, size=(SIZE, SIZE))))
    with torch.no_grad():
        direct = encode_video_latents(vae, batch.video.float() / 127.5 - 1.0)
    got = cache.get(batch.key, torch.device("cpu"))
    assert got.shape == (1, FRAMES, 4, SIZE // 8, SIZE // 8)
    assert torch.equal(got, direct)
    assert cache.get(["not-a-key-000000"], torch.device("cpu")) is None

    with torch.no_grad():  # another VAE (different weights) → another cache entry
        next(vae.parameters()).add_(1.0)
    other = LatentCache(tmp_path / "cache", vae, width=SIZE, height=SIZE, num_frames=FRAMES)
    assert other.vae_id != cache.vae_id and other.path_for(shard) != path


def test_training_with_the_cache_matches_training_without(tiny_shards, tiny_model_dir, tmp_path):
    from trackgo_model.train import checkpoint as ck
    from trackgo_model.train import train

    extra = dict(max_steps=2, checkpoint_every=10, global_batch_size=1)
    train(tiny_config(tiny_shards, tiny_model_dir, tmp_path / "plain", **extra))
    r = train(tiny_config(tiny_shards, tiny_model_dir, tmp_path / "cached",
                          **extra, **{"data.latent_cache": str(tmp_path / "cache")}))
    assert r["step"] == 2 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    a = ck.load_tensors(ck.latest_checkpoint(tmp_path / "plain"), "trainable.safetensors")
    b = ck.load_tensors(ck.latest_checkpoint(tmp_path / "cached"), "trainable.safetensors")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vae_identity_is_the_model_not_the_folder(tiny_model_dir, tmp_path):
    """The same VAE saved in two folders (a stage's base model and its init model) shares cache
    entries; other weights do not."""
    import torch
    from diffusers import AutoencoderKLTemporalDecoder

    from trackgo_model.train.latent_cache import vae_identity

    vae = AutoencoderKLTemporalDecoder.from_pretrained(tiny_model_dir / "vae")
    vae.save_pretrained(tmp_path / "elsewhere" / "vae")
    copy = AutoencoderKLTemporalDecoder.from_pretrained(tmp_path / "elsewhere" / "vae")
    assert dict(copy.config)["_name_or_path"] != dict(vae.config)["_name_or_path"]
    assert vae_identity(copy) == vae_identity(vae)
    with torch.no_grad():
        next(copy.parameters()).add_(1e-3)
    assert vae_identity(copy) != vae_identity(vae)
