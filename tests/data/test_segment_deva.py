"""The ``deva`` segmenter: its errors, device handling and moving-object selection, and upstream
DEVA automatic mode itself on CPU with random SAM and DEVA weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trackgo_data.segment import get_segmenter
from trackgo_data.video import read_frames

from ..third_party import requires_deva
from .scenes import moving_square


def test_deva_without_package_is_one_clear_error(monkeypatch):
    import sys

    from trackgo_data.segment.deva import DevaUnavailable

    monkeypatch.setitem(sys.modules, "deva.ext.automatic_processor", None)   # as if not installed
    with pytest.raises(DevaUnavailable, match="make setup-paper") as err:
        get_segmenter("deva", random_init=True)
    for package in ("segment-anything", "timm", "pycocotools", "pulp", "supervision", "torchvision"):
        assert package in str(err.value)


def test_deva_weights_are_required_settings(monkeypatch, tmp_path):
    from trackgo_data.config import ConfigError
    from trackgo_data.segment import deva

    monkeypatch.setattr(deva, "import_deva", lambda: {})
    assert deva.DevaConfig().deva_weights == "" and deva.DevaConfig().sam_weights == ""  # no cwd-relative default
    with pytest.raises(deva.DevaWeightsMissing) as err:
        get_segmenter("deva")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "deva_weights=(not set) (DEVA-propagation.pth)" in msg
    assert "sam_weights=(not set) (sam_vit_h_4b8939.pth)" in msg
    assert "random_init=true" in msg
    with pytest.raises(deva.DevaWeightsMissing, match=r"sam_weights=.*nope.pt \(mobile_sam.pt\)") as err:
        get_segmenter("deva", deva_weights=str(tmp_path / "d.pth"), sam_weights=str(tmp_path / "nope.pt"),
                      sam_variant="mobile")
    assert "d.pth (DEVA-propagation.pth)" in str(err.value)
    with pytest.raises(ConfigError, match="exclude each other"):
        get_segmenter("deva", random_init=True, deva_weights="/w/DEVA-propagation.pth")
    with pytest.raises(ConfigError, match="sam_variant"):
        get_segmenter("deva", random_init=True, sam_variant="hq")
    seg = get_segmenter("deva", random_init=True, sam_encoder="vit_b")
    assert seg.random_init and seg.version.endswith("-automatic-original-vit_b+random-init")


@requires_deva
def test_deva_frame_preparation_matches_upstream(monkeypatch):
    """Upstream prepares frames on the CPU and calls .cuda(); ours must give the same tensor on
    the configured device (here: upstream's with .cuda() turned into a no-op)."""
    import torch
    from deva.inference.demo_utils import get_input_frame_for_deva

    from trackgo_data.segment.deva_upstream import prepare_frame

    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    img = (np.random.default_rng(0).random((54, 100, 3)) * 255).astype(np.uint8)
    for min_side in (-1, 32, 80):
        ours, theirs = prepare_frame(img, min_side, "cpu"), get_input_frame_for_deva(img, min_side)
        assert ours.shape == theirs.shape and ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _fake_upstream(record, device):
    """Stand-ins for the upstream pieces the backend drives; they record the devices they get."""
    import types

    import torch
    from PIL import Image

    from trackgo_data.segment.deva_upstream import import_deva

    real = import_deva()

    def upstream_prep(image_np, min_side):
        raise AssertionError("upstream's frame preparation (.cuda()) was called")

    class Network:
        def __init__(self, config):
            record["network_config"] = config

        def to(self, dev):
            record["network_device"] = torch.device(dev)
            return self

        def eval(self):
            return self

    def get_sam_model(config, dev):
        record["sam_device"] = torch.device(dev)
        return types.SimpleNamespace(pred_iou_thresh=0.88, stability_score_thresh=0.95,
                                     predictor=types.SimpleNamespace(model=torch.nn.Module()))

    class Core:
        def __init__(self, network, config):
            self.config, self.object_manager = config, None

        def enabled_long_id(self):
            pass

    class Saver:
        def __init__(self, root, video_name, *, dataset, object_manager):
            self.root = Path(root) / "Annotations"
            self.root.mkdir(parents=True)
            self.thread = types.SimpleNamespace(is_alive=lambda: True, join=lambda: record.setdefault("ended", 1))
            self.queue = types.SimpleNamespace(put=lambda item: None)

    processor = types.SimpleNamespace(get_input_frame_for_deva=upstream_prep)

    def process_frame_automatic(deva, sam, frame_name, saver, ti, image_np=None):
        prep = processor.get_input_frame_for_deva                 # looked up at call time, as upstream does
        if device.type != "cuda":                                 # no GPU here: cuda:N is checked by name
            record["frames"].append(prep(image_np, deva.config["size"]))
        else:
            record["frames"].append(prep.keywords["device"])
        Image.fromarray(np.full(image_np.shape, (ti + 1, 0, 0), np.uint8)).save(saver.root / f"{ti:05d}.png")

    processor.process_frame_automatic = process_frame_automatic
    api = dict(real, processor=processor, DEVA=Network, get_sam_model=get_sam_model, Core=Core, ResultSaver=Saver,
               flush_buffer=lambda deva, saver: None)
    return api, processor, upstream_prep


@requires_deva
@pytest.mark.parametrize("device", ["meta", "cuda:1"])
def test_deva_hands_upstream_everything_on_the_configured_device(device, monkeypatch):
    """Without a GPU: "meta" stands for an accelerator (a real non-CPU device every tensor op
    accepts); "cuda:1" is checked where no tensor is made."""
    import torch

    from trackgo_data.segment import deva

    record = {"frames": []}
    dev = torch.device(device)
    api, processor, upstream_prep = _fake_upstream(record, dev)
    monkeypatch.setattr(deva, "import_deva", lambda: api)
    real_autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda **kw: record.setdefault("autocast", kw) and real_autocast(**kw))
    seg = get_segmenter("deva", random_init=True, device=device, size=48, stability_score_thresh=0.1)
    assert seg.device == dev
    frames = (np.random.default_rng(0).random((3, 60, 80, 3)) * 255).astype(np.uint8)
    ids = seg.raw_ids(frames)
    assert record["network_device"] == dev and record["sam_device"] == dev
    assert seg.sam.stability_score_thresh == 0.1
    assert record["autocast"] == ({"device_type": "cuda", "enabled": True} if dev.type == "cuda"
                                  else {"device_type": "cpu", "enabled": False})
    for f in record["frames"]:
        if dev.type == "cuda":
            assert f == dev
        else:
            assert f.device == dev and f.shape == (3, 48, 64) and f.dtype == torch.float32
    assert len(record["frames"]) == 3 and record["ended"]
    assert processor.get_input_frame_for_deva is upstream_prep        # restored afterwards
    np.testing.assert_array_equal(ids, np.arange(1, 4)[:, None, None] * np.ones((1, 60, 80), np.int64))
    assert not any(isinstance(v, str) and v.startswith("./") for v in record["network_config"].values())


