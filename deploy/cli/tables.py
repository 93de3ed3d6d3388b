"""`elastic-deploy tables …`: build (measure), estimate, validate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from deploy.cli.app import (
    ExecutorOpt,
    ModelOpt,
    PrecisionOpt,
    RayAddressOpt,
    TargetOpt,
    _executor,
    _say,
    console,
    model_list,
    tables_app,
)
from deploy.cli.progress import measurement_bars
from deploy.errors import InvalidArgumentError

if TYPE_CHECKING:
    from deploy.families.base import Supernet
    from deploy.targets import Target


@tables_app.command("build")
def tables_build(
    target: TargetOpt,
    model: ModelOpt = None,
    rebuild: Annotated[bool, typer.Option(help="measure every entry again")] = False,
    recalibrate: Annotated[
        bool, typer.Option(help="measure the calibration subnets again (the machine's speed moved); keeps the blocks")
    ] = False,
    precision: PrecisionOpt = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
) -> None:
    """Measure every block the target's models can produce (the union over the models it serves; one
    table per precision it lists); resumes where an interrupted build stopped. With --executor ray the
    blocks are spread over the target's devices."""
    from deploy import workspace
    from deploy.latency.build import build_table
    from deploy.models.checkpoint import latency_model
    from deploy.targets import load_target

    t = load_target(target)
    if t.lm is not None:  # flags an LM build cannot honour are refused before anything starts
        from deploy.lm.latency import check_lm_executor, check_lm_precision

        check_lm_precision(t, precision)
        check_lm_executor(t, executor)
    workspace.check_writable(t.table_write_path.parent, "latency table folder")  # before any measuring
    workspace.check_writable(workspace.cache_dir(), "cache")
    supernets = [latency_model(m) for m in model_list(t, model)]
    if t.lm is not None:  # a language model: prefill and decode blocks, one fit per regime (deploy/lm/latency.py)
        _build_lm(t, supernets, rebuild, recalibrate, executor, ray_address)
        return
    with _executor(executor, ray_address) as ex:
        results = []
        for p in [precision] if precision else t.search_precisions:
            at = t.at_precision(p)
            with measurement_bars() as progress:
                built = build_table(
                    at, supernets, rebuild=rebuild, recalibrate=recalibrate, progress=progress, executor=ex
                )
            results.append((p, built))
    for p, result in results:
        cal = result.calibration
        spread = ", ".join(f"{d}: {n}" for d, n in sorted(result.by_device.items()))
        _say(
            (f"[bold green]wrote[/] {result.path}: " if result.written else f"{result.path} is up to date: ")
            + f"{result.measured} blocks measured{f' ({spread})' if len(result.by_device) > 1 else ''}, "
            f"{result.reused} reused; "
            f"calibration over {cal.n_subnets} subnets fits within {cal.residual_pct:.1f}% (RMS). "
            f"Next: `elastic-deploy tables validate --target {target} --precision {p} --samples 20`"
        )


def _build_lm(
    t: Target,
    supernets: list[Supernet],
    rebuild: bool,
    recalibrate: bool,
    executor: str,
    ray_address: str | None,
) -> None:
    from deploy.lm.latency import build_lm_table

    with _executor(executor, ray_address) as ex:
        for net in supernets:
            with measurement_bars() as progress:
                lm = build_lm_table(t, net, rebuild=rebuild, recalibrate=recalibrate, progress=progress, executor=ex)
            fits = ", ".join(f"{k} {v['residual_pct']:.1f}%" for k, v in lm.fits.items())
            _say(
                (f"[bold green]wrote[/] {lm.path}: " if lm.written else f"{lm.path} is up to date: ")
                + f"{lm.blocks} prefill/decode blocks measured interleaved, "
                f"calibrated on {lm.graphs} {lm.calibrated_on}; fits {fits}. "
                f"Next: `elastic-deploy tables validate --target {t.name} --samples 10`"
            )


