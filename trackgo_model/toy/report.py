"""Reports of the toy reproduction: ``results.md`` (rows, references, paired differences, the
verdict on each of Table 2's claims), the bar chart of the gap closed with its intervals, ObjMC
against steps, and the side-by-side video (real | base | TrackGo, with the requested tracks drawn)."""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .summary import FLOOR, PAPER_TABLE2, REAL, STATIC

log = logging.getLogger(__name__)

#: targets of the toy: the gap closed by TrackGo (paper formula) and its interval's lower end
GOAL_GAP, GOAL_GAP_LOWER, GOAL_RATIO = 0.6, 0.5, 0.5
#: the Wan toy's: TrackGo-Wan closes at least half of the gap, the interval's lower end included
WAN_GOAL_GAP = WAN_GOAL_GAP_LOWER = 0.5
ROW_LABELS = {
    "base": "base model (image only, no trajectories)",
    "trackgo": "**TrackGo** (paper formula O = (A + A′)·V, mask, λ·L_attn)",
    "no_attn_loss": "w/o attention loss (λ = 0)",
    "no_mask_no_loss": "w/o mask and loss",
    "no_mask": "w/o attention mask",
    "gated": "gated formula O = A·V + g·(A′ − 1/F)·V, mask, λ·L_attn",
    "injection": "peers' injection (P's features added to the UNet, DragAnything/MotionPro-style)",
    "wan_move": "Wan-Move's latent trajectory guidance (the whole DiT fine-tuned, condition edited along the tracks)",
    STATIC: "*reference: first frame repeated (no motion; G = 0)*",
    FLOOR: "*reference: real clip through the VAE (the floor; G = 1)*",
    REAL: "*reference: real clip (the tracker agreeing with itself)*",
}
ORDER = ("base", "no_mask_no_loss", "no_attn_loss", "no_mask", "trackgo", "gated")


def target(results: dict[str, Any], base_family: str = "svd") -> dict[str, Any]:
    """The toy's targets, judged: G(trackgo) ≥ 0.6 with the interval's lower end ≥ 0.5 (the Wan
    toy: both 0.5), and ObjMC(trackgo) ≤ 0.5 × ObjMC(base) as the secondary figure."""
    row, base = results["rows"]["trackgo"], results["rows"]["base"]
    ratio = row["objmc"] / base["objmc"] if base["objmc"] else float("nan")
    goal, lower = (WAN_GOAL_GAP, WAN_GOAL_GAP_LOWER) if base_family == "wan" else (GOAL_GAP, GOAL_GAP_LOWER)
    return {"gap_closed": row["gap_closed"], "gap_closed_ci95": row["gap_closed_ci95"], "goal": goal,
            "goal_lower": lower,
            "met": bool(row["gap_closed"] >= goal and row["gap_closed_ci95"][0] >= lower),
            "objmc_ratio_to_base": ratio, "ratio_goal": GOAL_RATIO, "ratio_met": bool(ratio <= GOAL_RATIO)}


