"""Evaluation-gated promotion in the MLflow model registry: aliases `champion` / `previous-champion`.

A promotion policy per registered model lives in the repo (`mlflow/policies/<model>.yaml`): the
primary metric and its direction, the minimum improvement over the current champion, and hard
gates (floors and ceilings on other metrics). After evaluation, `promote` decides for one version:

- every gate passes and the candidate beats the champion by at least `min_improvement` (or there is
  no champion yet): the candidate gets `champion`, the old champion `previous-champion`;
- otherwise the candidate is tagged `genops.promotion.decision=rejected` with the reason.

Every decision (promotions, rejections, rollbacks) is written to the version's tags and appended to
the model's promotion history, a JSONL artifact of one MLflow run per model in the
`genops-registry` experiment. Aliases, never the deprecated stages.

Two promotions of the same model never interleave: the read-decide-write section holds an
exclusive file lock (beside the SQLite store, or under ~/.cache/genops/locks for a tracking
server), and right before the alias is moved the champion is read again (compare-and-set): if it
changed, the decision is taken again against the new champion. The file lock serializes promoters
on one machine; promoters on several machines against one tracking server rely on the re-check
alone, which narrows the race to the two alias writes (the production deployment runs promotions
from the single Dagster daemon).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous-champion"
TAG_DECISION = "genops.promotion.decision"
TAG_REASON = "genops.promotion.reason"
TAG_AT = "genops.promotion.at"
TAG_AGAINST = "genops.promotion.champion_before"
EVAL_TAG_PREFIX = "eval."
HISTORY_EXPERIMENT = "genops-registry"
HISTORY_FILE = "promotion_history.jsonl"
POLICY_DIR = Path(__file__).resolve().parents[1] / "mlflow" / "policies"


@dataclass(frozen=True)
class Gate:
    """A hard gate: `metric` must be >= `min` and/or <= `max`."""

    metric: str
    """Evaluation metric the gate reads (a key of the evaluation's headline metrics)."""
    min: float | None = None
    """Floor: the candidate is blocked below it."""
    max: float | None = None
    """Ceiling: the candidate is blocked above it (e.g. an export parity error)."""
    when_present: bool = False
    """Skip the gate when the metric is absent (e.g. export parity before an export exists);
    otherwise a missing metric blocks the candidate."""

    def check(self, metrics: dict[str, float]) -> str | None:
        """None when the gate passes, else why it blocks."""
        if self.metric not in metrics:
            return None if self.when_present else f"gate {self.metric}: metric missing from the evaluation"
        value = metrics[self.metric]
        if not math.isfinite(value):
            return f"gate {self.metric}: value {value} is not finite"
        if self.min is not None and value < self.min:
            return f"gate {self.metric}: {value:.4g} < floor {self.min:.4g}"
        if self.max is not None and value > self.max:
            return f"gate {self.metric}: {value:.4g} > ceiling {self.max:.4g}"
        return None


@dataclass(frozen=True)
class PromotionPolicy:
    """What a candidate version must show to become `champion` (one YAML file per registered model)."""

    model: str
    """Registered model name (e.g. genops-sd-base)."""
    primary_metric: str
    """The metric candidates are compared on."""
    direction: str = "higher"
    """`higher` or `lower` is better for the primary metric."""
    min_improvement: float = 0.0
    """How much better than the champion (in the metric's units) a candidate must be."""
    gates: tuple[Gate, ...] = field(default_factory=tuple)
    """Hard gates every candidate must pass, champion or not."""

    def __post_init__(self) -> None:
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"policy {self.model}: direction must be 'higher' or 'lower', got {self.direction!r}")
        if self.min_improvement < 0:
            raise ValueError(f"policy {self.model}: min_improvement must be >= 0, got {self.min_improvement}")

    def improvement(self, candidate: float, champion: float) -> float:
        """How much better the candidate is (positive = better), in the primary metric's units."""
        return candidate - champion if self.direction == "higher" else champion - candidate


def policy_path(model: str, policy_dir: Path | None = None) -> Path:
    return Path(policy_dir or POLICY_DIR) / f"{model}.yaml"


