"""The HTTP image service: FastAPI + uvicorn over a verified bundle (`genops serve --bundle DIR`).

    POST /v1/images   {"prompt", "negative_prompt", "steps", "guidance", "seed", "size", "count", "response_format"}
                      -> image/png (a row of `count` images), or JSON with base64 PNGs when response_format=json
    GET  /healthz     the process answers
    GET  /readyz      503 until the bundle is verified and the sessions have run one warm-up image
    GET  /metrics     Prometheus text: requests by status, latency histogram, queue depth, images, batch sizes
    GET  /            a page to type a prompt and see the image;  /docs and /openapi.json: the OpenAPI spec

Admission: a request is checked (bearer token when GENOPS_SERVE_TOKEN is set -> 401; body size -> 413;
each field's range -> 422 naming the field), then joins a bounded queue; when the queue holds
`queue_size` requests it is answered 429 with Retry-After (an estimate from the recent batch time) instead
of growing. One worker runs the model: it takes the oldest request and every queued request with the same
(steps, guidance, size) up to `max_batch` images, and runs them as one batch (each request keeps its own
seed's noise, so its images do not depend on what it was batched with). A request not answered within
`timeout_s` gets 504 and is dropped from the queue if it has not started.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)

TOKEN_ENV = "GENOPS_SERVE_TOKEN"


@dataclass
class ServiceSettings:
    bundle: Path
    backend: Literal["onnx", "torch"] = "onnx"
    device: str = "auto"
    max_batch: int = 8  # images per model batch
    queue_size: int = 16  # requests waiting (not counting the batch running)
    timeout_s: float = 60.0  # per request, queueing included
    max_steps: int = 50
    max_count: int = 4
    max_body_bytes: int = 16 * 1024
    batch_window_s: float = 0.005  # how long the worker waits for companions of a lone request
    token: str | None = field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None)
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch", "queue_size", "max_steps", "max_count", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ValueError(f"--timeout-s must be > 0, got {self.timeout_s}")


class ImageRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=2000, description="What to draw (at most the model's text positions in tokens).")
    negative_prompt: str = Field("", max_length=2000, description="What to steer away from (classifier-free guidance).")
    steps: int | None = Field(None, ge=1, description="Sampling steps (default: the bundle's; at most the service's max).")
    guidance: float | None = Field(None, ge=1.0, le=30.0, description="Guidance scale, 1 disables guidance.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the initial noise.")
    size: int | None = Field(None, description="Image side in pixels, one of the bundle's allowed sides.")
    count: int = Field(1, ge=1, description="Images to draw (consecutive noise from one seed).")
    response_format: Literal["png", "json"] = Field("png", description="png: one PNG (a row when count > 1); "
                                                                        "json: base64 PNGs")


@dataclass
class Job:
    request: ImageRequest
    steps: int
    guidance: float
    size: int
    future: asyncio.Future
    started: bool = False

    @property
    def key(self) -> tuple[int, float, int]:
        return self.steps, self.guidance, self.size


def field_error(name: str, message: str, value) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", name), "msg": message, "input": value}])


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("genops_requests", "Image requests by HTTP status", ["status"], registry=self.registry)
        self.latency = Histogram("genops_request_latency_seconds", "Image request latency, admission to response",
                                 registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.queue_depth = Gauge("genops_queue_depth", "Requests waiting for the model", registry=self.registry)
        self.images = Counter("genops_images_generated", "Images generated", registry=self.registry)
        self.batch_images = Histogram("genops_batch_images", "Images per model batch", registry=self.registry,
                                      buckets=(1, 2, 4, 8, 16, 32, 64))


class ImageService:
    def __init__(self, settings: ServiceSettings, sampler=None):
        self.settings = settings
        self.sampler = sampler
        self.metrics = Metrics()
        self.pending: list[Job] = []
        self.wakeup = asyncio.Event()
        self.ready = False
        self.batch_seconds = 1.0  # moving average of one batch's time (Retry-After estimate)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genops-model")
        self.worker: asyncio.Task | None = None
        self.manifest: dict = {}

    # life cycle
    def load(self) -> None:
        from serving.bundle import verify_bundle
        from serving.sampler import load_sampler

        self.manifest = verify_bundle(self.settings.bundle)
        if self.sampler is None:
            self.sampler = load_sampler(self.settings.bundle, self.settings.backend, self.settings.device,
                                        verify=False, threads=self.settings.threads)
        started = time.perf_counter()
        self.sampler.generate(["warm-up"], steps=2)
        logger.info("bundle %s verified, %s backend warm (%.2f s)", self.settings.bundle,
                    self.sampler.backend.name, time.perf_counter() - started)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.load)
        self.worker = asyncio.create_task(self.run_worker())
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self.worker is not None:
            self.worker.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # admission
    def validate(self, req: ImageRequest) -> tuple[int, float, int]:
        spec = self.sampler.spec
        steps = req.steps if req.steps is not None else spec.num_inference_steps
        if steps > self.settings.max_steps:
            raise field_error("steps", f"steps must be <= {self.settings.max_steps}", steps)
        if req.count > self.settings.max_count:
            raise field_error("count", f"count must be <= {self.settings.max_count}", req.count)
        size = req.size if req.size is not None else spec.allowed_sides[0]
        if size not in spec.allowed_sides:
            raise field_error("size", f"size must be one of {spec.allowed_sides}", size)
        for name in ("prompt", "negative_prompt"):
            tokens = self.sampler.token_count(getattr(req, name))
            if tokens > spec.max_length:
                raise field_error(name, f"{name} is {tokens} tokens with {self.sampler.special_tokens}; the model "
                                        f"reads at most {spec.max_length}", getattr(req, name))
        guidance = req.guidance if req.guidance is not None else spec.guidance_scale
        return steps, guidance, size

    def retry_after(self) -> int:
        batches = math.ceil((len(self.pending) + 1) / self.settings.max_batch)
        return max(1, math.ceil(batches * self.batch_seconds))

    async def submit(self, req: ImageRequest) -> list[Image.Image]:
        steps, guidance, size = self.validate(req)
        if len(self.pending) >= self.settings.queue_size:
            raise QueueFull(self.retry_after())
        job = Job(req, steps, guidance, size, asyncio.get_running_loop().create_future())
        self.pending.append(job)
        self.metrics.queue_depth.set(len(self.pending))
        self.wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.settings.timeout_s)
        except TimeoutError:
            if not job.started and job in self.pending:
                self.pending.remove(job)
                self.metrics.queue_depth.set(len(self.pending))
            raise

    # the model worker
    def take_batch(self) -> list[Job]:
        first = self.pending[0]
        batch, images = [], 0
        for job in list(self.pending):
            if job.key != first.key or (batch and images + job.request.count > self.settings.max_batch):
                continue
            batch.append(job)
            images += job.request.count
            self.pending.remove(job)
            if images >= self.settings.max_batch:
                break
        self.metrics.queue_depth.set(len(self.pending))
        return batch

    def run_batch(self, batch: list[Job]) -> list[list[Image.Image]]:
        from components.models.autoencoder import pixels_to_images

        steps, guidance, size = batch[0].key
        prompts, negatives, noises = [], [], []
        for job in batch:
            prompts += [job.request.prompt] * job.request.count
            negatives += [job.request.negative_prompt] * job.request.count
            noises.append(self.sampler.initial_noise(job.request.count, job.request.seed, size))
        pixels = self.sampler.pixels(prompts, negative_prompts=negatives, noise=torch.cat(noises), steps=steps,
                                     guidance_scale=guidance)
        images = pixels_to_images(pixels)
        out, start = [], 0
        for job in batch:
            out.append(images[start:start + job.request.count])
            start += job.request.count
        return out

    async def run_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
            if len(self.pending) < self.settings.max_batch and self.settings.batch_window_s > 0:
                await asyncio.sleep(self.settings.batch_window_s)  # let requests arriving together join
            batch = self.take_batch()
            for job in batch:
                job.started = True
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, batch)
            except Exception as exc:  # noqa: BLE001 - one bad batch answers 500, the service goes on
                logger.exception("batch of %d request(s) failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            elapsed = time.perf_counter() - started
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * elapsed
            images = sum(len(r) for r in results)
            self.metrics.images.inc(images)
            self.metrics.batch_images.observe(images)
            for job, result in zip(batch, results):
                if not job.future.done():
                    job.future.set_result(result)


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"queue full; retry after {retry_after} s")
        self.retry_after = retry_after


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_row(images: list[Image.Image]) -> Image.Image:
    if len(images) == 1:
        return images[0]
    width, height = images[0].size
    row = Image.new("RGB", (width * len(images), height))
    for i, image in enumerate(images):
        row.paste(image, (i * width, 0))
    return row


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>genops</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}input,button{font-size:1em}
img{image-rendering:pixelated;width:256px;border:1px solid #ccc;margin-top:1em}</style></head><body>
<h1>genops image service</h1><p>Model: __MODEL__</p>
<form id="f"><input id="p" size="40" value="a red circle at the top left">
<input id="s" type="number" value="0" style="width:5em" title="seed"> <button>Draw</button><br>
<input id="t" size="40" placeholder="bearer token (if the service needs one)"></form>
<div id="e" style="color:#b00"></div><img id="i" alt="">
<script>document.getElementById('f').onsubmit=async e=>{e.preventDefault();
const h={'Content-Type':'application/json'};const t=document.getElementById('t').value;if(t)h.Authorization='Bearer '+t;
const r=await fetch('/v1/images',{method:'POST',headers:h,body:JSON.stringify({prompt:document.getElementById('p').value,
seed:+document.getElementById('s').value})});
if(r.ok){document.getElementById('e').textContent='';document.getElementById('i').src=URL.createObjectURL(await r.blob());}
else{document.getElementById('e').textContent=r.status+' '+await r.text();}};</script></body></html>"""


