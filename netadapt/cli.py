"""The ``netadapt`` command line: parse, call one function, render.

Every command is registered through :func:`command`, the one place where the project's
own errors become a one-line message and exit code 1 (typer uses 2 for usage errors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .errors import NetadaptError

app = typer.Typer(
    help="Adapt a pre-trained MobileNetV3 to a device's latency budget (NetAdapt).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: texts hold [default: ...] and netadapt[ray]
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
    help="Network spec (YAML), e.g. my.yaml, or a shipped one by name: mobilenetv3_large")]


@contextlib.contextmanager
def _resumable(run_dir: Path) -> Iterator[None]:
    """Ctrl-C: say how to continue instead of printing a traceback (exit code 130)."""
    try:
        yield
    except KeyboardInterrupt:
        typer.secho(f"\ninterrupted: everything finished so far is saved; continue with "
                    f"`netadapt search --resume {run_dir}`", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None


# the options of `netadapt search`
_BudgetOpt = Annotated[list[str] | None, typer.Option(
    "--budget", "-b", help="Repeatable: 20ms | 60% (of the seed's latency) | "
    "params=2M | macs=100M | params=50%")]
_SpecOpt = Annotated[Path | None, typer.Option(
    help="Seed spec: a YAML file or a shipped name (mobilenetv3_small) "
    "[default: mobilenetv3_large]")]
_WeightsOpt = Annotated[str | None, typer.Option(
    help="Seed weights: netadapt or torchvision state_dict (.pt); without, the seed "
    "is trained first for --seed-steps")]
_TableDeviceOpt = Annotated[str | None, typer.Option(
    help="Latency table's device (netadapt devices) [default: pixel]")]
_DataOpt = Annotated[str | None, typer.Option(
    help="IDX directory or ImageFolder tree; for a segmentation spec a directory of "
    "images/ + masks/ (same-named index PNGs, 255 = ignore) [default: Fashion-MNIST in "
    "/usr/share/datasets/fashion-mnist; segmentation: SYNTHETIC canvases made from "
    "it]")]
_CriterionOpt = Annotated[str | None, typer.Option(
    help="accuracy (NetAdapt) | slope (MobileNetV3: dAcc/|dLatency|)")]
_ScheduleOpt = Annotated[str | None, typer.Option(
    help="constant (MobileNetV3) | decay (NetAdapt: x0.96 per iteration)")]
_StepOpt = Annotated[float | None, typer.Option(
    help="First reduction per iteration, as a fraction of the seed's value")]
_ShortTermStepsOpt = Annotated[int | None, typer.Option(
    help="T: fine-tuning steps of a chosen proposal")]
_RacingOpt = Annotated[bool | None, typer.Option(
    "--racing/--no-racing", help="Race each iteration's proposals: score all with "
    "inherited weights and re-estimated BN, give the best third more steps, ... only the "
    "last ones get all T [default: racing]; --no-racing: every proposal gets all T")]
_FinalistsOpt = Annotated[int | None, typer.Option(
    help="With racing: how many proposals of an iteration get all T steps [default: 1]; "
    "N workers train N finalists side by side")]
_MeasuredCheckOpt = Annotated[bool | None, typer.Option(
    "--measured-check/--no-measured-check", help="When the device can be timed (a "
    "measured table, not an ESTIMATE): time the loop's result end to end before the "
    "latency budget counts as met, and go on to a tighter predicted target while it is "
    "over [default: on]")]
_LongTermStepsOpt = Annotated[int | None, typer.Option(
    help="Fine-tuning steps of the final network")]
_DeployStepsOpt = Annotated[int | None, typer.Option(
    help="Training steps at the spec's input size after a search at a smaller "
    "--resolution (result and baselines alike)")]
_SeedStepsOpt = Annotated[int | None, typer.Option(
    help="Training steps of the seed when no --weights are given")]
_ResolutionOpt = Annotated[int | None, typer.Option(
    help="Training/eval image size (latency is always at the spec's input size) "
    "[default: 32; segmentation: the input size]")]
_InputSizeOpt = Annotated[int | None, typer.Option(
    help="Deployed square input size of the seed (latency, export) [default: the "
    "spec's own]")]
_BatchSizeOpt = Annotated[int | None, typer.Option()]
_LrOpt = Annotated[float | None, typer.Option(help="Fine-tuning learning rate")]
_HoldoutOpt = Annotated[int | None, typer.Option(
    help="Images carved from training to score proposals")]
_SeedOpt = Annotated[int | None, typer.Option(help="Random seed (splits, batches, init)")]
_TorchDeviceOpt = Annotated[str | None, typer.Option(help="auto | cpu | cuda")]
_ThreadsOpt = Annotated[int | None, typer.Option(
    help="CPU threads for training [default: 1; 0 = torch's default]")]
_PresetOpt = Annotated[str, typer.Option(
    help="quick (CPU, minutes) | paper (T=10000, 224px; for GPUs)")]
_OutOpt = Annotated[Path | None, typer.Option(
    help="Run directory [default: runs/<spec>-<budget>-<time>]")]
_ResumeOpt = Annotated[Path | None, typer.Option(
    help="Continue an interrupted run directory with its saved config")]
_CompareOpt = Annotated[bool, typer.Option(
    "--compare", help="Also train the baselines at the same budgets and print the "
    "comparison")]
_WorkersOpt = Annotated[int | None, typer.Option(
    help="Evaluate each iteration's proposals on N local worker processes (with "
    "--ray: N tasks at a time) [default: 1, in this process]")]
_RayOpt = Annotated[str | None, typer.Option(
    "--ray", help="Run proposals as Ray tasks on a running cluster: auto (the one "
    "`ray start --head` started on this machine) or its address; needs "
    "pip install 'netadapt[ray]'")]


@command
def search(
    budget: _BudgetOpt = None,
    spec: _SpecOpt = None,
    weights: _WeightsOpt = None,
    device: _TableDeviceOpt = None,
    data: _DataOpt = None,
    criterion: _CriterionOpt = None,
    schedule: _ScheduleOpt = None,
    step: _StepOpt = None,
    short_term_steps: _ShortTermStepsOpt = None,
    racing: _RacingOpt = None,
    finalists: _FinalistsOpt = None,
    measured_check: _MeasuredCheckOpt = None,
    long_term_steps: _LongTermStepsOpt = None,
    deploy_steps: _DeployStepsOpt = None,
    seed_steps: _SeedStepsOpt = None,
    resolution: _ResolutionOpt = None,
    input_size: _InputSizeOpt = None,
    batch_size: _BatchSizeOpt = None,
    lr: _LrOpt = None,
    holdout: _HoldoutOpt = None,
    seed: _SeedOpt = None,
    torch_device: _TorchDeviceOpt = None,
    threads: _ThreadsOpt = None,
    preset: _PresetOpt = "quick",
    out: _OutOpt = None,
    resume: _ResumeOpt = None,
    compare: _CompareOpt = False,
    workers: _WorkersOpt = None,
    ray: _RayOpt = None,
) -> None:
    """Run NetAdapt: shrink the seed step by step until every budget is met."""
    given = dict(locals())  # first: every option, by the name SearchConfig gives it
    from . import driver
    from .config import SearchConfig, config_from_options
    from .executors import make_executor
    from .observer import LivePlot, Observers, ProgressBars

    # where proposals run changes no result, so it is not part of the run's config
    executor = make_executor(workers, ray, threads or 0, torch_device or "auto")
    if executor.name != "serial":
        typer.echo(f"proposals run on {executor.name}")
    observer = Observers(ProgressBars(), LivePlot())
    if resume is not None:
        typer.echo(f"resuming {resume} with its saved config")
        with _resumable(resume), executor:
            result = driver.resume_search(resume, executor=executor, observer=observer)
    else:
        fields = {f.name for f in dataclasses.fields(SearchConfig)} - {"budgets", "compare"}
        options = {k: v for k, v in given.items() if k in fields}
        config = config_from_options(budget or [], preset, compare,
                                     {**options, "spec": str(spec) if spec else None})
        out = out or config.default_run_dir()
        typer.echo(f"run directory: {out}")
        with _resumable(out), executor:
            result = driver.start_search(config, out, executor=executor, observer=observer)
    _print_result(result)
    if result.baselines:
        _print_comparison(result.run, measure=True)


def _print_result(result: Any) -> None:
    """The seed beside the result, where the run's time went, and what to do next."""
    seed, final = result.seed, result.final
    metric = "mIoU" if result.metric == "mIoU" else "acc"
    typer.echo(f"\n{'':<16}{'seed':>12}{'result':>12}")
    typer.echo(f"{'latency (ms)':<16}{seed.latency_ms:>12.2f}{final.latency_ms:>12.2f}"
               + ("  (predicted)" if result.measured else ""))
    if result.measured:  # both timed together on the device, at the end of the loop
        m = result.measured
        typer.echo(f"{'  measured (ms)':<16}{m.measured_ms / m.vs_seed:>12.2f}"
                   f"{m.measured_ms:>12.2f}  (end to end on {m.device}, in one round-robin)")
    typer.echo(f"{'params (M)':<16}{seed.params / 1e6:>12.3f}{final.params / 1e6:>12.3f}")
    typer.echo(f"{'MACs (M)':<16}{seed.macs / 1e6:>12.2f}{final.macs / 1e6:>12.2f}")
    typer.echo(f"{f'holdout {metric} @{final.holdout_px}':<16}{seed.accuracy:>12.4f}"
               f"{final.accuracy:>12.4f}")
    deployed = final.seed_deploy_test_accuracy is not None
    seed_test, seed_px = ((final.seed_deploy_test_accuracy, final.seed_deploy_px) if deployed
                          else (final.seed_test_accuracy, final.seed_test_px))
    typer.echo(f"{f'test {metric}':<16}{seed_test:>12.4f}{final.test_accuracy:>12.4f}")
    typer.echo(f"{'  at input px':<16}{seed_px!s:>12}{final.test_px!s:>12}  (exported ONNX "
               f"file{'s' if deployed else ''}, run by onnxruntime, after "
               f"{final.deploy_steps} steps at that size)")
    if deployed:
        typer.echo(f"{f'  seed @{final.seed_test_px}':<16}{final.seed_test_accuracy:>12.4f}"
                   f"{'':>12}  (the seed as trained, at the search's size)")
    # predicted beside measured, or (a phone ESTIMATE) plainly predicted only
    for line in result.latency_lines or [f"latency: {result.latency_table}"]:
        typer.echo(line)
    met, how = ((final.budgets_met and result.measured.met, "latency as measured")
                if result.measured else (final.budgets_met, "as predicted"))
    typer.echo(f"{result.iterations} iterations; budgets met: {met} ({how}); "
               f"{result.seconds / 60:.1f} min")
    typer.echo(result.times.summary())
    typer.echo(f"result: {result.run / 'best.yaml'} (+ best.pt); history: "
               f"{result.run / 'history.csv'}; plot: {result.run / 'accuracy_vs_latency.png'}")
    typer.echo(f"next: netadapt export {result.run / 'best.yaml'}")


