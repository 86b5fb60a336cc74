"""The HTTP face of the service: FastAPI routes over the job store, and the workers' threads.

``POST /v1/generations`` checks a job completely (fields, model, mode, inputs, limits), stores its
inputs and its row, and answers 202 with its id; workers pick it up from the store. Everything a
client sees afterwards (status, progress, events, the result) is read from the store, so any
server on the same database answers for any job.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import shutil
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError

from ..api import RuntimeOptions
from ..families import INPUT_NAMES
from .jobs import LISTED_INPUTS, Catalog, GenerationIn, Limits, RequestError, Upload, check_job, store_inputs
from .settings import describe, split_uploads, store_settings
from .store import DONE, STATUSES, Job, JobStore, new_job_id
from .worker import Worker

logger = logging.getLogger("videox_fun.serve")

OPEN_PATHS = ("/healthz",)  # answered without the API key (load balancers probe it)


@dataclass
class ServiceConfig:
    """Everything a server is started with (``videox-fun serve``'s flags)."""

    root: Path = Path("samples/api")  # jobs.db (SQLite), inputs/, results/
    db: str | None = None
    models: Path = Path("models")
    default_model: str | None = None
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    devices: tuple[str, ...] = ()  # one worker each; () = every CUDA device, else the CPU
    workers: bool = True  # False: accept and answer only (another server runs the jobs)
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    max_attempts: int = 3
    lease_s: float = 60.0
    name: str = "videox-fun"  # this server's worker names start with it (restart recovery finds them)


class Service:
    """The store, the catalog and the workers of one server."""

    def __init__(self, config: ServiceConfig, runtime: Any = None) -> None:
        from .store import database_url

        self.config = config
        config.root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(database_url(config.db, config.root), config.max_attempts, config.lease_s)
        self.catalog = Catalog(config.models, config.default_model)
        self.results = config.root / "results"
        self.inputs = config.root / "inputs"
        self.results.mkdir(exist_ok=True)
        self.stop = threading.Event()
        self.workers = [
            Worker(
                self.store,
                self.catalog,
                _on_device(config.options, device),
                self.results,
                f"{config.name}/{device}",
                runtime,
            )
            for device in (worker_devices(config) if config.workers else ())
        ]
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        """Put back this server's jobs that a previous run left running, then start the workers."""
        for job_id in self.store.recover([worker.name for worker in self.workers]):
            logger.warning("job %s was running when the server stopped: put back (or failed after retries)", job_id)
        for worker in self.workers:
            thread = threading.Thread(target=worker.run_forever, args=(self.stop,), name=worker.name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def shutdown(self, grace_s: float = 2.0) -> None:
        """Stop the workers; a job still running after ``grace_s`` goes back to the queue. Close the store."""
        self.stop.set()
        for worker in self.workers:
            worker.wake.set()
        deadline = time.monotonic() + grace_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # The threads still inside a job die with the process; their claims are taken back now, so the
        # jobs run again on the next start (or on another server), and the old claims can no longer finish.
        self.store.recover([worker.name for worker in self.workers if worker.current is not None])
        self.store.close()

    def wake_workers(self) -> None:
        """Tell idle workers a job was queued."""
        for worker in self.workers:
            worker.wake.set()

    def submit(self, spec: GenerationIn, uploads: list[Upload]) -> Job:
        """Check a job fully, store its inputs and its row (committed), and return it (status queued)."""
        job_id = new_job_id()
        folder = self.inputs / job_id
        limits = self.config.limits
        try:
            family = self.catalog.recognise(self.catalog.model_folder(spec.model)).family
            media, setting_files = split_uploads(uploads, family)
            inputs = store_inputs(spec, media, folder, limits)
            extra = store_settings(spec.extra, setting_files, folder, limits, family)
            recognised, mode = check_job(spec, inputs, self.catalog, self.config.options, limits, extra)
            record = {
                # The settings' files are stored: the record keeps their paths (in "extra"), not their bytes.
                "generation": spec.model_dump(mode="json", exclude={"extra"}),
                "inputs": inputs,
                "extra": extra,
                "model": recognised.folder.name,
                "family": recognised.family.name,
                "mode": mode,
            }
            job = self.store.submit(record, job_id)
        except RequestError as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise without_folder(err, folder) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.wake_workers()
        return job

    def view(self, job: Job) -> dict[str, Any]:
        """The API's picture of a job."""
        now = time.time()
        timings = {
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "queued_s": round((job.started_at or (job.finished_at or now)) - job.created_at, 3),
            "running_s": round((job.finished_at or now) - job.started_at, 3) if job.started_at else None,
        }
        return {
            "id": job.id,
            "status": job.status,
            "stage": job.stage,
            "progress": {"step": job.step, "total": job.total_steps},
            "queue_position": self.store.queue_position(job),
            "attempts": job.attempts,
            "error": job.error,
            "model": job.spec.get("model"),
            "mode": job.spec.get("mode"),
            "timings": timings,
            "result_url": f"/v1/generations/{job.id}/result" if job.status == DONE else None,
        }

    def models(self) -> dict[str, Any]:
        """Every model name with its family, variant and modes; every LoRA name."""
        models = []
        for name in self.catalog.model_names():
            try:
                recognised = self.catalog.recognise(self.catalog.model_folder(name))
            except (ValueError, OSError) as err:
                models.append({"name": name, "error": str(err)})
                continue
            modes = {mode: recognised.family.modes[mode] for mode in recognised.modes}
            models.append(
                {
                    "name": name,
                    "model": recognised.folder.name,
                    "family": recognised.family.name,
                    "variant": recognised.variant,
                    "modes": [
                        {"name": m.name, "needs": list(m.needs), "allows": list(m.allows), "output": m.output}
                        for m in modes.values()
                    ],
                    "samplers": list(recognised.family.samplers),
                    "defaults": {
                        "height": recognised.defaults.height,
                        "width": recognised.defaults.width,
                        "frames": recognised.defaults.num_frames,
                        "steps": recognised.defaults.steps,
                        "guidance": recognised.defaults.guidance_scale,
                        "fps": recognised.defaults.fps,
                    },
                    "max_frames": recognised.sizes.max_frames,
                    "settings": [describe(setting) for setting in recognised.family.settings],
                }
            )
        return {"models": models, "loras": self.catalog.lora_names(), "default_model": self.catalog.default_model}


def without_folder(err: RequestError, folder: Path) -> RequestError:
    """``err`` with the job's input folder left out of its message (``image.png``, ``src_root_path/src_pose.mp4``):
    the client sent those files and needs no paths of this server."""
    message = str(err).replace(f"{folder.resolve()}/", "").replace(str(folder.resolve()), "the job's inputs")
    return RequestError(err.field, message, err.status)


def worker_devices(config: ServiceConfig) -> tuple[str, ...]:
    """One worker per device: the given ones, else every CUDA device, else the CPU."""
    if config.devices:
        return config.devices
    if config.options.device not in ("auto", "cuda"):
        return (config.options.device,)
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return tuple(f"cuda:{i}" for i in range(count)) or ("cpu",)


def _on_device(options: RuntimeOptions, device: str) -> RuntimeOptions:
    import dataclasses

    return dataclasses.replace(options, device=device) if options.device in ("auto", "cuda") else options


def error_response(err: RequestError) -> JSONResponse:
    """A 4xx naming the field (``extra.NAME``: the path to it), in FastAPI's validation-error shape."""
    detail = [{"loc": ["body", *err.field.split(".")], "msg": str(err), "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=err.status)


def strict_json(raw: bytes | str) -> Any:
    """JSON without NaN / Infinity (which Python's reader accepts and strict readers reject)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a JSON number")

    return json.loads(raw, parse_constant=refuse)


async def read_generation(request: Request, limits: Limits) -> tuple[GenerationIn, list[Upload]]:
    """The job of a JSON or multipart (``request`` JSON field + files named by input; several ``ref_image``
    parts in their order) body."""
    declared = request.headers.get("content-length")
    ceiling = 8 * limits.max_upload_bytes + 2**20
    if declared is not None and declared.isdigit() and int(declared) > ceiling:
        raise RequestError("body", f"request of {declared} bytes is above this server's limit of {ceiling}", 413)
    kind = request.headers.get("content-type", "")
    uploads: list[Upload] = []
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=16, max_fields=16, max_part_size=limits.max_upload_bytes)
        raw = form.get("request")
        if not isinstance(raw, str):
            raise RequestError("request", "a multipart job needs a 'request' field holding the JSON settings")
        for name, value in form.multi_items():
            if name != "request" and not isinstance(value, str):
                uploads.append(Upload(name, await value.read(limits.max_upload_bytes + 1), value.filename))
    elif kind.startswith("application/json") or not kind:
        raw = await request.body()
    else:
        raise RequestError("body", f"content type {kind!r}: send application/json or multipart/form-data", 415)
    try:
        data = strict_json(raw)
    except ValueError as err:
        raise RequestError("body", f"the body is not valid JSON: {err}") from None
    try:
        return GenerationIn.model_validate(data), uploads
    except ValidationError as err:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]
        ) from None


def create_app(config: ServiceConfig, service: Service | None = None) -> FastAPI:
    """The FastAPI application of a service (started with it, stopped with it)."""
    service = service or Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        await run_in_threadpool(service.shutdown)

    app = FastAPI(
        title="videox-fun",
        summary="Video generation jobs of every registered model family, on a durable queue",
        lifespan=lifespan,
    )
    app.state.service = service
    api_key = config.api_key

    @app.middleware("http")
    async def check_api_key(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path not in OPEN_PATHS and not key_matches(request, api_key):
            return JSONResponse({"detail": "missing or wrong API key"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        return await call_next(request)

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])  # fmt: skip

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError) -> JSONResponse:
        return error_response(err)

    def find(job_id: str) -> Job:
        job = service.store.get(job_id) if len(job_id) <= 64 else None
        if job is None:
            raise RequestError("id", f"no job {job_id!r}", status=404)
        return job

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        """Liveness and the queue's counts (no API key needed)."""
        busy = [w.current.id if w.current else None for w in service.workers]
        return {"status": "ok", "workers": len(service.workers), "running": busy, "jobs": service.store.counts()}

    @app.post(
        "/v1/generations",
        status_code=202,
        tags=["generations"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/GenerationIn"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["request"],
                            "properties": {
                                "request": {"type": "string", "description": "the GenerationIn JSON"},
                                **media_upload_fields(),
                                **setting_upload_fields(),
                            },
                        }
                    },
                },
            }
        },
    )
    async def create_generation(request: Request) -> JSONResponse:
        """Queue a generation job; answers 202 with its id once it is stored."""
        spec, uploads = await read_generation(request, config.limits)
        job = await run_in_threadpool(service.submit, spec, uploads)
        view = service.view(job)
        return JSONResponse(view, status_code=202, headers={"Location": f"/v1/generations/{job.id}"})

    @app.get("/v1/generations", tags=["generations"])
    def list_generations(
        limit: int = Query(50, ge=1, le=500),
        offset: int = Query(0, ge=0, le=10**9),
        status: str | None = Query(None, pattern="^(" + "|".join(STATUSES) + ")$"),
    ) -> dict[str, Any]:
        """Jobs, newest first, a page at a time."""
        page, total = service.store.list(limit, offset, status)
        return {"items": [service.view(job) for job in page], "total": total, "limit": limit, "offset": offset}

    @app.get("/v1/generations/{job_id}", tags=["generations"])
    def get_generation(job_id: str) -> dict[str, Any]:
        """A job's status, stage, step, queue position, timings and error."""
        return service.view(find(job_id))

    @app.delete("/v1/generations/{job_id}", tags=["generations"])
    def cancel_generation(job_id: str) -> JSONResponse:
        """Cancel a job: a queued one at once, a running one at its next step (202 until it stops)."""
        job = service.store.cancel(find(job_id).id)
        assert job is not None
        return JSONResponse(service.view(job), status_code=202 if job.status == "running" else 200)

    @app.get("/v1/generations/{job_id}/result", tags=["generations"], response_class=FileResponse)
    def get_result(job_id: str) -> FileResponse:
        """The finished video (mp4) or image (png); range requests are answered."""
        job = find(job_id)
        if job.status != DONE or not job.result:
            raise RequestError("id", f"job {job_id} has no result (status {job.status})", status=409)
        path = Path(job.result)
        if not path.is_file():
            raise RequestError("id", f"the result of job {job_id} is no longer on disk", status=410)
        return FileResponse(path, media_type="image/png" if path.suffix == ".png" else "video/mp4",
                            filename=path.name)  # fmt: skip

    @app.get("/v1/generations/{job_id}/settings", tags=["generations"])
    def get_settings(job_id: str) -> JSONResponse:
        """The settings a finished job was made with (the result's sidecar JSON)."""
        job = find(job_id)
        sidecar = Path(job.result).with_suffix(".json") if job.status == DONE and job.result else None
        if sidecar is None or not sidecar.is_file():
            raise RequestError("id", f"job {job_id} has no settings record (status {job.status})", status=409)
        return JSONResponse(json.loads(sidecar.read_text()))

    @app.get("/v1/generations/{job_id}/events", tags=["generations"], response_class=StreamingResponse)
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        """Server-sent events: one ``progress`` event per change of status, stage or step, then ``end``."""
        find(job_id)
        return StreamingResponse(progress_events(service, job_id, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip

    @app.get("/v1/models", tags=["models"])
    async def list_models() -> dict[str, Any]:
        """The models this server can load (with their modes, samplers and defaults) and the LoRAs."""
        return await run_in_threadpool(service.models)

    from .compat import add_videox_fun_routes

    add_videox_fun_routes(app, service)
    add_job_schema(app)
    return app


def add_job_schema(app: FastAPI) -> None:
    """Put the job's JSON schema (``GenerationIn`` and the models it holds) into the OpenAPI components: the job
    route reads its body itself (JSON or multipart), so FastAPI does not collect the schema its body refers to."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # FastAPI's, kept as app.openapi_schema: completed in place, once
            job = GenerationIn.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(job.pop("$defs", {}))
            schemas["GenerationIn"] = job
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def media_upload_fields() -> dict[str, Any]:
    """The multipart fields of the input media, for the OpenAPI schema: one file each, and a listed input's files
    (``ref_image``) as several parts under its name, kept in their order."""
    binary = {"type": "string", "format": "binary"}
    return {
        name: {
            "type": "array",
            "items": binary,
            "maxItems": LISTED_INPUTS[name],
            "description": f"one or more pictures, in order (at most {LISTED_INPUTS[name]})",
        }
        if name in LISTED_INPUTS
        else binary
        for name in INPUT_NAMES
    }


def setting_upload_fields() -> dict[str, Any]:
    """The multipart fields of the families' file and folder settings (a folder's files: several parts, each under
    the setting's name with its file name), for the OpenAPI schema."""
    from ..families import all_settings

    binary = {"type": "string", "format": "binary"}
    fields: dict[str, Any] = {}
    for setting in all_settings().values():
        if setting.kind == "file":
            fields[setting.name] = {**binary, "description": setting.help}
        elif setting.kind == "folder":
            fields[setting.name] = {"type": "array", "items": binary, "description": setting.help}
    return fields


def key_matches(request: Request, key: str) -> bool:
    """Whether the request carries the API key (``Authorization: Bearer`` or ``X-API-Key``)."""
    given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
    return hmac.compare_digest(given.encode(), key.encode())


async def progress_events(service: Service, job_id: str, request: Request, poll_s: float = 0.05) -> AsyncIterator[str]:
    """Server-sent events of a job's progress until it finishes (or the client leaves)."""
    last = None
    while not await request.is_disconnected():
        job = await run_in_threadpool(service.store.get, job_id)
        if job is None:
            return
        view = service.view(job)
        state = (view["status"], view["stage"], view["progress"]["step"], view["queue_position"])
        if state != last:
            yield f"event: progress\ndata: {json.dumps(view)}\n\n"
            last = state
        if job.finished:
            yield f"event: end\ndata: {json.dumps({'status': job.status})}\n\n"
            return
        await asyncio.sleep(poll_s)
