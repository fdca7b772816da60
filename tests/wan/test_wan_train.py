"""TrackGo on Wan, trained and sampled: conditioning and sampling against diffusers' own Wan
pipeline, the flow-matching objective against a replay of its random draws, `trackgo train` with
``model.base=wan`` (latent cache, resume), and `trackgo generate --base wan` on its checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.wan.conftest import WAN_FRAMES, wan_overrides
from trackgo_model.configs import TrackGoConfig
from trackgo_model.wan import TrackGoWan
from trackgo_model.wan import conditioning as wcond
from trackgo_model.wan.pipeline import WanTrackGoPipeline, load_wan_folder


def _image(h=32, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_shift_sigmas_by_hand():
    u = torch.tensor([0.0, 0.25, 0.5, 1.0])
    # σ = 3u / (1 + 2u)
    assert torch.allclose(wcond.shift_sigmas(u, 3.0), torch.tensor([0.0, 0.75 / 1.5, 1.5 / 2.0, 1.0]))
    assert torch.equal(wcond.shift_sigmas(u, 1.0), u)
    with pytest.raises(ValueError):
        wcond.shift_sigmas(u, 0.0)


def test_condition_latents_layout(tiny_wan_dir):
    parts = load_wan_folder(tiny_wan_dir)
    img = torch.rand(2, 3, 32, 48) * 2 - 1
    c = wcond.condition_latents(parts.vae, img, 9)
    assert c.shape == (2, 4 + 16, 3, 4, 6)
    assert torch.equal(c[:, :4, 0], torch.ones_like(c[:, :4, 0])) and not c[:, :4, 1:].any()
    video = torch.cat([img.unsqueeze(1), torch.zeros(2, 8, 3, 32, 48)], dim=1)
    assert torch.allclose(c[:, 4:], wcond.encode_video(parts.vae, video))
    z = wcond.encode_video(parts.vae, video)
    raw = parts.vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mode()
    assert torch.allclose(wcond.denormalise(parts.vae, z), raw, atol=1e-5)
    with pytest.raises(ValueError, match="4"):
        wcond.condition_latents(parts.vae, img, 8)


def test_prompt_tokens_match_diffusers(tiny_wan_dir):
    from diffusers import WanImageToVideoPipeline

    ref = WanImageToVideoPipeline.from_pretrained(str(tiny_wan_dir))
    parts = load_wan_folder(tiny_wan_dir)
    prompt = "A red  square moves &amp; left"
    want = ref.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=512, device="cpu")[0]
    got = wcond.encode_prompt(parts.tokenizer, parts.text_encoder, prompt)
    assert got.shape == (1, 512, 32)
    assert torch.allclose(got, want, atol=1e-6)
    assert not got[0, 8:].any()  # zeros after the prompt's tokens


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_sampling_matches_diffusers_pipeline(tiny_wan_dir, guidance):
    """A fresh (gated) TrackGoWan without P samples exactly what diffusers' Wan pipeline samples."""
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    ref = WanImageToVideoPipeline.from_pretrained(str(tiny_wan_dir))
    img = _image()
    kw = dict(height=32, width=48, num_frames=9, num_inference_steps=3, guidance_scale=guidance)
    want = ref(image=Image.fromarray(img), prompt="red square", negative_prompt="blue", output_type="latent",
               generator=torch.Generator().manual_seed(3), **kw).frames
    parts = load_wan_folder(tiny_wan_dir)
    pipe = WanTrackGoPipeline(TrackGoWan(parts.transformer, TrackGoConfig(alpha_frames=25)), parts)
    got = pipe(img, None, prompt="red square", negative_prompt="blue", output_type="latent", seed=3, **kw)
    assert got.shape == want.shape == (1, 16, 3, 4, 6)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    frames = pipe(img, None, seed=3, **{**kw, "num_inference_steps": 1})
    assert frames.shape == (9, 32, 48, 3) and frames.dtype == np.uint8


class _Spy(torch.nn.Module):
    """Records the transformer inputs and returns a fixed prediction."""

    def __init__(self, pred):
        super().__init__()
        self.pred, self.calls = pred, []

    def forward(self, x, t, text, tokens, **kw):
        self.calls.append((x.detach().clone(), t.detach().clone(), text, tokens, kw))
        return self.pred


def _components(shards, tiny_dir, run, **extra):
    from trackgo_model.train.config import load_train_config
    from trackgo_model.train.data import data_stream, shard_urls
    from trackgo_model.train.loss import batch_to_inputs
    from trackgo_model.train.wan import load_wan_components

    cfg = load_train_config("tiny-wan-cpu", wan_overrides(shards, tiny_dir, run, **extra))
    comp = load_wan_components(cfg, run)
    batch = next(data_stream(cfg, shard_urls(cfg)[0], rank=0, world=1, segment_start=0))
    return cfg, comp, batch_to_inputs(batch, torch.device("cpu"), 8.0)