def _print_comparison(run_dir: Path, measure: bool) -> None:
    from .report import compare_run, comparison_text

    compared = compare_run(run_dir, measure)
    typer.echo(f"\nthe search beside the baselines (same budgets, seed weights, data and "
               f"evaluation; {compared.training}):\n{comparison_text(compared.table)}")
    if compared.metric == "mIoU":
        typer.echo("segmentation: holdout and test are mIoU; margin is of per-image pixel "
                   "accuracy")
    typer.echo(compared.verdict)


@command
def baseline(
    run_dir: Annotated[Path, typer.Argument(help="A finished search run directory")],
) -> None:
    """Train the simple answers at the run's budgets (width multiplier, uniform pruning,
    input resolution) from its seed weights, and compare them with the search."""
    from .baseline import baselines_for_run
    from .observer import LivePlot, Observers, ProgressBars

    baselines_for_run(run_dir, observer=Observers(ProgressBars(), LivePlot()))
    _print_comparison(run_dir, measure=True)


@command
def report(
    run_dir: Annotated[Path, typer.Argument(help="A search run directory")],
    measure: Annotated[bool, typer.Option(
        help="Also time every network end to end on this machine (onnxruntime), each "
        "beside the seed as the search's measured check times it (about 2 s a network)")] = True,
) -> None:
    """The seed, the search's result and the baselines of a run in one table, and
    where the run's wall time went."""
    from .records import RunTimes
    from .rundir import RunDir

    _print_comparison(run_dir, measure=measure)
    typer.echo(RunTimes.of(RunDir.open(run_dir).records()).summary())


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
    from .export import OTHER_SIZE_PX, PARITY_TOLERANCE, export_spec

    done = export_spec(spec_path, weights, output, opset)
    if done.weights is not None:
        typer.echo(f"weights: {done.weights}")
    else:
        typer.secho("weights: none given, exporting the randomly initialised network "
                    "(pass --weights W.pt for trained weights)", fg=typer.colors.YELLOW)
    report, metadata, spec = done.report, done.metadata, done.spec
    typer.echo(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, opset {report.opset})")
    typer.secho(f"parity: onnxruntime matches PyTorch on random input: max |diff| = "
                f"{report.max_abs_diff:.2e} <= {report.tolerance:g} (outputs up to "
                f"{report.output_scale:.3g})", fg=typer.colors.GREEN)
    if spec.task == "segmentation":
        h, w = spec.input_size
        typer.echo(f"segmentation: height and width are dynamic (any size runs); at "
                   f"{h + OTHER_SIZE_PX}x{w + OTHER_SIZE_PX} max |diff| = "
                   f"{report.other_size_diff:.2e}")
        typer.echo(f"float64: the same graph, run by onnx's reference evaluator, matches "
                   f"PyTorch float64: max |diff| = {report.double_diff:.2e} <= "
                   f"{PARITY_TOLERANCE:g} (outputs up to {report.double_scale:.3g})")
    typer.echo(f"metadata: input {metadata['input_size']} (C,H,W), mean {metadata['mean']}, "
               f"std {metadata['std']}, {spec.num_classes} labels"
               + (f", predicted {metadata['predicted_latency_ms']} ms on "
                  f"{metadata['latency_device']}" if "predicted_latency_ms" in metadata else ""))
    for line in done.budget_report:
        typer.echo(line)


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


