"""``videox-fun ui``: the web UI with its own service on one port, or over a remote one (``--api-url``)."""

from __future__ import annotations

import argparse
import os
import sys

from ..argparsing import DefaultsHelpFormatter


def add_ui_command(subparsers: argparse._SubParsersAction) -> None:
    """``videox-fun ui``."""
    parser = subparsers.add_parser(
        "ui", help="run the web UI (Gradio) with its generation service", formatter_class=DefaultsHelpFormatter
    )
    add_ui_arguments(parser)
    parser.set_defaults(handler=run_ui)


def add_ui_arguments(parser: argparse.ArgumentParser) -> None:
    """The service's flags, plus the UI's own."""
    from ..serve.cli import add_service_arguments

    add_service_arguments(parser)
    group = parser.add_argument_group("web UI")
    group.add_argument("--api-url", help="drive this remote service (videox-fun serve) instead of starting one")
    group.add_argument("--share", action="store_true", help="a public Gradio link (with --api-url only)")


def run_ui(args: argparse.Namespace) -> None:
    """Start the page: mounted on a local service's app (one port), or launched over a remote service."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home (and none possible offline)
    from .app import CSS, UI
    from .client import ServiceClient

    if args.api_url:
        page = UI(ServiceClient(args.api_url.rstrip("/"), args.api_key), args.model).build()
        page.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS)
        return
    if args.share:
        raise ValueError("--share needs --api-url (a local service is mounted with the page on one port)")
    import gradio as gr
    import uvicorn

    from ..serve.app import Service, create_app
    from ..serve.cli import service_config

    config = service_config(args)
    service = Service(config)  # type: ignore[arg-type]
    app = create_app(config, service)  # type: ignore[arg-type]
    page = UI(ServiceClient(f"http://127.0.0.1:{args.port}", args.api_key), args.model).build()
    app = gr.mount_gradio_app(app, page, path="/", css=CSS)
    print(f"videox-fun ui: http://{args.host}:{args.port} (API at /v1, docs at /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def app_main(default_model: str | None = None) -> None:
    """Entry of the thin ``examples/*/app.py`` scripts: ``videox-fun ui`` with a family's default model."""
    from ..cli import build_parser, run_parsed

    argv = ["ui", *sys.argv[1:]]
    if default_model and "--model" not in sys.argv:
        argv += ["--model", default_model]
    sys.exit(run_parsed(build_parser().parse_args(argv)))
