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
from typing import Any

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


def build_app(model, *, out_root: str | Path, cache: str | Path, sam=None) -> gr.Blocks:
    """The page around a loaded :class:`studio.model.StudioModel`; runs go to ``out_root``."""
    out_root, cache = Path(out_root), Path(cache)
    masks_dir = Path(tempfile.mkdtemp(prefix="trackgo-studio-masks-"))  # the page's masks before a run
    atexit.register(shutil.rmtree, masks_dir, ignore_errors=True)
    samples = core.sample_frames(cache)

    def on_image(image):
        if image is None:
            return None, ""
        return {"background": image, "layers": [], "composite": None}, ""

    def on_edit(editor):
        return core.editor_masks(editor)

    def update(image, layers, camera, arrows, frames, seed, target):
        if image is None:
            return None, "Upload an image or pick a sample frame.", gr.update(choices=["1"], value="1")
        img = load_image(image)
        masks = core.object_masks(layers, camera, img.shape[:2])
        p = core.make_preview(img, masks, arrows or "", frames, seed, model.max_objects, camera)
        head = f"⚠️ {p.message}" if p.message else "✅ ready to generate"
        status = "\n\n".join([head, *(f"- {line}" for line in p.objects)])
        choices = [str(j + 1) for j in range(max(1, len(masks)))]
        shown = core.zoom(p.image, core.display_factor(*img.shape[:2]))
        return shown, status, gr.update(choices=choices, value=target if target in choices else choices[0])

    def on_click(evt: gr.SelectData, image, layers, arrows, target, mode):
        if image is None:
            raise gr.Error("upload an image or pick a sample frame first", print_exception=False)
        img = load_image(image)
        x, y = core.click_pixel(*evt.index[:2], core.display_factor(*img.shape[:2]))
        obj = int(target or 1) - 1
        if mode != SAM or sam is None:
            return core.add_point(arrows or "", obj, x, y), gr.skip()
        new = [np.asarray(m, bool) for m in layers or []]
        new += [np.zeros(img.shape[:2], bool) for _ in range(obj + 1 - len(new))]
        new[obj] = sam.mask(img, x, y)
        rgba = []
        for m in new:
            layer = np.zeros((*img.shape[:2], 4), np.uint8)
            layer[m] = LAYER_RGBA
            rgba.append(layer)
        return gr.skip(), {"background": image, "layers": rgba, "composite": None}

    def prepare_masks(image, layers, camera):
        if image is None:
            raise gr.Error("no image: upload one or pick a sample frame first", print_exception=False)
        masks = core.object_masks(layers, camera, load_image(image).shape[:2])
        return [str(p) for p in core.write_masks(masks, Path(tempfile.mkdtemp(dir=masks_dir)))]

    def generate(image, masks, arrows, frames, steps, strength, seed, tau, guidance, progress=gr.Progress()):
        """Generate a video: image + one mask per object + one arrow per object → video."""
        def callback(done, total):
            progress((done, total), desc="denoising", unit="steps")

        progress(0, desc="preparing")
        try:
            run = core.run_generation(model, image, masks, arrows or "", frames=frames, steps=steps,
                                      strength=strength, seed=seed, tau=tau, guidance=guidance,
                                      out_root=out_root, callback=callback)
        except UserInputError as exc:
            raise _gr_error(exc) from None
        except Exception as exc:  # the page shows one line; the server log keeps the traceback
            log.exception("generation failed")
            raise gr.Error(f"generation failed: {type(exc).__name__}: {exc}", print_exception=False) from None
        return (str(run.video), str(run.trajectory_view), [str(p) for p in run.downloads], run.command)

    with gr.Blocks(title="TrackGo Studio") as demo:
        gr.Markdown("# TrackGo Studio")
        gr.Markdown(model.banner(), elem_id="banner")
        gr.Markdown(HELP)
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="First frame", sources=["upload", "clipboard"],
                                 format="png", elem_id="image")
                if samples:
                    gr.Examples([[str(p)] for p in samples], inputs=[image], label="Sample frames")
                camera = gr.Checkbox(label="Camera motion: the whole image is the mask", elem_id="camera")
                editor = gr.ImageEditor(
                    label="Masks: one layer per object", type="numpy", elem_id="editor", sources=(),
                    transforms=(), layers=gr.LayerOptions(layers=["object 1"]),
                    brush=gr.Brush(default_size=12, colors=["#ffffff", "#ff00ff", "#00ffff"]))
            with gr.Column():
                preview = gr.Image(label="Preview: click the arrow of the chosen object", interactive=False,
                                   format="png", elem_id="preview", height=420)
                with gr.Row():
                    target = gr.Radio(["1"], value="1", label="Clicks go to object", elem_id="target")
                    mode = gr.Radio([ARROW, SAM] if sam is not None else [ARROW], value=ARROW,
                                    label="A click adds", elem_id="mode", visible=sam is not None)
                with gr.Row():
                    undo = gr.Button("Undo last point", size="sm", elem_id="undo")
                    clear = gr.Button("Clear arrow", size="sm", elem_id="clear")
                arrows = gr.Textbox(label="Arrows: x0,y0,x1,y1 per object (more points: a polyline), "
                                    "objects separated by ;", elem_id="arrows")
                status = gr.Markdown(elem_id="status")
        with gr.Accordion("Settings", open=True):
            with gr.Row():
                frames = gr.Slider(2, 50, value=model.frames, step=1, label="frames", elem_id="frames")
                steps = gr.Slider(1, 100, value=model.steps, step=1, label="steps", elem_id="steps")
                strength = gr.Slider(0, 2, value=1.0, step=0.05, label="strength (motion outside the "
                                     "masks: 0 frozen, 1 as SVD, > 1 more)", elem_id="strength")
            with gr.Row():
                tau = gr.Number(0.0, label="τ (0 masks most strongly, -10000 turns masking off)", elem_id="tau")
                guidance = gr.Slider(1, 10, value=3.0, step=0.5, label="guidance (last frame; first is 1)",
                                     elem_id="guidance")
                seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
        go = gr.Button("Generate", variant="primary", elem_id="generate")
        masks = gr.File(file_count="multiple", type="filepath", visible=False, label="masks")
        with gr.Row():
            video = gr.Video(label="Video", elem_id="video", autoplay=True, loop=True)
            trajectory = gr.Video(label="Trajectories P", elem_id="trajectory", autoplay=True, loop=True)
        downloads = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
        command = gr.Code(label="The same with trackgo generate", language="shell", elem_id="command")

        # the editor's layers are read once per edit into a per-tab state: the other events do not
        # send the editor's images again (a page with the editor as input uploads them every time)
        layers = gr.State(None)
        private: dict[str, Any] = {"api_visibility": "private"}
        light: dict[str, Any] = {"trigger_mode": "always_last", "show_progress": "hidden",
                                 "concurrency_limit": None, **private}
        view = dict(fn=update, inputs=[image, layers, camera, arrows, frames, seed, target],
                    outputs=[preview, status, target], **light)
        image.change(on_image, [image], [editor, arrows], **private)
        editor.change(on_edit, [editor], [layers], **light).then(**view)
        gr.on([camera.change, arrows.change, frames.change, seed.change, image.change], **view)
        preview.select(on_click, [image, layers, arrows, target, mode], [arrows, editor],
                       concurrency_limit=None, **private)
        undo.click(lambda a, t: core.undo_point(a or "", int(t) - 1), [arrows, target], [arrows], **private)
        clear.click(lambda a, t: core.clear_arrow(a or "", int(t) - 1), [arrows, target], [arrows], **private)
        go.click(prepare_masks, [image, layers, camera], [masks], **private).success(
            generate, [image, masks, arrows, frames, steps, strength, seed, tau, guidance],
            [video, trajectory, downloads, command], api_name="generate", concurrency_limit=1,
            concurrency_id="model")
    demo.queue(default_concurrency_limit=4, max_size=64)
    demo.trackgo_paths = [str(out_root), str(cache), str(masks_dir)]
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page; ``block=False`` returns once it is up (tests)."""
    return demo.launch(server_name=host, server_port=port, allowed_paths=demo.trackgo_paths, ssr_mode=False,
                       prevent_thread_lock=not block, quiet=not block, footer_links=["api"])