def load_policy(path: str | Path) -> PromotionPolicy:
    """Read a policy YAML; every error names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"promotion policy {path} does not exist (one YAML per model in mlflow/policies/)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise TypeError(f"{path}: a policy is a mapping, got {type(raw).__name__}")
    known = {"model", "primary_metric", "direction", "min_improvement", "gates"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}; allowed {sorted(known)}")
    for key in ("model", "primary_metric"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ValueError(f"{path}: field `{key}` must be a non-empty string")
    gates = []
    for i, g in enumerate(raw.get("gates") or []):
        if not isinstance(g, dict) or "metric" not in g:
            raise ValueError(f"{path}: gates[{i}] must be a mapping with a `metric`")
        extra = set(g) - {"metric", "min", "max", "when_present"}
        if extra:
            raise ValueError(f"{path}: gates[{i}] has unknown field(s) {sorted(extra)}")
        if g.get("min") is None and g.get("max") is None:
            raise ValueError(f"{path}: gates[{i}] ({g['metric']}) needs a `min` or a `max`")
        gates.append(Gate(str(g["metric"]), _float(g.get("min"), path, f"gates[{i}].min"),
                          _float(g.get("max"), path, f"gates[{i}].max"), bool(g.get("when_present", False))))
    try:
        return PromotionPolicy(raw["model"], raw["primary_metric"], raw.get("direction", "higher"),
                               _float(raw.get("min_improvement", 0.0), path, "min_improvement"), tuple(gates))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def _float(value: Any, path: Path, where: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: field `{where}` must be a number, got {value!r}") from err


@dataclass(frozen=True)
class Decision:
    """One registry decision, as written to the version's tags and the promotion history."""

    model: str
    version: str
    action: str
    """promoted | rejected | rolled-back | unchanged (the candidate already is the champion)"""
    reason: str
    champion_before: str | None
    champion_after: str | None
    metrics: dict[str, float]
    at: float

    def to_json(self) -> dict:
        return asdict(self)


def registry_client(tracking_uri: str | None):
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _alias_version(client, model: str, alias: str) -> str | None:
    aliases = client.get_registered_model(model).aliases or {}
    version = aliases.get(alias)
    return str(version) if version is not None else None


def lock_path(tracking_uri: str, model: str) -> Path:
    """The promotion lock of one model: beside a SQLite store, else in the user's cache."""
    name = f"registry-{hashlib.sha256(f'{tracking_uri}|{model}'.encode()).hexdigest()[:16]}.lock"
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent / name
    return Path.home() / ".cache" / "genops" / "locks" / name


@contextlib.contextmanager
def promotion_lock(tracking_uri: str, model: str) -> Iterator[None]:
    """Exclusive lock held while one model's aliases are read, decided on and moved."""
    path = lock_path(tracking_uri, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def evaluation_metrics(client, model: str, version: str) -> dict[str, float]:
    """The evaluation metrics recorded on a version (`eval.<metric>` tags written by the evaluation)."""
    tags = client.get_model_version(model, version).tags or {}
    out = {}
    for key, value in tags.items():
        if key.startswith(EVAL_TAG_PREFIX):
            try:
                out[key.removeprefix(EVAL_TAG_PREFIX)] = float(value)
            except ValueError:
                continue  # non-numeric evaluation facts (benchmark md5, extractor name)
    return out


def record_evaluation(client, model: str, version: str, metrics: dict[str, float], facts: dict[str, str]) -> None:
    """Write an evaluation's headline metrics (`eval.<metric>`) and facts on the version's tags."""
    for key, value in metrics.items():
        client.set_model_version_tag(model, version, f"{EVAL_TAG_PREFIX}{key}", repr(float(value)))
    for key, value in facts.items():
        client.set_model_version_tag(model, version, f"{EVAL_TAG_PREFIX}{key}", str(value))


def decide(policy: PromotionPolicy, metrics: dict[str, float], champion_metrics: dict[str, float] | None,
           champion: str | None) -> tuple[bool, str]:
    """(promote?, reason) for a candidate's metrics against the champion's under `policy`."""
    blocked = [reason for gate in policy.gates if (reason := gate.check(metrics))]
    if blocked:
        return False, "; ".join(blocked)
    key = policy.primary_metric
    if key not in metrics:
        return False, f"primary metric {key} missing from the evaluation"
    if champion is None:
        return True, f"first champion ({key} {metrics[key]:.4g}, all gates pass)"
    if champion_metrics is None or key not in champion_metrics:
        return True, f"champion v{champion} has no {key}; the evaluated candidate replaces it"
    gain = policy.improvement(metrics[key], champion_metrics[key])
    if gain >= policy.min_improvement and gain > 0:
        return True, (f"{key} {metrics[key]:.4g} vs champion v{champion} {champion_metrics[key]:.4g} "
                      f"({policy.direction} is better, +{gain:.4g} >= {policy.min_improvement:.4g})")
    return False, (f"not better than champion v{champion}: {key} {metrics[key]:.4g} vs {champion_metrics[key]:.4g} "
                   f"({policy.direction} is better; gain {gain:+.4g} < required {max(policy.min_improvement, 0):.4g}"
                   f"{' and > 0' if policy.min_improvement == 0 else ''})")


def _tag_decision(client, decision: Decision) -> None:
    client.set_model_version_tag(decision.model, decision.version, TAG_DECISION, decision.action)
    client.set_model_version_tag(decision.model, decision.version, TAG_REASON, decision.reason[:4900])
    client.set_model_version_tag(decision.model, decision.version, TAG_AT, f"{decision.at:.3f}")
    client.set_model_version_tag(decision.model, decision.version, TAG_AGAINST, decision.champion_before or "none")


def _history_run(client, model: str) -> str:
    """The run holding a model's promotion history (made on first use)."""
    import mlflow

    from training_jobs.tracking import artifact_location

    experiment = client.get_experiment_by_name(HISTORY_EXPERIMENT)
    if experiment is None:
        experiment_id = client.create_experiment(HISTORY_EXPERIMENT,
                                                 artifact_location=artifact_location(mlflow.get_tracking_uri()))
    else:
        experiment_id = experiment.experiment_id
    runs = client.search_runs([experiment_id], filter_string=f"tags.`genops.promotion_history` = '{model}'", max_results=1)
    if runs:
        return runs[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"promotion-history-{model}", tags={"genops.promotion_history": model})
    client.set_terminated(run.info.run_id, status="FINISHED")
    client.set_registered_model_tag(model, "genops.promotion_history_run", run.info.run_id)
    return run.info.run_id


def read_history(client, model: str) -> list[dict]:
    """Every decision recorded for `model`, oldest first."""
    run_id = _history_run(client, model)
    if HISTORY_FILE not in {a.path for a in client.list_artifacts(run_id)}:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, HISTORY_FILE, tmp)
        return [json.loads(line) for line in Path(local).read_text().splitlines() if line.strip()]


