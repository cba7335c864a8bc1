#!/usr/bin/env bash
# Every GPU-only check of the project in one command on a lent GPU machine (H100/H200, its own python3
# with CUDA torch and Triton), in priority order, each step under its own time limit so that one slow
# step cannot starve the rest. At most 9.5 minutes in all (560 s of steps): run it with a 10-minute limit.
#
#   make gpu-wheels                 # here, once: PyAV and diffusers wheels for the GPU machine's Python 3.12
#   bash bench/gpu_checks.sh        # there, from the repository root, with .whl/ carried along
#
# Steps (seconds each at most; GPU_CHECKS_SCALE multiplies every limit):
#   1. kernel tests compiled for real on the GPU (tests/kernels: parity with the PyTorch references,
#      the whole tiny backbone with kernels on vs off; not the ahead-of-time compile test, which
#      needs no GPU and runs in CI)                                                  80
#   2. the kernel benchmark (bench.bench_kernels: sd15 shapes at 512x512, vs eager and torch.compile,
#      20 timed calls each; its files are rewritten after every shape)             160
#   3. the reference-attention kernel against the parts of the PyTorch path
#      (bench.bench_reference_attention)                                             30
#   4. per-network times of the backends (bench.backends: sd15 at 512x512; torch, torch+triton,
#      torch-cuda-graphs; onnxruntime and tensorrt are named skipped where absent)   100
#   5. end to end against the reference recipe (python -m bench: sd15 at 512x512, 30 s of paced speech,
#      4 and 2 steps with the tiny decoder, one repeat)                             190
# Each step's output goes to $OUT/gpu-checks.log (OUT: the device tool's folder; out/gpu-checks here),
# and after each step bench/results/ is packed into $OUT/results.tgz: unpack it over the checkout
# (`tar -xzf results.tgz`) and commit the files with the device named.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-checks}
SCALE=${GPU_CHECKS_SCALE:-1}
mkdir -p "$OUT"
LOG="$OUT/gpu-checks.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 EMOTE_CACHE_DIR=/tmp/emote-cache
PY=${PY:-python3}

say() { echo "[gpu-checks $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

pack() {
  tar -czf "$OUT/results.tgz.partial" bench/results out/gpu-checks-junit 2>/dev/null \
    && mv "$OUT/results.tgz.partial" "$OUT/results.tgz"
}

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a limit, log it, pack the results
  local name=$1 limit seconds rc started
  limit=$(awk -v s="$2" -v k="$SCALE" 'BEGIN { printf "%d", s * k }')
  shift 2
  say "step $name (limit ${limit} s): $*"
  started=$(date +%s)
  timeout --signal=INT --kill-after=15 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  seconds=$(( $(date +%s) - started ))
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then say "step $name: stopped at its limit after ${seconds} s"
  else say "step $name: exit $rc after ${seconds} s"; fi
  pack
}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  say "installing the carried wheels: $(cd .whl && ls *.whl | tr '\n' ' ')"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 || { say "wheel install failed"; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The project is not installed on that machine; its Triton kernels import as `emote_kernels`, the name an
# install maps the folder kernels/ to (the bare `kernels` is HuggingFace's package, which transformers
# imports). A link in a folder put on PYTHONPATH gives the name, pointing at this working tree.
EMOTE_PATH=${EMOTE_PATH:-/tmp/emote-path}
mkdir -p "$EMOTE_PATH" && ln -sfn "$PWD/kernels" "$EMOTE_PATH/emote_kernels" \
  || { say "could not link the kernels into $EMOTE_PATH"; exit 2; }
export PYTHONPATH=$EMOTE_PATH${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$LOG" 2>&1
$PY - >>"$LOG" 2>&1 <<'EOF'
import importlib.metadata as m, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
for name in ("triton", "av", "diffusers", "transformers", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "absent")
EOF
mkdir -p out/gpu-checks-junit

step kernel-tests 80 $PY -m pytest -q -p no:cacheprovider tests/kernels --ignore=tests/kernels/test_kernel_gpu_compile.py \
  --junitxml=out/gpu-checks-junit/kernels.xml
step kernel-bench 160 $PY -m bench.bench_kernels --warmup 3 --repeats 20
step reference-attention 30 $PY -m bench.bench_reference_attention
step backends 100 $PY -m bench.backends --model sd15 --device cuda --size 512 --stream-seconds 1 --repeats 3
step end-to-end 190 $PY -m bench --preset sd15 --device cuda --steps 4,2 --decoders tiny --repeats 1
say "done; files: $(ls "$OUT" | tr '\n' ' ')"
