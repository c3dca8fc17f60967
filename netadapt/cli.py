"""The ``netadapt`` command line: parse, call one function, render.

Every command is registered through :func:`command`, the one place where the project's
own errors become a one-line message and exit code 1 (typer uses 2 for usage errors).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .errors import NetadaptError

app = typer.Typer(
    help="Adapt a pre-trained MobileNetV3 to a device's latency budget (NetAdapt).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def command(fn: F) -> F:
    """Register ``fn`` as a subcommand whose NetadaptErrors print as one red line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NetadaptError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None

    app.command()(wrapper)
    return fn


SpecArg = Annotated[Path, typer.Argument(
    help="Network spec (YAML), e.g. configs/mobilenetv3_large.yaml")]


@command
def show(spec_path: SpecArg) -> None:
    """Print a spec: one row per block with widths, params and MACs; totals; groups."""
    from .cost import count_macs, count_params, spec_table
    from .spec import load_spec

    spec = load_spec(spec_path)
    typer.echo(f"{spec.name}: {spec.task}, input {spec.in_channels}x"
               f"{spec.input_size[0]}x{spec.input_size[1]}, {spec.num_classes} classes")
    typer.echo(spec_table(spec).to_string(index=False))
    typer.echo(f"total: {count_params(spec):,} params, {count_macs(spec) / 1e6:.2f} M MACs")
    typer.echo(f"\nchannel groups ({len(spec.groups)}), each shrinkable by the search:")
    for g in spec.groups:
        typer.echo(f"  {g.name:<22} {g.kind:<11} {g.width:>5}  {', '.join(g.fields)}")


@command
def export(
    spec_path: SpecArg,
    weights: Annotated[Path | None, typer.Option(
        "--weights", "-w", help="State dict (.pt); default: <spec>.pt beside the spec "
        "if it exists, else random initialisation")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="ONNX file to write; default: the spec's path with .onnx")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 14 for HardSwish)", min=14)] = 17,
) -> None:
    """Export a spec (+ weights) to ONNX and check onnxruntime against PyTorch."""
    from .export import export_onnx
    from .model import build_model, load_weights
    from .spec import load_spec

    spec = load_spec(spec_path)
    model = build_model(spec)
    beside = spec_path.with_suffix(".pt")
    if weights is None and beside.is_file():
        weights = beside
    if weights is not None:
        load_weights(model, weights)
        typer.echo(f"weights: {weights}")
    else:
        typer.secho("weights: none given, exporting the randomly initialised network "
                    "(pass --weights W.pt for trained weights)", fg=typer.colors.YELLOW)
    output = output or spec_path.with_suffix(".onnx")
    report = export_onnx(model, spec, output, opset=opset)
    typer.echo(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, opset {report.opset})")
    typer.secho(f"parity: onnxruntime matches PyTorch on random input: max |diff| = "
                f"{report.max_abs_diff:.2e} <= {report.tolerance:g} (outputs up to "
                f"{report.output_scale:.3g})", fg=typer.colors.GREEN)


def main() -> None:
    """Console-script entry point."""
    app()
