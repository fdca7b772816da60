"""A tiny random-weight Wan image-to-video folder in diffusers' layout, for CPU tests and the toy.

``init_tiny_wan(out_dir, seed, preset)`` writes what ``WanImageToVideoPipeline.save_pretrained``
writes, so every loading path (``load_wan_folder``, ``trackgo train`` with ``model.base=wan``,
``trackgo generate --base wan``, diffusers' own pipeline) runs with no downloads::

    model_index.json
    transformer/      WanTransformer3DModel, WAN_PRESETS[preset] ("tiny": Wan2.1 layout, "tiny-2.2")
    vae/              AutoencoderKLWan, 8 base channels, ×8 in space and ×4 in time like Wan's
    text_encoder/     UMT5EncoderModel, width = the transformer's text_dim
    tokenizer/        a word-level tokenizer (lower-case words, </s> appended), 512 tokens
    image_encoder/    CLIPVisionModel (Wan2.1 layout only), width = the transformer's image_dim
    image_processor/  CLIPImageProcessor (32 px)
    scheduler/        UniPCMultistepScheduler, flow prediction, flow_shift 3

Weights are random, deterministic given ``seed``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

__all__ = ["TINY_VAE", "init_tiny_wan", "tiny_text_encoder", "tiny_tokenizer", "write_wan_folder"]

#: AutoencoderKLWan at CPU size: three down-samplings in space, two of them also in time
TINY_VAE = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_scales": [],
            "temperal_downsample": [False, True, True]}
#: Wan's sampling scheduler (the 480P folders' flow_shift is 3.0; 720P uses 5.0)
WAN_SCHEDULER = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "num_train_timesteps": 1000,
                 "flow_shift": 3.0}
_WORDS = ("a the and of to in on with red green blue yellow white black shape square circle moves left right "
          "up down slowly fast video person car dog cat ball").split()


def tiny_tokenizer():
    """A fast word-level tokenizer with T5's special tokens (<pad> 0, </s> 1, <unk> 2), </s> appended."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def tiny_text_encoder(width: int):
    """A random one-layer ``UMT5EncoderModel`` of ``width`` channels over :func:`tiny_tokenizer`'s vocabulary."""
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(
        vocab_size=len(_WORDS) + 3, d_model=width, d_kv=8, d_ff=2 * width, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def write_wan_folder(out_dir: str | Path, transformer, vae, text_encoder, tokenizer, flow_shift: float = 3.0,
                     image_encoder=None, processor=None, transformer_2=None, boundary_ratio: float | None = None
                     ) -> Path:
    """Save the parts as a diffusers Wan image-to-video folder (``WanImageToVideoPipeline``'s
    layout, UniPC flow scheduler), replacing ``out_dir`` as a whole; ``transformer_2`` and
    ``boundary_ratio``: Wan2.2-I2V-A14B's low-noise expert and where it takes over."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

    from ..pipeline import replace_dir

    scheduler = UniPCMultistepScheduler(**{**WAN_SCHEDULER, "flow_shift": float(flow_shift)})
    pipe = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                   image_processor=processor, image_encoder=image_encoder, transformer=transformer,
                                   transformer_2=transformer_2, boundary_ratio=boundary_ratio)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        pipe.save_pretrained(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def init_tiny_wan(out_dir: str | Path, seed: int = 0, preset: str = "tiny", experts: int = 1) -> Path:
    """Write the tiny Wan folder (module docstring) to ``out_dir``, replacing it as a whole;
    ``experts=2`` (preset ``tiny-2.2``): a second random transformer as Wan2.2-I2V-A14B's low-noise
    expert, taking over below t = 900 (its boundary_ratio 0.9)."""
    from diffusers import AutoencoderKLWan
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from .model import WAN_PRESETS, build_transformer

    if preset not in ("tiny", "tiny-2.2"):
        raise ValueError(f"init_tiny_wan writes the presets 'tiny' and 'tiny-2.2', not {preset!r}")
    if experts not in (1, 2) or (experts == 2 and preset != "tiny-2.2"):
        raise ValueError("experts is 1, or 2 with the Wan2.2 layout (preset 'tiny-2.2')")
    layout = WAN_PRESETS[preset]
    out_dir = Path(out_dir)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        transformer = build_transformer(preset, device="cpu")
        second = build_transformer(preset, device="cpu") if experts == 2 else None
        vae = AutoencoderKLWan(**TINY_VAE)
        text_encoder = tiny_text_encoder(layout["text_dim"])
        image_encoder = processor = None
        if layout.get("image_dim"):
            image_encoder = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=layout["image_dim"], intermediate_size=2 * layout["image_dim"], num_hidden_layers=2,
                num_attention_heads=2, image_size=32, patch_size=8))
            processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    finally:
        torch.random.set_rng_state(state)
    return write_wan_folder(out_dir, transformer, vae, text_encoder, tiny_tokenizer(),
                            flow_shift=WAN_SCHEDULER["flow_shift"], image_encoder=image_encoder, processor=processor,
                            transformer_2=second, boundary_ratio=0.9 if second is not None else None)
