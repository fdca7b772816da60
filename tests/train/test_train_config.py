"""TrainConfig: packaged configs, inheritance (``base:``), unknown keys, the missing-weights and
missing-shards errors."""
from __future__ import annotations

import logging
import textwrap

import pytest

from trackgo_data.config import ConfigError, config_to_dict
from trackgo_model.train import main as train_main
from trackgo_model.train.config import CONFIG_DIR, SVD_PATH_ENV, load_train_config
from trackgo_model.train.vae import load_vae_config


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


def _write(folder, name: str, text: str):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_bases_merge_in_order_nested_dicts_key_by_key(tmp_path):
    _write(tmp_path, "grand.yaml", """
        name: grand
        max_steps: 10
        log_every: 3
        data: {width: 32, height: 32, num_frames: 4}
        model: {trainable: [encoder, adapter], trackgo: {mode: paper, alpha: 0.3}}
        """)
    _write(tmp_path, "parent.yaml", """
        base: grand.yaml
        max_steps: 20
        data: {width: 64}
        model: {trackgo: {mode: gated}}
        """)
    child = _write(tmp_path, "child.yaml", """
        base: parent.yaml
        log_every: 5
        model: {trainable: [encoder]}
        """)
    c = load_train_config(str(child))
    assert c.name == "child"                                    # never inherited
    assert c.max_steps == 20 and c.log_every == 5               # parent over grand, child over both
    assert (c.data.width, c.data.height, c.data.num_frames) == (64, 32, 4)   # merged key by key
    assert c.model.trackgo == {"mode": "gated", "alpha": 0.3}   # at every depth
    assert tuple(c.model.trainable) == ("encoder",)             # a list is replaced whole
    assert load_train_config(str(child), ["max_steps=30", "data.height=16"]).max_steps == 30  # overrides last
    # a packaged name as the base of a user's file: that config plus the file's keys
    mine = _write(tmp_path, "mine.yaml", "base: tiny-cpu\nmax_steps: 7\n")
    got = config_to_dict(load_train_config(str(mine)))
    want = config_to_dict(load_train_config("tiny-cpu", ["max_steps=7"]))
    assert got.pop("name") == "mine" and want.pop("name") == "tiny-cpu" and got == want


def test_base_cycles_missing_bases_and_unknown_keys_are_errors(tmp_path):
    a = _write(tmp_path, "a.yaml", "base: b.yaml\nmax_steps: 1\n")
    _write(tmp_path, "b.yaml", "base: a.yaml\nmax_steps: 2\n")
    with pytest.raises(ConfigError, match="cycle: a.yaml → b.yaml → a.yaml"):
        load_train_config(str(a))
    with pytest.raises(ConfigError, match="cycle: self.yaml → self.yaml"):
        load_train_config(str(_write(tmp_path, "self.yaml", "base: self.yaml\n")))
    with pytest.raises(ConfigError, match="orphan.yaml: base 'no-such-base' not found"):
        load_train_config(str(_write(tmp_path, "orphan.yaml", "base: no-such-base\n")))
    with pytest.raises(ConfigError, match="base must be a config name"):
        load_train_config(str(_write(tmp_path, "odd.yaml", "base: [tiny-cpu]\n")))
    with pytest.raises(ConfigError, match=r"model\.svd"):  # in the file …
        load_train_config(str(_write(tmp_path, "typo.yaml", "base: tiny-cpu\nmodel: {svd: /x}\n")))
    _write(tmp_path, "bad-base.yaml", "optim: {lrr: 1}\n")
    with pytest.raises(ConfigError, match=r"optim\.lrr"):  # … and in a base
        load_train_config(str(_write(tmp_path, "on-bad.yaml", "base: bad-base.yaml\n")))


def test_packaged_variations_name_their_base_and_every_config_loads():
    bases = {p.stem: p.read_text() for p in CONFIG_DIR.glob("*.yaml")}
    assert "\nbase: svd-xt-paper\n" in bases["svd-xt-gated"] and "\nbase: svd-xt-gated\n" in bases["tiny-cpu"]
    for name in ("svd-xt-paper", "svd-xt-gated", "tiny-cpu", "toy-base", "toy-trackgo"):
        assert load_train_config(name).name == name
    assert load_vae_config("toy-vae").name == "toy-vae"
    tiny = load_train_config("tiny-cpu")  # the gated recipe on the tiny model
    assert tiny.model.tiny and tiny.model.trackgo == {"mode": "gated"} and tiny.mixed_precision == "no"
    assert (tiny.data.width, tiny.data.num_frames, tiny.max_steps, tiny.ema.decay) == (64, 6, 200, 0.99)


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
    with pytest.raises(ConfigError, match="model.trajectories=false"):  # a base model without P
        load_train_config("tiny-cpu", ["model.trainable=[unet]"])
    assert load_train_config("tiny-cpu", ["model.trainable=[unet]", "model.trajectories=false"]).model.trainable == ("unet",)
    with pytest.raises(ConfigError, match="unknown group"):
        load_train_config("tiny-cpu", ["optim.group_lr={gates: 1.0e-2}"])
    with pytest.raises(ConfigError, match="> 0"):
        load_train_config("tiny-cpu", ["optim.group_lr={gate: 0}"])


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
    from trackgo_model.train.config import trackgo_config_for

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
