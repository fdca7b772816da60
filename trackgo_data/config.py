"""Typed configs: dataclasses that reject unknown keys, load from dicts/YAML and hash stably.

Every stage config in ``trackgo_data`` and ``trackgo_model`` is a plain ``@dataclass`` and uses
these helpers, so an artefact can record exactly how it was made (``config_to_dict``) and a
cache key can be derived from it (``config_hash``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config dict does not fit its dataclass (unknown key, wrong type, bad value)."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def config_from_dict(cls: type[T], data: dict[str, Any] | None, *, path: str = "") -> T:
    """Build ``cls`` from ``data``, recursing into nested dataclass fields.

    Unknown keys raise :class:`ConfigError` naming the full dotted key, so a typo in a YAML file
    or a ``key=value`` override never passes silently.
    """
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key(s) for {cls.__name__}: {', '.join(where + k for k in unknown)}; "
            f"known: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints.get(name)
        sub = f"{path}.{name}" if path else name
        if _is_dataclass_type(tp) and isinstance(value, dict):
            value = config_from_dict(tp, value, path=sub)
        elif isinstance(value, list) and typing.get_origin(tp) is tuple:
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path or cls.__name__}: {exc}") from exc


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-friendly dict of a (nested) dataclass; tuples become lists, Paths strings."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def config_hash(cfg: Any, length: int = 12) -> str:
    """Stable short hash of a config (sorted-key JSON, sha256)."""
    blob = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=3`` → (``"a.b"``, 3). Values are parsed as YAML scalars (numbers, bools, null, lists)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    if isinstance(value, str):  # YAML 1.1 reads "3e-5" as a string; users mean a number
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings to a nested dict (in place; returns it)."""
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {p} is not a section")
        node[parts[-1]] = value
    return data


def nest_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Dotted-key settings → a nested overrides dict: ``{"a.b": 1, "c": {"d": 2}}`` → ``{"a": {"b": 1},
    "c": {"d": 2}}``.

    This is how a deployment's ``settings`` parameter reaches a config: values are used as given (a
    Prefect parameter is already typed JSON). A key set twice, or used both as a value and as a
    section (``a=1`` and ``a.b=2``), is a :class:`ConfigError`.
    """
    out: dict[str, Any] = {}
    for key, value in (settings or {}).items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"setting {key!r}: keys are dotted names such as segmenter.options.device")
        parts = key.split(".")
        node = out
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"setting {key!r}: {'.'.join(parts[:i + 1])} is set to a value, not a section")
        leaf = parts[-1]
        if leaf in node:
            if isinstance(node[leaf], dict) and isinstance(value, dict):
                node[leaf] = merge_overrides(node[leaf], value, strict=True, path=key)
                continue
            raise ConfigError(f"setting {key!r} is given twice")
        node[leaf] = value
    return out


def merge_overrides(base: dict[str, Any], extra: dict[str, Any], *, strict: bool = False,
                    path: str = "") -> dict[str, Any]:
    """Nested dicts merged recursively into a new dict; ``extra`` wins where both set a value (with
    ``strict``, a value set in both is a :class:`ConfigError` naming its dotted ``path``)."""
    out = dict(base)
    for key, value in extra.items():
        where = f"{path}.{key}" if path else key
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge_overrides(out[key], value, strict=strict, path=where)
        elif strict and key in out:
            raise ConfigError(f"setting {where!r} is given twice")
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
