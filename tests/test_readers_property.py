"""Property-based: whatever bytes a user's CSV, YAML or JSON file holds, the readers answer with a DeployError
(one line for the CLI), never a traceback from a library."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.errors import DeployError
from deploy.latency.table import LatencyTable
from deploy.search.candidates import select_from_csv
from deploy.targets import load_target

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SHIPPED_TABLE = Path(__file__).resolve().parents[1] / "latency_tables" / "host-cpu-ort-1t.json"

# Text that looks like the real thing often enough to get past the first check.
csv_cells = st.one_of(
    st.text(max_size=8), st.floats(allow_nan=True, allow_infinity=True).map(str), st.integers().map(str)
)
csv_rows = st.lists(st.lists(csv_cells, min_size=0, max_size=5), max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _outcome(call) -> str:
    """"loaded", or the DeployError's message (one line); anything else raised fails the test."""
    try:
        call()
    except DeployError as exc:
        assert "\n" not in str(exc).strip(), f"a multi-line message: {exc!r}"
        return str(exc).strip()
    return "loaded"


@SETTINGS
@given(header=st.lists(st.sampled_from(["id", "latency_ms", "accuracy", "x", ""]), max_size=5), rows=csv_rows)
def test_select_csv_reader_never_raises_anything_but_a_deploy_error(tmp_path, header, rows):
    path = tmp_path / "c.csv"
    path.write_text("\n".join(",".join(r) for r in [header, *rows]))
    _outcome(lambda: select_from_csv(path, 1.0))


@SETTINGS
@given(data=st.binary(max_size=200))
def test_select_csv_reader_never_raises_on_arbitrary_bytes(tmp_path, data):
    path = tmp_path / "c.csv"
    path.write_bytes(data)
    _outcome(lambda: select_from_csv(path, 1.0))


@SETTINGS
@given(doc=json_values)
def test_target_yaml_reader_never_raises_anything_but_a_deploy_error(tmp_root, doc):
    (tmp_root / "targets" / "t1.yaml").write_text(yaml.safe_dump(doc))
    _outcome(lambda: load_target("t1"))


@SETTINGS
@given(text=st.text(max_size=200))
def test_target_yaml_reader_never_raises_on_arbitrary_text(tmp_root, text):
    (tmp_root / "targets" / "t1.yaml").write_text(text)
    _outcome(lambda: load_target("t1"))


@SETTINGS
@given(field=st.sampled_from(["host", "user", "serial", "python", "cpu_mask", "port"]), value=json_values)
def test_target_runner_fields_of_any_type_give_a_deploy_error(tmp_root, field, value):
    doc = {"name": "t1", "device": {"name": "x"}, "backend": "onnxruntime", "budget_ms": 1, "model": "m"}
    doc["runner"] = {"kind": "ssh", field: value}
    (tmp_root / "targets" / "t1.yaml").write_text(yaml.safe_dump(doc))
    outcome = _outcome(lambda: load_target("t1"))
    assert outcome == "loaded" or "t1" in outcome, outcome  # an error names the target file


@SETTINGS
@given(doc=json_values)
def test_latency_table_json_reader_never_raises_anything_but_a_deploy_error(tmp_path, doc):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    _outcome(lambda: LatencyTable.load(path))


@pytest.fixture(scope="module")
def shipped_table() -> dict:
    return json.loads(SHIPPED_TABLE.read_text())


