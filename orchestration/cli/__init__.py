"""The `genops` command line. Each command group lives in its own module and is added here.

Heavy libraries (torch, ray, dagster, mlflow) are imported inside the commands, so `genops --help`
answers at once.
"""

import typer

from orchestration.cli import data, kernels, metrics, stack, train

app = typer.Typer(
    name="genops",
    help="genops: data, training, evaluation and export for ParaDiffusion, MiniGPT-5 and VLAD.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data")
app.add_typer(metrics.app, name="metrics")
app.command()(stack.demo)
app.command()(stack.ui)
app.command()(train.train)
app.command()(train.sample)
app.add_typer(kernels.app, name="kernels")
