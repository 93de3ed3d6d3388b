"""The command line: `elastic-deploy …` or `python -m deploy …`.

Every DeployError ends the command with one line on stderr and exit code 2 (a traceback only with
--debug); what the commands report goes through rich on stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from deploy.errors import DeployError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Select, extract, export, compile and validate elastic-transformer subnets per device.",
)
tables_app = typer.Typer(no_args_is_help=True, help="Latency tables: build (measure) and validate.")
app.add_typer(tables_app, name="tables")
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="target name (a file in targets/)")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option("--precision", help="one of the target's precisions (default: all for build, the first for validate)"),
]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="model variant (default: the target's)")]
ExecutorOpt = Annotated[
    str,
    typer.Option(
        "--executor", help="local (this process) or ray (the target's devices as Ray actors; evaluations as tasks)"
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", help="an existing Ray cluster (HOST:6379, or auto on one of its nodes)"),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    _state["debug"] = debug
    # Our own INFO messages; the libraries' (torch.onnx, onnxscript: hundreds of lines per export) only
    # from WARNING up, unless --verbose.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
    )
    logging.getLogger("deploy").setLevel(logging.DEBUG if verbose else logging.INFO)


def _say(message: str) -> None:
    console.print(message, highlight=False)


def _executor(name: str, address: str | None) -> Any:
    """A context manager giving the executor; it releases what the executor started (actors, a cluster)."""
    from deploy.executors import open_executor

    return open_executor(name, address)


@app.command()
def deploy(
    target: TargetOpt,
    model: ModelOpt = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default dist/<target>)")] = None,
    measure: Annotated[bool, typer.Option(help="measure the artifact where the runner can")] = True,
) -> None:
    """Pick the best subnet within the target's budget and package its compiled artifact."""
    from deploy.pipeline import deploy as run_deploy

    result = run_deploy(target, model, out_dir=out, measure=measure, say=lambda m: _say(escape(m)))
    lat = result.manifest["latency"]
    _say(
        f"[bold green]done[/]: {result.out_dir}/report.md — predicted {lat['predicted_ms']:.3f} ms"
        + (f", measured {lat['measured_ms']:.3f} ms" if lat["measured_ms"] is not None else "")
        + f", budget {lat['budget_ms']} ms. Next: "
        + (
            f"on the device, `{build}`"
            if (build := result.manifest["validation"].get("build_on_device"))
            else f"`make test`, or ship {result.manifest['artifact']['path']}"
        )
    )


@app.command("bench")
def bench_cmd(
    target: TargetOpt,
    dist: Annotated[Path | None, typer.Option(help="folder holding manifest.json (default dist/<target>)")] = None,
    update_baseline: Annotated[
        bool, typer.Option("--update-baseline", help="store this run as bench/baselines/<target>.json")
    ] = False,
    sustained: Annotated[
        float, typer.Option("--sustained", min=0, help="keep measuring this many seconds and report drift")
    ] = 0.0,
    tolerance: Annotated[
        float | None, typer.Option("--tolerance", min=0, help="allowed % between measured and predicted")
    ] = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    drift: Annotated[
        bool, typer.Option(help="time reference blocks first; gate on the prediction corrected for drift")
    ] = True,
) -> None:
    """Measure the deployed artifact on its target; fail on budget, prediction or baseline regression."""
    from deploy.latency.bench import bench as run_bench

    with _executor(executor, ray_address) as ex:
        result = run_bench(
            target,
            dist_dir=dist,
            update_baseline=update_baseline,
            sustained_s=sustained,
            tolerance_pct=tolerance,
            say=_say,
            executor=ex,
            drift=drift,
        )
    _say(f"[bold green]bench passed[/]: {result.md_path}")


