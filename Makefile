# Thin wrappers over the CLI. Each target creates/updates .venv by itself, installing only the
# extras its backend needs, so a fresh clone needs nothing but `make deploy TARGET=…` or `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TARGET ?= host-cpu-ort
MODEL  ?=
SAMPLES ?= 20
# make test: pytest workers for the part that does not time anything (pytest-xdist)
TEST_WORKERS ?= 2
PRECISION ?=
BENCH_FLAGS ?=
TRANSFER_FLAGS ?=
FROM ?=
# EXECUTOR=ray spreads table builds over the target's devices and runs on a Ray cluster
# (RAY_ADDRESS=host:6379 for an existing one; empty starts a local one); only then is ray installed.
EXECUTOR ?= local
RAY_ADDRESS ?=

# The target's backend decides which optional toolchain to install.
BACKEND := $(shell sed -n 's/^backend:[[:space:]]*//p' targets/$(TARGET).yaml 2>/dev/null)
EXTRAS_onnxruntime := data
EXTRAS_tflite      := data,tflite
EXTRAS_coreml      := data,coreml
EXTRAS_executorch  := data,executorch
EXTRAS_executorch_coreml := data,executorch,coreml
# TensorRT installs only where there is an NVIDIA driver; elsewhere a deploy packages the ONNX.
comma := ,
HAS_GPU := $(shell command -v nvidia-smi 2>/dev/null)
EXTRAS_tensorrt    := $(if $(HAS_GPU),data$(comma)tensorrt,data)
EXTRAS_torch_cuda  := data
EXTRAS := $(or $(EXTRAS_$(BACKEND)),data)$(if $(filter ray,$(EXECUTOR)),$(comma)ray)
# Tests run the real converters that install on Linux (LiteRT, coremltools, ExecuTorch) and a local Ray
# cluster; TensorRT needs a GPU.
TEST_EXTRAS := dev,tflite,coreml,executorch,ray
MODEL_FLAG := $(if $(MODEL),--model $(MODEL),)
EXECUTOR_FLAGS := --executor $(EXECUTOR)$(if $(RAY_ADDRESS), --ray-address $(RAY_ADDRESS))

.PHONY: deploy bench latency-tables estimate-tables transfer-tables validate-tables train test test-extended lint benchmarks docs clean ssh-tools

deploy: $(VENV)/.installed-$(EXTRAS)
	$(PY) -m deploy deploy --target $(TARGET) $(MODEL_FLAG)

bench: $(VENV)/.installed-$(EXTRAS)
	$(PY) -m deploy bench --target $(TARGET) $(EXECUTOR_FLAGS) $(BENCH_FLAGS)

latency-tables: $(VENV)/.installed-$(EXTRAS)
	$(PY) -m deploy tables build --target $(TARGET) $(MODEL_FLAG) $(EXECUTOR_FLAGS)

# For a device nobody has attached: the source target's measured table scaled by an anchor factor.
estimate-tables: $(VENV)/.installed-$(EXTRAS)
	$(PY) -m deploy tables estimate --target $(TARGET)

# For a device reached briefly: N whole subnets measured there map measured tables onto it (FROM=a b …:
# targets, or TARGET:PRECISION). SAMPLES only when given (the command's default is 30).
transfer-tables: $(VENV)/.installed-$(EXTRAS)
	$(PY) -m deploy tables transfer --target $(TARGET) $(foreach f,$(FROM),--from $(f)) \
	  $(if $(filter command line,$(origin SAMPLES)),--samples $(SAMPLES)) $(if $(PRECISION),--precision $(PRECISION)) \
	  $(MODEL_FLAG) $(EXECUTOR_FLAGS) $(TRANSFER_FLAGS)

validate-tables: $(VENV)/.installed-$(EXTRAS)
	$(PY) -m deploy tables validate --target $(TARGET) --samples $(SAMPLES) $(if $(PRECISION),--precision $(PRECISION)) \
	  $(MODEL_FLAG) $(EXECUTOR_FLAGS) --json latency_tables/$(TARGET)$(if $(MODEL),.$(MODEL))$(if $(PRECISION),.$(PRECISION)).validation.json

train: $(VENV)/.installed-data
	$(PY) -m deploy train $(MODEL_FLAG) $(if $(DEPTH),--depth $(DEPTH)) $(if $(THREADS),--threads $(THREADS))

# ruff, the tests (tests/benchmarks runs every benchmark's --quick mode), and the documentation site built
# with --strict (a broken link fails) into a throwaway folder. The tests that time nothing run on
# TEST_WORKERS processes; those that assert on latencies measured here run alone afterwards.
# `make test-extended` adds the long end-to-end runs (marker `extended`) whose parts these tests cover.
test-extended: $(VENV)/.installed-$(TEST_EXTRAS) ssh-tools
	$(PY) -m pytest -q -m extended

test: $(VENV)/.installed-$(TEST_EXTRAS) ssh-tools
	$(PY) -m ruff check deploy tests benchmarks docs
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not timing and not extended"
	$(PY) -m pytest -q -m "timing and not extended"
	@site=$$(mktemp -d) && log=$$(mktemp) && NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d $$site >$$log 2>&1; \
	  rc=$$?; [ $$rc = 0 ] || cat $$log; rm -rf $$site $$log; exit $$rc

# The documentation site in site/: results pages rendered from benchmarks/results/*.json and
# latency_tables/*.validation.json, the CLI reference from the typer app, the API from docstrings.
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# Comparisons that read shipped data only (seconds to a minute); the others measure for minutes on a quiet
# machine: python -m benchmarks.<name> (docs/benchmarks.md).
benchmarks: $(VENV)/.installed-dev
	$(PY) -m benchmarks.selector_vs_oracle
	$(PY) -m benchmarks.selector_vs_oracle --model elastic_vit_mnist
	$(PY) -m benchmarks.families

# The ssh runner tests start a real sshd on 127.0.0.1; install OpenSSH only where it is missing (they
# skip, naming openssh-server, where it cannot be installed).
ssh-tools:
	@command -v sshd >/dev/null 2>&1 || test -x /usr/sbin/sshd || \
	  { command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null; } || \
	  echo "note: could not install openssh-server; the ssh runner tests will be skipped"

$(PY):
	$(PYTHON) -m venv $(VENV)

# One stamp per set of extras; re-installed when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[$*]'
	touch $@

clean:
	rm -rf dist .cache .pytest_cache
