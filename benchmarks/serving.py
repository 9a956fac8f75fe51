"""Requests/s and latency of `genops serve` on loopback at concurrency 1, 4 and 16 (and one level beyond its
capacity), the error mix, and the throughput at 16 against the single-request compute bound.

    flock /tmp/genops-cpu.lock .venv/bin/python benchmarks/serving.py [--model models:/genops-sd-base/latest]
    .venv/bin/python benchmarks/serving.py --random-init demo        # demo architecture, random weights

The server is a real `genops serve` subprocess (ONNX Runtime backend, max batch 8, queue 16); each client
thread sends its next request when the previous one is answered (closed loop), all with the bundle's
default steps and guidance and distinct seeds. The compute bound is 1 / (seconds of one batch-1 image on
the same backend, measured in this process before the server starts): what a server that runs one
request at a time could do at best. Batching can pass it (goal: >= 0.9x at concurrency 16).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from machine_load import start_watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def post(url: str, payload: dict) -> tuple[int, float]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        status = exc.code
    except (urllib.error.URLError, TimeoutError):
        status = 0  # connection refused / reset / client timeout
    return status, time.perf_counter() - start


def level(url: str, concurrency: int, requests: int, seed0: int) -> dict:
    payloads = [{"prompt": f"a red circle number {i % 7}", "seed": seed0 + i} for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda p: post(url, p), payloads))
    wall = time.perf_counter() - start
    ok = sorted(latency for status, latency in results if status == 200)
    q = statistics.quantiles(ok, n=100, method="inclusive") if len(ok) >= 2 else [ok[0] if ok else float("nan")] * 99
    return {"concurrency": concurrency, "requests": requests, "wall": wall, "ok_rps": len(ok) / wall,
            "p50": q[49], "p95": q[94], "p99": q[98], "statuses": Counter(status for status, _ in results)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/genops-sd-base/latest", help="registry URI or model folder")
    parser.add_argument("--random-init", metavar="PROFILE", help="instead of --model: random weights of a config profile")
    parser.add_argument("--bundle", type=Path, help="an existing export bundle (skips the export)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--overload", type=int, default=48, help="an extra concurrency level beyond capacity (0: none)")
    args = parser.parse_args()

    from sampling import random_init_model

    from serving.bundle import build_bundle
    from serving.sampler import load_sampler
    from training_jobs.launcher import default_tracking_uri, project_root
    from training_jobs.model_inputs import resolve_model_path

    work = Path(tempfile.mkdtemp(prefix="genops-bench-serving-"))
    if args.bundle:
        bundle, source = args.bundle, str(args.bundle)
    else:
        if args.random_init:
            model_dir, source = random_init_model(args.random_init, work / "model"), f"random-init {args.random_init}"
        else:
            model_dir, source = resolve_model_path(args.model, default_tracking_uri(project_root())), args.model
        bundle = work / "bundle"
        build_bundle(bundle, "sd_base", model_dir, {"model": source, "version": 0, "alias": None}, {}, e2e_steps=2)

    machine = start_watch()
    sampler = load_sampler(bundle, "onnx", "cpu")
    sampler.generate(["warm-up"], seed=0)
    singles = []
    for seed in range(4):
        start = time.perf_counter()
        sampler.generate(["a red circle"], seed=seed)
        singles.append(time.perf_counter() - start)
    single = statistics.median(singles)
    del sampler

    port = free_port()
    env = {**os.environ, "GENOPS_SERVE_TOKEN": ""}
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "genops"), "serve", "--bundle", str(bundle), "--port", str(port),
                               "--device", "cpu", "--max-batch", str(args.max_batch), "--queue-size", str(args.queue_size),
                               "--timeout-s", "300"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"genops serve did not become ready: {server.stderr.read()[-2000:]}")
            time.sleep(0.5)
        levels = [1, 4, 16] + ([args.overload] if args.overload else [])
        rows = [level(f"{base}/v1/images", c, max(8, c * args.requests_per_client) if c <= 16 else c, 1000 * c)
                for c in levels]
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    finally:
        server.terminate()
        server.wait(timeout=30)
    machine.report()

    spec = json.loads((bundle / "sampler.json").read_text())
    bound = 1.0 / single
    print(f"\nmodel: {source}; ONNX Runtime backend on CPU, {spec['num_inference_steps']} steps, guidance "
          f"{spec['guidance_scale']}, {spec['allowed_sides'][0]} px; server max batch {args.max_batch}, queue "
          f"{args.queue_size}; torch threads {torch.get_num_threads()}")
    print(f"single-request compute bound: {single:.3f} s/image in-process -> {bound:.2f} req/s")
    print(f"{'concurrency':>11}{'requests':>10}{'ok req/s':>10}{'p50 s':>9}{'p95 s':>9}{'p99 s':>9}  status mix")
    for r in rows:
        mix = ", ".join(f"{s or 'conn-error'}: {n}" for s, n in sorted(r["statuses"].items()))
        print(f"{r['concurrency']:>11}{r['requests']:>10}{r['ok_rps']:>10.2f}{r['p50']:>9.3f}{r['p95']:>9.3f}"
              f"{r['p99']:>9.3f}  {mix}")
    at16 = next(r for r in rows if r["concurrency"] == 16)
    print(f"throughput at 16 / single-request bound: {at16['ok_rps'] / bound:.2f}x (goal >= 0.9x)")
    batches = [line for line in metrics.splitlines() if line.startswith(("genops_batch_images_sum", "genops_batch_images_count"))]
    print("server batches: " + "; ".join(batches))
    errors = {s for r in rows for s in r["statuses"] if s not in (200, 429)}
    print(f"error mix: {'only 429 beyond capacity' if not errors else f'UNEXPECTED statuses {sorted(errors)}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
