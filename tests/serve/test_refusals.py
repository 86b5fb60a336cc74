"""What the service refuses, and how: each malformed request kind answers 4xx naming its field; names
cannot leave the model folders; no URL is fetched unless allowed; the API key; a schema fuzz with no 500."""

from __future__ import annotations

import base64
import contextlib
import json
import os

import httpx
import pytest
from conftest import Server
from helpers import HANG_GUARD_S

pytestmark = pytest.mark.slow

GOOD = {"prompt": "a red circle", "steps": 2, "frames": 5}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("refusals")
    models = tmp_path / "models"
    (models / "Diffusion_Transformer").mkdir(parents=True)
    (models / "Personalized_Model").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.safetensors").write_bytes(b"x")
    (models / "Diffusion_Transformer" / "escape").symlink_to(outside)
    (models / "Personalized_Model" / "escape.safetensors").symlink_to(outside / "secret.safetensors")
    server = Server(tmp_path / "store", "--models", str(models), "--no-workers", "--max-upload-mb", "0.05",
                    "--max-work", str(64 * 64 * 17 * 20))  # fmt: skip
    yield server.start()
    server.stop()


def refused(answer: httpx.Response, status: int, field: str) -> str:
    """Assert a refusal's status and that it names ``field``; returns its message."""
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert any(field in item["loc"] for item in detail), detail
    return " ".join(item["msg"] for item in detail)


@pytest.mark.parametrize(
    ("change", "status", "field", "says"),
    [
        ({"steps": 0}, 422, "steps", "greater than or equal to 1"),
        ({"stepz": 4}, 422, "stepz", "Extra inputs"),
        ({"prompt": ""}, 422, "prompt", "at least 1 character"),
        ({"guidance": "much"}, 422, "guidance", "valid number"),
        ({"strength": 1.5}, 422, "strength", "less than or equal to 1"),
        ({"mode": "control"}, 422, "mode", "needs"),
        ({"mode": "dance"}, 422, "mode", "not one of"),
        ({"sampler": "Euler"}, 422, "sampler", "not one of"),
        ({"image": "not base64!"}, 422, "image", "neither base64"),
        ({"image": base64.b64encode(b"\x00" * 64).decode()}, 422, "image", "--image"),
        ({"camera": "spin_forever"}, 422, "camera", "neither base64"),
        ({"loras": [{"name": "x.safetensors", "weight": 2, "extra": 1}]}, 422, "extra", "Extra inputs"),
        ({"frames": 17, "steps": 40}, 422, "body", "limit"),
        ({"model": "../Diffusion_Transformer"}, 422, "model", "plain name"),
        ({"model": "/etc"}, 422, "model", "plain name"),
        ({"model": "no-such-model"}, 404, "model", "no model named"),
        ({"model": "escape"}, 403, "model", "outside"),
        ({"loras": [{"name": "../../outside/secret.safetensors"}]}, 422, "loras", "plain name"),
        ({"loras": [{"name": "escape.safetensors"}]}, 403, "loras", "outside"),
        ({"base_model": "escape.safetensors"}, 403, "base_model", "outside"),
        ({"image": "http://127.0.0.1:1/start.png"}, 403, "image", "not allowed"),
        ({"video": "https://example.com/v.mp4"}, 403, "video", "not allowed"),
    ],
)
def test_each_malformed_request_answers_4xx_naming_its_field(server, change, status, field, says):
    answer = httpx.post(f"{server.url}/v1/generations", json=GOOD | change, timeout=HANG_GUARD_S)
    assert says in refused(answer, status, field)


