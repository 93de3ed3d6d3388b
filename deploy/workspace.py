"""Where a user's files live: the workspace, with the shipped targets, tables, models and checkpoints as defaults.

A workspace is any folder holding some of `targets/`, `models/`, `latency_tables/`, `checkpoints/`: the
current folder, or the one `--workspace DIR` (or ELASTIC_DEPLOY_ROOT) names. A file there overrides a
shipped one of the same name; everything this tool writes (tables, checkpoints, dist/, the cache) goes
into the workspace, never into the installed package. A checkout of this repository is a workspace whose
files are the shipped ones. `elastic-deploy init DIR` scaffolds a new one.
"""

from __future__ import annotations

import os
from pathlib import Path

from deploy.errors import WorkspaceError

KINDS = ("targets", "models", "latency_tables", "checkpoints")
ENV = "ELASTIC_DEPLOY_ROOT"
_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(kind: str) -> Path | None:
    """The shipped folder of `kind`: inside an installed wheel (deploy/shipped/<kind>), else the checkout's."""
    for candidate in (_PACKAGE / "shipped" / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    return None


def root() -> Path:
    env = os.environ.get(ENV)
    return Path(env).resolve() if env else Path.cwd().resolve()


def use(folder: Path) -> Path:
    """Make `folder` the workspace of this process and of what it starts (Ray workers read ENV)."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise WorkspaceError(f"workspace {folder} does not exist; create one with `elastic-deploy init {folder}`")
    if not any((folder / kind).is_dir() for kind in KINDS):
        raise WorkspaceError(
            f"{folder} is not a workspace (it has none of {', '.join(k + '/' for k in KINDS)}); "
            f"create one with `elastic-deploy init {folder}`, or run from a folder that has targets/"
        )
    os.environ[ENV] = str(folder)
    return folder


def search_dirs(kind: str) -> list[Path]:
    """Where files of `kind` are looked up, workspace first (deduplicated: in a checkout both are one)."""
    dirs = [root() / kind]
    shipped = shipped_dir(kind)
    if shipped is not None and shipped.resolve() != dirs[0].resolve():
        dirs.append(shipped)
    return dirs


def resolve(kind: str, name: str) -> Path:
    """The file `name` of `kind` that is in force: the workspace's, else the shipped one, else where the
    workspace's would be (for messages and for writing it)."""
    for folder in search_dirs(kind):
        if (folder / name).exists():
            return folder / name
    return root() / kind / name


def names(kind: str, suffix: str) -> list[str]:
    """Stems of every `*<suffix>` file of `kind`, the workspace's and the shipped ones."""
    found: set[str] = set()
    for folder in search_dirs(kind):
        found.update(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}") if p.is_file())
    return sorted(found)


def targets_dir() -> Path:
    return root() / "targets"


def models_dir() -> Path:
    return root() / "models"


def tables_dir() -> Path:
    return root() / "latency_tables"


def checkpoints_dir() -> Path:
    return root() / "checkpoints"


def dist_dir() -> Path:
    return root() / "dist"


def cache_dir() -> Path:
    env = os.environ.get("ELASTIC_DEPLOY_CACHE")
    return Path(env).resolve() if env else root() / ".cache" / "elastic-deploy"


EXAMPLE_MODEL = """\
# An example model: MatFormer-ViT (a shipped family) at small dimensions, on the MNIST task, with seeded
# random weights so that it deploys before anything is trained. Point `family` at your own Supernet
# subclass (a registered name or package.module:Class), `dims` at its dimensions, `checkpoint` at your
# safetensors file (relative to this workspace) and `task` at your task.
name: my_model
description: example to edit (elastic-deploy init)
family: matformer_vit
dims: {patch: 7, dim: 32, depth: 4, heads: 2, ffn_max: 128}
random_weights: {seed: 0, why: "the example of elastic-deploy init: its accuracy means nothing"}
task: {name: mnist, seed: 0}
accuracy_samples: 24
"""


def scaffold(folder: Path, from_target: str) -> list[str]:
    """A new workspace in `folder`: a target copied from a shipped one (as my-cpu, serving my_model), an
    example model spec, and the empty folders; refuses a folder that already holds files."""
    import yaml

    from deploy.io import atomic_write_text, read_yaml

    folder = Path(folder).expanduser().resolve()
    if folder.exists() and any(folder.iterdir()):
        raise WorkspaceError(f"{folder} is not empty; give a new folder for the workspace")
    source = resolve("targets", f"{from_target}.yaml")
    if not source.exists():
        raise WorkspaceError(f"no shipped target {from_target} to copy; known: {', '.join(names('targets', '.yaml'))}")
    target = read_yaml(source)
    target.update(
        name="my-cpu",
        description=f"copied from {from_target} by elastic-deploy init: edit device, budget and models",
        model="my_model",
    )
    for key in ("models", "estimate"):
        target.pop(key, None)
    for kind in KINDS:
        (folder / kind).mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "targets" / "my-cpu.yaml", yaml.safe_dump(target, sort_keys=False))
    atomic_write_text(folder / "models" / "my_model.yaml", EXAMPLE_MODEL)
    return [
        f"created {folder}/targets/my-cpu.yaml (from {from_target}), {folder}/models/my_model.yaml",
        f"created empty {', '.join(k + '/' for k in KINDS if k not in ('targets', 'models'))} (tables and "
        "checkpoints you make land there; shipped targets and models stay available by name)",
    ]
