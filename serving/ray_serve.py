"""The image service as a Ray Serve deployment: the same FastAPI app (`serving.http.create_app`), scaled by
Ray over replicas (and GPUs) of a Ray cluster.

    serve run infra/ray-serve/serve.yaml          # config: bundle, batching, replicas, resources
    # or from Python: serve.run(build_app({"bundle": "/models/sd_base-champion"}))

Each replica verifies the bundle, creates its sessions once and runs its own bounded queue and batcher,
so admission (422/401/413/429) and /metrics behave as under `genops serve`; Ray Serve's proxy spreads
requests over replicas and its autoscaler can add replicas on queue length.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from ray import serve

from serving.http import ServiceSettings, create_app


@serve.deployment(name="genops-images", ray_actor_options={"num_cpus": 1})
@serve.ingress()
class ImageDeployment:
    """One replica: the service settings; the app (and its sampler) is built on the replica."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings_from(settings)

    def __serve_build_asgi_app__(self):
        return create_app(self.settings)


def settings_from(args: dict[str, Any]) -> ServiceSettings:
    known = {f.name for f in fields(ServiceSettings)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"serve config args: unknown field(s) {unknown}; known: {sorted(known)}")
    if "bundle" not in args:
        raise ValueError("serve config args: 'bundle' (the export bundle folder on every node) is required")
    return ServiceSettings(**{**args, "bundle": Path(args["bundle"])})


def build_app(args: dict[str, Any]):
    """Application builder for `serve run` / serve.yaml (`import_path: serving.ray_serve:build_app`)."""
    settings_from(args)  # fail at deploy time, on the driver, for a bad config
    return ImageDeployment.bind(dict(args))
