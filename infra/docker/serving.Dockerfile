# genops serving image: the HTTP image service (`genops serve`, serving/http.py) over an export bundle,
# ONNX Runtime with the CUDA execution provider. No training dependencies (Dagster, MLflow, Ray, DVC,
# PEFT, Triton): infra/docker/serving-requirements.txt is the whole list, at requirements.lock's versions.
#   docker build -f infra/docker/serving.Dockerfile -t genops-serving:0.1.0 .
#   docker run --gpus all -p 8000:8000 -v /path/to/bundle:/models/bundle:ro genops-serving:0.1.0
# The bundle comes from `genops export sd_base --out DIR` (sha256 manifest, verified at start-up).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    GENOPS_BUNDLE=/models/bundle

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && groupadd --gid 1000 genops && useradd --uid 1000 --gid genops --create-home genops

WORKDIR /app

COPY requirements.lock /app/requirements.lock
COPY infra/docker/serving-requirements.txt /app/serving-requirements.txt
# torch from the CPU index (tensors and scheduler math only; the graphs run in onnxruntime-gpu), then the
# rest resolved with the lock as constraints, so every package lands at its locked version.
RUN grep -v -E '^torch==' requirements.lock > /tmp/lock-without-torch.txt \
    && pip install --no-deps "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && grep -v -E '^torch==' serving-requirements.txt > /tmp/serving-without-torch.txt \
    && pip install -c /tmp/lock-without-torch.txt -r /tmp/serving-without-torch.txt

# The package without its dependencies: only serving/ and the components it imports are used; the
# `genops` command line imports each command's libraries lazily, so `genops serve` needs none of the rest.
COPY pyproject.toml README.md /app/
COPY components /app/components
COPY serving /app/serving
COPY training_jobs /app/training_jobs
COPY orchestration /app/orchestration
RUN pip install --no-deps . && rm -rf /app/build

USER genops
EXPOSE 8000
# /readyz answers 200 once the bundle's checksums are verified and one warm-up image has run.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status == 200 else 1)"]
CMD ["sh", "-c", "exec genops serve --bundle \"$GENOPS_BUNDLE\" --host 0.0.0.0 --port 8000 --backend onnx --device auto"]