# ----------------------------------------------------------------------------- latency

DeviceOpt = Annotated[str, typer.Option(
    "--device", "-d", help="Device profile in configs/devices (netadapt devices)")]


@command
def devices() -> None:
    """List the device profiles and which have a latency table."""
    from .latency import list_devices
    from .latency.table import read_table_files

    for dev in list_devices():
        try:
            _, meta = read_table_files(dev.name)
            seeds = ", ".join(s["name"] for s in meta.get("seeds", []))
            source = (f"ESTIMATE table from {meta.get('estimate_of')}" if meta.get("estimate")
                      else f"table (onnxruntime {meta['runtime']['onnxruntime']})")
            state = f"{source}: {meta['rows']:,} entries, seeds {seeds}, {meta['date'][:10]}"
        except NetadaptError:
            state = f"no table (netadapt profile --device {dev.name})"
        typer.echo(f"{dev.name:<10} {dev.runner:<6} {dev.description}")
        typer.echo(f"{'':<17} {state}")


def _estimate(dev: Any, source_name: str) -> None:
    """`profile --estimate-from`: write the ESTIMATE, print the fit and each published
    point's leave-one-out error."""
    import numpy as np

    from .latency.estimate import estimate_from

    fit = estimate_from(dev, source_name)
    points, sweep = fit.points, fit.sweep
    ratios = f" and {len(sweep)} size ratios" if sweep else ""
    typer.secho(f"{dev.name}: ESTIMATE written (the {source_name} table's entries, priced by "
                f"a phone model fitted to {len(points)} published latencies{ratios})",
                fg=typer.colors.YELLOW)
    typer.echo(f"  entry_ms = {fit.formula()}")
    typer.echo(f"  {'network':<40}{'published':>10}{'fit':>16}{'leave-one-out':>18}")
    for p, f, lo, fe, le in zip(points, fit.fitted_ms, fit.loo_ms, fit.fit_errors,
                                fit.loo_errors):
        typer.echo(f"  {p.label:<40}{p.ms:>7.1f} ms{f:>8.1f} ({fe:+5.1%}){lo:>10.1f} ({le:+5.1%})")
    worst = float(np.abs(fit.loo_errors).max())
    typer.echo(f"  leave-one-out: max |error| {worst:.1%}, median "
               f"{float(np.median(np.abs(fit.loo_errors))):.1%} (each point predicted by a fit "
               f"without it)")
    if sweep:
        typer.echo(f"  {'size sweep (latency / at largest size)':<40}{'published':>10}"
                   f"{'fit':>16}{'size left out':>18}")
        for sp, f, lo in zip(sweep, fit.sweep_fitted, fit.sweep_loso):
            typer.echo(f"  {sp.label:<40}{sp.ratio:>10.3f}{f:>9.3f} ({f / sp.ratio - 1:+5.1%})"
                       f"{lo:>10.3f} ({lo / sp.ratio - 1:+5.1%})")
        errs = np.abs(fit.sweep_loso_errors)
        typer.echo(f"  size left out: max |error| {errs.max():.1%}, median "
                   f"{float(np.median(errs)):.1%} (each size's ratios predicted by a fit "
                   f"without that size)")
    if fit.held_out:
        typer.echo(f"  {'held out (never fitted)':<40}{'published':>10}{'predicted':>16}")
        for p, ms, err in zip(fit.held_out, fit.held_out_ms, fit.held_out_errors):
            typer.echo(f"  {p.label:<40}{p.ms:>7.1f} ms{ms:>8.1f} ({err:+5.1%})")
        typer.echo(f"  held out: max |error| {np.abs(fit.held_out_errors).max():.1%}")


