"""Commands about models and targets: families, models, targets, train, accuracy, init."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from deploy.cli.app import ExecutorOpt, RayAddressOpt, _executor, _say, app, console
from deploy.cli.progress import evaluation_bars
from deploy.errors import DeployError


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

    with _executor(executor, ray_address) as ex, evaluation_bars() as progress:
        r = sweep(model, samples, seed=seed, split=split, executor=ex, progress=progress)
    rate = f" in {r.seconds:.1f} s ({r.per_second:.1f}/s with the {executor} executor)" if r.evaluated else ""
    _say(
        f"[bold green]{r.candidates} candidates[/] of {model} on {r.images} {split} images: {r.evaluated} "
        f"evaluated{rate}, {r.candidates - r.evaluated} from the cache; best {r.best[0]} {r.best[1]:.2%}, "
        f"worst {r.worst[0]} {r.worst[1]:.2%}; cache {escape(str(r.cache_path))}"
    )


@app.command()
def train(
    model: Annotated[
        str, typer.Option("--model", "-m", help="model to train (models/<name>.yaml)")
    ] = "matformer_vit_mnist",
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    depth: Annotated[
        int | None, typer.Option(help="learngene models: fine-tune the descendant of this depth as <model>_tuned")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads (the recipes' budgets assume 2)")] = 2,
) -> None:
    """Train a model here (CPU) with its spec's recipe and write its checkpoint under checkpoints/."""
    from deploy.training.train import train as run_train

    with evaluation_bars() as progress:
        result = run_train(model, seed=seed, depth=depth, threads=threads, progress=progress)
    _say(f"[bold green]trained[/] {result}")


@app.command()
def targets() -> None:
    """List the targets: backend, precisions, budget, default model, and whether its latencies are measured.

    A target file that does not load is listed after the others with its error, and the command then exits 2
    naming every such file: one bad file neither hides the good ones nor passes unnoticed."""
    from deploy.errors import ConfigFileError
    from deploy.latency.table import LatencyTable
    from deploy.targets import known_targets, load_target

    table = Table(title="targets")
    for col in ("name", "device", "backend", "precisions", "budget ms", "model", "latency table"):
        table.add_column(col)
    bad: dict[str, DeployError] = {}
    for name in known_targets():
        try:
            t = load_target(name)
        except DeployError as exc:
            bad[name] = exc
            continue
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
    for name, exc in bad.items():
        console.print(f"[red]bad target {escape(name)}[/]: {escape(str(exc))}", highlight=False, soft_wrap=True)
    if bad:
        raise ConfigFileError(
            f"target files that do not load: {', '.join(f'{n}.yaml' for n in bad)}; fix each as its line above "
            "says, or remove it"
        )


@app.command()
def families() -> None:
    """List the registered families (built in, or from an installed plugin's entry points) and their models."""
    from deploy.families import FAMILIES
    from deploy.models import known_models, load_spec

    by_family: dict[str, list[str]] = {}
    for name in known_models():
        try:
            by_family.setdefault(load_spec(name).family, []).append(name)
        except DeployError as exc:
            _say(f"[yellow]skipped model {name}[/]: {escape(str(exc))}")
    table = Table(title="families")
    for col in ("family", "from", "models"):
        table.add_column(col)
    for name in sorted(set(FAMILIES.names()) | set(by_family)):
        table.add_row(name, FAMILIES.origin(name), ", ".join(by_family.get(name, [])) or "(none yet)")
    console.print(table)


def _cached_accuracies(cache: object) -> dict[str, float]:
    """{subnet id: metric} of an accuracy cache file; ConfigFileError when it is not one."""
    from deploy.errors import ConfigFileError

    entries = cache.get("entries", []) if isinstance(cache, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("id"), str) and isinstance(e.get("accuracy"), int | float)
        for e in entries
    ):
        raise ConfigFileError("the accuracy cache is damaged; delete it (deploys evaluate again)")
    return {e["id"]: float(e["accuracy"]) for e in entries}


@app.command()
def models() -> None:
    """List the models (models/*.yaml): family, task, search-space size and the metric range its cache knows."""
    from deploy.accuracy.oracle import accuracy_cache_path
    from deploy.io import read_json
    from deploy.models import build, known_models, load_spec
    from deploy.models.checkpoint import default_path, read_config, train_command

    table = Table(title="models")
    for col in ("model", "family", "task", "space size", "weights: val metric range (evaluated subnets)"):
        table.add_column(col)
    for name in known_models():
        try:
            spec = load_spec(name)
            net = build(name)
        except DeployError as exc:
            table.add_row(name, "?", "?", "?", f"[red]{escape(str(exc))}[/]")
            continue
        if spec.random_weights is not None:
            acc = f"seeded random weights ({spec.random_weights.why})"
        else:
            weights = default_path(name)
            meta_path, cache = weights.with_suffix(".json"), accuracy_cache_path(weights)
            if meta_path.exists():  # every evaluated subnet (the cache), else the named ones of the meta
                try:
                    val = ((read_config(weights, name).get("meta") or {}).get("accuracy") or {}).get("val") or {}
                    val = _cached_accuracies(read_json(cache)) or val if cache.exists() else val
                    fmt = spec.make_task().metric.format
                    acc = f"{fmt(min(val.values()))} – {fmt(max(val.values()))}" if val else "not recorded"
                except DeployError as exc:  # a damaged sidecar or cache: said on its row, the others still listed
                    acc = f"[red]{escape(str(exc))}[/]"
            else:
                acc = f"none yet ({train_command(name)})"
        size = net.space().size()
        table.add_row(name, spec.family, spec.task.name, f"{size:,}" if size < 10**7 else f"{size:.2e}", escape(acc))
    console.print(table)


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="the new workspace (created; must be empty if it exists)")],
    target: Annotated[
        str, typer.Option("--from-target", help="shipped target to copy as an example")
    ] = "host-cpu-ort-1t",
) -> None:
    """Scaffold a workspace: targets/, models/, latency_tables/, checkpoints/ with an example target and model spec."""
    from deploy.workspace import scaffold

    made = scaffold(folder, target)
    for line in made:
        _say(escape(line))
    where = folder.expanduser().resolve()
    cd = "" if where == Path.cwd().resolve() else f"`cd {escape(str(folder))}`, then "
    _say(
        f"[bold green]workspace ready[/] in {escape(str(where))}. Next: {cd}`elastic-deploy tables build "
        "--target my-cpu`, then `elastic-deploy deploy --target my-cpu`"
    )


@app.command()
def check(
    model: Annotated[str, typer.Option("--model", "-m", help="model to check (models/<name>.yaml)")],
) -> None:
    """Check a model's family against the protocol: extraction equals the supernet, counts, blocks, inputs."""
    from deploy.errors import PluginError
    from deploy.families.checks import CHECKS, check_family
    from deploy.models import build

    net = build(model)
    findings = check_family(net)
    if findings:
        raise PluginError(f"{model} ({net.family}) fails {len(findings)} check(s): " + "; ".join(map(str, findings)))
    _say(f"[bold green]{escape(model)}[/] ({escape(net.family)}) passes {len(CHECKS)} checks: {', '.join(CHECKS)}")
