# fsa-deploy: `make demo` and `make test` each set up from scratch on a fresh machine.
# Tests never reach a model hub: HF_HUB_OFFLINE=1 (every file a test loads is made here, weights included).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
# The serving env: tritonserver's python backend needs numpy < 2 (pytriton#93), the
# project env needs numpy 2; `fsa serve` finds it at $FSA_SERVE_VENV or <repo>/.venv-serve.
SERVE_VENV ?= .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
# TensorRT-RTX wheels exist for x86-64: there the tests that build engines must not skip (engines build without a GPU)
REQUIRE_RTX := $(if $(filter x86_64 AMD64,$(shell uname -m)),1,)
# Debian's chromium + chromedriver drive tests/test_app.py (the page in a real browser): `make setup` installs them where it
# can (root with Debian's apt; Ubuntu's chromium is a snap that does not run in containers), and there (or
# wherever chromium is installed) `make test` requires them; elsewhere those tests skip with one line.
BROWSER_APT := $(shell [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && grep -qx 'ID=debian' /etc/os-release && echo 1)
REQUIRE_BROWSER := $(if $(or $(BROWSER_APT),$(wildcard /usr/bin/chromium)),1,)

.PHONY: setup test test-fast demo lint typecheck bench bench-block export-b16 test-gpu bench-build gpu-check clean bench-memory bench-serve bench-serve-full
.PHONY: bench-real-stats bench-real-stats-rows bench-envelope bench-policy-cost bench-video

setup: $(STAMP) $(SERVE_STAMP) browser

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[export,dev,quant,rtx,serve,app,eval,video]"
	# tensorrt-stubs' metadata requires the placeholder `tensorrt` wheel: install the stubs alone
	$(PIP) install -q --no-deps "tensorrt-stubs>=10.13,<11"
	touch $(STAMP)

# FSA_REQUIRE_DEPS=1: a test that lacks anything `make setup` installs fails instead of skipping
test: setup
	HF_HUB_OFFLINE=1 FSA_REQUIRE_DEPS=1 FSA_REQUIRE_RTX=$(REQUIRE_RTX) FSA_REQUIRE_BROWSER=$(REQUIRE_BROWSER) $(BIN)/python -m pytest -q -ra

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra -m "not slow"

# ruff over the repository, mypy over the whole package and benchmarks/ (tools/typecheck.sh; its cache: build/typecheck).
# `make test` runs both too (tests/test_typecheck.py), so CI does.
lint: setup
	$(BIN)/ruff check .
	PYTHON=$(BIN)/python tools/typecheck.sh

typecheck: setup
	PYTHON=$(BIN)/python tools/typecheck.sh

# The main job: export a random-init ViT-B-16 + DINO ViT-B/8 at 336, segment a real photo on
# ONNX Runtime CPU, validate the artefact against the PyTorch reference (tools/demo.sh).
demo: setup
	BIN=$(BIN) tools/demo.sh

bench-block: setup
	$(BIN)/fsa bench --block --tokens 1764 --num-classes 171 --device cpu --repeats 5 --json out/bench/block.json

export-b16: setup
	$(BIN)/python -m benchmarks.export_time --out out/b16 --json out/bench/export_b16.json

bench: setup
	$(BIN)/fsa bench --work out/bench/work --json out/bench/bench.json --md out/bench/bench.md --plot out/bench/bench.png --overwrite

# Peak RSS of a segmentation against the class count (3 vs 171) and the photo size (6.75 and 12 MP),
# tiny export on ONNX Runtime CPU, each case in a fresh process (docs/BENCHMARKS.md).
# A video through `fsa segment` against the same frames as PNG images (frames/s vs images/s), tiny and full
# size (ViT-B-16 + DINO B/8 at 336, random init, exported once into out/b16), ONNX Runtime CPU; peak RSS on
# N and 4N frames (docs/BENCHMARKS.md, docs/VIDEO.md).
bench-video: setup
	test -f out/b16/meta.json || flock /tmp/fsa-heavy.lock $(BIN)/fsa export --model ViT-B-16 --proxy dino --crop 336 \
	  --random-init --seed 0 --out out/b16
	flock /tmp/fsa-heavy.lock $(BIN)/python -m benchmarks.video_throughput --work out/bench/video \
	  --json out/bench/video.json --full out/b16

bench-memory: setup
	$(BIN)/python -m benchmarks.segment_memory --work out/bench/memory --json out/bench/memory.json

# On a machine with an NVIDIA GPU (and TensorRT, where it can be installed):
test-gpu: setup
	$(BIN)/python -m pytest -q -ra -m "gpu or tensorrt"

# Full-size TensorRT-RTX builds on this machine, no GPU needed: time, engine size, peak RSS.
# Add CAL=N to also calibrate and build int8 (a full-size ModelOpt calibration on the CPU is slow).
bench-build: setup
	$(BIN)/python -m benchmarks.engine_build --work out/bench-build --json out/bench-build/report.json \
	  --md out/bench-build/report.md $(if $(CAL),--calibration-count $(CAL))

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
	$(SERVE_VENV)/bin/python -m pip install -q "numpy>=1.24,<2" "pillow>=10" "onnxruntime>=1.18,<1.33" "regex" "filelock>=3.20.3" "packaging>=21"
	$(BIN)/python -m fsa_deploy.runtime.serve.env $(SERVE_VENV)
	touch $@

# Triton (fsa serve, tiny artefact, ORT CPU) against the in-process Segmenter: images/s, p50/p99, RSS.
bench-serve: setup
	$(BIN)/python -m benchmarks.serving_overhead --json out/bench/serve.json --md out/bench/serve.md

# The same on the demo's full-size ViT-B-16 + DINO ViT-B/8 at 336 (exported when missing; ~20 min
# on 2 cores): the serving overhead on images that take seconds. 20 soak requests, not 1,000.
bench-serve-full: setup
	test -f out/demo/artifact/meta.json || $(BIN)/fsa export --model ViT-B-16 --random-init --seed 0 \
	  --proxy dino --crop 336 --out out/demo/artifact
	$(BIN)/python -m benchmarks.serving_overhead --artifact out/demo/artifact --per-level 4 --warmup 8 \
	  --requests 20 --json out/bench/serve-full.json --md out/bench/serve-full.md

clean:
	rm -rf out .pytest_cache build/typecheck

# Full-size activation statistics per block, --real-stats against plain random init (ViT-B-16 and DINO B/8, DINOv2
# with and without registers, SAM, MAE at 336, two photos), checked against the current recipe's own targets (exit 1
# where a trunk misses one); heavy: under the shared lock. docs/BENCHMARKS.md.
bench-real-stats: setup
	flock /tmp/fsa-heavy.lock $(BIN)/python -m benchmarks.activation_stats \
	  --json out/bench/real_stats.json --md out/bench/real_stats.md

# fsa bench's ONNX Runtime CPU rows (fp32, fp16 with the audit's fp32 islands, int8 from fsa calibrate)
# of full-size ViT-B-16 + DINO B/8 at 336, --random-init --real-stats then plain --random-init; fidelity against
# the PyTorch fp32 reference on astronaut.png + chelsea.png, int8 calibrated on RS_CALIBRATION crops (fsa
# calibrate's default is 64). Each init ~25-40 min on 2 cores; exports are kept in out/bench/real-stats-rows.
RS_CALIBRATION ?= 16
bench-real-stats-rows: setup
	photos="$$($(BIN)/python -c 'from fsa_deploy.runtime.images import sample_photos; print(*sample_photos()[:2])')"; \
	for init in real-stats plain; do \
	  flock /tmp/fsa-heavy.lock $(BIN)/fsa bench --model ViT-B-16 --random-init $$([ $$init = plain ] || echo --real-stats) \
	    --seed 0 --proxy dino --crop 336 --device cpu --only "ONNX Runtime" --calibration-count $(RS_CALIBRATION) \
	    --images $$photos --repeats 2 --warmup 1 --work out/bench/real-stats-rows/$$init \
	    --json out/bench/real-stats-rows/$$init.json --md out/bench/real-stats-rows/$$init.md --overwrite || exit 1; \
	done

# fsa eval vs fsa segment on the same 50 generated images (tiny model, ONNX Runtime; whole commands,
# best of 3), then the demo's full-size model (exported when missing): reference and ONNX Runtime
# rows of `fsa eval` on 10 generated images, their mIoU delta and pixel agreement.
.PHONY: bench-eval bench-eval-full
bench-eval: setup
	$(BIN)/python -m benchmarks.eval_throughput --num-images 50 --rounds 3 --json out/bench/eval.json \
	  --md out/bench/eval.md

bench-eval-full: setup
	test -f out/demo/artifact/meta.json || $(BIN)/fsa export --model ViT-B-16 --random-init --seed 0 \
	  --proxy dino --crop 336 --out out/demo/artifact
	$(BIN)/python -m benchmarks.eval_throughput --artifact out/demo/artifact --images 10 --rounds 1 \
	  --reference --work out/bench/eval-full --json out/bench/eval-full.json --md out/bench/eval-full.md

# fsa app: the browser its tests drive (a no-op when present or where apt cannot install it).
.PHONY: browser app-screenshot bench-app bench-text
browser:
	@if [ -n "$(BROWSER_APT)" ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then \
	  echo "installing chromium and chromium-driver (apt) for tests/test_app.py"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

# docs/app.png: the page with an overlay, in Chromium. ART=DIR for another artefact (default: a tiny export).
app-screenshot: setup
	$(BIN)/python -m benchmarks.app_latency screenshot --out docs/app.png $(if $(ART),--artifact $(ART))

# The page's latency against fsa segment's on the same photos (docs/BENCHMARKS.md); ART=DIR as above.
bench-app: setup
	$(BIN)/python -m benchmarks.app_latency bench --json out/bench/app$(if $(ART),-$(notdir $(ART))).json $(if $(ART),--artifact $(ART))

# fidelity over the outlier scale: --real-stats-scale 0.1-30 on tiny, fp16 (policy) / naive fp16 / int8 / fp8, each
# through fsa validate and the fp16 emulation (docs/BENCHMARKS.md "Envelope"; ~5 min a point on 2 cores)
bench-envelope: setup
	flock /tmp/fsa-heavy.lock $(BIN)/python -m benchmarks.precision_envelope --work out/bench/envelope \
	  --json docs/envelope.json --md out/bench/envelope.md --plot docs/envelope.png

# the fp16 precision policy's cost (nodes, MiB, ORT CPU time against the islands-only graph in the same run) on one
# fp32 export; POLICY_ARGS picks the model. -full: ViT-B-16 + DINO B/8 at 336, random init, the export bench-video
# makes once in out/b16 (~5 min of export, then ~5 min: the audit's ranges, two fp16 conversions, 5 timed runs each)
POLICY_ARGS ?= --model tiny --proxy tiny-dino --crop 112 --random-init --real-stats --real-stats-scale 30
.PHONY: bench-policy-cost-full
bench-policy-cost: setup
	flock /tmp/fsa-heavy.lock sh -c '$(BIN)/fsa export --out out/bench/policy-fp32 --overwrite --quiet $(POLICY_ARGS) \
	  && $(BIN)/python -m benchmarks.fp16_policy_cost out/bench/policy-fp32 --json out/bench/policy-cost.json \
	  --md out/bench/policy-cost.md'

bench-policy-cost-full: setup
	test -f out/b16/meta.json || flock /tmp/fsa-heavy.lock $(BIN)/fsa export --model ViT-B-16 --proxy dino --crop 336 \
	  --random-init --seed 0 --out out/b16
	flock /tmp/fsa-heavy.lock $(BIN)/python -m benchmarks.fp16_policy_cost out/b16 --repeats 5 \
	  --json out/bench/policy-cost-full.json --md out/bench/policy-cost-full.md

# A new class list's text encoding, before/after (docs/BENCHMARKS.md): on the full-size export that
# bench-eval-full makes (ART=DIR for another); heavy on CPU, so under the shared lock.
bench-text: setup
	test -f $(or $(ART),out/demo/artifact)/meta.json || $(BIN)/fsa export --model ViT-B-16 --random-init --seed 0 \
	  --proxy dino --crop 336 --out out/demo/artifact
	flock /tmp/fsa-heavy.lock $(BIN)/python -m benchmarks.app_latency text --artifact $(or $(ART),out/demo/artifact) \
	  --json out/bench/text.json
