"""Memory of one TrackGo-on-Wan training step on one GPU (docs/wan.md, "Training at 14B").

    acts = measure_activations("wan2.1-i2v-14b", frames=81, height=480, width=832)   # fake tensors
    plan = step_memory("wan2.1-i2v-14b", acts, processes=8, reshard=True, checkpointing=True)

Parameter terms are exact counts on the meta device; activations are measured: the model runs
forward and backward on fake tensors (``FakeTensorMode``: shapes, dtypes and the CPU kernels'
choices, no memory) while a dispatch mode adds up the bytes of every live tensor storage.
A model of 1 and of 2 blocks gives the cost of one more block (its saved activations) and what
remains (embeddings, output, the backward's transients). Measured without trajectories: the
masked path decides from data whether anything is masked, which fake tensors cannot; the
adapter's extra activations per block are counted from its shapes instead (:func:`adapter_bytes`).

Per GPU, for P processes, FSDP with every parameter float32 and sharded, bf16 compute:

    shards       4·(base + added)/P
    encoders     the frozen VAE (float32) and image encoder (bf16), whole on every GPU
    gathered     2·(2 largest units) with ``reshard`` (a block in use and the next prefetched),
                 else 2·(base + added): every unit stays gathered from forward to backward
    grads        4·trainable/P;  optimizer 8·trainable/P (AdamW moments);  ema 4·trainable/P
    activations  checkpointing: blocks·2·N·C (each block's input) + one block re-run with its
                 backward (the 1-block measurement) + the adapter's extra; else blocks·(block +
                 adapter) + the rest

Not counted: the VAE's own activations when it encodes the first-frame condition (the latent
cache removes the clip's encode), the CUDA context, communication buffers and fragmentation.
"""
from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveBytes", "adapter_bytes", "encoder_bytes", "measure_activations", "step_memory"]

GiB = 2 ** 30


class LiveBytes(TorchDispatchMode):
    """Adds up the bytes of the storages of every tensor an op returns while they are alive;
    ``peak`` is the most held at once (tensors made before the mode, e.g. weights, not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.current = self.peak = 0
        self._alive: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self._alive:
                    self._alive.add(key)
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out

    def _free(self, key: int, nbytes: int) -> None:
        self._alive.discard(key)
        self.current -= nbytes


def _fakeify(model: torch.nn.Module, mode) -> None:
    """Give ``mode`` ownership of parameters made outside it (``copy.deepcopy`` of a fake tensor
    makes a new fake mode)."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if getattr(p, "fake_mode", None) is not mode:
                setattr(module, name, torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                                         requires_grad=p.requires_grad))


