import numpy as np
import pytest
import torch

from trackgo_model.eval.metrics import MetricUnavailable
from trackgo_model.eval.metrics.fid import FIDInceptionV3, fid_from_videos, inception_features, load_fid_inception
from trackgo_model.eval.metrics.fvd import fvd_from_videos, i3d_features, load_i3d, preprocess_clips

from .reference import i3d_input

# (module, in, out, kernel h, kernel w) of every conv of the TF-ported FID InceptionV3, written out
# from the architecture's published layer table (pt_inception-2015-12-05 key names)
def _expected_convs():
    convs = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
             ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3)]
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        convs += [(f"{name}.branch1x1", cin, 64, 1, 1), (f"{name}.branch5x5_1", cin, 48, 1, 1),
                  (f"{name}.branch5x5_2", 48, 64, 5, 5), (f"{name}.branch3x3dbl_1", cin, 64, 1, 1),
                  (f"{name}.branch3x3dbl_2", 64, 96, 3, 3), (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
                  (f"{name}.branch_pool", cin, pool, 1, 1)]
    convs += [("Mixed_6a.branch3x3", 288, 384, 3, 3), ("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1),
              ("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)]
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        convs += [(f"{name}.branch1x1", 768, 192, 1, 1), (f"{name}.branch7x7_1", 768, c, 1, 1),
                  (f"{name}.branch7x7_2", c, c, 1, 7), (f"{name}.branch7x7_3", c, 192, 7, 1),
                  (f"{name}.branch7x7dbl_1", 768, c, 1, 1), (f"{name}.branch7x7dbl_2", c, c, 7, 1),
                  (f"{name}.branch7x7dbl_3", c, c, 1, 7), (f"{name}.branch7x7dbl_4", c, c, 7, 1),
                  (f"{name}.branch7x7dbl_5", c, 192, 1, 7), (f"{name}.branch_pool", 768, 192, 1, 1)]
    convs += [("Mixed_7a.branch3x3_1", 768, 192, 1, 1), ("Mixed_7a.branch3x3_2", 192, 320, 3, 3),
              ("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1), ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
              ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3)]
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        convs += [(f"{name}.branch1x1", cin, 320, 1, 1), (f"{name}.branch3x3_1", cin, 384, 1, 1),
                  (f"{name}.branch3x3_2a", 384, 384, 1, 3), (f"{name}.branch3x3_2b", 384, 384, 3, 1),
                  (f"{name}.branch3x3dbl_1", cin, 448, 1, 1), (f"{name}.branch3x3dbl_2", 448, 384, 3, 3),
                  (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3), (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1),
                  (f"{name}.branch_pool", cin, 192, 1, 1)]
    return convs


def _reference_state_shapes():
    shapes = {}
    for name, cin, cout, kh, kw in _expected_convs():
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for k in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{k}"] = (cout,)
    shapes["fc.weight"], shapes["fc.bias"] = (1008, 2048), (1008,)
    return shapes


@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_state_dict_matches_reference_weight_file_layout(inception):
    ours = {k: tuple(v.shape) for k, v in inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert ours == _reference_state_shapes()
    assert len(_expected_convs()) == 94
    # torchvision's classification InceptionV3 has 27,161,264 parameters; without its aux head
    # (3,326,696) and with 1008 instead of 1000 classes (+16,392) that is 23,850,960
    assert sum(p.numel() for p in inception.parameters()) == 23_850_960


def test_features_shape_and_weight_file_loading(inception, tmp_path, monkeypatch):
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 48, 64, 3), dtype=np.uint8)
    f = inception_features(inception, frames, batch_size=1)     # two batches, none dropped
    assert f.shape == (2, 2048) and np.isfinite(f).all() and not np.allclose(f[0], f[1])
    # the file as distributed: no BatchNorm counters
    sd = {k: v for k, v in inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(sd, path)
    monkeypatch.setenv("TRACKGO_FID_WEIGHTS", str(path))
    loaded = load_fid_inception()
    assert not loaded.training
    for k, v in loaded.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, sd[k]), k
    torch.save({"fc.weight": sd["fc.weight"]}, tmp_path / "wrong.pth")
    with pytest.raises(MetricUnavailable, match="not the FID Inception"):
        load_fid_inception(tmp_path / "wrong.pth")


def _random_state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every weight of ``model`` random, BatchNorm statistics and affine parameters included (the
    defaults — mean 0, var 1, scale 1, shift 0 — would hide a mix-up of them)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value.clone()
        elif key.endswith(("running_var", "bn.weight")):
            state[key] = 0.5 + torch.rand(value.shape, generator=g)
        elif key.endswith(("running_mean", "bn.bias")):
            state[key] = 0.1 * torch.randn(value.shape, generator=g)
        else:                                               # conv / fc weights, fan-in scaled
            fan_in = value[0].numel() if value.dim() > 1 else 1
            state[key] = torch.randn(value.shape, generator=g) * (2.0 / fan_in) ** 0.5
    return state


def test_features_equal_pytorch_fid_with_the_same_weights(monkeypatch):
    """pytorch-fid's InceptionV3 (torchvision's network patched into the FID graph), given the same
    random weights as ours through the loader it fetches the reference file with: the same 2048-d
    pool features on the same frames (both resize them to 299×299), to float32 rounding
    (1e-4 of the largest feature)."""
    from pytorch_fid import inception as pytorch_fid_inception

    ours = FIDInceptionV3().eval()
    state = _random_state(ours)
    ours.load_state_dict(state)
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: state)
    theirs = pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 37, 53, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        want = theirs(x)[0][:, :, 0, 0].double().numpy()
    got = inception_features(ours, frames, batch_size=2)
    assert got.shape == want.shape == (2, 2048) and np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


class _MeanColour(torch.nn.Module):
    """A feature extractor whose features are known by hand: the mean of each channel (times a
    parameter fixed at 1, where the extractors' device is read from)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, rescale: bool = True, resize: bool = True, return_features: bool = False):
        return x.mean(dim=tuple(range(2, x.dim()))) * self.scale


def test_fid_and_fvd_of_a_colour_shift_by_hand():
    """Flat-colour videos, the generated ones 51 grey levels brighter in every channel. With the
    mean colour as the feature, both sets have the same covariance, so d² = |Δμ|²:
    FID (frames in [0, 1]) = 3·(51/255)² = 0.12; FVD (clips in [−1, 1]) = 3·(51/127.5)² = 0.48."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 200, size=(5, 3, 3))                  # 5 videos × 3 frames × RGB
    real = [np.broadcast_to(c[:, None, None, :], (3, 20, 30, 3)).astype(np.uint8) for c in colours]
    gen = [(v + 51).astype(np.uint8) for v in real]
    assert fid_from_videos(_MeanColour(), real, gen, batch_size=2) == pytest.approx(0.12, rel=1e-6)
    assert fvd_from_videos(_MeanColour(), real, gen, batch_size=2) == pytest.approx(0.48, rel=1e-6)


def test_tf_pooling_variants(inception):
    from trackgo_model.eval.metrics.fid import tf_avg_pool

    ones = torch.ones(1, 1, 4, 4)
    assert torch.equal(tf_avg_pool(ones), ones)  # zero padding not counted at the borders
    assert inception.Mixed_7c.max_pool and not inception.Mixed_7b.max_pool


def test_missing_weights_say_what_to_supply(monkeypatch, tmp_path):
    monkeypatch.delenv("TRACKGO_FID_WEIGHTS", raising=False)
    monkeypatch.delenv("TRACKGO_I3D_PATH", raising=False)
    with pytest.raises(MetricUnavailable, match="TRACKGO_FID_WEIGHTS.*pt_inception-2015-12-05"):
        load_fid_inception()
    with pytest.raises(MetricUnavailable, match="TRACKGO_I3D_PATH.*i3d_torchscript.pt"):
        load_i3d(tmp_path / "nope.pt")


class _TinyI3D(torch.nn.Module):
    """Same call signature as the I3D TorchScript export; checks the flags and the input range."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 400)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        if rescale or resize or not return_features:
            raise RuntimeError("expected rescale=False, resize=False, return_features=True")
        if x.shape[1] != 3 or x.shape[3] != 224 or x.shape[4] != 224:
            raise RuntimeError("expected (B, 3, T, 224, 224)")
        if x.min() < -1.0 or x.max() > 1.0:
            raise RuntimeError("expected values in [-1, 1]")
        stats = torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], 1)
        return self.proj(stats)


@pytest.fixture()
def tiny_i3d_path(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_TinyI3D()).save(str(path))
    return path


def test_preprocess_clips_range_and_layout():
    v = np.zeros((1, 2, 30, 60, 3), np.uint8)
    v[..., 0] = 255
    x = preprocess_clips(v)
    assert x.shape == (1, 3, 2, 224, 224)
    assert torch.allclose(x[:, 0], torch.tensor(1.0)) and torch.allclose(x[:, 1:], torch.tensor(-1.0))


def test_preprocess_clips_matches_pil_resize_and_crop():
    """Shorter side to 224 (bilinear), centre crop, [−1, 1]: as a second implementation with PIL
    computes it, up- and down-scaling, to float32 rounding."""
    rng = np.random.default_rng(1)
    for h, w in ((32, 48), (300, 500)):
        video = rng.integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)
        np.testing.assert_allclose(preprocess_clips(video[None])[0].numpy(), i3d_input(video), atol=1e-4)


def test_i3d_features_keep_every_clip_in_order(tiny_i3d_path, monkeypatch):
    monkeypatch.setenv("TRACKGO_I3D_PATH", str(tiny_i3d_path))
    model = load_i3d()
    rng = np.random.default_rng(0)
    vids = [rng.integers(0, 256, size=(4, 32, 48, 3), dtype=np.uint8) for _ in range(5)]
    vids.append(rng.integers(0, 256, size=(3, 32, 48, 3), dtype=np.uint8))   # another length
    batched = i3d_features(model, vids, batch_size=2)                         # 2 + 2 + 1 (+ 1)
    single = np.concatenate([i3d_features(model, [v], batch_size=1) for v in vids])
    assert batched.shape == (6, 400)
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    dark = [(v // 4).astype(np.uint8) for v in vids[:5]]
    assert fvd_from_videos(model, vids[:5], dark, batch_size=4) > 1e-3
