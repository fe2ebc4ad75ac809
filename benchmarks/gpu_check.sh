#!/usr/bin/env bash
# GPU readiness, run ONCE on a lent GPU machine (under 10 minutes on one H100/H200), from the repository root:
#
#   here:   bash benchmarks/gpu_wheels.sh                      # what the GPU image lacks, into .whl/
#   device: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# It installs the carried packages into /tmp/site (nothing leaves the machine), runs benchmarks/gpu_check.py (FSDP2
# bf16 SFT of a ~1.1B Llama: tokens/s and MFU; packed rows on flash-attention's varlen kernel vs padded; QLoRA DPO
# for 20 steps; the chunked loss (Liger's kernel where installed) vs the plain one; DeepSpeed ZeRO-2/3 on one GPU;
# GRPO's vLLM generator engine and GRPO with vLLM colocated in the learner, where vllm is installed on the machine:
# its wheel exceeds what a run can carry),
# and writes the table to $OUT/gpu_check.md (the device tool brings it back) and appends it to
# benchmarks/RESULTS.md there. Each check that cannot run says why (SKIPPED: the missing package; FAILED: the
# error). `bash benchmarks/gpu_check.sh --device cpu` is its smoke test here: tiny sizes on CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
[ "${1:-}" = "--device" ] && DEVICE=${2:-cuda}
OUT_DIR=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
if [ -d .whl ] && [ "$DEVICE" = cuda ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation --upgrade \
        --target /tmp/site .whl/* || echo "gpu_check: some carried packages did not install (see above)"
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 DS_BUILD_OPS=0
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import hydra, omegaconf, lightning, transformers, hydralign.run.job" || {
    echo "gpu_check: hydralign cannot import here (run benchmarks/gpu_wheels.sh first and carry .whl)"; exit 1; }
timeout 560 "$PY" -m benchmarks.gpu_check --device "$DEVICE" --out "$OUT_DIR/gpu_check.md" 2>&1 | tee "$OUT_DIR/gpu_check.log" \
    | grep -E '^\||^Environment'
if [ -f "$OUT_DIR/gpu_check.md" ] && [ "$DEVICE" = cuda ]; then
    { printf '\n## GPU readiness (benchmarks/gpu_check.sh, %s)\n\n' "$(date -u +%Y-%m-%d)"; cat "$OUT_DIR/gpu_check.md"; } \
        >> benchmarks/RESULTS.md
fi
echo "gpu_check: table in $OUT_DIR/gpu_check.md"
