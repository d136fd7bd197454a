# fsa-deploy: `make demo` and `make test` each set up from scratch on a fresh machine.
# Tests never reach a model hub: HF_HUB_OFFLINE=1 (issue 14; every file a test loads is made here).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
# The serving env (issue 13): tritonserver's python backend needs numpy < 2 (pytriton#93), the
# project env needs numpy 2; `fsa serve` finds it at $FSA_SERVE_VENV or <repo>/.venv-serve.
SERVE_VENV ?= .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
# TensorRT-RTX wheels exist for x86-64: there the tests that build engines must not skip (issue 12)
REQUIRE_RTX := $(if $(filter x86_64 AMD64,$(shell uname -m)),1,)

.PHONY: setup test test-fast demo lint typecheck bench bench-block export-b16 test-gpu bench-build gpu-check clean bench-memory bench-serve bench-serve-full
.PHONY: bench-real-stats

setup: $(STAMP) $(SERVE_STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[export,dev,quant,rtx,serve]"
	# tensorrt-stubs' metadata requires the placeholder `tensorrt` wheel: install the stubs alone
	$(PIP) install -q --no-deps "tensorrt-stubs>=10.13,<11"
	touch $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 FSA_REQUIRE_RTX=$(REQUIRE_RTX) $(BIN)/python -m pytest -q -ra

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(MAKE) typecheck

typecheck: setup
	PYTHON=$(BIN)/python tools/typecheck.sh

# The main job: export a random-init ViT-B-16 + DINO ViT-B/8 at 336, segment a real photo on
# ONNX Runtime CPU, validate the artefact against the PyTorch reference (tools/demo.sh).
demo: setup
	BIN=$(BIN) tools/demo.sh

bench-block: setup
	$(BIN)/fsa bench --block --tokens 1764 --num-classes 171 --device cpu --repeats 5 --json out/bench/block.json

export-b16: setup
	$(BIN)/python -m fsa_deploy.validation.bench_export --out out/b16 --json out/bench/export_b16.json

bench: setup
	$(BIN)/fsa bench --work out/bench/work --json out/bench/bench.json --md out/bench/bench.md --plot out/bench/bench.png

# Peak RSS of a segmentation against the class count (3 vs 171) and the photo size (6.75 and 12 MP),
# tiny export on ONNX Runtime CPU, each case in a fresh process (issue 15 item 7; docs/BENCHMARKS.md).
bench-memory: setup
	$(BIN)/python tools/bench_memory.py --work out/bench/memory --json out/bench/memory.json

# On a machine with an NVIDIA GPU (and TensorRT, where it can be installed):
test-gpu: setup
	$(BIN)/python -m pytest -q -ra -m "gpu or tensorrt"

# Full-size TensorRT-RTX builds on this machine, no GPU (issue 12): time, engine size, peak RSS.
# Add CAL=N to also calibrate and build int8 (a full-size ModelOpt calibration on the CPU is slow).
bench-build: setup
	$(BIN)/python -m fsa_deploy.export.trt_bench --work out/bench-build --json out/bench-build/report.json \
	  --md out/bench-build/report.md $(if $(CAL),--calibrate-count $(CAL))

# On a machine with an NVIDIA GPU: CUDA tests, validate and bench with the TensorRT flavour it supports (< 8 min).
gpu-check: setup
	BIN=$(BIN) tools/gpu_check.sh

# The serving env: PyTriton's wheel for its tritonserver binary (--no-deps: its Python API and
# gevent are not used), the runtime's base deps with numpy < 2, and the python backend stub of this
# interpreter's version placed next to libtriton_python.so (its RPATH then resolves in place).
# The project itself is not installed here: `fsa serve` copies the runtime into the model repository.
$(SERVE_STAMP): pyproject.toml $(STAMP)
	test -d $(SERVE_VENV) || $(PY) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install -q --no-deps "nvidia-pytriton==0.7.0"
	$(SERVE_VENV)/bin/python -m pip install -q "numpy>=1.24,<2" "pillow>=10" "onnxruntime>=1.18,<1.33" "regex"
	$(BIN)/python -m fsa_deploy.runtime.serve.env $(SERVE_VENV)
	touch $@

# Triton (fsa serve, tiny artefact, ORT CPU) against the in-process Segmenter: images/s, p50/p99, RSS.
bench-serve: setup
	$(BIN)/python -m fsa_deploy.validation.bench_serve --json out/bench/serve.json --md out/bench/serve.md

# The same on the demo's full-size ViT-B-16 + DINO ViT-B/8 at 336 (exported when missing; ~20 min
# on 2 cores): the serving overhead on images that take seconds. 20 soak requests, not 1,000.
bench-serve-full: setup
	test -f out/demo/artifact/meta.json || $(BIN)/fsa export --model ViT-B-16 --random-init --seed 0 \
	  --proxy dino --crop 336 --out out/demo/artifact
	$(BIN)/python -m fsa_deploy.validation.bench_serve --artifact out/demo/artifact --per-level 4 --warmup 8 \
	  --requests 20 --json out/bench/serve-full.json --md out/bench/serve-full.md

clean:
	rm -rf out .pytest_cache

# Issue 23: full-size activation statistics per block, --real-stats against plain random init (ViT-B-16 and
# DINO B/8, DINOv2, SAM, MAE at 336, two photos); heavy: under the shared lock. docs/BENCHMARKS.md.
bench-real-stats: setup
	flock /tmp/fsa-heavy.lock $(BIN)/python tools/bench_real_stats.py --json out/bench/real_stats.json \
	  --md out/bench/real_stats.md
