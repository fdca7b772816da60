"""The studio page in a real browser: headless Chromium from the system (``apt-get install
chromium``) driven by Playwright. Screenshots of every step are kept (path printed at the end)."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from studio import core
from trackgo_data.render import COLOURS
from trackgo_data.video import decode_mp4

from .conftest import scene

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api")
if CHROMIUM is None:
    pytest.skip("no system Chromium (apt-get install chromium)", allow_module_level=True)

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SIZE = 64  # the test image is SIZE × SIZE


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="trackgo-chromium-")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                   viewport={"width": 1300, "height": 1500})
        ctx.set_default_timeout(60_000)
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


class Studio:
    """One tab on the studio page, with the few gestures the tests need."""

    def __init__(self, page, artifacts, prefix):
        self.page, self.artifacts, self.prefix, self.n = page, artifacts, prefix, 0

    def shot(self, name):
        self.n += 1
        self.page.screenshot(path=str(self.artifacts / f"{self.prefix}-{self.n:02d}-{name}.png"), full_page=True)

    def status(self):
        return self.page.inner_text("#status")

    def wait_status(self, text):
        self.page.wait_for_function("t => (document.querySelector('#status') || {}).innerText?.includes(t)",
                                    arg=text)

    def preview_pixels(self):
        src = self.page.get_attribute("#preview img", "src")
        with urllib.request.urlopen(src) as r, tempfile.NamedTemporaryFile(suffix=".png") as f:
            f.write(r.read())
            f.flush()
            return np.asarray(Image.open(f.name).convert("RGB"))

    def upload(self, path):
        self.page.locator("#image input[type=file]").set_input_files(str(path))
        self.wait_status("no mask given")

    def brush_centre(self):
        """One horizontal stroke across the middle of the editor's canvas (where the image is)."""
        box = self.page.locator("#editor .pixi-target canvas").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        self.page.locator("#editor button[aria-label=Brush]").click()
        self.page.mouse.move(cx - 40, cy)
        self.page.mouse.down()
        self.page.mouse.move(cx + 40, cy, steps=4)
        self.page.mouse.up()
        self.wait_status("click on the object to start its arrow")

    def click_pixel(self, x, y):
        """Click the preview on the centre of image pixel (x, y). The preview is drawn with
        ``object-fit: scale-down``, centred: the picture's box inside the element is computed."""
        self.page.wait_for_function("() => { const i = document.querySelector('#preview img');"
                                    " return i && i.complete && i.naturalWidth > 0; }")
        cw, ch, nw, nh = self.page.evaluate(
            "() => { const i = document.querySelector('#preview img');"
            " return [i.clientWidth, i.clientHeight, i.naturalWidth, i.naturalHeight]; }")
        k = min(1.0, cw / nw, ch / nh)
        ox, oy = (cw - nw * k) / 2, (ch - nh * k) / 2
        self.page.locator("#preview img").click(position={"x": ox + (x + 0.5) / SIZE * nw * k,
                                                          "y": oy + (y + 0.5) / SIZE * nh * k})

    def set_number(self, elem, value):
        field = self.page.locator(f"#{elem} input[type=number]")
        field.fill(str(value))
        field.press("Enter")

    def set_arrows(self, text):
        self.page.fill("#arrows textarea", text)
        self.page.press("#arrows textarea", "Enter")


@pytest.fixture()
def studio(browser, server, artifacts, request):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#image input[type=file]", state="attached")
    yield Studio(page, artifacts, request.node.name.removeprefix("test_")[:24])
    page.close()


def _red(pixels):
    return int((pixels == COLOURS[0]).all(-1).sum())


def test_draw_mask_and_arrow_see_preview_generate_video(studio, server, tmp_path):
    page = studio.page
    assert "tiny random-weight TrackGo" in page.inner_text("#banner")
    img, _, _ = scene(tmp_path, SIZE)
    studio.upload(img)
    studio.shot("uploaded")
    plain = studio.preview_pixels()
    np.testing.assert_array_equal(plain[::6, ::6], np.asarray(Image.open(img).convert("RGB")))

    studio.brush_centre()
    studio.shot("brushed")
    assert "object 1" in studio.status() and "red" in studio.status()
    tinted = studio.preview_pixels()
    assert (tinted != plain).any(-1).mean() > 0.05                 # the mask is tinted red

    studio.click_pixel(32, 32)
    studio.wait_status("click where its arrow ends")
    studio.click_pixel(52, 33)
    studio.wait_status("ready to generate")
    assert page.input_value("#arrows textarea") == "32,32,52,33"
    studio.shot("arrow")
    drawn = studio.preview_pixels()
    assert _red(drawn) > _red(tinted)                              # control points: P's red squares

    studio.set_number("frames", 5)
    studio.set_number("steps", 2)
    before = set(server.runs())
    page.click("#generate")
    page.wait_for_selector("#video video", timeout=120_000)
    page.wait_for_function("() => document.querySelector('#command')?.innerText.includes('trackgo generate')")
    studio.shot("generated")
    run, = set(server.runs()) - before
    video = decode_mp4(run / "video.mp4")
    assert video.shape == (5, SIZE, SIZE, 3)
    shown = page.get_attribute("#video video", "src")
    with urllib.request.urlopen(shown) as r:
        assert decode_mp4(r.read()).shape == (5, SIZE, SIZE, 3)        # the file the page plays
    command = page.inner_text("#command")
    assert "--frames=5" in command and "--steps=2" in command and "--arrows 32,32,52,33" in command
    # the preview was the one renderer's picture of exactly these inputs (8 frames, seed 0 then)
    mask = np.asarray(Image.open(run / "mask-1.png")) > 0
    expect = core.make_preview(np.asarray(Image.open(img).convert("RGB")), [mask], "32,32,52,33", 8, 0, 6)
    assert expect.ready and mask[32, 32]
    np.testing.assert_array_equal(drawn, core.zoom(expect.image, 6))


def test_bad_arrow_message_then_progress_while_the_page_stays_responsive(studio, server, tmp_path):
    page = studio.page
    img, _, _ = scene(tmp_path, SIZE)
    studio.upload(img)
    studio.brush_centre()
    message = f"object 1: arrow ends at (9999, 32), off the {SIZE}×{SIZE} image"
    studio.set_arrows("32,32,9999,32")
    studio.wait_status(message)
    before = set(server.runs())
    page.click("#generate")
    toast = page.wait_for_selector("[data-testid=toast-text]")
    studio.shot("bad-arrow")
    assert message in toast.inner_text() and "Traceback" not in page.inner_text("body")
    assert set(server.runs()) == before

    # a longer run: the progress bar counts denoising steps, and the page keeps answering meanwhile
    page.locator("[data-testid=toast-close]").first.click()
    studio.set_arrows("32,32,50,32")
    studio.wait_status("ready to generate")
    studio.set_number("frames", 4)
    studio.set_number("steps", 60)
    page.click("#generate")
    page.wait_for_function("() => /\\d+\\/60 steps/.test(document.querySelector('#video')?.innerText || '')")
    studio.click_pixel(40, 20)
    page.wait_for_function("() => document.querySelector('#arrows textarea').value.endsWith(',40,20')")
    answered = time.time()
    studio.shot("progress")
    page.wait_for_selector("#video video", timeout=120_000)
    run, = set(server.runs()) - before
    record = json.loads((run / "run.json").read_text())
    assert decode_mp4(run / "video.mp4").shape == (4, SIZE, SIZE, 3)
    assert answered < record["finished"], "the click was answered only after the generation"
