"""The web UI in a real browser: Playwright drives Debian's chromium (headless) against ``videox-fun ui`` with
the packaged tiny models. It types, uploads and clicks as a user does, then judges the video the page shows
with the toy-world evaluator. Screenshots go to ``artifacts/ui/`` (and to ``docs/images/`` with
``VIDEOX_FUN_UPDATE_SCREENSHOTS=1``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from helpers import HANG_GUARD_S, frame_count_and_size, write_animate_sources

from videox_fun.io.video import write_video
from videox_fun.registry import packaged_model
from videox_fun.serve.process import ServerProcess, free_port
from videox_fun.toyworld.evaluate import evaluate_video
from videox_fun.toyworld.render import render_clip

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts" / "ui"
DOCS_IMAGES = REPO / "docs" / "images"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(packaged_model("Wan2.1-Fun-Tiny-Control") is None, reason="packaged tiny models not installed"),
]


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        if os.environ.get("VIDEOX_FUN_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (VIDEOX_FUN_REQUIRE_BROWSER) but /usr/bin/chromium is missing")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def start_ui(root: Path, *args: str, ready_path: str = "/healthz") -> ServerProcess:
    """``videox-fun ui`` on a free port: with its own service and store at ``root``, or over ``--api-url``."""
    return ServerProcess(root, "--device", "cpu", *args, port=free_port(), env=THREADS, cwd=REPO, command="ui",
                         ready_path=ready_path).start()  # fmt: skip


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> dict[str, Path]:
    """A toy-world clip's start image and Canny control video (a red circle moving right)."""
    folder = tmp_path_factory.mktemp("clip")
    clip = render_clip("a red circle moving right", size=64, frames=17, seed=3)
    return {
        "image": write_video(clip.frames[:1], folder / "start.png"),
        "control_video": write_video(clip.control, folder / "control.mp4"),
    }


def shoot(page, name: str) -> None:
    """A full-page screenshot as a test artefact; with VIDEOX_FUN_UPDATE_SCREENSHOTS, the window's in docs/ too."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if os.environ.get("VIDEOX_FUN_UPDATE_SCREENSHOTS"):
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMAGES / f"ui-{name}.png"))


def open_page(browser, url: str, width: int = 1280):
    """A new page at ``url``, waited for until the model list has arrived from the service."""
    page = browser.new_page(viewport={"width": width, "height": 1200})
    page.set_default_timeout(HANG_GUARD_S * 1000)  # playwright's 30 s is short beside another CPU-heavy job
    page.goto(url)
    page.wait_for_function("(document.querySelector('#vxf-model input') || {}).value", timeout=HANG_GUARD_S * 1000)
    page.wait_for_function("(document.querySelector('#vxf-frames input[type=number]') || {}).value === '17'")
    return page


def pick_model(page, name: str) -> None:
    """Choose a model in the dropdown as a user does (click, then the option)."""
    page.click("#vxf-model input")
    page.get_by_role("option", name=name, exact=True).click()
    page.wait_for_function(f"document.querySelector('#vxf-model input').value === {name!r}")
    page.wait_for_timeout(500)  # its defaults arrive


def set_number(page, elem_id: str, value: int) -> None:
    """Type a value into a slider's number box."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def generate_and_fetch(page, url: str, out: Path, timeout_ms: int = HANG_GUARD_S * 1000) -> Path:
    """Click Generate, wait for the progress bar to say done, and download the video the page shows."""
    shown = "(document.querySelector('#vxf-video video') || {}).src || ''"
    before = page.evaluate(shown)  # the previous result stays shown until the new one replaces it
    page.click("#vxf-generate")
    page.wait_for_function(
        f"document.querySelector('#vxf-progress [data-status=\"done\"]') && ({shown}) && ({shown}) !== {before!r}",
        timeout=timeout_ms,
    )
    src = page.evaluate(shown)
    out.write_bytes(httpx.get(src if src.startswith("http") else url + src, timeout=HANG_GUARD_S).content)
    return out


