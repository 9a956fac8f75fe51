"""Evaluation-gated promotion against a real SQLite-backed MLflow registry."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import mlflow
import pytest

from training_jobs.registry import (
    CHAMPION,
    PREVIOUS,
    TAG_DECISION,
    TAG_REASON,
    Gate,
    PromotionPolicy,
    load_policy,
    promote,
    read_history,
    record_evaluation,
    render_status,
    rollback,
    status,
)

_POLICY_FIELDS = ("clip_score", "higher", 0.01,
                  (Gate("faithfulness_object", min=0.1), Gate("export_parity", max=1e-3, when_present=True)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its tables costs seconds); each test gets its own model."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    return uri, client, client.create_experiment("t", artifact_location=(root / "artifacts").as_uri())


@pytest.fixture
def registry(store, request):
    """A fresh registered model (named after the test) with its policy and a version factory."""
    uri, client, exp = store
    model = request.node.name.removeprefix("test_")[:60]
    policy = PromotionPolicy(model, *_POLICY_FIELDS)
    client.create_registered_model(model)

    def make_version(metrics: dict[str, float]) -> str:
        run = client.create_run(exp, tags={"git_commit": "abc123", "dataset_version.laion_short": "d41d8cd98f"})
        client.set_terminated(run.info.run_id)
        version = client.create_model_version(model, f"{run.info.artifact_uri}/model", run.info.run_id,
                                              tags={"source_run_id": run.info.run_id, "git_commit": "abc123",
                                                    "dataset_version.laion_short": "d41d8cd98f"}).version
        record_evaluation(client, model, version, metrics, {"benchmark_md5": "0123abcd"})
        return str(version)

    return uri, client, make_version, model, policy


def _aliases(client, model) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(model).aliases.items()}


def test_first_candidate_becomes_champion_and_a_better_one_replaces_it(registry):
    uri, client, make, model, policy = registry
    v1, v2 = make({"clip_score": 0.30, "faithfulness_object": 0.5}), make({"clip_score": 0.35, "faithfulness_object": 0.5})
    assert promote(uri, policy, v1).action == "promoted"
    decision = promote(uri, policy, v2)
    assert decision.action == "promoted" and decision.champion_before == v1
    assert _aliases(client, model) == {CHAMPION: v2, PREVIOUS: v1}
    assert client.get_model_version(model, v2).tags[TAG_DECISION] == "promoted"
    assert [row["version"] for row in read_history(client, model)] == [v1, v2]
    # Re-evaluating the champion (a re-run of the evaluation) changes nothing, not even its tags.
    assert promote(uri, policy, v2).action == "unchanged"
    assert _aliases(client, model) == {CHAMPION: v2, PREVIOUS: v1}
    assert client.get_model_version(model, v2).tags[TAG_DECISION] == "promoted"


def test_a_worse_or_barely_better_candidate_is_rejected_with_the_reason(registry):
    uri, client, make, model, policy = registry
    v1 = make({"clip_score": 0.30, "faithfulness_object": 0.5})
    worse = make({"clip_score": 0.25, "faithfulness_object": 0.9})
    barely = make({"clip_score": 0.305, "faithfulness_object": 0.9})  # +0.005 < min_improvement 0.01
    promote(uri, policy, v1)
    for version in (worse, barely):
        assert promote(uri, policy, version).action == "rejected"
        tags = client.get_model_version(model, version).tags
        assert tags[TAG_DECISION] == "rejected"
        assert f"not better than champion v{v1}" in tags[TAG_REASON] and "clip_score" in tags[TAG_REASON]
    assert _aliases(client, model) == {CHAMPION: v1}


def test_a_gate_failure_blocks_even_a_better_candidate(registry):
    uri, client, make, model, policy = registry
    v1 = make({"clip_score": 0.30, "faithfulness_object": 0.5})
    unfaithful = make({"clip_score": 0.50, "faithfulness_object": 0.05})
    bad_export = make({"clip_score": 0.50, "faithfulness_object": 0.5, "export_parity": 0.1})
    no_floor_metric = make({"clip_score": 0.50})
    promote(uri, policy, v1)
    assert "faithfulness_object: 0.05 < floor 0.1" in promote(uri, policy, unfaithful).reason
    assert "export_parity: 0.1 > ceiling 0.001" in promote(uri, policy, bad_export).reason
    assert "faithfulness_object: metric missing" in promote(uri, policy, no_floor_metric).reason
    assert _aliases(client, model) == {CHAMPION: v1}
    assert client.get_model_version(model, unfaithful).tags[TAG_DECISION] == "rejected"


def test_rollback_restores_the_previous_champion_and_is_recorded(registry):
    uri, client, make, model, policy = registry
    versions = [make({"clip_score": s, "faithfulness_object": 0.5}) for s in (0.30, 0.35, 0.40)]
    for v in versions:
        promote(uri, policy, v)
    assert _aliases(client, model) == {CHAMPION: versions[2], PREVIOUS: versions[1]}
    decision = rollback(uri, model)
    assert decision.action == "rolled-back" and decision.champion_after == versions[1]
    assert _aliases(client, model) == {CHAMPION: versions[1], PREVIOUS: versions[0]}
    assert client.get_model_version(model, versions[2]).tags[TAG_DECISION] == "rolled-back"
    rollback(uri, model)
    assert _aliases(client, model) == {CHAMPION: versions[0]}
    with pytest.raises(ValueError, match="no previous-champion"):
        rollback(uri, model)
    assert [row["action"] for row in read_history(client, model)] == ["promoted"] * 3 + ["rolled-back"] * 2


def test_two_racing_promotions_leave_exactly_one_champion_and_a_serial_history(registry):
    uri, client, make, model, policy = registry
    v1, v2 = make({"clip_score": 0.30, "faithfulness_object": 0.5}), make({"clip_score": 0.40, "faithfulness_object": 0.5})
    start = threading.Barrier(2)
    decisions, errors = {}, []

    def run(version):
        try:
            start.wait()
            # Both have read "no champion" before either moves the alias unless promotions serialize.
            decisions[version] = promote(uri, policy, version, _before_write=lambda: time.sleep(0.5))
        except Exception as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(v,)) for v in (v1, v2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _aliases(client, model)[CHAMPION] == v2  # the better one, whichever ran first
    history = read_history(client, model)
    assert len(history) == 2
    first, second = history
    # The second decision saw the first's outcome: never two "first champion" decisions.
    assert second["champion_before"] == first["champion_after"]
    assert sum(row["champion_before"] is None for row in history) == 1


def test_status_shows_champion_metrics_and_lineage(registry):
    uri, _, make, model, policy = registry
    v1 = make({"clip_score": 0.30, "faithfulness_object": 0.5})
    promote(uri, policy, v1)
    (row,) = status(uri, [model])
    assert row.champion == v1 and row.metrics["clip_score"] == pytest.approx(0.30, abs=0)
    assert row.git_commit == "abc123" and row.dataset_versions == {"laion_short": "d41d8cd98f"}
    text = render_status([row])
    assert f"{model}: champion v{v1}" in text and "clip_score 0.3" in text and "benchmark md5 0123abcd" in text


def test_shipped_policies_load_and_bad_fields_are_named(tmp_path):
    shipped = sorted((Path(__file__).parents[2] / "mlflow" / "policies").glob("*.yaml"))
    assert shipped
    for path in shipped:
        assert load_policy(path).model == path.stem
    bad = tmp_path / "p.yaml"
    bad.write_text("model: m\nprimary_metric: x\ndirection: up\n")
    with pytest.raises(ValueError, match="p.yaml.*direction"):
        load_policy(bad)
    bad.write_text("model: m\nprimary_metric: x\ngates: [{metric: y}]\n")
    with pytest.raises(ValueError, match=r"gates\[0\] \(y\) needs a `min` or a `max`"):
        load_policy(bad)


def test_cli_status_and_rollback(registry, monkeypatch):
    from typer.testing import CliRunner

    from orchestration.cli import app

    uri, client, make, model, policy = registry
    v1, v2 = (make({"clip_score": s, "faithfulness_object": 0.5}) for s in (0.3, 0.4))
    promote(uri, policy, v1)
    promote(uri, policy, v2)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runner = CliRunner()
    out = runner.invoke(app, ["registry", "status", model])
    assert out.exit_code == 0 and f"{model}: champion v{v2} (previous v{v1})" in out.output
    out = runner.invoke(app, ["registry", "rollback", model])
    assert out.exit_code == 0 and f"champion v{v2} -> v{v1}" in out.output
    assert _aliases(client, model) == {CHAMPION: v1}
    out = runner.invoke(app, ["registry", "rollback", model])
    assert out.exit_code == 1 and "no previous-champion" in out.output
    out = runner.invoke(app, ["registry", "history", model])
    assert out.exit_code == 0 and "rolled-back" in out.output
