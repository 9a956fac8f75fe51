"""Dagster automation: the retraining schedule, the new-data sensor and the failure alert, on real Dagster."""

import http.server
import json
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import dagster as dg
import pytest
import yaml

from orchestration.assets.data import dataset_names
from orchestration.automation import (
    TRIGGER_TAG,
    build_retraining_schedule,
    load_automation_config,
    new_data_sensor,
    retraining_job,
    run_failure_sensor,
)
from orchestration.definitions import build_definitions
from orchestration.resources import DvcResource, local_resources

PROJECT = Path(__file__).resolve().parents[2]
TINY_PARAMS = PROJECT / "training_jobs" / "configs" / "data" / "tiny.yaml"


@dg.asset(group_name="ablations", deps=["prepared_cc3m"])
def cc3m_ablation() -> None:
    """Stands in for an ablation grid: downstream of the data, but never part of the main graph's runs."""


@pytest.fixture(scope="module")
def defs(tmp_path_factory):
    main = build_definitions(dataset_names(TINY_PARAMS), resources=local_resources(tmp_path_factory.mktemp("checkout")))
    return dg.Definitions.merge(main, dg.Definitions(assets=[cc3m_ablation]))


def keys(selection) -> set[str]:
    return {k.to_user_string() for k in selection}


def test_schedule_runs_the_whole_graph_but_the_ablations_with_a_trigger_tag(defs):
    schedule = build_retraining_schedule()
    assert schedule.cron_schedule == load_automation_config().retraining_cron == "0 3 * * 1"
    graph = defs.resolve_asset_graph()
    every = keys(graph.get_all_asset_keys())
    ablations = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).group_name == "ablations"}
    assert "cc3m_ablation" in ablations
    assert keys(retraining_job.selection.resolve(graph)) == every - ablations
    assert {"synthetic_world", "prepared_cc3m", "tokenizer", "vae", "sd_base"} <= every
    when = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
    with dg.DagsterInstance.ephemeral() as instance:
        data = schedule.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=when))
    [request] = data.run_requests
    assert schedule.job_name == "retraining_job"
    assert request.tags[TRIGGER_TAG] == "retraining_schedule"
    assert request.run_key == f"retraining-{when.isoformat()}"


def test_schedule_cron_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("GENOPS_RETRAIN_CRON", "0 1 * * *")
    assert build_retraining_schedule().cron_schedule == "0 1 * * *"


@pytest.fixture
def raw_root(tmp_path):
    """A checkout's params.yaml, a raw folder per dataset and a dvc.lock recording their md5s."""
    shutil.copy(TINY_PARAMS, tmp_path / "params.yaml")
    stages = {}
    for name in dataset_names(TINY_PARAMS):
        folder = tmp_path / "data" / "raw" / name
        folder.mkdir(parents=True)
        (folder / "records.txt").write_text(f"{name}\n")
        stages[f"validate@{name}"] = {"deps": [{"path": f"data/raw/{name}", "md5": f"{name}-v1.dir"}]}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    return tmp_path


def evaluate(defs, root: Path, cursor: str | None):
    context = dg.build_sensor_context(cursor=cursor, definitions=defs, resources={"dvc": DvcResource(repo_root=str(root))})
    result = new_data_sensor(context)
    if isinstance(result, dg.SkipReason):
        return [], context.cursor
    return result.run_requests, result.cursor


def downstream_by_walking(graph, start: str) -> set[str]:
    """The children of `start`, their children, ... outside the ablations group (computed independently)."""
    seen, todo = {start}, [dg.AssetKey(start)]
    while todo:
        for child in graph.get(todo.pop()).child_keys:
            if graph.get(child).group_name != "ablations" and child.to_user_string() not in seen:
                seen.add(child.to_user_string())
                todo.append(child)
    return seen


