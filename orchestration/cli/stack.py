"""`genops demo` and `genops ui`: the embedded stack, no server to start by hand.

`demo` materializes the whole asset graph in-process (Dagster's in-process executor) against the
local resources, recording runs in DAGSTER_HOME (.dagster_home/ in the checkout unless set), so
the same materializations are visible afterwards in `genops ui`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer


def _dagster_home() -> Path:
    from orchestration.resources import project_root

    home = Path(os.environ.get("DAGSTER_HOME") or project_root() / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def demo() -> None:
    """Run the main job: materialize every asset of the graph, end to end, on the demo profile."""
    home = _dagster_home()
    import dagster as dg
    from rich.console import Console
    from rich.table import Table

    from orchestration.definitions import defs

    console = Console()
    console.print(f"[bold]genops demo[/]: materializing the asset graph in-process (DAGSTER_HOME={home})")
    started = time.monotonic()
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        table = Table(title="materialized assets")
        for col in ("asset", "data version / run", "facts"):
            table.add_column(col)
        for event in result.get_asset_materialization_events():
            mat = event.materialization
            meta = {k: v.value for k, v in mat.metadata.items()}
            facts = [f"{k}={meta[k]}" for k in ("records_kept", "quarantined", "vocab_size", "injected_faults") if k in meta]
            if meta.get("registered_model_uri"):
                facts.append(meta["registered_model_uri"])
            facts.extend(f"{k}={v:.3g}" for k, v in (meta.get("final_metrics") or {}).items()
                         if k.startswith(("val/", "eval/", "scaling")) and isinstance(v, (int, float)))
            facts = ", ".join(facts)
            version = meta.get("dataset_version") or meta.get("mlflow_run_id", "")
            table.add_row(mat.asset_key.to_user_string(), str(version)[:16], facts)
        console.print(table)
    elapsed = time.monotonic() - started
    if not result.success:
        failed = [e.step_key for e in result.all_events if e.is_step_failure]
        console.print(f"[red]demo failed[/] after {elapsed:.0f}s; failed steps: {failed}. "
                      f"Run `genops ui` and open the run for the full error.")
        raise typer.Exit(code=1)
    console.print(f"[green]demo succeeded[/] in {elapsed:.0f}s (run {result.run_id}); see it in `genops ui`.")


def ui(port: int = typer.Option(3000, help="Port of the Dagster webserver.")) -> None:
    """Start the Dagster UI (dagster dev) on the project's definitions; Ctrl-C stops it and its children."""
    _dagster_home()
    command = [str(Path(sys.executable).parent / "dagster"), "dev", "-m", "orchestration.definitions", "-p", str(port)]
    # dagster dev ignores SIGTERM for a long time: run it in its own process group and stop the group.
    process = subprocess.Popen(command, start_new_session=True)
    try:
        process.wait()
    except KeyboardInterrupt:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
