# Set-up and entry points. `make test` and `make demo` work on a fresh machine:
# they create .venv, install the CPU stack in the order shared/ENVIRONMENT.md requires, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := libportaudio2 espeak-ng sox chromium
PYTEST_ARGS ?=

.PHONY: install system-deps test test-ray demo clean

DEMO_IMAGE := engine/assets/demo/portrait.png
DEMO_AUDIO := engine/assets/demo/speech.wav
DEMO_OUT := out/demo.mp4
DEMO_STRIP := out/demo.png
MODEL ?= talking64

install: $(STAMP)

# Debian packages: PortAudio for sounddevice, espeak-ng and sox for speech made in tests, Chromium for the
# browser test of `emote serve` (driven headless over the DevTools protocol; no browser is downloaded).
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; fi; \
	fi

# torch first, alone, so the local CPU build is taken and no CUDA build is pulled in.
$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints/cpu.txt -e '.[cpu,dev]'
	touch $@

test: system-deps $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The live server on Ray Serve (engine/serve/ray_app.py): installs the ray extra (~15 s), then its tests
# (~35 s on 2 cores: a local 3-replica cluster). CI (.ci/run) runs it after `make test`.
test-ray: system-deps $(STAMP)
	$(PY) -m pip install -q -c constraints/cpu.txt -e '.[cpu,dev,ray]'
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m ray tests/serve_ray $(PYTEST_ARGS)

# The main job on the shipped photo and speech, with the shipped default model (talking64).
demo: system-deps $(STAMP)
	@mkdir -p $(dir $(DEMO_OUT))
	$(VENV)/bin/emote generate --image $(DEMO_IMAGE) --audio $(DEMO_AUDIO) --out $(DEMO_OUT) --model $(MODEL)
	$(PY) -m engine.strip --video $(DEMO_OUT) --out $(DEMO_STRIP) --title "make demo: $(MODEL) (engine/assets/demo)"
	@echo "demo video: $(abspath $(DEMO_OUT)); its frames above the speech: $(abspath $(DEMO_STRIP))"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# TensorRT plans for every network of MODEL (a preset or a model directory) into the engine cache
# ($$EMOTE_CACHE_DIR, else ~/.cache/emote; ENGINE_DIR overrides). Needs the GPU extras (tensorrt)
# and a CUDA device; without them it says so in one line and fails. SIZE defaults to the model's.
SIZE ?=
PRECISION ?= fp16
ENGINE_DIR ?=
.PHONY: engines
engines: $(STAMP)
	@$(PY) -m export.trt_build --model $(MODEL) --precision $(PRECISION) $(if $(SIZE),--size $(SIZE)) $(if $(ENGINE_DIR),--out $(ENGINE_DIR))

# Benchmarks: the engine against the reference (Hallo) recipe in one run; results (JSON, Markdown, PNG)
# under bench/results/<device>/. `make bench`: tiny preset at 128x128 on the CPU, a few minutes.
# `make bench-gpu`: sd15 at 512x512 on a CUDA GPU, run by that machine's own torch (BENCH_PY), then the
# Triton kernels against eager PyTorch and torch.compile. BENCH_ARGS: extra `python -m bench` options.
# `make bench-kernels`: the kernel benchmark alone. A GPU command is limited to 10 minutes: split the GPU
# run by decoder when needed (BENCH_ARGS=--decoders=kl, then --decoders=tiny; each keeps the reference).
.PHONY: bench bench-gpu bench-kernels
BENCH_ARGS ?=
BENCH_PY ?= python3

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

bench-gpu:
	$(BENCH_PY) -m bench --preset sd15 --device cuda $(BENCH_ARGS)
	$(BENCH_PY) -m bench.bench_kernels

bench-kernels:
	$(BENCH_PY) -m bench.bench_kernels

# Wheels the lent GPU machine lacks (PyAV, diffusers; its python3 is 3.12 and reaches no registry) into
# .whl/, which the device tool carries for bench/gpu_checks.sh (every GPU check in one ~9-minute command).
GPU_WHEELS := av==18.1.0 diffusers==0.42.1 importlib_metadata==10.2.0
.PHONY: gpu-wheels
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)
