"""The web UI (Gradio): every family and mode from a browser, as jobs of the generation service.

The controls come from the tables, not from per-family code. There is one tab per mode of the
merged mode table, each holding the inputs that mode reads and the controls of the family settings
that read it (Wan2.2-Animate's preprocessing folder, shown only while a model whose family
declares them and that serves the mode is picked). Samplers, defaults, settings and the modes a model serves come from
``GET /v1/models``. Generate posts a job and follows it until it ends
(live progress with its stage; Cancel stops it at the next step), then shows the result, its
settings (the sidecar) and the gallery of past results, which is read from the job store and so
survives a restart.
"""

from __future__ import annotations

import html
import logging
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from ..families import INPUT_NAMES, Setting, families, merged_mode_table
from .client import ServiceClient, ServiceError

logger = logging.getLogger("videox_fun.ui")

GENERATE_BY, BY_REFERENCE = "Generate by", "Resize according to Reference"
POLL_S = 0.2
# How each input is shown: images as image uploads, the rest as video / file uploads.
IMAGE_INPUTS = ("image", "end_image", "ref_image")
# The modes whose reference pictures may be several (VACE's subjects in r2v / vace; an edit's pictures after the start
# image: Qwen-Image-Edit-2509 / 2511, FLUX.2): a multi-file upload, its files sent in order. The other modes that
# read ref_image take one (Fun V1.1 control's reference frame): an image upload. The model's own check refuses more
# pictures than it reads.
SEVERAL_PICTURES = {"ref_image": ("r2v", "vace", "edit")}
LABELS = {
    "image": "Start image",
    "end_image": "End image",
    "video": "Input video",
    "mask": "Mask (white = regenerate)",
    "control_video": "Control video (edges, depth, pose)",
    "ref_image": "Reference image",
    "camera": "Camera path file",
}
SEVERAL_LABELS = {"ref_image": "Reference images (one or more, in order)"}
EXAMPLE_CAPTIONS = ("a red circle moving right", "a blue square moving down", "a yellow triangle moving left")
CSS = """
.vxf-progress { border: 1px solid var(--border-color-primary); border-radius: 6px; height: 22px; position: relative;
  overflow: hidden; }
.vxf-progress > div { background: var(--color-accent); height: 100%; transition: width 0.2s; }
.vxf-progress > span { position: absolute; inset: 0; text-align: center; font-size: 13px; line-height: 22px; }
.vxf-error { color: var(--error-text-color, #b91c1c); }
"""


def progress_html(view: dict[str, Any] | None) -> str:
    """The progress bar of a job's view: its stage, step i of n, and queue position."""
    if view is None:
        return '<div class="vxf-progress" data-status="idle"><div style="width:0%"></div><span>idle</span></div>'
    status, stage, progress = view["status"], view["stage"], view["progress"]
    step, total = progress["step"], progress["total"]
    if status == "queued":
        label, share = f"queued (position {view['queue_position']})", 0.0
    elif status == "running" and stage == "denoising":
        label = f"denoising {step} of {total}" if total else "denoising"
        share = step / max(total, 1)
    elif status == "running":
        label, share = stage, 1.0 if stage in ("decoding", "writing") else 0.0
    else:
        label, share = status, 1.0 if status == "done" else step / max(total, 1)
    return (
        f'<div class="vxf-progress" data-status="{html.escape(status)}" data-stage="{html.escape(stage)}">'
        f'<div style="width:{100 * share:.0f}%"></div><span>{html.escape(label)}</span></div>'
    )


def settings_by_mode() -> dict[str, list[Setting]]:
    """Every family's settings that the service takes, by the modes that read them (one of each name per mode)."""
    from ..serve.settings import passed_on

    found: dict[str, dict[str, Setting]] = {}
    for family in families().values():
        for setting in filter(passed_on, family.settings):
            for mode in setting.modes or tuple(family.modes):
                found.setdefault(mode, {}).setdefault(setting.name, setting)
    return {mode: list(by_name.values()) for mode, by_name in found.items()}


