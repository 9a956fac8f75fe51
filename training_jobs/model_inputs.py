"""Upstream models a job reads (the VAE under sd_base, sd_base under MiniGPT-5): a folder or a registry URI,
and the lineage tags that name them on the job's run."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import yaml

log = logging.getLogger(__name__)


def resolve_model_path(reference: str, tracking_uri: str | None) -> Path:
    """A local save_pretrained folder for `reference`.

    `reference` is a folder, or `models:/<name>/<version>` / `models:/<name>/latest` /
    `models:/<name>@<alias>` in the MLflow registry: the registered pyfunc model is downloaded once
    into a cache keyed by the tracking URI and resolved version, and the folder of its `weights`
    artifact (as its MLmodel file names it) is returned.
    """
    if not reference.startswith("models:/"):
        path = Path(reference)
        if not path.is_dir():
            raise FileNotFoundError(f"model folder {path} does not exist (a data.* model input of the recipe config)")
        return path
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    name_version = reference.removeprefix("models:/")
    if "@" in name_version:
        name, alias = name_version.split("@", 1)
        version = _version_by_alias(client, reference, name, alias)
    else:
        name, _, version = name_version.partition("/")
        if version in ("", "latest"):
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise FileNotFoundError(f"{reference}: the registry has no version of model {name!r}; train it first")
            version = max(versions, key=lambda v: int(v.version)).version
    cache_root = Path(os.environ.get("GENOPS_MODEL_CACHE", Path.home() / ".cache" / "genops" / "models"))
    key = hashlib.sha256(f"{tracking_uri}|{name}|{version}".encode()).hexdigest()[:16]
    target = cache_root / f"{name}-v{version}-{key}"
    if not (target / "MLmodel").is_file():
        log.info("downloading %s (version %s) to %s", reference, version, target)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another worker finished the same download first
            shutil.rmtree(tmp, ignore_errors=True)
    mlmodel = yaml.safe_load((target / "MLmodel").read_text())
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if "weights" not in artifacts:
        raise FileNotFoundError(f"{reference} (version {version}) is not a genops model: its MLmodel has no 'weights' artifact")
    return target / artifacts["weights"]["path"]


def _version_by_alias(client, reference: str, name: str, alias: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias).version
    except MlflowException as exc:
        raise FileNotFoundError(
            f"{reference}: no version of model {name!r} holds the alias {alias!r} (not evaluated yet, or every "
            f"candidate was refused: see `genops registry status`); pass models:/{name}/latest or models:/{name}/<version> "
            "to use an unpromoted version"
        ) from exc


def default_reference(name: str, tracking_uri: str | None, say=print) -> str:
    """What a user-facing command (sampling, generation) uses when given no model: `models:/<name>@champion`,
    or, when no version of `name` has been promoted, `models:/<name>/latest`, said out loud."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        version = mlflow.MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, "champion").version
    except MlflowException:
        say(f"note: {name} has no champion (see `genops registry status`): using its latest version")
        return f"models:/{name}/latest"
    say(f"using models:/{name}@champion (version {version})")
    return f"models:/{name}@champion"


def model_lineage_tags(reference: str, tracking_uri: str | None, prefix: str) -> dict[str, str]:
    """MLflow run tags naming an upstream model: `<prefix>` = the reference as given and, for a registry
    URI, `<prefix>_name`, `<prefix>_version` (what `latest` or an alias stood for) and `<prefix>_run_id`
    (the run that trained it)."""
    tags = {f"{prefix}": reference}
    if not reference.startswith("models:/"):
        return tags
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    name, _, version = reference.removeprefix("models:/").partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        found = client.get_model_version_by_alias(name, alias)
    elif version in ("", "latest"):
        found = max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    else:
        found = client.get_model_version(name, version)
    tags.update({f"{prefix}_name": name, f"{prefix}_version": str(found.version), f"{prefix}_run_id": found.run_id})
    return tags
