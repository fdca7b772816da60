"""What the studio page does, without the page: masks from the editor, arrows from clicks, the live
preview, sample frames and one generation run. No gradio here; ``studio.app`` wires it up.

Arrows travel as one text, the canonical form of the API: ``"x0,y0,x1,y1"`` per object (more
points for a polyline), objects separated by ``;``.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from trackgo_data.render import COLOURS
from trackgo_data.user_input import (UserInputError, build_motion, load_image, object_labels, preview_image,
                                     split_arrows)

log = logging.getLogger(__name__)

COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "violet", "white")


# ---------------------------------------------------------------------------------- inputs
def editor_masks(editor: dict[str, Any] | None) -> list[np.ndarray] | None:
    """The image editor's value (background + one RGBA layer per object) → one (H,W) bool mask
    per layer (painted = alpha > 0); None before an image is loaded."""
    if not editor or editor.get("background") is None:
        return None
    masks = []
    for layer in editor.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[-1] == 4:
            masks.append(layer[..., 3] > 0)
        else:
            masks.append(layer.any(-1) if layer.ndim == 3 else layer > 0)
    return masks


def object_masks(layers: list[np.ndarray] | None, camera: bool, shape: tuple[int, int]) -> list[np.ndarray]:
    """The masks a request uses: the editor's layers, or one whole-image mask for camera motion."""
    if camera:
        return [np.ones(shape, bool)]
    return list(layers or [])


def add_point(arrows: str, obj: int, x: float, y: float) -> str:
    """Append (x, y) to object ``obj``'s arrow (0-based) in the arrows text."""
    parts = split_arrows(arrows)
    parts += [""] * (obj + 1 - len(parts))
    parts[obj] = ",".join(p for p in (parts[obj], f"{x:g},{y:g}") if p)
    return join_arrows(parts)


def undo_point(arrows: str, obj: int) -> str:
    parts = split_arrows(arrows)
    if obj < len(parts) and parts[obj]:
        vals = [v for v in parts[obj].replace(" ", "").split(",") if v]
        parts[obj] = ",".join(vals[:max(0, len(vals) - 2)])
    return join_arrows(parts)


def clear_arrow(arrows: str, obj: int) -> str:
    parts = split_arrows(arrows)
    if obj < len(parts):
        parts[obj] = ""
    return join_arrows(parts)


def join_arrows(parts: Sequence[str]) -> str:
    parts = list(parts)
    while parts and not parts[-1]:
        parts.pop()
    return "; ".join(parts)


