"""Which trackers a VIPSeg evaluation uses: the conditioning tracker (Co-Tracker 3 offline, or
LK after a recorded fallback; see :mod:`trackgo_model.eval.vipseg`) and the ObjMC protocol's."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from trackgo_data.config import atomic_write_json
from trackgo_model.eval.config import EvalConfig

log = logging.getLogger(__name__)

PAPER_TRACKER = "cotracker3_offline"


def load_now(tracker) -> None:
    """Load a Co-Tracker's code and weights now, so a missing piece shows before any work."""
    if str(getattr(tracker, "name", "")).startswith("cotracker"):
        tracker.load()


def choose_tracker(cfg: EvalConfig):
    """The conditioning tracker → (tracker, record for tracker.json). See the module doc."""
    from trackgo_data.track import get_tracker
    from trackgo_data.track.cotracker import CoTrackerUnavailable

    name = PAPER_TRACKER if cfg.tracker == "auto" else cfg.tracker
    record = {"requested": cfg.tracker, "name": name, "options": dict(cfg.tracker_options), "fallback_reason": None}
    tracker = get_tracker(name, **cfg.tracker_options)
    try:
        load_now(tracker)
    except CoTrackerUnavailable as exc:
        if cfg.tracker != "auto" or {"checkpoint", "random_init"} & set(cfg.tracker_options):
            raise  # named tracker or weights: no fallback
        log.warning("!!! the paper's tracker (%s) is unavailable, falling back to LK: ObjMC will NOT be "
                    "comparable to the paper's. %s", name, exc)
        tracker = get_tracker("lk")
        record.update(name="lk", options={}, fallback_reason=str(exc))
    record["version"] = tracker.version
    return tracker, record


def conditioning_tracker(cfg: EvalConfig, out: Path):
    """The tracker this output folder's conditions were (or are to be) made with: the one recorded
    in ``tracker.json``, else :func:`choose_tracker`'s (recorded now) → (tracker, record)."""
    from trackgo_data.track import get_tracker

    path = out / "tracker.json"
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("fallback_reason"):
            log.warning("%s: conditions were made with LK after a fallback (%s); evaluate into a new --out "
                        "to use Co-Tracker", out, record["fallback_reason"])
        tracker = get_tracker(record["name"], **record["options"])
        load_now(tracker)
        return tracker, record
    tracker, record = choose_tracker(cfg)
    atomic_write_json(path, record)
    return tracker, record


def objmc_protocol(cfg: EvalConfig, tracker, record: dict):
    """The ObjMC protocol's tracker and record → (tracker, record for results.json)."""
    from trackgo_data.track import get_tracker

    if cfg.objmc_protocol == "ours":
        return tracker, {"protocol": "ours", "tracker": record["name"], "version": record["version"]}
    trk = get_tracker(cfg.objmc_tracker, **cfg.objmc_tracker_options)
    load_now(trk)
    return trk, {"protocol": "draganything", "tracker": cfg.objmc_tracker, "version": trk.version,
                 "options": dict(cfg.objmc_tracker_options), "grid_size": cfg.objmc_grid_size,
                 "channel_order": cfg.objmc_channel_order}
