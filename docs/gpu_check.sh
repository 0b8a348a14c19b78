#!/usr/bin/env bash
# For a machine with an NVIDIA GPU (about 8 minutes on one H100/H200; nothing else in the project depends on it):
#   1. the rehearsal of the papers' setting (config/rehearsal.yaml) on CUDA in bfloat16, in a scratch workdir;
#   2. the side-by-side speed bench at the full LLaVA-OV-0.5B (7,290 visual tokens), OV-7B and NeXT-7B shapes.
# Tables and logs go to $OUT (default docs/gpu/): commit bench_gpu.md and device.txt with the device named.
#   bash docs/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-docs/gpu}"
mkdir -p "$OUT"
[ -x .venv/bin/python ] || bash install.sh
. .venv/bin/activate
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"

# 1. The rehearsal on CUDA: every stage and evaluation in bfloat16 (VISOR trains in float32, as paper.yaml).
work="$(mktemp -d)"
cat > "$work/cuda.yaml" <<'YAML'
evaluation: {device: cuda, dtype: bfloat16}
visor: {device: cuda, dtype: float32}
YAML
start=$(date +%s)
timeout 300 snakemake --cores all --directory "$work" --snakefile "$PWD/Snakefile" \
    --configfile "$PWD/config/rehearsal.yaml" "$work/cuda.yaml" --replace-workflow-config reports/final.html \
    > "$OUT/rehearsal_cuda.log" 2>&1 && status=ok || status="failed (see rehearsal_cuda.log)"
echo "rehearsal on CUDA bf16: $status in $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
cp "$work/results/summary.csv" "$OUT/rehearsal_cuda_summary.csv" 2>/dev/null || true

# 2. The speed bench at the real shapes (bf16, SDPA, CUDA events), interleaved repeats; batch 1 and 8.
rm -f "$OUT/bench_gpu.md"
for batch in 1 8; do
    timeout 150 python -m visor_model.efficiency.speed_bench --arch llava-ov-0.5b llava-ov-7b llava-next-7b \
        --device cuda --dtype bfloat16 --warmup 3 --repeats 10 --batch-size "$batch" \
        --markdown "$OUT/bench_gpu.md" --json "$OUT/bench_gpu_batch$batch.json" >> "$OUT/bench.log" 2>&1 \
        || echo "speed bench at batch $batch failed (see bench.log)" | tee -a "$OUT/device.txt"
done
echo "tables: $OUT/bench_gpu.md"
