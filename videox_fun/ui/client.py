"""The web UI's client of the generation service: every UI action is a call of the REST API.

The UI runs no model itself. What it starts is a job in the service's queue: durable, visible in
the API, and run by the service's workers. This holds whether the service is in the same process
(``videox-fun ui``) or remote (``--api-url``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


class ServiceError(Exception):
    """A refusal or failure the service reported, as one line for the page."""


@dataclass
class ServiceClient:
    """Calls of the generation service's REST API."""

    base_url: str
    api_key: str | None = None
    timeout_s: float = 120.0

    def _client(self) -> httpx.Client:
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            with self._client() as client:
                response = client.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise ServiceError(f"the service at {self.base_url} did not answer: {err}") from None
        if response.status_code >= 400:
            raise ServiceError(error_message(response))
        return response

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``: the models (with modes, samplers, defaults) and the LoRAs."""
        return self._call("GET", "/v1/models").json()

    def submit(self, spec: dict[str, Any], files: dict[str, Path | list[Path]]) -> dict[str, Any]:
        """``POST /v1/generations``: JSON, or multipart when there are input files (several under one name: the
        files of a folder setting, each sent with its file name); the job's view."""
        if not files:
            return self._call("POST", "/v1/generations", json=spec).json()
        uploads = [
            (name, (path.name, path.read_bytes()))
            for name, paths in files.items()
            for path in (paths if isinstance(paths, list) else [paths])
        ]
        return self._call("POST", "/v1/generations", data={"request": json.dumps(spec)}, files=uploads).json()

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/generations/{id}``."""
        return self._call("GET", f"/v1/generations/{job_id}").json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``DELETE /v1/generations/{id}``."""
        return self._call("DELETE", f"/v1/generations/{job_id}").json()

    def jobs(self, limit: int = 24, status: str | None = None) -> list[dict[str, Any]]:
        """``GET /v1/generations``: the newest jobs."""
        params: dict[str, Any] = {"limit": limit} | ({"status": status} if status else {})
        return self._call("GET", "/v1/generations", params=params).json()["items"]

    def settings(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/generations/{id}/settings``: the sidecar of a finished job."""
        return self._call("GET", f"/v1/generations/{job_id}/settings").json()

    def download(self, job_id: str, folder: Path) -> Path:
        """The result of a finished job, saved once under ``folder`` (mp4 or png, as served)."""
        for suffix in (".mp4", ".png"):
            if (folder / f"{job_id}{suffix}").is_file():
                return folder / f"{job_id}{suffix}"
        response = self._call("GET", f"/v1/generations/{job_id}/result")
        suffix = ".png" if response.headers.get("content-type", "").startswith("image/") else ".mp4"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{job_id}{suffix}"
        from ..io.files import atomic_path

        with atomic_path(path) as temporary:
            temporary.write_bytes(response.content)
        return path


def error_message(response: httpx.Response) -> str:
    """One line from an error answer: the named fields and their messages."""
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    if isinstance(detail, list):
        parts = []
        for item in detail:
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
        return "; ".join(parts)
    return str(detail)