@tables_app.command("estimate")
def tables_estimate(target: TargetOpt) -> None:
    """Write an ESTIMATED table: the source target's measured table scaled by the anchor-derived factor."""
    from deploy.errors import ConfigFileError
    from deploy.latency.estimate import estimate_tables
    from deploy.targets import load_target

    t = load_target(target)
    spec = t.estimate
    if spec is None:
        raise ConfigFileError(
            f"target {target} has no 'estimate' section; measure its table on the device with "
            f"`make latency-tables TARGET={target}` instead"
        )
    for result in estimate_tables(t):
        anchor = (
            f" ({spec.anchor.model} measured at {result.anchor_source_ms:.3f} ms on {spec.source_target})"
            if spec.anchor is not None and result.anchor_source_ms is not None
            else ""
        )
        _say(
            f"[bold yellow]wrote ESTIMATED[/] {result.path}: {result.entries} {result.precision} blocks of "
            f"{spec.source_target} × {result.factor:.4g}{anchor}; expected error ±{spec.expected_error_pct:.0f}%"
        )
    _say(f"Measure it for real on the device with `make latency-tables TARGET={target}` once one is attached")


@tables_app.command("transfer")
def tables_transfer(
    target: TargetOpt,
    sources: Annotated[
        list[str],
        typer.Option("--from", help="a measured source table: TARGET or TARGET:PRECISION (repeat for several)"),
    ],
    samples: Annotated[int, typer.Option(help="whole subnets to measure on the new target's device")] = 30,
    model: ModelOpt = None,
    precision: PrecisionOpt = None,
    fit: Annotated[
        str, typer.Option(help="transfer model: auto (chosen by held-out error) or one of the candidates")
    ] = "auto",
    blocks_per_kind: Annotated[int, typer.Option(min=0, help="blocks per kind also measured on the device")] = 2,
    seed: Annotated[int, typer.Option(help="seed of the candidate subnets")] = 0,
    force: Annotated[bool, typer.Option(help="replace a MEASURED table of the target")] = False,
    out: Annotated[Path | None, typer.Option(help="write the table here instead of the target's table")] = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
) -> None:
    """Write a TRANSFERRED table: measured source tables mapped to the target's device by N subnets measured there."""
    from deploy.latency.transfer_table import transfer_table
    from deploy.models.checkpoint import latency_model
    from deploy.packaging.output import check_output_file
    from deploy.targets import load_target

    t = load_target(target)
    if t.lm is not None:
        raise InvalidArgumentError(
            f"tables transfer maps an image model's block tables; {target} is a language-model target: measure its "
            f"table with `elastic-deploy tables build --target {target}` (or estimate it from an estimate: section)"
        )
    if out is not None:
        check_output_file(out, "--out")  # before measuring: a wrong path fails first, and alone
    t = t.at_precision(precision) if precision else t
    supernets = [latency_model(m) for m in model_list(t, model)]
    with _executor(executor, ray_address) as ex, measurement_bars() as progress:
        result = transfer_table(
            t, sources, supernets, samples=samples, fit=fit, blocks_per_kind=blocks_per_kind, seed=seed,
            force=force, path=out, progress=progress, executor=ex, say=_say,
        )  # fmt: skip
    r = result.record
    for c in r.candidates:
        figures = (
            f"held-out median {c.heldout.median_abs_pct:.2f}%, within ±10% {c.heldout.within_10pct:.2f}"
            if c.heldout
            else f"skipped: {c.skipped}"
        )
        _say(f"  {'*' if c.model == r.model else ' '} {c.model:<20} {c.n_params:>3} parameters  {figures}")
    _say(
        f"[bold yellow]wrote TRANSFERRED[/] {result.path}: {r.model} from "
        f"{', '.join(f'{s.target} ({s.method}, {s.precision})' for s in r.sources)}, fitted on {r.n_subnets} "
        f"subnets measured on {escape(r.where)} (+{len(r.blocks)} blocks); held-out error "
        f"{r.heldout.median_abs_pct:.2f}% median, {r.heldout.p90_abs_pct:.2f}% p90, within ±10% "
        f"{r.heldout.within_10pct:.2f} ({r.heldout.folds}-fold cross-validation; repeatability "
        f"{r.repeatability_pct:.2f}%). Next: `elastic-deploy tables validate --target "
        f"{target}{f' --precision {t.precision}' if precision else ''} --samples 20`"
    )


