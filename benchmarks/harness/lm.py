"""What the language-model comparisons share: the model and target they run on, and a quick workspace.

Full runs use the project's own files: matformer_lm_py's checkpoint, targets/host-cpu-ort-lm.yaml (and
host-cpu-litert-lm) and their latency tables. `--quick` runs in a throwaway workspace instead: the tiny LM
(matformer_lm_tiny, trained a few steps when a comparison needs perplexities), an ONNX Runtime (or LiteRT)
target with short prompt buckets and QUICK_PROTOCOL, and, where a table is needed, one built there with that
protocol. Nothing a quick run writes outlives it except the results files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.harness.subnets import QUICK_PROTOCOL
from deploy.targets import Target

MODEL = "matformer_lm_py"
QUICK_MODEL = "matformer_lm_tiny"
TARGETS = {"onnxruntime": "host-cpu-ort-lm", "tflite": "host-cpu-litert-lm"}
QUICK_LM = {"prompt_buckets": [6], "kv_lengths": [12], "ttft_prompt": 6, "decode_context": 12,
            "ttft_ms": 50.0, "ms_per_token": 20.0, "generate_tokens": 8, "calibration_prompts": 4}  # fmt: skip
QUICK_TRAIN_STEPS = 10
ENV = ("ELASTIC_DEPLOY_ROOT", "ELASTIC_DEPLOY_CACHE", "ELASTIC_DEPLOY_LOCK_DIR")


@contextlib.contextmanager
def workspace(quick: bool) -> Iterator[Path | None]:
    """For --quick, a throwaway project root (targets, tables, checkpoints, cache) for the duration of the run;
    otherwise the project's own (yields None)."""
    if not quick:
        yield None
        return
    saved = {k: os.environ.get(k) for k in ENV}
    with tempfile.TemporaryDirectory(prefix="benchmark-lm.") as tmp:
        root = Path(tmp) / "root"
        for sub in ("targets", "latency_tables", "checkpoints"):
            (root / sub).mkdir(parents=True)
        values = (root, Path(tmp) / "cache", Path(tmp) / "locks")
        os.environ.update({k: str(v) for k, v in zip(ENV, values, strict=True)})
        try:
            yield root
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def quick_target(root: Path, backend: str = "onnxruntime") -> Target:
    """A tiny-LM target in the quick workspace: 1 thread, QUICK_PROTOCOL, short buckets."""
    import yaml

    from deploy.targets import load_target

    name = f"quick-{TARGETS[backend]}"
    protocol = {k: v for k, v in QUICK_PROTOCOL.to_json().items() if k != "cooldown_s"}
    spec = {"name": name, "device": {"name": "host"}, "backend": backend, "threads": 1, "model": QUICK_MODEL,
            "measurement": {**protocol, "calibration_subnets": 4}, "lm": dict(QUICK_LM)}  # fmt: skip
    (root / "targets" / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return load_target(name)


def train_quick(root: Path) -> None:
    """The tiny LM trained QUICK_TRAIN_STEPS steps into the quick workspace (checkpoint, tokenizer, accuracy
    cache): perplexities that differ between slices, not ones to quote."""
    import torch

    from deploy.training.train import train

    torch.manual_seed(0)
    train(QUICK_MODEL, max_steps=QUICK_TRAIN_STEPS, cache_samples=8, threads=1, progress=False)


def target_for(args: Any, backend: str, root: Path | None) -> Target:
    from deploy.targets import load_target

    if root is not None:
        return quick_target(root, backend)
    own = getattr(args, "target", None) if backend == "onnxruntime" else None
    return load_target(own or TARGETS[backend])


def supernet(quick: bool, trained: bool) -> tuple[Any, Any, str]:
    """(supernet, checkpoint info or None, what its weights are)."""
    import torch

    from deploy.models import build
    from deploy.models.checkpoint import default_path, load

    variant = QUICK_MODEL if quick else MODEL
    if trained or default_path(variant).is_file():
        net, info = load(variant)
        return net.eval(), info, f"checkpoint {Path(info.path).name} (sha256 {info.sha256[:12]})"
    torch.manual_seed(0)
    return build(variant).eval(), None, "seeded random init (torch.manual_seed(0)); latency ignores weight values"
