# MLflow tracking server of the compose stack: Postgres backend store, artifacts proxied to MinIO (S3).
#   docker build -f infra/docker/mlflow.Dockerfile -t genops-mlflow:0.1.0 .
FROM python:3.11.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
# mlflow at the version the clients use (requirements.lock); psycopg2 for Postgres, boto3 for S3/MinIO.
RUN pip install "mlflow==3.17.2" "psycopg2-binary>=2.9,<3" "boto3>=1.34,<2" \
    && useradd --uid 1000 --create-home mlflow

USER mlflow
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
