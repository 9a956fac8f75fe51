"""Connecting to Ray: a local instance on this machine's CPUs by default, a cluster via RAY_ADDRESS.

One place decides, so the launcher, the Ray Data validation and the tests all start Ray the same way.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def connect_ray(num_cpus: int | None = None) -> dict[str, float]:
    """Start (or join) Ray once per process and return the cluster's resources.

    Without RAY_ADDRESS a local instance starts on this machine (no dashboard, quiet logs); with it,
    the driver joins that cluster (`ray://host:10001` for Ray Client, or `auto`/`host:6379` on a
    cluster node; Ray Jobs and KubeRay set it for you).
    """
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            log.info("joining Ray cluster at RAY_ADDRESS=%s", address)
            ray.init(address=address, log_to_driver=False)
        else:
            # Ray starts workers at niceness 15, so on a shared machine a training job would lose the CPU
            # to any other process (the Dagster driver, a second terminal); here the job is the work.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=True,
                logging_level=logging.WARNING,
            )
    return dict(ray.cluster_resources())
