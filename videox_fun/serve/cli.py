"""``videox-fun serve``: the generation service on uvicorn, one worker per device or one torchrun group."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from ..argparsing import DefaultsHelpFormatter


def add_serve_command(subparsers: argparse._SubParsersAction) -> None:
    """``videox-fun serve``: the REST API and its workers."""
    parser = subparsers.add_parser(
        "serve", help="run the generation service (REST API, job queue, workers)", formatter_class=DefaultsHelpFormatter
    )
    add_service_arguments(parser)
    parser.set_defaults(handler=run_serve)


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a service: where it listens, its store, models, limits, workers and how models load."""
    from ..argparsing import add_device_arguments, add_parallel_arguments
    from ..runtime.offload import MEMORY_MODES
    from . import API_KEY_ENV

    web = parser.add_argument_group("service")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    web.add_argument("--port", type=int, default=7860)
    web.add_argument("--root", type=Path, default=Path("samples/api"), help="the job store's folder: jobs.db, "
                     "inputs/, results/")  # fmt: skip
    web.add_argument("--db", help="database: a SQLite file, or a URL (postgresql://user@host/db: several servers "
                     "share one queue) (default ROOT/jobs.db)")  # fmt: skip
    web.add_argument("--models", type=Path, default=Path("models"), help="folder holding Diffusion_Transformer/ "
                     "and Personalized_Model/ (VideoX-Fun's models/)")  # fmt: skip
    web.add_argument("--model", help="the model of jobs that name none (default: the built-in tiny model)")
    web.add_argument("--devices", help="comma-separated devices, one worker each (default: every GPU, else cpu)")
    web.add_argument("--no-workers", action="store_true", help="accept and answer only; other servers on the "
                     "same --db run the jobs")  # fmt: skip
    web.add_argument("--name", help="this server's name in the store (default HOST:PORT): a restart with the same "
                     "name puts back the jobs it was running")  # fmt: skip
    web.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"key every route but /healthz "
                     f"requires (Authorization: Bearer KEY or X-API-Key) (default ${API_KEY_ENV})")  # fmt: skip
    web.add_argument("--cors-origin", action="append", default=[], help="allow browser calls from this origin "
                     "(repeat; default: none)")  # fmt: skip
    web.add_argument("--allow-url-host", action="append", default=[], help="inputs may be URLs of this host "
                     "(repeat; default: no URL is fetched)")  # fmt: skip
    web.add_argument("--max-upload-mb", type=float, default=200, help="largest input file")
    web.add_argument("--max-work", type=float, default=1280 * 720 * 81 * 50,
                     help="largest width x height x frames x steps of a job")  # fmt: skip
    web.add_argument("--max-attempts", type=int, default=3, help="runs of a job interrupted by a server stop "
                     "before it is marked failed")  # fmt: skip
    web.add_argument("--lease", type=float, default=60, help="seconds without a heartbeat after which another "
                     "server takes a running job back")  # fmt: skip
    web.add_argument("--nproc", type=int, default=1, help="one worker as a torchrun group of this many processes "
                     "(with --ulysses-degree / --ring-degree)")  # fmt: skip

    model = parser.add_argument_group("how models load (per server; LoRAs, caches and RIFLEx come per job)")
    add_device_arguments(model)
    model.add_argument("--attention", default="auto", help="attention backend")
    model.add_argument("--gpu-memory-mode", choices=MEMORY_MODES, default="model_full_load")
    model.add_argument("--resident-blocks", type=int, default=4, help="model_group_offload: blocks on the GPU")
    model.add_argument("--fp8", choices=("plain", "scaled"), default="plain", help="fp8 kind of the *_qfloat8 modes")
    model.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    add_parallel_arguments(parser)


def service_config(args: argparse.Namespace) -> object:
    """The :class:`~videox_fun.serve.app.ServiceConfig` of the flags."""
    from ..api import RuntimeOptions, options_from
    from .app import ServiceConfig
    from .jobs import Limits

    for flag in ("port", "max_upload_mb", "max_work", "max_attempts", "lease", "nproc"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be above 0, got {getattr(args, flag)}")
    options = options_from(vars(args), RuntimeOptions)
    options.check()
    limits = Limits(int(args.max_upload_mb * 2**20), int(args.max_work), tuple(args.allow_url_host))
    return ServiceConfig(
        root=args.root,
        db=args.db,
        models=args.models,
        default_model=args.model,
        options=options,
        devices=tuple(d.strip() for d in args.devices.split(",") if d.strip()) if args.devices else (),
        workers=not args.no_workers,
        api_key=args.api_key or None,
        cors_origins=tuple(args.cors_origin),
        limits=limits,
        max_attempts=args.max_attempts,
        lease_s=args.lease,
        name=args.name or f"{socket.gethostname()}:{args.port}",
    )


def run_serve(args: argparse.Namespace) -> None:
    """Start the service; with ``--nproc`` > 1 (outside torchrun) start it again under torchrun."""
    config = service_config(args)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        relaunch_under_torchrun(args.nproc)
        return
    runtime = None
    if "WORLD_SIZE" in os.environ:
        from ..runtime.parallel import init_parallel

        runtime = init_parallel(config.options)
        config.devices = (str(runtime.device),)
        if not runtime.is_main:
            follow_group(config, runtime)
            return
    serve(config, args.host, args.port, runtime)


def serve(config: object, host: str, port: int, runtime: object = None) -> None:
    """Run the API with its workers until interrupted."""
    import uvicorn

    from .app import Service, create_app

    service = Service(config, runtime)  # type: ignore[arg-type]
    app = create_app(config, service)  # type: ignore[arg-type]
    print(f"videox-fun serve: http://{host}:{port} (docs at /docs), jobs in {service.store.url}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def follow_group(config: object, runtime: object) -> None:
    """A torchrun rank other than 0: run the jobs rank 0 broadcasts."""
    from .jobs import Catalog
    from .worker import Worker, follow

    # Only rank 0 touches the store: the other ranks get each job from it and write nothing.
    catalog = Catalog(config.models, config.default_model)  # type: ignore[attr-defined]
    worker = Worker(None, catalog, config.options, config.root / "results", "follower", runtime)  # type: ignore[attr-defined]
    follow(worker)


def relaunch_under_torchrun(nproc: int) -> None:
    """Become ``nproc`` processes under torchrun running this same command (rank 0 serves HTTP).

    The process replaces itself with torchrun (exec), so a SIGTERM to the server's pid (a service manager,
    :meth:`ServerProcess.stop`) reaches torchrun, which stops its workers; a child torchrun would be orphaned.
    """
    argv = without_nproc(sys.argv[1:])  # torchrun's parser would take --nproc for its --nproc-per-node
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "videox_fun.cli", *argv]  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (the ranks know their count from torchrun)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept
