"""The evaluation group in the code location: each registered family's benchmark, evaluation, blocking
gate checks (one per policy gate) and promotion, wired after its training asset."""

import dagster as dg

from orchestration.definitions import defs
from training_jobs.evaluation import EVALUATIONS
from training_jobs.registry import load_policy, policy_path


def test_every_evaluation_spec_has_its_assets_checks_and_policy():
    graph = defs.resolve_asset_graph()
    assert "sd_base" in EVALUATIONS
    for family, spec in EVALUATIONS.items():
        evaluation = graph.get(dg.AssetKey(f"{family}_evaluation"))
        parents = {k.to_user_string() for k in evaluation.parent_keys}
        assert parents == {spec.training_asset, f"{family}_benchmark", "clip_evaluator"}
        promotion = graph.get(dg.AssetKey(f"{family}_promotion"))
        assert {k.to_user_string() for k in promotion.parent_keys} == {f"{family}_evaluation"}
        assert evaluation.group_name == promotion.group_name == "evaluation"
        policy = load_policy(policy_path(spec.registered_model))
        checks = {key.name: graph.get_check_spec(key) for key in graph.get_check_keys_for_assets({evaluation.key})}
        assert set(checks) == {f"gate_{g.metric}" for g in policy.gates}
        assert all(c.blocking for c in checks.values())
    assert defs.resolve_job_def("evaluation_job").name == "evaluation_job"