def test_t2v_i2v_and_control_from_the_page_give_judged_videos(browser, clip_files, tmp_path):
    server = start_ui(tmp_path / "store")
    try:
        page = open_page(browser, server.url)
        for mode in ("flf2v", "v2v", "inpaint", "camera", "t2v"):  # every tab, as a reader first sees it
            page.get_by_role("tab", name=mode, exact=True).click()
            shoot(page, mode)
        page.fill("#vxf-prompt textarea", "a red circle moving right")
        video = generate_and_fetch(page, server.url, tmp_path / "t2v.mp4")
        judged = evaluate_video(video, "a red circle moving right")
        assert (judged["colour_ok"], judged["direction_ok"]) == (True, True), judged
        assert "Wan2.1-Fun-Tiny-InP" in page.inner_text("#vxf-settings")
        shoot(page, "t2v-result")

        page.get_by_role("tab", name="i2v", exact=True).click()
        page.set_input_files("#vxf-i2v-image input[type=file]", str(clip_files["image"]))
        page.wait_for_selector("#vxf-i2v-image img")
        shoot(page, "i2v")
        video = generate_and_fetch(page, server.url, tmp_path / "i2v.mp4")
        judged = evaluate_video(video, "a red circle moving right", image=clip_files["image"])
        assert judged["colour_ok"] and judged["psnr_first_frame"] > 20, judged

        pick_model(page, "Wan2.1-Fun-Tiny-Control")
        page.get_by_role("tab", name="control", exact=True).click()
        page.set_input_files("#vxf-control-control-video input[type=file]", str(clip_files["control_video"]))
        page.wait_for_selector("#vxf-control-control-video video")
        shoot(page, "control")
        video = generate_and_fetch(page, server.url, tmp_path / "control.mp4")
        judged = evaluate_video(video, "a red circle moving right", control_video=clip_files["control_video"])
        assert judged["colour_ok"] and judged["trajectory_error_px"] < 6, judged

        # A mode the model cannot serve: one clear line in the page, no traceback.
        page.get_by_role("tab", name="i2v", exact=True).click()
        page.click("#vxf-generate")
        page.wait_for_selector("#vxf-error [role=alert]")
        message = page.inner_text("#vxf-error")
        assert "mode" in message and "Traceback" not in message
        shoot(page, "error")

        # Every job the page started is a job of the service's API.
        jobs = httpx.get(f"{server.url}/v1/generations", timeout=HANG_GUARD_S).json()
        assert [item["status"] for item in jobs["items"]] == ["done"] * 3
    finally:
        server.stop()


def test_cancel_stops_within_a_step_and_the_gallery_survives_a_restart(browser, tmp_path):
    root = tmp_path / "store"
    server = start_ui(root)
    try:
        page = open_page(browser, server.url)
        page.fill("#vxf-prompt textarea", "a blue square moving left")
        generate_and_fetch(page, server.url, tmp_path / "first.mp4")
        for elem_id, value in (("vxf-steps", 100), ("vxf-frames", 81), ("vxf-width", 128), ("vxf-height", 128)):
            set_number(page, elem_id, value)  # slow steps (about 0.3 s here), so "within a step" is measurable
        page.click("#vxf-generate")
        page.wait_for_function("/denoising [3-9]/.test(document.querySelector('#vxf-progress').innerText)",
                               timeout=HANG_GUARD_S * 1000)  # fmt: skip
        clicked = time.time()
        page.click("#vxf-cancel")
        page.wait_for_selector('#vxf-progress [data-status="cancelled"]', timeout=HANG_GUARD_S * 1000)
        job = httpx.get(f"{server.url}/v1/generations", params={"limit": 1}, timeout=HANG_GUARD_S).json()["items"][0]
        assert job["status"] == "cancelled" and job["error"].startswith("cancelled after step")
        last = int(job["error"].split("after step ")[1].split()[0])
        step_s = (job["timings"]["finished_at"] - job["timings"]["started_at"]) / last  # an upper bound
        stop_s = job["timings"]["finished_at"] - clicked
        # the step in flight, plus the round trip (browser, the UI's server, the service): seconds on a loaded machine
        assert last < 100 and stop_s <= step_s + 10.0, (stop_s, step_s)
        shoot(page, "cancelled")
    finally:
        server.stop()
    again = start_ui(root)
    try:
        page = open_page(browser, again.url)
        page.wait_for_selector("#vxf-gallery video, #vxf-gallery img", timeout=HANG_GUARD_S * 1000)
        shoot(page, "gallery-after-restart")
        assert page.locator("#vxf-gallery .thumbnail-item, #vxf-gallery button.thumbnail-item").count() >= 1
    finally:
        again.stop()


