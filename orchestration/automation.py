"""Dagster automation: scheduled retraining, new-data runs, failure alerts.

- `retraining_schedule` (cron from orchestration/automation.yaml, weekly by default) runs
  `retraining_job`: every asset except the "ablations" group, data through training and beyond, with
  the tag `genops/trigger=retraining_schedule`.
- `new_data_sensor` watches each dataset's raw source (params.yaml `datasets.<name>.src`, plus
  `<inbox>/<name>/` when an inbox is configured) and the raw md5 dvc.lock records for it. Its cursor
  holds one fingerprint per dataset; a changed fingerprint requests a run of `prepared_<name>` and
  exactly the assets downstream of it (the ablations group excepted). The first evaluation only
  records the fingerprints: switching the sensor on does not retrain everything.
- `run_failure_sensor` writes an alert (run id, job, failed assets, error) to the log on every failed
  run and, when a webhook is configured, posts it as Slack-compatible JSON (`{"text": ..., "blocks": ...}`).

Every value can be overridden by an environment variable (see automation.yaml), read when the
schedule or sensor evaluates, so a deployment configures them without editing the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from orchestration.resources import DvcResource

log = logging.getLogger(__name__)

CONFIG_FILE = Path(__file__).with_name("automation.yaml")
ABLATIONS_GROUP = "ablations"
TRIGGER_TAG = "genops/trigger"
ENV_OVERRIDES = {
    "retraining_cron": "GENOPS_RETRAIN_CRON",
    "retraining_timezone": "GENOPS_RETRAIN_TIMEZONE",
    "inbox": "GENOPS_INBOX",
    "webhook_url": "GENOPS_ALERT_WEBHOOK",
}


@dataclass
class AutomationConfig:
    retraining_cron: str = "0 3 * * 1"
    """Cron of the retraining schedule (weekly, Mondays 03:00, by default)."""
    retraining_timezone: str = "UTC"
    """Timezone the cron is read in."""
    inbox: str | None = None
    """Folder whose `<dataset>/` subfolders new_data_sensor watches (None: only the datasets' sources)."""
    webhook_url: str | None = None
    """Slack-compatible webhook the failure alerts are posted to (None: log only)."""
    new_data_interval_seconds: int = 60
    """How often new_data_sensor looks."""


def load_automation_config(path: Path = CONFIG_FILE) -> AutomationConfig:
    """automation.yaml with the environment's overrides; unknown keys are an error naming the file."""
    values = (yaml.safe_load(Path(path).read_text()) or {}) if Path(path).is_file() else {}
    unknown = set(values) - set(AutomationConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(AutomationConfig.__dataclass_fields__)}")
    for key, env in ENV_OVERRIDES.items():
        if os.environ.get(env):
            values[key] = os.environ[env]
    return AutomationConfig(**values)


def whole_graph() -> dg.AssetSelection:
    """Every asset of the main graph: all groups but the ablations, which have their own jobs."""
    return dg.AssetSelection.all() - dg.AssetSelection.groups(ABLATIONS_GROUP)


retraining_job = dg.define_asset_job(
    "retraining_job",
    selection=whole_graph(),
    description="The whole graph except the ablations: data, training, evaluation, promotion, export.",
)


def build_retraining_schedule(config: AutomationConfig | None = None) -> dg.ScheduleDefinition:
    config = config or load_automation_config()

    @dg.schedule(name="retraining_schedule", cron_schedule=config.retraining_cron, job=retraining_job,
                 execution_timezone=config.retraining_timezone,
                 description=f"Re-run the whole graph (not the ablations) on cron {config.retraining_cron!r}.")
    def retraining_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        when = context.scheduled_execution_time
        return dg.RunRequest(
            run_key=f"retraining-{when.isoformat()}" if when else None,
            tags={TRIGGER_TAG: "retraining_schedule", "genops/scheduled_for": when.isoformat() if when else "now"},
        )

    return retraining_schedule


# --- new data -------------------------------------------------------------------------------------------


def _folder_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of every file under `folder` (stat only, no reads)."""
    digest = hashlib.sha256()
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    else:
        digest.update(b"<missing>")
    return digest.hexdigest()


def _raw_lock_md5(lock: dict[str, Any], dataset: str, src: str) -> str | None:
    """The md5 dvc.lock records for the raw source of `dataset` (a dep of its validate stage)."""
    for dep in (lock.get("stages", {}).get(f"validate@{dataset}") or {}).get("deps", []):
        if dep.get("path") == src:
            return dep.get("md5")
    return None


def raw_fingerprints(root: Path, inbox: str | None = None) -> dict[str, str]:
    """{dataset: fingerprint of its raw data}: the source folder, the inbox folder, the DVC md5."""
    params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    lock_path = root / "dvc.lock"
    lock = (yaml.safe_load(lock_path.read_text()) or {}) if lock_path.is_file() else {}
    out = {}
    for name, spec in (params.get("datasets") or {}).items():
        src = str(spec.get("src", f"data/raw/{name}"))
        parts = [_folder_fingerprint(root / src), str(_raw_lock_md5(lock, name, src))]
        if inbox:
            parts.append(_folder_fingerprint(Path(inbox) / name))
        out[name] = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return out


def downstream_of_datasets(asset_graph, datasets: list[str]) -> list[dg.AssetKey]:
    """`prepared_<name>` of each dataset and every asset downstream of them, minus the ablations group."""
    roots = dg.AssetSelection.assets(*(dg.AssetKey(f"prepared_{name}") for name in datasets))
    selection = roots.downstream() - dg.AssetSelection.groups(ABLATIONS_GROUP)
    return sorted(selection.resolve(asset_graph), key=lambda k: k.to_user_string())


@dg.sensor(name="new_data_sensor", target=whole_graph(), minimum_interval_seconds=load_automation_config().new_data_interval_seconds,
           description="New or changed raw data (a source folder, the inbox, a new DVC version) re-runs exactly what depends on it.")
def new_data_sensor(context: dg.SensorEvaluationContext, dvc: DvcResource) -> dg.SensorResult | dg.SkipReason:
    config = load_automation_config()
    current = raw_fingerprints(Path(dvc.repo_root), config.inbox)
    previous = json.loads(context.cursor) if context.cursor else None
    if previous is None:
        context.update_cursor(json.dumps(current, sort_keys=True))
        return dg.SkipReason(f"first look: recorded the raw data of {len(current)} datasets")
    changed = sorted(name for name, fp in current.items() if previous.get(name) != fp)
    if not changed:
        return dg.SkipReason("no raw dataset changed")
    keys = downstream_of_datasets(context.repository_def.asset_graph, changed)
    context.log.info(f"new data in {changed}: requesting {[k.to_user_string() for k in keys]}")
    request = dg.RunRequest(
        run_key="new-data-" + hashlib.sha256(json.dumps({n: current[n] for n in changed}).encode()).hexdigest()[:16],
        asset_selection=keys,
        tags={TRIGGER_TAG: "new_data_sensor", "genops/changed_datasets": ",".join(changed)},
    )
    return dg.SensorResult(run_requests=[request], cursor=json.dumps(current, sort_keys=True))


# --- failure alerts -------------------------------------------------------------------------------------


def failure_alert(run_id: str, job_name: str, failures: list[tuple[str, str]]) -> dict[str, Any]:
    """Slack-compatible JSON for a failed run: `failures` is [(asset or step, error message)]."""
    assets = ", ".join(name for name, _ in failures) or "(no step failed: the run failed before or after its steps)"
    errors = "\n".join(f"- {name}: {message.strip()[:500]}" for name, message in failures)
    text = f"genops run {run_id} of {job_name} failed. Failed asset(s): {assets}." + (f"\n{errors}" if errors else "")
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        "run_id": run_id,
        "job": job_name,
        "failed_assets": [name for name, _ in failures],
        "errors": {name: message for name, message in failures},
    }


def post_alert(url: str, payload: dict[str, Any], timeout: float = 10.0) -> int:
    """POST the alert as JSON; returns the HTTP status (raises naming the URL when it fails)."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"posting the failure alert to webhook {url} (webhook_url / GENOPS_ALERT_WEBHOOK) failed: {exc}") from exc


@dg.run_failure_sensor(name="run_failure_sensor", description="Alert (log, and webhook when configured) on every failed run.")
def run_failure_sensor(context: dg.RunFailureSensorContext) -> None:
    failures = []
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error
        message = error.message if error else "unknown error"
        if error and error.cause:
            message = f"{message} (cause: {error.cause.message})"
        failures.append((event.step_key, message))
    if not failures and context.failure_event.message:
        failures.append(("run", context.failure_event.message))
    payload = failure_alert(context.dagster_run.run_id, context.dagster_run.job_name, failures)
    context.log.error(payload["text"])
    log.error("%s", payload["text"])
    url = load_automation_config().webhook_url
    if url:
        status = post_alert(url, payload)
        context.log.info(f"failure alert posted to {url} (HTTP {status})")


def automation_definitions() -> dict[str, list]:
    """The schedules and sensors of the code location (Dagster adds `retraining_job` from its schedule)."""
    return {
        "schedules": [build_retraining_schedule()],
        "sensors": [new_data_sensor, run_failure_sensor],
    }