def model_list(target: Any, model: str | None) -> tuple[str, ...]:
    """--model if given, else every model the target serves."""
    return (model,) if model else target.served_models


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
    from deploy.families import build
    from deploy.latency.build import build_table
    from deploy.models.checkpoint import default_path
    from deploy.models.checkpoint import load as load_checkpoint
    from deploy.targets import load_target

    t = load_target(target)
    # Latency does not depend on weights: a variant without a shipped checkpoint is measured untrained.
    supernets = [load_checkpoint(m)[0] if default_path(m).exists() else build(m) for m in model_list(t, model)]
    with _executor(executor, ray_address) as ex:
        results = [
            (p, build_table(t.at_precision(p), supernets, rebuild=rebuild, recalibrate=recalibrate, executor=ex))
            for p in ([precision] if precision else t.search_precisions)
        ]
    for p, result in results:
        cal = result.calibration
        spread = ", ".join(f"{d}: {n}" for d, n in sorted(result.by_device.items()))
        _say(
            (
                f"[bold green]wrote[/] {result.path}: "
                if result.measured or recalibrate
                else f"{result.path} is up to date: "
            )
            + f"{result.measured} blocks measured{f' ({spread})' if len(result.by_device) > 1 else ''}, "
            f"{result.reused} reused; "
            f"calibration over {cal.n_subnets} subnets fits within {cal.residual_pct:.1f}% (RMS). "
            f"Next: `elastic-deploy tables validate --target {target} --precision {p} --samples 20`"
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
    from deploy.families import build
    from deploy.latency.transfer_table import transfer_table
    from deploy.models.checkpoint import default_path
    from deploy.models.checkpoint import load as load_checkpoint
    from deploy.targets import load_target

    t = load_target(target)
    t = t.at_precision(precision) if precision else t
    supernets = [load_checkpoint(m)[0] if default_path(m).exists() else build(m) for m in model_list(t, model)]
    with _executor(executor, ray_address) as ex:
        result = transfer_table(
            t, sources, supernets, samples=samples, fit=fit, blocks_per_kind=blocks_per_kind, seed=seed,
            force=force, path=out, executor=ex, say=_say,
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
    from deploy.latency.validate import validate_table
    from deploy.models.checkpoint import load as load_checkpoint
    from deploy.targets import load_target

    t = load_target(target)
    t = t.at_precision(precision) if precision else t
    supernet, _ = load_checkpoint(model or t.model)
    with _executor(executor, ray_address) as ex:
        report = validate_table(
            t, supernet, samples=samples, seed=seed, json_path=json_out, write_back=write_back, executor=ex
        )
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


@app.command("accuracy")
def accuracy_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="model variant (its shipped checkpoint)")],
    samples: Annotated[int, typer.Option(min=1, help="candidate subnets to evaluate (seeded, distinct)")] = 200,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    split: Annotated[str, typer.Option(help="val or test (train is for training)")] = "val",
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
) -> None:
    """Evaluate many candidate subnets exactly on a split, into the accuracy cache that deploys read."""
    from deploy.accuracy.sweep import sweep

    with _executor(executor, ray_address) as ex:
        r = sweep(model, samples, seed=seed, split=split, executor=ex)
    rate = f" in {r.seconds:.1f} s ({r.per_second:.1f}/s with the {executor} executor)" if r.evaluated else ""
    _say(
        f"[bold green]{r.candidates} candidates[/] of {model} on {r.images} {split} images: {r.evaluated} "
        f"evaluated{rate}, {r.candidates - r.evaluated} from the cache; best {r.best[0]} {r.best[1]:.2%}, "
        f"worst {r.worst[0]} {r.worst[1]:.2%}; cache {escape(str(r.cache_path))}"
    )


@app.command("compile")
def compile_cmd(
    onnx: Annotated[Path, typer.Argument(help="model.onnx from a deploy (references.npz beside it is used)")],
    target: TargetOpt,
    out: Annotated[Path | None, typer.Option(help="output folder (default: beside the ONNX)")] = None,
) -> None:
    """Compile a packaged ONNX for the target's backend on the device (e.g. a TensorRT engine on a Jetson)."""
    from deploy.export.compile import compile_onnx

    result = compile_onnx(onnx, target, out_dir=out)
    _say(f"[bold green]compiled[/] {result.artifact.path} ({escape(result.summary)})")


