# genops training image: CUDA runtime, Python 3.11, torch (CUDA wheel), the locked dependency set and
# the genops package. One image for the Ray head/workers (KubeRay, compose), the Dagster code location
# and run pods, and `genops train` jobs.
#   docker build -f infra/docker/training.Dockerfile -t genops-training:0.1.0 .
# The lock pins torch==2.13.0+cpu (the CPU wheel of the development machines); here the same torch
# version comes from the CUDA index instead, and every other package at its locked version.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    GENOPS_ROOT=/app \
    GENOPS_ENV=production \
    DAGSTER_HOME=/opt/dagster/home

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv git ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && groupadd --gid 1000 genops && useradd --uid 1000 --gid genops --create-home genops

WORKDIR /app

# Dependencies first (a layer that changes only when the lock does).
COPY requirements.lock /app/requirements.lock
COPY infra/docker/deploy-requirements.txt /app/infra/docker/deploy-requirements.txt
RUN grep -v -E '^torch==' requirements.lock > /tmp/lock-without-torch.txt \
    && pip install --no-deps "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && pip install --no-deps -r /tmp/lock-without-torch.txt \
    && pip install -c /tmp/lock-without-torch.txt -r infra/docker/deploy-requirements.txt

# The package (editable, as `make install` does, so GENOPS_ROOT=/app is the project root with dvc.yaml).
COPY pyproject.toml README.md dvc.yaml params.yaml /app/
COPY .dvc/config /app/.dvc/config
COPY components /app/components
COPY training_jobs /app/training_jobs
COPY orchestration /app/orchestration
COPY serving /app/serving
COPY infra/dagster/dagster.yaml /opt/dagster/home/dagster.yaml
RUN pip install --no-deps -e . \
    && mkdir -p /app/data /app/ray_results /app/outputs /opt/dagster/home \
    && chown -R genops:genops /app /opt/dagster/home

USER genops
# The code location's gRPC port (compose, Helm user deployment) and Ray's ports come from the commands.
EXPOSE 4000
CMD ["genops", "--help"]