@tables_app.command("validate")
def tables_validate(
    target: TargetOpt,
    samples: Annotated[int, typer.Option(min=2, help="random subnets to measure end to end")] = 20,
    seed: Annotated[int, typer.Option(help="sampling seed (differs from the calibration's)")] = 12345,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    model: ModelOpt = None,
    write_back: Annotated[bool, typer.Option(help="store the figures in the table (sets the budget margin)")] = True,
    precision: PrecisionOpt = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
) -> None:
    """Measure random subnets end to end and report how far the table's prediction is from them."""
    from deploy import workspace
    from deploy.latency.validate import validate_table
    from deploy.models.checkpoint import load as load_checkpoint
    from deploy.packaging.output import check_output_file
    from deploy.targets import load_target

    t = load_target(target)
    if t.lm is not None and executor != "local":
        raise InvalidArgumentError(
            f"--executor {executor}: tables validate of {target}, a language-model target, times whole generation "
            "loops in this process; run it without --executor (nothing was measured)"
        )
    t = t.at_precision(precision) if precision else t
    if json_out is not None:  # where the results go is checked before measuring
        check_output_file(json_out, "--json")
    if write_back:
        workspace.check_writable(t.table_write_path.parent, "latency table folder (--no-write-back skips it)")
    supernet, _ = load_checkpoint(model or t.model)
    if t.lm is not None:  # whole generation loops: TTFT, ms/token, tokens/s (deploy/lm/validate.py)
        from deploy.lm.validate import validate_lm_table

        lm_report = validate_lm_table(
            t, supernet, samples=samples, seed=seed, json_path=json_out, write_back=write_back
        )
        _say(escape(lm_report.summary()))
        if json_out:
            _say(f"wrote {json_out}")
        return
    with _executor(executor, ray_address) as ex, measurement_bars() as progress:
        report = validate_table(
            t, supernet, samples=samples, seed=seed, json_path=json_out, write_back=write_back, progress=progress,
            executor=ex,
        )  # fmt: skip
    table = Table(title=f"{target}: prediction vs measurement ({report.samples} random subnets)")
    for col in ("subnet", "predicted ms", "measured ms", "again ms", "error %", "corrected %", "same-window %"):
        table.add_column(col, justify="right")
    for r in report.rows:
        table.add_row(
            r.subnet_id,
            f"{r.predicted_ms:.3f}",
            f"{r.measured_ms:.3f}",
            f"{r.measured_again_ms:.3f}",
            f"{r.pct_error:+.1f}",
            f"{r.corrected_pct_error:+.1f}",
            f"{r.same_window_pct_error:+.1f}",
        )
    console.print(table)
    _say(
        f"median_abs_pct_error {report.median_abs_pct_error:.2f}%  within_5pct {report.within_5pct:.2f}  "
        f"within_10pct {report.within_10pct:.2f}  worst_pct_error {report.worst_pct_error:.1f}%  "
        f"(same-window {report.same_window_median_abs_pct_error:.2f}%; repeatability of the measurement "
        f"itself {report.repeatability_pct:.2f}%; blocks now {report.drift_pct:+.1f}% vs the table; the raw "
        f"block sum without calibration is off by {report.block_sum_median_pct_error:+.1f}% (median))"
    )
    u, c = report.uncorrected, report.correction  # deploy/latency/drift.py
    _say(
        f"these are the predictions a deploy makes: the table's × {c['factor']:.3f} "
        f"({'drift check: ' + escape(c['drift_check_skipped']) if c['drift_check_skipped'] else 'drift check'}"
        f"{', observed scale' if (c['observed_scale'] or {}).get('applied') else ''}); the table alone: "
        f"median_abs_pct_error {u['median_abs_pct_error']:.2f}%  within_5pct {u['within_5pct']:.2f}  "
        f"within_10pct {u['within_10pct']:.2f}"
    )
    if json_out:
        _say(f"wrote {json_out}")
