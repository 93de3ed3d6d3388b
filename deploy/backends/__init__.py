"""Registered backends (name -> class). Adding one is one line here plus its module; a user's backend
registers through the `elastic_deploy.backends` entry-point group."""

from __future__ import annotations

from deploy.backends.base import Artifact, Backend
from deploy.registry import Registry

BACKENDS: Registry[type[Backend]] = Registry(
    "backend",
    {
        "onnxruntime": "deploy.backends.onnxruntime:OnnxRuntimeBackend",
        "tflite": "deploy.backends.tflite:TFLiteBackend",
        "coreml": "deploy.backends.coreml:CoreMLBackend",
        "executorch": "deploy.backends.executorch:ExecuTorchBackend",
        "executorch_coreml": "deploy.backends.executorch_coreml:ExecuTorchCoreMLBackend",
        "tensorrt": "deploy.backends.tensorrt:TensorRTBackend",
        "torch_cuda": "deploy.backends.torch_cuda:TorchCudaBackend",
    },
    group="elastic_deploy.backends",
)


def get_backend(name: str) -> Backend:
    """A new instance of the named backend; UnknownNameError lists the registered ones."""
    return BACKENDS.load(name)()


__all__ = ["BACKENDS", "Artifact", "Backend", "get_backend"]
