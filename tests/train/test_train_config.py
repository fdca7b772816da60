"""TrainConfig: packaged configs, unknown keys, the missing-weights and missing-shards errors."""
from __future__ import annotations

import logging

import pytest

from trackgo_data.config import ConfigError
from trackgo_model.train import main as train_main
from trackgo_model.train.config import SVD_PATH_ENV, load_train_config


def test_paper_config_values():
    c = load_train_config("svd-xt-paper")
    assert (c.data.width, c.data.height, c.data.num_frames) == (1024, 576, 25)
    assert c.optim.lr == pytest.approx(3e-5) and c.global_batch_size == 8 and c.max_steps == 18000
    assert c.mixed_precision == "fp16" and c.model.gradient_checkpointing and c.ema.enabled  # as the paper
    assert c.model.trackgo == {"mode": "paper"}  # O = (A + A')·V
    assert c.objective.p_mean == 0.7 and c.objective.p_std == 1.6
    assert set(c.model.trainable) == {"encoder", "adapter", "temporal_qkv"}
    assert c.gradient_accumulation(8) == 1 and c.gradient_accumulation(1) == 8
    with pytest.raises(ConfigError, match="not a multiple"):
        c.gradient_accumulation(3)
    gated = load_train_config("svd-xt-gated")
    assert gated.model.trackgo == {"mode": "gated"} and gated.mixed_precision == "bf16"
    same = lambda cfg: {k: v for k, v in vars(cfg).items() if k not in ("name", "model", "mixed_precision")}
    assert same(gated) == same(c)  # otherwise the paper recipe
    tiny = load_train_config("tiny-cpu", ["optim.lr=1e-4", "objective.attn_loss_weight=0"])
    assert tiny.model.tiny and tiny.optim.lr == pytest.approx(1e-4) and tiny.objective.attn_loss_weight == 0


@pytest.mark.parametrize("override,needle", [
    ("optim.lrr=1", "optim.lrr"),
    ("learning_rate=1", "learning_rate"),
    ("model.svd=/x", "model.svd"),
])
def test_unknown_keys_are_rejected(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_train_config("tiny-cpu", [override])


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_train_config("tiny-cpu", ["mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="distributed"):
        load_train_config("tiny-cpu", ["distributed=horovod"])
    with pytest.raises(ConfigError, match="no training config"):
        load_train_config("no-such-config")
    with pytest.raises(ConfigError, match="fsdp_version"):
        load_train_config("tiny-cpu", ["distributed=fsdp", "fsdp_version=3"])


def test_missing_svd_path_is_one_clear_error(monkeypatch, caplog):
    monkeypatch.delenv(SVD_PATH_ENV, raising=False)
    cfg = load_train_config("svd-xt-paper")
    with pytest.raises(ConfigError) as err:
        cfg.resolved_svd_path()
    text = str(err.value)
    for needle in ("model.svd_path=", SVD_PATH_ENV, "CONFIG=tiny-cpu", "Nothing is downloaded"):
        assert needle in text
    with caplog.at_level(logging.ERROR):
        assert train_main(["--config", "svd-xt-paper"]) == 2
    assert "CONFIG=tiny-cpu" in caplog.text


def test_svd_path_must_have_the_diffusers_layout(tmp_path, monkeypatch):
    (tmp_path / "unet").mkdir()
    monkeypatch.setenv(SVD_PATH_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="vae, image_encoder, feature_extractor"):
        load_train_config("svd-xt-paper").resolved_svd_path()


def test_missing_shards_say_make_dataset(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        rc = train_main(["--config", "tiny-cpu", f"data.shards={tmp_path / 'none'}", f"run_dir={tmp_path / 'run'}"])
    assert rc == 2
    assert "make dataset" in caplog.text


def test_switches_reach_the_model_config_and_accelerate():
    from trackgo_model.train import accelerate_kwargs
    from trackgo_model.train.data import trackgo_config_for

    full = trackgo_config_for(load_train_config("svd-xt-paper"))
    assert full.mask_value == -1.0e4 and full.attn_loss.weight == 1.0
    assert set(full.trainable) == {"encoder", "adapter", "temporal_qkv"}
    ablated = trackgo_config_for(load_train_config(
        "svd-xt-paper", ["model.attention_mask=false", "objective.attn_loss_weight=0",
                         "model.trainable=[encoder, adapter]"]))
    assert ablated.mask_value == 0.0 and ablated.tau is None  # AM ≡ 0: the "no attention mask" ablation
    assert ablated.attn_loss.weight == 0.0 and ablated.trainable == ("encoder", "adapter")

    cfg = load_train_config("svd-xt-paper")
    kw = accelerate_kwargs(cfg, 8)
    assert kw == {"mixed_precision": "fp16", "gradient_accumulation_steps": 8}
    kw = accelerate_kwargs(load_train_config("svd-xt-paper", ["distributed=fsdp"]), 1)
    plugin = kw["fsdp_plugin"]
    assert type(plugin).__name__ == "FullyShardedDataParallelPlugin" and plugin.use_orig_params
    assert plugin.fsdp_version == 1 and plugin.reshard_after_forward.name == "SHARD_GRAD_OP"
    plugin = accelerate_kwargs(load_train_config("svd-xt-paper", ["distributed=fsdp", "fsdp_version=2"]), 1)[
        "fsdp_plugin"]
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is False  # ZeRO-2-like


def test_fsdp_in_one_cpu_process_is_refused(tiny_shards, tmp_path, monkeypatch, caplog):
    """accelerate would silently train without sharding: one clear error instead."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")  # restored afterwards (accelerate sets it)
    with caplog.at_level(logging.ERROR):
        rc = train_main(["--config", "tiny-cpu", f"data.shards={tiny_shards}", f"run_dir={tmp_path / 'run'}",
                         "distributed=fsdp"])
    assert rc == 2 and "distributed=fsdp" in caplog.text and "use distributed=ddp" in caplog.text
    assert not (tmp_path / "run").exists()  # refused before anything was written
