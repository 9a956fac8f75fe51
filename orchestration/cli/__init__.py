"""The `genops` command line. Each command group lives in its own module and is added here.

Heavy libraries (torch, ray, dagster, mlflow) are imported inside the commands, so `genops --help`
answers at once.
"""

import typer

from orchestration.cli import data, kernels, metrics, paradiffusion, stack, train
from orchestration.cli import minigpt5 as minigpt5_cli
from orchestration.cli import registry as registry_cli
from orchestration.cli import serving as serving_cli

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
app.add_typer(minigpt5_cli.app, name="minigpt5")
app.add_typer(registry_cli.app, name="registry")
app.add_typer(paradiffusion.app, name="paradiffusion")
app.command()(serving_cli.export)
app.command()(serving_cli.generate)
app.command()(serving_cli.serve)
