"""VideoX-Fun's two API endpoints, in its request and answer shapes, on our job queue.

``POST /videox_fun/update_diffusion_transformer`` switches the server's default model;
``POST /videox_fun/infer_forward`` queues a job from VideoX-Fun's fields, waits for it and answers
``{message, save_sample_path, base64_encoding}``, so clients written for VideoX-Fun work unchanged.
Differences, on purpose: fields a client leaves out take the model's defaults (VideoX-Fun's are
fixed numbers for a 1.3B model), and a refused request answers 4xx (VideoX-Fun answers 200) with
the same body shape and the error in ``message``.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .jobs import GenerationIn, LoraIn, RefImages, RequestError, size_from_reference

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .app import Service

RESIZE_BY_REFERENCE = "Resize according to Reference"
NONE = ("", "none", None)


class UpdateTransformerIn(BaseModel):
    """VideoX-Fun's ``update_diffusion_transformer`` body."""

    model_config = ConfigDict(extra="ignore")
    diffusion_transformer_path: str = Field(min_length=1, max_length=4096)


class InferForwardIn(BaseModel):
    """VideoX-Fun's ``infer_forward`` body: every field optional, unknown ones ignored (as it does)."""

    model_config = ConfigDict(extra="ignore")

    base_model_path: str | None = "none"
    base_model_2_path: str | None = "none"
    lora_model_path: str | None = "none"
    lora_model_2_path: str | None = "none"
    lora_alpha_slider: float = Field(0.55, allow_inf_nan=False, ge=-100, le=100)
    prompt_textbox: str = Field("", max_length=20_000)
    negative_prompt_textbox: str | None = Field(None, max_length=20_000)
    sampler_dropdown: str | None = None
    sample_step_slider: int | None = Field(None, ge=1, le=1_000)
    resize_method: str = "Generate by"
    width_slider: int | None = Field(None, ge=16, le=16_384)
    height_slider: int | None = Field(None, ge=16, le=16_384)
    base_resolution: int = Field(512, ge=64, le=4096)
    is_image: bool = False
    generation_method: str = "Video Generation"
    length_slider: int | None = Field(None, ge=1, le=100_000)
    overlap_video_length: int = Field(4, ge=0, le=100_000)
    partial_video_length: int = Field(72, ge=2, le=100_000)
    cfg_scale_slider: float | None = Field(None, allow_inf_nan=False, ge=0, le=100)
    start_image: str | None = None
    end_image: str | None = None
    validation_video: str | None = None
    validation_video_mask: str | None = None
    control_video: str | None = None
    ref_image: RefImages = None  # one picture, or (beyond VideoX-Fun) a list of them in order
    denoise_strength: float = Field(0.70, allow_inf_nan=False, gt=0, le=1)
    seed_textbox: int | str = 43
    enable_teacache: bool = False
    teacache_threshold: float = Field(0.10, allow_inf_nan=False, ge=0, le=100)
    num_skip_start_steps: int = Field(1, ge=0, le=1_000)
    teacache_offload: bool = False
    cfg_skip_ratio: float = Field(0.0, allow_inf_nan=False, ge=0, le=1)
    enable_riflex: bool = False
    riflex_k: int = Field(6, ge=1, le=64)
    fps: int | None = Field(None, ge=1, le=240)


def seed_of(value: int | str) -> int:
    """VideoX-Fun's seed textbox: a number, -1 for a random one."""
    try:
        seed = int(value)
    except ValueError:
        raise RequestError("seed_textbox", f"seed_textbox must be a whole number, got {value!r}") from None
    return secrets.randbelow(2**31) if seed == -1 else seed


def loras_of(fields: InferForwardIn) -> list[LoraIn]:
    """The LoRA fields as LoRAs: the first for the (low-noise) transformer, the ``_2`` one for the other expert."""
    loras = []
    if fields.lora_model_path not in NONE:
        loras.append(LoraIn(name=Path(fields.lora_model_path).name, weight=fields.lora_alpha_slider))
    if fields.lora_model_2_path not in NONE:
        loras.append(LoraIn(name=Path(fields.lora_model_2_path).name, weight=fields.lora_alpha_slider, expert="high"))
    return loras


def reference_size(fields: InferForwardIn, inputs: dict[str, str]) -> tuple[int, int]:
    """The size "Resize according to Reference" picks from the start image (else the video, else the control)."""
    for name in ("image", "video", "control_video"):
        if name in inputs:
            return size_from_reference(inputs[name], fields.base_resolution)
    raise RequestError(
        "resize_method", f"{RESIZE_BY_REFERENCE!r} needs a start_image, validation_video or control_video"
    )