def test_new_data_sensor_requests_exactly_what_depends_on_the_changed_dataset(defs, raw_root):
    requests, cursor = evaluate(defs, raw_root, None)
    assert requests == [] and cursor  # the first look only records the raw data
    requests, cursor_again = evaluate(defs, raw_root, cursor)
    assert requests == [] and cursor_again == cursor  # nothing changed, nothing requested

    (raw_root / "data" / "raw" / "cc3m" / "dropped_in.tsv").write_text("caption\timage_path\n")
    [request], cursor = evaluate(defs, raw_root, cursor)
    expected = downstream_by_walking(defs.resolve_asset_graph(), "prepared_cc3m")
    assert keys(request.asset_selection) == expected
    assert {"prepared_cc3m", "tokenizer", "vae", "sd_base"} <= expected
    assert not {"prepared_laion_short", "synthetic_world", "cc3m_ablation"} & expected
    assert request.tags[TRIGGER_TAG] == "new_data_sensor"
    assert request.tags["genops/changed_datasets"] == "cc3m"

    requests, _ = evaluate(defs, raw_root, cursor)
    assert requests == []  # the change was consumed by the cursor


def test_new_data_sensor_sees_a_new_dvc_version_of_a_raw_dataset(defs, raw_root):
    _, cursor = evaluate(defs, raw_root, None)
    lock = yaml.safe_load((raw_root / "dvc.lock").read_text())
    lock["stages"]["validate@laion_short"]["deps"][0]["md5"] = "laion_short-v2.dir"
    (raw_root / "dvc.lock").write_text(yaml.safe_dump(lock))
    [request], _ = evaluate(defs, raw_root, cursor)
    assert request.tags["genops/changed_datasets"] == "laion_short"
    assert "prepared_laion_short" in keys(request.asset_selection)
    assert "prepared_cc3m" not in keys(request.asset_selection)


def test_new_data_sensor_watches_the_inbox(defs, raw_root, tmp_path_factory, monkeypatch):
    inbox = tmp_path_factory.mktemp("inbox")
    monkeypatch.setenv("GENOPS_INBOX", str(inbox))
    _, cursor = evaluate(defs, raw_root, None)
    (inbox / "vist").mkdir()
    (inbox / "vist" / "story.json").write_text("{}")
    [request], _ = evaluate(defs, raw_root, cursor)
    assert request.tags["genops/changed_datasets"] == "vist"


class _Recorder(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"content_type": self.headers["Content-Type"], "json": json.loads(body)})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Recorder.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/genops", _Recorder.received
    server.shutdown()


@dg.asset
def broken_dataset() -> None:
    raise ValueError("disk on fire in shard 7")


def failure_context(instance):
    result = dg.materialize([broken_dataset], instance=instance, raise_on_error=False)
    assert not result.success
    [record] = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_sensor", dagster_event=record.dagster_event, dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
    ).for_run_failure()
    return result.run_id, context


def test_failure_sensor_posts_the_alert_to_the_webhook(webhook, monkeypatch):
    url, received = webhook
    monkeypatch.setenv("GENOPS_ALERT_WEBHOOK", url)
    with dg.DagsterInstance.ephemeral() as instance:
        run_id, context = failure_context(instance)
        run_failure_sensor(context)
    [post] = received
    assert post["content_type"] == "application/json"
    alert = post["json"]
    assert alert["run_id"] == run_id
    assert alert["failed_assets"] == ["broken_dataset"]
    assert "disk on fire in shard 7" in alert["errors"]["broken_dataset"]
    assert run_id in alert["text"] and "broken_dataset" in alert["text"]  # Slack shows `text`
    assert alert["blocks"][0]["text"]["text"] == alert["text"]


def test_failure_sensor_logs_the_alert_without_a_webhook(monkeypatch, caplog, webhook):
    _, received = webhook
    monkeypatch.delenv("GENOPS_ALERT_WEBHOOK", raising=False)
    with dg.DagsterInstance.ephemeral() as instance:
        run_id, context = failure_context(instance)
        with caplog.at_level("ERROR", logger="orchestration.automation"):
            run_failure_sensor(context)
    assert received == []
    assert any(run_id in r.getMessage() and "disk on fire" in r.getMessage() for r in caplog.records)


def test_an_unreachable_webhook_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("GENOPS_ALERT_WEBHOOK", "http://127.0.0.1:9/nowhere")
    with dg.DagsterInstance.ephemeral() as instance:
        _, context = failure_context(instance)
        with pytest.raises(RuntimeError, match="127.0.0.1:9/nowhere"):
            run_failure_sensor(context)
