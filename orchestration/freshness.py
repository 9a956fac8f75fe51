"""Only what changed re-runs: code versions of training assets, and which assets a run must materialize.

A training asset's code version is a hash of what decides its result apart from the data: the
profile, the recipe's source, the source of every genops module the recipe imports directly (its
model, losses, loop), and the profile's YAML files (recipe and model). Its data inputs are the
data versions of its upstream assets (the DVC md5 of prepared datasets, the MLflow run id of an
upstream model), which Dagster records with each materialization. Dagster then calls an asset
STALE when its code version or an input's data version differs from what its latest
materialization recorded, MISSING when it was never materialized.

Data assets are DVC stages: DVC knows whether a stage's code, params or inputs changed
(`dvc status`), so a data asset is due when DVC says so, when it was never materialized, or when
dvc.lock records another md5 than the asset's latest data version (a `dvc repro` run by hand).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import logging
from collections.abc import Iterable
from pathlib import Path

import dagster as dg

log = logging.getLogger(__name__)

DATA_GROUP = "data"
ABLATIONS_GROUP = "ablations"
CONFIG_ROOT = Path(__file__).resolve().parents[1] / "training_jobs" / "configs"
GENOPS_PACKAGES = ("components", "training_jobs", "serving")


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def _imported_genops_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.split(".")[0] in GENOPS_PACKAGES}


def recipe_code_version(recipe: str, profile: str, module: str | None = None, model_config: str | None = None) -> str:
    """A hash of the profile, the recipe module and the genops modules it imports, and its profile YAMLs.

    `module` defaults to training_jobs.recipes.<recipe>; `model_config` to the recipe's MODEL_CONFIG
    folder name under configs/models/ (read from the source, without importing the recipe).
    """
    module = module or f"training_jobs.recipes.{recipe}"
    path = _module_file(module)
    if path is None:
        raise ValueError(f"recipe {recipe!r}: module {module} not found")
    source = path.read_text()
    if model_config is None:
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MODEL_CONFIG" for t in node.targets):
                model_config = ast.literal_eval(node.value)
    digest = hashlib.sha256(f"profile={profile}\n".encode())
    files = [path, *(p for m in sorted(_imported_genops_modules(source)) if (p := _module_file(m)))]
    files += [CONFIG_ROOT / recipe / f"{profile}.yaml"]
    if model_config:
        files += [CONFIG_ROOT / "models" / model_config / f"{profile}.yaml"]
    for file in files:
        digest.update(f"{file.name}\0".encode())
        digest.update(file.read_bytes() if file.is_file() else b"<missing>")
    return digest.hexdigest()[:16]


def main_graph(asset_graph) -> set[dg.AssetKey]:
    """Every materializable asset except the ablations group (which has its own jobs)."""
    selection = dg.AssetSelection.all() - dg.AssetSelection.groups(ABLATIONS_GROUP)
    return set(selection.resolve(asset_graph))


def stale_status_resolver(instance: dg.DagsterInstance, asset_graph):
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._time import get_current_datetime

    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
                          instance=instance, asset_graph=asset_graph)
    return CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)


def stale_or_missing(instance: dg.DagsterInstance, asset_graph, keys: Iterable[dg.AssetKey]) -> dict[dg.AssetKey, str]:
    """{key: why} for the keys Dagster calls MISSING or STALE (code version or an input's data version changed)."""
    from dagster._core.definitions.data_version import StaleStatus

    resolver = stale_status_resolver(instance, asset_graph)
    due = {}
    for key in keys:
        status = resolver.get_status(key)
        if status == StaleStatus.MISSING:
            due[key] = "never materialized"
        elif status == StaleStatus.STALE:
            causes = resolver.get_stale_root_causes(key) or resolver.get_stale_causes(key)
            due[key] = "; ".join(sorted({f"{c.asset_key.to_user_string()} {c.reason}" for c in causes})) or "stale"
    return due


def due_with_downstream(instance: dg.DagsterInstance, asset_graph, keys: Iterable[dg.AssetKey]) -> dict[dg.AssetKey, str]:
    """`stale_or_missing` of `keys`, plus everything among `keys` downstream of a due asset: a retrained
    model gets a new data version (its MLflow run), so what reads it is due as well."""
    keys = set(keys)
    due = stale_or_missing(instance, asset_graph, keys)
    if due:
        below = dg.AssetSelection.assets(*due).downstream().resolve(asset_graph) & keys
        for key in sorted(below - set(due), key=lambda k: k.to_user_string()):
            due[key] = "downstream of " + ", ".join(sorted(k.to_user_string() for k in due if k in
                                                           asset_graph.get(key).parent_keys) or ["a due asset"])
    return due


def data_asset_stages(key: dg.AssetKey) -> list[str]:
    """The DVC stages a data asset reproduces (the names orchestration/assets/data.py uses)."""
    name = key.to_user_string()
    if name == "synthetic_world":
        return ["generate"]
    if name == "tokenizer":
        return ["tokenizer"]
    if name.startswith("prepared_"):
        dataset = name.removeprefix("prepared_")
        return [f"validate@{dataset}", f"prepare@{dataset}"]
    raise ValueError(f"data asset {name} maps to no DVC stage")


def stale_data_assets(instance: dg.DagsterInstance, asset_graph, pipeline) -> dict[dg.AssetKey, str]:
    """{key: why} for the data assets that must run: DVC says changed, never materialized, or md5 moved on."""
    keys = sorted(dg.AssetSelection.groups(DATA_GROUP).resolve(asset_graph), key=lambda k: k.to_user_string())
    if not keys:
        return {}
    changed = pipeline.status()
    due = {}
    for key in keys:
        stages = data_asset_stages(key)
        record = instance.get_latest_materialization_event(key)
        if record is None:
            due[key] = "never materialized"
            continue
        dirty = [s for s in stages if s in changed]
        if dirty:
            due[key] = f"dvc status: {', '.join(dirty)} changed"
            continue
        recorded = record.asset_materialization.tags.get("dagster/data_version") if record.asset_materialization else None
        try:
            current = pipeline.version(stages[-1])
        except (FileNotFoundError, KeyError, IndexError) as exc:
            due[key] = f"no DVC version ({exc})"
            continue
        if recorded != current:
            due[key] = f"dvc.lock md5 {current} differs from the recorded data version {recorded}"
    return due


def materialize_due(defs: dg.Definitions, instance: dg.DagsterInstance, pipeline, *, force: bool = False,
                    say=print) -> list[dg.ExecuteInProcessResult]:
    """Materialize what is due in the main graph (everything but the ablations); the runs it made.

    force: every asset of the main graph, in one run. Otherwise two runs at most: first the data assets
    DVC says are due, then the other assets Dagster calls STALE or MISSING after that (a data asset
    that re-ran to the same md5 leaves its dependents fresh). Nothing due: no run at all.
    """
    graph = defs.resolve_asset_graph()
    job = defs.resolve_implicit_global_asset_job_def()
    main = main_graph(graph)
    if force:
        say(f"--force: materializing all {len(main)} assets of the main graph (the ablations group is left out)")
        return [job.execute_in_process(instance=instance, asset_selection=sorted(main), raise_on_error=False,
                                       tags={"genops/trigger": "demo --force"})]
    results = []
    data_keys = set(dg.AssetSelection.groups(DATA_GROUP).resolve(graph)) & main
    data_due = {k: why for k, why in stale_data_assets(instance, graph, pipeline).items() if k in data_keys}
    for key, why in sorted(data_due.items()):
        say(f"  due: {key.to_user_string()} ({why})")
    if data_due:
        result = job.execute_in_process(instance=instance, asset_selection=sorted(data_due), raise_on_error=False,
                                        tags={"genops/trigger": "demo"})
        results.append(result)
        if not result.success:
            return results
    rest_due = due_with_downstream(instance, graph, main - data_keys)
    for key, why in sorted(rest_due.items()):
        say(f"  due: {key.to_user_string()} ({why})")
    if rest_due:
        results.append(job.execute_in_process(instance=instance, asset_selection=sorted(rest_due),
                                              raise_on_error=False, tags={"genops/trigger": "demo"}))
    up_to_date = len(main) - len(data_due) - len(rest_due)
    say(f"{up_to_date} of {len(main)} assets up to date (skipped); `genops demo --force` re-runs them all")
    return results
