"""What the VIPSeg evaluation writes for people: ``results.md`` (the paper's Table 1 layout, with a
comparability verdict in its first lines), ``per_video.csv`` and the side-by-side clips."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from trackgo_data.config import atomic_write_text

PAPER_TABLE1 = {  # (FVD, FID, ObjMC) on VIPSeg, TrackGo paper Table 1
    "DragNUWA": (321.31, 30.15, 298.98),
    "DragAnything": (294.91, 28.16, 236.02),
    "TrackGo": (248.27, 25.60, 191.15),
}
PAPER_SETTING = {"width": 1024, "height": 576, "num_frames": 14}
PEER_OBJMC = {"tracker": "cotracker2", "grid_size": 100, "channel_order": "bgr"}
CSV_FIELDS = ["video", "components", "points", "objmc_ours", "objmc_peer", "segment_ids"]


def _random_weights(info: dict) -> bool:
    opts = info.get("options") or {}
    return bool(opts.get("random_init")) or opts.get("pretrained") is False or "random" in str(info.get("version"))


def comparability(cfg: dict, tracker: dict, objmc: dict) -> list[str]:
    """Why this run's ObjMC is not comparable to the paper's Table 1 (empty list: it is).

    ``cfg``: the EvalConfig as a dict; ``tracker``: the conditioning tracker's record
    (tracker.json); ``objmc``: the ObjMC protocol's record (results.json ``objmc_protocol``)."""
    notes = []
    if not str(tracker["name"]).startswith("cotracker"):
        why = (f"the run fell back to it because Co-Tracker could not be loaded ({tracker['fallback_reason']})"
               if tracker.get("fallback_reason") else "it was chosen explicitly")
        notes.append(f"the trajectories (conditions and the `ours` column) come from `{tracker['name']}`, "
                     f"not from Co-Tracker as in the paper: {why}")
    elif _random_weights(tracker):
        notes.append(f"the conditioning tracker `{tracker['name']}` ran with random weights")
    if objmc["protocol"] != "draganything":
        notes.append("ObjMC follows the `ours` protocol (inscribed-circle centres tracked directly with the "
                     "conditioning tracker); Table 1 uses DragAnything's: `--objmc-protocol draganything`")
    else:
        for key, want in PEER_OBJMC.items():
            if objmc[key] != want:
                notes.append(f"the ObjMC protocol's {key} is `{objmc[key]}`, the peer's is `{want}`")
        if _random_weights(objmc):
            notes.append(f"the ObjMC tracker `{objmc['tracker']}` ran with random weights")
    for key, want in PAPER_SETTING.items():
        if cfg[key] != want:
            notes.append(f"{key} is {cfg[key]}, the paper's is {want}")
    return notes


def _fmt(metric: dict) -> str:
    return f"{metric['value']:.2f}" if metric.get("value") is not None else "n/a"


def results_markdown(results: dict) -> str:
    """Comparability verdict, then Table 1 (FVD ↓, FID ↓, ObjMC ↓) with the paper's rows beside ours."""
    metrics, cfg, protocol = results["metrics"], results["config"], results["objmc_protocol"]
    notes = results["not_comparable_because"]
    if notes:
        head = ["> **This ObjMC is not comparable to the paper's Table 1:**", *(f"> - {n}" for n in notes), ">",
                "> For comparable numbers: Co-Tracker weights for the trajectories and "
                "`--objmc-protocol draganything` with Co-Tracker2 weights (README, *Evaluation*)."]
    else:
        head = ["> ObjMC by DragAnything's protocol with Co-Tracker2 and trajectories from Co-Tracker, at the "
                "paper's resolution and length: comparable to the paper's Table 1."]
    lines = ["# VIPSeg evaluation", "", *head, "",
             "| Method | FVD ↓ | FID ↓ | ObjMC ↓ | ObjMC, all control points ↓ |", "|---|---|---|---|---|"]
    for name, (fvd, fid, objmc) in results["paper_table1"].items():
        lines.append(f"| {name} (paper) | {fvd:.2f} | {fid:.2f} | {objmc:.2f} | – |")
    lines.append(f"| **ours** ({Path(cfg['checkpoint']).name or cfg['checkpoint']}) | {_fmt(metrics['fvd'])} | "
                 f"{_fmt(metrics['fid'])} | {_fmt(metrics['objmc'])} | {_fmt(metrics['objmc_ours'])} |")
    tracker = results["tracker"]
    lines += ["", f"{results['num_videos']} videos of split `{cfg['split']}`, first {cfg['num_frames']} frames at "
              f"{cfg['width']}×{cfg['height']}, trajectories from `{tracker['name']}` ({tracker['version']}), "
              f"{cfg['num_inference_steps']} sampling steps, seed {cfg['seed']}. ObjMC in pixels at that resolution, "
              f"protocol `{protocol['protocol']}`: {metrics['objmc']['definition']}. "
              "The paper's rows are copied from its Table 1, not recomputed."]
    missing = {k: v["reason"] for k, v in metrics.items() if v.get("status") == "missing"}
    if missing:
        lines += ["", "**Missing metrics**", ""] + [f"- {k.upper()}: {r}" for k, r in missing.items()]
    if results.get("rejects"):
        lines += ["", "**Videos left out**: " + ", ".join(f"{k} ({v})" for k, v in results["rejects"].items())]
    return "\n".join(lines) + "\n"


def write_per_video_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_side_by_side(out: Path, names: list[str], fps: float) -> list[Path]:
    """real | generated | trajectories, one mp4 per video."""
    from trackgo_data.video import decode_mp4, encode_mp4

    paths = []
    for name in names:
        clips = [decode_mp4(out / sub / f"{name}.mp4") for sub in ("real", "generated", "trajectories")]
        paths.append(out / "side_by_side" / f"{name}.mp4")
        encode_mp4(np.concatenate(clips, axis=2), paths[-1], fps=fps)
    return paths