# the options of `netadapt profile`
_SeedSpecsOpt = Annotated[list[Path] | None, typer.Option(
    "--spec", help="Seed spec(s) whose every reachable width the table must cover "
    "(repeatable) [default: mobilenetv3_large, shipped]")]
_ValidateOpt = Annotated[int, typer.Option(
    help="Instead of profiling: measure N random reduced variants of each --spec end "
    "to end and report the table's error (saved beside the table)", min=0)]
_FreshOpt = Annotated[bool, typer.Option(
    help="Start a new table instead of extending the existing one (it is replaced "
    "only when the new one is complete)")]
_EstimateFromOpt = Annotated[str | None, typer.Option(
    help="Build an ESTIMATE for --device from this device's table and the published "
    "latencies in the device profile (no phone needed)")]
_InputSizesOpt = Annotated[list[int] | None, typer.Option(
    "--input-size", help="Square input size at which to cover every width the search "
    "can reach from each --spec (repeatable) [default: the spec's own size]; with "
    "--validate: the sizes to validate at", min=16)]
_ClockOpt = Annotated[str | None, typer.Option(
    help="Timer for a local or ssh device: wall (elapsed) or thread (this thread's CPU "
    "time: not charged for pre-emption by other processes) [default: the device "
    "profile's runtime.clock, else wall]")]
