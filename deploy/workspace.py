"""Where a user's files live: the workspace, with the shipped targets, tables, models and checkpoints as defaults.

A workspace is any folder holding some of `targets/`, `models/`, `latency_tables/`, `checkpoints/`: the
current folder, or the one `--workspace DIR` (or ELASTIC_DEPLOY_ROOT) names. A file there overrides a
shipped one of the same name; everything this tool writes (tables, checkpoints, dist/, the cache) goes
into the workspace, never into the installed package. A checkout of this repository is a workspace whose
files are the shipped ones. `elastic-deploy init DIR` scaffolds a new one.
"""

from __future__ import annotations

import os
import tempfile
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


def _check_folder_variable(name: str) -> None:
    value = os.environ.get(name)
    if not value:
        return
    path = Path(value).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == path else f"lies below the file {existing}"
        raise WorkspaceError(f"{name}={value} {where}, not a folder; point it at a folder, or unset it")


def check_writable(folder: Path, what: str) -> Path:
    """Refuse, before long work, a folder this run will write into but cannot (a read-only workspace, a file
    in the way); it need not exist yet."""
    folder = Path(folder).expanduser().absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path(folder.anchor))
    if not existing.is_dir():
        raise WorkspaceError(f"{what} {folder}: {existing} is a file, so nothing can be written there; move it aside")
    try:  # the real test (os.access says yes to root on a read-only mount)
        os.rmdir(tempfile.mkdtemp(prefix=".elastic-deploy-probe.", dir=existing))
    except OSError as exc:
        raise WorkspaceError(
            f"{what} {folder} cannot be written ({exc.strerror or exc}); nothing was done: run in a workspace you "
            "can write to (--workspace DIR, or `elastic-deploy init DIR`)"
        ) from None
    return folder


def check_environment() -> None:
    """Refuse, before any work, an environment variable that names a folder which is not one (a typo'd
    ELASTIC_DEPLOY_ROOT is refused as --workspace would be, rather than used and filled with a .cache)."""
    from deploy.latency.lock import _timeout_s

    env = os.environ.get(ENV)
    if env is not None:
        try:
            use(Path(env))
        except WorkspaceError as exc:
            raise WorkspaceError(f"{ENV}={env}: {exc}; or unset {ENV}") from None
    for name in ("ELASTIC_DEPLOY_CACHE", "ELASTIC_DEPLOY_LOCK_DIR"):
        _check_folder_variable(name)
    _timeout_s()


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


def _check_new_workspace(folder: Path) -> None:
    """Refuse, before writing anything, a workspace folder that is a file, lies below one, or cannot be made."""
    if folder.exists() and not folder.is_dir():
        raise WorkspaceError(f"{folder} is a file, not a folder; give a new folder for the workspace")
    if folder.is_dir() and any(folder.iterdir()):
        raise WorkspaceError(f"{folder} is not empty; give a new folder for the workspace")
    parent = next((p for p in folder.parents if p.exists()), Path(folder.anchor))
    if not parent.is_dir():
        raise WorkspaceError(f"{folder}: {parent} is a file, so the workspace cannot be made there; choose a folder")
    try:  # the real test (os.access says yes to root on a read-only mount)
        os.rmdir(tempfile.mkdtemp(prefix=".elastic-deploy-probe.", dir=parent))
    except OSError as exc:
        raise WorkspaceError(f"{folder}: cannot write in {parent} ({exc.strerror or exc}); choose a folder") from None


def scaffold(folder: Path, from_target: str) -> list[str]:
    """A new workspace in `folder`: a target copied from a shipped one (as my-cpu, serving my_model), an
    example model spec, and the empty folders; refuses a folder that already holds files. Built beside the
    folder and moved into place, so a failure leaves nothing half-made."""
    import shutil

    import yaml

    from deploy.io import atomic_write_text, read_yaml

    folder = Path(folder).expanduser().absolute()
    _check_new_workspace(folder)
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
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.init-", dir=folder.parent))
    try:
        for kind in KINDS:
            (staging / kind).mkdir()
        atomic_write_text(staging / "targets" / "my-cpu.yaml", yaml.safe_dump(target, sort_keys=False))
        atomic_write_text(staging / "models" / "my_model.yaml", EXAMPLE_MODEL)
        staging.chmod(0o755)
        if folder.is_dir():  # an empty folder the user made (or the current one): fill it
            for child in staging.iterdir():
                child.rename(folder / child.name)
        else:
            staging.rename(folder)
    except OSError as exc:
        raise WorkspaceError(f"{folder}: cannot be written ({exc.strerror or exc}); nothing was left there") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [
        f"created {folder}/targets/my-cpu.yaml (from {from_target}), {folder}/models/my_model.yaml",
        f"created empty {', '.join(k + '/' for k in KINDS if k not in ('targets', 'models'))} (tables and "
        "checkpoints you make land there; shipped targets and models stay available by name)",
    ]
