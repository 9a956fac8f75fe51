"""The image service on a live uvicorn server (loopback): PNGs, 422 per field, 401, 413, 429 under a burst,
batching, and /metrics counting all of it."""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import LiveServer, http
from PIL import Image

pytestmark = pytest.mark.slow  # exports the tiny bundle (~20 s idle) and runs a live server

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def service(tiny_bundle):
    from serving.http import ServiceSettings, create_app

    settings = ServiceSettings(bundle=tiny_bundle, backend="onnx", device="cpu", max_batch=2, queue_size=2,
                               timeout_s=60, max_steps=30, max_count=2, max_body_bytes=4096, token=TOKEN,
                               batch_window_s=0.02)
    with LiveServer(create_app(settings)) as url:
        yield url


def counter(url: str, name: str, status: str | None = None) -> float:
    text = http(f"{url}/metrics").body.decode()
    label = f'{{status="{status}"}}' if status else ""
    match = re.search(rf"^{re.escape(name + label)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def post(url: str, token: str | None = TOKEN, **payload):
    return http(f"{url}/v1/images", payload, token=token)


def test_ready_health_openapi_and_page(service):
    assert http(f"{service}/healthz").json() == {"status": "ok"}
    ready = http(f"{service}/readyz")
    assert ready.status == 200 and ready.json()["status"] == "ready" and ready.json()["backend"] == "onnx"
    assert "/v1/images" in http(f"{service}/openapi.json").json()["paths"]
    page = http(f"{service}/")
    assert page.status == 200 and b"<form" in page.body and b"genops-sd-base v1" in page.body


def test_a_valid_request_gets_a_png_and_is_counted(service):
    before_ok, before_images = counter(service, "genops_requests_total", "200"), counter(service, "genops_images_generated_total")
    reply = post(service, prompt="a red circle at the top left", steps=3, seed=1)
    assert reply.status == 200 and reply.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(reply.body)).size == (16, 16)
    two = post(service, prompt="a blue square", steps=3, seed=1, count=2, size=32)
    assert two.status == 200 and Image.open(io.BytesIO(two.body)).size == (64, 32)
    assert counter(service, "genops_requests_total", "200") == before_ok + 2
    assert counter(service, "genops_images_generated_total") == before_images + 3
    assert counter(service, "genops_request_latency_seconds_count") >= 2


def test_same_seed_same_image_json_format(service):
    first = post(service, prompt="a green triangle", steps=3, seed=5, response_format="json").json()
    again = post(service, prompt="a green triangle", steps=3, seed=5, response_format="json").json()
    other = post(service, prompt="a green triangle", steps=3, seed=6, response_format="json").json()
    assert first["images"] == again["images"] != other["images"]


@pytest.mark.parametrize("field, value", [
    ("prompt", ""),
    ("prompt", "red blue green circle square triangle " * 4),  # over the model's 12 text positions
    ("negative_prompt", "red blue green circle square triangle " * 4),
    ("steps", 0),
    ("steps", 31),  # over the service's max_steps
    ("guidance", 0.5),
    ("seed", -1),
    ("size", 24),  # not an allowed side
    ("count", 0),
    ("count", 3),  # over max_count
    ("response_format", "gif"),
])
def test_each_out_of_range_field_gets_422_naming_it(service, field, value):
    before = counter(service, "genops_requests_total", "422")
    reply = post(service, **{"prompt": "a red circle", "steps": 2, field: value})
    assert reply.status == 422, reply.body
    assert [e["loc"][-1] for e in reply.json()["detail"]] == [field]
    assert counter(service, "genops_requests_total", "422") == before + 1


def test_missing_or_wrong_token_gets_401(service):
    before = counter(service, "genops_requests_total", "401")
    for token in (None, "wrong"):
        reply = post(service, token=token, prompt="a red circle", steps=2)
        assert reply.status == 401 and reply.headers["www-authenticate"] == "Bearer"
    assert counter(service, "genops_requests_total", "401") == before + 2


def test_an_oversized_body_gets_413(service):
    reply = http(f"{service}/v1/images", raw=b'{"prompt": "' + b"x" * 5000 + b'"}', token=TOKEN)
    assert reply.status == 413 and "4096" in reply.json()["detail"]


def test_a_burst_beyond_the_queue_is_shed_with_429_and_counted(service):
    """12 concurrent requests against max_batch 2 + queue 2: the overflow gets 429 + Retry-After, the rest
    PNGs; nothing else (no 5xx, no timeouts); requests that wait together share a batch."""
    before = {s: counter(service, "genops_requests_total", s) for s in ("200", "429")}
    batches_before = counter(service, "genops_batch_images_count")
    images_before = counter(service, "genops_images_generated_total")
    with ThreadPoolExecutor(max_workers=12) as pool:
        replies = list(pool.map(lambda i: post(service, prompt="a yellow circle", steps=25, seed=i), range(12)))
    statuses = [r.status for r in replies]
    assert set(statuses) <= {200, 429}, statuses
    shed = [r for r in replies if r.status == 429]
    # the queue's capacity (2) is always admitted; when the whole burst lands inside the batching window the
    # queue is full before the worker takes anything, so that may be all (seen on a loaded machine)
    assert shed and statuses.count(200) >= 2, statuses
    assert all(int(r.headers["retry-after"]) >= 1 for r in shed)
    assert counter(service, "genops_requests_total", "429") == before["429"] + len(shed)
    assert counter(service, "genops_requests_total", "200") == before["200"] + statuses.count(200)
    images = counter(service, "genops_images_generated_total") - images_before
    batches = counter(service, "genops_batch_images_count") - batches_before
    assert images == statuses.count(200) and batches < images  # at least one batch held two requests
    assert counter(service, "genops_queue_depth") == 0
