"""`genops registry status | evaluate | promote | rollback | history`: the evaluation-gated MLflow model registry."""

from __future__ import annotations

import typer

app = typer.Typer(help="Champions, promotions and rollbacks in the MLflow model registry (aliases, not stages).",
                  no_args_is_help=True)


def _uri() -> str:
    from training_jobs.launcher import default_tracking_uri, project_root

    return default_tracking_uri(project_root())


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1) from exc


@app.command()
def status(models: list[str] | None = typer.Argument(None, help="Registered model names (default: every model).")) -> None:
    """Each model's champion, its evaluation metrics and lineage (run, dataset versions, git commit)."""
    from mlflow.exceptions import MlflowException

    from training_jobs.registry import render_status
    from training_jobs.registry import status as registry_status

    try:
        typer.echo(render_status(registry_status(_uri(), models or None)), nl=False)
    except MlflowException as exc:
        _fail(exc)


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="Registered model name, e.g. genops-sd-base."),
    version: str = typer.Argument("latest", help="Version number, 'latest', or @<alias>."),
    profile: str = typer.Option("demo", help="Profile of the benchmark size and sampler steps."),
    evaluator: str | None = typer.Option(None, help="Evaluator CLIP (folder or registry URI; default: its champion)."),
    steps: int | None = typer.Option(None, help="Sampler steps (default: the evaluation spec's for the profile)."),
    and_promote: bool = typer.Option(False, "--promote", help="Then apply the promotion policy to the version."),
) -> None:
    """Score a version on its family's benchmark, as its Dagster evaluation asset does, and log it to its run."""
    from mlflow.exceptions import MlflowException

    from training_jobs.evaluation import evaluate_version
    from training_jobs.launcher import project_root

    reference = f"models:/{model}{version}" if version.startswith("@") else f"models:/{model}/{version}"
    try:
        record = evaluate_version(reference, _uri(), project_root(), profile, evaluator, steps, say=typer.echo)
    except (MlflowException, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(record.table_markdown)
    typer.echo(f"{record.model} v{record.version}: evaluated in {record.seconds:.0f} s, logged to run {record.run_id} "
               f"(benchmark md5 {record.benchmark_md5})")
    if and_promote:
        promote(record.model, record.version, None)


@app.command()
def promote(
    model: str = typer.Argument(..., help="Registered model name, e.g. genops-sd-base."),
    version: str = typer.Argument(..., help="The candidate version (its eval.* tags hold its evaluation)."),
    policy: str | None = typer.Option(None, help="Policy YAML (default: mlflow/policies/<model>.yaml)."),
) -> None:
    """Apply the model's promotion policy to an evaluated version: champion if it passes and is better."""
    from mlflow.exceptions import MlflowException

    from training_jobs.registry import load_policy, policy_path
    from training_jobs.registry import promote as registry_promote

    try:
        decision = registry_promote(_uri(), load_policy(policy or policy_path(model)), version)
    except (MlflowException, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    colour = typer.colors.GREEN if decision.action == "promoted" else typer.colors.YELLOW
    typer.secho(f"{model} v{version}: {decision.action} ({decision.reason}); champion now "
                f"v{decision.champion_after or '-'}", fg=colour)


@app.command()
def rollback(model: str = typer.Argument(..., help="Registered model name, e.g. genops-sd-base.")) -> None:
    """Give `champion` back to `previous-champion`; the rolled-back version is tagged and the history records it."""
    from mlflow.exceptions import MlflowException

    from training_jobs.registry import rollback as registry_rollback

    try:
        decision = registry_rollback(_uri(), model)
    except (MlflowException, ValueError) as exc:
        _fail(exc)
    typer.echo(f"{model}: champion v{decision.champion_before} -> v{decision.champion_after} (v{decision.version} "
               "tagged rolled-back)")


@app.command()
def history(model: str = typer.Argument(..., help="Registered model name.")) -> None:
    """Every promotion decision and rollback of a model, oldest first."""
    from mlflow.exceptions import MlflowException

    from training_jobs.registry import history_markdown, read_history, registry_client

    try:
        client = registry_client(_uri())
        client.get_registered_model(model)
        typer.echo(history_markdown(model, read_history(client, model)), nl=False)
    except MlflowException as exc:
        _fail(exc)
