"""Supernet checkpoints: `<stem>.safetensors` (weights) beside `<stem>.json` (what they belong to).

Only safetensors is ever read: a pickle (torch.save) can run code when loaded, so it is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from deploy import workspace
from deploy.errors import CheckpointError, ConfigFileError
from deploy.families import Supernet
from deploy.io import atomic_write_bytes, atomic_write_json, pydantic_error_line, read_json
from deploy.models.spec import ModelSpec, build_from_spec, load_spec
from deploy.tasks import get_task
from deploy.tasks.base import Task

log = logging.getLogger(__name__)

FORMAT = 1
SUFFIX = ".safetensors"


class _Strict(BaseModel):
    # strict: a seed of "0" or 1.0 is a hand edit gone wrong, not something to coerce
    model_config = ConfigDict(extra="forbid", strict=True)


class AccuracyCacheRef(_Strict):
    """How training sampled the shipped accuracy cache (build_accuracy_model reuses it)."""

    split: str = "val"
    samples: int = Field(ge=0)
    seed: int


class TokenizerRef(_Strict):
    """The tokenizer training saved beside the weights (a language model's)."""

    file: str
    sha256: str
    vocab: int = Field(gt=0)

    @field_validator("file")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # read from beside the checkpoint: a path here could point anywhere
        if value in ("", ".", "..") or "/" in value or "\\" in value or "\0" in value:
            raise ValueError(f"{value!r} is not a file name beside the checkpoint")
        return value


class CheckpointMeta(BaseModel):
    """What training recorded. The fields this tool reads are typed; the rest is a record for people."""

    model_config = ConfigDict(extra="allow", strict=True)

    task: str | None = None
    seed: int | None = None
    data_seed: int | None = Field(None, ge=0)
    accuracy_cache: AccuracyCacheRef | None = None
    accuracy: dict[str, dict[str, float]] | None = None  # split -> named config -> metric (`elastic-deploy models`)
    tokenizer: TokenizerRef | None = None


class CheckpointConfig(_Strict):
    """`<stem>.json`, the sidecar of `<stem>.safetensors`."""

    format: int
    family: str
    variant: str
    hparams: dict[str, Any]
    weights: str
    sha256: str | None = None
    meta: CheckpointMeta = Field(default_factory=CheckpointMeta)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value != FORMAT:
            raise ValueError(f"format {value}, this tool reads {FORMAT}")
        return value


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    sha256: str  # of the safetensors file as read (of the weights, for random ones); keys the accuracy cache
    meta: dict[str, Any] = field(default_factory=dict)
    spec: ModelSpec | None = None

    @property
    def data_seed(self) -> int:
        """The seed every split is read with: the one the weights were trained on."""
        return int(self.meta.get("data_seed", self.spec.task.seed if self.spec else 0))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: Path) -> str:
    """sha256 of a file, or of a folder (e.g. an .mlpackage): its relative paths and file digests."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def train_command(variant: str) -> str:
    """The command that makes the variant's checkpoint (a tuned descendant is made from its learngene)."""
    if variant.endswith("_tuned"):
        return f"make train MODEL={variant.removesuffix('_tuned')} DEPTH=<depth>"
    return f"make train MODEL={variant}"


def default_path(variant: str) -> Path:
    """Where the model's checkpoint is read from: its spec's `checkpoint`, else checkpoints/<name>.safetensors."""
    spec = load_spec(variant)
    return spec.checkpoint_path() or workspace.resolve("checkpoints", f"{variant}{SUFFIX}")


def weights_path(stem: Path) -> Path:
    stem = Path(stem)
    return stem.parent / f"{stem.name}{SUFFIX}"


def config_path(weights: Path) -> Path:
    """`<stem>.json` beside `<stem>.safetensors`."""
    return Path(weights).with_suffix(".json")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def serialize(supernet: Supernet) -> bytes:
    """The safetensors bytes of the supernet's weights (deterministic: same weights, same sha)."""
    state = {k: v.detach().cpu().contiguous() for k, v in supernet.state_dict().items()}
    # No family/variant metadata here (the JSON config holds them): safetensors writes a metadata map in
    # hash order, and more than one key would make the bytes, and so the sha, differ between calls.
    return st_save(state, metadata={"format": "pt"})


def save(supernet: Supernet, stem: Path, meta: Mapping[str, Any]) -> Path:
    """Write `<stem>.safetensors` and `<stem>.json` atomically; returns the safetensors path."""
    weights = weights_path(stem)
    data = serialize(supernet)
    atomic_write_bytes(weights, data)
    config = {
        "format": FORMAT,
        "family": supernet.family,
        "variant": supernet.variant,
        "hparams": _jsonable(supernet.hparams()),
        "weights": weights.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "meta": _jsonable(dict(meta)),
    }
    atomic_write_json(config_path(weights), config)
    log.info("saved checkpoint %s (%.1f MB)", weights, len(data) / 1e6)
    return weights


def read_config(weights: Path, variant: str) -> dict[str, Any]:
    """The sidecar as written (its meta is kept as recorded), once it matches CheckpointConfig."""
    cfg_path = config_path(weights)
    retrain = f"retrain with `{train_command(variant)}`"
    if not cfg_path.exists():
        raise CheckpointError(f"{cfg_path}: checkpoint config missing beside {weights.name}; {retrain}")
    try:
        config = read_json(cfg_path)
    except ConfigFileError as exc:
        why = str(exc).removeprefix(f"{cfg_path}: ")
        raise CheckpointError(f"{cfg_path}: malformed checkpoint config ({why}); {retrain}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: checkpoint config is not a JSON object; {retrain}")
    try:
        CheckpointConfig.model_validate(config)
    except ValidationError as exc:
        raise CheckpointError(f"{pydantic_error_line(cfg_path, exc)}; fix the field or {retrain}") from None
    return config