def generation_of(fields: InferForwardIn, service: Service) -> GenerationIn:
    """Our job for VideoX-Fun's fields (sizes by reference are settled after the inputs are stored)."""
    if fields.base_model_2_path not in NONE:
        raise RequestError("base_model_2_path", "base_model_2_path (a second expert's base weights) is not supported")
    image = fields.is_image or fields.generation_method == "Image Generation"
    long = fields.generation_method == "Long Video Generation"
    sampler = fields.sampler_dropdown
    recognised = service.catalog.recognise(service.catalog.model_folder(None))
    if (
        sampler is not None
        and sampler not in recognised.family.samplers
        and "sampler_dropdown" not in fields.model_fields_set
    ):
        sampler = None
    teacache = fields.enable_teacache
    return GenerationIn(
        prompt=fields.prompt_textbox or " ",
        negative_prompt=fields.negative_prompt_textbox,
        model=service.catalog.default_model,
        loras=loras_of(fields),
        base_model=Path(fields.base_model_path).name if fields.base_model_path not in NONE else None,
        image=fields.start_image or None,
        end_image=fields.end_image or None,
        video=fields.validation_video or None,
        mask=fields.validation_video_mask or None,
        control_video=fields.control_video or None,
        ref_image=fields.ref_image or None,
        height=fields.height_slider,
        width=fields.width_slider,
        frames=1 if image else fields.length_slider,
        fps=fields.fps,
        steps=fields.sample_step_slider,
        guidance=fields.cfg_scale_slider,
        sampler=sampler,
        seed=seed_of(fields.seed_textbox),
        strength=fields.denoise_strength,
        partial_video_length=fields.partial_video_length if long else None,
        overlap_video_length=fields.overlap_video_length,
        cache="teacache" if teacache else "none",
        cache_threshold=fields.teacache_threshold if teacache else None,
        num_skip_start_steps=fields.num_skip_start_steps if teacache else None,
        cache_offload_residuals=fields.teacache_offload and teacache,
        cfg_skip_ratio=fields.cfg_skip_ratio,
        riflex_k=fields.riflex_k if fields.enable_riflex else None,
    )


def failure(message: str, status: int) -> JSONResponse:
    """VideoX-Fun's answer shape for an error."""
    body = {"message": f"Error. error information is {message}", "save_sample_path": "", "base64_encoding": ""}
    return JSONResponse(body, status_code=status)


def validation_message(err: ValidationError | RequestValidationError) -> str:
    """One line naming each refused field."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in err.errors())


async def read_body(request: Request, kind: type[BaseModel]) -> Any:
    """The JSON body as ``kind``."""
    from .app import strict_json

    try:
        data = strict_json(await request.body())
    except ValueError as err:
        raise RequestError("body", f"the body is not valid JSON: {err}") from None
    return kind.model_validate(data)


def json_body(kind: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its JSON itself (to answer in VideoX-Fun's shape)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": kind.model_json_schema()}}}}


def add_videox_fun_routes(app: FastAPI, service: Service, poll_s: float = 0.05) -> None:
    """Mount VideoX-Fun's endpoints on ``app``."""

    @app.post(
        "/videox_fun/update_diffusion_transformer", tags=["VideoX-Fun"], openapi_extra=json_body(UpdateTransformerIn)
    )
    async def update_diffusion_transformer(request: Request) -> JSONResponse:
        """Switch the model that later ``infer_forward`` calls use (a folder under models/Diffusion_Transformer)."""
        try:
            fields = await read_body(request, UpdateTransformerIn)
            name = model_name_of(fields.diffusion_transformer_path, service)
            service.catalog.recognise(service.catalog.model_folder(name, "diffusion_transformer_path"))
        except ValidationError as err:
            return failure(validation_message(err), 422)
        except RequestError as err:
            return failure(str(err), err.status)
        except (ValueError, OSError) as err:
            return failure(str(err), 422)
        service.catalog.default_model = name
        return JSONResponse({"message": "Success"})

    @app.post("/videox_fun/infer_forward", tags=["VideoX-Fun"], openapi_extra=json_body(InferForwardIn))
    async def infer_forward(request: Request) -> JSONResponse:
        """Queue a job from VideoX-Fun's fields, wait for it, and answer with the file and its base64."""
        try:
            fields = await read_body(request, InferForwardIn)
            spec = generation_of(fields, service)
            if fields.resize_method == RESIZE_BY_REFERENCE:
                spec = await run_in_threadpool(sized_by_reference, fields, spec, service)
            job = await run_in_threadpool(service.submit, spec, [])
        except (ValidationError, RequestValidationError) as err:
            return failure(validation_message(err), 422)
        except RequestError as err:
            return failure(str(err), err.status)
        while not job.finished:
            await asyncio.sleep(poll_s)
            job = await run_in_threadpool(service.store.get, job.id)
        if job.status != "done" or not job.result:
            return failure(job.error or job.status, 500 if job.status == "failed" else 409)
        data = await run_in_threadpool(Path(job.result).read_bytes)
        body = {
            "message": "Success",
            "save_sample_path": job.result,
            "base64_encoding": base64.b64encode(data).decode(),
        }
        return JSONResponse(body)


def sized_by_reference(fields: InferForwardIn, spec: GenerationIn, service: Service) -> GenerationIn:
    """``spec`` with the height and width VideoX-Fun's "Resize according to Reference" picks."""
    import tempfile

    from .jobs import store_inputs

    with tempfile.TemporaryDirectory(dir=service.config.root) as scratch:
        inputs = store_inputs(spec, [], Path(scratch), service.config.limits)
        height, width = reference_size(fields, inputs)
    return spec.model_copy(update={"height": height, "width": width})


def model_name_of(path: str, service: Service) -> str:
    """The model name of VideoX-Fun's ``diffusion_transformer_path`` (``models/Diffusion_Transformer/<name>``
    or a bare name); a path that resolves elsewhere than the model folder is refused."""
    candidate = Path(path)
    name = candidate.name
    if len(candidate.parts) > 1:
        inside = service.catalog.model_dir / name
        if not (candidate.exists() and inside.exists() and candidate.resolve() == inside.resolve()):
            raise RequestError(
                "diffusion_transformer_path",
                f"diffusion_transformer_path {path!r} is not a folder of {service.catalog.model_dir}",
                status=403,
            )
    return name
