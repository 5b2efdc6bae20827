#!/usr/bin/env bash
# The GPU figures of the README: HAT-Net-Small under mixed_bfloat16, training at
# batch 128 and inference at batch 256, on JAX (XLA), the torch backend and the
# original PyTorch code, plus which attention kernels each Keras backend runs.
#
# Usage: bash scripts/gpu_benchmark.sh OUTPUT_DIR [PYTHON]
# (VARIANT, TRAIN_BATCH, INFERENCE_BATCH and IMAGE_SIZE override the defaults,
# e.g. for a quick trial on a CPU; BACKENDS="tensorflow jax reference" adds
# TensorFlow with XLA where it is installed.)
# Writes OUTPUT_DIR/attention.jsonl (scripts/attention_kernels.py), runs.jsonl
# (every single run) and results.jsonl (median per configuration). Each step runs
# whatever the one before it did, so one backend failing costs only its own lines.
set -u
out=${1:?usage: gpu_benchmark.sh OUTPUT_DIR [PYTHON]}
python=${2:-python3}
here=$(cd "$(dirname "$0")" && pwd)
variant=${VARIANT:-small} size=${IMAGE_SIZE:-224}
read -r -a backends <<< "${BACKENDS:-jax reference torch}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$python" -c "import jax, keras, torch; print('jax', jax.__version__, jax.devices(), \
'keras', keras.__version__, 'torch', torch.__version__)" | tee -a "$out/gpu.txt"

for backend in "${backends[@]}"; do
    [ "$backend" = reference ] && continue
    KERAS_BACKEND=$backend timeout 180 "$python" "$here/attention_kernels.py" --variant "$variant" \
        --image-size "$size" --batch 8 --precision mixed_bfloat16 | tee -a "$out/attention.jsonl"
done

common=(--variant "$variant" --image-size "$size" --precision mixed_bfloat16 --memory default --timeout 200
        --max-memory-gib 64 --jit true --runs-output "$out/runs.jsonl" --output "$out/results.jsonl")
"$python" "$here/benchmark.py" "${common[@]}" --backends "${backends[@]}" \
    --mode train --batch "${TRAIN_BATCH:-128}" --warmup 2 --steps 5
"$python" "$here/benchmark.py" "${common[@]}" --backends "${backends[@]}" \
    --mode inference --batch "${INFERENCE_BATCH:-256}" --warmup 2 --steps 10
