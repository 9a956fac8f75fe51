"""`genops kernels`: check the Triton fused-attention kernel on this machine before deploying to it."""

import json
import os

import typer

app = typer.Typer(help="The Triton fused-attention kernel for diffusers attention.", no_args_is_help=True)


@app.callback()
def kernels() -> None:
    """The Triton fused-attention kernel for diffusers attention (TritonAttnProcessor).

    Check a node before deploying to it: `genops kernels selftest` (add --json for scripts).
    """


@app.command()
def selftest(
    json_output: bool = typer.Option(
        False, "--json", help="Print the results as JSON (progress goes to stderr)."
    ),
    large: bool | None = typer.Option(
        None,
        "--large/--no-large",
        help="Add the real SD UNet shapes (4096 latents). Default: on with a GPU, off on CPU (too slow).",
    ),
) -> None:
    """Check the kernel against float64 attention; print shape, dtype, max error, error/bound, pass/fail.

    Every output element must stay within the error its dtype's arithmetic allows at those inputs' score
    scale (serving.kernels.selftest.attention_error_bound); error/bound is the worst element's ratio.

    Uses the current CUDA GPU when there is one (fp32, fp16 and bf16); otherwise runs on CPU through the
    Triton interpreter (fp32 and fp16). Exits with status 1 if any case fails.
    """
    import torch

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        # Must happen before triton is imported: the interpreter is chosen when kernels are decorated.
        os.environ["TRITON_INTERPRET"] = "1"
        typer.echo(
            "No CUDA GPU found: setting TRITON_INTERPRET=1 to run the kernel on CPU (Triton interpreter).",
            err=True,
        )

    from serving.kernels.selftest import ParityResult, default_device, parity_grid, run_selftest

    try:
        device = default_device()
    except RuntimeError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(2) from error
    on_gpu = device.type == "cuda"
    mode = f"CUDA ({torch.cuda.get_device_name(device)})" if on_gpu else "CPU, Triton interpreter"
    cases = parity_grid(include_bf16=on_gpu, include_large=on_gpu if large is None else large)
    skipped = "" if on_gpu else " bf16 needs a GPU and is not checked here."
    typer.echo(
        f"Checking {len(cases)} cases on {mode} against float64 attention,"
        " each element within its arithmetic's error bound."
        + skipped,
        err=True,
    )

    def progress(index: int, total: int, result: ParityResult) -> None:
        verdict = "pass" if result.passed else "FAIL"
        typer.echo(
            f"[{index}/{total}] {result.case.shape} {result.case.dtype} {result.case.layout}: {verdict}",
            err=True,
        )

    results = run_selftest(cases, device, progress=progress)
    failed = [r for r in results if not r.passed]

    if json_output:
        payload = {
            "device": str(device),
            "mode": mode,
            "passed": not failed,
            "cases": [r.to_dict() for r in results],
        }
        typer.echo(json.dumps(payload, indent=2))
    else:
        header = f"{'shape (BxH, Nq x Nkv, d)':<30} {'dtype':<9} {'layout':<7} {'max abs err':>12}"
        header += f" {'error/bound':>11}  result"
        typer.echo(header)
        typer.echo("-" * len(header))
        for r in results:
            verdict = "pass" if r.passed else ("FAIL (unwritten output)" if not r.all_written else "FAIL")
            typer.echo(
                f"{r.case.shape:<30} {r.case.dtype:<9} {r.case.layout:<7}"
                f" {r.max_abs_error:>12.3e} {r.error_to_bound:>11.3f}  {verdict}"
            )
    typer.echo(
        f"{len(results) - len(failed)}/{len(results)} cases passed on {mode}"
        + (f"; {len(failed)} FAILED" if failed else "."),
        err=json_output,
    )
    if failed:
        raise typer.Exit(1)
