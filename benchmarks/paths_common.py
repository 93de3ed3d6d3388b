"""Pieces the conversion-path benchmarks share (ort_paths.py, tflite_paths.py): the model, the
subnets they compare, and quiet exporters. Imported by the scripts from their own folder."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import statistics
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from deploy.families.base import Supernet
from deploy.models import build
from deploy.search.space import SubnetConfig

MODEL = "matformer_vit_mnist"
INIT_SEED = 0  # random init when no checkpoint exists


def load_supernet() -> tuple[Supernet, str]:
    """Trained weights when the checkpoint exists, else a seeded random init (latency ignores values)."""
    from deploy.models.checkpoint import default_path, load

    path = default_path(MODEL)
    if path.is_file():
        net, info = load(MODEL)
        return net.eval(), f"trained checkpoint {path.name} (sha256 {info.sha256[:12]})"
    torch.manual_seed(INIT_SEED)
    return build(MODEL).eval(), (
        f"seeded random init (torch.manual_seed({INIT_SEED})): no {path.name} found; latency does not "
        "depend on weight values (parity figures depend on them only slightly)"
    )


def pick_subnets(net: Supernet, n_random: int, seed: int) -> list[tuple[str, SubnetConfig]]:
    picked = [("smallest", net.smallest()), ("largest", net.largest())]
    seen = {c.id for _, c in picked}
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        if len(picked) == 2 + n_random:
            break
        config = net.sample(rng)
        if config.id not in seen:
            seen.add(config.id)
            picked.append((f"random-{len(picked) - 1}", config))
    return picked


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporters print progress and warn a lot; none of it is a result here."""
    torch_onnx = logging.getLogger("torch.onnx")
    level = torch_onnx.level
    torch_onnx.setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping ..."
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx.setLevel(level)


def geomean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else math.nan