def _append_history(client, decision: Decision) -> None:
    history = read_history(client, decision.model)
    history.append(decision.to_json())
    run_id = _history_run(client, decision.model)
    client.log_text(run_id, "".join(json.dumps(row, sort_keys=True) + "\n" for row in history), HISTORY_FILE)
    client.log_text(run_id, history_markdown(decision.model, history), "promotion_history.md")


def history_markdown(model: str, history: list[dict]) -> str:
    lines = [f"# Promotion history of {model}", "", "| when (UTC) | version | action | champion before -> after | reason |",
             "|---|---|---|---|---|"]
    for row in history:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["at"]))
        lines.append(f"| {when} | v{row['version']} | {row['action']} | {row['champion_before'] or '-'} -> "
                     f"{row['champion_after'] or '-'} | {row['reason'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def promote(
    tracking_uri: str,
    policy: PromotionPolicy,
    version: str,
    metrics: dict[str, float] | None = None,
    _before_write: Callable[[], None] | None = None,
) -> Decision:
    """Decide on `version` of `policy.model` and apply the decision (alias move or rejection tag).

    `metrics` default to the version's recorded evaluation (`eval.*` tags). `_before_write` runs
    between the last read of the champion and the alias move (tests widen the race window with it).
    """
    client = registry_client(tracking_uri)
    model, version = policy.model, str(version)
    client.get_model_version(model, version)  # a clear MLflow error for an unknown version
    if metrics is None:
        metrics = evaluation_metrics(client, model, version)
    with promotion_lock(tracking_uri, model):
        while True:
            champion = _alias_version(client, model, CHAMPION)
            if champion == version:  # re-evaluated champion: nothing to decide, its promotion tags stay
                decision = Decision(model, version, "unchanged", f"v{version} is already the champion",
                                    champion, champion, metrics, time.time())
                break
            champion_metrics = evaluation_metrics(client, model, champion) if champion else None
            ok, reason = decide(policy, metrics, champion_metrics, champion)
            if _alias_version(client, model, CHAMPION) != champion:  # compare-and-set: someone moved it
                log.info("champion of %s changed while deciding on v%s; deciding again", model, version)
                continue
            if _before_write is not None:
                _before_write()
            if ok:
                if champion is not None:
                    client.set_registered_model_alias(model, PREVIOUS, champion)
                client.set_registered_model_alias(model, CHAMPION, version)
            decision = Decision(model, version, "promoted" if ok else "rejected", reason, champion,
                                version if ok else champion, metrics, time.time())
            break
        if decision.action != "unchanged":
            _tag_decision(client, decision)
        _append_history(client, decision)
    log.info("%s v%s %s: %s", model, version, decision.action, decision.reason)
    return decision