def _step_peak(config: dict[str, Any], frames: int, height: int, width: int, dtype: torch.dtype,
               trainable: tuple[str, ...], fake: bool) -> int:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..configs import TrackGoConfig
    from .model import TrackGoWan, build_transformer

    latent = ((frames - 1) // 4 + 1, height // 8, width // 8)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the compute dtype: no conversion (fake tensors cannot swap)
    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    try:
        with mode, warnings.catch_warnings():
            # the adapters copy W_q, W_k with copy.deepcopy, which reads a fake tensor's data pointer
            warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
            model = TrackGoWan(build_transformer(config, device="cpu"), TrackGoConfig(alpha_frames=25))
            if fake:
                _fakeify(model, mode)
            model.requires_grad_(False)
            for p in model.named_group_parameters(trainable).values():
                p.requires_grad_(True)
            c = config
            x = torch.randn(1, c["in_channels"], *latent)
            text = torch.randn(1, 512, c["text_dim"])
            image = torch.randn(1, 257, c["image_dim"]) if c.get("image_dim") else None
            live = LiveBytes()
            with live:
                out = model(x, torch.tensor([500.0]), text, image)
                out.float().square().mean().backward()
            return live.peak
    finally:
        torch.set_default_dtype(default)


def measure_activations(preset: str | dict[str, Any] = "wan2.1-i2v-14b", *, frames: int = 81, height: int = 480,
                        width: int = 832, dtype: torch.dtype = torch.bfloat16,
                        trainable: tuple[str, ...] = ("encoder", "adapter", "temporal_qkv"),
                        fake: bool = True) -> dict[str, int]:
    """Peak activation bytes of a forward + backward of the preset with 1 and with 2 blocks →
    {"block": 2-block − 1-block (what one more block keeps), "one_block_step": the 1-block peak}.
    ``fake=False`` runs real tensors (tiny models: the check that fake tensors measure the same)."""
    from .model import WAN_PRESETS

    config = dict(WAN_PRESETS[preset]) if isinstance(preset, str) else dict(preset)
    peaks = [_step_peak({**config, "num_layers": n}, frames, height, width, dtype, trainable, fake) for n in (1, 2)]
    return {"block": peaks[1] - peaks[0], "one_block_step": peaks[0]}


def adapter_bytes(tokens: int, width: int, heads: int, frames: int, element: int = 2) -> int:
    """What one adapter keeps for backward beyond the base block: the trajectory feature f, Q′, K′
    (N × C each), A′ and its hit mask (heads·P·F² in float32 and bool), the adapter term (N × C)."""
    positions = tokens // frames
    return 4 * tokens * width * element + heads * positions * frames * frames * 5


#: Wan2.1's image encoder (open-clip ViT-H/14 as transformers' CLIPVisionModel)
VIT_H = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
         "image_size": 224, "patch_size": 14}


def encoder_bytes(config: dict[str, Any]) -> int:
    """The frozen encoders a step runs: Wan's VAE (float32, its default config is Wan2.1's) and,
    when the transformer takes image tokens, the ViT-H image encoder (bf16). Counted on meta."""
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        total = 4 * sum(p.numel() for p in AutoencoderKLWan().parameters())
        if config.get("image_dim"):
            total += 2 * sum(p.numel() for p in CLIPVisionModel(CLIPVisionConfig(**VIT_H)).parameters())
    return total


def step_memory(preset: str | dict[str, Any], activations: dict[str, int], *, frames: int = 81, height: int = 480,
                width: int = 832, processes: int = 8, reshard: bool = True, checkpointing: bool = True,
                trainable: tuple[str, ...] = ("encoder", "adapter", "temporal_qkv")) -> dict[str, float]:
    """The module docstring's terms in GiB per GPU for ``activations`` measured at the same clip
    size, their ``total`` and ``fits_80gb`` (total ≤ 80·10⁹ bytes)."""
    from .model import WAN_PRESETS, TrackGoWan, build_transformer

    config = dict(WAN_PRESETS[preset]) if isinstance(preset, str) else dict(preset)
    model = TrackGoWan(build_transformer(config, device="meta"))
    everything = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.named_group_parameters(trainable).values())
    unit = max(sum(p.numel() for p in b.parameters()) for b in model.transformer.blocks)  # adapter inside
    blocks = len(model.transformer.blocks)
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    latent_frames = (frames - 1) // 4 + 1
    tokens = latent_frames * (height // 16) * (width // 16)
    extra = adapter_bytes(tokens, dim, config["num_attention_heads"], latent_frames)
    if checkpointing:
        acts = blocks * 2 * tokens * dim + activations["one_block_step"] + extra
    else:
        acts = blocks * (activations["block"] + extra) + activations["one_block_step"] - activations["block"]
    terms = {"shards": 4 * everything / processes, "encoders": encoder_bytes(config),
             "gathered": 2 * (2 * unit if reshard else everything),
             "grads": 4 * train / processes, "optimizer": 8 * train / processes, "ema": 4 * train / processes,
             "activations": acts}
    out = {k: v / GiB for k, v in terms.items()}
    total = sum(terms.values())
    out.update(total=total / GiB, fits_80gb=total <= 80e9, tokens=tokens, trainable_params=train,
               params=everything)
    return out