@app.command("convert")
def convert_cmd(
    model: Annotated[
        str, typer.Option("--model", "-m", help="MODULE:FACTORY, a zero-argument callable returning an nn.Module")
    ],
    target: TargetOpt,
    input_shape: Annotated[
        str | None,
        typer.Option("--input-shape", help="example input shape, e.g. 1,3,224,224 (default: the model's input_shape)"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default dist/<target>-<factory>)")] = None,
    measure: Annotated[bool, typer.Option(help="measure the artifact where the runner can")] = True,
) -> None:
    """Convert a plain torch model (no subnet selection) for the target, validate it and package it."""
    from deploy.export.convert import convert

    result = convert(
        model, target, input_shape=input_shape, out_dir=out, measure=measure, say=lambda m: _say(escape(m))
    )
    m = result.manifest
    parity = m["validation"]["parity"]
    onnx = m["validation"]["onnx_parity_onnxruntime"]
    checked = f"parity {parity['max_abs_diff']:.2e}" if parity else f"ONNX parity {onnx['max_abs_diff']:.2e}"
    measured = m["latency"]["measured_ms"]
    build = m["validation"].get("build_on_device")
    _say(
        f"[bold green]done[/]: {escape(str(result.out_dir))}/ — {checked}"
        + (f", measured {measured:.3f} ms" if measured is not None else "")
        + ". Next: "
        + (f"on the device, `{escape(build)}`" if build else f"ship {escape(m['artifact']['path'])}")
    )


@app.command("select")
def select_cmd(
    candidates: Annotated[Path, typer.Option(help="CSV with one row per measured candidate")],
    budget_ms: Annotated[float, typer.Option(help="latency budget in ms")],
    latency_column: Annotated[str, typer.Option(help="column holding latency in ms")] = "latency_ms",
    accuracy_column: Annotated[str, typer.Option(help="column holding accuracy")] = "accuracy",
    id_column: Annotated[str, typer.Option(help="column identifying a candidate")] = "id",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the chosen row as JSON")] = None,
) -> None:
    """Choose the most accurate candidate within the budget from externally measured rows."""
    from deploy.io import atomic_write_json
    from deploy.packaging.output import check_output_file
    from deploy.search.candidates import select_from_csv

    if json_out is not None:
        check_output_file(json_out, "--json")  # before reading: a wrong path fails first, and alone
    row = select_from_csv(candidates, budget_ms, latency_column, accuracy_column, id_column)
    _say(json.dumps(row, indent=2))
    if json_out:
        atomic_write_json(json_out, row)


@app.command()
def train(
    model: Annotated[str, typer.Option("--model", "-m", help="model variant to train")] = "matformer_vit_mnist",
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    depth: Annotated[
        int | None, typer.Option(help="learngene models: fine-tune the descendant of this depth as <model>_tuned")
    ] = None,
) -> None:
    """Train a model variant here (CPU) and write its checkpoint under checkpoints/."""
    from deploy.training.train import train as run_train

    result = run_train(model, seed=seed, depth=depth)
    _say(f"[bold green]trained[/] {result}")


@app.command()
def targets() -> None:
    """List the targets: backend, precisions, budget, default model, and whether its latencies are measured."""
    from deploy.latency.table import LatencyTable
    from deploy.targets import known_targets, load_target

    table = Table(title="targets")
    for col in ("name", "device", "backend", "precisions", "budget ms", "model", "latency table"):
        table.add_column(col)
    for name in known_targets():
        t = load_target(name)
        try:
            lat = LatencyTable.load(t.table_path, name)
            v = lat.validation
            method = lat.provenance.method.upper() if lat.provenance.method != "measured" else "measured"
            status = method + (f", {v.median_abs_pct_error:.1f}% median error" if v else "")
        except DeployError as exc:
            status = f"[red]{type(exc).__name__}[/]"
        table.add_row(
            t.name, t.device.name, t.backend, ", ".join(t.search_precisions), f"{t.budget_ms}", t.model, status
        )
    console.print(table)


@app.command()
def families() -> None:
    """List the registered families and variants: search-space size and the shipped checkpoint's accuracy."""
    from deploy.accuracy.oracle import accuracy_cache_path
    from deploy.families import VARIANTS, build
    from deploy.io import read_json
    from deploy.models.checkpoint import default_path, train_command

    table = Table(title="model variants")
    for col in ("variant", "family", "space size", "shipped checkpoint: val accuracy range (evaluated subnets)"):
        table.add_column(col)
    for name in VARIANTS.names():
        net = build(name)
        meta_path = default_path(name).with_suffix(".json")
        cache = accuracy_cache_path(default_path(name))
        if meta_path.exists():  # every evaluated subnet (the cache), else the named ones of the meta
            val = read_json(meta_path).get("meta", {}).get("accuracy", {}).get("val", {})
            if cache.exists():
                val = {e["id"]: e["accuracy"] for e in read_json(cache).get("entries", [])} or val
            acc = f"{min(val.values()):.2%} – {max(val.values()):.2%}" if val else "not recorded"
        else:
            acc = f"none ({train_command(name)})"
        size = net.space().size()
        table.add_row(name, net.family, f"{size:,}" if size < 10**7 else f"{size:.2e}", acc)
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except DeployError as exc:
        if _state["debug"]:
            raise
        label = "interrupted" if exc.exit_code == 130 else "error"
        err_console.print(f"[bold red]{label}:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        # Every write is atomic and long work saves as it goes: nothing is half-written.
        err_console.print(
            "[bold red]interrupted:[/] nothing was half-written; run the same command again (builds and "
            "evaluations resume where they stopped)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(130)
