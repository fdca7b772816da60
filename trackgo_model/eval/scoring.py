"""Scoring a VIPSeg evaluation's saved videos: FID, FVD and ObjMC (both definitions), written as
``per_video.csv``, ``results.json``, ``results.md`` and side-by-side clips."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from trackgo_data.config import atomic_write_json, atomic_write_text, config_to_dict
from trackgo_model.eval.config import EvalConfig, check_config_file, resolve_device
from trackgo_model.eval.metrics.objmc import ErrorSum
from trackgo_model.eval.report import (PAPER_TABLE1, comparability, results_markdown, write_per_video_csv,
                                       write_side_by_side)
from trackgo_model.eval.trackers import conditioning_tracker, objmc_protocol

log = logging.getLogger(__name__)


def load_extractor(kind: str, cfg: EvalConfig, given):
    """(model, None) or (None, reason) for 'fid' / 'fvd'."""
    from trackgo_model.eval.metrics import MetricUnavailable

    if given is not None:
        return given, None
    try:
        if kind == "fid":
            from trackgo_model.eval.metrics.fid import load_fid_inception

            return load_fid_inception(cfg.fid_weights, resolve_device(cfg)), None
        from trackgo_model.eval.metrics.fvd import load_i3d

        return load_i3d(cfg.i3d_path, resolve_device(cfg)), None
    except MetricUnavailable as exc:
        log.warning("!!! %s NOT COMPUTED: %s", kind.upper(), exc)
        return None, str(exc)


OBJMC_DEFINITIONS = {
    "ours": "one inscribed-circle point per object tracked directly, flat mean over videos, objects, frames "
            "(frame 0 included)",
    "draganything": "DragAnything's script: Co-Tracker2 on a grid on frame 0, each object's distance-transform "
                    "maximum snapped to the nearest grid track, integer pixels, flat mean over videos, objects, "
                    "frames (frame 0 included)",
}


def score_objmc(cfg: EvalConfig, out: Path, name: str, real: np.ndarray, gen: np.ndarray, tracker,
                objmc_tracker) -> tuple[dict, ErrorSum, ErrorSum]:
    """One saved video's ObjMC, both definitions: real, gen (L,H,W,3) uint8 → (per_video.csv row,
    ``ours`` sum over its visible control-point entries, protocol sum over its objects' frames).
    Writes the protocol's peer trajectory files ``objmc_gt|objmc_pred/<name>.json``."""
    from trackgo_model.eval.metrics import objmc_draganything as DA
    from trackgo_model.eval.metrics.objmc import objmc_ours, peer_tracks, track_from, tracks_to_peer, write_peer_tracks

    with np.load(out / "condition" / f"{name}.npz") as saved:
        cond = {k: saved[k] for k in saved.files}
    ours = objmc_ours(cond["tracks"], track_from(tracker, gen, cond["tracks"][0]), cond["visibility"])
    segment_ids = [int(s) for s in cond["segment_ids"]]
    labels0 = cond["labels0"].astype(np.int32)
    if cfg.objmc_protocol == "draganything":
        idx, gt_tracks, pred_tracks = DA.pair_trajectories(objmc_tracker, real, gen, labels0, cfg.objmc_grid_size,
                                                           cfg.objmc_channel_order)
    else:
        idx, gt_tracks = peer_tracks(tracker, real, labels0)
        _, pred_tracks = peer_tracks(tracker, gen, labels0)
    keys = [segment_ids[i - 1] for i in idx]
    write_peer_tracks(out / "objmc_gt" / f"{name}.json", tracks_to_peer(gt_tracks, keys))
    write_peer_tracks(out / "objmc_pred" / f"{name}.json", tracks_to_peer(pred_tracks, keys))
    peer = ErrorSum()
    peer.add(DA.pair_errors(gt_tracks, pred_tracks, name))
    row = {"video": name, "components": len(segment_ids), "points": len(cond["points"]),
           "objmc_ours": round(ours.mean, 4), "objmc_peer": round(peer.mean, 4) if len(idx) else "",
           "segment_ids": " ".join(map(str, segment_ids))}
    return row, ours, peer


