#!/usr/bin/env bash
# The GPU checks of one short lease, in priority order, each bounded in time, logs in $1.
#
#   bash benchmarks/gpu.sh OUT_DIR [SECONDS]
#
# 1. versions and devices; 2. for each issue-10 row, float32 and bfloat16, the train step and
# G inference with native and sub-pixel transposed convolutions, alternating rounds
# (``python -m jaxcolor.benchmark --transpose both``), with the measured peak in that dtype;
# 3. the quick training run on the built-in photos (data, checkpoints, validation on the GPU);
# 4. the kernel equality tests on the GPU. A step that would not fit the SECONDS left
# (default 540) is skipped and says so.
set -u
out=${1:?usage: gpu.sh OUT_DIR [SECONDS]}
deadline=$((SECONDS + ${2:-540}))
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
py=${PYTHON:-python3}

step() {  # step NAME SECONDS CMD...: run CMD with at most SECONDS, if that much is left
  local name=$1 limit=$2; shift 2
  local left=$((deadline - SECONDS))
  if ((left < 30)); then echo "== $name: skipped, ${left}s left"; return; fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  grep -vE "^(W|I)[0-9]{4} |^WARNING: All log messages" "$out/$name.log" | tail -n 14
  echo "== $name: rc $rc, $((SECONDS - start))s"
}

bench() {  # bench NAME CONFIG SIZE BATCH DTYPE [more flags]
  local name=$1 config=$2 size=$3 batch=$4 dtype=$5; shift 5
  step "$name" 170 "$py" -m jaxcolor.benchmark --config "experiments/$config.py" \
    --image_size "$size" --batch_size "$batch" --compute_dtype "$dtype" --steps 20 --rounds 2 \
    --transpose both "$@"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
"$py" -c "import jax, flax, optax, orbax.checkpoint, grain; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'grain', grain.__version__, jax.devices())"

bench p2p256_f32 pix2pix_lab 256 4 float32 --peak
bench p2p256_bf16 pix2pix_lab 256 4 bfloat16 --peak
bench lab64_f32 lab_gan 64 16 float32
bench lab256_f32 lab_gan 256 4 float32
bench lab256_bf16 lab_gan 256 4 bfloat16
step train 150 "$py" -m jaxcolor.train --config experiments/lab_gan.py:quick \
  --workdir "${TMPDIR:-/tmp}/jaxcolor-gpu-run"
bench p2p256_b64_f32 pix2pix_lab 256 64 float32 --peak
step kernel_tests 90 "$py" -m pytest -q -p no:xdist -o addopts= tests/test_kernels.py
ls "$out"