def test_flow_loss_replays_its_draws(wan_shards, tiny_wan_dir, tmp_path):
    """L = mean ‖F(x_σ ⊕ c; 1000σ) − (ε − x0)‖², with σ, ε re-drawn here in the documented order."""
    from trackgo_model.train.wan import flow_loss

    cfg, comp, inputs = _components(wan_shards, tiny_wan_dir, tmp_path / "run", **{
        "objective.attn_loss_weight": 0.0, "objective.flow_shift": 2.0, "data.batch_size": 2})
    b = inputs.video.shape[0]
    x0 = wcond.encode_video(comp.vae, inputs.video)
    pred = torch.randn_like(x0)
    spy = _Spy(pred)
    parts = flow_loss(spy, comp, inputs, cfg.objective, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    torch.rand(2, b, generator=g)  # dropout uniforms (probabilities 0 here)
    u = torch.rand(b, generator=g)
    sigma = 2.0 * u / (1.0 + u)
    eps = torch.randn(x0.shape, generator=g)
    s = sigma.view(b, 1, 1, 1, 1)
    x, t, text, tokens, kw = spy.calls[0]
    assert torch.allclose(x[:, :16], (1 - s) * x0 + s * eps, atol=1e-6)
    assert torch.allclose(x[:, 16:], wcond.condition_latents(comp.vae, inputs.image, WAN_FRAMES), atol=1e-6)
    assert torch.allclose(t, 1000 * sigma) and torch.allclose(parts.sigma, sigma)
    assert text.shape == (b, 512, 32) and tokens.shape[0] == b and kw["trajectories"] is inputs.trajectories
    want = ((pred - (eps - x0)) ** 2).mean()
    assert torch.allclose(parts.loss, want, atol=1e-6) and float(parts.attn) == 0.0


def test_flow_loss_attention_term_and_dropout(wan_shards, tiny_wan_dir, tmp_path):
    from trackgo_model.train.wan import flow_loss

    cfg, comp, inputs = _components(wan_shards, tiny_wan_dir, tmp_path / "run", **{
        "objective.attn_loss_weight": 0.5, "objective.drop_image_prob": 1.0, "objective.drop_clip_prob": 1.0})
    import copy

    spy = _Spy(torch.zeros(1))
    plain = copy.deepcopy(cfg.objective)
    plain.attn_loss_weight = 0.0
    flow_loss(spy, comp, inputs, plain, generator=torch.Generator().manual_seed(0))
    x, _, _, tokens, kw = spy.calls[0]
    assert not x[:, 20:].any() and x[:, 16:20, 0].eq(1).all()  # latents dropped, the mask kept
    assert not tokens.any() and not kw["collect_attention"]
    parts = flow_loss(comp.model, comp, inputs, cfg.objective, generator=torch.Generator().manual_seed(0))
    attn = comp.model.attention_loss(inputs.motion_masks)
    assert float(parts.attn) > 0 and torch.allclose(parts.loss, parts.mse + 0.5 * attn)


def _train(cfg_overrides, **kw):
    from trackgo_model.train.config import load_train_config
    from trackgo_model.train.loop import train

    return train(load_train_config("tiny-wan-cpu", cfg_overrides), **kw)


def test_train_resume_cache_and_generate(wan_shards, tiny_wan_dir, tmp_path, capsys):
    """Two steps of `trackgo train` on the tiny Wan folder: the latent cache changes nothing, a
    resumed run continues exactly, and `trackgo generate --base wan` loads the checkpoint."""
    from PIL import Image

    from trackgo_model.cli import main as cli_main
    from trackgo_model.train.checkpoint import latest_checkpoint

    extra = {"max_steps": 4, "log_every": 1, "objective.attn_loss_weight": 1.0}
    full = _train(wan_overrides(wan_shards, tiny_wan_dir, tmp_path / "a", **extra))
    cached = _train(wan_overrides(wan_shards, tiny_wan_dir, tmp_path / "b", **extra,
                                  **{"data.latent_cache": str(tmp_path / "cache")}))
    assert list((tmp_path / "cache").glob("*.safetensors"))
    assert cached["loss"] == pytest.approx(full["loss"], rel=1e-4)
    part = wan_overrides(wan_shards, tiny_wan_dir, tmp_path / "c", **extra)
    _train(part, stop_at=2)
    resumed = _train(part, resume=True)
    assert resumed["step"] == 4 and resumed["loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert full["loss_attn"] > 0 and np.isfinite(full["loss"])

    ckpt = latest_checkpoint(tmp_path / "a") / "trackgo"
    meta = json.loads((ckpt / "trackgo_config.json").read_text())
    assert meta["base"] == "wan" and "temporal_qkv" in meta["groups"]
    img = _image(32, 32)
    Image.fromarray(img).save(tmp_path / "img.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    Image.fromarray(mask).save(tmp_path / "a.png")
    common = ["generate", "--base", "wan", "--wan", str(tiny_wan_dir), "--checkpoint", str(ckpt), "--image",
              str(tmp_path / "img.png"), "--masks", str(tmp_path / "a.png"), "--arrows", "14,14,24,20",
              "--steps", "2"]
    capsys.readouterr()
    assert cli_main([*common, "--frames", "5", "--out", str(tmp_path / "out.mp4")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["frames"], result["height"], result["width"]) == (5, 32, 32)
    assert (tmp_path / "out.mp4").is_file() and (tmp_path / "out.trajectory.mp4").is_file()
    for bad, message in ((["--frames", "6"], "4k \\+ 1"), (["--frames", "5", "--max-guidance", "2"], "max-guidance")):
        with pytest.raises(SystemExit, match=message):
            cli_main([*common, *bad, "--out", str(tmp_path / "bad.mp4")])
    with pytest.raises(SystemExit, match="missing transformer"):
        cli_main([*common[:4], str(tmp_path / "nowhere"), *common[5:], "--frames", "5", "--out",
                  str(tmp_path / "bad.mp4")])
    assert not (tmp_path / "bad.mp4").exists()


def test_wan_checkpoint_refuses_the_other_base(tiny_wan_dir, tmp_path):
    from trackgo_model.model import TrackGoUNet, build_unet

    svd = TrackGoUNet(build_unet("tiny", device="cpu"), TrackGoConfig(encoder={"channels": [8, 8, 8, 8, 16, 16]}))
    svd.save_trackgo(tmp_path / "svd")
    with pytest.raises(ValueError, match="'svd' base"):
        WanTrackGoPipeline.from_pretrained(tiny_wan_dir, tmp_path / "svd")


@pytest.mark.parametrize("overrides,message", [
    (["data.num_frames=8"], "4k \\+ 1"),
    (["data.width=40"], "multiples of 16"),
    (["model.gradient_checkpointing=true", "model.checkpointing=temporal"], "one of \\(.blocks.,\\)"),
    (["model.kernels.fused_projections=true"], "only kernels.attention"),
    (["model.base=svd", "model.kernels.attention=flex"], "Wan kernel"),
    (["model.wan_move=true"], "trajectories=false"),
    (["model.base=svd", "model.wan_move=true", "model.trajectories=false", "model.trainable=[unet]"], "Wan base"),
])
def test_wan_config_errors(overrides, message):
    from trackgo_model.train.config import load_train_config

    with pytest.raises(ValueError, match=message):
        load_train_config("tiny-wan-cpu", overrides)


def test_missing_wan_weights_is_one_clear_error(monkeypatch):
    from trackgo_data.config import ConfigError
    from trackgo_model.train.config import load_train_config

    monkeypatch.delenv("TRACKGO_WAN_PATH", raising=False)
    cfg = load_train_config("wan-i2v-14b-trackgo")
    with pytest.raises(ConfigError, match="model.wan_path"):
        cfg.resolved_weights_path()
    with pytest.raises(Exception, match="missing"):
        load_wan_folder("/nonexistent/wan")


def test_wan_move_condition_follows_the_tracks_in_a_drawn_order(wan_shards, tiny_wan_dir, tmp_path):
    """model.wan_move: the condition's latents are edited along each sample's tracks (Wan-Move), in
    one permutation per sample drawn after ε; the mask channels and the noisy latents are untouched."""
    from trackgo_model.train.wan import flow_loss
    from trackgo_model.wan.wan_move import guide_condition, track_cells

    cfg, comp, inputs = _components(wan_shards, tiny_wan_dir, tmp_path / "run", **{
        "model.wan_move": "true", "model.trajectories": "false", "model.trainable": "[unet]",
        "objective.attn_loss_weight": 0.0, "data.batch_size": 2})
    assert comp.wan_move and inputs.tracks is not None and len(inputs.tracks) == 2
    x0 = wcond.encode_video(comp.vae, inputs.video)
    spy = _Spy(torch.zeros_like(x0))
    flow_loss(spy, comp, inputs, cfg.objective, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    torch.rand(2, 2, generator=g), torch.rand(2, generator=g), torch.randn(x0.shape, generator=g)
    plain = wcond.condition_latents(comp.vae, inputs.image, WAN_FRAMES)
    want = []
    for i in range(2):
        cells = track_cells(inputs.tracks[i][None], inputs.visibility[i][None], (32, 32))
        order = torch.randperm(inputs.tracks[i].shape[1], generator=g)
        want.append(guide_condition(plain[i:i + 1, 4:], cells, order))
    x = spy.calls[0][0]
    assert torch.allclose(x[:, 20:], torch.cat(want), atol=1e-6)
    assert torch.equal(x[:, 16:20], plain[:, :4]) and not torch.allclose(x[:, 20:], plain[:, 4:])


def test_wan_move_trains_and_samples_along_its_guide(wan_shards, tiny_wan_dir, tmp_path):
    from trackgo_model.wan.wan_move import guide_condition, track_cells

    over = wan_overrides(wan_shards, tiny_wan_dir, tmp_path / "run", **{
        "model.wan_move": "true", "model.trajectories": "false", "model.trainable": "[unet]",
        "objective.attn_loss_weight": 0.0, "validation.every": 2, "validation.num_samples": 1,
        "validation.num_inference_steps": 2})
    result = _train(over)
    assert result["step"] == 2 and np.isfinite(result["loss"])
    assert len(list((tmp_path / "run" / "val" / "step-000002").glob("*.mp4"))) == 2
    # sampling: the conditional branch sees the edited condition, the unconditional one the plain one
    parts = load_wan_folder(tiny_wan_dir)
    pipe = WanTrackGoPipeline(TrackGoWan(parts.transformer, TrackGoConfig(alpha_frames=25)), parts)
    seen = []
    forward = pipe.model.forward
    pipe.model.forward = lambda x, *a, **k: (seen.append(x.clone()), forward(x, *a, **k))[1]
    tracks = np.stack([np.linspace([4.0, 4.0], [28.0, 20.0], 5), np.linspace([20.0, 8.0], [8.0, 24.0], 5)], 1)
    visible = np.ones((5, 2), bool)
    img = _image(32, 32)
    pipe(img, None, num_frames=5, num_inference_steps=1, guidance_scale=2.0, guide=(tracks, visible), seed=0)
    plain = wcond.condition_latents(parts.vae, cond_image(img), 5)
    cells = track_cells(torch.as_tensor(tracks)[None].float(), torch.as_tensor(visible)[None], (32, 32))
    assert torch.allclose(seen[0][:, 20:], guide_condition(plain[:, 4:], cells), atol=1e-6)
    assert torch.allclose(seen[1][:, 20:], plain[:, 4:], atol=1e-6)
    assert not torch.allclose(seen[0][:, 20:], seen[1][:, 20:])
    _generate_from_wan_move_export(tmp_path, tiny_wan_dir)


def _generate_from_wan_move_export(tmp_path, tiny_wan_dir):
    """The export of a wan_move run holds its whole transformer (trained values: tiny-wan-cpu does not
    export EMA), which `trackgo generate`
    serves, steered by the tracks of the arrows; without transformer/ it refuses."""
    import shutil

    from PIL import Image
    from safetensors.torch import load_file

    from trackgo_model.cli import main as cli_main
    from trackgo_model.train.checkpoint import latest_checkpoint
    from trackgo_model.wan.pipeline import MissingWeightsError

    latest = latest_checkpoint(tmp_path / "run")
    ckpt = latest / "trackgo"
    assert json.loads((ckpt / "trackgo_config.json").read_text())["wan_move"] is True
    pipe = WanTrackGoPipeline.from_pretrained(tiny_wan_dir, ckpt)
    trained = load_file(str(latest / "trainable.safetensors"))
    folder = load_wan_folder(tiny_wan_dir).transformer.state_dict()
    own = {k: v for k, v in pipe.model.transformer.state_dict().items() if ".processor." not in k}  # no adapters
    assert pipe.wan_move and set(own) == {k[len("transformer."):] for k in trained}
    assert all(torch.equal(own[k[len("transformer."):]], v) for k, v in trained.items())
    assert any(not torch.equal(own[k], folder[k]) for k in own)
    Image.fromarray(_image(32, 32)).save(tmp_path / "img.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    Image.fromarray(mask).save(tmp_path / "a.png")
    videos = []
    for arrow in ("14,14,28,24", "14,14,2,4"):
        out = tmp_path / f"move-{len(videos)}.mp4"
        assert cli_main(["generate", "--base", "wan", "--wan", str(tiny_wan_dir), "--checkpoint", str(ckpt),
                         "--image", str(tmp_path / "img.png"), "--masks", str(tmp_path / "a.png"), "--arrows",
                         arrow, "--steps", "2", "--frames", "5", "--out", str(out)]) == 0
        videos.append(out.read_bytes())
    assert videos[0] != videos[1]  # the arrows steer it (through guide; it gets no P)
    shutil.rmtree(ckpt / "transformer")
    with pytest.raises(MissingWeightsError, match="wan_move"):
        WanTrackGoPipeline.from_pretrained(tiny_wan_dir, ckpt)


def cond_image(img):
    from trackgo_model.conditioning import image_to_tensor

    return image_to_tensor(img)
