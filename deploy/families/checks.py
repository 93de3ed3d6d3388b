"""The family protocol, checked on a built model: what the registry sweep runs on every family, built in or
a user's (`elastic-deploy check --model NAME` runs it from the command line).

Each check returns a one-line problem or None; `check_family` runs them all on a few configs (smallest,
largest, seeded samples) and never raises for a broken family: a plugin under test gets every finding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from deploy.families.base import BlockKey, Supernet
from deploy.search.space import SubnetConfig

EXTRACT_ATOL = 1e-5  # fp32: the extracted subnet is the supernet's arithmetic on sliced weights


@dataclass(frozen=True)
class Finding:
    check: str
    problem: str

    def __str__(self) -> str:
        return f"{self.check}: {self.problem}"


def sample_configs(net: Supernet, n: int = 6, seed: int = 1) -> list[SubnetConfig]:
    rng = np.random.default_rng(seed)
    found = {c.id: c for c in (net.smallest(), net.largest(), *(net.sample(rng) for _ in range(n)))}
    return list(found.values())


def batch_inputs(net: Supernet, batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(spec.example(gen, batch=batch) for spec in net.inputs())


def extraction_matches(net: Supernet, configs: list[SubnetConfig]) -> str | None:
    inputs = batch_inputs(net)
    with torch.inference_mode():
        for config in configs:
            want = net(*inputs, config=config)
            got = net.extract(config).eval()(*inputs)
            diff = float((want - got).abs().max())
            if not diff <= EXTRACT_ATOL:
                return f"extract({config.id}) differs from the supernet at that config by {diff:.2e} > {EXTRACT_ATOL}"
    return None


def param_count_matches(net: Supernet, configs: list[SubnetConfig]) -> str | None:
    for config in configs:
        counted = sum(p.numel() for p in net.extract(config).parameters())
        if counted != net.param_count(config):
            return f"param_count({config.id}) = {net.param_count(config)}, its extracted module holds {counted}"
    return None


def no_supernet_code(net: Supernet, configs: list[SubnetConfig]) -> str | None:
    dense = net.extract(net.smallest())
    if any(type(m).__name__ == type(net).__name__ for m in dense.modules()):
        return "extract returns a module holding the supernet class: it must be a plain dense module"
    return None


def blocks_are_covered(net: Supernet, configs: list[SubnetConfig]) -> str | None:
    every = set(net.all_blocks())
    for config in configs:
        blocks = net.blocks(config)
        if not all(isinstance(b, BlockKey) for b in blocks):
            return f"blocks({config.id}) returns something that is not a BlockKey"
        if not set(blocks) <= every:
            return f"blocks({config.id}) holds {sorted(set(blocks) - every)[0]}, which all_blocks() does not list"
    return None


def blocks_build_and_run(net: Supernet, configs: list[SubnetConfig]) -> str | None:
    for key in net.all_blocks():
        module, example = net.build_block(key)
        examples = example if isinstance(example, tuple) else (example,)
        with torch.inference_mode():
            out = module(*examples)
        out = out[0] if isinstance(out, tuple | list) else out
        if out.shape[0] != 1:
            return f"build_block({key}) runs on a batch of {out.shape[0]}, not 1"
        if BlockKey.from_json(key.to_json()) != key:
            return f"{key} does not survive a JSON round trip"
    return None


def inputs_are_declared(net: Supernet, configs: list[SubnetConfig]) -> str | None:
    names = [s.name for s in net.inputs()]
    if not names or len(set(names)) != len(names):
        return f"inputs() must name each input once, got {names}"
    return None


CHECKS: dict[str, Callable[[Supernet, list[SubnetConfig]], str | None]] = {
    "inputs": inputs_are_declared,
    "extract": extraction_matches,
    "param_count": param_count_matches,
    "dense": no_supernet_code,
    "blocks": blocks_are_covered,
    "build_block": blocks_build_and_run,
}


def check_family(net: Supernet, n_configs: int = 6) -> list[Finding]:
    """Every check on `net` (eval mode); an exception in a check is a finding too."""
    net.eval()
    configs = sample_configs(net, n_configs)
    findings = []
    for name, check in CHECKS.items():
        try:
            problem = check(net, configs)
        except Exception as exc:  # a user's family under test: report, do not crash the sweep
            problem = f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if problem:
            findings.append(Finding(name, problem))
    return findings