def test_the_page_fits_a_phone_and_generates_there(browser, tmp_path):
    server = start_ui(tmp_path / "store")
    try:
        page = open_page(browser, server.url, width=390)
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= 392, f"the page is {overflow} px wide in a 390 px window"
        page.fill("#vxf-prompt textarea", "a green circle moving up")
        page.locator("#vxf-generate").scroll_into_view_if_needed()
        video = generate_and_fetch(page, server.url, tmp_path / "phone.mp4")
        assert evaluate_video(video, "a green circle moving up")["colour_ok"]
        shoot(page, "phone")
        started = time.monotonic()
        assert page.locator("#vxf-generate").is_visible() and time.monotonic() - started < 5
    finally:
        server.stop()


def test_the_page_drives_a_remote_service_and_offers_example_images(browser, tmp_path):
    """``--api-url``: the page runs no model; its job is the remote service's, listed by that API."""
    service = ServerProcess(tmp_path / "service", "--device", "cpu", port=free_port(), env=THREADS, cwd=REPO).start()
    page_server = start_ui(tmp_path / "unused", "--api-url", service.url, ready_path="/")
    try:
        page = open_page(browser, page_server.url)
        page.get_by_role("tab", name="i2v", exact=True).click()
        page.locator("#vxf-examples tr.tr-body").first.click()
        page.wait_for_selector("#vxf-i2v-image img")
        assert page.input_value("#vxf-prompt textarea")  # the example's caption came with its image
        video = generate_and_fetch(page, page_server.url, tmp_path / "remote.mp4")
        jobs = httpx.get(f"{service.url}/v1/generations", timeout=HANG_GUARD_S).json()["items"]
        assert [(job["status"], job["mode"]) for job in jobs] == [("done", "i2v")]
        assert evaluate_video(video, page.input_value("#vxf-prompt textarea"))["colour_ok"]
        assert not (tmp_path / "unused").exists()  # the page started no service of its own
    finally:
        page_server.stop()
        service.stop()


def test_the_animate_model_shows_its_settings_and_animates_the_uploaded_folder(browser, tmp_path):
    """The Animate tab's family settings (the preprocessing folder's files, refert_num, clip_len) show for the
    built-in Wan2.2-Animate model only; uploaded there, they make a video as the CLI's --src-root-path does."""
    sources = write_animate_sources(tmp_path / "process_results", 7, 32)
    server = start_ui(tmp_path / "store")
    try:
        page = open_page(browser, server.url)
        page.get_by_role("tab", name="animate", exact=True).click()
        controls = ["#vxf-animate-src-root-path", "#vxf-animate-refert-num", "#vxf-animate-clip-len"]
        assert not any(page.locator(c).is_visible() for c in controls)  # the default InP model serves no animate
        pick_model(page, "Wan2.2-Animate-Tiny-Random")
        page.get_by_role("tab", name="animate", exact=True).click()
        for control in controls:
            page.wait_for_selector(control, state="visible")
        assert "src_pose.mp4, src_face.mp4, src_ref.png" in page.inner_text(controls[0])
        assert not page.locator("#vxf-t2v-vace-context-scale").is_visible()  # t2v: a mode the model does not serve
        shoot(page, "animate")

        names = ("src_pose.mp4", "src_face.mp4", "src_ref.png")
        page.set_input_files(f"{controls[0]} input[type=file]", [str(sources / name) for name in names])
        for name in names:
            page.wait_for_selector(f"{controls[0]} :text('{name}')")
        page.fill(f"{controls[2]} :is(input, textarea)", "5")
        for elem_id, value in (("vxf-steps", 1), ("vxf-frames", 7), ("vxf-width", 32), ("vxf-height", 32)):
            set_number(page, elem_id, value)
        page.fill("#vxf-prompt textarea", "a person dancing")
        video = generate_and_fetch(page, server.url, tmp_path / "animate.mp4")
        assert frame_count_and_size(video) == (7, (32, 32))
        settings = page.inner_text("#vxf-settings")
        assert "animate" in settings and "Wan2.2-Animate-Tiny-Random" in settings and "src_root_path" in settings
        job = httpx.get(f"{server.url}/v1/generations", timeout=HANG_GUARD_S).json()["items"][0]
        assert (job["status"], job["mode"]) == ("done", "animate")
        sidecar = httpx.get(f"{server.url}/v1/generations/{job['id']}/settings", timeout=HANG_GUARD_S).json()
        assert (sidecar["clip_len"], sidecar["refert_num"]) == (5, 1)
    finally:
        server.stop()
