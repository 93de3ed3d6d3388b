"""Every family's tiny variant, end to end: ONNX parity, its blocks account for everything that runs, and
its latency is predicted within the error validated for its family on the host ORT table.

(`test_families.py` sweeps every variant for extraction equal to the supernet and the analytic counts.)
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from deploy.executors.local import LocalExecutor
from deploy.export.hub import get_or_export
from deploy.latency.build import block_identity, calibration_configs, null_measurable, subnet_identity
from deploy.latency.calibration import fit_calibration
from deploy.latency.table import CalibrationSample, LatencyTable
from deploy.latency.validate import VALIDATION_SEED, unseen_configs
from deploy.models import build, known_models
from deploy.targets import load_target

TINY = sorted(name for name in known_models() if name.endswith("_tiny"))


@pytest.fixture(scope="module", params=TINY)
def net(request):
    torch.manual_seed(0)
    return build(request.param).eval()


def _configs(net):
    return [net.smallest(), net.largest(), net.sample(np.random.default_rng(3))]


def _flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


def _onnx_ops(module: torch.nn.Module, x: torch.Tensor, identity: dict[str, str], cache) -> Counter[str]:
    entry = get_or_export(module, x, identity, cache_dir=cache, with_program=False)
    return Counter(node.op_type for node in onnx.load(entry.onnx_path).graph.node)


def test_every_registered_family_has_a_tiny_variant():
    families = {build(name).family for name in known_models()}
    assert families == {build(name).family for name in TINY}


def test_extracted_subnet_runs_the_same_on_onnxruntime_within_1e4(net, tmp_path):
    for config in _configs(net):
        dense = net.extract(config)
        x = net.example_inputs(seed=1)[0]
        entry = get_or_export(dense, x, {"subnet": config.id}, cache_dir=tmp_path, with_program=False)
        session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {entry.input_names[0]: x.numpy()})
        with torch.inference_mode():
            want = dense(x).numpy()
        assert np.abs(got - want).max() <= 1e-4, config


def test_extracted_subnet_runs_the_same_on_executorch_xnnpack_within_1e4(net, tmp_path):
    # The torch.export program lowered by ExecuTorch's XNNPACK partitioner, run by executorch.runtime,
    # fp32, 1 thread: the same bound as ONNX Runtime. What XNNPACK did not take runs on ExecuTorch's own
    # kernels and must agree too.
    pytest.importorskip("executorch.exir", reason="executorch not installed: pip install 'elastic-deploy[executorch]'")
    from deploy.backends import get_backend
    from deploy.targets import DeviceInfo, Target

    backend = get_backend("executorch")
    target = Target(name="sweep-executorch", device=DeviceInfo(name="host"), backend="executorch", budget_ms=1.0,
                    model="matformer_vit_tiny", threads=1)  # fmt: skip
    for config in [net.largest()]:  # every op the family has (a lowering takes seconds; ONNX checks all three)
        dense = net.extract(config)
        x = net.example_inputs(seed=1)[0]
        entry = get_or_export(dense, x, {"subnet": config.id}, cache_dir=tmp_path)
        artifact = backend.compile(entry, target, tmp_path / "executorch" / config.id)
        (got,) = backend.run(artifact, {entry.input_names[0]: x.numpy()})
        with torch.inference_mode():
            want = dense(x).numpy()
        assert np.abs(got - want).max() <= 1e-4, (config, artifact.options["delegation"])
        assert artifact.options["delegation"]["n_delegated"] > 0, config


def test_blocks_account_for_all_compute_params_and_ops_of_the_extracted_subnet(net, tmp_path):
    # What the table sums must be what runs: the blocks of a config, each built alone, hold the same
    # FLOPs, the same parameters and the same ONNX ops (by type and count) as the extracted subnet.
    for config in _configs(net):
        dense, x = net.extract(config), net.example_inputs()[0]
        keys = net.blocks(config)
        built = [net.build_block(key) for key in keys]
        assert _flops(dense, x) == sum(_flops(m, e) for m, e in built) > 0
        assert sum(p.numel() for p in dense.parameters()) == sum(p.numel() for m, _ in built for p in m.parameters())
        ops = _onnx_ops(dense, x, {"subnet": config.id}, tmp_path)
        block_ops = sum(
            (_onnx_ops(m, e, {"block": str(k)}, tmp_path) for (m, e), k in zip(built, keys, strict=True)), Counter()
        )
        assert ops == block_ops, f"{config}: only in the subnet {ops - block_ops}, only in blocks {block_ops - ops}"


def _error_with_a_calibration_fitted_here(target, supernet, cache_dir, *, fit_on: int = 8, unseen: int = 3):
    """Median |error| %, repeatability % and the fit's own RMS residual % of the table's method on this machine,
    in one interleaved window: the blocks of `fit_on` calibration subnets and `unseen` others, the calibration
    fitted on the former (as `tables build` fits it), the latter predicted from their blocks and measured twice."""
    session = LocalExecutor().session(target, cache_dir)
    fit = [c for _, c in calibration_configs([supernet], fit_on)]
    held = unseen_configs(supernet, {c.id for c in fit}, unseen, VALIDATION_SEED)
    configs = [*fit, *held]
    keys = sorted({k for c in configs for k in supernet.blocks(c)})
    subnets = [
        session.compile(
            supernet.extract(c), supernet.example_inputs(), subnet_identity(supernet, c), supernet.input_names()
        )
        for c in configs
    ]
    blocks = [session.compile(*supernet.measurable_block(k), block_identity(k)) for k in keys]
    n_held = len(held)
    *stats, null = session.measure(subnets + subnets[len(fit) :] + blocks + [null_measurable(session)])
    whole, again, block = stats[: len(configs)], stats[len(configs) : len(configs) + n_held], stats[-len(keys) :]
    ms = dict(zip(keys, (b.median_ms for b in block), strict=True))
    samples = [
        CalibrationSample(
            subnet_id=c.id,
            config=c.to_json(),
            block_sum_ms=sum(ms[k] for k in supernet.blocks(c)),
            n_blocks=len(supernet.blocks(c)),
            measured_ms=s.median_ms,
        )
        for c, s in zip(configs, whole, strict=True)
    ]
    cal = fit_calibration(samples[: len(fit)], null.median_ms)
    errors, repeat = [], []
    for sample, a, b in zip(samples[len(fit) :], whole[len(fit) :], again, strict=True):
        measured = float(np.median([a.median_ms, b.median_ms]))
        predicted = cal.apply(sample.block_sum_ms, sample.n_blocks, supernet.family, null.median_ms)
        errors.append(abs(predicted - measured) / measured * 100)
        repeat.append(abs(a.median_ms - b.median_ms) / measured * 100)
    return float(np.median(errors)), float(np.median(repeat)), cal.residual_pct


# The claim: an unseen subnet is predicted within the p90 error `tables validate` recorded for its family, and
# never held to less than FLOOR_PCT (a 3-subnet median on a shared VM). How far noise alone moves the error:
# the two measurements of a subnet differ by `repeatability`, and an unseen subnet is predicted no better
# than the fit matches its own subnets in the same window (`residual`). A window where either reaches the
# bound cannot tell a wrong prediction from noise, so the test skips there rather than widen the bound.
FLOOR_PCT = 10.0
REPEATABILITY_REACH = 3.0
RESIDUAL_REACH = 2.0


@pytest.mark.timing
def test_prediction_is_within_the_validated_error_when_calibrated_on_this_machine(net, ship_files, tmp_path):
    # The family's shipped variant on the host ORT target, 1 thread (far more repeatable than 2): subnets the
    # calibration did not see, predicted from their blocks. The calibration is fitted here, in the same window:
    # how a whole subnet relates to its blocks is the machine's, so the shipped fit is no claim about another
    # one. Not the tiny variant: at its size per-call overhead dominates, a regime the shipped models never see.
    # Figures: docs/families.md#the-timing-check-of-the-tiny-sweep.
    ship_files("targets/host-cpu-ort-1t.yaml", "latency_tables/host-cpu-ort-1t.json")
    host = load_target("host-cpu-ort-1t")
    variant = next((m for m in host.served_models if build(m).family == net.family), None)
    if variant is None:
        pytest.skip(
            f"host-cpu-ort-1t serves no {net.family} model: its table holds the image models' blocks, a language "
            "model is timed per prefill and decode on its own LM target (tests/lm/test_latency.py)"
        )
    shipped_figures = LatencyTable.load(host.table_path).validation_for(net.family)
    assert shipped_figures is not None, f"validate host-cpu-ort-1t on {variant}: make validate-tables"
    bound = max(shipped_figures.p90_abs_pct_error, FLOOR_PCT)
    spec = host.measurement.model_copy(update={"min_runs": 10, "rounds": 6, "max_retries": 0, "cv_max": 10.0})
    target = host.model_copy(update={"model": variant, "measurement": spec})
    error, repeatability, residual = _error_with_a_calibration_fitted_here(target, build(variant), tmp_path)
    figures = (
        f"{variant}: {error:.1f}% median error, repeatability {repeatability:.2f}%, fit residual {residual:.2f}%, "
        f"bound {bound:.1f}%"
    )
    if REPEATABILITY_REACH * repeatability > bound or RESIDUAL_REACH * residual > bound:
        pytest.skip(
            f"window too noisy to judge {variant} against the {bound:.1f}% bound: repeatability {repeatability:.2f}% "
            f"(x{REPEATABILITY_REACH:g} = {REPEATABILITY_REACH * repeatability:.1f}%), fit residual {residual:.2f}% "
            f"(x{RESIDUAL_REACH:g} = {RESIDUAL_REACH * residual:.1f}%); rerun on a quieter machine"
        )
    assert error <= bound, figures
