"""ExecuTorch's CoreML delegate: the same torch.export program as the XNNPACK backend (deploy/backends/executorch.py),
lowered for Apple's Neural Engine, GPU and CPU. It builds here; its `.pte` runs only on macOS and iOS, so on
Linux the artifact is checked structurally."""

from __future__ import annotations

import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any

from deploy.backends.base import backend_options
from deploy.backends.coreml import CoreMLOptions
from deploy.backends.executorch import INSTALL_COREML, ExecuTorchBackend, require_module

if TYPE_CHECKING:
    from deploy.targets import Target


class ExecuTorchCoreMLBackend(ExecuTorchBackend):
    """The CoreML delegate (Neural Engine / GPU / CPU on Apple devices): builds here, runs on macOS/iOS."""

    name = "executorch_coreml"
    delegate = "CoreMLBackend"
    precisions = ("fp32", "fp16")
    options_model = CoreMLOptions  # compute units and minimum deployment target, as the coreml backend's

    def version(self) -> str:
        try:
            coreml = metadata.version("coremltools")
        except metadata.PackageNotFoundError:
            coreml = "not installed"
        return f"{super().version()} / coremltools {coreml}"

    def runs_here(self) -> str | None:
        if sys.platform != "darwin":
            return (
                f"ExecuTorch's CoreML delegate runs only on macOS and iOS (this is {sys.platform}); "
                "the .pte was checked structurally instead"
            )
        return super().runs_here()

    def _partitioner(self, target: Target) -> Any:
        install = INSTALL_COREML
        ct = require_module("coremltools", "coremltools for its CoreML delegate", install)  # inside quiet_executorch
        partition = require_module("executorch.backends.apple.coreml.partition", "its CoreML partitioner", install)
        compiler = require_module("executorch.backends.apple.coreml.compiler", "its CoreML compiler", install)
        specs = compiler.CoreMLBackend.generate_compile_specs(
            compute_precision=ct.precision.FLOAT16 if target.precision == "fp16" else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, backend_options(self, target).minimum_deployment_target),
            compute_unit=getattr(ct.ComputeUnit, backend_options(self, target).compute_units),
        )
        return partition.CoreMLPartitioner(compile_specs=specs)

    def _options(self, target: Target) -> dict[str, Any]:
        return {
            **super()._options(target),
            "compute_units": backend_options(self, target).compute_units,
            "minimum_deployment_target": backend_options(self, target).minimum_deployment_target,
        }
