"""Registered versions are MLflow models-from-code: loading one imports genops code and unpickles nothing."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from PIL import Image

from components.config import load_config
from components.models.autoencoder import AutoencoderConfig, build_autoencoder
from training_jobs.pyfunc_models import AutoencoderModel
from training_jobs.tracking import TrackingConfig, model_code_file, register_model

PROJECT = Path(__file__).resolve().parents[2]


def test_a_registered_version_loads_from_code_without_a_pickle(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    vae = build_autoencoder(load_config(AutoencoderConfig, PROJECT / "training_jobs/configs/models/vae/tiny.yaml"))
    vae.save_pretrained(tmp_path / "vae")
    cfg = TrackingConfig(tracking_uri=uri, registered_model="genops-vae-test", dataset_versions={"x": "md5"})
    version = register_model(cfg, run_id, tmp_path / "vae", AutoencoderModel(), {"loss": 1.0})

    local = Path(mlflow.artifacts.download_artifacts(f"models:/genops-vae-test/{version}", dst_path=str(tmp_path / "dl")))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "model_code_path" in flavor and "python_model" not in flavor  # code, not a cloudpickle file
    assert not list(local.rglob("*.pkl"))
    code = next(local.rglob("autoencodermodel_model.py")).read_text()
    assert "from training_jobs.pyfunc_models import AutoencoderModel" in code

    model = mlflow.pyfunc.load_model(f"models:/genops-vae-test/{version}")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    out = model.predict(pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode()]}))
    assert len(out["latent"][0]) == 4  # (C, h, w) latent of one image


def test_a_wrapper_defined_in_a_function_is_refused(tmp_path):
    class Local(mlflow.pyfunc.PythonModel):
        pass

    with pytest.raises(ValueError, match="module-level class"):
        model_code_file(Local(), tmp_path)
    with pytest.raises(FileNotFoundError, match="models-from-code"):
        model_code_file(tmp_path / "missing.py", tmp_path)