def fmt(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def with_ci(stats: dict[str, Any], name: str, digits: int = 2) -> str:
    lo, hi = stats[f"{name}_ci95"]
    return f"{fmt(stats[name], digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def table_lines(results: dict[str, Any]) -> list[str]:
    rows, refs = results["rows"], results["references"]
    names = [r for r in ORDER if r in rows] + sorted(set(rows) - set(ORDER))
    lines = ["| | ObjMC ↓ | gap closed G ↑ | PSNR ↑ | lost points | path error ↓ |", "|---|---|---|---|---|---|"]
    for name, stats in [*((n, rows[n]) for n in names), *((n, refs[n]) for n in (STATIC, FLOOR, REAL))]:
        lines.append(f"| {ROW_LABELS.get(name, name)} | {with_ci(stats, 'objmc')} | {with_ci(stats, 'gap_closed')} | "
                     f"{with_ci(stats, 'psnr')} | {fmt(100 * stats['lost_points'], 1)} % | {fmt(stats['path_error'])} |")
    return lines


def claim_lines(results: dict[str, Any]) -> list[str]:
    lines = ["| Table 2's claim | G difference [95 %] | control | PSNR difference [95 %] | fidelity |",
             "|---|---|---|---|---|"]
    for c in results["claims"]:
        g, p = c["gap_closed"], c["psnr"]
        lines.append(f"| {c['claim']} | {fmt(g['difference'], 3)} [{fmt(g['ci95'][0], 3)}, {fmt(g['ci95'][1], 3)}] | "
                     f"{g['verdict']} | {fmt(p['difference'])} [{fmt(p['ci95'][0])}, {fmt(p['ci95'][1])}] | "
                     f"{p['verdict']} |")
    return lines


def difference_lines(results: dict[str, Any]) -> list[str]:
    lines = ["| a − b | ObjMC | G | PSNR |", "|---|---|---|---|"]
    for pair, d in results["differences"].items():
        lines.append(f"| {pair} | {with_ci(d, 'objmc')} | {with_ci(d, 'gap_closed', 3)} | {with_ci(d, 'psnr')} |")
    return lines


def results_markdown(results: dict[str, Any], cfg) -> str:
    t = results["target"]
    w, h = results["model_size"]
    ev = cfg.eval
    wan = getattr(cfg, "base", "svd") == "wan"
    title = "# Toy reproduction — TrackGo on a synthetic world" + (", Wan-layout DiT" if wan else "")
    sampling = (f"Sampling: {ev.num_inference_steps} steps of the UniPC flow scheduler, no guidance, seed {ev.seed} + "
                "clip index." if wan else
                f"Sampling: {ev.num_inference_steps} Euler steps, guidance {ev.min_guidance_scale}→"
                f"{ev.max_guidance_scale}, trajectory guidance {ev.trajectory_guidance:g} (rows with trajectories), "
                f"seed {ev.seed} + clip index.")
    claims = [] if wan else [
        "## Table 2's claims on this world", "",
        "The paper's Table 2 compares FVD (video quality) on its internal set; here the same rows are "
        "compared on control (G) and on fidelity to the real clip (PSNR). *confirms* / *refutes*: the "
        "whole 95 % interval of the paired difference lies on one side of 0; otherwise *cannot tell*.", "",
        *claim_lines(results), ""]
    paper = [] if wan else [
        "Paper, Table 2 (FVD on its internal set at 14k / 16k / 18k steps; for the layout, not comparable):",
        "", "| | 14k | 16k | 18k |", "|---|---|---|---|",
        *(f"| {ROW_LABELS[k]} | {a:.2f} | {b:.2f} | {c:.2f} |" for k, (a, b, c) in PAPER_TABLE2.items()), ""]
    lines = [title, "",
             f"{results['num_clips']} held-out clips (worlds never trained or tuned on), {results['num_frames']} frames "
             f"at {w}×{h}; ObjMC and path error in pixels at that size; 95 % intervals from "
             f"{results['replicates']} bootstrap resamples of the clips, paired across rows. "
             f"End to end: {fmt(results.get('seconds', float('nan')) / 60, 1)} min.", "",
             *table_lines(results), "",
             f"**Target** G(TrackGo) ≥ {t['goal']} with the interval's lower end ≥ {t['goal_lower']}: "
             f"{with_ci(t, 'gap_closed', 3)} — {'met' if t['met'] else 'missed'}. "
             f"ObjMC(TrackGo) / ObjMC(base) = {fmt(t['objmc_ratio_to_base'], 3)} (goal ≤ {t['ratio_goal']}: "
             f"{'met' if t['ratio_met'] else 'missed'}).", "", *claims,
             "## Paired differences", "", *difference_lines(results), "", *paper,
             f"{sampling} Stage times: `stages/*.json`."]
    return "\n".join(lines) + "\n"


def compare_markdown(results: dict[str, Any]) -> str:
    """compare.md: TrackGo beside other ways to take P, same base, budget, clips and metric."""
    w, h = results["model_size"]
    lines = ["# TrackGo against other ways to take the trajectories", "",
             f"{results['num_clips']} held-out clips, {results['num_frames']} frames at {w}×{h}; every row "
             "fine-tuned from the same base model with the same recipe, steps and trainable temporal q/k/v; "
             f"95 % intervals from {results['replicates']} bootstrap resamples of the clips, paired.", "",
             *table_lines(results), "", "## Paired differences", "", *difference_lines(results), "",
             "Rows: " + "; ".join(f"`{row}` = {' '.join(over)}" for row, over in results["rows_config"].items()) + "."]
    return "\n".join(lines) + "\n"


def seeds_markdown(results: dict[str, Any]) -> str:
    """seeds.md: every variant over its training seeds, intervals over seeds and clips, and Table 2's
    claims judged on those intervals."""
    w, h = results["model_size"]
    seeds = ", ".join(str(s) for s in results["seeds"])
    runs = ["| run | ObjMC | G | PSNR |", "|---|---|---|---|"]
    for row, stats in results["rows"].items():
        for name, r in stats.get("runs", {}).items():
            if row != "base":
                runs.append(f"| {name} | {fmt(r['objmc'])} | {fmt(r['gap_closed'], 3)} | {fmt(r['psnr'])} |")
    lines = ["# The toy's rows over training seeds", "",
             f"{results['num_clips']} held-out clips, {results['num_frames']} frames at {w}×{h}; every variant "
             f"fine-tuned from the same base with training seeds {seeds}. A row's figure is the mean over its "
             f"seeds; 95 % intervals from {results['replicates']} two-level bootstrap resamples (the clips, "
             "shared by all rows, then each row's seeds with replacement), so they cover another training "
             "run as well as other clips.", "",
             *table_lines(results), "", "## Table 2's claims, over seeds and clips", "", *claim_lines(results), "",
             "## Paired differences", "", *difference_lines(results), "", "## Every run", "", *runs]
    return "\n".join(lines) + "\n"


def figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_gap_closed(results: dict[str, Any], path: Path) -> Path:
    """Bar chart of G per row with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trackgo_data.config import atomic_write_bytes

    rows = results["rows"]
    names = [r for r in ORDER if r in rows] + sorted(set(rows) - set(ORDER)) + [REAL]
    stats = [rows.get(n) or results["references"][n] for n in names]
    g = np.array([s["gap_closed"] for s in stats])
    lo = g - np.array([s["gap_closed_ci95"][0] for s in stats])
    hi = np.array([s["gap_closed_ci95"][1] for s in stats]) - g
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(names)), g, yerr=[lo, hi], capsize=4, color="#4a7ebb")
    ax.axhline(GOAL_GAP, color="grey", ls="--", label=f"goal {GOAL_GAP}")
    ax.axhline(1.0, color="black", lw=0.8, label="VAE round trip (floor)")
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("gap closed G (95 % interval)")
    ax.legend(loc="upper left")
    return atomic_write_bytes(path, figure_bytes(fig))


def plot_curve(curve: dict[str, list[list[float]]], base_objmc: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trackgo_data.config import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in sorted(curve.items()):
        a = np.asarray(pts, float)
        ax.plot(a[:, 0], a[:, 1], marker="o", label=name)
    ax.axhline(base_objmc, color="grey", ls="--", label="base (all clips)")
    ax.set_xlabel("TrackGo training steps")
    ax.set_ylabel("ObjMC (px) ↓")
    ax.legend()
    ax.grid(alpha=0.3)
    return atomic_write_bytes(path, figure_bytes(fig))


def panel(frames: np.ndarray, sample, scale: int, label: str) -> np.ndarray:
    """(L, H, W, 3) → up-scaled frames with the requested tracks (up to each frame) and a label."""
    import cv2

    from trackgo_data.render import overlay_tracks

    tracks = np.asarray(sample.tracks, np.float32)
    up = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)
    t_up = (tracks + 0.5) * scale - 0.5
    vis = np.asarray(sample.visibility, bool)
    comps = np.asarray(sample.components)
    out = []
    for t in range(len(up)):
        img = np.ascontiguousarray(overlay_tracks(up[t], t_up[: t + 1], vis[: t + 1], comps))
        cv2.putText(img, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(img)
    return np.stack(out)


def side_by_side(out: Path, samples: list, scale: int, rows: tuple[str, ...] = ("base", "trackgo")) -> Path | None:
    """``<out>/side_by_side.mp4``: per held-out clip one band real | base | TrackGo, bands stacked."""
    from trackgo_data.video import decode_mp4, encode_mp4

    if not samples:
        return None
    bands = []
    for s in samples:
        panels = [panel(np.asarray(s.video), s, scale, "real")]
        panels += [panel(decode_mp4(out / "eval" / r / f"{s.key}.mp4"), s, scale, r) for r in rows]
        bands.append(np.concatenate(panels, axis=2))
    fps = float(samples[0].meta.get("fps", 8))
    return encode_mp4(np.concatenate(bands, axis=1), out / "side_by_side.mp4", fps=min(fps, 4.0))