def rollback(tracking_uri: str, model: str) -> Decision:
    """Give `champion` back to `previous-champion`; the rolled-back version is tagged, the history says so.

    `previous-champion` then moves to the champion before that one in the history (or is removed).
    """
    client = registry_client(tracking_uri)
    with promotion_lock(tracking_uri, model):
        champion = _alias_version(client, model, CHAMPION)
        previous = _alias_version(client, model, PREVIOUS)
        if champion is None:
            raise ValueError(f"{model} has no champion to roll back")
        if previous is None:
            raise ValueError(f"{model} has no previous-champion: v{champion} is the only champion it ever had")
        client.set_registered_model_alias(model, CHAMPION, previous)
        history = read_history(client, model)
        # The champion `previous` replaced, if any: the previous-champion after the rollback.
        before = next((row["champion_before"] for row in reversed(history)
                       if row["action"] == "promoted" and row["version"] == previous), None)
        if before and before not in (champion, previous):
            client.set_registered_model_alias(model, PREVIOUS, before)
        else:
            client.delete_registered_model_alias(model, PREVIOUS)
        decision = Decision(model, champion, "rolled-back", f"rolled back: champion returned to v{previous}",
                            champion, previous, evaluation_metrics(client, model, champion), time.time())
        _tag_decision(client, decision)
        _append_history(client, decision)
    return decision


@dataclass(frozen=True)
class ModelStatus:
    """A registered model's champion with its evaluation metrics and lineage."""

    model: str
    champion: str | None
    previous_champion: str | None
    latest_version: str | None
    metrics: dict[str, float]
    source_run: str | None
    dataset_versions: dict[str, str]
    git_commit: str | None
    benchmark: str | None


def status(tracking_uri: str, models: list[str] | None = None) -> list[ModelStatus]:
    """The champion of every registered model (or of `models`), its metrics and lineage."""
    client = registry_client(tracking_uri)
    names = models or sorted(m.name for m in client.search_registered_models())
    out = []
    for name in names:
        registered = client.get_registered_model(name)
        aliases = registered.aliases or {}
        versions = client.search_model_versions(f"name = '{name}'")
        latest = str(max(int(v.version) for v in versions)) if versions else None
        champion = aliases.get(CHAMPION)
        tags: dict[str, str] = {}
        if champion is not None:
            tags = client.get_model_version(name, str(champion)).tags or {}
        out.append(ModelStatus(
            model=name,
            champion=str(champion) if champion is not None else None,
            previous_champion=str(aliases[PREVIOUS]) if PREVIOUS in aliases else None,
            latest_version=latest,
            metrics=evaluation_metrics(client, name, str(champion)) if champion is not None else {},
            source_run=tags.get("source_run_id"),
            dataset_versions={k.removeprefix("dataset_version."): v for k, v in tags.items() if k.startswith("dataset_version.")},
            git_commit=tags.get("git_commit"),
            benchmark=tags.get(f"{EVAL_TAG_PREFIX}benchmark_md5"),
        ))
    return out


def render_status(rows: list[ModelStatus]) -> str:
    """Plain text, one block per model (what `genops registry status` prints)."""
    if not rows:
        return "the registry holds no models\n"
    lines = []
    for row in rows:
        head = f"{row.model}: champion " + (f"v{row.champion}" if row.champion else "none")
        head += f" (previous v{row.previous_champion})" if row.previous_champion else ""
        head += f", latest v{row.latest_version}" if row.latest_version else ""
        lines.append(head)
        if row.champion:
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(row.metrics.items())) or "none recorded"
            lines.append(f"  metrics: {metrics}")
            lines.append(f"  run {row.source_run or 'unknown'}, git {row.git_commit or 'unknown'}")
            data = ", ".join(f"{k}@{v[:12]}" for k, v in sorted(row.dataset_versions.items())) or "none recorded"
            lines.append(f"  datasets: {data}" + (f"; benchmark md5 {row.benchmark}" if row.benchmark else ""))
    return "\n".join(lines) + "\n"


def registry_status_text(tracking_uri: str | None = None) -> str:
    """`genops registry status` as text (`genops demo` prints it at its end)."""
    from training_jobs.launcher import default_tracking_uri, project_root

    return render_status(status(tracking_uri or default_tracking_uri(project_root())))
