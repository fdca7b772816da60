"""The typed configuration of a dataset build (what every output folder records and hashes).

    BuildConfig(profile, clip, segmenter, tracker, filters, shards, seed, video_crf)
    make_config(profile, overrides) -> BuildConfig      unknown keys rejected (ConfigError)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .clips import ClipConfig
from .config import ConfigError, config_from_dict
from .filters import FilterConfig
from .shards import ShardSpec


@dataclass
class BackendConfig:
    """A registry backend: its name and the keyword options passed to its constructor."""

    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildConfig:
    profile: str = "local"
    clip: ClipConfig = field(default_factory=ClipConfig)
    segmenter: BackendConfig = field(default_factory=lambda: BackendConfig("flow"))
    tracker: BackendConfig = field(default_factory=lambda: BackendConfig("lk"))
    filters: FilterConfig = field(default_factory=FilterConfig)
    shards: ShardSpec = field(default_factory=ShardSpec)
    seed: int = 0
    video_crf: int | None = None  # None: the video encoder's visually lossless default


#: Profiles name the backends (and, for wan, the clips); everything else keeps the BuildConfig defaults.
PROFILES: dict[str, dict[str, Any]] = {
    "local": {"segmenter": {"name": "flow"}, "tracker": {"name": "lk"}},
    "paper": {"segmenter": {"name": "deva"}, "tracker": {"name": "cotracker3_offline"}},
    # Wan's clips: 81 frames (4·20 + 1) at 16 fps, about 5 s, at 832×480 (the 480P models' size)
    "wan": {"segmenter": {"name": "deva"}, "tracker": {"name": "cotracker3_offline"},
            "clip": {"num_frames": 81, "fps": 16.0, "width": 832, "height": 480}},
}


def make_config(profile: str = "local", overrides: dict[str, Any] | None = None) -> BuildConfig:
    """BuildConfig of a profile, with a nested dict of overrides (unknown keys rejected)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    data: dict[str, Any] = json.loads(json.dumps(PROFILES[profile]))
    data["profile"] = profile
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return config_from_dict(BuildConfig, data)
