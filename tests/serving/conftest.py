"""Serving fixtures: a tiny sd_base exported once per test module, a live uvicorn server on loopback."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(url: str, payload: dict | None = None, token: str | None = None, raw: bytes | None = None,
         timeout: float = 60.0) -> Reply:
    """One request with urllib (no client library needed); HTTP errors come back as replies, not exceptions."""
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


class LiveServer:
    """uvicorn serving `app` in a thread on 127.0.0.1 at a free port."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tiny_sd import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_dir, tmp_path_factory):
    """The tiny sd_base exported to a bundle straight from its folder (the registry path is tested apart)."""
    from serving.bundle import build_bundle

    out = tmp_path_factory.mktemp("bundle") / "sd_base"
    build_bundle(out, "sd_base", tiny_model_dir, {"model": "genops-sd-base", "version": 1, "alias": None},
                 {"source_run": "test", "git_commit": "test"})
    return out
