"""The far end of a remote runner: measure artifact files on this machine, print ONE JSON line.

    python -m deploy.runners.remote_bench --artifact PATH --backend onnxruntime --threads N --protocol JSON \
        [--items PATH1,PATH2,...]

The measured items are --artifact (if given) followed by --items, in order; the same path may appear
twice. Each is loaded with the backend and fed a seeded random input of the shape read from its ONNX
file (latency does not depend on the values). Several items are measured interleaved in one time
window (deploy.latency.measure). Stdout gets one line:

    {"items": [{"path": ..., "stats": LatencyStats.to_json()}, ...], "host": {"hostname", "cpu", "cores"},
     "versions": {...}}

and on any failure {"error": "<one line>"} with exit code 2. Logging goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deploy.backends.base import Artifact
from deploy.errors import DeployError

log = logging.getLogger(__name__)

EXIT_ERROR = 2
SUPPORTED_BACKENDS = ("onnxruntime",)


class RemoteBenchError(DeployError):
    """Bad arguments or an artifact the remote benchmark cannot load."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.runners.remote_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="artifact file to measure (first item)")
    parser.add_argument("--items", default="", help="more artifact files, comma-separated, measured interleaved")
    parser.add_argument("--backend", default="onnxruntime", help="backend that loads the artifacts")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the runtime")
    parser.add_argument("--protocol", default="{}", help="MeasureProtocol fields as a JSON object")
    return parser.parse_args(argv)


def item_paths(args: argparse.Namespace) -> list[Path]:
    paths = [args.artifact] if args.artifact else []
    paths += [Path(p) for p in args.items.split(",") if p.strip()]
    if not paths:
        raise RemoteBenchError("nothing to measure: pass --artifact PATH and/or --items PATH1,PATH2")
    return paths


def protocol_from_json(text: str) -> Any:
    from deploy.latency.stats import MeasureProtocol

    try:
        fields = json.loads(text)
        return MeasureProtocol(**fields)
    except (json.JSONDecodeError, TypeError) as exc:
        raise RemoteBenchError(f"--protocol is not a JSON object of MeasureProtocol fields: {exc}") from None


def onnx_io(path: Path) -> tuple[dict[str, tuple[tuple[int, ...], np.dtype]], tuple[str, ...]]:
    """Graph inputs (name -> shape, dtype; symbolic dims as 1) and output names, read from the ONNX file."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tensor.shape.dim)
        inputs[value.name] = (shape, np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type)))
    return inputs, tuple(o.name for o in model.graph.output)


def load_item(path: Path, backend: str, threads: int) -> tuple[Artifact, dict[str, np.ndarray]]:
    """An Artifact for the ONNX file and a seeded random input of its graph input shape."""
    from deploy.backends.onnxruntime import OnnxRuntimeBackend
    from deploy.latency.stats import seeded_inputs

    if not path.is_file():
        raise RemoteBenchError(f"artifact {path} does not exist on {socket.gethostname()}; copy it there first")
    try:
        specs, output_names = onnx_io(path)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise RemoteBenchError(f"{path} is not a readable ONNX file ({type(exc).__name__}); copy it again") from None
    inputs = seeded_inputs(specs)
    artifact = Artifact(
        path=path,
        backend=backend,
        precision="fp32",
        input_names=tuple(specs),
        output_names=output_names,
        options=OnnxRuntimeBackend.session_options(threads),
    )
    return artifact, inputs


def host_info() -> dict[str, Any]:
    from deploy.runners.local import cpu_model, usable_cores

    return {"hostname": socket.gethostname(), "cpu": cpu_model(), "cores": usable_cores()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from deploy.backends import get_backend
    from deploy.latency.measure import measure_interleaved

    if args.backend not in SUPPORTED_BACKENDS:
        raise RemoteBenchError(
            f"remote benchmark supports backends {', '.join(SUPPORTED_BACKENDS)}, not '{args.backend}'"
        )
    if args.threads < 1:
        raise RemoteBenchError(f"--threads must be >= 1, got {args.threads}")
    protocol = protocol_from_json(args.protocol)
    paths = item_paths(args)
    backend = get_backend(args.backend)
    host = host_info()
    calls = {}
    for i, path in enumerate(paths):
        artifact, inputs = load_item(path, args.backend, args.threads)
        calls[f"{i}:{path}"] = backend.timed_call(artifact, inputs)
    stats = measure_interleaved(calls, protocol, where=f"remote:{host['hostname']}")
    return {
        "items": [{"path": str(path), "stats": stats[key].to_json()} for path, key in zip(paths, calls, strict=True)],
        "host": host,
        "versions": {"python": platform.python_version(), args.backend: backend.version()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        result = run(args)
    except Exception as exc:  # the caller parses stdout: every failure must become the error line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(json.dumps({"error": first, "type": type(exc).__name__}), flush=True)
        return EXIT_ERROR
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
