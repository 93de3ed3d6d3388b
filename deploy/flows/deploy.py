"""`elastic-deploy deploy`: one flow for every workload.

load → drift check → select → extract → build → check → measure → settle → package, into dist/<target>/. The
target's workload (deploy/flows/workload.py: an image classifier or a language model) answers for what differs
at each stage; what is the same (the output folder's rules, the extraction check, the one re-selection after a
measured miss, the manifest and report) is written once, here. An artifact measured over its budget is never
shipped: the deploy selects once more with the correction that measurement implies, or stops with both numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy import workspace
from deploy.errors import NoFeasibleSubnetError
from deploy.export.parity import check_extraction
from deploy.flows.workload import DeployRequest, Reselect, RunRecord, Workload, workload_for
from deploy.packaging.manifest import ImageManifest, LMManifest
from deploy.packaging.output import check_output_dir, staged_dir
from deploy.progress import Progress
from deploy.targets import load_target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployResult:
    out_dir: Path
    manifest: ImageManifest | LMManifest  # `manifest.kind` says which
    selection: Any  # the workload's selection record (search.select.Selection, lm.select.LMSelection)


def deploy(
    target_name: str,
    model: str | None = None,
    *,
    out_dir: Path | None = None,
    measure: bool = True,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] = log.info,
) -> DeployResult:
    """Select, build, check, measure and package the target's best subnet under its budgets."""
    target = load_target(target_name)
    workload = workload_for(target)
    request = DeployRequest(
        target=target,
        variant=model or target.model,
        out_dir=check_output_dir(out_dir or workspace.dist_dir() / target.name),  # before any work
        measure=measure,
        cache_dir=cache_dir,
        progress=progress,
        say=say,
    )
    try:
        return _deploy_once(workload, request)
    except Reselect as retry:
        try:
            return _deploy_once(workload, request, retry)
        except (Reselect, NoFeasibleSubnetError) as second:
            raise workload.reselect_failed(request, retry, second) from None


def _deploy_once(workload: Workload, request: DeployRequest, retry: Reselect | None = None) -> DeployResult:
    say = request.say
    loaded = workload.load(request)  # everything a wrong input can break fails here, before any file is written
    corrections = retry.corrections if retry else workload.drift_check(request, loaded)
    chosen = workload.select(request, loaded, corrections)
    record = RunRecord(request, loaded, corrections, chosen, retry=retry)
    check_extraction(loaded.supernet, chosen.config)  # the dense subnet computes what the supernet does
    with staged_dir(request.out_dir) as staging:  # swapped into place at the end: a failure leaves the old one
        record.built = workload.build(record, staging)
        record.measured, record.not_measured = workload.measure(record)
        record.settled = workload.settle(record)  # raises Reselect: nothing is written
        manifest = workload.manifest(record)
        manifest.save(staging)
        files = workload.package(record, manifest, staging)
    say(f"wrote {request.out_dir}/ ({', '.join(files)})")
    if isinstance(manifest, ImageManifest) and manifest.build_on_device:
        say(f"next, on the device: {manifest.build_on_device}")
    return DeployResult(request.out_dir, manifest, chosen.selection)
