"""The image service as a Ray Serve deployment on the local Ray: configured from infra/ray-serve/serve.yaml,
it answers one request with a PNG."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import pytest
import yaml
from conftest import http
from PIL import Image

pytest.importorskip("ray.serve", reason="Ray Serve needs the ray[serve] extra (grpcio-reflection, mmh3)",
                    exc_type=ImportError)
pytestmark = [pytest.mark.slow, pytest.mark.integration]

CONFIG = Path(__file__).resolve().parents[2] / "infra" / "ray-serve" / "serve.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_yaml_builds_and_refuses_unknown_args():
    from serving.ray_serve import settings_from

    app = yaml.safe_load(CONFIG.read_text())["applications"][0]
    assert app["import_path"] == "serving.ray_serve:build_app"
    assert settings_from(app["args"]).max_batch == 8
    with pytest.raises(ValueError, match="max_bach"):
        settings_from({**app["args"], "max_bach": 4})


def test_ray_serve_answers_one_request(ray_session, tiny_bundle):
    from ray import serve

    from serving.ray_serve import build_app

    args = yaml.safe_load(CONFIG.read_text())["applications"][0]["args"]
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({**args, "bundle": str(tiny_bundle), "device": "cpu"}), name="genops-images",
                  route_prefix="/")
        deadline = time.monotonic() + 120
        while http(f"http://127.0.0.1:{port}/readyz", timeout=10).status != 200:
            assert time.monotonic() < deadline, "the Ray Serve replica never became ready"
            time.sleep(0.5)
        reply = http(f"http://127.0.0.1:{port}/v1/images", {"prompt": "a red circle", "steps": 3, "seed": 0})
        assert reply.status == 200 and reply.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(reply.body)).size == (16, 16)
        assert b'genops_requests_total{status="200"} 1.0' in http(f"http://127.0.0.1:{port}/metrics").body
    finally:
        serve.shutdown()