class FeatureSets:
    """Inception (per frame) and I3D (per clip) features of the real and generated videos, kept
    one video at a time (memory stays flat over a whole split); a missing extractor keeps none."""

    def __init__(self, fid_model, i3d_model, batch_size: int) -> None:
        self.fid_model, self.i3d_model, self.batch_size = fid_model, i3d_model, batch_size
        self.i3d_device = next((p.device for p in i3d_model.parameters()), "cpu") if i3d_model is not None else "cpu"
        self.feats: dict[str, list[np.ndarray]] = {"fid_real": [], "fid_gen": [], "fvd_real": [], "fvd_gen": []}

    def add(self, real: np.ndarray, gen: np.ndarray) -> None:
        from trackgo_model.eval.metrics.fid import inception_features
        from trackgo_model.eval.metrics.fvd import i3d_features

        if self.fid_model is not None:
            self.feats["fid_real"].append(inception_features(self.fid_model, real, self.batch_size))
            self.feats["fid_gen"].append(inception_features(self.fid_model, gen, self.batch_size))
        if self.i3d_model is not None:
            real_f, gen_f = i3d_features(self.i3d_model, [real, gen], self.batch_size, self.i3d_device)
            self.feats["fvd_real"].append(real_f)
            self.feats["fvd_gen"].append(gen_f)

    def metrics(self, fid_why: str | None, fvd_why: str | None) -> dict:
        """{"fid": …, "fvd": …} each {"value", "status": ok|missing[, "reason"]}."""
        from trackgo_model.eval.metrics.frechet import FrechetError, frechet_distance_from_features

        out = {}
        for key, why, stack in (("fid", fid_why, np.concatenate), ("fvd", fvd_why, np.stack)):
            if why is None:
                try:
                    value = frechet_distance_from_features(stack(self.feats[f"{key}_real"]),
                                                           stack(self.feats[f"{key}_gen"]))
                    out[key] = {"value": value, "status": "ok"}
                    continue
                except FrechetError as exc:  # e.g. one video: no covariance
                    why = str(exc)
            log.warning("!!! %s NOT COMPUTED: %s", key.upper(), why)
            out[key] = {"value": None, "status": "missing", "reason": why}
        return out


def score(cfg: EvalConfig, fid_model=None, i3d_model=None) -> dict:
    """Score everything under cfg.out (needs only the saved files). Writes per_video.csv,
    results.json, results.md, side-by-side mp4s; returns the results dict.

    ``fid_model`` / ``i3d_model``: extractors to use instead of loading the configured weights
    (tests pass random-weight ones)."""
    from trackgo_data.video import decode_mp4

    out = Path(cfg.out)
    check_config_file(cfg, out, write=False)
    names = sorted(p.stem for p in (out / "generated").glob("*.mp4")
                   if (out / "condition" / f"{p.stem}.npz").is_file())
    if not names:
        raise FileNotFoundError(f"{out} holds no generated videos with conditions; run the generation first")
    tracker, trk_record = conditioning_tracker(cfg, out)
    objmc_trk, objmc_record = objmc_protocol(cfg, tracker, trk_record)
    fid_m, fid_why = load_extractor("fid", cfg, fid_model)
    i3d_m, fvd_why = load_extractor("fvd", cfg, i3d_model)
    features = FeatureSets(fid_m, i3d_m, cfg.metrics_batch_size)
    rows, ours, peer = [], ErrorSum(), ErrorSum()
    for name in names:
        real, gen = decode_mp4(out / "real" / f"{name}.mp4"), decode_mp4(out / "generated" / f"{name}.mp4")
        if real.shape != gen.shape:
            raise ValueError(f"{name}: real {real.shape} and generated {gen.shape} clips differ")
        row, video_ours, video_peer = score_objmc(cfg, out, name, real, gen, tracker, objmc_trk)
        rows.append(row)
        ours.merge(video_ours)
        peer.merge(video_peer)
        features.add(real, gen)
    metrics = {
        "objmc": {"value": peer.mean, "status": "ok", "definition": OBJMC_DEFINITIONS[cfg.objmc_protocol]},
        "objmc_ours": {"value": ours.mean, "status": "ok",
                       "definition": "all control points, entries visible in the real clip"},
        **features.metrics(fid_why, fvd_why),
    }
    rejects_path = out / "rejects.json"
    cfg_dict = config_to_dict(cfg)
    notes = comparability(cfg_dict, trk_record, objmc_record)
    if notes:
        log.warning("!!! ObjMC not comparable to the paper's Table 1: %s", "; ".join(notes))
    results = {
        "num_videos": len(names), "metrics": metrics, "paper_table1": PAPER_TABLE1,
        "tracker": trk_record, "objmc_protocol": objmc_record,
        "comparable_to_paper": not notes, "not_comparable_because": notes,
        "rejects": json.loads(rejects_path.read_text()) if rejects_path.is_file() else {},
        "config": cfg_dict,
    }
    write_per_video_csv(out / "per_video.csv", rows)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", results_markdown(results))
    write_side_by_side(out, names[: cfg.num_side_by_side], cfg.save_fps)
    return results
