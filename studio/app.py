"""The Gradio page: image → masks (one editor layer per object, or a SAM click) → arrows (clicks on
the preview) → live preview → Generate (one queue in front of the model).

API (``gradio_client``): ``/generate`` with ``image`` (file), ``masks`` (files, object order),
``arrows`` ("x0,y0,x1,y1" per object, ``;`` between objects), ``frames``, ``steps``, ``strength``,
``seed`` (and ``tau``, ``guidance``) → (video, trajectory video, downloads, command).
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from trackgo_data.user_input import UserInputError, load_image  # noqa: E402

from . import core  # noqa: E402

log = logging.getLogger(__name__)

ARROW, SAM = "arrow point", "object mask (SAM)"
LAYER_RGBA = (255, 255, 255, 150)  # how a SAM mask is painted into its editor layer
HELP = """**1** Upload an image or pick a sample frame. **2** Brush each object's mask in the editor, one
layer per object (add a layer in the layer menu for the next object), or switch on camera motion.
**3** Choose the object, then click its arrow on the preview: start on the object, then the end
(more clicks make a polyline). The preview shows the colours, control points and tracks the model
will see. **4** Generate."""


def _gr_error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc), print_exception=False)


def pixel_key(image: np.ndarray) -> str:
    """A key for an image's pixels, (H, W, 3) uint8, whatever file they came in."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(image).tobytes() + repr(image.shape).encode()).hexdigest()