_RecalibrateOpt = Annotated[bool, typer.Option(
    help="Calibrate every --spec at its sizes again, even where the table covers it "
    "already (no entry is timed again)")]
_RetimeOpt = Annotated[bool, typer.Option(
    help="Time again every entry each --spec needs at its sizes, then calibrate it "
    "again; the table's other entries stay (for entries timed on a busy or another "
    "machine; a seed sharing entries keeps its calibration)")]
_MultiplierSizesOpt = Annotated[str, typer.Option(
    help="Input sizes at which to cover each --spec and its x0.35/0.5/0.75/1.0 width "
    "multipliers (comma-separated, or 'none'); the sizes the resolution baseline tries "
    "below each --input-size (multiples of 16, down to 32) are always covered")]
_ProcessesOpt = Annotated[int | None, typer.Option(
    help="Timing processes for a local device, each timing its own chunks "
    "[default: the device profile's protocol.processes, else 1]", min=1)]


@command
def profile(
    device: DeviceOpt,
    spec: _SeedSpecsOpt = None,
    validate: _ValidateOpt = 0,
    fresh: _FreshOpt = False,
    estimate_from: _EstimateFromOpt = None,
    input_size: _InputSizesOpt = None,
    clock: _ClockOpt = None,
    recalibrate: _RecalibrateOpt = False,
    retime: _RetimeOpt = False,
    multiplier_sizes: _MultiplierSizesOpt = "96,128,160,192,224,256",
    processes: _ProcessesOpt = None,
) -> None:
    """Build or extend a device's latency table (resumable), or validate it."""
    from .latency import load_device, load_table
    from .latency.build import profile as build_table
    from .latency.coverage import parse_sizes
    from .latency.devices import with_overrides
    from .latency.journal import journal_path
    from .latency.validate import validate_seeds
    from .resources import default_spec
    from .spec import load_spec

    dev = with_overrides(load_device(device), clock, processes)
    if estimate_from is not None:
        _estimate(dev, estimate_from)
        return
    seeds = [load_spec(p) for p in spec or [default_spec()]]
    sizes = input_size or []
    extra = parse_sizes(multiplier_sizes)
    if validate:
        table = load_table(device)
        for seed, summary, saved in validate_seeds(
                table, dev, seeds, validate, sizes, suffix="" if clock is None else f"_{clock}"):
            _print_validation(f"{seed.name} on {table.label()}: {validate} variants", summary,
                              saved)
        return
    try:
        result = build_table(dev, seeds, fresh=fresh, input_sizes=sizes,
                             multiplier_sizes=extra, recalibrate=recalibrate, retime=retime)
    except KeyboardInterrupt:
        typer.secho(f"interrupted: measured entries are saved in {journal_path(device)}; "
                    f"run the same command to continue", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    _print_profile(device, result)


def _print_validation(what: str, summary: dict[str, Any], saved: Path) -> None:
    typer.echo(
        f"{what}, median |error| {summary['median_abs_error']:.1%}, max "
        f"{summary['max_abs_error']:.1%}, within 5% {summary['within_5pct']:.0%}, within 10% "
        f"{summary['within_10pct']:.0%}, Spearman {summary['spearman']:.3f}; deep variants: "
        f"median {summary.get('deep_median_abs_error', 0):.1%}, max "
        f"{summary.get('deep_max_abs_error', 0):.1%}; lopsided: median "
        f"{summary.get('lopsided_median_abs_error', 0):.1%}, max "
        f"{summary.get('lopsided_max_abs_error', 0):.1%} (saved {saved})")


def _print_profile(device: str, result: Any) -> None:
    typer.echo(f"{device}: {result.rows:,} entries ({result.measured:,} timed this run, "
               f"{result.remeasured:,} of them repeats of noisy entries) in "
               f"{result.seconds / 60:.1f} min")
    for cal in result.calibration:
        boundary = cal.get("boundary_ms_per_m", 0.0)
        per_entry = cal.get("per_entry_ms", 0.0)
        typer.echo(f"  calibration {cal['seed']}: factor {cal['factor']:.3f}"
                   + (f", boundary {boundary:.3f} ms per M input elements" if boundary else "")
                   + (f", {per_entry * 1000:.1f} us per entry" if per_entry else "")
                   + f" (seed end to end {cal['seed_e2e_ms']:.2f} ms, table sum "
                   f"{cal['table_sum_ms']:.2f} ms; {cal['calibration_variants']} variants, "
                   f"median fit error {cal['fit_median_abs_error']:.1%})")


@command
def latency(
    spec_path: SpecArg,
    device: Annotated[str, typer.Option(
        "--device", "-d", help="Device profile with a table (netadapt devices)")] = "pixel",
    measure: Annotated[bool, typer.Option(
        help="Also measure end to end on the device and print the error")] = False,
    input_size: Annotated[int | None, typer.Option(
        help="Square input size to predict at [default: the spec's own]", min=8)] = None,
) -> None:
    """Predicted latency of a spec on a device, per block; optionally measured."""
    from .latency import load_device, load_table
    from .spec import at_size, load_spec

    spec = load_spec(spec_path)
    if input_size is not None:
        spec = at_size(spec, input_size)
    table = load_table(device)
    rows = table.breakdown_ms(spec)
    total = table.predict_ms(spec)
    est = " ESTIMATE" if table.is_estimate else ""
    typer.echo(f"{spec.name} on {table.label()}")
    for name, ms in rows:
        typer.echo(f"  {name:<20} {ms:8.3f} ms  {ms / total:6.1%}")
    typer.secho(f"predicted: {total:.2f} ms{est}", bold=True)
    if measure:
        from .latency import measure_e2e

        dev = load_device(device)
        got = measure_e2e(spec, dev, table)
        typer.echo(f"measured:  {got['raw_ms']:.2f} ms end to end now (fast-tail); error "
                   f"{total / got['raw_ms'] - 1:+.1%} (host drift included)")
        if "vs_seed_ms" in got:
            typer.echo(f"           {got['vs_seed_ms']:.2f} ms relative to {got['seed']} "
                       f"timed in the same runs; error {total / got['vs_seed_ms'] - 1:+.1%}")


def main() -> None:
    """Console-script entry point."""
    app()