def create_app(settings: ServiceSettings, sampler=None) -> FastAPI:
    service = ImageService(settings, sampler)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="genops image service", version="1", lifespan=lifespan,
                  description="Text-to-image from a verified genops export bundle.")
    app.state.service = service

    @app.middleware("http")
    async def admission(request: Request, call_next):
        if not request.url.path.startswith("/v1/"):
            return await call_next(request)
        started = time.perf_counter()
        if settings.token and request.headers.get("authorization") != f"Bearer {settings.token}":
            response = JSONResponse({"detail": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        elif int(request.headers.get("content-length") or 0) > settings.max_body_bytes:
            response = JSONResponse({"detail": f"request body is over {settings.max_body_bytes} bytes"}, status_code=413)
        else:
            response = await call_next(request)
        service.metrics.requests.labels(status=str(response.status_code)).inc()
        service.metrics.latency.observe(time.perf_counter() - started)
        return response

    @app.post("/v1/images", responses={200: {"content": {"image/png": {}}}, 422: {}, 429: {}, 504: {}})
    async def images(req: ImageRequest):
        if not service.ready:
            return JSONResponse({"detail": "not ready: the bundle is loading"}, status_code=503,
                                headers={"Retry-After": "5"})
        try:
            result = await service.submit(req)
        except QueueFull as exc:
            return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)})
        except TimeoutError:
            return JSONResponse({"detail": f"not answered within {settings.timeout_s} s"}, status_code=504)
        if req.response_format == "json":
            return {"images": [base64.b64encode(png_bytes(i)).decode("ascii") for i in result], "seed": req.seed}
        return Response(png_bytes(image_row(result)), media_type="image/png")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        reg = service.manifest.get("registry", {})
        return {"status": "ready", "backend": service.sampler.backend.name, "device": service.sampler.backend.device
                if isinstance(service.sampler.backend.device, str) else str(service.sampler.backend.device),
                "model": f"{reg.get('model')} v{reg.get('version')}"}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        service.metrics.queue_depth.set(len(service.pending))
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        reg = service.manifest.get("registry", {})
        return PAGE.replace("__MODEL__", f"{reg.get('model', '?')} v{reg.get('version', '?')}")

    return app