def _points(text: str) -> np.ndarray:
    """Lenient parse for drawing an unfinished arrow: the complete (x, y) pairs of ``text``."""
    vals = []
    for v in text.replace(" ", "").split(","):
        try:
            vals.append(float(v))
        except ValueError:
            continue
    vals = vals[: len(vals) // 2 * 2]
    pts = np.array(vals, np.float64).reshape(-1, 2)
    return pts[np.isfinite(pts).all(1)]


# ---------------------------------------------------------------------------------- preview
@dataclass
class Preview:
    image: np.ndarray          # (H,W,3) uint8
    message: str               # "" when the input is ready to generate
    objects: list[str]         # one line per object
    ready: bool


def colour_label(component: int) -> str:
    r, g, b = (int(c) for c in COLOURS[component])
    return f'<span style="color: rgb({r},{g},{b})">■</span> {COLOUR_NAMES[component]}'


def make_preview(image: np.ndarray, masks: list[np.ndarray], arrows: str, frames: int, seed: int,
                 max_objects: int, camera: bool = False) -> Preview:
    """The live preview: masks tinted in the colours the model will see, tracks and frame-0 control
    points (``trackgo_data.user_input.preview_image``, as ``trackgo generate --preview``), arrows as
    drawn so far; and one message saying what is missing or wrong (the same checks as generation)."""
    import cv2

    image = np.asarray(image, np.uint8)[..., :3]
    H, W = image.shape[:2]
    parts = split_arrows(arrows)
    n = len(masks)
    parts += [""] * (n - len(parts))
    comps: list[int | None] = [None] * n
    message, motion = "", None
    try:
        for j, part in enumerate(parts[:n]):  # guidance for arrows still being drawn
            k = len(_points(part))
            if masks[j].shape == (H, W) and masks[j].any() and k < 2:
                raise UserInputError(f"object {j + 1}: click on the object to start its arrow" if k == 0 else
                                     f"object {j + 1}: click where its arrow ends")
        motion = build_motion(masks, parts, max(2, int(frames)), int(seed), max_objects, image_size=(W, H))
        comps = list(motion.object_components)
        out = preview_image(image, motion.tracks, motion.visibility, motion.components, motion.labels)
    except UserInputError as exc:
        message = str(exc)
        ok = [j for j, m in enumerate(masks) if m.shape == (H, W) and m.any()]
        out = image.copy()
        if ok:
            try:
                labels, components = object_labels([masks[j] for j in ok])
                for j, component in zip(ok, components):
                    comps[j] = component
                out = preview_image(image, np.zeros((1, 0, 2), np.float32), np.zeros((1, 0), bool),
                                    np.zeros(0, np.int64), labels)
            except UserInputError:
                pass
    out = np.ascontiguousarray(out)
    for j, part in enumerate(parts[:max(n, 1)]):
        pts = _points(part)
        colour = tuple(int(c) for c in COLOURS[comps[j] if j < n and comps[j] is not None else len(COLOURS) - 1])
        ipts = [(int(round(x)), int(round(y))) for x, y in pts]
        for start, end in zip(ipts[:-1], ipts[1:]):
            if end == ipts[-1]:
                cv2.arrowedLine(out, start, end, colour, 1, cv2.LINE_AA, tipLength=0.2)
            else:
                cv2.line(out, start, end, colour, 1, cv2.LINE_AA)
        if len(ipts) == 1:
            cv2.drawMarker(out, ipts[0], colour, cv2.MARKER_CROSS, 7, 1)
    lines = []
    for j in range(n):
        what = "camera (whole image)" if camera else f"object {j + 1}"
        area = int(masks[j].sum()) if masks[j].shape == (H, W) else 0
        colour = colour_label(comps[j]) if comps[j] is not None else "no colour yet"
        arrow = parts[j] if j < len(parts) and parts[j] else "no arrow yet"
        lines.append(f"**{what}** · {colour} · {area} px · arrow `{arrow}`")
    return Preview(out, message, lines, ready=motion is not None)


def display_factor(height: int, width: int, target: int = 400) -> int:
    """Integer zoom of the preview so that small images are big enough to click on."""
    return max(1, target // max(height, width))


def zoom(image: np.ndarray, factor: int) -> np.ndarray:
    """(H,W,3) → (factor·H, factor·W, 3), each pixel a factor × factor block."""
    return image if factor == 1 else np.repeat(np.repeat(image, factor, 0), factor, 1)


def click_pixel(x: float, y: float, factor: int) -> tuple[int, int]:
    """A click at (x, y) on the zoomed preview → the image pixel under it."""
    return int(x // factor), int(y // factor)


# ---------------------------------------------------------------------------------- samples
def sample_frames(cache: Path) -> list[Path]:
    """First frames of the bundled sample clips as PNGs in ``cache/samples`` (written once)."""
    from PIL import Image

    from trackgo_data.config import atomic_write_bytes
    from trackgo_data.samples import sample_video_paths
    from trackgo_data.video import read_frames

    out = []
    try:
        videos = sample_video_paths()
    except FileNotFoundError as exc:
        log.warning("no sample frames: %s", exc)
        return out
    for name, path in videos.items():
        png = cache / "samples" / f"{name}.png"
        if not png.is_file():
            import io

            buf = io.BytesIO()
            Image.fromarray(read_frames(path, 0, 1)[0]).save(buf, format="PNG")
            atomic_write_bytes(png, buf.getvalue())
        out.append(png)
    return out


def write_masks(masks: Sequence[np.ndarray], folder: Path) -> list[Path]:
    """One binary PNG (0/255) per mask, ``mask-1.png`` …, in object order."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for j, mask in enumerate(masks):
        path = folder / f"mask-{j + 1}.png"
        Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------- generation
@dataclass
class Run:
    folder: Path
    video: Path
    trajectory: Path           # P, lossless (libx264rgb): the file trackgo generate writes
    trajectory_view: Path      # P as ordinary H.264 for browsers
    downloads: list[Path]
    command: str
    result: dict[str, Any]


def generate_parser() -> argparse.ArgumentParser:
    """The parser of ``trackgo generate`` itself (so a run is exactly that command)."""
    from trackgo_model.cli.model import register

    parser = argparse.ArgumentParser(prog="trackgo")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def run_generation(model, image: str | Path | None, masks: Sequence[str | Path] | None, arrows: str, *,
                   frames: int, steps: int, strength: float, seed: int, tau: float | None = None,
                   guidance: float = 3.0, trajectory_guidance: float = 1.0, out_root: Path,
                   callback: Callable[[int, int], None] | None = None) -> Run:
    """One generation: the inputs are copied into a new run folder, ``trackgo generate`` is run
    in-process on them with the loaded pipeline, and the folder (video, P, inputs, command.sh,
    run.json) is renamed into place only when complete. Bad input raises UserInputError and
    leaves nothing behind."""
    from PIL import Image

    from trackgo_data.config import atomic_write_json, atomic_write_text
    from trackgo_data.video import decode_mp4, encode_mp4
    from trackgo_model.cli.model import run_generate

    if image is None or not str(image):
        raise UserInputError("no image: upload one or pick a sample frame first")
    if not masks:
        raise UserInputError("no mask given: brush one layer per object, or switch on camera motion")
    if int(frames) != frames or int(steps) != steps:
        raise UserInputError(f"frames and steps must be whole numbers, got {frames} and {steps}")
    img = load_image(image)
    width, height = model.output_size(img.shape[1], img.shape[0])
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    final = out_root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_root))
    try:
        Image.fromarray(img).save(tmp / "image.png")
        mask_paths = []
        for j, mask in enumerate(masks):
            suffix = Path(str(mask)).suffix.lower() or ".png"
            mask_paths.append(tmp / f"mask-{j + 1}{suffix}")
            shutil.copyfile(mask, mask_paths[-1])
        parts = split_arrows(arrows)
        opts = [f"--frames={int(frames)}", f"--steps={int(steps)}", f"--strength={float(strength):g}",
                f"{model.guidance_option}={float(guidance):g}", f"--seed={int(seed)}", f"--width={width}",
                f"--height={height}"] + ([] if tau is None else [f"--tau={float(tau):g}"])
        if float(trajectory_guidance) != 1.0:
            opts.append(f"--trajectory-guidance={float(trajectory_guidance):g}")
        head = ["generate", "--image", str(tmp / "image.png"), "--masks", *map(str, mask_paths), "--arrows"]
        tail = [*model.cli_args(), *opts, "--out", str(tmp / "video.mp4")]
        argv = head + parts + tail
        # arrows are set after parsing: a coordinate like "-5" would read as an option (it is
        # refused as off the image by the checks, with their message)
        args = generate_parser().parse_args(head + ["0,0,0,0"] + tail)
        args.arrows = parts
        started = time.time()
        result = run_generate(args, pipe=model.pipe, callback=callback, max_objects=model.max_objects)
        finished = time.time()
        encode_mp4(decode_mp4(tmp / "video.trajectory.mp4"), tmp / "trajectory-view.mp4", fps=args.fps)
        command = shlex.join(["trackgo", *(a.replace(str(tmp), str(final)) for a in argv)])
        atomic_write_text(tmp / "command.sh", command + "\n")
        result = {k: (v.replace(str(tmp), str(final)) if isinstance(v, str) else v) for k, v in result.items()}
        atomic_write_json(tmp / "run.json", {"model": model.describe(), "result": result, "command": command,
                                             "started": started, "finished": finished})
        tmp.chmod(0o755)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = ["video.mp4", "video.trajectory.mp4", "image.png", *(p.name for p in mask_paths),
             "command.sh", "run.json"]
    log.info("studio run %s: %s", final, command)
    return Run(final, final / "video.mp4", final / "video.trajectory.mp4", final / "trajectory-view.mp4",
               [final / f for f in files], command, result)
