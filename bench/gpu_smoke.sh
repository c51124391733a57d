#!/usr/bin/env bash
# GPU smoke check: fits in 8 minutes on one H200; prints its figures (and writes them to $OUT/gpu_smoke.txt if
# $OUT is set). Needs only torch, transformers, accelerate (+ numpy): no vLLM, no Ray, no pydantic, no downloads.
#   bash bench/gpu_smoke.sh              # on the GPU machine, from the repository root
#   DEVICE=cpu SMALL=1 bash bench/gpu_smoke.sh   # the same code paths with tiny sizes on a CPU
# Sections (each under its own time limit, so one hang cannot eat the rest):
#   1. learner  - specialists/learner.py bf16 steps (AdamW and hybrid Muon) on a ~0.5B Qwen3 from a config
#   2. opd_loss - bench/opd_loss.py: fused reverse-KL distillation loss vs naive at 16k tokens, V=151,936, H=4,096
#   3. fp4      - MXFP4 quantize/dequantize/fake-quant throughput, QAT overhead on a SwiGLU MLP
#   4. grpo     - one tiny GRPO step (sample groups, rule reward, grpo_advantages + policy_loss, backward, step)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SMALL_FLAG=""; [ -n "${SMALL:-}" ] && SMALL_FLAG="--small"
LOG=${OUT:+$OUT/gpu_smoke.txt}; LOG=${LOG:-/dev/null}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
start=$(date +%s)
say() { echo "$@" | tee -a "$LOG"; }
section() {  # name, time limit (s), command...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  say "== $name (limit ${limit}s) =="
  timeout --kill-after=10 "$limit" "$@" 2>&1 | grep -v -E "Loading weights|^\s*$|UserWarning|warnings.warn" | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "-- $name: rc=$rc in $(( $(date +%s) - t0 ))s"
}
say "gpu_smoke $(date -u +%FT%TZ) device=$DEVICE $($PY -c 'import torch,transformers,accelerate;print("torch",torch.__version__,"transformers",transformers.__version__,"accelerate",accelerate.__version__,"cuda",torch.cuda.is_available(),torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1)"
[ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader | tee -a "$LOG"
section learner 120 $PY bench/gpu_smoke.py learner --device "$DEVICE" $SMALL_FLAG
if [ -n "$SMALL_FLAG" ]; then
  section opd_loss 150 $PY bench/opd_loss.py --device "$DEVICE" --tokens 1024 --vocab 8192 --hidden 256 --mem-limit-gb 4
else
  section opd_loss 150 $PY bench/opd_loss.py --device "$DEVICE" --dtype bf16 --tokens 16384 --hidden 4096 \
    --chunk-size 1024 --mem-limit-gb 120
fi
section fp4 60 $PY bench/gpu_smoke.py fp4 --device "$DEVICE" $SMALL_FLAG
section grpo 90 $PY bench/gpu_smoke.py grpo --device "$DEVICE" $SMALL_FLAG
say "gpu_smoke done in $(( $(date +%s) - start ))s"