def _check_config(config: dict[str, Any], net: Supernet, cfg_path: Path) -> None:
    retrain = f"retrain with `{train_command(net.variant)}` or pass the matching variant"
    for key, want in (("family", net.family), ("variant", net.variant)):
        if config.get(key) != want:
            raise CheckpointError(f"{cfg_path}: {key} is {config.get(key)!r}, expected {want!r}; {retrain}")
    want_h, got_h = _jsonable(net.hparams()), config["hparams"]  # an object: read_config validated it
    if got_h != want_h:
        diff = sorted(k for k in set(want_h) | set(got_h) if want_h.get(k) != got_h.get(k))
        shown = ", ".join(f"{k}={got_h.get(k)!r} (variant has {want_h.get(k)!r})" for k in diff[:3])
        raise CheckpointError(f"{cfg_path}: hparams differ from {net.variant}: {shown}; {retrain}")


def _read_tensors(weights: Path, variant: str) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights}: not a readable safetensors file ({str(exc).splitlines()[0]}); loading accepts "
            f"safetensors only: re-save it with safetensors.torch.save_file or `{train_command(variant)}`"
        ) from None


def latency_model(name: str) -> Supernet:
    """The model as latency tables measure it: with its weights where it has them, else untrained (latency
    does not depend on weight values, so a model without a checkpoint yet can be measured)."""
    spec = load_spec(name)
    if spec.random_weights is not None or default_path(name).exists():
        return load(name)[0]
    return build_from_spec(spec)


def task_for(info: CheckpointInfo) -> Task:
    """The task the checkpoint's spec names, read with the data seed the weights were trained on."""
    if info.spec is None:
        raise CheckpointError(f"{info.path}: no model spec names this checkpoint, so its task is unknown")
    return get_task(info.spec.task.name, info.data_seed, info.spec.task.options)


def _random(spec: ModelSpec) -> tuple[Supernet, CheckpointInfo]:
    """The spec's seeded random weights: the same on every machine, their sha256 keys the caches."""
    assert spec.random_weights is not None
    with torch.random.fork_rng():
        torch.manual_seed(spec.random_weights.seed)
        net = build_from_spec(spec)
    sha = hashlib.sha256(serialize(net)).hexdigest()
    meta = {"random_weights": spec.random_weights.model_dump(), "task": spec.task.name, "data_seed": spec.task.seed}
    path = workspace.checkpoints_dir() / f"{spec.name}.random-{spec.random_weights.seed}"
    return net.eval(), CheckpointInfo(path, sha, meta, spec)


def _check_task(spec: ModelSpec, meta: dict[str, Any], weights: Path) -> None:
    """The checkpoint was trained on the spec's task and data seed (every split is read with that seed)."""
    trained_on = meta.get("task")
    if trained_on is not None and trained_on != spec.task.name:
        raise CheckpointError(
            f"{weights} was trained on task '{trained_on}' but {spec.path} names task '{spec.task.name}'; "
            "fix the spec's task or point it at the right checkpoint"
        )
    seed = meta.get("data_seed")
    if seed is not None and int(seed) != spec.task.seed:
        raise CheckpointError(
            f"{weights} was trained with data seed {seed} but {spec.path} gives seed {spec.task.seed}: its "
            f"validation split would hold training images; set task.seed: {seed} in the spec"
        )


def load(variant: str, path: Path | None = None) -> tuple[Supernet, CheckpointInfo]:
    """The model's supernet with its weights (in eval mode) and where they came from."""
    spec = load_spec(variant)  # first: an unknown model is reported as such, listing the known ones
    if path is None and spec.random_weights is not None:
        return _random(spec)
    net = build_from_spec(spec)
    weights = Path(path) if path is not None else default_path(variant)
    if weights.suffix != SUFFIX:
        raise CheckpointError(
            f"{weights}: checkpoints are loaded from {SUFFIX} files only (never pickles); "
            f"pass <stem>{SUFFIX} or run `{train_command(variant)}`"
        )
    if not weights.is_file():
        raise CheckpointError(f"{weights}: checkpoint not found; run `{train_command(variant)}`")
    config = read_config(weights, variant)
    _check_config(config, net, config_path(weights))
    tensors = _read_tensors(weights, variant)

    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    fix = f"retrain with `{train_command(variant)}`"
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(f"{weights}: missing tensors {', '.join(missing[:3])}{more}; {fix}")
    if unexpected:
        more = f" (and {len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
        raise CheckpointError(f"{weights}: unexpected tensors {', '.join(unexpected[:3])}{more}; {fix}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{weights}: tensor '{name}' has shape {tuple(tensor.shape)}, {variant} expects "
                f"{tuple(expected[name].shape)}; {fix}"
            )
    net.load_state_dict(tensors, strict=True)

    sha = sha256_file(weights)
    if config.get("sha256") not in (None, sha):
        # Weights replaced without their config: usable, but cached accuracies no longer apply (they are
        # keyed by this sha, so they are re-evaluated).
        log.warning("%s: sha256 differs from the one recorded in %s", weights, config_path(weights).name)
    meta = config.get("meta", {})  # validated by read_config
    _check_task(spec, meta, weights)
    return net.eval(), CheckpointInfo(weights, sha, meta, spec)