@SETTINGS
@given(
    path_in=st.lists(st.sampled_from(["provenance", "entries", "calibration", 0, "median_ms", "kind", "shape"]),
                     min_size=1, max_size=3),
    value=json_values,
)  # fmt: skip
def test_latency_table_with_one_field_replaced_gives_a_deploy_error(tmp_path, shipped_table, path_in, value):
    doc = json.loads(json.dumps(shipped_table))
    node = doc
    for key in path_in[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
    with contextlib.suppress(KeyError, IndexError, TypeError):
        node[path_in[-1]] = value
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    outcome = _outcome(lambda: LatencyTable.load(path))
    assert outcome == "loaded" or "t.json" in outcome, outcome  # an error names the table file


@SETTINGS
@given(data=st.binary(max_size=300))
def test_latency_table_reader_never_raises_on_arbitrary_bytes(tmp_path, data):
    path = tmp_path / "t.json"
    path.write_bytes(data)
    _outcome(lambda: LatencyTable.load(path))


# --- every reader of a file a user (or a damaged disk) can hand us: issue 24 ---------------------------------
# Random bytes and random JSON/YAML documents to each; a load either succeeds or fails with one named line,
# within a bounded time and memory.

MAX_SECONDS = 5.0
MAX_PEAK_BYTES = 64 * 2**20
yaml_docs = json_values.map(lambda doc: yaml.safe_dump(doc))
json_docs = json_values.map(json.dumps)
file_bytes = st.one_of(st.binary(max_size=400), yaml_docs.map(str.encode), json_docs.map(str.encode))


def _bounded(call) -> str:
    """_outcome, under a time and memory bound (tracemalloc sees every Python and numpy allocation)."""
    import time
    import tracemalloc

    tracemalloc.start()
    start = time.monotonic()
    try:
        outcome = _outcome(call)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - start < MAX_SECONDS, f"a load took {time.monotonic() - start:.1f} s"
    assert peak < MAX_PEAK_BYTES, f"a load allocated {peak / 2**20:.0f} MiB"
    return outcome


def _spec_load(root: Path):
    from deploy.models.spec import build, load_spec

    return lambda: (load_spec("m1"), build("m1"))


def _checkpoint_load(root: Path):
    from deploy.models.checkpoint import load

    return lambda: load("matformer_vit_tiny", path=root / "checkpoints" / "c1.safetensors")


def _manifest_load(root: Path):
    from deploy.packaging.manifest import load_manifest

    return lambda: load_manifest(root / "dist" / "manifest.json")


def _lm_manifest_load(root: Path):
    from deploy.packaging.manifest import LMManifest

    return lambda: LMManifest.load(root / "dist" / "manifest.json")


def _lm_json_load(root: Path):
    from deploy.lm.artifact import LMArtifact

    return lambda: LMArtifact.load(root / "dist")


def _observations_load(root: Path):
    from deploy.latency.observations import load_observations

    return lambda: load_observations(root / "obs.jsonl")


READERS = {  # reader: (file it reads, relative to the workspace; the call)
    "target": ("targets/t1.yaml", lambda root: lambda: load_target("t1")),
    "model spec": ("models/m1.yaml", _spec_load),
    "latency table": ("latency_tables/t.json", lambda root: lambda: LatencyTable.load(root / "latency_tables/t.json")),
    "checkpoint sidecar": ("checkpoints/c1.json", _checkpoint_load),
    "manifest": ("dist/manifest.json", _manifest_load),
    "lm manifest": ("dist/manifest.json", _lm_manifest_load),
    "lm.json": ("dist/lm.json", _lm_json_load),
    "observations": ("obs.jsonl", _observations_load),
}


@pytest.fixture
def reader_root(tmp_root) -> Path:
    from safetensors.torch import save_file

    from deploy.models import build

    for folder in ("models", "checkpoints", "dist"):
        (tmp_root / folder).mkdir(exist_ok=True)
    save_file(build("matformer_vit_tiny").state_dict(), str(tmp_root / "checkpoints" / "c1.safetensors"))
    return tmp_root


@pytest.mark.parametrize("reader", sorted(READERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=file_bytes)
def test_every_reader_of_a_users_file_loads_or_fails_in_one_named_line(reader_root, reader, data):
    relpath, make_call = READERS[reader]
    path = reader_root / relpath
    path.write_bytes(data)
    outcome = _bounded(make_call(reader_root))
    assert outcome == "loaded" or Path(relpath).name in outcome or reader == "observations", outcome


@pytest.mark.parametrize("reader", ["target", "model spec", "latency table", "manifest", "lm.json"])
def test_every_reader_refuses_a_file_that_never_ends(reader_root, reader):
    """A file linked to /dev/zero is refused after a bounded read, not read until memory runs out."""
    relpath, make_call = READERS[reader]
    path = reader_root / relpath
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")
    outcome = _bounded(make_call(reader_root))
    assert outcome != "loaded" and Path(relpath).name in outcome, outcome