def mask_layers(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(H, W) bool masks → the editor's RGBA layers (H, W, 4) uint8, painted where the mask is."""
    layers = []
    for mask in masks:
        layer = np.zeros((*np.shape(mask), 4), np.uint8)
        layer[np.asarray(mask, bool)] = LAYER_RGBA
        layers.append(layer)
    return layers


class Handlers:
    """What the page's events call, around a loaded :class:`studio.model.StudioModel`; runs go to
    ``out_root``, the masks of a run about to start to a temporary folder removed at exit."""

    def __init__(self, model, out_root: Path, sam=None, examples: Sequence[Any] = ()) -> None:
        self.model, self.out_root, self.sam = model, out_root, sam
        self.examples = {pixel_key(load_image(e.image)): e for e in examples}
        self.masks_dir = Path(tempfile.mkdtemp(prefix="trackgo-studio-masks-"))
        atexit.register(shutil.rmtree, self.masks_dir, ignore_errors=True)

    def on_image(self, image):
        """A new first frame: empty layers and arrows, or an example's masks and arrows (examples
        are known by their pixels: the page hands over a copy of the file)."""
        if image is None:
            return None, ""
        example = self.examples.get(pixel_key(load_image(image))) if self.examples else None
        if example is None:
            return {"background": image, "layers": [], "composite": None}, ""
        return {"background": image, "layers": mask_layers(example.masks), "composite": None}, example.arrows

    @staticmethod
    def on_edit(editor):
        return core.editor_masks(editor)

    def update(self, image, layers, camera, arrows, frames, seed, target):
        """The preview, the status text and the object choices for the current inputs."""
        if image is None:
            return None, "Upload an image or pick a sample frame.", gr.update(choices=["1"], value="1")
        img = load_image(image)
        masks = core.object_masks(layers, camera, img.shape[:2])
        preview = core.make_preview(img, masks, arrows or "", frames, seed, self.model.max_objects, camera)
        head = f"⚠️ {preview.message}" if preview.message else "✅ ready to generate"
        status = "\n\n".join([head, *(f"- {line}" for line in preview.objects)])
        choices = [str(j + 1) for j in range(max(1, len(masks)))]
        shown = core.zoom(preview.image, core.display_factor(*img.shape[:2]))
        return shown, status, gr.update(choices=choices, value=target if target in choices else choices[0])

    def on_click(self, evt: gr.SelectData, image, layers, arrows, target, mode):
        """A click on the preview: the next arrow point of the chosen object, or (SAM mode) its mask."""
        if image is None:
            raise gr.Error("upload an image or pick a sample frame first", print_exception=False)
        img = load_image(image)
        x, y = core.click_pixel(*evt.index[:2], core.display_factor(*img.shape[:2]))
        obj = int(target or 1) - 1
        if mode != SAM or self.sam is None:
            return core.add_point(arrows or "", obj, x, y), gr.skip()
        masks = [np.asarray(layer, bool) for layer in layers or []]
        masks += [np.zeros(img.shape[:2], bool) for _ in range(obj + 1 - len(masks))]
        masks[obj] = self.sam.mask(img, x, y)
        return gr.skip(), {"background": image, "layers": mask_layers(masks), "composite": None}

    def prepare_masks(self, image, layers, camera):
        """The masks of a run as PNG files (what the API takes)."""
        if image is None:
            raise gr.Error("no image: upload one or pick a sample frame first", print_exception=False)
        masks = core.object_masks(layers, camera, load_image(image).shape[:2])
        return [str(path) for path in core.write_masks(masks, Path(tempfile.mkdtemp(dir=self.masks_dir)))]

    def generate(self, image, masks, arrows, frames, steps, strength, seed, tau, guidance, trajectory_guidance=1.0,
                 progress=gr.Progress()):
        """Generate a video: image + one mask per object + one arrow per object → video."""
        def callback(done, total):
            progress((done, total), desc="denoising", unit="steps")

        progress(0, desc="preparing")
        try:
            run = core.run_generation(self.model, image, masks, arrows or "", frames=frames, steps=steps,
                                      strength=strength, seed=seed, tau=tau, guidance=guidance,
                                      trajectory_guidance=trajectory_guidance, out_root=self.out_root,
                                      callback=callback)
        except UserInputError as exc:
            raise _gr_error(exc) from None
        except Exception as exc:  # the page shows one line; the server log keeps the traceback
            log.exception("generation failed")
            raise gr.Error(f"generation failed: {type(exc).__name__}: {exc}", print_exception=False) from None
        return (str(run.video), str(run.trajectory_view), [str(p) for p in run.downloads], run.command)


def layout(model, samples: list[Path], sam=None, examples_label: str = "Sample frames") -> SimpleNamespace:
    """The page's components (inside an open ``gr.Blocks``), by name."""
    gr.Markdown("# TrackGo Studio")
    gr.Markdown(model.banner(), elem_id="banner")
    gr.Markdown(HELP)
    w = SimpleNamespace()
    with gr.Row():
        with gr.Column():
            w.image = gr.Image(type="filepath", label="First frame", sources=["upload", "clipboard"],
                               format="png", elem_id="image")
            if samples:
                gr.Examples([[str(p)] for p in samples], inputs=[w.image], label=examples_label)
            w.camera = gr.Checkbox(label="Camera motion: the whole image is the mask", elem_id="camera")
            w.editor = gr.ImageEditor(
                label="Masks: one layer per object", type="numpy", elem_id="editor", sources=(),
                transforms=(), layers=gr.LayerOptions(layers=["object 1"]),
                brush=gr.Brush(default_size=12, colors=["#ffffff", "#ff00ff", "#00ffff"]))
        with gr.Column():
            w.preview = gr.Image(label="Preview: click the arrow of the chosen object", interactive=False,
                                 format="png", elem_id="preview", height=420)
            with gr.Row():
                w.target = gr.Radio(["1"], value="1", label="Clicks go to object", elem_id="target")
                w.mode = gr.Radio([ARROW, SAM] if sam is not None else [ARROW], value=ARROW,
                                  label="A click adds", elem_id="mode", visible=sam is not None)
            with gr.Row():
                w.undo = gr.Button("Undo last point", size="sm", elem_id="undo")
                w.clear = gr.Button("Clear arrow", size="sm", elem_id="clear")
            w.arrows = gr.Textbox(label="Arrows: x0,y0,x1,y1 per object (more points: a polyline), "
                                  "objects separated by ;", elem_id="arrows")
            w.status = gr.Markdown(elem_id="status")
    with gr.Accordion("Settings", open=True):
        with gr.Row():
            low, high, step = model.frame_range
            w.frames = gr.Slider(low, high, value=model.frames, step=step, label="frames", elem_id="frames")
            w.steps = gr.Slider(1, 100, value=model.steps, step=1, label="steps", elem_id="steps")
            w.strength = gr.Slider(0, 2, value=1.0, step=0.05, label="strength (motion outside the "
                                   "masks: 0 frozen, 1 as SVD, > 1 more)", elem_id="strength")
        with gr.Row():
            w.tau = gr.Number(0.0, label="τ (0 masks most strongly, -10000 turns masking off)", elem_id="tau")
            label = "guidance (prompt)" if model.base == "wan" else "guidance (last frame; first is 1)"
            w.guidance = gr.Slider(1, 10, value=model.guidance, step=0.5, label=label, elem_id="guidance")
            w.trajectory_guidance = gr.Slider(1, 8, value=model.trajectory_guidance, step=0.5,
                                              visible=model.base != "wan", elem_id="trajectory-guidance",
                                              label="trajectory guidance (1 off; > 1 follows the arrows more)")
            w.seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
    w.go = gr.Button("Generate", variant="primary", elem_id="generate")
    w.masks = gr.File(file_count="multiple", type="filepath", visible=False, label="masks")
    with gr.Row():
        w.video = gr.Video(label="Video", elem_id="video", autoplay=True, loop=True)
        w.trajectory = gr.Video(label="Trajectories P", elem_id="trajectory", autoplay=True, loop=True)
    w.downloads = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
    w.command = gr.Code(label="The same with trackgo generate", language="shell", elem_id="command")
    # the editor's layers are read once per edit into a per-tab state: the other events do not
    # send the editor's images again (a page with the editor as input uploads them every time)
    w.layers = gr.State(None)
    return w


def wire(w: SimpleNamespace, handlers: Handlers) -> None:
    """The page's events: only ``/generate`` is part of the API; it runs one at a time (the model)."""
    private: dict[str, Any] = {"api_visibility": "private"}
    light: dict[str, Any] = {"trigger_mode": "always_last", "show_progress": "hidden",
                             "concurrency_limit": None, **private}
    view = dict(fn=handlers.update, inputs=[w.image, w.layers, w.camera, w.arrows, w.frames, w.seed, w.target],
                outputs=[w.preview, w.status, w.target], **light)
    w.image.change(handlers.on_image, [w.image], [w.editor, w.arrows], **private)
    w.editor.change(handlers.on_edit, [w.editor], [w.layers], **light).then(**view)
    gr.on([w.camera.change, w.arrows.change, w.frames.change, w.seed.change, w.image.change], **view)
    w.preview.select(handlers.on_click, [w.image, w.layers, w.arrows, w.target, w.mode], [w.arrows, w.editor],
                     concurrency_limit=None, **private)
    w.undo.click(lambda arrows, target: core.undo_point(arrows or "", int(target) - 1), [w.arrows, w.target],
                 [w.arrows], **private)
    w.clear.click(lambda arrows, target: core.clear_arrow(arrows or "", int(target) - 1), [w.arrows, w.target],
                  [w.arrows], **private)
    w.go.click(handlers.prepare_masks, [w.image, w.layers, w.camera], [w.masks], **private).success(
        handlers.generate, [w.image, w.masks, w.arrows, w.frames, w.steps, w.strength, w.seed, w.tau, w.guidance,
                            w.trajectory_guidance],
        [w.video, w.trajectory, w.downloads, w.command], api_name="generate", concurrency_limit=1,
        concurrency_id="model")


def build_app(model, *, out_root: str | Path, cache: str | Path, sam=None, examples: Sequence[Any] = ()) -> gr.Blocks:
    """The page around a loaded :class:`studio.model.StudioModel`; runs go to ``out_root``.
    ``examples`` (:class:`studio.toy.ToyExample`: image, masks, arrows) replace the bundled sample
    frames, and picking one fills in its masks and arrows."""
    out_root, cache = Path(out_root), Path(cache)
    handlers = Handlers(model, out_root, sam, examples)
    if examples:
        samples, label = [Path(e.image) for e in examples], "Held-out toy frames (masks and arrows included)"
    else:
        samples, label = core.sample_frames(cache), "Sample frames"
    with gr.Blocks(title="TrackGo Studio") as demo:
        wire(layout(model, samples, sam, label), handlers)
    demo.queue(default_concurrency_limit=4, max_size=64)
    demo.trackgo_paths = [str(out_root), str(cache), str(handlers.masks_dir), *{str(p.parent) for p in samples}]
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page; ``block=False`` returns once it is up (tests)."""
    return demo.launch(server_name=host, server_port=port, allowed_paths=demo.trackgo_paths, ssr_mode=False,
                       prevent_thread_lock=not block, quiet=not block, footer_links=["api"])