def _sam_index_spy(monkeypatch):
    """Record every SAM proposal map (H,W) int64 that automatic mode makes."""
    import deva.ext.automatic_processor as processor

    seen = []
    real = processor.auto_segment

    def spy(*a, **k):
        mask, info = real(*a, **k)
        seen.append((mask.cpu().numpy(), [s.id for s in info]))
        return mask, info

    monkeypatch.setattr(processor, "auto_segment", spy)
    return seen


def _same_partition(a, b):
    """a, b (H,W) int: the same regions, whatever the ids (0 ↔ 0)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs}) and \
        all((x == 0) == (y == 0) for x, y in pairs)


@requires_deva
def test_deva_random_sam_vit_b_online_on_a_sample_clip(sample_videos, monkeypatch):
    """Upstream automatic mode for real: random SAM ViT-B (one SAM call) + random DEVA, CPU."""
    import torch

    def no_download(*a, **k):
        raise AssertionError("DEVA tried to download ImageNet weights")

    monkeypatch.setattr(torch.utils.model_zoo, "load_url", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    sam_maps = _sam_index_spy(monkeypatch)
    frames = read_frames(sample_videos["bigbuckbunny"], 0, 3, size=(128, 96))
    seg = get_segmenter("deva", random_init=True, sam_encoder="vit_b", device="cpu", points_per_side=2,
                        pred_iou_thresh=0.0, stability_score_thresh=0.0, size=96, temporal_setting="online",
                        detection_every=100, min_motion=0.0)
    assert seg.version.endswith("-automatic-original-vit_b+random-init")
    raw = []
    monkeypatch.setattr(seg, "raw_ids", lambda f, _real=seg.raw_ids: raw.append(_real(f)) or raw[-1])
    labels = seg.segment(frames)
    ids = raw[0]
    assert ids.shape == (3, 96, 128) and ids.dtype == np.int64
    assert seg.upstream_config["SAM_CHECKPOINT_PATH"] is None and seg.upstream_config["SAM_ENCODER_VERSION"] == "vit_b"
    # one SAM call (frame 0); its proposals are the objects DEVA incorporates there
    (sam0, segments), = sam_maps
    assert len(segments) >= 1 and sam0.shape == (96, 128)
    assert _same_partition(sam0, ids[0])
    # propagation: the same objects follow on frames 1, 2 — nothing appears from nowhere
    objects = set(np.unique(ids[0])) - {0}
    for t in (1, 2):
        assert 1 <= len(set(np.unique(ids[t])) - {0}) and set(np.unique(ids[t])) - {0} <= objects
    # the moving selection (min_motion 0: every object ≥ min_area) relabels by first-frame area
    from trackgo_data.segment.deva import select_moving

    np.testing.assert_array_equal(labels, select_moving(ids, frames, min_motion=0.0))
    assert labels.dtype == np.int32 and 1 <= labels.max() <= 6


@requires_deva
def test_deva_mobile_sam_weight_files_and_consensus(sample_videos, monkeypatch, tmp_path):
    """Weight files as released (plain state dicts) reach upstream through the arguments it
    reads (MOBILE_SAM_CHECKPOINT_PATH for MobileSAM); the semi-online consensus votes over two
    frames of real SAM proposals."""
    import torch
    from deva.ext.MobileSAM.setup_mobile_sam import setup_model
    from deva.inference.inference_core import DEVAInferenceCore

    donor = get_segmenter("deva", random_init=True, sam_variant="mobile", device="cpu")
    donor.load()
    deva_state = {k: v * 1.01 if v.is_floating_point() else v for k, v in donor.network.state_dict().items()}
    torch.save(deva_state, tmp_path / "DEVA-propagation.pth")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        sam_state = setup_model().state_dict()
    torch.save(sam_state, tmp_path / "mobile_sam.pt")

    votes = []
    real_vote = DEVAInferenceCore.vote_in_temporary_buffer

    def vote(self, *a, **k):
        out = real_vote(self, *a, **k)
        votes.append((out[1].cpu().numpy(), len(out[2])))
        return out

    monkeypatch.setattr(DEVAInferenceCore, "vote_in_temporary_buffer", vote)
    sam_maps = _sam_index_spy(monkeypatch)
    seg = get_segmenter("deva", deva_weights=str(tmp_path / "DEVA-propagation.pth"),
                        sam_weights=str(tmp_path / "mobile_sam.pt"), sam_variant="mobile", device="cpu",
                        points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, size=96,
                        temporal_setting="semionline", num_voting_frames=2, detection_every=100)
    assert seg.version.endswith("-automatic-mobile") and not seg.random_init
    ids = seg.raw_ids(read_frames(sample_videos["bigbuckbunny"], 0, 3, size=(128, 96)))
    assert seg.upstream_config["MOBILE_SAM_CHECKPOINT_PATH"] == str(tmp_path / "mobile_sam.pt")
    loaded = seg.network.state_dict()
    assert all(torch.equal(loaded[k], deva_state[k]) for k in deva_state)
    assert not seg.sam.predictor.model.training          # upstream leaves MobileSAM in training mode
    sam_loaded = seg.sam.predictor.model.state_dict()    # … whose BatchNorm would have moved by now
    wrapped = any(k.startswith("image_encoder.encoder.") for k in sam_loaded)   # stock segment_anything
    renamed = {k.replace("image_encoder.", "image_encoder.encoder.", 1) if wrapped else k: v
               for k, v in sam_state.items()}
    assert renamed.keys() == sam_loaded.keys()
    assert all(torch.equal(sam_loaded[k], v) for k, v in renamed.items())
    # two SAM calls (frames 0 and 1), one vote on the keyframe 0 that keeps real objects
    assert len(sam_maps) == 2 and all(len(s) >= 1 for _, s in sam_maps)
    (voted, kept), = votes
    assert kept >= 1
    assert _same_partition(voted, ids[0])
    assert set(np.unique(ids[2])) - {0} <= set(np.unique(ids[0])) - {0}


def test_deva_id_decoding_and_moving_selection():
    from trackgo_data.segment.deva import select_moving
    from trackgo_data.segment.deva_upstream import decode_id_png

    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 1] = (1, 2, 3)
    assert decode_id_png(rgb)[0, 1] == 1 + 2 * 256 + 3 * 65536
    frames, masks = moving_square(L=8)
    ids = np.zeros(masks.shape, np.int64)
    ids[:, 100:140, 150:250] = 7             # a static "stuff" segment
    ids[masks] = 70000                      # the moving square
    labels = select_moving(ids, frames)
    assert labels.max() == 1
    np.testing.assert_array_equal(labels == 1, masks)
