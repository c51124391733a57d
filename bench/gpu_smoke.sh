#!/usr/bin/env bash
# GPU smoke check on one GPU: the real pipeline (recipes/gpu/smoke.yaml, <= 8 min) and then the kernel figures;
# prints everything (and writes it to $OUT/gpu_smoke.txt, the smoke run's status/results to $OUT/ if $OUT is set).
# Section 0 needs the project's GPU install (`make setup-gpu`: CUDA torch, vllm==0.32.0, ray, pydantic, datasets, ...
# in .venv-gpu, used when present);
# it says which import is missing and goes on. Sections 1-4 need only torch, transformers, accelerate (+ numpy).
# No downloads anywhere.
#   bash bench/gpu_smoke.sh              # on the GPU machine, from the repository root
#   DEVICE=cpu SMALL=1 bash bench/gpu_smoke.sh   # sections 1-4 with tiny sizes on a CPU (section 0 needs a GPU)
#   SKIP_PIPELINE=1 bash bench/gpu_smoke.sh      # sections 1-4 only
# Sections (each under its own time limit, so one hang cannot eat the rest):
#   0. pipeline - pipeline run recipes/gpu/smoke.yaml: bootstrap -> SFT -> GRPO -> generalist -> distill -> eval
#                 with bf16 + MXFP4 QAT learners, a vLLM fleet serving packed MXFP4, NCCL weight sync
#   1. learner  - train/learner.py bf16 steps (AdamW and hybrid Muon) on a ~0.5B Qwen3 from a config
#   2. opd_loss - bench/opd_loss.py: fused reverse-KL distillation loss vs naive at 16k tokens, V=151,936, H=4,096
#   3. fp4      - MXFP4 quantize/dequantize/fake-quant throughput, QAT overhead on a SwiGLU MLP
#   4. grpo     - one tiny GRPO step (sample groups, rule reward, grpo_advantages + policy_loss, backward, step)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}; [ -z "${PYTHON:-}" ] && [ -x .venv-gpu/bin/python ] && PY=.venv-gpu/bin/python
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
if [ "$DEVICE" = cuda ] && [ -z "${SKIP_PIPELINE:-}" ]; then
  missing=$($PY -c 'import importlib, sys
bad = [m for m in ("ray", "pydantic", "vllm", "datasets", "math_verify", "deepspeed") if importlib.util.find_spec(m) is None]
print(" ".join(bad))' 2>&1)
  if [ -n "$missing" ]; then
    say "== pipeline: not run: missing $missing (install the project: make setup-gpu) =="
  else
    RUN=${OUT:-/tmp}/gpu-smoke-run; rm -rf "$RUN"
    section pipeline 480 $PY -m pipeline.cli run recipes/gpu/smoke.yaml --run-dir "$RUN"
    $PY -m pipeline.cli status "$RUN" 2>&1 | tee -a "$LOG"
    [ -f "$RUN/eval/results.md" ] && tee -a "$LOG" < "$RUN/eval/results.md"
    for f in fleet.json eval/results.json; do [ -f "$RUN/$f" ] && [ -n "${OUT:-}" ] && cp "$RUN/$f" "$OUT/smoke-$(basename $f)"; done
    grep -h '"rollout"' "$RUN"/*/manifest.json 2>/dev/null | head -3 | tee -a "$LOG"
  fi
fi
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
