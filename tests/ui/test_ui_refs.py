"""The web UI's reference pictures, without a browser: the tabs of the modes that read several (r2v, vace, edit) hold
a multi-file upload, the others one image; the job the page builds from two pictures reaches a real server as two
``ref_image`` parts in their order (the stored files), and the server's edit equals the programmatic entry's."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from helpers import HANG_GUARD_S, read_png, write_png
from qwenimage_helpers import random_image

from videox_fun.api import GenerationRequest, RuntimeOptions, load_pipeline
from videox_fun.registry import CACHE_ENV
from videox_fun.serve.process import ServerProcess, free_port, wait_finished
from videox_fun.serve.store import JobStore, database_url
from videox_fun.ui.app import UI
from videox_fun.ui.client import ServiceClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EDIT_MODEL = "Qwen-Image-Edit-2509-Tiny-Random"


def page_values(ui: UI, mode: str, **given: object) -> tuple:
    """The Generate handler's values as an untouched page sends them (every input empty), with ``given`` set."""
    common = {"prompt": "put them together", "negative_prompt": "", "model": EDIT_MODEL, "loras": [],
              "lora_weight": 0.55, "loras_high": [], "lora_high_weight": 0.55, "base_model": "none", "sampler": "",
              "steps": 2, "guidance": 4.0, "seed": 7, "size_by": "Generate by", "width": 64, "height": 64,
              "base_resolution": 512, "frames": 1, "fps": 16, "is_image": True, "cache": "none",
              "cache_threshold": 0.1, "num_skip_start_steps": 5, "cfg_skip_ratio": 0.0, "riflex_k": 0,
              "gpu_memory_mode": "", "compile": False}  # fmt: skip
    named = {name: common.get(name) for name in ui.value_names()} | given
    return tuple(named[name] for name in ui.value_names())


def test_modes_that_read_several_pictures_get_a_multi_file_upload(tmp_path):
    page = UI(ServiceClient("http://127.0.0.1:9"), cache=tmp_path).build()
    shown = {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}
    for mode in ("r2v", "vace", "edit"):
        upload = shown[f"vxf-{mode}-ref-image"]
        assert isinstance(upload, gr.File) and upload.file_count == "multiple", mode
    assert isinstance(shown["vxf-control-ref-image"], gr.Image)  # Fun V1.1 control: one reference frame
    assert isinstance(shown["vxf-edit-image"], gr.Image)


def test_two_pictures_from_the_edit_tab_reach_the_server_in_order(tmp_path, builtin_cache_dir, monkeypatch):
    start = write_png(tmp_path / "start.png", random_image(64, seed=1))
    wide = write_png(tmp_path / "wide.png", random_image((32, 96), seed=2))
    tall = write_png(tmp_path / "tall.png", random_image((96, 32), seed=3))
    server = ServerProcess(tmp_path / "store", "--device", "cpu", port=free_port(), cwd=REPO,
                           env={"OMP_NUM_THREADS": "1", CACHE_ENV: str(builtin_cache_dir)}).start()  # fmt: skip
    try:
        ui = UI(ServiceClient(server.url), cache=tmp_path / "ui")
        values = page_values(ui, "edit", **{"edit.image": str(start), "edit.ref_image": [str(wide), str(tall)]})
        spec, files = ui.job_spec("edit", values)
        assert files == {"image": start, "ref_image": [wide, tall]} and "ref_image" not in spec
        job_id = ui.client.submit(spec, files)["id"]
        view = wait_finished(httpx.Client(base_url=server.url, timeout=HANG_GUARD_S), [job_id], timeout_s=HANG_GUARD_S)[
            job_id
        ]
        assert view["status"] == "done", view
        store = JobStore(database_url(None, server.root))
        stored = store.get(job_id).spec["inputs"]["ref_image"]
        store.close()
        assert [Path(path).read_bytes() for path in stored] == [wide.read_bytes(), tall.read_bytes()]
        served = read_png(ui.client.download(job_id, tmp_path / "results")).astype(np.int64)
    finally:
        server.stop()
    monkeypatch.setenv(CACHE_ENV, str(builtin_cache_dir))
    request = GenerationRequest(prompt="put them together", mode="edit", image=str(start),
                                ref_image=[str(wide), str(tall)], height=64, width=64, num_frames=1, steps=2,
                                guidance_scale=4.0, seed=7, fps=16)  # fmt: skip
    pipeline = load_pipeline(EDIT_MODEL, RuntimeOptions(device="cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server runs (one torch thread): another count rounds differently
    try:
        ours = pipeline.generate(request, progress=False).frames[0].numpy().astype(np.int64)  # (H, W, 3)
    finally:
        torch.set_num_threads(threads)
        pipeline.close()
    diff = int(np.abs(served - ours).max())
    print(f"edit from the UI's request, {EDIT_MODEL}: max abs diff vs the API (uint8 PNG) {diff}")
    assert served.shape == ours.shape and diff == 0
