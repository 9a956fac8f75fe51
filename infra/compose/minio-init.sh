#!/bin/sh
# One-shot bucket set-up for the compose stack (idempotent): MLflow artifacts and the DVC remote.
set -eu
mc alias set genops http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing genops/mlflow
mc mb --ignore-existing genops/dvc
echo "buckets ready: mlflow (MLflow artifacts), dvc (DVC remote s3://dvc/genops)"