def setting_control(setting: Setting, elem_id: str) -> gr.components.Component:
    """The control of one family setting, hidden until a model whose family declares it is picked: a multi-file
    upload for a folder (its files), a file upload, a dropdown of its choices, else a text box; left empty, the
    setting takes the model's default."""
    from ..serve.settings import json_type

    common = {"elem_id": elem_id, "visible": False}
    if setting.kind == "folder":
        label = f"{setting.name}: its files ({', '.join(setting.files)})" if setting.files else setting.name
        return gr.File(file_count="multiple", type="filepath", label=label, **common)
    if setting.kind == "file":
        return gr.File(type="filepath", label=setting.name, **common)
    described = {"label": setting.name, "info": setting.help, **common}
    if setting.choices is not None:
        return gr.Dropdown([str(choice) for choice in setting.choices], value=None, **described)
    # Text, numbers too: a number box shows 0 when empty, which would be sent; the service parses the text as the
    # setting's flag does.
    return gr.Textbox(placeholder=f"empty: the default ({json_type(setting)})", max_lines=1, **described)


def error_html(message: str) -> str:
    """An error line for the page (never a traceback)."""
    return f'<p class="vxf-error" role="alert">{html.escape(message)}</p>' if message else ""


class UI:
    """The Blocks of the UI and their handlers, over a :class:`ServiceClient`."""

    def __init__(self, client: ServiceClient, default_model: str | None = None, cache: Path | None = None) -> None:
        self.client = client
        self.default_model = default_model
        self.cache = cache or Path(tempfile.mkdtemp(prefix="videox-fun-ui-"))
        self.modes = merged_mode_table()
        self.settings = settings_by_mode()
        self.declared: dict[str, dict[str, dict[str, Any]]] = {}  # model name -> its family's settings by name

    # --- data from the service ---

    def model_choices(self) -> tuple[list[str], list[str], str | None]:
        """Model names, LoRA names and the default model, from the service."""
        listing = self.client.models()
        names = [m["name"] for m in listing["models"] if "error" not in m]
        default = self.default_model or listing.get("default_model") or (names[0] if names else None)
        return names, listing["loras"], default

    def model_info(self, name: str | None) -> dict[str, Any]:
        """The listing entry of a model (modes, samplers, defaults, its family's settings)."""
        for model in self.client.models()["models"]:
            if model["name"] == name:
                self.declared[model["name"]] = {entry["name"]: entry for entry in model.get("settings", [])}
                return model
        raise ServiceError(f"no model named {name!r}")

    def declared_settings(self, name: str | None) -> dict[str, dict[str, Any]]:
        """The settings of a model's family by name, as ``GET /v1/models`` lists them (remembered)."""
        if name not in self.declared:
            self.model_info(name)
        return self.declared[name or ""]

    def setting_keys(self) -> list[tuple[str, Setting]]:
        """(mode, setting) of every setting control, in tab order."""
        return [(mode, setting) for mode in self.modes for setting in self.settings.get(mode, [])]

    def setting_updates(self, info: dict[str, Any]) -> list[Any]:
        """Show the setting controls of the model's family in the tabs of the modes that read them and the model
        serves; hide the rest."""
        declared = self.declared_settings(info["name"])
        served = {mode["name"] for mode in info["modes"]}
        updates = []
        for mode, setting in self.setting_keys():
            entry = declared.get(setting.name)
            shown = entry is not None and mode in served and (not entry["modes"] or mode in entry["modes"])
            updates.append(gr.update(visible=shown))
        return updates

    # --- handlers ---

    def on_model(self, name: str | None) -> tuple:
        """A model was picked: its samplers and defaults fill the controls; the modes it serves are named."""
        try:
            info = self.model_info(name)
        except ServiceError as err:
            return (gr.update(),) * 7 + (error_html(str(err)),) + (gr.update(),) * len(self.setting_keys())
        d = info["defaults"]
        modes = ", ".join(m["name"] for m in info["modes"])
        note = f"{info['family']} · {info['variant']} · serves {modes}"
        return (
            gr.update(choices=info["samplers"], value=info["samplers"][0]),
            gr.update(value=d["steps"]),
            gr.update(value=d["guidance"]),
            gr.update(value=d["width"]),
            gr.update(value=d["height"]),
            gr.update(value=d["frames"], maximum=max(info.get("max_frames") or 161, d["frames"])),
            gr.update(value=d["fps"]),
            f"<small>{html.escape(note)}</small>",
            *self.setting_updates(info),
        )

    def refresh_models(self) -> tuple:
        """Reread the model folders."""
        try:
            names, loras, default = self.model_choices()
        except ServiceError as err:
            return gr.update(), gr.update(), gr.update(), gr.update(), error_html(str(err))
        return (
            gr.update(choices=names, value=default),
            gr.update(choices=loras),
            gr.update(choices=loras),
            gr.update(choices=["none", *loras]),
            "",
        )

    def gallery(self) -> list[tuple[str, str]]:
        """The newest finished results, from the job store (so they survive a restart)."""
        items = []
        try:
            for view in self.client.jobs(limit=12, status="done"):
                path = self.client.download(view["id"], self.cache)
                items.append((str(path), f"{view['mode']} · {view['model']}"))
        except ServiceError as err:
            logger.warning("gallery: %s", err)
        return items

    def generate(self, mode: str, *values: Any) -> Iterator[tuple]:
        """Post the job, follow it to its end, then show the result: yields (progress, video, image, file,
        settings, error, job id, gallery) as it goes."""
        job_id = None
        try:
            spec, files = self.job_spec(mode, values)
            view = self.client.submit(spec, files)
            job_id = view["id"]
            while view["status"] in ("queued", "running"):
                yield progress_html(view), None, None, None, None, "", job_id, gr.update()
                time.sleep(POLL_S)
                view = self.client.job(job_id)
            if view["status"] != "done":
                message = view["error"] or view["status"]
                yield progress_html(view), None, None, None, None, error_html(message), None, gr.update()
                return
            path = self.client.download(job_id, self.cache)
            video, image = (None, str(path)) if path.suffix == ".png" else (str(path), None)
            settings = self.client.settings(job_id)
            yield progress_html(view), video, image, str(path), settings, "", None, self.gallery()
        except ServiceError as err:
            yield progress_html(None), None, None, None, None, error_html(str(err)), None, gr.update()
        except Exception as err:  # the page shows one line, never a traceback
            logger.exception("generate failed")
            yield (
                progress_html(None),
                None,
                None,
                None,
                None,
                error_html(f"{type(err).__name__}: {err}"),
                job_id,
                gr.update(),
            )

    def cancel(self, job_id: str | None) -> str:
        """Cancel the job the page is following (it stops at its next step)."""
        if not job_id:
            return error_html("no job is running")
        try:
            self.client.cancel(job_id)
        except ServiceError as err:
            return error_html(str(err))
        return ""

    # --- request building ---

    def job_spec(self, mode: str, values: tuple) -> tuple[dict[str, Any], dict[str, Path | list[Path]]]:
        """The API job of the page's values (in :meth:`value_names` order) and its upload files (several reference
        pictures as a list, sent as parts in its order)."""
        named = dict(zip(self.value_names(), values, strict=True))
        spec: dict[str, Any] = {
            "prompt": named["prompt"] or "",
            "negative_prompt": named["negative_prompt"] or None,
            "model": named["model"],
            "mode": mode,
            "sampler": named["sampler"] or None,
            "steps": int(named["steps"]),
            "guidance": float(named["guidance"]),
            "seed": int(named["seed"]),
            "fps": int(named["fps"]),
            "frames": 1 if named["is_image"] else int(named["frames"]),
            "cfg_skip_ratio": float(named["cfg_skip_ratio"]),
            "cache": named["cache"],
            "gpu_memory_mode": named["gpu_memory_mode"] or None,
            "compile": bool(named["compile"]) or None,
        }
        if named["cache"] != "none":
            spec["cache_threshold"] = float(named["cache_threshold"])
            spec["num_skip_start_steps"] = int(named["num_skip_start_steps"])
        if named["riflex_k"]:
            spec["riflex_k"] = int(named["riflex_k"])
        spec["loras"] = [{"name": name, "weight": float(named["lora_weight"])} for name in named["loras"] or []] + [
            {"name": name, "weight": float(named["lora_high_weight"]), "expert": "high"}
            for name in named["loras_high"] or []
        ]
        if named["base_model"] and named["base_model"] != "none":
            spec["base_model"] = named["base_model"]
        files: dict[str, Any] = {}
        for name in self.modes[mode].reads:
            value = named.get(f"{mode}.{name}")
            if name == "camera" and named.get(f"{mode}.camera_preset") and not value:
                spec["camera"] = named[f"{mode}.camera_preset"]
            elif isinstance(value, list) and value:  # several pictures, in the order the upload holds them
                files[name] = [Path(path) for path in value]
            elif value:
                files[name] = Path(value)
        extra, setting_files = self.setting_values(mode, named)
        if extra:
            spec["extra"] = extra
        files.update(setting_files)
        if "video" in self.modes[mode].reads:
            spec["strength"] = float(named[f"{mode}.strength"])
        if named["size_by"] == BY_REFERENCE:
            reference = next((files[n] for n in ("image", "video", "control_video") if n in files), None)
            if reference is None:
                raise ServiceError(f"{BY_REFERENCE!r} needs a start image, input video or control video")
            from ..serve.jobs import size_from_reference

            spec["height"], spec["width"] = size_from_reference(reference, int(named["base_resolution"]))
        else:
            spec["height"], spec["width"] = int(named["height"]), int(named["width"])
        return spec, files

    def setting_values(self, mode: str, named: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The family settings ``mode``'s tab holds for the picked model: values for ``extra``, and the uploads of
        file and folder settings. Empty controls and those of settings the model's family lacks are left out."""
        given = {
            setting: named[f"{mode}.{setting.name}"]
            for setting in self.settings.get(mode, [])
            if named.get(f"{mode}.{setting.name}") not in (None, "", [])
        }
        declared = self.declared_settings(named["model"]) if given else {}
        extra: dict[str, Any] = {}
        files: dict[str, Any] = {}
        for setting, value in given.items():
            if setting.name not in declared:
                continue
            if setting.kind == "folder":
                files[setting.name] = [Path(path) for path in value]
            elif setting.kind == "file":
                files[setting.name] = Path(value)
            else:
                extra[setting.name] = value
        return extra, files

    def value_names(self) -> list[str]:
        """The names of the values the Generate handler receives, in order."""
        common = ["prompt", "negative_prompt", "model", "loras", "lora_weight", "loras_high", "lora_high_weight",
                  "base_model", "sampler", "steps",
                  "guidance", "seed", "size_by", "width", "height", "base_resolution", "frames", "fps", "is_image",
                  "cache", "cache_threshold", "num_skip_start_steps", "cfg_skip_ratio", "riflex_k",
                  "gpu_memory_mode", "compile"]  # fmt: skip
        per_mode = []
        for mode, table in self.modes.items():
            per_mode += [f"{mode}.{name}" for name in table.reads]
            if "camera" in table.reads:
                per_mode.append(f"{mode}.camera_preset")
            if "video" in table.reads:
                per_mode.append(f"{mode}.strength")
        return common + per_mode + [f"{mode}.{setting.name}" for mode, setting in self.setting_keys()]

    # --- layout ---

    def build(self) -> gr.Blocks:
        """The page."""
        from ..io.camera import TRAJECTORIES
        from ..runtime.offload import MEMORY_MODES

        components: dict[str, gr.components.Component] = {}
        with gr.Blocks(title="videox-fun") as page:
            gr.Markdown("# videox-fun\nText, image and video to video, as jobs of the generation service.")
            error = gr.HTML(elem_id="vxf-error")
            with gr.Row(equal_height=True):
                # Choices come at page load: the service may start after the page is built (one process).
                components["model"] = gr.Dropdown([], label="Model", elem_id="vxf-model", scale=4)
                refresh = gr.Button("Refresh", elem_id="vxf-refresh", scale=1, min_width=80)
            model_note = gr.HTML()
            with gr.Row():
                components["base_model"] = gr.Dropdown(["none"], value="none", label="Base model weights")
                components["loras"] = gr.Dropdown([], multiselect=True, label="LoRAs")
                components["lora_weight"] = gr.Slider(0, 2, value=0.55, step=0.05, label="LoRA weight")
            with gr.Accordion("Wan2.2 A14B: LoRAs of the high-noise expert", open=False), gr.Row():
                components["loras_high"] = gr.Dropdown([], multiselect=True, label="High-noise expert's LoRAs")
                components["lora_high_weight"] = gr.Slider(0, 2, value=0.55, step=0.05, label="Their weight")
            components["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="vxf-prompt")
            components["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=1)
            mode = gr.State("t2v")
            with gr.Tabs(elem_id="vxf-modes"):
                for name, table in self.modes.items():
                    with gr.Tab(name, id=name, elem_id=f"vxf-tab-{name}") as tab:
                        gr.Markdown(table.description.capitalize())
                        self._mode_inputs(name, table.reads, components, TRAJECTORIES)
                        self._mode_settings(name, components)
                    tab.select(lambda n=name: n, None, mode)
            with gr.Row():
                components["sampler"] = gr.Dropdown([], label="Sampler", allow_custom_value=True)
                components["steps"] = gr.Slider(1, 100, value=20, step=1, label="Steps", elem_id="vxf-steps")
                components["guidance"] = gr.Slider(0, 20, value=6, step=0.5, label="Guidance (CFG)")
            with gr.Row(equal_height=True):
                components["seed"] = gr.Number(43, precision=0, label="Seed", elem_id="vxf-seed")
                dice = gr.Button("Random seed", elem_id="vxf-dice", min_width=60, scale=0)
            with gr.Row():
                components["size_by"] = gr.Radio([GENERATE_BY, BY_REFERENCE], value=GENERATE_BY, label="Size")
                components["width"] = gr.Slider(16, 1344, value=832, step=16, label="Width", elem_id="vxf-width")
                components["height"] = gr.Slider(16, 1344, value=480, step=16, label="Height", elem_id="vxf-height")
                components["base_resolution"] = gr.Slider(256, 1024, value=512, step=64, label="Base resolution")
            with gr.Row():
                components["frames"] = gr.Slider(1, 161, value=81, step=1, label="Frames", elem_id="vxf-frames")
                components["fps"] = gr.Slider(1, 60, value=16, step=1, label="FPS")
                components["is_image"] = gr.Checkbox(False, label="Image (one frame)")
            with gr.Accordion("Speed and memory", open=False):
                with gr.Row():
                    components["cache"] = gr.Dropdown(["none", "teacache", "first-block"], value="none",
                                                      label="Step cache")  # fmt: skip
                    components["cache_threshold"] = gr.Slider(0, 0.5, value=0.1, step=0.01, label="Cache threshold")
                    components["num_skip_start_steps"] = gr.Slider(0, 20, value=5, step=1, label="Skip start steps")
                with gr.Row():
                    components["cfg_skip_ratio"] = gr.Slider(0, 0.5, value=0, step=0.05, label="CFG skip ratio")
                    components["riflex_k"] = gr.Number(0, precision=0, label="RIFLEx k (0 = off)")
                    components["gpu_memory_mode"] = gr.Dropdown(["", *MEMORY_MODES], value="",
                                                                label="Memory mode (empty: the server's)")  # fmt: skip
                    components["compile"] = gr.Checkbox(False, label="torch.compile")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="vxf-generate")
                cancel = gr.Button("Cancel", variant="stop", elem_id="vxf-cancel")
            progress = gr.HTML(progress_html(None), elem_id="vxf-progress")
            job_id = gr.State(None)
            with gr.Row():
                video = gr.Video(label="Result", elem_id="vxf-video", interactive=False, height=320)
                image = gr.Image(label="Result image", elem_id="vxf-image", interactive=False, height=320)
            download = gr.File(label="Download", elem_id="vxf-download", interactive=False)
            settings = gr.JSON(label="Settings used", elem_id="vxf-settings")
            gallery = gr.Gallery(
                label="Past results", elem_id="vxf-gallery", columns=6, height=260, object_fit="contain"
            )

            values = [components[name] for name in self.value_names()]
            generate.click(self.generate, [mode, *values],
                           [progress, video, image, download, settings, error, job_id, gallery])  # fmt: skip
            cancel.click(self.cancel, job_id, error)
            dice.click(lambda: random.randrange(2**31), None, components["seed"])
            defaults = [components[n] for n in ("sampler", "steps", "guidance", "width", "height", "frames", "fps")]
            settings_shown = [components[f"{mode}.{setting.name}"] for mode, setting in self.setting_keys()]
            defaults += [model_note, *settings_shown]  # what a model's listing fills in
            components["model"].change(self.on_model, components["model"], defaults)
            model_lists = [components["model"], components["loras"], components["loras_high"], components["base_model"],
                           error]  # fmt: skip
            refresh.click(self.refresh_models, None, model_lists)
            page.load(self.refresh_models, None, model_lists).then(self.on_model, components["model"], defaults)
            page.load(self.gallery, None, gallery)
        return page

    def _mode_inputs(self, mode: str, reads: tuple[str, ...], components: dict, trajectories: dict) -> None:
        """The input components of one mode's tab (the start-image tab offers example images)."""
        examples: list = []
        with gr.Row():
            for name in reads:
                key = f"{mode}.{name}"
                label = LABELS[name]
                elem = f"vxf-{mode}-{name.replace('_', '-')}"
                if mode in SEVERAL_PICTURES.get(name, ()):
                    components[key] = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                                              label=SEVERAL_LABELS[name], elem_id=elem)  # fmt: skip
                elif name in IMAGE_INPUTS:
                    components[key] = gr.Image(type="filepath", label=label, elem_id=elem)
                    if name == "image" and mode == "i2v":
                        examples.append(components[key])
                elif name == "camera":
                    components[f"{mode}.camera_preset"] = gr.Dropdown(sorted(trajectories), value="pan_left",
                                                                      label="Camera path")  # fmt: skip
                    components[key] = gr.File(label=label, elem_id=elem, type="filepath")
                else:
                    components[key] = gr.Video(label=label, elem_id=elem, sources=["upload"])
        if "video" in reads:
            components[f"{mode}.strength"] = gr.Slider(0.1, 1.0, value=0.7, step=0.05, label="Denoise strength")
        if examples:
            gr.Examples(self.example_images(), [examples[0], components["prompt"]], label="Example start images",
                        elem_id="vxf-examples")  # fmt: skip

    def _mode_settings(self, mode: str, components: dict) -> None:
        """The controls of the family settings that ``mode`` reads (each hidden until its family's model is picked)."""
        with gr.Row():
            for setting in self.settings.get(mode, []):
                elem = f"vxf-{mode}-{setting.name.replace('_', '-')}"
                components[f"{mode}.{setting.name}"] = setting_control(setting, elem)

    def example_images(self) -> list[list[str]]:
        """Start frames of toy-world clips with their captions (rendered here: nothing is downloaded)."""
        from ..io.video import write_video
        from ..toyworld.render import render_clip

        rows = []
        for index, text in enumerate(EXAMPLE_CAPTIONS):
            clip = render_clip(text, seed=index)
            path = write_video(clip.frames[:1], self.cache / "examples" / f"{index}.png")
            rows.append([str(path), clip.caption])
        return rows


assert set(LABELS) == set(INPUT_NAMES), "every input of the mode tables needs a label"
