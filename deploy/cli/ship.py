"""Commands that ship an artifact: deploy, bench, compile, convert, select."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from deploy.cli.app import ExecutorOpt, ModelOpt, RayAddressOpt, TargetOpt, _executor, _say, app
from deploy.cli.progress import evaluation_bars
from deploy.errors import InvalidArgumentError


def _check_positive(flag: str, value: float | None, unit: str, most: float | None = None) -> None:
    """A float option left out (None), or a positive finite number (at most `most`): click takes inf and nan."""
    if value is None:
        return
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgumentError(f"{flag} {value:g} is not a positive, finite number of {unit}; give one such as 10")
    if most is not None and value > most:
        raise InvalidArgumentError(f"{flag} {value:g} is more than {most:g} {unit}; give at most {most:g}")


@app.command()
def deploy(
    target: TargetOpt,
    model: ModelOpt = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default dist/<target>)")] = None,
    measure: Annotated[bool, typer.Option(help="measure the artifact where the runner can")] = True,
) -> None:
    """Pick the best subnet within the target's budget and package its compiled artifact."""
    from deploy.flows.deploy import deploy as run_deploy
    from deploy.packaging.manifest import LMManifest

    with evaluation_bars() as progress:
        result = run_deploy(
            target, model, out_dir=out, measure=measure, progress=progress, say=lambda m: _say(escape(m))
        )
    manifest = result.manifest
    if isinstance(manifest, LMManifest):
        lm = manifest.latency
        measured = (
            f"; measured TTFT {lm.measured.ttft_ms:.3f} ms and {lm.measured.ms_per_token:.3f} ms/token over a "
            f"{lm.measured.generated_tokens}-token generation"
            if lm.measured
            else ""
        )
        _say(
            f"[bold green]done[/]: {result.out_dir}/report.md — predicted TTFT {lm.predicted_ttft_ms:.3f} ms at "
            f"{lm.ttft_prompt} tokens and {lm.predicted_ms_per_token:.3f} ms/token at {lm.decode_context} of "
            f"context{measured}. Next: "
            f'`elastic-deploy generate --dist {result.out_dir} "def main("`'
        )
        return
    lat = manifest.latency
    _say(
        f"[bold green]done[/]: {result.out_dir}/report.md — predicted {lat.predicted_ms:.3f} ms"
        + (f", measured {lat.measured_ms:.3f} ms" if lat.measured_ms is not None else "")
        + f", budget {lat.budget_ms} ms. Next: "
        + (
            f"on the device, `{build}`"
            if (build := manifest.build_on_device)
            else f"`elastic-deploy bench --target {target}`, or ship {manifest.artifact.path}"
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
        float | None, typer.Option("--sustained", help="keep measuring this many seconds and report drift")
    ] = None,
    tolerance: Annotated[
        float | None, typer.Option("--tolerance", help="allowed % between measured and predicted")
    ] = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    drift: Annotated[
        bool, typer.Option(help="time reference blocks first; gate on the prediction corrected for drift")
    ] = True,
) -> None:
    """Measure the deployed artifact on its target; fail on budget, prediction or baseline regression."""
    from deploy.flows.bench import MAX_SUSTAINED_S
    from deploy.flows.bench import bench as run_bench

    _check_positive("--sustained", sustained, "seconds", MAX_SUSTAINED_S)
    _check_positive("--tolerance", tolerance, "percent")
    with _executor(executor, ray_address) as ex:
        result = run_bench(
            target,
            dist_dir=dist,
            update_baseline=update_baseline,
            sustained_s=sustained or 0.0,
            tolerance_pct=tolerance,
            say=_say,
            executor=ex,
            drift=drift,
        )
    _say(f"[bold green]bench passed[/]: {result.md_path}")


@app.command("compile")
def compile_cmd(
    onnx: Annotated[Path, typer.Argument(help="model.onnx from a deploy (references.npz beside it is used)")],
    target: TargetOpt,
    out: Annotated[Path | None, typer.Option(help="output folder (default: beside the ONNX)")] = None,
) -> None:
    """Compile a packaged ONNX for the target's backend on the device (e.g. a TensorRT engine on a Jetson)."""
    from deploy.flows.compile import compile_onnx

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
    from deploy.flows.convert import convert

    result = convert(
        model, target, input_shape=input_shape, out_dir=out, measure=measure, say=lambda m: _say(escape(m))
    )
    m = result.manifest
    parity = m.validation["parity"]
    onnx = m.validation["onnx_parity_onnxruntime"]
    checked = f"parity {parity['max_abs_diff']:.2e}" if parity else f"ONNX parity {onnx['max_abs_diff']:.2e}"
    measured = m.latency.measured_ms
    build = m.build_on_device
    _say(
        f"[bold green]done[/]: {escape(str(result.out_dir))}/ — {checked}"
        + (f", measured {measured:.3f} ms" if measured is not None else "")
        + ". Next: "
        + (f"on the device, `{escape(build)}`" if build else f"ship {escape(m.artifact['path'])}")
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
