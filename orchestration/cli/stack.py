"""`genops demo` and `genops ui`: the embedded stack, no server to start by hand.

`demo` materializes the whole asset graph in-process (Dagster's in-process executor) against the
local resources, recording runs in DAGSTER_HOME (.dagster_home/ in the checkout unless set), so
the same materializations are visible afterwards in `genops ui`. It ends with a summary of every
asset (facts, metrics, wall time; `demo_summary.render_summary`), printed whole at the terminal's
width and written to outputs/demo/summary-<run id>.txt (and summary.txt, the latest).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from components.fileio import atomic_write_text
from orchestration.cli.demo_summary import AssetSummary, render_summary

if TYPE_CHECKING:
    import dagster as dg

# The summary file is laid out for a log or an 80-column terminal, whatever the terminal was.
SUMMARY_FILE_WIDTH = 80


def _dagster_home() -> Path:
    from orchestration.resources import project_root

    home = Path(os.environ.get("DAGSTER_HOME") or project_root() / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Wall time of each step of a run, from its start and success/failure events in the event log."""
    import dagster as dg

    events = instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS,
                                                 dg.DagsterEventType.STEP_FAILURE})
    started, seconds = {}, {}
    for entry in events:
        if entry.dagster_event_type == dg.DagsterEventType.STEP_START:
            started[entry.step_key] = entry.timestamp
        elif entry.step_key in started:
            seconds[entry.step_key] = entry.timestamp - started[entry.step_key]
    return seconds


def materialized_assets(result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance) -> list[AssetSummary]:
    """Each asset a run materialized, with its metadata as plain values and its step's wall time."""
    seconds = step_seconds(instance, result.run_id)
    return [
        AssetSummary(
            event.materialization.asset_key.to_user_string(),
            {key: value.value for key, value in event.materialization.metadata.items()},
            seconds.get(event.step_key),
        )
        for event in result.get_asset_materialization_events()
    ]


def write_summary(text: str, directory: Path, run_id: str) -> tuple[Path, Path]:
    """`summary-<run_id>.txt` and `summary.txt` (the latest) in `directory`, each written atomically."""
    run_file = atomic_write_text(directory / f"summary-{run_id}.txt", text)
    latest = atomic_write_text(directory / "summary.txt", text)
    return run_file, latest


def demo(force: bool = typer.Option(False, "--force", help="Re-run every asset of the main graph, changed or not.")) -> None:
    """Run the main job on the demo profile: materialize what changed (code, config or data) and what
    depends on it; everything, the first time or with --force. The ablations group is never part of it."""
    home = _dagster_home()
    import dagster as dg

    from orchestration.definitions import defs
    from orchestration.dvc_pipeline import DvcPipeline
    from orchestration.freshness import materialize_due
    from orchestration.resources import project_root

    typer.echo(f"genops demo: materializing the asset graph in-process (DAGSTER_HOME={home})")
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        results = materialize_due(defs, instance, DvcPipeline(project_root()), force=force, say=typer.echo)
        assets = [summary for result in results for summary in materialized_assets(result, instance)]
    run_id = results[-1].run_id if results else "up-to-date"
    elapsed = time.monotonic() - started
    # Plain lines, never cut: at the terminal's width (80 in a log: COLUMNS or the fallback), and at 80 in the file.
    width = shutil.get_terminal_size((SUMMARY_FILE_WIDTH, 24)).columns
    typer.echo(render_summary(assets, width, run_id=run_id, total_seconds=elapsed), nl=False)
    run_file, latest = write_summary(
        render_summary(assets, SUMMARY_FILE_WIDTH, run_id=run_id, total_seconds=elapsed),
        project_root() / "outputs" / "demo", run_id,
    )
    typer.echo(f"summary written to {run_file} (latest: {latest})")
    from training_jobs.registry import registry_status_text

    typer.echo("\n$ genops registry status\n" + registry_status_text(), nl=False)
    if not all(result.success for result in results):
        failed = [e.step_key for result in results for e in result.all_events if e.is_step_failure]
        typer.secho(f"demo failed after {elapsed:.0f}s; failed steps: {failed}. "
                    f"Run `genops ui` and open the run for the full error.", fg="red")
        raise typer.Exit(code=1)
    typer.secho(f"demo succeeded in {elapsed:.0f}s (run {run_id}); see it in `genops ui`.", fg="green")


def ui(port: int = typer.Option(3000, help="Port of the Dagster webserver."),
       mlflow_port: int = typer.Option(5000, help="Port of the MLflow UI."),
       host: str = typer.Option("127.0.0.1", help="Interface both servers listen on.")) -> None:
    """Start the Dagster webserver + daemon and the MLflow UI on the embedded stores; Ctrl-C stops both."""
    from orchestration.local_ui import UiStack, ensure_dagster_yaml, ui_commands, wait_for_http
    from orchestration.resources import local_mlflow_uri, project_root

    home = _dagster_home()
    ensure_dagster_yaml(home)
    root = project_root()
    (root / "mlflow" / "store" / "artifacts").mkdir(parents=True, exist_ok=True)
    stack = UiStack(ui_commands(port, mlflow_port, local_mlflow_uri(root), root / "mlflow" / "store" / "artifacts", host))
    urls = {"dagster": f"http://{host}:{port}", "mlflow": f"http://{host}:{mlflow_port}"}
    # Ctrl-C and `kill` stop both servers even when genops ui was started in the background of a script, where
    # the shell leaves SIGINT ignored and Python then installs no KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stack.start()
    try:
        typer.echo(f"genops ui: starting Dagster (DAGSTER_HOME={home}) and MLflow ({local_mlflow_uri(root)})")
        for name, url in urls.items():
            wait_for_http(url, timeout=300, process=stack.processes[name])
        typer.secho(f"Dagster UI: {urls['dagster']}\nMLflow UI:  {urls['mlflow']}\nCtrl-C stops both.", fg="green")
        while all(p.poll() is None for p in stack.processes.values()):
            time.sleep(1)
        dead = [name for name, p in stack.processes.items() if p.poll() is not None]
        typer.secho(f"genops ui: {', '.join(dead)} exited; stopping the rest", fg="red")
    except KeyboardInterrupt:
        typer.echo("genops ui: stopping Dagster and MLflow")
    finally:
        codes = stack.stop()
    typer.echo(f"genops ui: stopped ({', '.join(f'{n} exit {c}' for n, c in codes.items())})")