def test_malformed_bodies_uploads_and_lookups(server, media):
    url = f"{server.url}/v1/generations"
    nan = json.dumps(GOOD)[:-1] + ', "guidance": NaN}'
    refused(httpx.post(url, content=nan, headers={"content-type": "application/json"}), 422, "body")
    refused(httpx.post(url, content=b"{", headers={"content-type": "application/json"}), 422, "body")
    refused(httpx.post(url, content=b"x", headers={"content-type": "text/plain"}), 415, "body")
    refused(httpx.post(url, data={"request": "{}"}, files={"image": ("a.png", b"x")}), 422, "prompt")
    refused(httpx.post(url, data={"other": "1"}, files={"image": ("a.png", b"x")}), 422, "request")
    refused(httpx.post(url, data={"request": json.dumps(GOOD)}, files={"audio": ("a.wav", b"x")}), 422, "audio")
    big = os.urandom(60_000)  # above --max-upload-mb 0.05
    refused(httpx.post(url, data={"request": json.dumps(GOOD)}, files={"video": ("v.mp4", big)}), 413, "video")
    twice = {"request": json.dumps(GOOD | {"image": base64.b64encode(media["image"].read_bytes()).decode()})}
    refused(httpx.post(url, data=twice, files={"image": ("s.png", media["image"].read_bytes())}), 422, "image")
    refused(httpx.get(f"{url}/0123456789abcdef"), 404, "id")
    accepted = httpx.post(url, json=GOOD).json()["id"]  # queued (no workers): no result yet
    refused(httpx.get(f"{url}/{accepted}/result"), 409, "id")
    refused(httpx.get(f"{server.url}/v1/generations", params={"limit": 0}), 422, "limit")
    # Nothing refused left its inputs behind (the one accepted job has none).
    assert list((server.root / "inputs").glob("*")) == []


def test_an_allowed_url_host_is_fetched(start_server, media, tmp_path):
    import http.server
    import threading

    from videox_fun.serve.process import free_port

    folder = media["image"].parent
    port = free_port()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        server = start_server("--no-workers", "--allow-url-host", "127.0.0.1")
        image = f"http://127.0.0.1:{port}/{media['image'].name}"
        answer = httpx.post(f"{server.url}/v1/generations", json=GOOD | {"image": image}, timeout=HANG_GUARD_S)
        assert answer.status_code == 202 and answer.json()["mode"] == "i2v"
        missing = GOOD | {"image": f"http://127.0.0.1:{port}/missing.png"}
        assert "could not fetch" in refused(httpx.post(f"{server.url}/v1/generations", json=missing), 422, "image")
    finally:
        httpd.shutdown()


def test_the_api_key_guards_every_route_but_healthz(start_server):
    server = start_server("--no-workers", "--api-key", "s3cret")
    routes = [("GET", "/v1/models"), ("GET", "/v1/generations"), ("POST", "/v1/generations"),
              ("GET", "/docs"), ("GET", "/openapi.json"), ("POST", "/videox_fun/infer_forward")]  # fmt: skip
    for method, path in routes:
        assert httpx.request(method, server.url + path).status_code == 401, path
        assert httpx.request(method, server.url + path, headers={"X-API-Key": "wrong"}).status_code == 401, path
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    good = {"Authorization": "Bearer s3cret"}
    assert httpx.get(f"{server.url}/v1/generations", headers=good).status_code == 200
    assert httpx.post(f"{server.url}/v1/generations", json=GOOD, headers={"X-API-Key": "s3cret"}).status_code == 202
    assert (
        "access-control-allow-origin"
        not in httpx.get(f"{server.url}/healthz", headers={"Origin": "http://evil.example"}).headers
    )  # CORS is off by default


def test_schema_fuzz_finds_no_server_error(start_server):
    """Schemathesis generates valid and invalid requests for every operation of the OpenAPI schema."""
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    # Workers on and a tiny work limit: what the fuzz gets accepted runs (and finishes) quickly.
    server = start_server("--max-work", str(32 * 32 * 5 * 2), "--max-upload-mb", "1")
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    errors: list[tuple] = []
    calls = []
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            with contextlib.suppress(Unsatisfiable):  # an operation without parameters has no invalid request
                fuzz(result.ok(), mode, calls, errors)
    assert len(calls) > 300
    assert errors == []


def fuzz(operation, mode, calls: list, errors: list) -> None:
    """Call one operation with 30 generated requests; note the server errors."""
    from hypothesis import HealthCheck, Phase, given, settings

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate],
              database=None)  # fmt: skip
    def call(case) -> None:
        response = case.call(timeout=HANG_GUARD_S)
        calls.append(response.status_code)
        if response.status_code >= 500:
            errors.append((operation.label, response.status_code, response.text[:200], str(case.body)[:200]))

    call()
