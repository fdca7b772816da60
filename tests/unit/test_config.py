"""Typed configs reject unknown keys, nest, override and hash stably; writes are atomic."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from trackgo_data.config import (
    ConfigError,
    apply_overrides,
    atomic_write_json,
    config_from_dict,
    config_hash,
    config_to_dict,
)


@dataclasses.dataclass
class Inner:
    size: tuple[int, int] = (4, 2)
    name: str = "a"


@dataclasses.dataclass
class Outer:
    lr: float = 1e-3
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_unknown_key_is_rejected_with_dotted_path():
    with pytest.raises(ConfigError, match=r"inner\.nmae"):
        config_from_dict(Outer, {"inner": {"nmae": "x"}})
    with pytest.raises(ConfigError, match="lrr"):
        config_from_dict(Outer, {"lrr": 1})


def test_nested_build_and_list_to_tuple():
    cfg = config_from_dict(Outer, {"lr": 0.5, "inner": {"size": [8, 6]}})
    assert cfg.lr == 0.5 and cfg.inner.size == (8, 6) and cfg.inner.name == "a"
    assert config_to_dict(cfg) == {"lr": 0.5, "inner": {"size": [8, 6], "name": "a"}}


def test_overrides_parse_yaml_scalars():
    data = apply_overrides({}, ["inner.name=b", "lr=3e-5", "inner.size=[1, 2]"])
    cfg = config_from_dict(Outer, data)
    assert cfg.lr == pytest.approx(3e-5) and cfg.inner.name == "b" and cfg.inner.size == (1, 2)
    with pytest.raises(ConfigError):
        apply_overrides({}, ["no_equals_sign"])


def test_hash_depends_on_values_only():
    assert config_hash(Outer()) == config_hash(config_from_dict(Outer, {}))
    assert config_hash(Outer()) != config_hash(Outer(lr=2e-3))


def test_atomic_write_leaves_no_temp(tmp_path):
    p = atomic_write_json(tmp_path / "sub" / "x.json", {"b": 1, "a": 2})
    assert json.loads(p.read_text()) == {"a": 2, "b": 1}
    assert os.listdir(p.parent) == ["x.json"]
